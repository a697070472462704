"""tools/variant_val_loss.py: per-path held-out CE at one step, mean +- std over runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_val_loss as V  # noqa: E402


def _run(path: Path, full: float, d2: float) -> Path:
    path.mkdir()
    rows = [{"step": 100, "loss": 3.0}, {"step": 100, "val_loss": 9.0, "val_loss_d2": 9.0, "val_acc": 0.1},
            {"step": 300, "val_loss": full, "val_loss_d8": 2.5, "val_loss_d2": d2}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mean_and_std_per_path_full_first_then_deeper_subnets(tmp_path, monkeypatch, capsys):
    runs = [_run(tmp_path / "a", 2.0, 3.0), _run(tmp_path / "b", 2.2, 3.4)]
    monkeypatch.setattr(sys, "argv", ["v", *map(str, runs), "--step", "300"])
    V.main()
    assert capsys.readouterr().out.splitlines() == [
        "full: 2.1000 +- 0.1414 (2 runs)", "depth 8: 2.5000 +- 0.0000 (2 runs)", "depth 2: 3.2000 +- 0.2828 (2 runs)"]


def test_a_step_without_evaluation_or_a_folder_without_metrics_is_one_line(tmp_path):
    run = _run(tmp_path / "a", 2.0, 3.0)
    with pytest.raises(SystemExit, match="no held-out evaluation at step 200"):
        V.at_step(run, 200)
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        V.at_step(tmp_path, 300)
