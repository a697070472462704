"""What the rollout engine needs from a flow-matching policy, and the parts all of them share.

A policy has ``transformer``, ``scheduler`` and ``vae`` attributes and implements
``latent_shape(h, w)``, ``encode(prompts) -> dict of per-prompt tensors`` and
``velocity(x, t, cond) -> v`` (x unpacked (B, C, h, w), t = 1000 sigma, shape (B,));
optionally ``scheduler_kwargs(latent_shape, steps)`` when its pipeline sets its own sigmas.
``text_encoders`` lists the modules ``encode`` runs, so the engine can make them batch-invariant
(engine/invariance.py); a policy built from a bare ``encode_fn`` may leave it empty.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from vgen.errors import UserError


class FlowPolicy:
    transformer = scheduler = vae = None
    text_encoders: tuple = ()

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
    if not isinstance(entries, dict):
        raise UserError(f"{index}: must be a mapping of components")
    for name, value in entries.items():
        if name.startswith("_"):
            continue
        if isinstance(value, list) and not (len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            raise UserError(f"{index}: component {name!r} must be [library, class], got {value!r}")
        if isinstance(value, list) and value[0] and not (path / name).is_dir():
            raise UserError(f"{str(path)!r} is missing its {name!r} component (no folder {name}/)")
        if isinstance(value, list) and value[0]:
            _check_component(path / name)
    return entries


def _check_component(folder: Path) -> None:
    """A component folder holds files, and its JSON configs are mappings: diffusers / transformers
    would otherwise fail late and misleadingly (an empty tokenizer folder tokenizes garbage; a config
    that is a list sends them looking for a model id on the hub)."""
    import json

    files = [f for f in folder.iterdir() if not f.name.startswith(".")]
    if not files:
        raise UserError(f"component folder {str(folder)!r} is empty")
    # a model (it has config.json) needs weights; without them diffusers logs two fallback lines first
    weights = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
    if (folder / "config.json").is_file() and not any(f.name.endswith(weights) for f in files):
        raise UserError(f"component folder {str(folder)!r} has no weights file (*.safetensors or *.bin)")
    for f in files:
        if f.suffix == ".json" and f.is_file():
            try:
                ok = isinstance(json.loads(f.read_text()), dict)
            except (ValueError, UnicodeDecodeError):
                ok = False
            if not ok:
                raise UserError(f"{f}: not a JSON mapping (a damaged component config)")


def policy_from_folder(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """The engine policy of a pipeline folder, chosen by its model_index.json (use vgen.models.load.load)."""
    import torch

    kind = check_pipeline_folder(Path(path)).get("_class_name")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    if kind in ("StableDiffusion3Pipeline",):
        from vgen.models.sd3 import SD3Policy as Policy
    elif kind in ("FluxPipeline",):
        from vgen.models.flux import FluxPolicy as Policy
    elif kind in ("SanaPipeline",):
        from vgen.models.sana import SanaPolicy as Policy
    else:
        Policy = None
    if Policy is not None:
        try:
            return Policy.from_pretrained(path, dtype=torch_dtype, device=device)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged component (truncated weights, a config.json that is a
            # list or holds a bad value, an empty tokenizer folder) fails deep in diffusers / transformers /
            # safetensors with their own exception types; for the user each is the same: this folder is damaged
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"cannot load the pipeline in {str(path)!r}: {type(e).__name__}: {why}") from None
    raise UserError(f"{str(path)!r} holds a {kind!r}; vgen supports StableDiffusion3Pipeline, FluxPipeline and "
                    "SanaPipeline folders")
