"""FLUX.1 policy: a FluxTransformer2DModel behind the rollout engine's interface.

FLUX works on 2x2-packed latents with RoPE position ids, takes its timestep as sigma
(1000 sigma / 1000), embeds a *distilled* guidance scale (FLUX.1-dev) instead of running
CFG, and samples on its own sigma grid linspace(1, 1/N, N) with a resolution-dependent
shift ``mu``. The engine keeps latents unpacked (B, C, h, w); packing, ids and the schedule
use diffusers' own FluxPipeline helpers, so the results equal ``FluxPipeline.__call__``.
The engine's ``guidance`` is FLUX's *true* CFG (``true_cfg_scale``; 1 = off).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vgen.errors import UserError
from vgen.models.policy import FlowPolicy, check_pipeline_folder


class FluxPolicy(FlowPolicy):
    def __init__(self, transformer, scheduler, vae=None, encode_fn: Callable | None = None,
                 distilled_guidance: float = 3.5, vae_scale_factor: int = 8, text_encoders: tuple = ()):
        self.transformer, self.scheduler, self.vae = transformer, scheduler, vae
        self.text_encoders = tuple(e for e in text_encoders if e is not None)
        self.encode_fn, self.distilled_guidance, self.vae_scale_factor = encode_fn, distilled_guidance, vae_scale_factor

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", **kw):
        from diffusers import FluxPipeline

        check_pipeline_folder(Path(path))
        try:
            pipe = FluxPipeline.from_pretrained(Path(path), torch_dtype=dtype, local_files_only=True).to(device)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot load the FLUX pipeline in {str(path)!r}: {str(e).splitlines()[0]}") from None

        def encode(prompts: list[str]) -> dict[str, torch.Tensor]:
            pe, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, device=pipe.device)
            return {"ctx": pe, "pooled": pooled}

        return cls(pipe.transformer, pipe.scheduler, pipe.vae, encode, vae_scale_factor=pipe.vae_scale_factor,
                   text_encoders=(pipe.text_encoder, pipe.text_encoder_2), **kw)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor * 2
        if height % f or width % f:
            raise UserError(f"height and width must be multiples of {f}, got {height}x{width}")
        return (self.transformer.config.in_channels // 4, height // self.vae_scale_factor,
                width // self.vae_scale_factor)

    def scheduler_kwargs(self, latent_shape: tuple[int, int, int], steps: int) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self.scheduler.config
        seq_len = (latent_shape[1] // 2) * (latent_shape[2] // 2)
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.encode_fn is None:
            raise UserError("this FLUX policy has no text encoders: give encode_fn")
        return self.encode_fn(prompts)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x.to(self.dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, self.dtype)
        txt_ids = torch.zeros(cond["ctx"].shape[1], 3, device=x.device, dtype=self.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.distilled_guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(hidden_states=packed, timestep=t.to(self.dtype) / 1000, guidance=guidance,
                               pooled_projections=cond["pooled"], encoder_hidden_states=cond["ctx"],
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * self.vae_scale_factor, w * self.vae_scale_factor,
                                            self.vae_scale_factor)
