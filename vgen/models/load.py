"""The one loader: whatever names a model, vgen reads it here.

``load(spec)`` accepts, and tells apart:

* a diffusers pipeline folder (``model_index.json``): SD3 / SD3.5, FLUX.1 or SANA, loaded as the
  engine policy; prompts come from the shapes grammar (or the caller's prompt file);
* a VAR / FlexVAR model folder (``config.json`` with ``"format": "vgen-var"``): tokenizer +
  transformer, class prompts and sampling defaults from its config;
* official VAR checkpoint files: ``"VAE.pth,VAR.pth"`` (two paths joined by a comma), a list of
  the two, or a folder holding ``vae_ch160v4096z32.pth`` and exactly one ``var_d*.pth``; read with
  ``weights_only=True``, architecture checked against the tensors (``vgen.models.var.official``);
  1000 ImageNet classes named ``class N``;
* a run directory (``config.yaml`` written by ``vgen train``): its newest checkpoint, or the one
  ``checkpoint=`` names (``step-000500`` or ``500``); a path to a checkpoint folder inside a run
  works too. A Sol-RL checkpoint is applied to its base pipeline (LoRA attached, or full
  weights); a VAR-family checkpoint is itself a VAR model folder.

The result, :class:`Loaded`, says what it is (``kind`` "pipeline" | "var", ``source`` "model" |
"run" | "official"), holds the model(s), the classes or the prompt source, the sampling
defaults and, for a run, the run's config, checkpoint and newest evaluation. ``weights=False``
reads only what describes the model (for checking arguments before a long load). Every
problem is a one-line :class:`UserError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vgen.errors import UserError

OFFICIAL_VAE = "vae_ch160v4096z32.pth"
OFFICIAL_SAMPLING = {"cfg": 4.0, "top_k": 900, "top_p": 0.95}  # the released demo's settings


@dataclass
class Loaded:
    kind: str                                   # "pipeline" | "var"
    source: str                                 # "model" | "run" | "official"
    path: Path                                  # what was asked for
    base: Path | None = None                    # the base model folder (a run's base; else the folder itself)
    policy: object = None                       # pipeline: the engine policy, a run's checkpoint applied
    vqvae: object = None                        # var: the tokenizer
    var: object = None                          # var: the transformer (None in a tokenizer-only folder)
    classes: list[str] | None = None            # var: class c's prompt (or name)
    prompt_source: str | None = None            # pipeline: where evaluation prompts come from
    sampling: dict = field(default_factory=dict)  # var: cfg / top_k / top_p; pipeline: steps / guidance
    resolution: int = 64
    config: dict | None = None                  # var: config.json; run: config.yaml
    checkpoint: Path | None = None              # run: the checkpoint loaded
    meta: dict | None = None                    # run: its meta.json
    step: int | None = None                     # run: its step
    eval: dict | None = None                    # run: its newest evaluation report
    var_config: dict | None = None              # var: the model folder's config.json
    adapter: Path | None = None                 # var: a control adapter folder put on it (load(adapter=...))

    @property
    def name(self) -> str:
        return self.path.name if self.source != "official" else "var-official"


# ---------------------------------------------------------------- what a path is


def _official_pair(spec) -> tuple[Path, Path] | None:
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise UserError(f"official checkpoints are a pair (VQ-VAE file, VAR file), got {len(spec)} paths")
        return Path(spec[0]), Path(spec[1])
    s = str(spec)
    if "," in s and not Path(s).exists():
        parts = [p.strip() for p in s.split(",")]
        if len(parts) != 2 or not all(parts):
            raise UserError(f"official checkpoints are two files joined by a comma (VAE,VAR), got {s!r}")
        return Path(parts[0]), Path(parts[1])
    p = Path(s)
    if p.is_dir() and (p / OFFICIAL_VAE).is_file():
        vars_ = sorted(p.glob("var_d*.pth"))
        if len(vars_) != 1:
            raise UserError(f"{s!r} holds {OFFICIAL_VAE} and {len(vars_)} var_d*.pth files; name the pair as "
                            f"'{p / OFFICIAL_VAE},{p / 'var_dNN.pth'}'")
        return p / OFFICIAL_VAE, vars_[0]
    return None


def _checkpoint_in(run: Path, checkpoint: str | int | None) -> Path:
    from vgen.train.checkpoint import latest_checkpoint

    if checkpoint is None:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise UserError(f"run {str(run)!r} has no checkpoint yet (checkpoints/latest is missing)")
        return ckpt
    name = str(checkpoint)
    if re.fullmatch(r"\d+", name):
        name = f"step-{int(name):06d}"
    ckpt = run / "checkpoints" / name
    if not (ckpt / "meta.json").is_file():
        have = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
        raise UserError(f"run {str(run)!r} has no complete checkpoint {name!r} (it has: {', '.join(have) or 'none'})")
    return ckpt


# ---------------------------------------------------------------- loading


def load(spec, *, device: str = "cpu", dtype: str = "float32", checkpoint: str | int | None = None,
         weights: bool = True, tokenizer_only: bool = False, adapter=None) -> Loaded:
    """Load what ``spec`` names (see the module docstring); ``adapter``: a ScaleWeaver control adapter
    folder (`vgen export --format adapter`) to put on it, a VAR model."""
    out = _load(spec, device, dtype, checkpoint, weights, tokenizer_only)
    return out if adapter is None else _with_adapter(out, Path(adapter), weights)


def _load(spec, device: str, dtype: str, checkpoint, weights: bool, tokenizer_only: bool) -> Loaded:
    pair = _official_pair(spec)
    if pair is not None:
        return _load_official(pair, device, weights)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"model folder not found: {str(path)!r} does not exist (neither a model folder nor a vgen run)")
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is a file; a model is a folder (or official checkpoints 'VAE.pth,VAR.pth')")
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file() and checkpoint is None:
        return _load_run(path.parent.parent, path.name, device, dtype, weights, tokenizer_only, asked=path)
    if (path / "model_index.json").is_file():
        return _load_pipeline(path, device, dtype, weights)
    if (path / "config.json").is_file():
        return _load_var_folder(path, device, weights, tokenizer_only)
    if (path / "config.yaml").is_file():
        return _load_run(path, checkpoint, device, dtype, weights, tokenizer_only)
    raise UserError(f"{str(path)!r} is neither a model folder (no model_index.json, nor a VAR model's config.json) "
                    "nor a vgen run (no config.yaml)")


def _with_adapter(out: Loaded, folder: Path, weights: bool) -> Loaded:
    """``out`` with the control adapter in ``folder`` attached: the base's weights untouched (the adapter
    adds its own parameters), its folder arch gaining ``control``, and the adapter's recorded sampling
    (CFG, condition kind and guidance, as its recipe evaluated it) over the base's."""
    from vgen.scaleweaver.adapter import attach_saved, check_fit, read_adapter

    if out.kind != "var" or out.var_config is None:
        what = "a diffusers pipeline" if out.kind == "pipeline" else "official checkpoint files"
        raise UserError(f"--adapter puts a ScaleWeaver control adapter on a VAR model folder or run; "
                        f"{str(out.path)!r} is {what}")
    config = read_adapter(folder)
    arch = dict(out.var_config.get("var") or {})
    if arch.get("control"):
        raise UserError(f"{str(out.path)!r} already has a control adapter; --adapter goes on its base")
    check_fit(config, arch, folder)
    if weights and out.var is not None:
        attach_saved(out.var, folder, config)  # read and checked once, above
    out.var_config = {**out.var_config, "var": {**arch, "control": dict(config["control"])}}
    out.sampling = {**out.sampling, **config["sampling"]}
    out.adapter = folder
    return out


def _pipeline_sampling(folder: Path) -> dict:
    """Sampling defaults a vgen base records in ``vgen_base.json`` (CFG scale, steps), if any."""
    try:
        info = json.loads((folder / "vgen_base.json").read_text())
        return {"guidance": float(info["cfg"]), "steps": int(info["eval_steps"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _load_pipeline(path: Path, device: str, dtype: str, weights: bool) -> Loaded:
    from vgen.models.policy import check_pipeline_folder, policy_from_folder

    check_pipeline_folder(path)
    policy = policy_from_folder(path, device, dtype) if weights else None
    return Loaded("pipeline", "model", path, base=path, policy=policy, prompt_source="shapes grammar",
                  sampling=_pipeline_sampling(path))


def _load_var_folder(path: Path, device: str, weights: bool, tokenizer_only: bool, **run) -> Loaded:
    from vgen.models.var.folder import DEFAULT_SAMPLING, load_var_model, read_config

    config = read_config(path)
    vqvae = var = None
    if weights:
        vqvae, var, config = load_var_model(path, device, tokenizer_only=tokenizer_only)
    sampling = {**DEFAULT_SAMPLING, **(config.get("sampling") or {})}
    run.setdefault("base", path)
    return Loaded("var", run.pop("source", "model"), run.pop("asked", path), vqvae=vqvae, var=var,
                  classes=list(config["class_prompts"]), sampling=sampling, resolution=int(config["resolution"]),
                  var_config=config, config=run.pop("config", config), **run)


def _load_official(pair: tuple[Path, Path], device: str, weights: bool) -> Loaded:
    from vgen.models.var.official import load_official

    for p in pair:
        if not p.is_file():
            raise UserError(f"official checkpoint not found: {str(p)!r}")
    vqvae, var = load_official(*pair, device=device) if weights else (None, None)
    return Loaded("var", "official", pair[1], base=pair[1].parent, vqvae=vqvae, var=var,
                  classes=[f"class {i}" for i in range(1000)], sampling=dict(OFFICIAL_SAMPLING), resolution=256)


def _load_run(run: Path, checkpoint, device: str, dtype: str, weights: bool, tokenizer_only: bool,
              asked: Path | None = None) -> Loaded:
    from vgen.models.var.folder import is_var_folder
    from vgen.train.checkpoint import apply_weights, latest_eval, read_meta, run_config

    config = run_config(run)
    ckpt = _checkpoint_in(run, checkpoint)
    meta = read_meta(ckpt)
    common = dict(config=config, checkpoint=ckpt, meta=meta, step=meta.get("step"), eval=latest_eval(run))
    if is_var_folder(ckpt):
        return _load_var_folder(ckpt, device, weights, tokenizer_only, source="run", asked=asked or run, **common)
    base = config.get("model")
    if not isinstance(base, str):
        raise UserError(f"{run / 'config.yaml'} names no base model (a top-level 'model:' key)")
    out = _load_pipeline(Path(base), device, dtype, weights)
    if weights:
        apply_weights(ckpt, out.policy.transformer)
    out.source, out.path = "run", asked or run
    for k, v in common.items():
        setattr(out, k, v)
    return out


def load_policy(spec, device: str = "cpu", dtype: str = "float32"):
    """The engine policy of a pipeline folder or of a Sol-RL run (its checkpoint applied)."""
    out = load(spec, device=device, dtype=dtype)
    if out.kind != "pipeline":
        raise UserError(f"{str(spec)!r} is a VAR model, not a diffusers pipeline")
    return out.policy


def pipeline_defaults(spec) -> dict:
    """Sampling defaults (``steps``, ``guidance``) of a pipeline folder or run, without loading weights."""
    return load(spec, weights=False).sampling
