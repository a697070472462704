"""Model pieces: diffusion policies (diffusers adapters) and, later, VAR models."""
