"""Per-prompt advantages over the k regenerated samples of each prompt (DESIGN section 5).

Modes, for a group g of rewards r (one row per prompt):
* ``group``:      A = (r - mean_g) / (std_g + eps)
* ``global_std``: A = (r - mean_g) / (std over every reward of the batch + eps)
* ``mc_grpo``:    A = (r - median_g) / (MAD_g + eps), MAD_g = median_g |r - median_g|

Standard deviations are population ones (ddof=0), as in Flow-GRPO's / DiffusionNFT's stat trackers.
Statistics are computed in float64; the advantages are returned in float32.

Which samples contribute (``contributes``, for the loss to mask with):
* a *degenerate* group, whose valid rewards are all exactly equal (or that has fewer than two
  valid samples), carries no learning signal: its advantages are set to exactly 0 (not left to
  the rounding of r - mean) and none of its samples contribute. ``n_degenerate`` counts them;
* ``mc_grpo`` with an odd group excludes its median sample (advantage exactly 0): the one in
  the middle of the group sorted by reward ascending (stable: ties by lower index). With an even group the median
  is the midpoint of the two middle rewards, no sample sits on it, and nothing is excluded; the
  loop should ask for an odd k when it wants the MC-GRPO form of the paper.
* ``mc_grpo`` when more than half the group shares the median (MAD = 0) but the group is not
  degenerate: dividing by eps alone would blow advantages up to ~1/eps, so the scale falls back
  to the mean absolute deviation around the median (> 0 there). Documented deviation from the
  bare formula.
* samples marked invalid in ``valid`` (e.g. a NaN reward the caller could not drop without making
  the batch ragged) are left out of every statistic, get advantage 0 and never contribute.

Non-finite rewards among the valid ones raise ValueError: nothing NaN may reach the loss silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("group", "global_std", "mc_grpo")


@dataclass
class Advantages:
    values: np.ndarray       # (G, k) float32 advantages
    contributes: np.ndarray  # (G, k) bool, False for degenerate groups, the MC-GRPO median and invalid samples
    degenerate: np.ndarray   # (G,) bool, groups with no reward spread

    @property
    def n_degenerate(self) -> int:
        return int(self.degenerate.sum())


def advantages(rewards: np.ndarray, mode: str = "group", eps: float = 1e-4,
               valid: np.ndarray | None = None) -> Advantages:
    """Advantages of a (G, k) reward array (one row per prompt); see the module docstring."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (G, k), one row per prompt; got shape {r.shape}")
    if mode not in MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; choose one of {', '.join(MODES)}")
    ok = np.ones(r.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != r.shape:
        raise ValueError(f"valid has shape {ok.shape}, rewards {r.shape}")
    if not np.isfinite(r[ok]).all():
        bad = int((~np.isfinite(r[ok])).sum())
        raise ValueError(f"{bad} non-finite reward(s) among the valid samples; drop or mask them first")

    values = np.zeros(r.shape, dtype=np.float64)
    contributes = ok.copy()
    degenerate = np.zeros(r.shape[0], dtype=bool)
    global_std = float(r[ok].std()) if ok.any() else 0.0
    for g in range(r.shape[0]):
        idx = np.flatnonzero(ok[g])
        x = r[g, idx]
        if len(x) < 2 or x.min() == x.max():
            degenerate[g] = True
            contributes[g] = False
            continue
        if mode == "mc_grpo":
            med = float(np.median(x))
            dev = np.abs(x - med)
            scale = float(np.median(dev))
            if scale == 0.0:
                scale = float(dev.mean())
            a = (x - med) / (scale + eps)
            if len(x) % 2:
                mid = idx[np.argsort(x, kind="stable")[len(x) // 2]]
                a[idx == mid] = 0.0  # x[mid] == med exactly already; made explicit
                contributes[g, mid] = False
        else:
            scale = float(x.std()) if mode == "group" else global_std
            a = (x - x.mean()) / (scale + eps)
        values[g, idx] = a
    return Advantages(values.astype(np.float32), contributes, degenerate)
