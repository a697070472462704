"""`vgen bench rollout`: the engine's speed against diffusers' own call, side by side in one process.

At one batch (64 by default), step count (10) and CFG scale, all from the same noise:

* ``diffusers``: ``pipe(prompt_embeds=..., ...)`` with the prompt embeddings precomputed
  (text encoding is outside the timing for both), output as tensors;
* ``engine``: ``vgen.engine.rollout`` including prompt encoding and VAE decoding, with the
  zero T5 tokens as diffusers feeds them (``fold_zero_tokens=False``), the like-for-like run;
* ``engine_folded``: the same with the zero tokens folded into one (the default);
* ``forwards``: the transformer forwards the engine makes (CFG batch, same shapes), run bare
  in a loop: the floor the engine's own overhead is measured against;
* ``engine_bf16``: the default engine with the policy in bfloat16.

Each is timed ``repeats`` times after a warm-up and the best time is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_time, publish
from vgen.config import param
from vgen.run import RunConfig

RECIPE = "bench.rollout"


@dataclass
class RolloutBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/sd3-tiny-shapes", help="local SD3 pipeline folder")
    batch: int = param(64, ge=1, le=4096, help="samples per rollout")
    steps: int = param(10, ge=1, le=1000, help="sampling steps")
    guidance: float = param(4.5, ge=1.0, le=50.0, help="CFG scale (> 1 turns CFG on)")
    resolution: int = param(64, ge=16, le=2048, help="image side, pixels")
    repeats: int = param(3, ge=1, le=20, help="timed repeats; the best is kept")
    bf16: bool = param(True, help="also time the engine in bfloat16")


def run(cfg: RolloutBenchConfig, run_dir: Path) -> int:
    from vgen.engine import rollout
    from vgen.engine.invariance import batch_invariant
    from vgen.engine.rollout import encode_unique, schedule
    from vgen.engine.seeds import initial_noise
    from vgen.models.load import load_policy
    from vgen.models.sd3 import SD3Policy
    from vgen.world.grammar import sample_prompts

    torch.manual_seed(cfg.run.seed)
    pipe = load_policy(cfg.model).pipe
    # unfolded first: each policy sets the (shared) transformer's attention processor
    policy = SD3Policy(pipe, fold_zero_tokens=False)
    prompts = sample_prompts("test", cfg.batch, seed=cfg.run.seed)
    seeds = list(range(cfg.batch))
    shape = policy.latent_shape(cfg.resolution, cfg.resolution)
    kw = dict(steps=cfg.steps, guidance=cfg.guidance, height=cfg.resolution, width=cfg.resolution)
    results: dict[str, float] = {}

    # diffusers' own loop, prompt embeddings precomputed (zero T5 tokens unfolded, as it always is)
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts,
                                               do_classifier_free_guidance=cfg.guidance > 1, device="cpu")
    noise = initial_noise(seeds, shape)

    def diffusers_call():
        with torch.no_grad():
            pipe(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                 negative_pooled_prompt_embeds=npool, latents=noise, num_inference_steps=cfg.steps,
                 guidance_scale=cfg.guidance, height=cfg.resolution, width=cfg.resolution, output_type="pt")

    results["diffusers"] = best_time(diffusers_call, cfg.repeats)
    results["engine"] = best_time(lambda: rollout(policy, prompts, seeds, **kw), cfg.repeats)

    # the bare transformer forwards of the folded engine: CFG doubles the batch
    policy = SD3Policy(pipe, fold_zero_tokens=True)
    results["engine_folded"] = best_time(lambda: rollout(policy, prompts, seeds, **kw), cfg.repeats)
    cond, idx = encode_unique(policy, prompts)
    rows = torch.tensor(idx)
    n = cfg.batch * (2 if cfg.guidance > 1 else 1)
    c = {k: torch.cat([v[rows]] * (n // cfg.batch)) for k, v in cond.items()}
    x = torch.randn(n, *shape)
    _, timesteps = schedule(policy, cfg.steps)

    def forwards():
        with torch.no_grad(), batch_invariant(policy.transformer):
            for t in timesteps:
                policy.velocity(x, t.expand(x.shape[0]), c)

    results["forwards"] = best_time(forwards, cfg.repeats)
    if cfg.bf16:
        bf = load_policy(cfg.model, dtype="bfloat16")
        results["engine_bf16"] = best_time(lambda: rollout(bf, prompts, seeds, **kw), cfg.repeats)

    ips = {k: cfg.batch / v for k, v in results.items() if k != "forwards"}
    report = {
        "recipe": RECIPE, "model": cfg.model, "batch": cfg.batch, "steps": cfg.steps, "guidance": cfg.guidance,
        "threads": torch.get_num_threads(), "seconds": results, "images_per_s": ips,
        "engine_vs_diffusers": ips["engine"] / ips["diffusers"],
        "engine_folded_vs_diffusers": ips["engine_folded"] / ips["diffusers"],
        "engine_overhead": results["engine_folded"] / results["forwards"],
        "bf16_vs_fp32": (results["engine_folded"] / results["engine_bf16"]) if cfg.bf16 else None,
    }
    return publish(run_dir, report, _markdown(report))


def _markdown(r: dict) -> str:
    lines = [f"# Rollout benchmark: batch {r['batch']}, {r['steps']} steps, CFG {r['guidance']}, "
             f"{r['threads']} threads", "", "| run | seconds | images/s |", "|---|---|---|"]
    for k, s in r["seconds"].items():
        lines.append(f"| {k} | {s:.3f} | {r['images_per_s'].get(k, float('nan')):.1f} |")
    lines += ["", f"- engine / diffusers (same 256 zero T5 tokens): {r['engine_vs_diffusers']:.2f}x images/s",
              f"- folded engine / diffusers: {r['engine_folded_vs_diffusers']:.2f}x images/s",
              f"- folded engine wall / its bare transformer forwards: {r['engine_overhead']:.3f} "
              "(prompt encoding, noise, steps and VAE decoding included)"]
    if r["bf16_vs_fp32"] is not None:
        lines.append(f"- bf16 / fp32 speed (folded engine): {r['bf16_vs_fp32']:.2f}x")
    return "\n".join(lines) + "\n"
