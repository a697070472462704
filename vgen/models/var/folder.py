"""The VAR model folder: a trained tokenizer + transformer that `vgen sample` and the VAR recipes load.

    config.json          {"format": "vgen-var", "version": 1, "vqvae": {...}, "var": {...} | null,
                          "patch_nums": [...], "class_prompts": [...], "resolution": 64,
                          "sampling": {"cfg": ..., "top_k": ..., "top_p": ...}, ...}
    vqvae.safetensors    the multi-scale VQ-VAE
    var.safetensors      the transformer (absent in a tokenizer-only folder: "var": null)
    README.md            model card

``vqvae`` / ``var`` hold the constructor keyword arguments of :class:`VQVAE` / :class:`VAR`, so
a folder is rebuilt without code of its own (no pickle anywhere: JSON and safetensors). Class
``c`` means ``class_prompts[c]``; a class-conditional model has exactly that many classes.
The models are built uninitialised and the tensors assigned (``official.load_state``:
strict, one-line errors), so a damaged folder is a one-line :class:`UserError`, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vgen.errors import UserError
from vgen.models.var.official import load_state, read_state_dict, uninitialized
from vgen.models.var.var import VAR
from vgen.models.var.vqvae import VQVAE

FORMAT = "vgen-var"
VERSION = 1
# a folder's sampling defaults when none are given: the official CFG, no top-k / top-p filtering
DEFAULT_SAMPLING = {"cfg": 1.5, "top_k": 0, "top_p": 0.0}


def build_vqvae(arch: dict, device="cpu") -> VQVAE:
    """A VQ-VAE from constructor arguments; ``arch`` is kept on the model for saving."""
    with torch.device(device):
        vae = VQVAE(**arch)
    vae.arch = dict(arch)
    return vae


def build_var(arch: dict, device="cpu") -> VAR:
    """A VAR from constructor arguments; a ``control`` entry (ScaleWeaver) also attaches its adapter."""
    arch = dict(arch)
    control = arch.pop("control", None)
    with torch.device(device):
        var = VAR(**arch)
    var.arch = arch
    if control is not None:
        from vgen.scaleweaver.adapter import attach_control

        attach_control(var, **control)
    return var


def is_var_folder(path) -> bool:
    """A folder whose config.json says it is a vgen VAR model (the test `vgen sample` uses)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _jsonable(arch: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}


def write_var_files(folder, vqvae: VQVAE, var: VAR | None, class_prompts, resolution: int,
                    sampling: dict | None = None, card: str | None = None, extra: dict | None = None,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write the files of a model folder into the existing ``folder`` (a checkpoint writer or
    :func:`save_var_model` makes it atomic). ``metadata``: strings stamped into each safetensors file."""
    from safetensors.torch import save_file

    for name, m in (("vqvae", vqvae), ("var", var)):
        if m is not None and not hasattr(m, "arch"):
            raise ValueError(f"the {name} was not made by build_{name}(), its constructor arguments are unknown")
    if var is not None and var.num_classes != len(class_prompts):
        raise ValueError(f"the VAR has {var.num_classes} classes but {len(class_prompts)} class prompts were given")
    folder = Path(folder)
    config = {"format": FORMAT, "version": VERSION, "vqvae": _jsonable(vqvae.arch),
              "var": _jsonable(var.arch) if var is not None else None, "patch_nums": list(vqvae.patch_nums),
              "class_prompts": list(class_prompts), "resolution": int(resolution),
              "sampling": sampling or dict(DEFAULT_SAMPLING), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = {"format": "pt", **(metadata or {})}
    save_file({k: v.detach().cpu().contiguous() for k, v in vqvae.state_dict().items()},
              str(folder / "vqvae.safetensors"), metadata=meta)
    if var is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in var.state_dict().items()},
                  str(folder / "var.safetensors"), metadata=meta)
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def save_var_model(path, vqvae: VQVAE, var: VAR | None, class_prompts, resolution: int, sampling: dict | None = None,
                   card: str | None = None, extra: dict | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write a model folder atomically (built in a hidden sibling, then renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        write_var_files(tmp, vqvae, var, class_prompts, resolution, sampling, card, extra, metadata)
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path) -> dict:
    """config.json of a VAR model folder, checked; any problem is one line naming the folder."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"VAR model folder not found: {str(path)!r}")
    try:
        config = json.loads((path / "config.json").read_text())
    except OSError as e:
        raise UserError(f"{str(path)!r} is not a VAR model folder: cannot read config.json ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{str(path)!r}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{str(path)!r}: config.json is not a {FORMAT} config (no \"format\": \"{FORMAT}\")")
    for key, kind in (("vqvae", dict), ("patch_nums", list), ("class_prompts", list), ("resolution", int)):
        if not isinstance(config.get(key), kind):
            raise UserError(f"{str(path)!r}: config.json needs {key!r} as a {kind.__name__}")
    if config.get("var") is not None and not isinstance(config["var"], dict):
        raise UserError(f"{str(path)!r}: config.json's 'var' must be a mapping or null")
    where = f"{str(path)!r}: config.json's"
    if not all(isinstance(p, str) and p for p in config["class_prompts"]):
        raise UserError(f"{where} 'class_prompts' must be a list of non-empty strings")
    pns = config["patch_nums"]
    if not pns or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pns) \
            or pns != sorted(set(pns)):
        raise UserError(f"{where} 'patch_nums' must be increasing positive integers, got {pns!r}")
    if isinstance(config["resolution"], bool) or config["resolution"] < 1:
        raise UserError(f"{where} 'resolution' must be a positive number of pixels, got {config['resolution']!r}")
    check_sampling(config.get("sampling"), where)
    return config


def check_sampling(sampling, where: str) -> None:
    """A folder's sampling defaults, all optional: {"cfg": finite >= 0, "top_k": int >= 0, "top_p": in
    [0, 1], "depth": int >= 1 and "switch_scale": int >= 0 (VARiant's run-time depth; their range
    against the model is checked when a plan is made, vgen.sample.var_depth_plan), "control": edges |
    mask, "guide_control": bool and "cfg_control": finite >= 0 (ScaleWeaver: the kind of condition,
    whether CFG drops it, or its own guidance scale)}."""
    import math

    if sampling is None:
        return
    if not isinstance(sampling, dict):
        raise UserError(f"{where} 'sampling' must be a mapping (cfg, top_k, top_p, depth, switch_scale, control, "
                        "guide_control, cfg_control), "
                        f"got {sampling!r}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    integer = lambda v, lo: isinstance(v, int) and not isinstance(v, bool) and v >= lo  # noqa: E731
    checks = {"cfg": lambda v: number(v) and v >= 0, "top_p": lambda v: number(v) and 0 <= v <= 1,
              "top_k": lambda v: integer(v, 0), "depth": lambda v: integer(v, 1),
              "switch_scale": lambda v: integer(v, 0), "control": lambda v: v in ("edges", "mask"),
              "guide_control": lambda v: isinstance(v, bool), "cfg_control": lambda v: number(v) and v >= 0}
    for key, v in sampling.items():
        if key not in checks:
            raise UserError(f"{where} 'sampling' has an unknown key {key!r} (cfg, top_k, top_p, depth, switch_scale, "
                            "control, guide_control, cfg_control)")
        if not checks[key](v):
            raise UserError(f"{where} sampling {key}={v!r}: cfg must be finite and >= 0, top_k must be >= 0 "
                            "(an integer), top_p must lie in [0, 1], depth must be an integer >= 1, "
                            "switch_scale an integer >= 0, control edges or mask, guide_control true or false, "
                            "cfg_control finite and >= 0")


def _build(kind, arch: dict, folder: Path):
    try:
        with uninitialized():
            return build_var(arch) if kind is build_var else kind(**arch)
    except (TypeError, ValueError, AssertionError) as e:
        name = "VAR" if kind is build_var else kind.__name__
        raise UserError(f"{str(folder)!r}: config.json's {name} arguments are invalid: {e}") from None


def load_var_model(path, device="cpu", tokenizer_only: bool = False) -> tuple[VQVAE, VAR | None, dict]:
    """(VQ-VAE, VAR, config) of a model folder, both in eval mode on ``device``.

    The VAR is None for a tokenizer-only folder or with ``tokenizer_only``; a folder that should
    hold one and does not, or whose tensors do not fit its config, is a one-line UserError."""
    path = Path(path)
    config = read_config(path)
    pns = tuple(config["patch_nums"])
    vae_arch = {**config["vqvae"], "patch_nums": pns}
    vae = _build(VQVAE, vae_arch, path)
    vae = load_state(vae, read_state_dict(path / "vqvae.safetensors"), path / "vqvae.safetensors")
    vae.arch = vae_arch
    vae = vae.to(device).eval()
    var = None
    if config.get("var") is not None and not tokenizer_only:
        var_arch = {**config["var"], "patch_nums": pns}
        if var_arch.get("num_classes") != len(config["class_prompts"]):
            raise UserError(f"{str(path)!r}: the VAR has {var_arch.get('num_classes')} classes but config.json "
                            f"lists {len(config['class_prompts'])} class prompts")
        var = _build(build_var, var_arch, path)
        var = load_state(var, read_state_dict(path / "var.safetensors"), path / "var.safetensors")
        var.arch = var_arch
        var = var.to(device).eval()
    return vae, var, config
