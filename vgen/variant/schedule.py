"""Which path each VARiant training step trains: the full network or a subnet of a given depth.

A schedule is a list of stages, each covering a share of the steps with a full:subnet ratio:
``fixed`` is one stage; ``progressive`` (the default) has three. Within a stage the full-path steps
are spread evenly (step n of the stage is a full step when floor((n + 1) r) > floor(n r), r the full
share: 2:8 trains the full path at stage steps 4, 9, 14, ...), and the subnet steps take the
configured depths in turn (round robin over all subnet steps of the run), so every depth gets the
same number of steps up to one. Everything follows from the step number, so a resumed run trains
the same paths as an uninterrupted one.

``mix: loss`` reads the same stages as loss weights instead: every step trains the full path and one
subnet (the depths in turn, one per step), the loss f * L_full + s * L_subnet with f + s = 1; a zero
weight skips its path's pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vgen.errors import UserError


@dataclass(frozen=True)
class Schedule:
    depths: tuple[int, ...]               # subnet depths, taken in turn by the subnet steps
    ends: tuple[float, ...]               # cumulative share of the steps at which each stage ends (last 1.0)
    ratios: tuple[tuple[float, float], ...]  # full:subnet of each stage

    def __post_init__(self):
        if not self.depths:
            raise UserError("VARiant needs at least one subnet depth")
        if len(self.ends) != len(self.ratios) or not self.ends:
            raise UserError("a VARiant schedule needs one full:subnet ratio per stage")
        if any(b <= a for a, b in zip((0.0, *self.ends), self.ends)) or not math.isclose(self.ends[-1], 1.0):
            raise UserError(f"stage ends {list(self.ends)} must increase from above 0 to 1")
        if any(f < 0 or s < 0 or f + s <= 0 for f, s in self.ratios):
            raise UserError(f"full:subnet ratios {[list(r) for r in self.ratios]} must be >= 0, not both 0")


def _stage_bounds(s: Schedule, iterations: int) -> list[tuple[int, int]]:
    """(first step, last step) of each stage, steps numbered from 1; a stage may be empty."""
    cuts = [0] + [round(e * iterations) for e in s.ends]
    return [(a + 1, b) for a, b in zip(cuts, cuts[1:])]


def _full_share(ratio) -> float:
    return ratio[0] / (ratio[0] + ratio[1])


def _is_full(n: int, r: float) -> bool:
    return math.floor((n + 1) * r + 1e-9) > math.floor(n * r + 1e-9)


def path_at(s: Schedule, step: int, iterations: int) -> int | None:
    """The subnet depth step ``step`` (1-based) trains, or None for the full network."""
    subnet_before = 0
    for (lo, hi), ratio in zip(_stage_bounds(s, iterations), s.ratios):
        r = _full_share(ratio)
        if step > hi:  # a whole earlier stage: its subnet steps in closed form
            n = hi - lo + 1
            subnet_before += max(n, 0) - math.floor(max(n, 0) * r + 1e-9)
            continue
        n = step - lo
        if _is_full(n, r):
            return None
        return s.depths[(subnet_before + n - math.floor(n * r + 1e-9)) % len(s.depths)]
    raise UserError(f"step {step} is beyond the run's {iterations} steps")


def loss_weights_at(s: Schedule, step: int, iterations: int) -> tuple[float, float]:
    """``mix: loss``: the (full, subnet) loss weights of step ``step`` (1-based), its stage's full:subnet
    ratio normalised to sum 1."""
    for (lo, hi), ratio in zip(_stage_bounds(s, iterations), s.ratios):
        if lo <= step <= hi:
            r = _full_share(ratio)
            return r, 1.0 - r
    raise UserError(f"step {step} is beyond the run's {iterations} steps")


def joint_depth_at(s: Schedule, step: int) -> int:
    """``mix: loss``: the subnet depth step ``step`` (1-based) trains beside the full network, in turn."""
    return s.depths[(step - 1) % len(s.depths)]


def plan_for(depth: int, patch_nums, switch_size: int, subnet_depth: int | None) -> list[list[int]] | None:
    """The depth plan of one path over the scale list ``patch_nums``: scales of side >= ``switch_size``
    run the equidistant subnet of ``subnet_depth`` blocks (None: the full network everywhere).

    The switch is by size, not index, so a FlexVAR trained on a random scale list per step switches
    where its sampling list does (for a fixed list the two are the same)."""
    from vgen.models.var import subnet_indices

    if subnet_depth is None:
        return None
    sub = subnet_indices(depth, subnet_depth)
    return [sub if pn >= switch_size else list(range(depth)) for pn in patch_nums]
