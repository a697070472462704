"""GenEval-Shapes: GenEval's six categories scored by the shapes world's exact verifier.

Images come in a (prompt slot x seed) grid: slot i holds prompt i, generated once per seed.
* strict accuracy: share of images whose every constraint holds; score: share of constraints
  that hold, averaged; both overall (over all images, categories balanced by the prompt
  sampler) and per category;
* a 95% bootstrap interval that resamples prompt slots (each slot's images stay together,
  since their outcomes are correlated through the prompt), percentile method;
* the per-seed spread: the metric computed separately for each seed (all slots), with its
  standard deviation across seeds: how much one seed's evaluation can move.
"""

from __future__ import annotations

import numpy as np

from vgen.world.grammar import CATEGORIES
from vgen.world.verifier import verify


def _bootstrap(per_slot: np.ndarray, n_boot: int, rng: np.random.Generator) -> list[float]:
    if len(per_slot) < 2:
        return [float(per_slot.mean())] * 2
    idx = rng.integers(0, len(per_slot), (n_boot, len(per_slot)))
    means = per_slot[idx].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean, 95% bootstrap interval over slots, and per-seed figures of a (slots, seeds) array."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    per_seed = values.mean(0)
    return {"mean": float(values.mean()), "ci95": _bootstrap(values.mean(1), n_boot, rng),
            "per_seed": per_seed.tolist(), "per_seed_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0}


def geneval_shapes(images, prompts: list[str], n_seeds: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """Scores of images laid out slot-major: image ``i * n_seeds + j`` is slot i, seed j."""
    if len(prompts) % n_seeds:
        raise ValueError(f"{len(prompts)} images do not form a grid of {n_seeds} seeds")
    verdicts = verify(images, prompts)
    shape = (len(prompts) // n_seeds, n_seeds)
    strict = np.array([v.strict for v in verdicts], np.float64).reshape(shape)
    score = np.array([v.score for v in verdicts], np.float64).reshape(shape)
    cats = np.array([v.category for v in verdicts]).reshape(shape)[:, 0]
    out = {"n_images": len(prompts), "n_prompts": shape[0], "n_seeds": n_seeds,
           "overall": {"strict": summarize(strict, n_boot, seed), "score": summarize(score, n_boot, seed)},
           "per_category": {}}
    for c in CATEGORIES:
        rows = cats == c
        if rows.any():
            out["per_category"][c] = {"n_prompts": int(rows.sum()), "strict": summarize(strict[rows], n_boot, seed),
                                      "score": summarize(score[rows], n_boot, seed)}
    return out
