"""What the rollout engine needs from a flow-matching policy, and the parts all of them share.

A policy has ``transformer``, ``scheduler`` and ``vae`` attributes and implements
``latent_shape(h, w)``, ``encode(prompts) -> dict of per-prompt tensors`` and
``velocity(x, t, cond) -> v`` (x unpacked (B, C, h, w), t = 1000 sigma, shape (B,));
optionally ``scheduler_kwargs(latent_shape, steps)`` when its pipeline sets its own sigmas.
"""

from __future__ import annotations

import torch


class FlowPolicy:
    transformer = scheduler = vae = None

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], as the pipelines' postprocess makes them."""
        cfg = self.vae.config
        z = latents.to(self.vae.dtype) / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return (self.vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
