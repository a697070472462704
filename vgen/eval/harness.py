"""The evaluation harness: generate a fixed (prompt x seed) grid, score it, write a report.

``evaluate`` scores images that already exist (a trainer's held-out pass calls it);
``evaluate_model`` generates them first from a model folder or a run. Metrics:
* ``geneval``: GenEval-Shapes strict accuracy and score (vgen.eval.geneval);
* ``fid``: FID-shapes and KID-shapes against real world images of the test split, in the
  embedding trained on the shapes world (vgen.eval.fid), never called Inception FID;
  with ``inception_weights`` (a local file) also Inception FID / KID;
* rewards: any registered reward by name (``name`` or ``name=PATH`` for a model reward),
  mean and 95% bootstrap interval over prompt slots.

report.json keys: ``vgen_version``, ``model``, ``source`` (model | run), ``step``, ``split``,
``n_prompts``, ``seeds``, ``steps``, ``guidance``, ``resolution``, ``geneval_shapes``
(``overall`` / ``per_category`` -> ``strict`` / ``score`` -> ``mean``, ``ci95``, ``per_seed``,
``per_seed_std``), ``fid_shapes`` (``fid_shapes``, ``kid_shapes_mean``, ``kid_shapes_std``,
``n_real``, ``n_fake``), ``fid_inception`` (same with ``inception``), ``rewards`` (name ->
``mean``, ``ci95``, ``per_seed``, ``per_seed_std``), ``seconds`` (per phase).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vgen import __version__
from vgen.errors import UserError
from vgen.eval.geneval import geneval_shapes, summarize
from vgen.world.datasets import item_seed
from vgen.world.grammar import CATEGORIES, sample_prompts

METRICS = ("geneval", "fid")


def grid(n_prompts: int, seeds: list[int], split: str = "test", prompt_seed: int = 0) -> tuple[list[str], list[int]]:
    """Slot-major (prompts, sample seeds): slot i, seed s -> prompt i, sample seed item_seed(s, i)."""
    prompts = sample_prompts(split, n_prompts, seed=prompt_seed)
    return ([p for p in prompts for _ in seeds], [item_seed(s, i) for i in range(n_prompts) for s in seeds])


def load_rewards(items: list[str]) -> dict:
    """Reward callables by name from ``name`` or ``name=PATH`` items (a model reward's local weights)."""
    from vgen.rewards import get_reward

    out = {}
    for item in items:
        name, _, path = item.partition("=")
        out[name] = get_reward(name, **({"path": path} if path else {}))
    return out


def check_metrics(metrics: tuple[str, ...]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)} (rewards go in --rewards)")


def evaluate(images: np.ndarray, prompts: list[str], n_seeds: int, metrics: tuple[str, ...] = METRICS,
             rewards: list[str] | dict = (), inception_weights: str | None = None, fid_reference: int = 2000,
             resolution: int = 64, features=None) -> dict:
    """Every requested metric of uint8 (N, H, W, 3) images laid out slot-major (see :func:`grid`);
    ``rewards`` are names (see :func:`load_rewards`) or already loaded callables by name."""
    check_metrics(metrics)
    out: dict = {"seconds": {}}
    if "geneval" in metrics:
        t = time.perf_counter()
        out["geneval_shapes"] = geneval_shapes(images, prompts, n_seeds)
        out["seconds"]["geneval"] = time.perf_counter() - t
    if "fid" in metrics:
        from vgen.eval.fid import fid_kid, load_features, reference_stats

        t = time.perf_counter()
        features = features if features is not None else load_features()
        ref = reference_stats(fid_reference, "test", seed=0, resolution=resolution, features=features)
        out["fid_shapes"] = fid_kid(ref, images, features)
        out["seconds"]["fid"] = time.perf_counter() - t
        if inception_weights:
            from vgen.eval.fid import inception_features

            t = time.perf_counter()
            inc = inception_features(inception_weights)
            ref = reference_stats(fid_reference, "test", seed=0, resolution=resolution, features=inc)
            out["fid_inception"] = fid_kid(ref, images, inc)
            out["seconds"]["fid_inception"] = time.perf_counter() - t
    if rewards:
        t = time.perf_counter()
        out["rewards"] = {}
        for name, fn in (rewards if isinstance(rewards, dict) else load_rewards(list(rewards))).items():
            r = np.asarray(fn(images, prompts), np.float64)
            out["rewards"][name] = summarize(r.reshape(-1, n_seeds))
        out["seconds"]["rewards"] = time.perf_counter() - t
    return out


def generate(policy, prompts: list[str], seeds: list[int], steps: int, guidance: float, resolution: int,
             batch: int = 64, progress: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3) images of (prompt, seed) pairs, ``batch`` per engine call."""
    from tqdm.auto import tqdm

    from vgen.engine import rollout

    out = []
    for lo in tqdm(range(0, len(prompts), batch), desc="generate", unit="batch", disable=not progress):
        r = rollout(policy, prompts[lo:lo + batch], seeds[lo:lo + batch], steps=steps, guidance=guidance,
                    height=resolution, width=resolution)
        out.append((r.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


def evaluate_model(model: str, n: int, seeds: list[int], metrics: tuple[str, ...] = METRICS,
                   rewards: list[str] = (), steps: int | None = None, guidance: float | None = None,
                   resolution: int = 64, inception_weights: str | None = None, fid_reference: int = 2000,
                   batch: int = 64, progress: bool = True) -> tuple[dict, np.ndarray, list[str]]:
    """(report, images, prompts) for a model folder or a run's newest checkpoint."""
    from vgen.sample import recommended
    from vgen.train.checkpoint import load_model

    check_metrics(metrics)  # every request checked before the (long) generation
    if inception_weights and not Path(inception_weights).is_file():
        raise UserError(f"Inception weights file not found: {inception_weights!r}")
    rewards = load_rewards(list(rewards))
    policy, info = load_model(model)
    rec = recommended(info.get("base_model", model))
    steps = steps or rec.get("steps", 20)
    guidance = guidance if guidance is not None else rec.get("guidance", 3.0)
    prompts, sample_seeds = grid(n, seeds)
    t = time.perf_counter()
    images = generate(policy, prompts, sample_seeds, steps, guidance, resolution, batch, progress)
    gen_s = time.perf_counter() - t
    report = {"vgen_version": __version__, "model": str(model), "source": info["kind"],
              "step": (info.get("meta") or {}).get("step"), "split": "test", "n_prompts": n, "seeds": list(seeds),
              "steps": steps, "guidance": guidance, "resolution": resolution, "threads": torch.get_num_threads()}
    scored = evaluate(images, prompts, len(seeds), metrics, rewards, inception_weights, fid_reference, resolution)
    report.update(scored)
    report["seconds"] = {"generate": gen_s, **scored["seconds"]}
    return report, images, prompts


def _pct(s: dict) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:.1%} [{lo:.1%}, {hi:.1%}]"


def markdown(r: dict) -> str:
    lines = [f"# Evaluation of {r.get('model', 'images')}", ""]
    if "n_prompts" in r:
        lines.append(f"{r['n_prompts']} {r.get('split', 'test')}-split prompts x {len(r['seeds'])} seeds, "
                     f"{r['steps']} steps, CFG {r['guidance']}, {r['resolution']} px; vgen {r['vgen_version']}.")
    g = r.get("geneval_shapes")
    if g:
        lines += ["", "## GenEval-Shapes (95% bootstrap interval over prompts; spread = std across seeds)", "",
                  "| category | strict accuracy | per-seed spread | mean score |", "|---|---|---|---|"]
        rows = [(c, g["per_category"][c]) for c in CATEGORIES if c in g["per_category"]] + [("overall", g["overall"])]
        for c, v in rows:
            lines.append(f"| {c} | {_pct(v['strict'])} | {v['strict']['per_seed_std']:.1%} | "
                         f"{v['score']['mean']:.3f} |")
    for key, label in (("fid_shapes", "shapes"), ("fid_inception", "inception")):
        f = r.get(key)
        if f:
            name = "FID-shapes" if label == "shapes" else "Inception FID"
            lines += ["", f"## {name}", "", f"- {name}: {f[f'fid_{label}']:.3f} ({f['n_fake']} generated vs "
                      f"{f['n_real']} real test-split images)",
                      f"- KID-{label}: {f[f'kid_{label}_mean']:.5f} ± {f[f'kid_{label}_std']:.5f}"]
    if r.get("rewards"):
        lines += ["", "## Rewards", "", "| reward | mean | 95% interval | per-seed spread |", "|---|---|---|---|"]
        for name, s in r["rewards"].items():
            lines.append(f"| {name} | {s['mean']:.4f} | [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] | "
                         f"{s['per_seed_std']:.4f} |")
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in r.get("seconds", {}).items())
    lines += ["", f"Time: {secs}.", "", "![samples](samples.png)"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict, images: np.ndarray, prompts: list[str], n_seeds: int,
                 grid_prompts: int = 12) -> None:
    """report.json, report.md and samples.png (the first seed of the first slots), each written atomically."""
    from vgen.images import make_grid
    from vgen.io import atomic_write_json, atomic_write_text, save_png
    from vgen.world.verifier import verify

    idx = list(range(0, len(images), n_seeds))[:grid_prompts]
    marks = [v.strict for v in verify(images[idx], [prompts[i] for i in idx])]
    save_png(out / "samples.png", make_grid([images[i] for i in idx], [prompts[i] for i in idx], cols=6, marks=marks))
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))


def run_eval(model: str, out: str | None, n: int, seeds: list[int], metrics: tuple[str, ...], rewards: list[str],
             steps: int | None, guidance: float | None, resolution: int, inception_weights: str | None,
             fid_reference: int, force: bool) -> Path:
    """`vgen eval`: evaluate, then write the report into ``out`` (default: RUN/eval/step-N for a
    run, runs/eval-<model>-<time> for a model folder); a non-empty ``out`` needs ``force``."""
    if n < 1 or not seeds:
        raise UserError("--n must be >= 1 and --seeds must name at least one seed")
    if out is not None and Path(out).is_dir() and any(Path(out).iterdir()) and not force:
        raise UserError(f"output folder {out!r} is not empty; pass --force to write into it")
    report, images, prompts = evaluate_model(model, n, seeds, tuple(metrics), rewards, steps, guidance, resolution,
                                             inception_weights, fid_reference)
    if out is None:
        if report["source"] == "run":
            out = Path(model) / "eval" / f"step-{report['step']:06d}"
        else:
            out = Path("runs") / f"eval-{Path(model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    write_report(out, report, images, prompts, len(seeds))
    return out
