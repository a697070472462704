"""tools/variant_private_overhead.py: each private depth timed with and without its offsets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_variant import lively, with_private

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_private_overhead as P  # noqa: E402


def _folder(tmp_path, private: bool):
    from vgen.models.var.folder import save_var_model
    from vgen.world.datasets import CLASS_PROMPTS

    vae, var, _, _ = lively()
    if private:
        with_private(var, depths=(3, 2))
        var.arch["private_depths"] = [2, 3]
    return save_var_model(tmp_path / "m", vae, var.eval(), CLASS_PROMPTS, 16, {"cfg": 1.5, "top_k": 4, "top_p": 0.0})


def test_every_private_depth_is_timed_both_ways(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path, True)
    monkeypatch.setattr(sys, "argv", ["p", str(folder), "--batch", "2", "--rounds", "2", "--threads", "1"])
    P.main()
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == ["depth 3", "depth 2"]
    assert all("with the offsets" in line and "same-round time ratio" in line for line in out.splitlines()[1:])


def test_a_model_without_offsets_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["p", str(_folder(tmp_path, False))])
    with pytest.raises(SystemExit, match="has no private offsets"):
        P.main()
