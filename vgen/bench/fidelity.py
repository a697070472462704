"""`vgen bench fidelity`: does the cheap explore pass rank candidates like the real one?

For ``prompts`` training prompts x ``seeds`` seeds, every candidate is generated twice from
the same seed: by the *reference* (the policy in fp32 at the full step count: what Sol-RL
regenerates and trains on) and by each *cheap* setting (an explore copy of the denoiser,
all block linears quantized by the module policy, at ``preview_steps``). Both are scored by
the shapes verifier; per prompt, the cheap rewards are compared with the reference ones by
Kendall's tau-b and top-k overlap (vgen.eval.ranking). Running fp32 at the preview step count
too separates what fewer steps cost from what the low precision costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vgen.bench.timing import publish
from vgen.config import param
from vgen.run import RunConfig

RECIPE = "bench.fidelity"


@dataclass
class FidelityBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/sd3-tiny-shapes", help="local SD3 pipeline folder")
    prompts: int = param(20, ge=1, le=10_000, help="training prompts (categories balanced)")
    seeds: int = param(96, ge=2, le=100_000, help="candidates per prompt")
    top_k: int = param(12, ge=1, le=100_000, help="k of the top-k overlap")
    cheap: tuple[str, ...] = param(("nvfp4-emu", "bf16", "fp32"), help="explore backends compared at preview_steps")
    preview_steps: int = param(10, ge=1, le=1000, help="explore step count")
    steps: int | None = param(None, ge=1, le=1000, help="reference step count (default: the base's own)")
    guidance: float | None = param(None, ge=1.0, le=50.0, help="CFG scale (default: the base's own)")
    min_features: int = param(64, ge=1, le=1_000_000, help="linears narrower than this stay in high precision")
    chunk: int = param(96, ge=1, le=100_000, help="samples per rollout call")


def _rewards(policy, prompts: list[str], seeds: list[int], steps: int, guidance: float, chunk: int) -> np.ndarray:
    from vgen.engine import rollout
    from vgen.world.verifier import scores

    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    out = []
    for lo in range(0, len(flat_p), chunk):
        r = rollout(policy, flat_p[lo:lo + chunk], flat_s[lo:lo + chunk], steps=steps, guidance=guidance)
        out.append(scores(r.images, flat_p[lo:lo + chunk])[0])
    return np.concatenate(out).reshape(len(prompts), len(seeds))


def run(cfg: FidelityBenchConfig, run_dir: Path) -> int:
    from vgen.eval.ranking import agreement
    from vgen.models.load import load_policy, pipeline_defaults
    from vgen.quant.backends import resolve
    from vgen.quant.explore import explore_policy
    from vgen.world.grammar import sample_prompts

    for backend in cfg.cheap:  # refuse an unavailable backend before the long reference run
        resolve(backend)
    rec = pipeline_defaults(cfg.model)
    steps = cfg.steps or rec.get("steps", 20)
    guidance = cfg.guidance if cfg.guidance is not None else rec.get("guidance", 3.0)
    policy = load_policy(cfg.model)
    prompts = list(dict.fromkeys(sample_prompts("train", 10 * cfg.prompts, seed=cfg.run.seed)))[: cfg.prompts]
    seeds = [cfg.run.seed * 1_000_003 + i for i in range(cfg.seeds)]

    t = time.perf_counter()
    ref = _rewards(policy, prompts, seeds, steps, guidance, cfg.chunk)
    timings = {"reference": time.perf_counter() - t}
    results = {}
    for backend in cfg.cheap:
        cheap_policy = explore_policy(policy, backend, min_features=cfg.min_features)
        t = time.perf_counter()
        cheap = _rewards(cheap_policy, prompts, seeds, cfg.preview_steps, guidance, cfg.chunk)
        timings[backend] = time.perf_counter() - t
        results[backend] = {"reward_mean": float(cheap.mean()), **agreement(cheap, ref, cfg.top_k),
                            "quantized_linears": len(cheap_policy.transformer.vgen_targets)}
        del cheap_policy
    report = {"recipe": RECIPE, "model": cfg.model, "prompts": prompts, "seeds": cfg.seeds, "top_k": cfg.top_k,
              "reference": {"precision": "fp32", "steps": steps, "reward_mean": float(ref.mean())},
              "preview_steps": cfg.preview_steps, "guidance": guidance, "cheap": results, "seconds": timings,
              "threads": torch.get_num_threads()}
    return publish(run_dir, report, _markdown(report))


def _markdown(r: dict) -> str:
    from vgen.eval.ranking import tau_text

    k = r["top_k"]
    lines = [f"# Ranking fidelity: {len(r['prompts'])} prompts x {r['seeds']} seeds, CFG {r['guidance']}", "",
             f"Reference: fp32, {r['reference']['steps']} steps, "
             f"mean shapes reward {r['reference']['reward_mean']:.3f} "
             f"({r['seconds']['reference']:.0f} s). Cheap runs: {r['preview_steps']} steps.", "",
             f"| explore | Kendall tau-b (mean over prompts) | top-{k} overlap | prompts without tau | mean reward "
             "| seconds |", "|---|---|---|---|---|---|"]
    for name, v in r["cheap"].items():
        lines.append(f"| {name} | {tau_text(v)} | {v[f'top{k}_overlap_mean']:.1%} | "
                     f"{v['groups_without_tau']} | {v['reward_mean']:.3f} | {r['seconds'][name]:.0f} |")
    return "\n".join(lines) + "\n"
