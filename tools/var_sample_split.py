"""Where a VAR sample's time goes: per phase and per scale, for the full network and a VARiant depth.

    python tools/var_sample_split.py [assets/var-d30-shapes] [--depth 2] [--batch 64] [--threads 2]

``vgen bench var`` gives images/s and the decode's share; this splits one cached sampling call
(``engine.scalewise.sample`` with the model's CFG / top-k / top-p) into what depends on the depth (the
blocks) and what costs the same at every depth (the head, CFG mix, top-k / top-p, the draw, the next
scale's input, the decode), so one can see how far a subnet's images/s can rise over the full network's
and which part a faster implementation would have to cut. Medians of ``--repeats`` calls per plan, the
plans alternated. It also counts the decoder's arithmetic (``torch.utils.flop_counter``) and the rate the
sampler's decode reaches, and the decode time at which the subnet would make ``--goal`` times the full
network's images/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PHASES = ("blocks", "head", "cfg mix", "top-k / top-p", "draw", "next input", "decode")


@contextmanager
def timed(var, vqvae, into: dict, per_scale: dict):
    """Inside the block, the sampler's phases add their seconds to ``into`` (and the blocks, per scale,
    to ``per_scale``); every patched name is restored on exit."""
    import vgen.engine.scalewise as sw

    def clock(fn, key, scale_of=None):
        def run(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t
            into[key] += dt
            if scale_of is not None:
                per_scale[scale_of(*args)] += dt
            return out
        return run

    patches = [(sw, "cfg_mix", "cfg mix"), (sw, "filter_logits", "top-k / top-p"), (sw, "draw", "draw"),
               (sw, "decode", "decode"), (var, "logits", "head"), (vqvae.quantize, "next_input", "next input")]
    saved = [(obj, name, obj.__dict__.get(name)) for obj, name, _ in patches]
    saved.append((var, "step", var.__dict__.get("step")))
    try:
        for obj, name, key in patches:
            setattr(obj, name, clock(getattr(obj, name), key))
        var.step = clock(var.step, "blocks", scale_of=lambda x, *_: x.shape[1])
        yield
    finally:
        for obj, name, old in saved:
            if old is None:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="assets/var-d30-shapes")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--switch-scale", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--goal", type=float, default=2.5, help="images/s ratio the decode time is solved for")
    a = ap.parse_args()
    from torch.utils.flop_counter import FlopCounterMode

    from vgen.engine.scalewise import sample
    from vgen.errors import UserError
    from vgen.sample import default_switch_scale, load_var, var_depth_plan, var_settings

    torch.set_num_threads(a.threads)
    try:
        m = load_var(a.model)
        pns = m.var.check_patch_nums(None)
        switch = default_switch_scale(len(pns)) if a.switch_scale is None else a.switch_scale
        plans = {"full": None, f"depth {a.depth}": var_depth_plan(m.var.depth, len(pns), {}, a.depth, switch)}
    except UserError as e:
        sys.exit(f"var_sample_split: {e}")
    settings = var_settings(m.sampling)
    classes = [i % m.var.num_classes for i in range(a.batch)]
    seeds = list(range(a.batch))
    totals, others = {k: [] for k in plans}, {k: [] for k in plans}
    phases = {k: defaultdict(list) for k in plans}
    scales = {k: defaultdict(list) for k in plans}
    with torch.inference_mode():
        for plan in plans.values():  # warm-up
            sample(m.var, m.vqvae, classes, seeds, depth_plan=plan, **settings)
        for _ in range(a.repeats):
            for k, plan in plans.items():
                into, per_scale = defaultdict(float), defaultdict(float)
                with timed(m.var, m.vqvae, into, per_scale):
                    t = time.perf_counter()
                    sample(m.var, m.vqvae, classes, seeds, depth_plan=plan, **settings)
                    totals[k].append(time.perf_counter() - t)
                others[k].append(totals[k][-1] - sum(into[p] for p in PHASES))
                for p in PHASES:
                    phases[k][p].append(into[p])
                for pn, s in per_scale.items():
                    scales[k][pn].append(s)
        f = torch.zeros(1, m.vqvae.post_quant_conv.in_channels, pns[-1], pns[-1])
        with FlopCounterMode(display=False) as fc:
            m.vqvae.fhat_to_img(f)
    med = {k: statistics.median(v) for k, v in totals.items()}
    ph = {k: {p: statistics.median(v[p]) for p in PHASES} for k, v in phases.items()}
    print(f"{a.model}: batch {a.batch}, CFG {settings['cfg']}, top-k {settings['top_k']}, top-p {settings['top_p']}, "
          f"{a.threads} thread(s), subnet from scale {switch} on; medians of {a.repeats} calls, ms")
    print("| phase | " + " | ".join(plans) + " |")
    print("|---|" + "---|" * len(plans))
    for p in PHASES:
        print(f"| {p} | " + " | ".join(f"{1e3 * ph[k][p]:.0f}" for k in plans) + " |")
    print("| other (embedding, caches, Python) | " + " | ".join(f"{1e3 * statistics.median(others[k]):.0f}"
                                                            for k in plans) + " |")
    print("| **total** | " + " | ".join(f"**{1e3 * med[k]:.0f}**" for k in plans) + " |")
    print("\nblocks per scale (ms): " + "; ".join(
        f"{k}: " + ", ".join(f"{pn}x{pn} {1e3 * statistics.median(scales[k][pn * pn]):.0f}" for pn in pns)
        for k in plans))
    full, sub = plans
    ratio = med[full] / med[sub]
    dec = statistics.median([ph[full]["decode"], ph[sub]["decode"]])
    need = (med[full] - dec - a.goal * (med[sub] - dec)) / (a.goal - 1)
    gflop = fc.get_total_flops() / 1e9
    if need <= 0:
        verdict = "no decode time reaches it: the other phases alone are too dear"
    elif need < dec:
        verdict = f"the decode at {1e3 * need / a.batch:.2f} ms per image ({dec / need:.2f}x faster)"
    else:
        verdict = f"a decode of up to {1e3 * need / a.batch:.2f} ms per image: met in these calls"
    print(f"\n{sub} makes {ratio:.2f}x the full network's images/s here, {(med[full] - dec) / (med[sub] - dec):.2f}x "
          f"without the decode. The decoder does {gflop:.3f} GFLOP per image; the sampler's decode takes "
          f"{1e3 * dec / a.batch:.2f} ms per image ({gflop * a.batch / dec:.0f} GFLOP/s). {a.goal}x needs {verdict}. "
          "(vgen bench var is the measure of record; these calls carry the timers.)")


if __name__ == "__main__":
    main()
