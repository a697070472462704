"""How well Sol-RL's explore pass on a VAR ranks its candidates for the regeneration, and what it costs.

    OMP_NUM_THREADS=1 taskset -c 0 python tools/solrl_var_preview_probe.py [assets/var-tiny-shapes]
        [--classes 24] [--candidates 16] [--k 4] [--repeats 2] [--seed 3000000]
        [--backends bf16 fp32] [--draws inverse_cdf gumbel] [--min-scales 3] [--device cuda]

Sol-RL explores many candidates with a cheap copy of the policy, picks by their rewards, and
regenerates the picked seeds in full precision: the pick is only as good as the explore sample's
reward predicts the regenerated one's. This runs one explore pass as `configs/solrl_var/learn.yaml`
does (classes x candidates; seeds from ``--seed``, never the test seeds) for each explore copy
(``--backends``), each way of drawing tokens from a seed (``--draws``: the sampler's
``draw_rule``), and each number of scales explored, from all of them down to ``--min-scales`` (a
preview: the sampler's ``n_scales``, the reward scoring the decoded latent of the first scales).
Against the fp32 policy's full samples of the same seeds and draw rule (what the regeneration
scores), per class: Kendall tau of the rewards, the overlap of the top k/2, and the contrast the
pick keeps: the mean regenerated reward of the best k/2 minus the worst k/2 as the explore rewards
pick them, over the same as the regenerated rewards themselves pick them. Times are best of
``--repeats``, interleaved. ``--device cuda`` runs it all on a GPU, where the explore copies that matter are
fp8 (Hopper) and nvfp4 (Blackwell): ``tools/device_check.py`` runs it so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def contrast(pick: np.ndarray, full: np.ndarray, h: int) -> np.ndarray:
    """Per class: mean of ``full`` over the h best by ``pick`` minus over the h worst by ``pick``."""
    order = np.argsort(-pick, axis=1, kind="stable")
    top, bottom = np.take_along_axis(full, order[:, :h], 1), np.take_along_axis(full, order[:, -h:], 1)
    return top.mean(1) - bottom.mean(1)


def pass_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of one explore pass of learn.yaml's size (this probe's and the int8 probe's)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model", nargs="?", default="assets/var-tiny-shapes")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3_000_000)
    return ap


def explore_pass(a, m) -> tuple[list[int], np.ndarray, list[str], int]:
    """(classes, (classes, candidates) seeds, class names, h = k / 2) of the pass: classes and seeds from
    ``--seed`` alone (never the test seeds)."""
    classes = [int(c) for c in np.random.default_rng(a.seed).permutation(len(m.classes))[:a.classes]]
    seeds = np.arange(a.seed, a.seed + a.classes * a.candidates).reshape(a.classes, a.candidates)
    return classes, seeds, [m.classes[c] for c in classes], max(1, a.k // 2)


def main() -> None:
    ap = pass_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["bf16", "fp32"], help="explore copies")
    ap.add_argument("--draws", nargs="+", default=["inverse_cdf", "gumbel"], help="draw rules")
    ap.add_argument("--min-scales", type=int, default=3, help="fewest scales explored")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a = ap.parse_args()
    from vgen.bench.timing import best_times, where
    from vgen.errors import UserError
    from vgen.eval.ranking import agreement, tau_text
    from vgen.models.load import load
    from vgen.sample import check_device, var_settings
    from vgen.solrl.recipe import build_reward, score_groups
    from vgen.solrl.var_recipe import Policy, _explore_copy, _generate

    try:
        m = load(a.model, device=check_device(a.device))
    except UserError as e:  # a bad model folder or device: one line
        sys.exit(f"solrl_var_preview_probe: {e}")
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    copies = {b: _explore_copy(pol, b) for b in a.backends}
    pns = m.var.patch_nums
    classes, seeds, names, h = explore_pass(a, m)
    reward = build_reward({"shapes": 1.0}, {})
    arms = [(b, d, n) for d in a.draws for b in a.backends for n in range(len(pns), a.min_scales - 1, -1)]

    def explore(b, d, n):
        return lambda: _generate(*copies[b], classes, seeds, pol.sampling, logprobs=False, n_scales=n,
                                 draw_rule=d).images

    t = best_times({arm: explore(*arm) for arm in arms}, a.repeats)
    print(f"{a.model}: explore pass of {a.classes} classes x {a.candidates} candidates (seeds {a.seed}+), "
          f"{where(a.device)}; against the fp32 policy's full samples, top / bottom {h} "
          "of each class")
    print(f"| draw | explore copy | scales explored | tokens | explore s | faster than {a.backends[0]}, all scales | "
          "tau | top overlap | contrast kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in a.draws:
        full = score_groups(reward, _generate(m.var, m.vqvae, classes, seeds, pol.sampling, logprobs=False,
                                              draw_rule=d).images, names)
        oracle = contrast(full, full, h).mean()
        for b, _, n in (arm for arm in arms if arm[1] == d):
            r = score_groups(reward, explore(b, d, n)(), names)
            ag = agreement(r, full, h)
            print(f"| {d} | {b} | {n} of {len(pns)} ({pns[n - 1]}x{pns[n - 1]}) | {sum(p * p for p in pns[:n])} | "
                  f"{t[b, d, n]:.2f} | {t[a.backends[0], d, len(pns)] / t[b, d, n]:.2f}x | "
                  f"{tau_text(ag)} | {ag[f'top{h}_overlap_mean']:.2f} | "
                  f"{contrast(r, full, h).mean() / max(oracle, 1e-9):.0%} |")
        print(f"(draw {d}: the regenerated samples' mean reward {full.mean():.3f}, the contrast they pick "
              f"themselves {oracle:.3f})")


if __name__ == "__main__":
    main()
