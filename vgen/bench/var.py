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
* with ``depths`` set, VARiant's run-time depths side by side with the full network: for each
  depth d, scales from ``switch_scale`` on (default: the last three, as the paper's 7 of 10) run
  the equidistant subnet of d blocks (``switch_plan``) and the caches of the dropped blocks are
  freed at the switch, which lowers the peak. Cached images/s of the full network and every depth
  are timed interleaved (one call of each per round), so their ratios are fair on a noisy
  machine, with the images decoded and without decoding in the same rounds. The VQ-VAE decode costs
  the same at every depth, so their difference bounds what any depth can gain (``speed_ceiling``);
  the peak KV bytes per image of each come from the sampler's own accounting. Besides the ratio of
  the best times, each depth's ratio within every round (median and range): on a shared machine a
  slow spell can span a whole call, and a round's two calls see much the same machine.

Each speed is the best of ``repeats`` timed calls after a warm-up. ``precision: bf16`` casts the
transformer and the VQ-VAE to bf16 first (what a low-precision deployment, or RL's explore copy on
CPU, samples with); ``uncached: false`` skips the uncached timing, which recomputes the whole prefix at
every scale and dominates the bench's time at official sizes. ``device: cuda`` times on a GPU (every call
waited for; the paper's own setting) and adds each run's peak GPU memory, weights included.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vgen.bench.timing import best_time, best_times, gpu_peak, publish, round_times, where
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
    precision: Literal["fp32", "bf16"] = param("fp32", help="dtype of the transformer and the VQ-VAE while timed")
    device: str = param("cpu", help="where to sample: cpu, cuda or cuda:N")
    uncached: bool = param(True, help="also time the full network without the KV cache")
    depths: list[int] = param(default_factory=list, max_len=64, ge=2, help="VARiant: subnet depths to run "
                              "side by side with the full network (default: none)")
    switch_scale: int | None = param(None, ge=0, help="VARiant: first scale the subnets run (default: the last "
                                     "three scales)")
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


def measure(var, vqvae, classes: list[int], seeds: list[int], settings: dict, repeats: int,
            uncached: bool = True) -> dict:
    """Cached (and uncached) speed and the cache's peak bytes of the full network."""
    from vgen.engine.scalewise import sample

    def run(use_cache: bool, stats: dict | None = None):
        return sample(var, vqvae, classes, seeds, use_cache=use_cache, cache_stats=stats, **settings)

    stats: dict = {}
    freed = run(True, stats).freed
    seconds = {"cached": best_time(lambda: run(True), repeats)}
    if uncached:
        seconds["uncached"] = best_time(lambda: run(False), repeats)
    return {"seconds": seconds, "images_per_s": {k: len(classes) / v for k, v in seconds.items()},
            "cache_speedup": seconds["uncached"] / seconds["cached"] if uncached else None, "rows": stats["rows"],
            "kv_bytes_per_scale": stats["bytes"], "kv_peak_bytes": stats["peak_bytes"],
            "kv_peak_bytes_per_image": stats["peak_bytes"] / len(classes),
            "freed": {str(k): v for k, v in freed.items()}}


def run(cfg: VARBenchConfig, run_dir: Path) -> int:
    from vgen.engine.scalewise import sample
    from vgen.sample import check_device, default_switch_scale, load_var, var_depth_plan, var_settings

    torch.manual_seed(cfg.run.seed)
    m = load_var(cfg.model, device=check_device(cfg.device))
    vqvae, var = m.vqvae, m.var
    if cfg.precision == "bf16":
        vqvae, var = vqvae.to(torch.bfloat16), var.to(torch.bfloat16)
    settings = var_settings(m.sampling, cfg.cfg)
    K = len(var.patch_nums)
    if cfg.switch_scale is not None and not cfg.depths:
        raise UserError("switch_scale needs depths (the subnet depths to run from it)")
    switch = default_switch_scale(K) if cfg.switch_scale is None else cfg.switch_scale
    plans = {d: var_depth_plan(var.depth, K, {}, d, switch) for d in cfg.depths}  # checked before any timing
    if any(p is None for p in plans.values()):
        raise UserError(f"depths must be below the model's {var.depth} blocks (the full network is always measured)")
    classes, seeds = [i % var.num_classes for i in range(cfg.batch)], list(range(cfg.batch))
    full = measure(var, vqvae, classes, seeds, settings, cfg.repeats, cfg.uncached)
    full["kv_formula_bytes"] = kv_bytes_formula(var, full["rows"])
    full["gpu_peak_bytes"] = gpu_peak(cfg.device, lambda: sample(var, vqvae, classes, seeds, **settings))

    per_image, gen = {}, torch.Generator(device=next(var.parameters()).device).manual_seed(cfg.run.seed)
    for b in cfg.per_image_batches:
        cls, sds = [i % var.num_classes for i in range(b)], list(range(b))
        timed = best_times({"vgen": lambda c=cls, d=sds: sample(var, vqvae, c, d, **settings),
                            "plain": lambda c=cls: plain_sample(var, vqvae, c, generator=gen, **settings)}, cfg.repeats)
        per_image[str(b)] = {k: t / b for k, t in timed.items()} | {"ratio": timed["vgen"] / timed["plain"]}
    report = {"recipe": RECIPE, "model": cfg.model, "seconds_per_image": per_image, "batch": cfg.batch, **settings,
              "precision": cfg.precision, "threads": torch.get_num_threads(), "device": where(cfg.device),
              "depth": var.depth, "width": var.C, "tokens": var.L, "patch_nums": list(var.patch_nums),
              "full": full, "kv_formula_matches": full["kv_peak_bytes"] == full["kv_formula_bytes"], "variant": None}
    if plans:
        report["variant"] = {"switch_scale": switch,
                             **variant_rows(var, vqvae, classes, seeds, settings, cfg.repeats, plans, full)}
    return publish(run_dir, report, _markdown(report))


def variant_rows(var, vqvae, classes, seeds, settings, repeats: int, plans: dict, full: dict) -> dict:
    """Each depth's plan, freed caches, KV peak and cached speed, timed interleaved with the full network."""
    from vgen.engine.scalewise import sample

    runs = {"full": None, **{f"d{d}": p for d, p in plans.items()}}
    # decoded, and not decoded (the part of sampling that depth changes: the VQ-VAE decode costs the same
    # at every depth), in the same rounds
    rounds = round_times({**{k: lambda p=p: sample(var, vqvae, classes, seeds, depth_plan=p, **settings)
                             for k, p in runs.items()},
                          **{f"{k} tokens": lambda p=p: sample(var, vqvae, classes, seeds, depth_plan=p,
                                                               decode_images=False, **settings)
                             for k, p in runs.items()}}, repeats)
    t = {k: min(v) for k, v in rounds.items()}
    timed, tokens = {k: t[k] for k in runs}, {k: t[f"{k} tokens"] for k in runs}
    # a subnet that cost nothing but the decode would reach this images/s ratio: the ceiling of every
    # depth (none when the decode is lost in the timing noise)
    decode = timed["full"] - tokens["full"]
    rows = {"round_seconds": rounds, "full_images_per_s": len(classes) / timed["full"],
            "full_token_maps_per_s": len(classes) / tokens["full"], "decode_share": max(decode, 0) / timed["full"],
            "speed_ceiling": timed["full"] / decode if decode > 0 else None, "depths": {}}
    for d, plan in plans.items():
        stats: dict = {}
        freed = sample(var, vqvae, classes, seeds, depth_plan=plan, cache_stats=stats, **settings).freed
        peak = gpu_peak(var.class_emb.weight.device,
                        lambda p=plan: sample(var, vqvae, classes, seeds, depth_plan=p, **settings))
        rows["depths"][str(d)] = {
            "subnet": plan[-1], "freed": {str(k): v for k, v in freed.items()},
            "images_per_s": len(classes) / timed[f"d{d}"], "speed_vs_full": timed["full"] / timed[f"d{d}"],
            # the same ratio within each round, sorted: a slow spell that spans a round hits both calls
            "round_speed_vs_full": sorted(a / b for a, b in zip(rounds["full"], rounds[f"d{d}"])),
            "token_maps_per_s": len(classes) / tokens[f"d{d}"],
            "token_speed_vs_full": tokens["full"] / tokens[f"d{d}"],
            "kv_peak_bytes": stats["peak_bytes"], "kv_peak_bytes_per_image": stats["peak_bytes"] / len(classes),
            "peak_vs_full": stats["peak_bytes"] / full["kv_peak_bytes"], "gpu_peak_bytes": peak}
    return rows


def _rate(x: float) -> str:
    """Images (or token maps) per second: one decimal, or three significant digits below 10 (an
    official-size model makes well under one image per second on a CPU)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _markdown(r: dict) -> str:
    lines = [f"# VAR sampling benchmark: batch {r['batch']}, CFG {r['cfg']}, top-k {r['top_k']}, top-p {r['top_p']}, "
             f"{r['precision']}, {r['device']}",
             "", f"{r['model']}: depth {r['depth']}, width {r['width']}, {r['tokens']} tokens over scales "
             f"{r['patch_nums']}", "",
             "| run | cached images/s | uncached images/s | cache speed-up | KV peak KiB / image |",
             "|---|---|---|---|---|"]
    f = r["full"]
    ips = f["images_per_s"]
    unc = f"{_rate(ips['uncached'])} | {f['cache_speedup']:.2f}x" if f["cache_speedup"] is not None else "not timed | -"
    lines.append(f"| full depth | {_rate(ips['cached'])} | {unc} | "
                 f"{f['kv_peak_bytes_per_image'] / 1024:.1f} |")
    per = r.get("seconds_per_image") or {}
    if per:
        lines += ["", "| batch | vgen s / image | plain official procedure s / image | vgen / plain |",
                  "|---|---|---|---|"]
        lines += [f"| {b} | {t['vgen']:.4f} | {t['plain']:.4f} | {t['ratio']:.2f}x |" for b, t in per.items()]
        lines += ["", "- plain: the official sampling procedure on the same model, without per-seed draws or "
                  "batch-independent rounding (interleaved timing, best of the repeats)"]
    lines += ["", f"- KV peak: the most bytes all blocks' cached k and v hold at once, over the {r['batch']} real "
              f"images; the cache holds {f['rows']} model rows (the batch, doubled when CFG is on)",
              f"- closed form after the last scale, depth x 2 x rows x L x C x bytes: {f['kv_formula_bytes']:,} B, "
              f"measured {f['kv_peak_bytes']:,} B ({'equal' if r['kv_formula_matches'] else 'DIFFERENT'})"]
    if f["gpu_peak_bytes"] is not None:
        lines.append(f"- peak GPU memory while the full network samples, weights included: "
                     f"{f['gpu_peak_bytes'] / 2**20:,.0f} MiB")
    v = r["variant"]
    if v:
        lines += ["", f"## VARiant: run-time depth from scale {v['switch_scale']} on (interleaved with the full "
                  "network)", "",
                  "| depth | subnet blocks | cached images/s | speed vs full | same round: median (range) | without "
                  "decoding: samples/s | speed vs full | KV peak KiB / image | KV peak vs full | caches freed |",
                  "|---" * 10 + "|",
                  f"| {r['depth']} (full) | all | {_rate(v['full_images_per_s'])} | 1.00x | - | "
                  f"{_rate(v['full_token_maps_per_s'])} | 1.00x | {f['kv_peak_bytes_per_image'] / 1024:.1f} | 1.00 "
                  "| - |"]
        for d, x in v["depths"].items():
            freed = "; ".join(f"blocks {b} at scale {k}" for k, b in x["freed"].items()) or "none"
            rr = x["round_speed_vs_full"]
            lines.append(f"| {d} | {x['subnet']} | {_rate(x['images_per_s'])} | {x['speed_vs_full']:.2f}x | "
                         f"{statistics.median(rr):.2f}x ({rr[0]:.2f}-{rr[-1]:.2f}) | "
                         f"{_rate(x['token_maps_per_s'])} | {x['token_speed_vs_full']:.2f}x | "
                         f"{x['kv_peak_bytes_per_image'] / 1024:.1f} | {x['peak_vs_full']:.2f} | {freed} |")
        if f["gpu_peak_bytes"] is not None:
            lines += ["", "- peak GPU memory while sampling, weights included: " + ", ".join(
                f"depth {d} {x['gpu_peak_bytes'] / 2**20:,.0f} MiB" for d, x in v["depths"].items())]
        if v["speed_ceiling"] is not None:
            lines += ["", f"- the VQ-VAE decode (decoded minus not decoded) is {v['decode_share']:.0%} of the full "
                      f"network's time and the same at every depth: a subnet that cost nothing else would reach "
                      f"{v['speed_ceiling']:.2f}x the full network's images/s, and no depth can pass that"]
    return "\n".join(lines) + "\n"
