"""RL on VAR token policies, measured: Sol-RL against its k-in-k baseline over seed pairs.

    python tools/solrl_var_compare.py [--seeds 0 1 2] [--out runs/solrl-var] [--test-seeds 10]
                                      [--sol configs/solrl_var/learn.yaml]
                                      [--baseline configs/solrl_var/learn_kink.yaml]

For each seed it trains the Sol-RL config and the baseline config side by side, each pinned to
its own core with one thread (so machine noise hits both alike), then runs ``vgen eval`` on the
base and on every run's final checkpoint: GenEval-Shapes (strict, score, per category) and
FID-shapes on all 70 classes x test seeds 2,000,000 + i (the base card's seeds; training uses
seeds from 2**40, its held-out curve seeds 3,000,000 + i). Runs already finished are not retrained.

It writes ``report.json`` / ``report.md`` and ``curves.png`` into ``--out``:
* learning: each run's test strict accuracy and its change over the base, mean +- std per family,
  per category;
* speed: from each run's held-out curve (the in-training evaluations on seeds no selection saw)
  against training wall time (the sum of every phase's time, evaluations excluded), the time
  Sol-RL takes to first reach its paired baseline's final score and best score, over the time
  the baseline itself first reached that score; the ratio per pair, the mean and a 95% bootstrap
  interval over pairs, for strict accuracy and the mean verifier score;
* the per-phase time of one iteration of each family (mean over the run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from compare_runs import curve, time_to  # noqa: E402
from solrl_learning import read_config, run_all, vgen  # noqa: E402

TEST_SEED = 2_000_000
PHASES = ("explore", "score", "select", "regenerate", "update", "refresh")


def evaluate(model: str, out: Path, seeds: list[int]) -> dict:
    if not (out / "report.json").is_file():
        proc = vgen("eval", "--model", model, "--metrics", "geneval", "fid", "--seeds", *map(str, seeds),
                    "--out", str(out), "--force", log=out.with_suffix(".log"))
        if proc.wait():
            raise SystemExit(f"vgen eval of {model} failed; see {out.with_suffix('.log')}")
    r = json.loads((out / "report.json").read_text())
    g = r["geneval_shapes"]
    return {"strict": g["overall"]["strict"]["mean"], "score": g["overall"]["score"]["mean"],
            "fid": r.get("fid_shapes", {}).get("fid_shapes"),
            "per_category": {k: v["strict"]["mean"] for k, v in g["per_category"].items()}}


def bootstrap(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over resampled pairs."""
    v = np.asarray(values, dtype=np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def speed(sol: Path, base: Path, metric: str) -> dict:
    """Times for one pair: Sol-RL's first time at the baseline's final / best score over the baseline's own."""
    c_sol, c_base = curve(sol, metric), curve(base, metric)
    out = {"sol_curve": c_sol, "baseline_curve": c_base}
    for name, target in (("final", c_base[-1][1]), ("best", max(s for _, s in c_base[1:]))):
        t_sol, t_base = time_to(c_sol, target), time_to(c_base, target)
        out[name] = {"target": target, "t_sol": t_sol, "t_baseline": t_base,
                     "ratio": None if t_sol is None else t_base / t_sol,
                     # not reached: the ratio is at most the baseline's time over Sol-RL's whole run
                     "ratio_bound": t_base / c_sol[-1][0] if t_sol is None else None}
    return out


def by_iteration(run: Path, metric: str) -> dict[int, float]:
    """Held-out score at each evaluated iteration: progress per update, whatever an update costs."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[metric] for r in rows if metric in r}


def phases(run: Path) -> dict:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time_update" in r]
    return {p: float(np.mean([r.get(f"time_{p}", 0.0) for r in rows])) for p in PHASES}


def plot(pairs: dict[int, dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for seed, sp in pairs.items():
        for key, colour, label in (("sol_curve", "tab:red", "Sol-RL"), ("baseline_curve", "tab:blue", "k-in-k")):
            t, s = zip(*sp[key])
            ax.plot(np.asarray(t) / 60, s, "-o", color=colour, ms=3, alpha=0.4 + 0.2 * (seed % 3),
                    label=f"{label}, seed {seed}")
    ax.set_xlabel("training wall time (min, one core; held-out evaluation excluded)")
    ax.set_ylabel(f"held-out {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_ratio(r: dict) -> str:
    if r["ratio"] is not None:
        return f"{r['ratio']:.2f}x"
    return f"not reached (<= {r['ratio_bound']:.2f}x)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sol", default="configs/solrl_var/learn.yaml")
    ap.add_argument("--baseline", default="configs/solrl_var/learn_kink.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-seeds", type=int, default=10, help="test seeds per class (2,000,000 + i)")
    ap.add_argument("--out", default="runs/solrl-var")
    ap.add_argument("--no-train", action="store_true", help="evaluate and report the runs already in --out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = {"sol_rl": a.sol, "k_in_k": a.baseline}
    jobs = [(["train", cfg, f"run.seed={s}", f"run.out_dir={out}", f"run.name={arm}-s{s}"], out / f"{arm}-s{s}.log")
            for s in a.seeds for arm, cfg in arms.items()]
    if not a.no_train:
        run_all(jobs, [0, 1])  # each pair side by side, one core each

    seeds = [TEST_SEED + i for i in range(a.test_seeds)]
    model = read_config(a.sol, [])["model"]
    results = {"base": evaluate(model, out / "eval-base", seeds)}
    for s in a.seeds:
        for arm in arms:
            results[f"{arm}-s{s}"] = evaluate(str(out / f"{arm}-s{s}"), out / f"eval-{arm}-s{s}", seeds)
    base = results["base"]
    learning = {}
    for arm in arms:
        d = [100 * (results[f"{arm}-s{s}"]["strict"] - base["strict"]) for s in a.seeds]
        learning[arm] = {"delta_points": d, "mean": float(np.mean(d)), "std": float(np.std(d, ddof=1)) if len(d) > 1
                         else 0.0}
    speeds = {m: {s: speed(out / f"sol_rl-s{s}", out / f"k_in_k-s{s}", m) for s in a.seeds}
              for m in ("eval_strict", "eval_score")}
    summary = {}
    for m, per in speeds.items():
        for target in ("final", "best"):
            r = [p[target]["ratio"] if p[target]["ratio"] is not None else p[target]["ratio_bound"]
                 for p in per.values()]
            summary[f"{m}/{target}"] = {"ratios": r, "mean": float(np.mean(r)), "ci95": bootstrap(r),
                                        "all_reached": all(p[target]["ratio"] is not None for p in per.values())}
    split = {arm: {s: phases(out / f"{arm}-s{s}") for s in a.seeds} for arm in arms}
    per_update = {arm: {s: by_iteration(out / f"{arm}-s{s}", "eval_strict") for s in a.seeds} for arm in arms}
    report = {"configs": arms, "seeds": a.seeds, "test_seeds": seeds, "results": results, "learning": learning,
              "speed": {m: {str(s): {k: v for k, v in p.items() if not k.endswith("curve")} for s, p in per.items()}
                        for m, per in speeds.items()}, "speed_summary": summary, "phases": split,
              "per_update": per_update}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(speeds["eval_strict"], out / "curves.png", "GenEval-Shapes strict")
    plot(speeds["eval_score"], out / "curves_score.png", "verifier score")
    (out / "report.md").write_text(markdown(report, a) + "\n")
    print((out / "report.md").read_text())


def markdown(rep: dict, a) -> str:
    res, base = rep["results"], rep["results"]["base"]
    cats = list(base["per_category"])
    lines = [f"# RL on the VAR token policy: Sol-RL ({a.sol}) vs k-in-k ({a.baseline})", "",
             f"Test: 70 classes x seeds {rep['test_seeds'][0]}..{rep['test_seeds'][-1]} "
             f"({70 * len(rep['test_seeds'])} images per model), the model's sampling settings.", "",
             "| model | strict | change (points) | score | FID-shapes | " + " | ".join(cats) + " |",
             "|---|---|---|---|---|" + "---|" * len(cats)]

    def row(name, r, delta=""):
        fid = f"{r['fid']:.2f}" if r["fid"] is not None else "-"
        return (f"| {name} | {r['strict']:.1%} | {delta} | {r['score']:.3f} | {fid} | "
                + " | ".join(f"{r['per_category'][c]:.1%}" for c in cats) + " |")

    lines.append(row("base", base))
    for arm in ("sol_rl", "k_in_k"):
        for s in rep["seeds"]:
            r = res[f"{arm}-s{s}"]
            lines.append(row(f"{arm} seed {s}", r, f"{100 * (r['strict'] - base['strict']):+.1f}"))
    for arm, lr in rep["learning"].items():
        lines.append(f"\n{arm}: change over the base {lr['mean']:+.1f} +- {lr['std']:.1f} points (mean +- std, "
                     f"{len(rep['seeds'])} seeds)")
    lines += ["", "## Speed: time to the k-in-k baseline's score (held-out curve, training wall time)", "",
              "| metric | target | " + " | ".join(f"pair {s}" for s in rep["seeds"]) + " | mean | 95% bootstrap |",
              "|---|---|" + "---|" * (len(rep["seeds"]) + 2)]
    for key, sm in rep["speed_summary"].items():
        m, target = key.split("/")
        per = rep["speed"][m]
        cells = " | ".join(fmt_ratio(per[str(s)][target]) for s in rep["seeds"])
        lines.append(f"| {m} | baseline {target} | {cells} | {sm['mean']:.2f}x"
                     f"{'' if sm['all_reached'] else ' (bounds included)'} | {sm['ci95'][0]:.2f} - "
                     f"{sm['ci95'][1]:.2f} |")
    shared = sorted(set.intersection(*(set(v) for per in rep["per_update"].values() for v in per.values())))
    lines += ["", "## Held-out strict accuracy by iteration (progress per update, mean over seeds)", "",
              "| family | " + " | ".join(f"it {i}" for i in shared) + " |", "|---|" + "---|" * len(shared)]
    for arm, per in rep["per_update"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{np.mean([v[i] for v in per.values()]):.1%}" for i in shared)
                     + " |")
    lines += ["", "## Per-phase time of one iteration (s, mean over the run, one core)", "",
              "| family | seed | " + " | ".join(PHASES) + " | total |", "|---|---|" + "---|" * (len(PHASES) + 1)]
    for arm, per in rep["phases"].items():
        for s, ph in per.items():
            lines.append(f"| {arm} | {s} | " + " | ".join(f"{ph[p]:.2f}" for p in PHASES)
                         + f" | {sum(ph.values()):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
