"""Does SAR beat teacher forcing? SAR vs TF-only continued training from the same tiny base, several seeds.

    python tools/sar_compare.py [--models flexvar var] [--seeds 0 1 2] [--eval-seeds 100-109]
                                [--parallel 2 | --cores 1] [--out runs/sar-compare] [--baseline DIR] [key=value ...]

For each model (``configs/sar/<model>_tiny.yaml``) and seed it trains ``sar`` (the config as is) and
``tf`` (the same config with sigma=0: plain teacher forcing, the same data, label drops, scale lists,
steps and lr schedule) and scores each final model, and the base, with ``vgen eval``: FID-shapes and
GenEval-Shapes strict over every class x ``--eval-seeds`` sample seeds (seeds no run saw; the runs'
own evaluations use seeds from 1,000,000), at the base's sampling settings. It writes
``report.json`` / ``report.md`` (mean +- std over seeds, the paired FID difference per seed) and
``fid_curves.png``: FID-shapes of each run's in-training evaluations over steps. Finished runs and
reports are reused, so the script resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from solrl_learning import run_all  # noqa: E402


def scores(report_dir: Path) -> dict:
    r = json.loads((report_dir / "report.json").read_text())
    return {"fid": r["fid_shapes"]["fid_shapes"], "strict": r["geneval_shapes"]["overall"]["strict"]["mean"]}


def curve(run: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    pts = [(r["step"], r["eval_fid_shapes"]) for r in rows if "eval_fid_shapes" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["flexvar", "var"], choices=["flexvar", "var"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-seeds", default="100-109")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once, on cores 0..N-1 (one thread each)")
    ap.add_argument("--cores", type=int, nargs="+", help="the cores to run on instead (one run per core)")
    ap.add_argument("--out", default="runs/sar-compare")
    ap.add_argument("--baseline", help="an earlier --out whose TF-only runs, evaluations and base scores are "
                    "reused (linked), so an ablation of SAR settings trains only the SAR arm")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of both arms' config")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    arms = {"sar": [], "tf": ["sigma=0"]}
    if a.baseline:  # sigma=0 makes every SAR setting the same TF run, so one baseline serves them all
        for m in a.models:
            for name in [f"{m}-base-eval", *(f"{m}-tf-s{s}{x}" for s in a.seeds for x in ("", "-eval"))]:
                src, dst = Path(a.baseline).resolve() / name, out / name
                if src.exists() and not dst.exists():
                    dst.symlink_to(src, target_is_directory=True)
    train, evals = [], []
    for m in a.models:
        base_eval = out / f"{m}-base-eval"
        if not (base_eval / "report.json").is_file():
            evals.append((["eval", "--model", f"assets/{m}-tiny-shapes", "--seeds", a.eval_seeds, "--metrics",
                           "geneval", "fid", "--out", str(base_eval), "--force"], out / f"{m}-base-eval.log"))
        for s in a.seeds:
            for arm, extra in arms.items():
                name = f"{m}-{arm}-s{s}"
                if not (out / name / "model" / "var.safetensors").is_file():
                    train.append((["train", f"configs/sar/{m}_tiny.yaml", f"run.seed={s}", f"run.out_dir={out}",
                                   f"run.name={name}", "progress=false", *a.overrides, *extra], out / f"{name}.log"))
                if not (out / f"{name}-eval" / "report.json").is_file():
                    evals.append((["eval", "--model", str(out / name / "model"), "--seeds", a.eval_seeds,
                                   "--metrics", "geneval", "fid", "--out", str(out / f"{name}-eval"), "--force"],
                                  out / f"{name}-eval.log"))
    cores = a.cores or list(range(a.parallel))
    run_all(train, cores)
    run_all(evals, cores)

    report, lines = {}, ["# SAR vs teacher forcing (TF-only) from the same tiny base", "",
                         f"held-out sample seeds {a.eval_seeds} x every class; overrides: {a.overrides or 'none'}", ""]
    for m in a.models:
        base = scores(out / f"{m}-base-eval")
        per = {arm: [scores(out / f"{m}-{arm}-s{s}-eval") for s in a.seeds] for arm in arms}
        diff = [x["fid"] - y["fid"] for x, y in zip(per["sar"], per["tf"])]
        report[m] = {"base": base, "per_seed": per, "fid_sar_minus_tf": diff,
                     "sar_wins": sum(d < 0 for d in diff), "seeds": a.seeds}
        lines += [f"## {m}: base FID-shapes {base['fid']:.2f}, strict {base['strict']:.1%}", "",
                  "| arm | FID-shapes per seed | mean +- std | strict per seed | mean +- std |",
                  "|---|---|---|---|---|"]
        for arm, rows in per.items():
            f, st = np.array([r["fid"] for r in rows]), np.array([r["strict"] for r in rows])
            lines.append(f"| {arm} | {' / '.join(f'{x:.2f}' for x in f)} | {f.mean():.2f} +- {f.std(ddof=1):.2f} | "
                         f"{' / '.join(f'{x:.1%}' for x in st)} | {st.mean():.1%} +- {st.std(ddof=1):.1%} |")
        lines += ["", f"- FID SAR - TF per seed: {', '.join(f'{d:+.2f}' for d in diff)}; SAR lower in "
                  f"{report[m]['sar_wins']} of {len(diff)} seed pairs", ""]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(a.models), figsize=(6 * len(a.models), 4), squeeze=False)
    for ax, m in zip(axes[0], a.models):
        for arm, colour in (("sar", "tab:red"), ("tf", "tab:blue")):
            for i, s in enumerate(a.seeds):
                x, y = curve(out / f"{m}-{arm}-s{s}")
                ax.plot(x, y, color=colour, alpha=0.8, label=f"{arm.upper()}" if i == 0 else None)
        ax.set(title=f"tiny {m}: in-training FID-shapes", xlabel="step", ylabel="FID-shapes")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fid_curves.png", dpi=100)


if __name__ == "__main__":
    main()
