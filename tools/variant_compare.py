"""VARiant's Pareto table: the base, fixed-ratio and progressive supernet training, every depth, several seeds.

    python tools/variant_compare.py [--config configs/variant/deep.yaml] [--seeds 0 1 2] [--eval-seeds 100-109]
                                    [--parallel 2 | --cores 1] [--out runs/variant-compare]
                                    [--reuse DIR [--reuse DIR2]] [key=value ...]

For each seed it trains ``progressive`` (the config as is) and ``fixed`` (``schedule=fixed``, its
``ratio``, 2:8 by default): the same base, steps, lr, data and path seeds, so the two differ only in
which path each step trains. Then it scores the base and every final model at the full depth and at
each of the config's subnet depths (``vgen eval --depth d``, the switch scale the run recorded; the
base uses the same one): FID-shapes and GenEval-Shapes strict over every class x ``--eval-seeds``
sample seeds (seeds no run saw: the runs' own evaluations use seeds from 1,000,000). Every model is
sampled with the base's CFG / top-k / top-p, whatever the config's ``sample_cfg`` wrote into the
trained folders, so that the table compares weights, not guidance scales. It writes
``report.json``, ``report.md`` (mean +- std over seeds per depth and arm, and how many seeds
progressive beats fixed at each depth) and ``pareto.png`` (FID-shapes and strict accuracy against
depth, with each depth's peak KV cache as a share of the full network's on a second axis label).
Finished runs and evaluations are reused, so the script resumes where it stopped: a run only if it
trained these settings (else the script stops, naming it), an evaluation only if it scored that model
with the same depth plan, seeds and sampling (else it is made again). ``--reuse DIR`` (repeatable)
links runs and evaluations of earlier comparisons into ``--out`` on the same terms instead of making
them again (e.g. the fixed arm and the base's scores when only the progressive schedule changes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from sar_compare import scores  # noqa: E402
from solrl_learning import read_config, run_all  # noqa: E402

ARMS = {"progressive": [], "fixed": ["schedule=fixed"]}


def main() -> None:
    from vgen.errors import UserError
    from vgen.models.load import load
    from vgen.sample import described_arch, parse_seeds

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/variant/deep.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-seeds", default="100-109")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once, on cores 0..N-1 (one thread each)")
    ap.add_argument("--cores", type=int, nargs="+", help="the cores to run on instead (one run per core)")
    ap.add_argument("--out", default="runs/variant-compare")
    # one folder per flag: a list (nargs) would swallow the key=value overrides that follow it
    ap.add_argument("--reuse", type=Path, action="append", default=[], metavar="DIR",
                    help="an earlier comparison whose runs and evaluations to link in where they match "
                    "(repeatable; the first match wins)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of both arms' config")
    a = ap.parse_args()
    if missing := [str(d) for d in a.reuse if not d.is_dir()]:
        sys.exit(f"--reuse: no folder {', '.join(missing)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = read_config(a.config, a.overrides)
    base = cfg["init"]
    loaded = load(base, weights=False)
    arch = described_arch(loaded)
    sampling = {k: loaded.sampling[k] for k in ("cfg", "top_k", "top_p")}  # every model is scored with these
    asked = {**sampling, "seeds": parse_seeds(a.eval_seeds.split())}  # an evaluation made otherwise is made again
    D, patch_nums = arch["depth"], arch["patch_nums"]
    depths = [D, *sorted(cfg["depths"], reverse=True)]
    switch = cfg.get("switch_scale")
    cores = a.cores or list(range(a.parallel))

    def evaluation(model: str, name: str) -> list:
        jobs = []
        for d in depths:
            rep = out / f"{name}-eval-d{d}"
            want = wanted_evaluation(model, d, switch if name == "base" else None, D, patch_nums, asked)
            if want is not None:
                reuse(out, a.reuse, rep.name, same_evaluation, want)
            if want is None or not (rep / "report.json").is_file() or not same_evaluation(rep, want):
                if rep.is_symlink():
                    rep.unlink()  # made again in this folder, never over another comparison's
                extra = [] if d == D else ["--depth", str(d)] + (["--switch-scale", str(switch)]
                                                                 if switch is not None and name == "base" else [])
                jobs.append((["eval", "--model", model, "--seeds", *a.eval_seeds.split(), "--metrics", "geneval", "fid",
                              "--cfg", str(sampling["cfg"]), "--top-k", str(sampling["top_k"]),
                              "--top-p", str(sampling["top_p"]), "--out", str(rep), "--force", *extra],
                             out / f"{rep.name}.log"))
        return jobs

    train, evals = [], evaluation(base, "base")
    for s in a.seeds:
        for arm, extra in ARMS.items():
            name = f"{arm}-s{s}"
            args = [f"run.seed={s}", *a.overrides, *extra]
            try:
                want = training(a.config, args)
            except UserError as e:  # a bad override: one line, before any run starts
                sys.exit(f"{a.config} {' '.join(args)}: {e}")
            reuse(out, a.reuse, name, same_training, want)
            if trained(out / name) and not same_training(out / name, want):
                sys.exit(f"{out / name} trained other settings than {a.config} {' '.join(args)}: give another --out")
            if not trained(out / name):
                train.append((["train", a.config, f"run.seed={s}", f"run.out_dir={out}", f"run.name={name}",
                               "progress=false", *a.overrides, *extra], out / f"{name}.log"))
            evals += evaluation(str(out / name / "model"), name)
    run_all(train, cores)
    run_all(evals, cores)

    table = {"base": {str(d): scores(out / f"base-eval-d{d}") for d in depths}}
    for arm in ARMS:
        table[arm] = {str(d): [scores(out / f"{arm}-s{s}-eval-d{d}") for s in a.seeds] for d in depths}
    kv = {str(d): kv_share(D, d, patch_nums, switch) for d in depths}
    wins = {str(d): sum(p["fid"] < f["fid"] for p, f in zip(table["progressive"][str(d)], table["fixed"][str(d)]))
            for d in depths}
    cut = {arm: runs for arm in ARMS if all(runs := [surgery(out / f"{arm}-s{s}") for s in a.seeds])}
    report = {"config": a.config, "overrides": a.overrides, "seeds": a.seeds, "eval_seeds": a.eval_seeds,
              "sampling": sampling,
              "depths": depths, "kv_peak_share": kv, "table": table, "progressive_fid_wins": wins,
              **({"surgery": cut} if cut else {})}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"# VARiant Pareto table: `{a.config}` {' '.join(a.overrides)}", "",
             f"Held-out sample seeds {a.eval_seeds} x every class, every model sampled with the base's CFG "
             f"{sampling['cfg']}, top-k {sampling['top_k']}, top-p {sampling['top_p']}; mean +- std over training "
             f"seeds {a.seeds}. "
             "KV peak: the sampler's peak cache as a share of the full network's.", "",
             "| depth | KV peak | base FID | fixed FID | progressive FID | progressive < fixed (FID) | base strict | "
             "fixed strict | progressive strict |", "|---|---|---|---|---|---|---|---|---|"]

    for d in depths:
        b, f, p = table["base"][str(d)], table["fixed"][str(d)], table["progressive"][str(d)]
        lines.append(f"| {d}{' (full)' if d == D else ''} | {kv[str(d)]:.2f} | {b['fid']:.2f} | {ms(f, 'fid')} | "
                     f"{ms(p, 'fid')} | {wins[str(d)]} of {len(a.seeds)} | {b['strict']:.1%} | "
                     f"{ms(f, 'strict', True)} | {ms(p, 'strict', True)} |")
    if cut:  # project=true runs: how often the subnet's gradient opposed the full path's
        keys = list(next(iter(cut.values()))[0])
        lines += ["", "Gradient surgery (`project=true`): share of steps whose subnet gradient pointed against the "
                  "full path's and was projected, and the mean cosine of the two before projecting; mean over "
                  "seeds, by the depth the step trained.", "",
                  "| arm | " + " | ".join("every step" if k == "all" else f"depth {k}" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for arm, runs in cut.items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{np.mean([r[k]['projected'] for r in runs]):.0%} (cos {np.mean([r[k]['cos'] for r in runs]):+.3f})"
                for k in keys) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out / "pareto.png", table, depths, kv, D)


def ms(rows: list[dict], key: str, pct: bool = False) -> str:
    """Mean +- std over training seeds of one score, as the tables print it."""
    x = np.array([r[key] for r in rows]) * (100 if pct else 1)
    mean = f"{x.mean():.{1 if pct else 2}f}{'%' if pct else ''}"
    return mean if len(x) < 2 else f"{mean} +- {x.std(ddof=1):.{1 if pct else 2}f}"  # one seed: no spread


def surgery(run: Path) -> dict | None:
    """A ``project=true`` run's log of its gradient surgery (None for other runs): over every step and per
    subnet depth trained, the steps, the share projected and the mean cosine of the two paths' gradients."""
    log = run / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    rows = [r for r in rows if "guard_cos" in r]
    if not rows:
        return None
    groups = {"all": rows} | {str(int(d)): [r for r in rows if r["path_depth"] == d]
                              for d in sorted({r["path_depth"] for r in rows}, reverse=True)}
    return {k: {"steps": len(g), "projected": float(np.mean([r["projected"] for r in g])),
                "cos": float(np.mean([r["guard_cos"] for r in g]))} for k, g in groups.items()}


def trained(run: Path) -> bool:
    return (run / "model" / "var.safetensors").is_file()  # the folder is renamed into place whole at the end


def training(config, overrides: list[str]) -> dict:
    """What a run with this config trains, comparably: its resolved settings less where it writes and how it
    reports progress, with its path schedule in place of the fields that spell one (a fixed run ignores
    ``stage_ratios``, a progressive one ``ratio``)."""
    from vgen.config import load, to_dict
    from vgen.variant.recipe import VariantConfig

    cfg = load(VariantConfig, config, overrides, recipe="variant")
    cfg.check()  # fills what defaults to another field (the tokenizer), as a run's saved config has it
    d = to_dict(cfg)
    for k in ("progress", "ratio", "stage_ends", "stage_ratios"):
        d.pop(k)
    return {**d, "run": {"seed": cfg.run.seed}, "path_schedule": cfg.path_schedule()}


def same_training(run: Path, want: dict) -> bool:
    """Whether the run finished training what ``want`` (:func:`training`) describes."""
    from vgen.errors import UserError

    if not trained(run):
        return False
    try:
        return training(run / "config.yaml", []) == want
    except UserError:  # a config this version cannot read trained something else
        return False


def wanted_evaluation(model: str, d: int, switch: int | None, D: int, patch_nums, asked: dict) -> dict | None:
    """What an evaluation of ``model`` at depth ``d`` must have recorded to count: the model, its depth plan
    (the folder's switch scale unless ``switch`` names one), seeds and sampling; None before it is trained."""
    from vgen.models.load import load
    from vgen.sample import var_depth_plan

    if not (Path(model) / "var.safetensors").is_file():
        return None
    plan = var_depth_plan(D, len(patch_nums), load(model, weights=False).sampling, None if d == D else d,
                          None if d == D else switch)
    return {**asked, "model": model, "depth_plan": plan}


def same_evaluation(report_dir: Path, want: dict) -> bool:
    """Whether an evaluation's report matches ``want``: the same model folder (followed through links, as
    a reused run is one), and every other recorded value equal."""
    r = json.loads((report_dir / "report.json").read_text())
    same_model = "model" not in want or Path(r.get("model", "")).resolve() == Path(want["model"]).resolve()
    return same_model and all(r.get(k) == v for k, v in want.items() if k != "model")


def reuse(out: Path, sources: list[Path], name: str, matches, want: dict) -> None:
    """Link ``out/name`` to the first ``source/name`` where ``matches(source/name, want)``, when ``out`` has
    no ``name`` yet."""
    if (out / name).exists() or (out / name).is_symlink():
        return
    for src in sources:
        if (src / name).exists() and matches(src / name, want):
            (out / name).symlink_to(os.path.relpath(src / name, out))
            print(f"reused {src / name}")
            return


def kv_share(D: int, d: int, patch_nums, switch) -> float:
    """Peak KV cache of depth d over the full network's (the larger of: all D blocks over the scales
    before the switch, d blocks over every scale), as the sampler frees dropped caches at the switch."""
    from vgen.sample import default_switch_scale

    s = default_switch_scale(len(patch_nums)) if switch is None else switch
    n = [p * p for p in patch_nums]
    return 1.0 if d == D else max(D * sum(n[:s]), d * sum(n)) / (D * sum(n))


def plot(path: Path, table: dict, depths: list[int], kv: dict, D: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(depths))
    for ax, key, label in ((axes[0], "fid", "FID-shapes (lower is better)"),
                           (axes[1], "strict", "GenEval-Shapes strict")):
        ax.plot(x, [table["base"][str(d)][key] for d in depths], "k--o", label="base (no supernet training)")
        for arm, colour in (("fixed", "tab:blue"), ("progressive", "tab:red")):
            v = np.array([[r[key] for r in table[arm][str(d)]] for d in depths])
            spread = v.std(1, ddof=1) if v.shape[1] > 1 else None
            ax.errorbar(x, v.mean(1), yerr=spread, color=colour, marker="o", capsize=3,
                        label=f"{arm} ({v.shape[1]} seeds)")
        ax.set(xticks=x, xticklabels=[f"d={d}{' (full)' if d == D else ''}\nKV {kv[str(d)]:.0%}" for d in depths],
               ylabel=label, title=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
