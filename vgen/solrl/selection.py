"""Which k of N explored candidates to regenerate and train on (DESIGN section 5, step 3).

Conventions shared by every rule:
* only finite rewards are candidates: a NaN (or +-inf) reward means a failed score, and such a
  candidate is never selected. When fewer than k finite candidates remain, all finite ones are
  returned, so the caller sees the shortfall in the returned size;
* one ranking decides the deterministic rules: reward descending, ties broken by the lower
  index first (a stable sort), so equal rewards give the same answer on every run and machine;
* the result is a sorted (ascending) int64 array of distinct indices into ``rewards``;
* ``k == N`` returns every index whatever the rule (the DiffusionNFT k-in-k family) and draws
  nothing from ``rng``.
"""

from __future__ import annotations

import numpy as np

RULES = ("best_worst", "mean_deviation", "random", "extremes_random")


def _ranking(rewards: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by reward descending, ties by lower index first."""
    return idx[np.argsort(-rewards[idx], kind="stable")]


def _best_worst(rewards: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """The top floor(k/2) and the bottom k - floor(k/2) of the ranking (head and tail, never overlapping)."""
    order = _ranking(rewards, idx)
    top = k // 2
    return np.concatenate([order[:top], order[len(order) - (k - top):]])


def select(rewards: np.ndarray, k: int, rule: str = "best_worst", rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the k candidates to keep, by ``rule``:

    * ``best_worst`` (default): top floor(k/2) and bottom k - floor(k/2) by reward: the most
      contrastive subset;
    * ``mean_deviation``: the k largest |r - mean| (mean over the finite rewards), ties by index;
    * ``random``: k uniformly without replacement (a baseline: what reward-aware selection buys);
    * ``extremes_random``: ``best_worst`` on k // 2 (the extremes), the other k - k // 2 uniformly
      from the candidates left in the middle: contrast plus coverage of the typical samples.

    ``rng`` is needed only by the random rules. ``k > N`` or ``k < 1`` raises ValueError.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {rewards.shape}")
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(RULES)}")
    n = len(rewards)
    if not 1 <= k <= n:
        raise ValueError(f"cannot select k={k} of N={n} candidates (need 1 <= k <= N)")
    finite = np.flatnonzero(np.isfinite(rewards))
    if k >= len(finite):  # k == N, or NaNs left no more than k: everything finite
        return finite.astype(np.int64)
    if rule in ("random", "extremes_random") and rng is None:
        raise ValueError(f"rule {rule!r} needs an rng (numpy Generator)")

    if rule == "best_worst":
        chosen = _best_worst(rewards, finite, k)
    elif rule == "mean_deviation":
        dev = np.abs(rewards[finite] - rewards[finite].mean())
        chosen = finite[np.argsort(-dev, kind="stable")[:k]]
    elif rule == "random":
        chosen = rng.choice(finite, size=k, replace=False)
    else:  # extremes_random
        ext = _best_worst(rewards, finite, k // 2) if k // 2 else np.empty(0, dtype=np.int64)
        middle = np.setdiff1d(finite, ext)
        chosen = np.concatenate([ext, rng.choice(middle, size=k - len(ext), replace=False)])
    return np.sort(chosen).astype(np.int64)
