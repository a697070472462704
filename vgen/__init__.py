"""vgen: post-training for visual generative models (diffusion and scale-wise AR)."""

__version__ = "0.1.0"
