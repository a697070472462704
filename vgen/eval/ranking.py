"""How well a cheap ranking of candidates (explore precision, few steps) predicts the ranking
that matters (train precision, full steps): Sol-RL keeps only the seeds the cheap pass ranks
highest and lowest, so what counts is agreement at the extremes as much as overall.

* Kendall's tau-b (scipy), which accounts for ties: verifier rewards are coarse, and a
  group where either side is constant has no defined tau (NaN, counted, never averaged in).
* Top-k overlap, tie-aware: |A ∩ B| / k for the cheap top-k A and the reference top-k B,
  with B's ties at the k-th place broken in A's favour. With distinct rewards this is the
  plain overlap; with ties it does not punish an arbitrary tie-break.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two reward vectors; NaN when either is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def topk_overlap(cheap, reference, k: int) -> float:
    """Overlap of ``cheap``'s top-k (stable order: earlier index first among ties) with the
    reference top-k: every member above the reference's k-th best counts, and members tied
    with it count up to the places left for the tie."""
    cheap, reference = np.asarray(cheap, np.float64), np.asarray(reference, np.float64)
    k = min(k, len(cheap))
    top = reference[np.argsort(-cheap, kind="stable")[:k]]
    kth = np.sort(reference)[::-1][k - 1]
    above = int((reference > kth).sum())
    return (int((top > kth).sum()) + min(int((top == kth).sum()), k - above)) / k


def agreement(cheap: np.ndarray, reference: np.ndarray, k: int) -> dict:
    """Per-group and summary agreement for (groups, candidates) reward arrays; undefined taus are
    None (JSON has no NaN)."""
    cheap, reference = np.atleast_2d(cheap), np.atleast_2d(reference)
    taus = np.array([kendall_tau(c, r) for c, r in zip(cheap, reference)])
    overlaps = np.array([topk_overlap(c, r, k) for c, r in zip(cheap, reference)])
    defined = ~np.isnan(taus)
    return {
        "kendall_tau_mean": float(taus[defined].mean()) if defined.any() else None,
        "groups_without_tau": int((~defined).sum()),
        f"top{k}_overlap_mean": float(overlaps.mean()),
        "per_group_tau": [None if np.isnan(t) else float(t) for t in taus],
        f"per_group_top{k}_overlap": overlaps.tolist(),
    }


def tau_text(a: dict) -> str:
    """``agreement``'s mean tau for a table: "n/a" when no group had one (every group tied on a side)."""
    return "n/a" if a["kendall_tau_mean"] is None else f"{a['kendall_tau_mean']:.3f}"
