"""`vgen export`: a run or a model folder as one folder a user can hand to a colleague.

Formats (``fmt``):

* ``diffusers`` (default): a complete pipeline folder written by ``save_pretrained`` (safetensors).
  A LoRA run adds its adapter as ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights(OUT)``);
  with ``merge_lora`` the adapter is fused into the transformer weights and no adapter file is written.
  A full fine-tune gives the base pipeline with the trained transformer; a model folder, itself.
* ``peft``: the LoRA alone: ``adapter_config.json`` + ``adapter_model.safetensors`` in the layout
  ``PeftModel.save_pretrained`` writes (keys ``base_model.model.<module>...``, so
  ``PeftModel.from_pretrained(transformer, OUT)`` loads it), plus ``pytorch_lora_weights.safetensors``
  for ``pipe.load_lora_weights``. Only LoRA runs have an adapter to export.
* ``var``: a VAR model folder (the only format of a VAR source; see :func:`export_var`).
* ``vgen``: a minimal run directory that ``vgen.models.load.load`` reads back: ``config.yaml``
  (``model:`` made an absolute path), ``checkpoints/latest``, the newest checkpoint's ``meta.json`` and
  weights as they are (no ``state.pt``: optimizer and RNG state are for resuming, not for handing on), and
  the newest evaluation report. It still needs the base folder it names.

Every format adds ``README.md`` (card.py) and ``samples.png`` (a run on a shapes-world base also
``before_after.png``: the same held-out prompts and seeds from the base and the result), and every
safetensors file written carries ``vgen_version`` and ``config_hash`` in its metadata. Components keep
the dtype their source stores (a bf16 base stays bf16; LoRA merges are computed in float32 first).

Nothing is overwritten by accident and nothing half-written is left: the folder is built in a hidden
temporary folder beside OUT (same filesystem), renamed into place only once complete (``force``
replaces an existing non-empty OUT at that moment, never earlier), and removed on any failure.
Nothing is uploaded anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

from vgen import __version__
from vgen.errors import UserError

FORMATS = ("diffusers", "peft", "vgen", "var", "adapter")
LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def export(src: str | Path, out: str | Path, fmt: str = "diffusers", merge_lora: bool = False, force: bool = False,
           *, sample_steps: int | None = None, sample_size: int | None = None, eval_report: str | None = None) -> dict:
    """Export ``src`` (a model folder or a run directory) to the folder ``out``; see the module docstring.

    ``merge_lora`` is refused with the peft and vgen formats and changes nothing for a source without a
    LoRA. ``sample_steps`` / ``sample_size`` override the sample grid's steps and resolution (default: the
    base's ``vgen_base.json``, else 20 steps and the pipeline's default size). ``eval_report``: the
    evaluation (a report.json or the folder holding one) whose figures the card states, instead of
    the run's newest (a model folder has none of its own). Returns
    ``{"out", "card", "format", "kind", "merged"}`` (``out`` made absolute).
    """
    src, out = Path(src), Path(os.path.abspath(out))  # absolute: "." or "x/" still name a folder and its parent
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {', '.join(FORMATS)}")
    report = read_report(eval_report) if eval_report else None
    if _is_var(src):
        return export_var(src, out, fmt, merge_lora, force, report=report)
    if fmt in ("var", "adapter"):
        raise UserError(f"--format {fmt} is for VAR models; {str(src)!r} is not one")
    if merge_lora and fmt != "diffusers":
        raise UserError(f"--merge-lora applies to --format diffusers only (the {fmt} format keeps the adapter apart)")
    source = read_source(src)
    if report is not None:
        source["eval"], source["eval_name"] = report, Path(eval_report).name
    if fmt == "peft" and source["kind"] != "lora":
        what = "a model folder" if source["kind"] == "model" else "a full fine-tune run"
        raise UserError(f"{str(src)!r} is {what}: it has no LoRA adapter to export with --format peft")
    if fmt == "vgen" and source["kind"] == "model":
        raise UserError(f"{str(src)!r} is a model folder, not a vgen run: export it with --format diffusers")
    _check_out(out, force, [src, source["base"]])
    tmp = _temp_beside(out)
    try:
        _build(source, tmp, fmt, merge_lora, out.name, sample_steps, sample_size)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "card": out / "README.md", "format": fmt, "kind": source["kind"],
            "merged": merge_lora and source["kind"] == "lora",
            "before_after": out / "before_after.png" if (out / "before_after.png").is_file() else None}


def _is_var(src: Path) -> bool:
    from vgen.models.load import load
    from vgen.models.var.folder import is_var_folder

    try:
        return load(src, weights=False).kind == "var"
    except UserError:
        return is_var_folder(src)  # a damaged VAR folder says what is wrong in export_var; others in read_source


def read_report(path) -> dict:
    """An evaluation report: ``path`` is a report.json or the folder holding one."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    try:
        report = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--eval: cannot read the evaluation report {str(p)!r} ({getattr(e, 'strerror', None) or e})")\
            from None
    if not isinstance(report, dict):
        raise UserError(f"--eval: {str(p)!r} is not a vgen evaluation report")
    return report


def export_var(src: Path, out: Path, fmt: str = "var", merge_lora: bool = False, force: bool = False,
               sample_classes: int = 12, report: dict | None = None) -> dict:
    """Export a VAR model folder or a VAR-family run (its newest checkpoint) as a VAR model folder:
    config.json + vqvae / var safetensors (stamped with vgen_version and config_hash), samples.png
    (the first ``sample_classes`` classes, seed 0, the model's sampling defaults) and a model card
    whose metrics come from the newest evaluation report (a run's ``eval/*/report.json``, or one in
    the folder's own ``eval/``). The weights are written unchanged, so the export samples exactly
    as its source.

    ``fmt="adapter"`` (a model with a ScaleWeaver control adapter): only the adapter, as
    ``adapter_config.json`` (the control's arch, the base's arch and scales it fits, the sampling
    defaults) and ``adapter.safetensors`` (its weights), with samples made under held-out world
    scenes' conditions; `vgen sample / eval --adapter` (or ``vgen.scaleweaver.adapter.load_adapter``) puts it
    back on the base."""
    from vgen.eval.harness import var_images
    from vgen.export.card import WORLD_DATASET, build_card
    from vgen.images import sample_sheet
    from vgen.models.load import load
    from vgen.models.var.folder import write_var_files
    from vgen.scaleweaver.conditions import condition_guidance
    from vgen.train.checkpoint import latest_eval
    from vgen.world.grammar import is_grammar_prompt

    if fmt not in ("var", "diffusers", "adapter"):  # diffusers: the CLI's default, "the model's own format"
        raise UserError(f"--format {fmt} does not apply to a VAR model: it exports as a VAR model folder "
                        "(--format var) or, with a control adapter, as the adapter alone (--format adapter)")
    if merge_lora:
        raise UserError("--merge-lora: a VAR checkpoint holds whole weights, there is no adapter to merge")
    load(src, weights=False)  # a damaged folder or run is refused before anything is checked or written
    _check_out(out, force, [src])
    m = load(src)
    if m.var is None:
        raise UserError(f"{str(src)!r} holds a tokenizer only: there is no VAR transformer to export")
    control = getattr(m.var, "control", None)
    if fmt == "adapter" and control is None:
        raise UserError(f"{str(src)!r} has no control adapter to export (--format adapter is for scaleweaver models)")
    run = src.parent.parent if src.parent.name == "checkpoints" else src
    given = report is not None
    if not given:
        report = m.eval if m.source == "run" else (latest_eval(src) if (src / "eval").is_dir() else None)
    reports = [] if given else sorted(run.glob("eval/*/report.json"))
    if m.source == "run":
        digest = str(m.meta.get("config_hash"))
    else:
        digest = hashlib.sha256((Path(m.base) / "config.json").read_bytes()).hexdigest()[:16]
    tmp = _temp_beside(out)
    try:
        std = ("format", "version", "vqvae", "var", "patch_nums", "class_prompts", "resolution", "sampling")
        extra = {k: v for k, v in m.var_config.items() if k not in std}
        stamp = {"vgen_version": __version__, "config_hash": digest}
        shown = list(range(min(sample_classes, len(m.classes))))
        conditions = None
        if fmt == "adapter":
            from vgen.scaleweaver.adapter import save_adapter
            from vgen.scaleweaver.conditions import scene_conditions

            save_adapter(tmp, m.var, m.classes, m.resolution, m.sampling, stamp)
            conditions, _ = scene_conditions(shown, [2_000_000] * len(shown), m.sampling.get("control", "edges"),
                                             m.resolution)
        else:
            write_var_files(tmp, m.vqvae, m.var, m.classes, m.resolution, m.sampling, extra=extra, metadata=stamp)
        images = var_images(m.var, m.vqvae, shown, [0], {k: m.sampling[k] for k in ("cfg", "top_k", "top_p")},
                            conditions=conditions, cfg_control=condition_guidance(m.sampling, m.sampling["cfg"]))
        verdicts = sample_sheet(tmp / "samples.png", images, [f"{c}: {m.classes[c]}" for c in shown],
                                [m.classes[c] for c in shown], cols=6)
        note = (f"Classes 0-{len(shown) - 1}, seed 0, CFG {m.sampling['cfg']}, top-k {m.sampling['top_k']}, top-p "
                f"{m.sampling['top_p']}, made at export"
                + (f", under the {m.sampling.get('control', 'edges')} map of each class's held-out world scene "
                   "(seed 2,000,000)" if conditions is not None else "")
                + (f"; the bar is the shapes verifier's strict verdict, {sum(v.strict for v in verdicts)}/"
                   f"{len(verdicts)} correct." if verdicts else "."))
        recipe = (m.config or {}).get("recipe") if m.source == "run" else None
        flex = "FlexVAR" if m.var.flex else "VAR"
        what = (f"A class-conditional {flex} trained with vgen's `{recipe}` recipe (checkpoint step {m.step})"
                if m.source == "run" else f"The class-conditional {flex} model folder `{Path(src).name}`")
        n = sum(p.numel() for p in m.var.parameters())
        desc = (f"{what}: depth {m.var.depth}, width {m.var.C}, {n / 1e6:.2f}M parameters, scales "
                f"{list(m.var.patch_nums)}, {len(m.classes)} classes, {m.resolution}px images.")
        snippet = "\n".join([
            "```", f"vgen sample --model {out.name} --classes 0 5 12 --seeds 0-3 --out samples",
            f"vgen eval --model {out.name} --seeds 0-9", "```", "```python",
            "from vgen.models.load import load", "from vgen.engine.scalewise import sample", "",
            f'm = load("{out.name}")',
            "images = sample(m.var, m.vqvae, class_ids=[0, 5], seeds=[0, 1], **m.sampling).images", "```"])
        files = [("config.json", "architecture, class names, scale list, sampling defaults"),
                 ("vqvae.safetensors", "the multi-scale VQ-VAE tokenizer"),
                 ("var.safetensors", "the transformer" + (" with its control adapter" if control else ""))]
        if fmt == "adapter":
            desc = (f"A ScaleWeaver `{control.mode}` control adapter ({control.trainable():,} parameters, first "
                    f"{control.blocks} blocks) for the frozen {flex} base of `{Path(src).name}` ({desc[0].lower()}"
                    f"{desc[1:]})")
            files = [("adapter_config.json", "the control's arch, the base arch it fits, sampling defaults"),
                     ("adapter.safetensors", "the adapter's weights (LoRA of the condition branch, projections"
                      + (", the branch copy" if control.mode == "controlnet" else "") + ")")]
            snippet = "\n".join([
                "```bash",
                f"vgen sample --model BASE_MODEL_FOLDER --adapter {out.name} --classes 0 5 --control-seeds 7 --out s",
                f"vgen eval --model BASE_MODEL_FOLDER --adapter {out.name} --metrics geneval control",
                "```", "", "or in Python:", "",
                "```python", "from vgen.models.load import load", "from vgen.engine.scalewise import sample",
                "from vgen.scaleweaver.adapter import load_adapter",
                "from vgen.scaleweaver.conditions import control_run, scene_conditions", "",
                'm = load("BASE_MODEL_FOLDER")', f'load_adapter(m.var, "{out.name}")',
                "conds, _ = scene_conditions([0, 5], [7, 7], 'edges', m.resolution)",
                "run = control_run(m.var, m.vqvae, conds, cfg=2.0)",
                "images = sample(m.var, m.vqvae, [0, 5], [0, 1], cfg=2.0, top_k=40, control=run).images", "```"])
        world = all(map(is_grammar_prompt, m.classes))
        summary = {"name": out.name, "description": desc, "format": fmt if fmt == "adapter" else "var",
                   "lora": False, "merged": False,
                   "base_card": {}, "base_model": None, "datasets": [WORLD_DATASET] if world else None,
                   "recipe": recipe, "kind": "var", "config": m.config if m.source == "run" else None,
                   "base_name": Path(src).name, "checkpoint": m.checkpoint.name if m.checkpoint else None,
                   "config_hash": digest, "eval": report,
                   "eval_name": reports[-1].parent.name if reports else ("given" if given else None),
                   "eval_path": str(reports[-1].relative_to(run)) if reports else (
                       str(report.get("model", "")) + " evaluation (`vgen eval`)" if given else None),
                   "samples_note": note, "files": [*files, ("README.md", "this card"),
                                                   ("samples.png", "the sample sheet shown above")],
                   "vgen_version": __version__, "task": "class-conditional-image-generation",
                   "extra_tags": ["var", "visual-autoregressive"] + (["flexvar"] if m.var.flex else []),
                   "load_snippet": snippet}
        build_card(summary).save(tmp / "README.md")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "card": out / "README.md", "format": "adapter" if fmt == "adapter" else "var", "kind": "var",
            "merged": False, "before_after": None}


def read_source(src: Path) -> dict:
    """What is exported: kind ("model" | "lora" | "full"), base folder, config, checkpoint, eval; a
    missing, unknown or incomplete source is a one-line UserError."""
    from vgen.models.policy import check_pipeline_folder
    from vgen.train.checkpoint import config_hash, read_run

    if not src.is_dir():
        raise UserError(f"nothing to export: {str(src)!r} is not a folder")
    if (src / "model_index.json").is_file():
        check_pipeline_folder(src)
        digest = hashlib.sha256((src / "model_index.json").read_bytes() + b"none").hexdigest()[:16]
        return {"kind": "model", "dir": src, "base": src, "config": None, "meta": None, "checkpoint": None,
                "eval": None, "eval_name": None, "config_hash": digest}
    if not (src / "config.yaml").is_file():
        raise UserError(f"{str(src)!r} is neither a model folder (model_index.json) nor a vgen run (config.yaml)")
    info = read_run(src)
    ckpt, meta = info["checkpoint"], info["meta"]
    if ckpt is None:
        raise UserError(f"run {str(src)!r} has no checkpoint yet (checkpoints/latest is missing): nothing to export")
    if not isinstance(meta, dict) or meta.get("kind") not in ("lora", "full"):
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise UserError(f"checkpoint {str(ckpt)!r} has a corrupt meta.json (kind {kind!r}, expected 'lora' or 'full')")
    reports = sorted(src.glob("eval/*/report.json"))  # the same order as checkpoint.latest_eval
    return {"kind": meta["kind"], "dir": src, "base": Path(info["base_model"]), "config": info["config"],
            "meta": meta, "checkpoint": ckpt, "eval": info["eval"],
            "eval_name": reports[-1].parent.name if reports else None,
            "config_hash": str(meta.get("config_hash") or config_hash(info["config"]))}


def _check_out(out: Path, force: bool, sources: list[Path]) -> None:
    """Refuse to replace anything but a folder, a non-empty one without ``force``, or one that holds the source."""
    try:
        _check_out_path(out, force, sources)
    except OSError as e:  # a name longer than the file system allows, a path under a file, ...
        raise UserError(f"cannot write {str(out)!r}: {e.strerror or e}") from None


def _check_out_path(out: Path, force: bool, sources: list[Path]) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{str(out)!r} exists and is not a folder; choose another output path")
    if any(out.iterdir()) and not force:
        raise UserError(f"{str(out)!r} is not empty; use --force to replace it")
    here = out.resolve()
    for s in sources:
        s = s.resolve()
        if s == here or here in s.parents:
            raise UserError(f"refusing to replace {str(out)!r}: it holds the source {str(s)!r}")


def _temp_beside(out: Path) -> Path:
    """A hidden temporary folder beside ``out`` (same filesystem, so the final rename is atomic)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise UserError(f"cannot write beside {str(out)!r}: {e.strerror or e}") from None


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the folder the usual mode
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- building the folder


def _build(source: dict, tmp: Path, fmt: str, merge: bool, name: str, steps: int | None, size: int | None) -> None:
    from vgen.export.card import base_card_metadata, build_card
    from vgen.models.load import load_policy
    from vgen.train.checkpoint import apply_weights

    policy = load_policy(source["base"])  # also checks the base folder; float32, merged LoRA is exact there
    compare = _before_after(source, policy, steps, size)  # the base's half first, before the weights change
    if source["checkpoint"] is not None:
        apply_weights(source["checkpoint"], policy.transformer)
    samples = _samples(source, policy, tmp / "samples.png", steps, size)
    if compare is not None:
        samples["before_after"] = compare(tmp / "before_after.png")
    files = {"diffusers": _write_diffusers, "peft": _write_peft, "vgen": _write_vgen}[fmt](source, policy, tmp, merge)
    stamp_safetensors(tmp, {"vgen_version": __version__, "config_hash": source["config_hash"]})
    base_card = base_card_metadata(source["base"])
    build_card(_summary(source, fmt, merge, name, samples, files, policy, base_card)).save(tmp / "README.md")


def _lora_state(transformer) -> tuple[dict[str, torch.Tensor], object]:
    """The attached adapter's weights (diffusers module names) and its LoraConfig."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    return state, copy.deepcopy(transformer.peft_config["default"])


def _write_diffusers(source: dict, policy, tmp: Path, merge: bool) -> list[tuple[str, str]]:
    from vgen.models.sd3 import quiet_loading

    pipe, tr = policy.pipe, policy.transformer
    files = [("model_index.json", "the diffusers pipeline index"),
             ("*/", "the pipeline's components (safetensors weights and configs)")]
    lora = None
    if source["kind"] == "lora":
        lora = _lora_state(tr)
        if merge:
            tr.fuse_lora()  # W += scale * B A in every adapted linear ...
        tr.unload_lora()  # ... then plain linears again (unfused: exactly the base weights)
    _restore_dtypes(pipe, source)
    with quiet_loading():
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    if lora is not None and not merge:
        _save_diffusers_lora(type(pipe), tmp, *lora)
        files.append((LORA_FILE, "the LoRA adapter of the transformer, for `pipe.load_lora_weights`"))
    base = source["base"]
    try:
        rec = json.loads((base / "vgen_base.json").read_text())
        keep = {k: rec[k] for k in ("cfg", "eval_steps", "resolution") if k in rec}
    except (OSError, ValueError, TypeError):
        keep = {}
    if keep:  # vgen's sampling defaults (vgen.sample.recommended), not the base's own test scores
        (tmp / "vgen_base.json").write_text(json.dumps(keep, indent=2) + "\n")
        files.append(("vgen_base.json", "vgen's recommended sampling settings (CFG scale, steps)"))
    for lic in sorted(base.glob("LICENSE*")) + sorted(base.glob("NOTICE*")):
        if lic.is_file():
            shutil.copy2(lic, tmp / lic.name)
            files.append((lic.name, "the base model's license terms"))
    return files


def _save_diffusers_lora(pipe_cls, folder: Path, state: dict, config) -> None:
    """The adapter in diffusers' LoRA format, with its LoraConfig as metadata so that rank, alpha and
    targets are read back exactly rather than inferred from shapes."""
    pipe_cls.save_lora_weights(str(folder), transformer_lora_layers=state,
                               transformer_lora_adapter_metadata=config.to_dict())


def _write_peft(source: dict, policy, tmp: Path, merge: bool) -> list[tuple[str, str]]:
    from safetensors.torch import save_file

    state, config = _lora_state(policy.transformer)
    config.base_model_name_or_path = source["base"].resolve().name
    config.save_pretrained(str(tmp))
    save_file({PEFT_PREFIX + k: v for k, v in state.items()}, str(tmp / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    _save_diffusers_lora(type(policy.pipe), tmp, state, config)
    return [("adapter_config.json", "the peft LoraConfig"),
            ("adapter_model.safetensors", "the adapter weights, as `PeftModel.save_pretrained` lays them out"),
            (LORA_FILE, "the same adapter in diffusers' format, for `pipe.load_lora_weights`")]


def _write_vgen(source: dict, policy, tmp: Path, merge: bool) -> list[tuple[str, str]]:
    ckpt = source["checkpoint"]
    dst = tmp / "checkpoints" / ckpt.name
    dst.mkdir(parents=True)
    shutil.copy2(ckpt / "meta.json", dst / "meta.json")
    if source["kind"] == "lora":
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(ckpt / f, dst / f)
    else:
        shutil.copytree(ckpt / "transformer", dst / "transformer")
    (tmp / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    config = {**source["config"], "model": str(source["base"].resolve())}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    files = [("config.yaml", "the run's resolved config; `model:` is the base folder's absolute path"),
             ("checkpoints/latest", "names the checkpoint"),
             (f"checkpoints/{ckpt.name}/", "meta.json and the denoiser weights as the run saved them")]
    if source["eval_name"]:
        rel = Path("eval") / source["eval_name"] / "report.json"
        (tmp / rel).parent.mkdir(parents=True)
        shutil.copy2(source["dir"] / rel, tmp / rel)
        files.append((str(rel), "the run's newest evaluation report"))
    return files


def _stored_dtype(folder: Path) -> torch.dtype | None:
    """The floating dtype of the first tensor in a component folder's safetensors, from the header alone."""
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        for key, entry in header.items():
            if key != "__metadata__" and entry.get("dtype") in _DTYPES:
                return _DTYPES[entry["dtype"]]
    return None


def _restore_dtypes(pipe, source: dict) -> None:
    """Cast each component back to the dtype its source folder stores (vgen loads in float32)."""
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        folder = source["base"] / name
        if name == "transformer" and source["kind"] == "full":
            folder = source["checkpoint"] / "transformer"
        dtype = _stored_dtype(folder)
        if dtype is not None and dtype != torch.float32:
            module.to(dtype)


def stamp_safetensors(folder: Path, metadata: dict[str, str]) -> None:
    """Add ``metadata`` (and ``format: pt``) to every safetensors file under ``folder``, keeping what
    each already has (e.g. diffusers' ``lora_adapter_metadata``); rewritten via a temporary file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    for f in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            old = h.metadata() or {}
        tmp = f.with_name(f".{f.name}.tmp")
        save_file(load_file(str(f)), str(tmp), metadata={**old, "format": "pt", **metadata})
        os.replace(tmp, f)


# ---------------------------------------------------------------- samples and the card's facts


def _sampling(source: dict, policy, steps: int | None, size: int | None) -> dict:
    from vgen.models.load import pipeline_defaults

    rec = pipeline_defaults(source["base"])
    if size is None:
        try:
            size = int(json.loads((source["base"] / "vgen_base.json").read_text())["resolution"])
        except (OSError, ValueError, KeyError, TypeError):
            size = int(policy.pipe.default_sample_size * policy.pipe.vae_scale_factor)
    return {"steps": steps or rec.get("steps", 20), "guidance": rec.get("guidance", 4.5), "size": size}


def _samples(source: dict, policy, path: Path, steps: int | None, size: int | None) -> dict:
    """samples.png: the run's newest ``samples/*.png`` when it has one, else a fresh grid of 8 held-out
    (test-split) prompts x seed 0 from the exported weights. The prompts are the first 8 distinct ones of
    ``sample_prompts("test", ..., seed=0)`` (categories in turn): a repeated prompt with the same seed
    would only repeat a tile. Returns the settings and a caption."""
    s = _sampling(source, policy, steps, size)
    prompts = _held_out_prompts(8)
    s["example_prompt"] = prompts[0]
    made = sorted((source["dir"] / "samples").glob("*.png")) if source["kind"] != "model" else []
    if made:
        shutil.copy2(made[-1], path)
        s["note"] = f"The run's newest sample sheet, copied from `samples/{made[-1].name}`."
        return s
    from vgen.engine import rollout
    from vgen.images import make_grid, to_uint8
    from vgen.io import save_png
    from vgen.world.verifier import verify

    r = rollout(policy, prompts, [0] * len(prompts), steps=s["steps"], guidance=s["guidance"], height=s["size"],
                width=s["size"])
    images = to_uint8(r.images)
    marks = [v.strict for v in verify(images, prompts)]
    save_png(path, make_grid(list(images), prompts, cols=4, marks=marks))
    s["note"] = (f"{len(prompts)} held-out (test-split) prompts of vgen's shapes world, seed 0, {s['steps']} steps, "
                 f"CFG {s['guidance']}, {s['size']}x{s['size']}, made at export. The bar above each image is the "
                 f"shapes verifier's strict verdict (green: correct); {sum(marks)}/{len(marks)} correct.")
    return s


BEFORE_AFTER_PROMPTS, BEFORE_AFTER_SEEDS = 12, (0, 1)


def _held_out_prompts(n: int) -> list[str]:
    """The first ``n`` distinct prompts of ``sample_prompts("test", ..., seed=0)`` (categories in turn): the
    held-out prompts of every export image (a repeated prompt with the same seed would only repeat a tile)."""
    from vgen.world.grammar import sample_prompts

    return list(dict.fromkeys(sample_prompts("test", 64, seed=0)))[:n]


def _before_after(source: dict, policy, steps: int | None, size: int | None):
    """What a run changed, shown: the same held-out (test-split) prompts and seeds drawn by the base
    (now, while ``policy`` is still the base) and by the exported weights (when the returned function
    is called with the PNG's path, after they are loaded), each tile marked with the shapes verifier's
    strict verdict. Only for runs on a base of vgen's shapes world (its ``vgen_base.json``), where the
    prompts are the world's and 48 small images cost seconds; None otherwise. The function returns the
    caption for the card."""
    if source["kind"] == "model" or not (source["base"] / "vgen_base.json").is_file():
        return None
    from vgen.engine import rollout
    from vgen.images import make_grid, to_uint8
    from vgen.io import save_png
    from vgen.world.verifier import verify

    s = _sampling(source, policy, steps, size)
    distinct = _held_out_prompts(BEFORE_AFTER_PROMPTS)
    prompts = [p for p in distinct for _ in BEFORE_AFTER_SEEDS]
    seeds = [sd for _ in distinct for sd in BEFORE_AFTER_SEEDS]

    def draw() -> tuple[np.ndarray, list[bool]]:
        r = rollout(policy, prompts, seeds, steps=s["steps"], guidance=s["guidance"], height=s["size"],
                    width=s["size"])
        images = to_uint8(r.images)
        return images, [v.strict for v in verify(images, prompts)]

    before = draw()

    def finish(path: Path) -> str:
        after, cols = draw(), 6
        tiles, labels, marks = [], [], []
        for i in range(0, len(prompts), cols):  # a row of the base, then the same prompts and seeds trained
            for (images, ok), tag in ((before, "base"), (after, "trained")):
                tiles += list(images[i:i + cols])
                marks += ok[i:i + cols]
                labels += [f"{tag}: {p} (seed {sd})" if tag == "base" else "trained, same prompt and seed"
                           for p, sd in zip(prompts[i:i + cols], seeds[i:i + cols])]
        save_png(path, make_grid(tiles, labels, cols=cols, marks=marks))
        return (f"{len(distinct)} held-out (test-split) prompts x seeds {', '.join(map(str, BEFORE_AFTER_SEEDS))}, "
                f"{s['steps']} steps, CFG {s['guidance']}: each row of the base (`{source['base'].name}`) above the "
                f"same prompts and seeds after training. Bars: the shapes verifier's strict verdict (green: "
                f"correct); base {sum(before[1])}/{len(prompts)} correct, trained {sum(after[1])}/{len(prompts)}.")

    return finish


def _summary(source: dict, fmt: str, merge: bool, name: str, samples: dict, files: list, policy,
             base_card: dict) -> dict:
    """Everything card.build_card states, gathered in one place."""
    from vgen.export.card import WORLD_DATASET

    base = source["base"].resolve()
    kind, config = source["kind"], source["config"]
    lora = kind == "lora"
    recipe = str(config.get("recipe")) if config and config.get("recipe") else None
    pipe_cls = type(policy.pipe).__name__
    if kind == "model":
        desc = f"The diffusers `{pipe_cls}` `{base.name}`, exported by vgen as is."
        base_model = base_card.get("base_model")
        datasets = base_card.get("datasets") or ([WORLD_DATASET] if (base / "vgen_base.json").is_file() else None)
    else:
        step = source["meta"].get("step", source["checkpoint"].name)
        what = "A LoRA fine-tune" if lora else "A full fine-tune of the transformer"
        desc = f"{what} of `{base.name}` trained with vgen's `{recipe}` recipe (checkpoint step {step})"
        desc += {"diffusers": (": the base pipeline plus the LoRA adapter in `pytorch_lora_weights.safetensors`."
                               if lora and not merge else ", as a complete diffusers pipeline"
                               + (" with the LoRA merged into the transformer weights." if lora else ".")),
                 "peft": f": the LoRA adapter alone; load it on top of the base model `{base.name}`.",
                 "vgen": f": vgen's own checkpoint form (a minimal run directory), needing the base `{base.name}`.",
                 }[fmt]
        base_model, datasets = base.name, [WORLD_DATASET]
    files = [*files, ("README.md", "this card"), ("samples.png", "the sample sheet shown above")]
    if samples.get("before_after"):
        files.append(("before_after.png", "the same held-out prompts and seeds before and after training"))
    return {"name": name, "description": desc, "format": fmt, "lora": lora, "merged": merge and lora,
            "pipeline_class": pipe_cls, "base_name": base.name, "base_path": str(base), "base_card": base_card,
            "base_model": base_model, "datasets": datasets, "recipe": recipe, "kind": kind, "config": config,
            "checkpoint": source["checkpoint"].name if source["checkpoint"] else None,
            "config_hash": source["config_hash"], "eval": source["eval"], "eval_name": source["eval_name"],
            "samples_note": samples["note"], "before_after_note": samples.get("before_after"),
            "steps": samples["steps"], "guidance": samples["guidance"],
            "size": samples["size"], "example_prompt": samples["example_prompt"], "files": files,
            "vgen_version": __version__}
