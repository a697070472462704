"""The model card (README.md) of an exported folder, built with huggingface_hub's ModelCard.

The card only states what the source records: metrics come from the run's newest
``eval/*/report.json`` and nothing else (a run without one says "not evaluated yet" and has
no ``model-index``); metric names say which vgen metric they are ("FID-shapes", never
"FID", which readers would take for Inception FID on a real dataset).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

WORLD_DATASET = "vgen-shapes-world"
_NOT_METRICS = {"n", "count", "seconds", "step", "steps", "seed", "seeds", "per_seed", "per_seed_std", "ci95"}
_GENEVAL = {"strict": "GenEval-Shapes strict accuracy", "score": "GenEval-Shapes score"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _counts(key) -> bool:
    """Sample counts, timings and spreads sit beside metrics; they are not metrics themselves."""
    return str(key) in _NOT_METRICS or str(key).startswith(("n_", "num_"))


def _value(v) -> tuple[float, list[float] | None] | None:
    """(value, 95% interval or None) of a metric entry: a number, or a vgen.eval summary
    ``{"mean", "ci95", "per_seed", ...}``; None for anything else."""
    if _number(v):
        return float(v), None
    if isinstance(v, dict) and _number(v.get("mean")):
        ci = v.get("ci95")
        ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) for c in ci)
        return float(v["mean"]), [float(c) for c in ci] if ok else None
    return None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text).lower()).strip("_")


def _fid_name(key: str, family: str) -> tuple[str, str]:
    """(type, name) of a key of ``fid_shapes`` (``fid_shapes``, ``kid_shapes_mean``, ...) or ``fid_inception``:
    FID-shapes / KID-shapes or Inception FID / KID, never a bare "FID" that would pass for another metric."""
    fid, kid = ("FID-shapes", "KID-shapes") if family == "shapes" else ("Inception FID", "Inception KID")
    if key in ("fid", "value", f"fid_{family}"):
        return f"fid_{family}", fid
    if key.startswith("kid"):
        rest = key.removeprefix("kid").removeprefix(f"_{family}").strip("_")
        return f"kid_{family}" + (f"_{_slug(rest)}" if rest else ""), f"{kid} {rest}".strip()
    return f"fid_{family}_{_slug(key)}", f"{fid} {key}"


def _section(entries, name_of) -> list[tuple[str, str, float, list[float] | None]]:
    """Metrics of one report section: ``name_of(key, sub)`` names entry ``key`` (or its sub-metric ``sub``)."""
    out = []
    for key, v in (entries.items() if isinstance(entries, dict) else ()):
        if _counts(key):
            continue
        if (got := _value(v)) is not None:
            out.append((*name_of(str(key), None), *got))
        elif isinstance(v, dict):
            for sub, x in v.items():
                if not _counts(sub) and (got := _value(x)) is not None:
                    out.append((*name_of(str(key), str(sub)), *got))
    return out


def eval_metrics(report: dict | None) -> list[tuple[str, str, float, list[float] | None]]:
    """(metric type, human name, value, 95% interval or None) for every numeric metric of a vgen
    evaluation report (vgen/eval/harness.py documents its layout), read defensively: a missing or
    oddly shaped section is skipped, never guessed at."""
    report = report if isinstance(report, dict) else {}
    gen = report.get("geneval_shapes") if isinstance(report.get("geneval_shapes"), dict) else {}

    def overall(k, sub):
        name = _GENEVAL.get(k, f"GenEval-Shapes {k}")
        return (f"geneval_shapes_{_slug(k)}", name) if sub is None else \
            (f"geneval_shapes_{_slug(k)}_{_slug(sub)}", f"{name} ({sub})")

    def category(cat, k):
        if k is None:
            return f"geneval_shapes_{_slug(cat)}", f"GenEval-Shapes {cat}"
        return f"geneval_shapes_{_slug(cat)}_{_slug(k)}", f"{_GENEVAL.get(k, f'GenEval-Shapes {k}')} ({cat})"

    def reward(r, k):
        return (f"reward_{_slug(r)}", f"reward {r} (mean)") if k is None else \
            (f"reward_{_slug(r)}_{_slug(k)}", f"reward {r} ({k})")

    out = _section(gen.get("overall"), overall) + _section(gen.get("per_category"), category)
    for family in ("shapes", "inception"):
        fid = report.get(f"fid_{family}")
        fid = {f"fid_{family}": fid} if _value(fid) is not None else fid
        out += _section(fid, lambda k, sub, f=family: _fid_name(k if sub is None else f"{k}_{sub}", f))
    return out + _section(report.get("rewards"), reward)


def base_card_metadata(folder: Path) -> dict:
    """The YAML header of a base model folder's README.md, or {} (no card, or an unreadable one)."""
    from huggingface_hub.repocard import metadata_load

    try:
        return metadata_load(Path(folder) / "README.md") or {}
    except Exception:  # unreadable file or YAML: a broken base card counts as no card
        return {}


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text if len(text) <= 100 else text[:97] + "..."
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _load_snippet(s: dict) -> str:
    """How to load the folder, for the format written."""
    name, pipe_cls, base = s["name"], s["pipeline_class"], s["base_name"]
    call = (f'image = pipe("{s["example_prompt"]}", num_inference_steps={s["steps"]}, '
            f'guidance_scale={s["guidance"]}, height={s["size"]}, width={s["size"]}).images[0]')
    if s["format"] == "vgen":
        return ("```python\nfrom vgen.models.load import load\n\n"
                f'policy = load("{name}").policy  # the base named by config.yaml `model:` plus this checkpoint\n'
                "```\n\n`config.yaml` names the base model folder by its path on the exporting machine "
                f"(`{s['base_path']}`); elsewhere, point `model:` to a copy of `{base}`.")
    where = f"path/to/{base}" if s["format"] == "peft" else name
    lines = [f"from diffusers import {pipe_cls}", "",
             f'pipe = {pipe_cls}.from_pretrained("{where}", local_files_only=True)'
             + ("  # the base model" if s["format"] == "peft" else "")]
    if s["lora"] and not s["merged"]:
        lines.append(f'pipe.load_lora_weights("{name}")  # pytorch_lora_weights.safetensors')
    text = "```python\n" + "\n".join([*lines, call]) + "\n```"
    if s["format"] == "peft":
        text += ("\n\nOr, instead of `load_lora_weights`, with peft on the denoiser alone "
                 "(`adapter_config.json` + `adapter_model.safetensors`):"
                 "\n\n```python\nfrom peft import PeftModel\n\n"
                 f'PeftModel.from_pretrained(pipe.transformer, "{name}")  # the LoRA, into pipe.transformer in place'
                 "\n```")
    return text


def _protocol(report: dict) -> str:
    """How the evaluation was run, from what the report records (nothing when it records nothing)."""
    seeds = report.get("seeds")
    parts = [f"{report['n_prompts']} prompts" if _number(report.get("n_prompts")) else None,
             f"{report['n_classes']} classes" if _number(report.get("n_classes")) else None,
             f"{len(seeds)} seeds each" if isinstance(seeds, list) else None,
             f"the {report['split']} split" if isinstance(report.get("split"), str) else None,
             f"{report['steps']} steps" if _number(report.get("steps")) else None,
             f"CFG {report['guidance']}" if _number(report.get("guidance")) else None,
             f"CFG {report['cfg']}, top-k {report.get('top_k')}, top-p {report.get('top_p')}"
             if _number(report.get("cfg")) else None,
             f"scales {report['patch_nums']}" if isinstance(report.get("patch_nums"), list) else None,
             f"{report['resolution']}px" if _number(report.get("resolution")) else None]
    parts = [p for p in parts if p]
    return f" Protocol: {', '.join(parts)}." if parts else ""


def build_card(s: dict) -> ModelCard:
    """The card for export summary ``s`` (see exporter.py ``_summary`` for its keys)."""
    base_meta = s["base_card"]
    report = s["eval"] if isinstance(s["eval"], dict) else {}
    metrics = eval_metrics(report)
    dataset = (s["datasets"] or [WORLD_DATASET])[0]
    split = report.get("split") if isinstance(report.get("split"), str) else None
    task = s.get("task", "text-to-image")
    results = [EvalResult(task_type=task, dataset_type=dataset, dataset_name="vgen shapes world",
                          dataset_split=split, metric_type=t, metric_name=n, metric_value=v)
               for t, n, v, _ in metrics]
    tags = ["vgen", *([s["recipe"]] if s["recipe"] else []), task, *(["lora"] if s["lora"] else []),
            *s.get("extra_tags", [])]
    extra = {k: base_meta[k] for k in ("license_name", "license_link") if k in base_meta}
    data = ModelCardData(
        license=base_meta.get("license", "apache-2.0"),
        library_name={"diffusers": "diffusers", "peft": "peft"}.get(s["format"], "vgen"),
        base_model=s["base_model"], tags=tags, datasets=s["datasets"],
        pipeline_tag="text-to-image" if task == "text-to-image" else None,
        model_name=s["name"] if results else None, eval_results=results or None, **extra)

    body = [f"# {s['name']}", "", s["description"], ""]
    body += ["## Samples", "", "![samples](samples.png)", "", s["samples_note"], ""]
    if s.get("before_after_note"):
        body += ["## Before and after training", "", "![before and after](before_after.png)", "",
                 s["before_after_note"], ""]
    body += ["## How to load", "", s.get("load_snippet") or _load_snippet(s), ""]
    body += ["## Evaluation", ""]
    if s["eval"] is None:
        body += ["Not evaluated yet: the source has no vgen evaluation report (`eval/*/report.json`), so this card "
                 "reports no metrics.", ""]
    elif not metrics:
        body += [f"Not evaluated yet: the evaluation report ({s['eval_name']}) holds no numeric metrics.", ""]
    else:
        where = s.get("eval_path") or f"eval/{s['eval_name']}/report.json"
        body += [f"From the newest evaluation report, `{where}`"
                 + (f" (the exported checkpoint is `{s['checkpoint']}`)." if s["eval_name"] != s["checkpoint"]
                    else ".") + _protocol(report), "", "| metric | value [95% interval] |", "|---|---|"]
        body += [f"| {n} | {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + " |" for _, n, v, ci in metrics]
        body += ["", "GenEval-Shapes is GenEval's protocol on vgen's shapes world, judged by its exact verifier; "
                 "FID-shapes (and KID-shapes) compare embeddings of a small CNN trained on that world, not Inception "
                 "features: they are comparable only with other FID-shapes numbers, never with Inception FID.", ""]
    body += ["## Training", ""]
    if s["config"] is None:
        body += [f"This is the model folder `{s['base_name']}` exported as is (its own files say how it was made).", ""]
    else:
        body += [f"Trained with vgen's `{s['recipe']}` recipe from `{s['base_name']}`; exported checkpoint "
                 f"`{s['checkpoint']}` (kind `{s['kind']}`, config hash `{s['config_hash']}`).", "",
                 "| key | value |", "|---|---|"]
        body += [f"| {k} | {_cell(v)} |" for k, v in s["config"].items()]
        body.append("")
    body += ["## Files", "", *[f"- `{f}`: {why}" for f, why in s["files"]], "",
             f"Exported by vgen {s['vgen_version']} (`vgen export --format {s['format']}"
             + (" --merge-lora" if s["merged"] else "") + "`). Every safetensors file carries `vgen_version` and "
             "`config_hash` in its metadata.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
