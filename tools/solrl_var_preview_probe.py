"""How well a preview explore (the first scales only) ranks Sol-RL's candidates on a VAR, and what it saves.

    OMP_NUM_THREADS=1 taskset -c 0 python tools/solrl_var_preview_probe.py [assets/var-tiny-shapes]
        [--classes 24] [--candidates 16] [--k 4] [--repeats 3] [--seed 3000000]

Sol-RL explores many candidates with a cheap copy and regenerates the chosen seeds in full precision.
A VAR's late scales hold most of its tokens, and its early scales already fix what the verifier
checks (which shapes, how many, where, what colour), so the explore copy can stop after n scales
and the reward score the decoded preview (the same seeds' tokens up to scale n). This runs one explore
pass of the bf16 explore copy as `configs/solrl_var/learn.yaml` does (classes x candidates, seeds from
``--seed``, never the test seeds), at every scale count from all down to 3, and compares each
preview's rewards with the full-precision samples' (what the regeneration scores): Kendall tau per
class, the overlap of the top k/2, and the contrast the selection keeps (mean full reward of the
best k/2 minus the worst k/2 as the preview picks them, over the same as the full rewards pick
them). Times are best of ``--repeats``, interleaved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def contrast(pick: np.ndarray, full: np.ndarray, h: int) -> np.ndarray:
    """Per class: mean of ``full`` over the h best by ``pick`` minus over the h worst by ``pick``."""
    order = np.argsort(-pick, axis=1, kind="stable")
    top, bottom = np.take_along_axis(full, order[:, :h], 1), np.take_along_axis(full, order[:, -h:], 1)
    return top.mean(1) - bottom.mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="assets/var-tiny-shapes")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3_000_000)
    ap.add_argument("--backends", nargs="+", default=["bf16", "fp32"], help="explore copies to probe")
    a = ap.parse_args()
    from vgen.bench.timing import best_times
    from vgen.eval.ranking import agreement
    from vgen.models.load import load
    from vgen.sample import var_settings
    from vgen.solrl.recipe import build_reward, score_groups
    from vgen.solrl.var_recipe import Policy, _explore_copy, _generate

    m = load(a.model)
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    copies = {b: _explore_copy(pol, b) for b in a.backends}
    K = len(m.var.patch_nums)
    classes = [int(c) for c in np.random.default_rng(a.seed).permutation(len(m.classes))[:a.classes]]
    seeds = np.arange(a.seed, a.seed + a.classes * a.candidates).reshape(a.classes, a.candidates)
    names = [m.classes[c] for c in classes]
    reward = build_reward({"shapes": 1.0}, {})
    counts = list(range(K, 2, -1))

    def explore(b, n):
        return lambda: _generate(*copies[b], classes, seeds, pol.sampling, logprobs=False, n_scales=n).images

    t = best_times({(b, n): explore(b, n) for b in a.backends for n in counts}, a.repeats)
    full = score_groups(reward, _generate(m.var, m.vqvae, classes, seeds, pol.sampling, logprobs=False).images, names)
    h = max(1, a.k // 2)
    oracle = contrast(full, full, h)
    print(f"{a.model}: explore pass of {a.classes} classes x {a.candidates} candidates, explore copies {a.backends}, "
          f"{torch.get_num_threads()} thread(s); rewards against the fp32 full samples, top/bottom {h} of each class")
    print(f"full samples: mean reward {full.mean():.3f}; contrast picked by the full rewards {oracle.mean():.3f}")
    print(f"| explore copy | scales explored | tokens | explore s | vs {a.backends[0]}, all scales | tau | "
          "top overlap | contrast kept |")
    print("|---|---|---|---|---|---|---|---|")
    tokens = [pn * pn for pn in m.var.patch_nums]
    for b in a.backends:
        for n in counts:
            r = score_groups(reward, explore(b, n)(), names)
            ag = agreement(r, full, h)
            kept = contrast(r, full, h).mean() / max(oracle.mean(), 1e-9)
            print(f"| {b} | {n} of {K} ({m.var.patch_nums[n - 1]}x{m.var.patch_nums[n - 1]}) | {sum(tokens[:n])} | "
                  f"{t[b, n]:.2f} | {t[a.backends[0], K] / t[b, n]:.2f}x | {ag['kendall_tau_mean']:.3f} | "
                  f"{ag[f'top{h}_overlap_mean']:.2f} | {kept:.0%} |")


if __name__ == "__main__":
    main()
