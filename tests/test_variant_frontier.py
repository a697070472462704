"""tools/variant_frontier.py: each arm's share of full steps, and the frontier's interpolation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_frontier as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def report(folder: Path, overrides: list[str], fids: dict[str, list[float]]) -> Path:
    folder.mkdir(parents=True)
    row = {d: [{"fid": f, "strict": 0.5} for f in v] for d, v in fids.items()}
    table = {"base": {d: {"fid": 50.0, "strict": 0.1} for d in fids}, "fixed": row, "progressive": row}
    (folder / "report.json").write_text(json.dumps({
        "config": str(ROOT / "configs/variant/d30.yaml"), "overrides": overrides, "seeds": [0, 1],
        "depths": [int(d) for d in fids], "table": table}))
    return folder


def test_each_arm_reads_its_schedule_and_counts_its_full_steps(tmp_path):
    fids = {"30": [10.0, 12.0], "16": [15.0, 15.0], "8": [23.0, 25.0], "2": [36.0, 36.0]}
    r = report(tmp_path / "r19", ["ratio=[1,9]"], fids)
    fixed, prog = F.arm(r, "fixed"), F.arm(r, "progressive")
    assert fixed["label"] == "fixed 1:9" and fixed["share"] == pytest.approx(30 / 300)
    # d30.yaml's progressive: 2:8 over steps 1-150, 1:9 over 151-225, 0:10 after: floor(150 / 5) + floor(75 / 10)
    assert prog["label"] == "progressive 2:8 -> 1:9 -> 0:10" and prog["share"] == pytest.approx((30 + 7) / 300)
    assert fixed["fid"][30] == pytest.approx((11.0, 2 ** 0.5)) and fixed["fid"][8][0] == pytest.approx(24.0)
    assert fixed["base"][16] == 50.0


def test_the_frontier_is_linear_between_the_bracketing_fixed_arms():
    def arm(full, sub):
        return {"fid": {30: (full, 0.0), 8: (sub, 0.0)}}

    fixed = [arm(14.0, 20.0), arm(10.0, 24.0), arm(12.0, 21.0)]  # any order: sorted by full-network FID
    assert F.frontier_at(fixed, 30, 8, 11.0) == pytest.approx(22.5)
    assert F.frontier_at(fixed, 30, 8, 13.5) == pytest.approx(20.25)
    assert F.frontier_at(fixed, 30, 8, 12.0) == pytest.approx(21.0)
    assert F.frontier_at(fixed, 30, 8, 9.9) is None and F.frontier_at(fixed, 30, 8, 14.1) is None
