"""Held-out score against training wall time for Sol-RL runs and their baselines, and the speed-up.

    python tools/compare_runs.py runs/cmp-solrl runs/cmp-nft [--metric eval_score] [--out curve.png]

Wall time is the sum of each iteration's phase times (explore, score, select, regenerate,
update, refresh) from metrics.jsonl, held-out evaluation excluded. The speed-up is the time
the baseline first reaches a target score over the time the first run does, for two targets:
the baseline's final held-out score and its best (points after the start, which both runs
share); "not reached" when the first run never does, with the bound its whole run gives. The
curve PNG is written into the first run's directory unless --out says otherwise.

The functions are the one home of time-to-target for every comparison tool:
``tools/solrl_time_to_target.py`` (diffusion, test-set curves from checkpoints, seed pairs) and
``tools/solrl_var_compare.py`` (VAR token policies).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PHASES = ("explore", "score", "select", "regenerate", "update", "refresh")


def rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def wall_times(run: Path) -> dict[int, float]:
    """Cumulative training seconds (every phase, held-out evaluation excluded) at the end of each iteration."""
    wall, out = 0.0, {}
    for m in rows(run):
        wall += sum(v for k, v in m.items() if k.startswith("time_") and v is not None)
        out[m["step"]] = wall
    return out


def curve(run: Path, metric: str | None = None) -> list[tuple[float, float]]:
    """(cumulative training seconds, held-out score) at each in-training evaluation of a run; ``metric``
    is a metrics.jsonl key (default: the headline, eval_strict or eval_reward)."""
    wall = wall_times(run)
    scores = ((m["step"], m.get(metric) if metric else m.get("eval_strict", m.get("eval_reward"))) for m in rows(run))
    return [(wall[step], score) for step, score in scores if score is not None]


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """First time after the start at which the score reaches ``target``."""
    return next((t for t, s in points[1:] if s >= target), None)


def speed(c_sol: list[tuple[float, float]], c_base: list[tuple[float, float]]) -> dict:
    """Time-to-target for one pair of curves: the first time Sol-RL reaches the baseline's final and
    best score (after the start), over the time the baseline itself first reached it. Not reached:
    the ratio is at most the baseline's time over Sol-RL's whole run (``ratio_bound``)."""
    out = {"sol_curve": c_sol, "baseline_curve": c_base}
    for name, target in (("final", c_base[-1][1]), ("best", max(s for _, s in c_base[1:]))):
        t_sol, t_base = time_to(c_sol, target), time_to(c_base, target)
        out[name] = {"target": target, "t_sol": t_sol, "t_baseline": t_base,
                     "ratio": None if t_sol is None else t_base / t_sol,
                     "ratio_bound": t_base / c_sol[-1][0] if t_sol is None else None}
    return out


def bootstrap(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over resampled pairs."""
    v = np.asarray(values, dtype=np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(per_pair: dict) -> dict:
    """Per target (final, best): each pair's ratio (its bound where not reached), the mean and the
    bootstrap interval over pairs."""
    out = {}
    for target in ("final", "best"):
        r = [p[target]["ratio"] if p[target]["ratio"] is not None else p[target]["ratio_bound"]
             for p in per_pair.values()]
        out[target] = {"ratios": r, "mean": float(np.mean(r)), "ci95": bootstrap(r),
                       "all_reached": all(p[target]["ratio"] is not None for p in per_pair.values())}
    return out


def fmt_ratio(r: dict) -> str:
    if r["ratio"] is not None:
        return f"{r['ratio']:.2f}x"
    return f"not reached (<= {r['ratio_bound']:.2f}x)"


def phases(run: Path) -> dict[str, float]:
    """Mean seconds per iteration of each phase over a run."""
    it = [r for r in rows(run) if "time_update" in r]
    return {p: float(np.mean([r.get(f"time_{p}", 0.0) or 0.0 for r in it])) for p in PHASES}


def plot_pairs(pairs: dict, path: Path, ylabel: str, names: tuple[str, str] = ("Sol-RL", "k-in-k")) -> None:
    """One PNG: every pair's two curves (``{label: speed(...)}``) against training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, sp) in enumerate(pairs.items()):
        for key, colour, name in (("sol_curve", "tab:red", names[0]), ("baseline_curve", "tab:blue", names[1])):
            t, s = zip(*sp[key])
            ax.plot(np.asarray(t) / 60, s, "-o", color=colour, ms=3, alpha=0.4 + 0.2 * (i % 3),
                    label=f"{name}, {label}")
    ax.set_xlabel("training wall time (min, one core; held-out evaluation excluded)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("baseline")
    ap.add_argument("--metric", default=None, help="metrics.jsonl key, e.g. eval_score (default: eval_strict)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run, base = Path(a.run), Path(a.baseline)
    sp = speed(curve(run, a.metric), curve(base, a.metric))
    for name, c in ((run.name, sp["sol_curve"]), (base.name, sp["baseline_curve"])):
        print(f"{name}: " + ", ".join(f"{s:.3f} at {t:.0f} s" for t, s in c))
    for target in ("final", "best"):
        r = sp[target]
        print(f"{a.metric or 'headline'}: baseline {target} held-out score {r['target']:.3f}, first reached after "
              f"{r['t_baseline']:.0f} s; {run.name}: {fmt_ratio(r)}")
    out = Path(a.out) if a.out else run / "curve_vs_baseline.png"
    plot_pairs({"": sp}, out, a.metric or "held-out score", names=(run.name, base.name))
    print(f"curve: {out}")


if __name__ == "__main__":
    main()
