"""VARiant's central claim, tested: does a progressive schedule lie beyond the fixed-ratio frontier?

    python tools/variant_frontier.py --fixed runs/variant-d30-r010 runs/variant-d30-r19 runs/variant-d30 \
                                     --progressive runs/variant-d30 runs/variant-d30-equal \
                                     [--out docs/figures/variant_frontier_d30]

The paper says that training the weight-shared supernet with a fixed full:subnet ratio is
Pareto-limited (more full steps help the full network and cost the subnets, and the reverse), and
that its progressive schedule "breaks through" that frontier. ``tools/variant_compare.py`` compares
one progressive schedule with one fixed ratio; this reads several of its output folders and puts
every arm in the (full-network FID, subnet FID) plane, one panel per subnet depth:

* ``--fixed DIR ...``: the fixed arm of each folder (its ratio read from the folder's config and
  overrides), joined in order of their share of full steps: the fixed-ratio frontier;
* ``--progressive DIR ...``: the progressive arm of each folder (its stages read likewise).

A progressive arm is beyond the frontier at a depth when its subnet FID is below the frontier's,
linearly interpolated between the two fixed arms whose full-network FIDs bracket its own (the
"gap" column; negative is beyond). Outside the fixed arms' range of full-network FIDs there is no
bracket and no gap. Every point is a mean over the folder's training seeds; the report gives the
std of both coordinates too. Writes ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from solrl_learning import read_config  # noqa: E402


def arm(folder: Path, name: str) -> dict:
    """One arm of a variant_compare folder: its label, share of full steps and per-depth FID (mean, std)."""
    from vgen.variant.recipe import VariantConfig
    from vgen.variant.schedule import path_at

    rep = json.loads((folder / "report.json").read_text())
    raw = read_config(rep["config"], rep["overrides"] + (["schedule=fixed"] if name == "fixed" else []))
    cfg = VariantConfig(**{k: v for k, v in raw.items() if k in ("depths", "schedule", "ratio", "stage_ends",
                                                                 "stage_ratios", "iterations")})
    sched = cfg.path_schedule()
    share = sum(path_at(sched, n, cfg.iterations) is None for n in range(1, cfg.iterations + 1)) / cfg.iterations
    label = (f"fixed {ratio_str(cfg.ratio)}" if name == "fixed" else
             "progressive " + " -> ".join(ratio_str(r) for r in cfg.stage_ratios))
    fid = {int(d): mean_std([r["fid"] for r in rows]) for d, rows in rep["table"][name].items()}
    return {"label": label, "share": share, "fid": fid, "seeds": len(rep["seeds"]), "folder": str(folder),
            "depths": rep["depths"], "base": {int(d): v["fid"] for d, v in rep["table"]["base"].items()}}


def mean_std(x: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one seed)."""
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def ratio_str(r) -> str:
    return ":".join(f"{x:g}" for x in r)


def frontier_at(fixed: list[dict], full: int, d: int, x: float) -> float | None:
    """The fixed arms' subnet FID at full-network FID x, linear between the bracketing pair (None outside)."""
    pts = sorted((a["fid"][full][0], a["fid"][d][0]) for a in fixed)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixed", type=Path, nargs="+", required=True, help="variant_compare folders: their fixed arms")
    ap.add_argument("--progressive", type=Path, nargs="+", required=True,
                    help="variant_compare folders: their progressive arms")
    ap.add_argument("--out", type=Path, default=Path("runs/variant-frontier"))
    a = ap.parse_args()
    fixed = sorted((arm(f, "fixed") for f in a.fixed), key=lambda r: r["share"])
    prog = [arm(f, "progressive") for f in a.progressive]
    depths = fixed[0]["depths"]
    if any(x["depths"] != depths for x in fixed + prog):
        raise SystemExit("the folders score different depths; compare folders of one config")
    full, subs = depths[0], depths[1:]

    lines = [f"# VARiant: progressive schedules against the fixed-ratio frontier (depth {full})", "",
             "FID-shapes, mean +- std over training seeds; full-step share = the share of training steps on the "
             "full path. Gap: the progressive arm's subnet FID minus the fixed frontier's at the same full-network "
             "FID (negative: beyond the frontier; '-': outside the fixed arms' range).", "",
             "| arm | seeds | full-step share | " + " | ".join(
                 f"depth {d}{' (full)' if d == full else ''}" for d in depths) + " | " +
             " | ".join(f"gap at depth {d}" for d in subs) + " |",
             "|---" * (3 + len(depths) + len(subs)) + "|"]
    base = fixed[0]["base"]
    lines.append("| base (no supernet training) | - | - | " + " | ".join(f"{base[d]:.2f}" for d in depths) +
                 " |" + " - |" * len(subs))
    for r, on_frontier in [(r, True) for r in fixed] + [(r, False) for r in prog]:
        gaps = []
        for d in subs:
            f = None if on_frontier else frontier_at(fixed, full, d, r["fid"][full][0])
            gaps.append("-" if f is None else f"{r['fid'][d][0] - f:+.2f}")
        lines.append(f"| {r['label']} | {r['seeds']} | {r['share']:.1%} | " +
                     " | ".join(f"{r['fid'][d][0]:.2f} +- {r['fid'][d][1]:.2f}" for d in depths) + " | " +
                     " | ".join(gaps) + " |")
    lines += ["", "Folders: " + ", ".join(f"{r['label']}: `{r['folder']}`" for r in fixed + prog)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(a.out.with_suffix(".png"), fixed, prog, full, subs)


def plot(path: Path, fixed: list[dict], prog: list[dict], full: int, subs: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(subs), figsize=(5 * len(subs), 4.2), squeeze=False)
    for ax, d in zip(axes[0], subs):
        xs = [r["fid"][full] for r in fixed]
        ys = [r["fid"][d] for r in fixed]
        ax.errorbar([x[0] for x in xs], [y[0] for y in ys], xerr=[x[1] for x in xs], yerr=[y[1] for y in ys],
                    color="tab:blue", marker="o", capsize=3, label="fixed ratios (frontier)")
        for r, x, y in zip(fixed, xs, ys):
            ax.annotate(r["label"].split()[-1], (x[0], y[0]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for r, m in zip(prog, itertools.cycle("s^Dv")):  # any number of progressive arms
            ax.errorbar(r["fid"][full][0], r["fid"][d][0], xerr=r["fid"][full][1], yerr=r["fid"][d][1],
                        color="tab:red", marker=m, capsize=3, linestyle="none", label=r["label"])
        ax.set(xlabel=f"full network (depth {full}) FID-shapes", ylabel=f"depth {d} FID-shapes",
               title=f"depth {d} vs the full network (lower-left: better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
