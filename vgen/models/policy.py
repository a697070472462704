"""What the rollout engine needs from a flow-matching policy, and the parts all of them share.

A policy has ``transformer``, ``scheduler`` and ``vae`` attributes and implements
``latent_shape(h, w)``, ``encode(prompts) -> dict of per-prompt tensors`` and
``velocity(x, t, cond) -> v`` (x unpacked (B, C, h, w), t = 1000 sigma, shape (B,));
optionally ``scheduler_kwargs(latent_shape, steps)`` when its pipeline sets its own sigmas.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from vgen.errors import UserError


class FlowPolicy:
    transformer = scheduler = vae = None

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def with_transformer(self, transformer) -> FlowPolicy:
        """The same policy (text encoders, VAE, scheduler shared) over another denoiser, e.g. a
        low-precision explore copy of this one's."""
        other = copy.copy(self)
        other.transformer = transformer
        return other

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], as the pipelines' postprocess makes them."""
        cfg = self.vae.config
        z = latents.to(self.vae.dtype) / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return (self.vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)


def check_pipeline_folder(path: Path) -> dict:
    """model_index.json of a complete diffusers pipeline folder; else a one-line UserError."""
    import json

    if not path.is_dir():
        raise UserError(f"model folder not found: {str(path)!r}")
    index = path / "model_index.json"
    if not index.is_file():
        raise UserError(f"{str(path)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        entries = json.loads(index.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{index}: not valid JSON") from None
    for name, value in entries.items():
        if isinstance(value, list) and len(value) == 2 and value[0] and not (path / name).is_dir():
            raise UserError(f"{str(path)!r} is missing its {name!r} component (no folder {name}/)")
    return entries


def policy_from_folder(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """The engine policy of a pipeline folder, chosen by its model_index.json (use vgen.models.load.load)."""
    import torch

    kind = check_pipeline_folder(Path(path)).get("_class_name")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    if kind in ("StableDiffusion3Pipeline",):
        from vgen.models.sd3 import SD3Policy

        return SD3Policy.from_pretrained(path, dtype=torch_dtype, device=device)
    if kind in ("FluxPipeline",):
        from vgen.models.flux import FluxPolicy

        return FluxPolicy.from_pretrained(path, dtype=torch_dtype, device=device)
    if kind in ("SanaPipeline",):
        from vgen.models.sana import SanaPolicy

        return SanaPolicy.from_pretrained(path, dtype=torch_dtype, device=device)
    raise UserError(f"{str(path)!r} holds a {kind!r}; vgen supports StableDiffusion3Pipeline, FluxPipeline and "
                    "SanaPipeline folders")
