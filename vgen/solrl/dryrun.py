"""`vgen train CONFIG --dry-run` for Sol-RL: build the recipe's models on the meta device (no
weights read, no memory taken) and print parameter counts and an estimate of memory per GPU,
so a recipe can be checked before a cluster job.

The estimate (bytes per parameter, documented so it can be checked):
* frozen parts (text encoders, VAE) in bf16: 2;
* the denoiser's weights in bf16: 2, divided over processes with FSDP;
* trainable parameters (LoRA, or every denoiser weight for full fine-tuning), in fp32: weight 4
  + gradient 4 + AdamW moments 8 + EMA "old" copy 4 = 20, divided over processes with FSDP;
* the explore copy: quantized linears at 0.5625 (NVFP4: 4-bit codes + an E4M3 scale per 16),
  1 (FP8) or 2 (bf16), everything else in bf16;
* activations are not included: they depend on batch, resolution and checkpointing.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from vgen.errors import UserError

BYTES_QUANTIZED = {"nvfp4": 0.5625, "nvfp4-te": 0.5625, "fp8": 1.0, "bf16": 2.0, "nvfp4-emu": 4.0, "fp32": 4.0}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2")


def _empty(path: Path, library: str, cls_name: str):
    """A component of a pipeline folder built from its config on the meta device."""
    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), cls_name)
    with init_empty_weights():
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(path)))
        return cls(cls.config_class.from_pretrained(str(path)))


def components(model: str | Path) -> dict:
    """Every model component of a local pipeline folder, on the meta device (tokenizers and
    schedulers skipped)."""
    from vgen.models.policy import check_pipeline_folder

    path = Path(model)
    index = check_pipeline_folder(path)
    out = {}
    for name, value in index.items():
        if not (isinstance(value, list) and len(value) == 2 and value[0] in ("diffusers", "transformers")):
            continue
        if "tokenizer" in name or "scheduler" in name or value[1] is None:
            continue
        try:
            out[name] = _empty(path / name, *value)
        except (OSError, ValueError, AttributeError, TypeError) as e:
            why = str(e).splitlines()[0]
            raise UserError(f"cannot build {name!r} of {str(path)!r} on the meta device: {why}") from None
    if "transformer" not in out:
        raise UserError(f"{str(path)!r} has no transformer component")
    return out


def dry_run(cfg, processes: int = 1, fsdp: bool = False) -> str:
    from torch import nn

    from vgen.quant.policy import plan

    if processes < 1:
        raise UserError(f"--processes must be >= 1, got {processes}")
    if cfg.explore_backend != "auto" and cfg.explore_backend not in BYTES_QUANTIZED:
        raise UserError(f"unknown explore_backend {cfg.explore_backend!r}; choose auto or one of "
                        f"{', '.join(BYTES_QUANTIZED)}")
    parts = components(cfg.model)
    tr = parts["transformer"]
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
    decisions = plan(tr)
    quantized = sum(d.params for d in decisions if d.quantize)
    if cfg.lora_rank:
        lora = sum(cfg.lora_rank * (m.in_features + m.out_features) for n, m in tr.named_modules()
                   if isinstance(m, nn.Linear) and any(n.endswith(t) for t in LORA_TARGETS))
        trainable = lora
    else:
        trainable = counts["transformer"]
    shard = processes if fsdp else 1
    frozen = sum(v for k, v in counts.items() if k != "transformer")
    gib = 2**30
    rows = {"frozen parts (bf16)": frozen * 2, "denoiser weights (bf16)": counts["transformer"] * 2 / shard,
            "trainable: weight + grad + AdamW + EMA (fp32)": trainable * 20 / (shard if not cfg.lora_rank else 1)}
    backends = ("nvfp4", "fp8", "bf16") if cfg.explore_backend == "auto" else (cfg.explore_backend,)
    if cfg.family in ("diffusionnft", "naive_scaling"):
        backends = ()
    kind = json.loads((Path(cfg.model) / "model_index.json").read_text()).get("_class_name")
    where = f"{processes} process(es)" + (" with FSDP" if fsdp else "")
    lines = [f"Sol-RL dry run: {cfg.model} ({kind}), family {cfg.family}, {where}", "",
             "| component | parameters |", "|---|---|"]
    lines += [f"| {k} | {v / 1e6:,.1f} M |" for k, v in counts.items()]
    lines += [f"| trainable ({'LoRA r=' + str(cfg.lora_rank) if cfg.lora_rank else 'full fine-tuning'}) | "
              f"{trainable / 1e6:,.2f} M |",
              f"| denoiser linears quantized for explore | {quantized / 1e6:,.1f} M "
              f"({quantized / max(counts['transformer'], 1):.1%}) |", "",
              "| memory per GPU (weights and optimizer; activations excluded) | GiB |", "|---|---|"]
    base = sum(rows.values())
    lines += [f"| {k} | {v / gib:.2f} |" for k, v in rows.items()]
    for b in backends:
        copy = quantized * BYTES_QUANTIZED[b] + (counts["transformer"] - quantized) * 2
        lines.append(f"| total with a {b} explore copy ({copy / gib:.2f} GiB) | {(base + copy) / gib:.2f} |")
    if not backends:
        lines.append(f"| total (no explore copy) | {base / gib:.2f} |")
    p, m = cfg.prompts_per_step, cfg.explore_prompts or cfg.prompts_per_step
    kept = f", the {p} with the most reward spread kept" if m > p else ""
    if cfg.family == "sol_rl":
        per = (f"{m} prompts x {cfg.candidates} candidates explored ({cfg.preview_steps} steps){kept}, "
               f"{p} x {cfg.k} regenerated and trained on.")
    else:
        n = cfg.k if cfg.family == "diffusionnft" else cfg.candidates
        per = f"{m} prompts x {n} samples generated at the full step count{kept}, {p} x {cfg.k} trained on."
    lines += ["", f"Per iteration: {per}"]
    return "\n".join(lines)
