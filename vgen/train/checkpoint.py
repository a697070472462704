"""Checkpoints of a training run, and reading a run back (for resume, eval and export).

A run directory written by a vgen trainer holds::

    config.yaml                 the resolved config (``recipe:`` first; ``model:`` names the base folder)
    checkpoints/latest          text: the name of the newest complete checkpoint
    checkpoints/step-000120/
        meta.json               step, kind ("lora" | "full" | "var"), config hash, vgen version, base model
        adapter_config.json     kind "lora": the peft adapter of the denoiser
        adapter_model.safetensors
        transformer/            kind "full": the denoiser, diffusers ``save_pretrained`` layout
        config.json, vqvae.safetensors, var.safetensors
                                kind "var": a whole VAR model folder (vgen.models.var.folder)
        state.pt                optimizer, EMA, RNG states, data position (torch.save of tensors and
                                plain data: loads with ``weights_only=True``)
    eval/step-000120/report.json   evaluations made during or after training

A checkpoint is written into a hidden temporary folder and renamed into place, then
``latest`` is replaced atomically: a run killed at any moment leaves the previous
checkpoint intact and ``latest`` naming a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vgen import __version__
from vgen.errors import UserError
from vgen.io import atomic_write_json, atomic_write_text

ADAPTER_WEIGHTS = "adapter_model.safetensors"


NOT_HASHED = ("recipe", "run", "resume", "iterations", "progress", "fsdp")


def resumable(config: dict) -> dict:
    """The part of a config that decides what is trained: not the recipe line, the run section,
    ``resume``, ``progress``, the iteration count (a finished run may be extended) or ``fsdp``
    (how the weights are laid out over processes: a checkpoint resumes sharded or not)."""
    return {k: v for k, v in config.items() if k not in NOT_HASHED}


def config_hash(config: dict) -> str:
    """sha256 of the resumable part of a config (see :func:`resumable`), as canonical JSON."""
    body = resumable(config)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_lora(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full tensors that :func:`save_weights` writes of an FSDP-sharded model (the LoRA
    weights, or every weight), gathered: every process calls this, the main one saves. None for
    an unsharded model, which :func:`save_weights` reads directly."""
    from vgen.train.fsdp import full, is_sharded

    if not any(is_sharded(p) for p in model.parameters()):
        return None
    lora = _is_lora(model)
    return {k: full(v.detach()).cpu() for k, v in model.state_dict().items() if not lora or "lora_" in k}


def save_weights(model: torch.nn.Module, folder: Path, metadata: dict[str, str] | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> str:
    """The trained denoiser's weights into ``folder``: the peft adapter alone when it has one
    (kind "lora"), else the whole model in the diffusers layout (kind "full"). ``state``: the
    gathered weights of a sharded model (:func:`trained_state`)."""
    from safetensors.torch import save_file

    meta = {"format": "pt", **(metadata or {})}
    if _is_lora(model):
        from peft import get_peft_model_state_dict

        (model.peft_config["default"]).save_pretrained(str(folder))
        weights = get_peft_model_state_dict(model, state_dict=state)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(folder / ADAPTER_WEIGHTS),
                  metadata=meta)
        return "lora"
    if state is None:
        model.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    else:  # the same layout, from the gathered tensors (save_pretrained would write this process's shards)
        model.save_config(str(folder / "transformer"))
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), metadata=meta)
    return "full"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module | None, state: dict, config: dict,
                    base_model: str, weights: dict[str, torch.Tensor] | None = None, *, writer=None) -> Path:
    """Write checkpoint ``step`` atomically (see the module docstring); returns its folder.
    ``weights``: a sharded model's gathered weights (:func:`trained_state`). ``writer(folder,
    metadata) -> kind``: writes the weights instead of :func:`save_weights` (a VAR recipe writes a
    whole VAR model folder, kind "var", so that every checkpoint is itself a loadable model)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # half-written by a run that was killed: one writer per run, so not ours
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        h = config_hash(config)
        stamp = {"vgen_version": __version__, "config_hash": h}
        kind = writer(tmp, stamp) if writer is not None else save_weights(model, tmp, stamp, weights)
        if delay := float(os.environ.get("VGEN_CHECKPOINT_DELAY", "0")):  # crash tests: a wide window
            time.sleep(delay)                                             # in the middle of a write
        torch.save(state, tmp / "state.pt")
        atomic_write_json(tmp / "meta.json", {"step": step, "kind": kind, "config_hash": h,
                                              "vgen_version": __version__, "base_model": base_model})
        final = root / name
        if final.exists():  # a re-run of the same step after a resume: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", name + "\n")
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    folder = latest.parent / latest.read_text().strip()
    if not (folder / "meta.json").is_file():
        raise UserError(f"{latest} names {folder.name!r}, which is not a complete checkpoint")
    return folder


def read_meta(ckpt: Path) -> dict:
    try:
        return json.loads((Path(ckpt) / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {str(ckpt)!r}: {e}") from None


def load_state(ckpt: Path) -> dict:
    try:
        return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state file is the same user error
        raise UserError(f"checkpoint {str(ckpt)!r} has a missing or corrupt state.pt ({type(e).__name__})") from None


def apply_weights(ckpt: Path, model: torch.nn.Module) -> str:
    """Load a checkpoint's weights into the base ``model`` in place: attaches the LoRA adapter (kind
    "lora"), or replaces every weight (kind "full": a diffusers denoiser; kind "var": a VAR
    transformer from the checkpoint's model folder). Returns the kind."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    kind = read_meta(ckpt).get("kind")
    try:
        if kind == "lora":
            from peft import LoraConfig, set_peft_model_state_dict

            if not (ckpt / "adapter_config.json").is_file():  # else peft would look for it on the hub
                raise UserError(f"checkpoint {str(ckpt)!r} has no adapter_config.json")
            if not _is_lora(model):
                model.add_adapter(LoraConfig.from_pretrained(str(ckpt)))
            result = set_peft_model_state_dict(model, load_file(str(ckpt / ADAPTER_WEIGHTS)))
            if getattr(result, "unexpected_keys", None):
                raise UserError(f"checkpoint {str(ckpt)!r} does not fit this model: "
                                f"unexpected {result.unexpected_keys[0]!r}")
        elif kind == "full":
            folder = ckpt / "transformer"
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise UserError(f"checkpoint {str(ckpt)!r} has no transformer weights")
            state = {}
            for f in files:
                state.update(load_file(str(f)))
            model.load_state_dict(state, strict=True)
        elif kind == "var":  # a VAR model folder: the transformer's weights
            model.load_state_dict(load_file(str(ckpt / "var.safetensors")), strict=True)
        else:
            raise UserError(f"checkpoint {str(ckpt)!r} has an unknown kind {kind!r}")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / zero-byte / foreign weights: safetensors, peft and torch
        # raise their own types (SafetensorError, KeyError, ...); each is the same user error here
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load checkpoint {str(ckpt)!r}: {why}") from None
    return kind


def latest_eval(run_dir: Path) -> dict | None:
    """The newest evaluation report of a run (``eval/*/report.json`` by step), or None."""
    reports = sorted(Path(run_dir).glob("eval/*/report.json"))
    if not reports:
        return None
    try:
        return json.loads(reports[-1].read_text())
    except (OSError, ValueError):
        raise UserError(f"{reports[-1]}: not a readable evaluation report") from None


def run_config(run_dir: Path) -> dict:
    """A run directory's config.yaml as a mapping; anything else is a one-line UserError."""
    from vgen.config import read_yaml

    config = read_yaml(Path(run_dir) / "config.yaml")
    if not isinstance(config, dict):
        raise UserError(f"{Path(run_dir) / 'config.yaml'} is not a mapping of config keys")
    return config


def read_run(run_dir: Path) -> dict:
    """What a Sol-RL run directory says about itself: config, base model, newest checkpoint and evaluation."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if not isinstance(config.get("model"), str):
        raise UserError(f"{run_dir / 'config.yaml'} names no base model (a top-level 'model:' key)")
    ckpt = latest_checkpoint(run_dir)
    return {"dir": run_dir, "config": config, "base_model": config["model"], "checkpoint": ckpt,
            "meta": read_meta(ckpt) if ckpt else None, "eval": latest_eval(run_dir)}


def check_resumable(run_dir: Path, config: dict) -> Path:
    """The newest checkpoint of ``run_dir`` if ``config`` may continue it; a checkpoint written
    under another config is refused with the differing keys named."""
    from vgen.config import read_yaml

    ckpt = latest_checkpoint(run_dir)
    old = read_yaml(Path(run_dir) / "config.yaml")
    old = old if isinstance(old, dict) else {}
    if config_hash(old) != read_meta(ckpt).get("config_hash"):
        raise UserError(f"cannot resume {run_dir}: its config.yaml does not match its checkpoint's config hash")
    if config_hash(config) != config_hash(old):
        a, b = resumable(old), resumable(config)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise UserError(f"cannot resume {run_dir}: its checkpoint was trained with another config "
                        f"(differs in: {', '.join(diff)})")
    return ckpt
