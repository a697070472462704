"""`vgen bench explore`: the cost of building and refreshing explore copies, per backend.

The base's transformer gets a LoRA adapter (random, so merging matters); for every backend
available here, the copy is built once and refreshed ``repeats`` times (best kept), and the
copy's forward time on one CFG batch is set against the fp32 original's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_time
from vgen.config import param
from vgen.io import atomic_write_json, atomic_write_text
from vgen.run import RunConfig

RECIPE = "bench.explore"


@dataclass
class ExploreBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/sd3-tiny-shapes", help="local SD3 pipeline folder")
    lora_rank: int = param(8, ge=1, le=1024, help="LoRA rank on the attention projections")
    batch: int = param(128, ge=1, le=8192, help="rows of the timed forward (64 prompts x CFG)")
    repeats: int = param(5, ge=1, le=100, help="timed repeats; the best is kept")


def run(cfg: ExploreBenchConfig, run_dir: Path) -> int:
    from peft import LoraConfig

    from vgen.models.attention import use_stock_attention
    from vgen.models.load import load_policy
    from vgen.quant.backends import report
    from vgen.quant.explore import explore_copy, refresh

    torch.manual_seed(cfg.run.seed)
    tr = load_policy(cfg.model).pipe.transformer
    use_stock_attention(tr)
    tr.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                              target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    c = tr.config
    g = torch.Generator().manual_seed(0)
    x = dict(hidden_states=torch.randn(cfg.batch, c.in_channels, c.sample_size, c.sample_size, generator=g),
             encoder_hidden_states=torch.randn(cfg.batch, 17, c.joint_attention_dim, generator=g),
             pooled_projections=torch.randn(cfg.batch, c.pooled_projection_dim, generator=g),
             timestep=torch.full((cfg.batch,), 500.0), return_dict=False)
    with torch.no_grad():
        base_fwd = best_time(lambda: tr(**x), cfg.repeats)
    rows = {}
    for a in report("cpu" if not torch.cuda.is_available() else "cuda"):
        if not a.ok:
            rows[a.name] = {"available": False, "reason": a.reason}
            continue
        t = time.perf_counter()
        clone = explore_copy(tr, a.name)
        build = time.perf_counter() - t
        refresh_s = min(refresh(clone, tr) for _ in range(cfg.repeats))
        dt = torch.bfloat16 if a.name == "bf16" else torch.float32
        xx = {k: (v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in x.items()}
        with torch.no_grad():
            fwd = best_time(lambda clone=clone, xx=xx: clone(**xx), cfg.repeats)
        rows[a.name] = {"available": True, "build_ms": build * 1e3, "refresh_ms": refresh_s * 1e3,
                        "forward_ms": fwd * 1e3, "speed_vs_fp32_original": base_fwd / fwd,
                        "quantized_linears": len(clone.vgen_targets)}
    r = {"recipe": RECIPE, "model": cfg.model, "lora_rank": cfg.lora_rank, "batch": cfg.batch,
         "threads": torch.get_num_threads(), "original_forward_ms": base_fwd * 1e3, "backends": rows}
    atomic_write_json(run_dir / "report.json", r)
    lines = [f"# Explore copies: {cfg.model}, LoRA r={cfg.lora_rank}, forward batch {cfg.batch}", "",
             "| backend | build ms | refresh ms | forward ms | speed vs fp32 original |", "|---|---|---|---|---|"]
    for name, v in rows.items():
        if v["available"]:
            lines.append(f"| {name} | {v['build_ms']:.1f} | {v['refresh_ms']:.1f} | {v['forward_ms']:.1f} | "
                         f"{v['speed_vs_fp32_original']:.2f}x |")
        else:
            lines.append(f"| {name} | not available: {v['reason']} | | | |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    print(text)
    return 0
