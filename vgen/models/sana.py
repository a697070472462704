"""SANA policy: a SanaTransformer2DModel behind the rollout engine's interface.

SANA predicts the flow velocity on unpacked DC-AE latents (32x downsampling), conditions
on Gemma-2 hidden states with an attention mask, and scales its timestep by the config's
``timestep_scale``. Its pipeline samples with a flow DPM-Solver by default; the engine steps
with Euler / the SDE on a FlowMatchEulerDiscreteScheduler carrying SANA's flow shift, which
is what RL on SANA uses. With the same scheduler, results equal ``SanaPipeline.__call__``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vgen.errors import UserError
from vgen.models.policy import FlowPolicy, check_pipeline_folder


class SanaPolicy(FlowPolicy):
    def __init__(self, transformer, scheduler, vae=None, encode_fn: Callable | None = None,
                 vae_scale_factor: int = 32, text_encoders: tuple = ()):
        self.transformer, self.scheduler, self.vae = transformer, scheduler, vae
        self.text_encoders = tuple(e for e in text_encoders if e is not None)
        self.encode_fn, self.vae_scale_factor = encode_fn, vae_scale_factor

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                        flow_shift: float | None = None):
        from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

        check_pipeline_folder(Path(path))
        try:
            pipe = SanaPipeline.from_pretrained(Path(path), torch_dtype=dtype, local_files_only=True).to(device)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot load the SANA pipeline in {str(path)!r}: {str(e).splitlines()[0]}") from None
        shift = flow_shift or pipe.scheduler.config.get("flow_shift", 3.0)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)

        def encode(prompts: list[str]) -> dict[str, torch.Tensor]:
            pe, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe.device)
            return {"ctx": pe, "mask": mask}

        return cls(pipe.transformer, scheduler, pipe.vae, encode, vae_scale_factor=pipe.vae_scale_factor,
                   text_encoders=(pipe.text_encoder,))

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if height % f or width % f:
            raise UserError(f"height and width must be multiples of {f}, got {height}x{width}")
        return (self.transformer.config.in_channels, height // f, width // f)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.encode_fn is None:
            raise UserError("this SANA policy has no text encoder: give encode_fn")
        return self.encode_fn(prompts)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = getattr(self.transformer.config, "timestep_scale", 1.0)
        out = self.transformer(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["ctx"],
                               encoder_attention_mask=cond["mask"], timestep=t.to(self.dtype) * scale,
                               return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned variance: keep the velocity half
            out = out.chunk(2, dim=1)[0]
        return out
