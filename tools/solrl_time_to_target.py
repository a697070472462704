"""Sol-RL's speed-up over k-in-k, measured on the test set over seed pairs.

    python tools/solrl_time_to_target.py [--seeds 0 1 2] [--out runs/solrl-ttt] [--n 300] [--test-seeds 0 1]
                                         [--eval-every 10 20] [--sol configs/solrl/learn.yaml]
                                         [--baseline family=diffusionnft explore_prompts=null iterations=130]
                                         [--no-train]

For each seed it trains the Sol-RL config and the baseline (the same config with ``--baseline``
overrides: by default DiffusionNFT's k-in-k with 130 iterations, about the same training wall
time as Sol-RL's 70 on this CPU) side by side, each pinned to its own core with one thread, so
machine noise hits both alike. The runs skip their in-training evaluation (``eval_every=0``) and
keep a checkpoint every 10 iterations; afterwards ``vgen eval`` scores the base and the
checkpoints at every ``--eval-every`` iterations (Sol-RL, baseline) and at the end on the *test*
split: ``--n`` prompts x ``--test-seeds`` sample seeds, GenEval-Shapes strict accuracy and mean
verifier score. Nothing about training or selection ever sees these prompts.

A run's curve is its test score against its training wall time at each evaluated checkpoint
(every phase of every iteration up to it: explore, score, select, regenerate, update, refresh;
held-out evaluation and checkpoint writing excluded), starting from the base at time 0. Per pair:
the first time Sol-RL reaches the baseline's final score and best score, over the time the
baseline first reached it (tools/compare_runs.py); the mean and a 95% bootstrap interval over
pairs. Runs and evaluations already done are not redone, so pairs can be added later with
``--seeds``. Writes ``report.json``, ``report.md``, ``curves.png`` (strict and score panels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from compare_runs import PHASES, fmt_ratio, phases, plot_pairs, speed, summarise, wall_times  # noqa: E402
from solrl_learning import evaluate_all, read_config, run_all  # noqa: E402

METRICS = {"strict": "GenEval-Shapes strict", "score": "mean verifier score"}


def eval_steps(iterations: int, every: int) -> list[int]:
    return sorted({*range(every, iterations + 1, every), iterations})


def test_score(report_dir: Path) -> dict:
    g = json.loads((report_dir / "report.json").read_text())["geneval_shapes"]
    return {"strict": g["overall"]["strict"]["mean"], "score": g["overall"]["score"]["mean"],
            "per_category": {k: v["strict"]["mean"] for k, v in g["per_category"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sol", default="configs/solrl/learn.yaml")
    ap.add_argument("--baseline", nargs="+", default=["family=diffusionnft", "explore_prompts=null", "iterations=130"],
                    help="overrides of --sol that make the baseline")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=300, help="test-split prompts")
    ap.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1], help="sample seeds per test prompt")
    ap.add_argument("--eval-every", type=int, nargs="+", default=[10, 20],
                    help="checkpoints evaluated every this many iterations: Sol-RL [baseline] (multiples of 10)")
    ap.add_argument("--out", default="runs/solrl-ttt")
    ap.add_argument("--no-train", action="store_true", help="evaluate and report the runs already in --out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    every = dict(zip(("sol", "base"), a.eval_every * 2 if len(a.eval_every) == 1 else a.eval_every))
    if any(e % 10 for e in every.values()):
        raise SystemExit("--eval-every: the runs keep a checkpoint every 10 iterations; use multiples of 10")
    configs = {"sol": read_config(a.sol, []), "base": read_config(a.sol, a.baseline)}
    overrides = {"sol": [], "base": a.baseline}
    names = {"sol": "sol_rl", "base": configs["base"]["family"]}

    def run(arm: str, seed: int) -> Path:
        return out / f"{names[arm]}-s{seed}"

    if not a.no_train:
        for s in a.seeds:  # one pair at a time, side by side; a finished run resumes at its end and stops
            run_all([(["train", a.sol, *overrides[arm], "eval_every=0", "checkpoint_every=10", "progress=false",
                       f"run.seed={s}", f"run.out_dir={out}", f"run.name={run(arm, s).name}"],
                      out / f"{run(arm, s).name}.log") for arm in ("sol", "base")], [0, 1])

    test = ["--metrics", "geneval", "--n", str(a.n), "--seeds", *map(str, a.test_seeds), "--force"]
    targets = {"base": (configs["sol"]["model"], out / "test" / "base")}
    for s in a.seeds:
        for arm in ("sol", "base"):
            for step in eval_steps(configs[arm]["iterations"], every[arm]):
                targets[f"{run(arm, s).name}/{step}"] = (str(run(arm, s) / "checkpoints" / f"step-{step:06d}"),
                                                        out / "test" / run(arm, s).name / f"step-{step:06d}")
    evaluate_all(targets, test)
    scores = {k: test_score(d) for k, (_, d) in targets.items()}

    base = scores["base"]
    curves, finals, split = {}, {}, {}
    for s in a.seeds:
        for arm in ("sol", "base"):
            name, wall = run(arm, s).name, wall_times(run(arm, s))
            steps = eval_steps(configs[arm]["iterations"], every[arm])
            for m in METRICS:
                curves[(m, arm, s)] = [(0.0, base[m])] + [(wall[st], scores[f"{name}/{st}"][m]) for st in steps]
            finals[name] = {**scores[f"{name}/{steps[-1]}"], "train_s": wall[steps[-1]]}
            split[name] = phases(run(arm, s))
    speeds = {m: {s: speed(curves[(m, "sol", s)], curves[(m, "base", s)]) for s in a.seeds} for m in METRICS}
    shared = sorted(set(eval_steps(configs["sol"]["iterations"], every["sol"]))
                    & set(eval_steps(configs["base"]["iterations"], every["base"])))
    per_update = {names[arm]: {st: float(np.mean([scores[f"{run(arm, s).name}/{st}"]["strict"] for s in a.seeds]))
                               for st in shared} for arm in ("sol", "base")}
    summary = {m: summarise(per) for m, per in speeds.items()}
    report = {"sol_config": a.sol, "baseline_overrides": a.baseline, "seeds": a.seeds, "n_test_prompts": a.n,
              "test_seeds": a.test_seeds, "eval_every": every, "base": base, "finals": finals, "phases": split,
              "speed": {m: {str(s): p for s, p in per.items()} for m, per in speeds.items()}, "summary": summary,
              "per_update": per_update}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for m, label in METRICS.items():
        plot_pairs({f"seed {s}": sp for s, sp in speeds[m].items()}, out / f"curves_{m}.png",
                   f"test {label} ({a.n} prompts x {len(a.test_seeds)} seeds)", names=("Sol-RL", names["base"]))
    (out / "report.md").write_text(markdown(report, names) + "\n")
    print((out / "report.md").read_text())


def markdown(rep: dict, names: dict) -> str:
    seeds, base, fin = rep["seeds"], rep["base"], rep["finals"]
    n_img = rep["n_test_prompts"] * len(rep["test_seeds"])
    lines = [f"# Sol-RL ({rep['sol_config']}) vs {names['base']} ({' '.join(rep['baseline_overrides'])}): "
             "time to target on the test set", "",
             f"Test split: {rep['n_test_prompts']} prompts x sample seeds {rep['test_seeds']} ({n_img} images per "
             f"point); checkpoints every {rep['eval_every']['sol']} (Sol-RL) / {rep['eval_every']['base']} "
             f"({names['base']}) iterations; training wall time on one core, every phase counted, evaluation "
             "excluded.", "", "## Speed-up per pair", "",
             "| metric | target | " + " | ".join(f"pair {s}" for s in seeds) + " | mean | 95% bootstrap |",
             "|---|---|" + "---|" * (len(seeds) + 2)]
    for m in METRICS:
        for target, sm in rep["summary"][m].items():
            cells = " | ".join(fmt_ratio(rep["speed"][m][str(s)][target]) for s in seeds)
            lines.append(f"| {m} | baseline {target} | {cells} | {sm['mean']:.2f}x"
                         f"{'' if sm['all_reached'] else ' (bounds included)'} | {sm['ci95'][0]:.2f} - "
                         f"{sm['ci95'][1]:.2f} |")
    lines += ["", "## Times to target (min of training)", "",
              "| metric | target | pair | target score | baseline first reaches it | Sol-RL first reaches it |",
              "|---|---|---|---|---|---|"]
    for m in METRICS:
        for s in seeds:
            for target in ("final", "best"):
                r = rep["speed"][m][str(s)][target]
                t_sol = "never" if r["t_sol"] is None else f"{r['t_sol'] / 60:.1f}"
                lines.append(f"| {m} | {target} | {s} | {r['target']:.3f} | {r['t_baseline'] / 60:.1f} | {t_sol} |")
    cats = list(base["per_category"])
    lines += ["", "## Test scores at the end", "",
              "| model | strict | score | training min | " + " | ".join(cats) + " |",
              "|---|---|---|---|" + "---|" * len(cats),
              f"| base | {base['strict']:.1%} | {base['score']:.3f} | | "
              + " | ".join(f"{base['per_category'][c]:.1%}" for c in cats) + " |"]
    for name, r in fin.items():
        lines.append(f"| {name} | {r['strict']:.1%} | {r['score']:.3f} | {r['train_s'] / 60:.1f} | "
                     + " | ".join(f"{r['per_category'][c]:.1%}" for c in cats) + " |")
    for arm, label in (("sol_rl", "Sol-RL"), (names["base"], names["base"])):
        d = [100 * (fin[f"{arm}-s{s}"]["strict"] - base["strict"]) for s in seeds]
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
        lines.append(f"\n{label}: strict change over the base {np.mean(d):+.1f} +- {sd:.1f} points (mean +- std, "
                     f"{len(seeds)} seeds)")
    shared = list(next(iter(rep["per_update"].values())))
    lines += ["", "## Test strict accuracy by iteration (progress per update, whatever it costs; mean over pairs)", "",
              "| family | " + " | ".join(f"it {i}" for i in shared) + " |", "|---|" + "---|" * len(shared)]
    for fam, per in rep["per_update"].items():
        lines.append(f"| {fam} | " + " | ".join(f"{per[i]:.1%}" for i in shared) + " |")
    lines += ["", "## Per-phase time of one iteration (s, mean over the run, one core)", "",
              "| run | " + " | ".join(PHASES) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
    for name, ph in rep["phases"].items():
        lines.append(f"| {name} | " + " | ".join(f"{ph[p]:.2f}" for p in PHASES) + f" | {sum(ph.values()):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
