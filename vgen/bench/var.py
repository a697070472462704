"""`vgen bench var`: scale-wise sampling speed and KV-cache memory of a VAR model folder.

At one batch (64 by default) of classes 0, 1, ... and seeds 0, 1, ..., with the folder's own
CFG / top-k / top-p (CFG overridable), images decoded:

* ``cached``: the sampler with its KV cache (the default), images/s;
* ``uncached``: ``use_cache=False``, the whole prefix recomputed each scale, and the
  cached / uncached speed ratio;
* KV-cache peak: the most bytes all blocks' cached keys and values hold at once, per real
  image. The cache holds the model rows (the batch, doubled by CFG). Checked against the closed form: after the last
  scale every block holds k and v for every token, 2 * rows * L * C elements per block;
* per-image seconds at the batches of ``per_image_batches`` (1 and 16 by default), interleaved in
  this process with ``plain_sample``: the official procedure (2B rows with CFG, one
  ``torch.multinomial`` draw per scale, one decode call) without vgen's per-seed,
  batch-independent guarantees, on the same model - what those guarantees cost;
* with ``switch_scale`` and ``subnet_depth`` set, the same figures under VARiant's depth plan
  (``switch_plan``): scales from the switch on run the equidistant subnet only, and the caches
  of the dropped blocks are freed at the switch, which lowers the peak.

Each speed is the best of ``repeats`` timed calls after a warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_time, best_times, publish
from vgen.config import param
from vgen.errors import UserError
from vgen.run import RunConfig

RECIPE = "bench.var"


@dataclass
class VARBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/var-tiny-shapes", help="local VAR model folder")
    batch: int = param(64, ge=1, le=4096, help="images per sampling call")
    cfg: float | None = param(None, ge=0.0, le=50.0, help="CFG scale, 0 = off (default: the folder's)")
    repeats: int = param(3, ge=1, le=20, help="timed repeats; the best is kept")
    switch_scale: int | None = param(None, ge=0, help="VARiant plan: first scale run by the subnet (default: off)")
    subnet_depth: int | None = param(None, ge=1, help="VARiant plan: blocks of the subnet (default: off)")
    per_image_batches: list[int] = param(default_factory=lambda: [1, 16], min_len=0, max_len=8, ge=1, le=4096,
                                         help="also time these batch sizes (cached) and report seconds per image, "
                                         "side by side with the plain official procedure")


def kv_bytes_formula(var, rows: int) -> int:
    """Bytes of a full cache after the last scale: every block holds k and v, each (rows, L, C)."""
    return var.depth * 2 * rows * var.L * var.C * next(var.parameters()).element_size()


@torch.no_grad()
def plain_sample(var, vqvae, classes: list[int], cfg: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """Images sampled as the official code does, the speed reference: the class rows and (with CFG) the
    null rows in one batch, every token drawn by ``torch.multinomial`` from one shared generator (so a
    sample depends on its batch), no padding or per-image convolutions, one decode call."""
    from vgen.engine.scalewise import cfg_mix, filter_logits

    pns, B = var.patch_nums, len(classes)
    labels = torch.tensor(classes, device=var.class_emb.weight.device)
    rows = torch.cat([labels, torch.full_like(labels, var.num_classes)]) if cfg else labels
    cond_BD, cond = var.condition(rows)
    caches, f_hat, nxt = [{} for _ in range(var.depth)], None, None
    x = var.start_tokens(cond_BD, pns)
    for si, pn in enumerate(pns):
        if si:
            x = var.embed_scale(nxt.repeat(2 if cfg else 1, 1, 1), si, pns)
        logits = var.logits(var.step(x, cond, caches), cond_BD)
        probs = filter_logits(cfg_mix(logits.float(), B, cfg, si, len(pns)), top_k, top_p).softmax(-1)
        idx = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(B, pn * pn)
        f_hat, nxt = vqvae.quantize.next_input(si, f_hat, vqvae.quantize.embed(idx, pn), pns)
        nxt = None if nxt is None else nxt.flatten(2).transpose(1, 2)
    return (vqvae.fhat_to_img(f_hat) + 1) / 2


def measure(var, vqvae, classes: list[int], seeds: list[int], settings: dict, repeats: int, plan=None) -> dict:
    """Cached and uncached speed and the cache's peak bytes of one sampling configuration."""
    from vgen.engine.scalewise import sample

    def run(use_cache: bool, stats: dict | None = None):
        return sample(var, vqvae, classes, seeds, use_cache=use_cache, depth_plan=plan, cache_stats=stats,
                      **settings)

    stats: dict = {}
    freed = run(True, stats).freed
    seconds = {"cached": best_time(lambda: run(True), repeats), "uncached": best_time(lambda: run(False), repeats)}
    return {"seconds": seconds, "images_per_s": {k: len(classes) / v for k, v in seconds.items()},
            "cache_speedup": seconds["uncached"] / seconds["cached"], "rows": stats["rows"],
            "kv_bytes_per_scale": stats["bytes"], "kv_peak_bytes": stats["peak_bytes"],
            "kv_peak_bytes_per_image": stats["peak_bytes"] / len(classes),
            "freed": {str(k): v for k, v in freed.items()}}


def run(cfg: VARBenchConfig, run_dir: Path) -> int:
    from vgen.models.var import switch_plan
    from vgen.sample import load_var, var_settings

    if (cfg.switch_scale is None) != (cfg.subnet_depth is None):
        raise UserError("switch_scale and subnet_depth go together: set both for a VARiant plan, or neither")
    torch.manual_seed(cfg.run.seed)
    m = load_var(cfg.model)
    vqvae, var = m.vqvae, m.var
    settings = var_settings(m.sampling, cfg.cfg)
    K, plan = len(var.patch_nums), None
    if cfg.switch_scale is not None:  # checked before any timing
        if cfg.switch_scale >= K:
            raise UserError(f"switch_scale must be below the number of scales, {K}")
        plan = switch_plan(var.depth, K, cfg.switch_scale, cfg.subnet_depth)
    classes, seeds = [i % var.num_classes for i in range(cfg.batch)], list(range(cfg.batch))
    full = measure(var, vqvae, classes, seeds, settings, cfg.repeats)
    full["kv_formula_bytes"] = kv_bytes_formula(var, full["rows"])
    from vgen.engine.scalewise import sample

    per_image, gen = {}, torch.Generator(device=next(var.parameters()).device).manual_seed(cfg.run.seed)
    for b in cfg.per_image_batches:
        cls, sds = [i % var.num_classes for i in range(b)], list(range(b))
        timed = best_times({"vgen": lambda c=cls, d=sds: sample(var, vqvae, c, d, **settings),
                            "plain": lambda c=cls: plain_sample(var, vqvae, c, generator=gen, **settings)}, cfg.repeats)
        per_image[str(b)] = {k: t / b for k, t in timed.items()} | {"ratio": timed["vgen"] / timed["plain"]}
    report = {"recipe": RECIPE, "model": cfg.model, "seconds_per_image": per_image, "batch": cfg.batch, **settings,
              "threads": torch.get_num_threads(),
              "depth": var.depth, "width": var.C, "tokens": var.L, "patch_nums": list(var.patch_nums),
              "full": full, "kv_formula_matches": full["kv_peak_bytes"] == full["kv_formula_bytes"], "variant": None}
    if plan is not None:
        sub = measure(var, vqvae, classes, seeds, settings, cfg.repeats, plan)
        report["variant"] = {"switch_scale": cfg.switch_scale, "subnet_depth": cfg.subnet_depth,
                             "subnet": plan[-1], **sub, "peak_vs_full": sub["kv_peak_bytes"] / full["kv_peak_bytes"],
                             "speed_vs_full": full["seconds"]["cached"] / sub["seconds"]["cached"]}
    return publish(run_dir, report, _markdown(report))


def _markdown(r: dict) -> str:
    v = r["variant"]
    runs = [("full depth", r["full"])] + ([(f"VARiant d={v['subnet_depth']} from scale {v['switch_scale']}", v)]
                                          if v else [])
    lines = [f"# VAR sampling benchmark: batch {r['batch']}, CFG {r['cfg']}, top-k {r['top_k']}, top-p {r['top_p']}, "
             f"{r['threads']} threads",
             "", f"{r['model']}: depth {r['depth']}, width {r['width']}, {r['tokens']} tokens over scales "
             f"{r['patch_nums']}", "",
             "| run | cached images/s | uncached images/s | cache speed-up | KV peak KiB / image |",
             "|---|---|---|---|---|"]
    for name, m in runs:
        ips = m["images_per_s"]
        lines.append(f"| {name} | {ips['cached']:.1f} | {ips['uncached']:.1f} | {m['cache_speedup']:.2f}x | "
                     f"{m['kv_peak_bytes_per_image'] / 1024:.1f} |")
    per = r.get("seconds_per_image") or {}
    if per:
        lines += ["", "| batch | vgen s / image | plain official procedure s / image | vgen / plain |",
                  "|---|---|---|---|"]
        lines += [f"| {b} | {t['vgen']:.4f} | {t['plain']:.4f} | {t['ratio']:.2f}x |" for b, t in per.items()]
        lines += ["", "- plain: the official sampling procedure on the same model, without per-seed draws or "
                  "batch-independent rounding (interleaved timing, best of the repeats)"]
    f = r["full"]
    lines += ["", f"- KV peak: the most bytes all blocks' cached k and v hold at once, over the {r['batch']} real "
              f"images; the cache holds {f['rows']} model rows (the batch, doubled when CFG is on)",
              f"- closed form after the last scale, depth x 2 x rows x L x C x bytes: {f['kv_formula_bytes']:,} B, "
              f"measured {f['kv_peak_bytes']:,} B ({'equal' if r['kv_formula_matches'] else 'DIFFERENT'})"]
    if v:
        freed = "; ".join(f"blocks {b} at scale {k}" for k, b in v["freed"].items()) or "none"
        lines.append(f"- VARiant subnet {v['subnet']}, caches freed: {freed}; KV peak {v['peak_vs_full']:.2f}x "
                     f"the full model's, cached speed {v['speed_vs_full']:.2f}x")
    return "\n".join(lines) + "\n"
