"""What a VARiant model's private per-depth offsets cost at sampling: each subnet depth sampled with
the offsets and with them taken out (the same weights otherwise), interleaved round by round in one
process, without decoding (the decode is the same either way).

    python tools/variant_private_overhead.py runs/variant-d30-private10/fixed-s0/model
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vgen.engine.scalewise import sample
from vgen.models.load import load
from vgen.sample import var_depth_plan, var_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a VAR model folder with private offsets (vgen train variant private=true)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = load(a.model)
    var, vae, private = m.var.eval(), m.vqvae, m.var.private
    if not len(private):
        raise SystemExit(f"{a.model!r} has no private offsets")
    depths = sorted((int(k) for k in private), reverse=True)
    # each depth switched where the folder says (else the default), as vgen sample would
    plans = {d: var_depth_plan(var.depth, len(var.patch_nums), m.sampling, depth=d) for d in depths}
    switch = next(k for k, blocks in enumerate(plans[depths[0]]) if len(blocks) < var.depth)
    kw = dict(var_settings(m.sampling), decode_images=False)
    classes, seeds = [i % var.num_classes for i in range(a.batch)], list(range(a.batch))
    print(f"{a.model}: batch {a.batch}, {a.threads} threads, {a.rounds} rounds, subnets from scale {switch}, "
          f"without decoding")
    for d, plan in plans.items():
        times = {"with": [], "without": []}
        for _ in range(a.rounds):
            for name in times:
                var.private = private if name == "with" else torch.nn.ModuleDict()
                t0 = time.perf_counter()
                with torch.no_grad():
                    sample(var, vae, classes, seeds, depth_plan=plan, **kw)
                times[name].append(time.perf_counter() - t0)
        var.private = private
        ratio = [w / o for w, o in zip(times["with"], times["without"])]
        print(f"depth {d}: best {min(times['with']):.3f} s with the offsets, {min(times['without']):.3f} s without; "
              f"same-round time ratio median {statistics.median(ratio):.3f} (range {min(ratio):.3f}-{max(ratio):.3f})")


if __name__ == "__main__":
    main()
