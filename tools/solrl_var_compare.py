"""RL on VAR token policies, measured: Sol-RL against its k-in-k baseline over seed pairs.

    python tools/solrl_var_compare.py [--seeds 0 1 2] [--out runs/solrl-var] [--test-seeds 10]
                                      [--sol configs/solrl_var/learn.yaml]
                                      [--baseline configs/solrl_var/learn_kink.yaml]
                                      [--families sol_rl k_in_k] [--checkpoints N ...] [key=value ...]
                                      [--sol-set key=value ...] [--baseline-set key=value ...]

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
* the per-phase time of one iteration of each family (mean over the run), and each run's training minutes.

``--families sol_rl`` trains and scores one family alone (no speed section: it needs pairs);
``key=value`` overrides apply to every training run, ``--sol-set`` / ``--baseline-set`` ones to one
family's (``--sol-set iterations=240 --baseline-set iterations=267``: longer runs, still matched in time);
``--checkpoints 135`` also scores each run's checkpoint of that iteration on the test seeds.

``--curve-seeds 20`` re-scores the base and every checkpoint of every run (one is kept each
``checkpoint_every`` iterations, 15 here) on 70 classes x 20 curve seeds (4,000,000 + i: apart from the
test, in-training curve and training seeds, and from the probes' seeds), GenEval-Shapes only, two
checkpoints at a time, one core each, and reports the speed again on those curves. The in-training
curve scores 350 images a point: its strict accuracy has a standard error of about 2.5 points, as
large as the steps it is judged by, so "first reaching the baseline's final score" is mostly noise;
1,400 images halve that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from compare_runs import PHASES, curve, fmt_ratio, phases, plot_pairs, rows, speed, summarise, wall_times  # noqa: E402
from solrl_learning import evaluate_all, read_config, run_all, strict, vgen  # noqa: E402

TEST_SEED = 2_000_000
CURVE_SEED = 4_000_000


def evaluate(model: str, out: Path, seeds: list[int]) -> dict:
    if not (out / "report.json").is_file():
        proc = vgen("eval", "--model", model, "--metrics", "geneval", "fid", "--seeds", *map(str, seeds),
                    "--out", str(out), "--force", core=0, log=out.with_suffix(".log"))  # one thread, as the card
        if proc.wait():
            raise SystemExit(f"vgen eval of {model} failed; see {out.with_suffix('.log')}")
    r = json.loads((out / "report.json").read_text())
    g = r["geneval_shapes"]
    return {"strict": g["overall"]["strict"]["mean"], "score": g["overall"]["score"]["mean"],
            "fid": r.get("fid_shapes", {}).get("fid_shapes"),
            "per_category": {k: v["strict"]["mean"] for k, v in g["per_category"].items()}}


def rescored_curves(out: Path, runs: list[str], model: str, seeds: list[int]) -> dict[str, list]:
    """Per run, (training seconds, strict accuracy) at the base (0 s) and at each kept checkpoint, each
    scored on ``seeds``; reports land in ``out/curve-RUN/step-N`` (and ``out/curve-base``), reused when present."""
    steps = {r: sorted(int(c.name[5:]) for c in (out / r / "checkpoints").glob("step-*")) for r in runs}
    targets = {"base": (model, out / "curve-base")}
    targets.update({(r, i): (out / r / "checkpoints" / f"step-{i:06d}", out / f"curve-{r}" / f"step-{i:06d}")
                    for r in runs for i in steps[r]})
    evaluate_all(targets, ["--metrics", "geneval", "--seeds", *map(str, seeds), "--force"])
    score = {k: strict(d)["strict"] for k, (_, d) in targets.items()}
    return {r: [(0.0, score["base"])] + [(wall_times(out / r)[i], score[r, i]) for i in steps[r]] for r in runs}


def by_iteration(run: Path, metric: str) -> dict[int, float]:
    """Held-out score at each evaluated iteration: progress per update, whatever an update costs."""
    return {r["step"]: r[metric] for r in rows(run) if metric in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sol", default="configs/solrl_var/learn.yaml")
    ap.add_argument("--baseline", default="configs/solrl_var/learn_kink.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-seeds", type=int, default=10, help="test seeds per class (2,000,000 + i)")
    ap.add_argument("--out", default="runs/solrl-var")
    ap.add_argument("--no-train", action="store_true", help="evaluate and report the runs already in --out")
    ap.add_argument("--families", nargs="+", choices=["sol_rl", "k_in_k"], default=["sol_rl", "k_in_k"])
    ap.add_argument("--checkpoints", type=int, nargs="*", default=[],
                    help="also score each run's checkpoint of these iterations on the test seeds")
    ap.add_argument("--curve-seeds", type=int, default=0,
                    help="re-score every checkpoint on 70 classes x this many curve seeds (4,000,000 + i)")
    ap.add_argument("overrides", nargs="*", help="key=value for every training run")
    ap.add_argument("--sol-set", nargs="*", default=[], help="key=value for the Sol-RL runs")
    ap.add_argument("--baseline-set", nargs="*", default=[], help="key=value for the baseline runs")
    a = ap.parse_args()
    if any(o.replace(" ", "") == "eval_seeds=0" for o in a.overrides + a.sol_set + a.baseline_set):
        raise SystemExit("solrl_var_compare: eval_seeds=0 turns off the held-out curves this comparison reads")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = {arm: cfg for arm, cfg in (("sol_rl", a.sol), ("k_in_k", a.baseline)) if arm in a.families}
    sets = {"sol_rl": a.overrides + a.sol_set, "k_in_k": a.overrides + a.baseline_set}
    jobs = [(["train", cfg, f"run.seed={s}", *sets[arm], f"run.out_dir={out}", f"run.name={arm}-s{s}"],
             out / f"{arm}-s{s}.log") for s in a.seeds for arm, cfg in arms.items()]
    if not a.no_train:
        run_all(jobs, [0, 1])  # each pair side by side, one core each

    seeds = [TEST_SEED + i for i in range(a.test_seeds)]
    model = read_config(a.sol, [])["model"]
    results = {"base": evaluate(model, out / "eval-base", seeds)}
    for s in a.seeds:
        for arm in arms:
            results[f"{arm}-s{s}"] = evaluate(str(out / f"{arm}-s{s}"), out / f"eval-{arm}-s{s}", seeds)
            for it in a.checkpoints:
                results[f"{arm}-s{s}@{it}"] = evaluate(str(out / f"{arm}-s{s}" / "checkpoints" / f"step-{it:06d}"),
                                                       out / f"eval-{arm}-s{s}@{it}", seeds)
    base = results["base"]
    learning = {}
    for arm in arms:
        for tag in ["", *(f"@{it}" for it in a.checkpoints)]:
            d = [100 * (results[f"{arm}-s{s}{tag}"]["strict"] - base["strict"]) for s in a.seeds]
            learning[arm + tag] = {"delta_points": d, "mean": float(np.mean(d)),
                                   "std": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0}
    paired = len(arms) == 2
    speeds = {m: {s: speed(curve(out / f"sol_rl-s{s}", m), curve(out / f"k_in_k-s{s}", m)) for s in a.seeds}
              for m in ("eval_strict", "eval_score")} if paired else {}
    if paired and a.curve_seeds:
        dense = rescored_curves(out, [f"{arm}-s{s}" for s in a.seeds for arm in arms], model,
                                [CURVE_SEED + i for i in range(a.curve_seeds)])
        speeds["rescored_strict"] = {s: speed(dense[f"sol_rl-s{s}"], dense[f"k_in_k-s{s}"]) for s in a.seeds}
    summary = {f"{m}/{target}": v for m, per in speeds.items() for target, v in summarise(per).items()}
    split = {arm: {s: phases(out / f"{arm}-s{s}") for s in a.seeds} for arm in arms}
    minutes = {arm: {s: max(wall_times(out / f"{arm}-s{s}").values()) / 60 for s in a.seeds} for arm in arms}
    per_update = {arm: {s: by_iteration(out / f"{arm}-s{s}", "eval_strict") for s in a.seeds} for arm in arms}
    rescored_per_update = {arm: {s: {int(d.name[5:]): strict(d)["strict"]
                                     for d in (out / f"curve-{arm}-s{s}").glob("step-*") if d.is_dir()}
                                 for s in a.seeds} for arm in arms} if paired and a.curve_seeds else {}
    report = {"configs": arms, "overrides": {arm: sets[arm] for arm in arms}, "seeds": a.seeds, "test_seeds": seeds,
              "results": results, "learning": learning,
              "speed": {m: {str(s): {k: v for k, v in p.items() if not k.endswith("curve")} for s, p in per.items()}
                        for m, per in speeds.items()}, "speed_summary": summary, "phases": split,
              "train_minutes": minutes, "per_update": per_update, "curve_seeds": a.curve_seeds,
              "rescored_per_update": rescored_per_update}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = {"eval_strict": ("curves.png", "held-out GenEval-Shapes strict"),
             "eval_score": ("curves_score.png", "held-out verifier score"),
             "rescored_strict": ("curves_rescored.png", f"GenEval-Shapes strict, 70 x {a.curve_seeds} curve seeds")}
    for m, per in speeds.items():  # none without pairs
        plot_pairs({f"seed {s}": sp for s, sp in per.items()}, out / plots[m][0], plots[m][1])
    (out / "report.md").write_text(markdown(report) + "\n")
    print((out / "report.md").read_text())


def markdown(rep: dict) -> str:
    res, base = rep["results"], rep["results"]["base"]
    cats = list(base["per_category"])
    names = {"sol_rl": "Sol-RL", "k_in_k": "k-in-k"}
    title = " vs ".join(f"{names[arm]} ({cfg})" for arm, cfg in rep["configs"].items())
    settings = [f"{names[arm]} runs with {' '.join(o)}." for arm, o in rep["overrides"].items() if o]
    lines = [f"# RL on the VAR token policy: {title}", "", *(settings + [""] if settings else []),
             f"Test: 70 classes x seeds {rep['test_seeds'][0]}..{rep['test_seeds'][-1]} "
             f"({70 * len(rep['test_seeds'])} images per model), the model's sampling settings.", "",
             "| model | strict | change (points) | score | FID-shapes | " + " | ".join(cats) + " |",
             "|---|---|---|---|---|" + "---|" * len(cats)]

    def row(name, r, delta=""):
        fid = f"{r['fid']:.2f}" if r["fid"] is not None else "-"
        return (f"| {name} | {r['strict']:.1%} | {delta} | {r['score']:.3f} | {fid} | "
                + " | ".join(f"{r['per_category'][c]:.1%}" for c in cats) + " |")

    lines.append(row("base", base))
    # per family: each run's final checkpoint, then the earlier ones scored (keys RUN@ITERATION)
    for key in sorted((k for k in res if k != "base"), key=lambda k: (k.rpartition("-s")[0], "@" in k, k)):
        arm, _, rest = key.rpartition("-s")
        seed, _, it = rest.partition("@")
        name = f"{arm} seed {seed}" + (f" (iteration {it})" if it else "")
        lines.append(row(name, res[key], f"{100 * (res[key]['strict'] - base['strict']):+.1f}"))
    for arm, lr in rep["learning"].items():
        lines.append(f"\n{arm}: change over the base {lr['mean']:+.1f} +- {lr['std']:.1f} points (mean +- std, "
                     f"{len(rep['seeds'])} seeds)")
    if rep["speed_summary"]:
        lines += speed_lines(rep)
    lines += by_iteration_table("Held-out strict accuracy by iteration (progress per update, mean over seeds)",
                                rep["per_update"])
    if rep.get("rescored_per_update"):
        lines += by_iteration_table(f"Re-scored strict accuracy by iteration (70 classes x {rep['curve_seeds']} "
                                    "curve seeds a checkpoint, mean over seeds)", rep["rescored_per_update"])
    lines += ["", "## Per-phase time of one iteration (s, mean over the run, one core) and training minutes", "",
              "| family | seed | " + " | ".join(PHASES) + " | total | training min |",
              "|---|---|" + "---|" * (len(PHASES) + 2)]
    for arm, per in rep["phases"].items():
        for s, ph in per.items():
            lines.append(f"| {arm} | {s} | " + " | ".join(f"{ph[p]:.2f}" for p in PHASES)
                         + f" | {sum(ph.values()):.2f} | {rep['train_minutes'][arm][s]:.1f} |")
    return "\n".join(lines)


def by_iteration_table(title: str, per_update: dict) -> list[str]:
    """Markdown: each family's mean score over seeds at the iterations every run has (JSON keys may be str)."""
    per_update = {arm: [{int(i): v for i, v in run.items()} for run in per.values()] for arm, per in per_update.items()}
    shared = sorted(set.intersection(*(set(run) for runs in per_update.values() for run in runs)))
    lines = ["", f"## {title}", "", "| family | " + " | ".join(f"it {i}" for i in shared) + " |",
             "|---|" + "---|" * len(shared)]
    for arm, runs in per_update.items():
        lines.append(f"| {arm} | " + " | ".join(f"{np.mean([run[i] for run in runs]):.1%}" for i in shared) + " |")
    return lines


def speed_lines(rep: dict) -> list[str]:
    lines = ["", "## Speed: time to the k-in-k baseline's score (held-out curve, training wall time)", "",
              "| metric | target | " + " | ".join(f"pair {s}" for s in rep["seeds"]) + " | mean | 95% bootstrap |",
              "|---|---|" + "---|" * (len(rep["seeds"]) + 2)]
    for key, sm in rep["speed_summary"].items():
        m, target = key.split("/")
        per = rep["speed"][m]
        cells = " | ".join(fmt_ratio(per[str(s)][target]) for s in rep["seeds"])
        lines.append(f"| {m} | baseline {target} | {cells} | {sm['mean']:.2f}x"
                     f"{'' if sm['all_reached'] else ' (bounds included)'} | {sm['ci95'][0]:.2f} - "
                     f"{sm['ci95'][1]:.2f} |")
    if rep.get("curve_seeds"):
        lines += ["", f"rescored_strict: the same on curves re-scored from the base and every kept checkpoint, "
                      f"70 classes x {rep['curve_seeds']} curve seeds ({CURVE_SEED:,}+) a point (curves_rescored.png); "
                      "eval_*: the in-training curve, 70 x 5 seeds (3,000,000+) a point."]
    return lines


if __name__ == "__main__":
    main()
