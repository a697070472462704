"""Does Sol-RL learn? Train a recipe with several seeds and score base and results on held-out test prompts.

    python tools/solrl_learning.py [--config configs/solrl/learn.yaml] [--seeds 0 1 2] [--n 300]
                                   [--parallel 2] [--out runs/solrl-learning] [key=value ...]

For each seed it runs ``vgen train CONFIG run.seed=S`` (``--parallel P`` runs P seeds at once,
each pinned to a CPU core with one thread: P runs never share a core while P <= the cores), then
``vgen eval`` on the run's final checkpoint and on the base model: GenEval-Shapes strict
accuracy on ``--n`` test-split prompts (meanings never trained on), one sample seed each,
at the base's own sampling settings (vgen_base.json: steps, CFG). It writes
``report.json`` / ``report.md`` with each seed's figures, the mean and standard deviation of
the change over the base, and each run's training wall time (held-out evaluations included).
Runs that are already complete (say, trained by hand with the same names) are not retrained: a
finished run resumes at its last iteration and stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def vgen(*args: str, core: int | None = None, log: Path | None = None) -> subprocess.Popen:
    """``vgen ARGS`` as a child process; pinned to one core with one thread when ``core`` is given."""
    cmd = [sys.executable, "-m", "vgen.cli", *args]
    env = dict(os.environ)
    if core is not None:
        cmd = ["taskset", "-c", str(core % (os.cpu_count() or 1)), *cmd]  # more runs than cores share them
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = open(log, "w") if log else None  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def read_config(path, overrides: list[str]) -> dict:
    """A recipe's YAML config with ``key=value`` overrides applied (values read as YAML), as the comparison
    tools see the settings their runs train with."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    for o in overrides:
        k, v = o.split("=", 1)
        cfg[k] = yaml.safe_load(v)
    return cfg


def run_all(jobs: list[tuple[list[str], Path]], cores: list[int]) -> None:
    """Run (vgen args, log) jobs, one per core of ``cores`` at a time, each pinned to its core; the
    first failure stops the script, naming its log."""
    pending, active = list(jobs), []
    while pending or active:
        while pending and len(active) < len(cores):
            args, log = pending.pop(0)
            core = next(c for c in cores if c not in {a[2] for a in active})
            active.append((vgen(*args, core=core, log=log), log, core))
        while not (done := [a for a in active if a[0].poll() is not None]):
            time.sleep(1)
        for a in done:  # a finished job frees its core at once, whatever the order of the others
            active.remove(a)
            if a[0].returncode != 0:
                sys.exit(f"failed: see {a[1]}")


def evaluate_all(targets: dict, args: list[str]) -> None:
    """``vgen eval --model M --out D ARGS`` for each (M, D) of ``targets``' values whose report is not
    there yet (a stopped comparison resumes), two at a time, one core each."""
    for _, d in targets.values():
        Path(d).parent.mkdir(parents=True, exist_ok=True)
    run_all([(["eval", "--model", str(m), "--out", str(d), *args], Path(d).with_suffix(".log"))
             for m, d in targets.values() if not (Path(d) / "report.json").is_file()], [0, 1])


def strict(report_dir: Path) -> dict:
    r = json.loads((report_dir / "report.json").read_text())["geneval_shapes"]
    return {"strict": r["overall"]["strict"]["mean"], "ci95": r["overall"]["strict"]["ci95"],
            "score": r["overall"]["score"]["mean"],
            "per_category": {k: v["strict"]["mean"] for k, v in r["per_category"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/solrl/learn.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=300, help="held-out test prompts")
    ap.add_argument("--parallel", type=int, default=1, help="seeds trained at once, one core each")
    ap.add_argument("--out", default="runs/solrl-learning")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pin = a.parallel > 1

    def run_dir(seed: int) -> Path:
        return out / f"seed{seed}"

    pending, running = list(a.seeds), {}
    while pending or running:
        while pending and len(running) < a.parallel:
            seed = pending.pop(0)
            core = next(c for c in range(a.parallel) if c not in {r[2] for r in running.values()}) if pin else None
            running[seed] = (vgen("train", a.config, f"run.seed={seed}", f"run.out_dir={out}", f"run.name=seed{seed}",
                                  "progress=false", *a.overrides, core=core, log=out / f"seed{seed}.log"),
                             time.time(), core)
            print(f"seed {seed}: training" + (f" on core {core}" if pin else ""), flush=True)
        for seed, (proc, t0, _core) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode:
                    raise SystemExit(f"seed {seed}: vgen train failed (exit {proc.returncode}); "
                                     f"see {out}/seed{seed}.log")
                print(f"seed {seed}: done after {(time.time() - t0) / 60:.1f} min", flush=True)
                del running[seed]
        time.sleep(2)

    results = {}
    for name, model in [("base", None), *[(f"seed{s}", run_dir(s)) for s in a.seeds]]:
        target = out / f"eval-{name}"
        if not (target / "report.json").is_file():
            src = model if model is not None else _base_model(a.config)
            proc = vgen("eval", "--model", str(src), "--metrics", "geneval", "--n", str(a.n), "--seeds", "0",
                        "--out", str(target), "--force", log=out / f"eval-{name}.log")
            if proc.wait():
                raise SystemExit(f"vgen eval of {name} failed; see {out}/eval-{name}.log")
        results[name] = strict(target)
        print(f"{name}: strict {results[name]['strict']:.1%}", flush=True)

    base = results["base"]["strict"]
    deltas = [results[f"seed{s}"]["strict"] - base for s in a.seeds]
    report = {"config": a.config, "overrides": a.overrides, "n_test_prompts": a.n, "seeds": a.seeds,
              "parallel": a.parallel, "train_minutes": {str(s): train_minutes(run_dir(s)) for s in a.seeds},
              "results": results, "delta_points": [100 * d for d in deltas],
              "delta_mean_points": 100 * float(np.mean(deltas)),
              "delta_std_points": 100 * float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Sol-RL learning: {a.config}", "",
             f"GenEval-Shapes strict accuracy on {a.n} test-split prompts (one sample each), base sampling settings.",
             "", "| model | strict | 95% CI | change (points) | training minutes |", "|---|---|---|---|---|",
             f"| base | {base:.1%} | {results['base']['ci95'][0]:.1%} - {results['base']['ci95'][1]:.1%} | | |"]
    for s, d in zip(a.seeds, deltas):
        r = results[f"seed{s}"]
        lines.append(f"| seed {s} | {r['strict']:.1%} | {r['ci95'][0]:.1%} - {r['ci95'][1]:.1%} | {100 * d:+.1f} | "
                     f"{report['train_minutes'][str(s)]:.1f} |")
    lines += ["", f"Change over the base: {report['delta_mean_points']:+.1f} +- "
              f"{report['delta_std_points']:.1f} points (mean +- std over {len(a.seeds)} seeds)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))


def train_minutes(run: Path) -> float:
    """Wall time of a finished run, held-out evaluations included: from its config.yaml, written
    before the first iteration, to its newest checkpoint, written after the last one (a resumed
    run counts the time it was stopped too)."""
    from vgen.train.checkpoint import latest_checkpoint

    end = latest_checkpoint(run)
    return ((end / "meta.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60


def _base_model(config: str) -> str:
    from vgen.config import read_yaml

    return str((read_yaml(config) or {}).get("model", "assets/sd3-tiny-shapes"))


if __name__ == "__main__":
    main()
