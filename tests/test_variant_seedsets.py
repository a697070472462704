"""tools/variant_seedsets.py: one comparison's scores on disjoint seed sets, averaged per model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_seedsets as S  # noqa: E402


def folder(path: Path, eval_seeds: str, fids: dict, overrides=("mix=loss", "private=true")) -> Path:
    """A variant_compare folder whose models score fids[arm] = [[per training seed] per depth]."""
    path.mkdir()
    depths = [30, 8]
    table = {"base": {str(d): {"fid": fids["base"][i], "strict": 0.5} for i, d in enumerate(depths)}}
    for arm in ("fixed", "progressive"):
        table[arm] = {str(d): [{"fid": x, "strict": 0.25} for x in fids[arm][i]] for i, d in enumerate(depths)}
    (path / "report.json").write_text(json.dumps({
        "config": "configs/variant/d30.yaml", "overrides": list(overrides), "seeds": [0, 1],
        "eval_seeds": eval_seeds, "sampling": {"cfg": 3.0}, "depths": depths, "table": table}))
    return path


def test_each_model_is_averaged_over_the_sets_before_the_spread_over_training_seeds(tmp_path):
    a = folder(tmp_path / "a", "100-109", {"base": [10, 50], "fixed": [[10, 12], [20, 22]],
                                           "progressive": [[11, 11], [19, 25]]})
    b = folder(tmp_path / "b", "300-309", {"base": [8, 52], "fixed": [[12, 10], [22, 20]],
                                           "progressive": [[9, 9], [21, 21]]}, overrides=("private=true", "mix=loss"))
    t = S.pooled([a, b])
    assert t["base"]["30"]["fid"] == pytest.approx(9.0)
    assert [r["fid"] for r in t["fixed"]["30"]] == pytest.approx([11.0, 11.0])
    assert [r["fid"] for r in t["progressive"]["30"]] == pytest.approx([10.0, 10.0])
    assert [r["fid"] for r in t["progressive"]["8"]] == pytest.approx([20.0, 23.0])
    assert [r["strict"] for r in t["fixed"]["8"]] == pytest.approx([0.25, 0.25])


def test_overlapping_sets_or_another_comparison_are_refused(tmp_path):
    fids = {"base": [10, 50], "fixed": [[10, 12], [20, 22]], "progressive": [[11, 11], [19, 25]]}
    a = folder(tmp_path / "a", "100-109", fids)
    with pytest.raises(SystemExit, match="overlap"):
        S.pooled([a, folder(tmp_path / "b", "105-114", fids)])
    with pytest.raises(SystemExit, match="overrides"):
        S.pooled([a, folder(tmp_path / "c", "300-309", fids, overrides=("mix=loss",))])
    d = folder(tmp_path / "d", "500-509", fids)
    report = json.loads((d / "report.json").read_text())
    del report["sampling"]  # a report from before the comparison recorded its sampling
    (d / "report.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="sampling None differs"):
        S.pooled([a, d])
    with pytest.raises(SystemExit, match="no report.json"):
        S.pooled([a, tmp_path])


def test_against_pairs_each_training_seed_with_the_other_comparisons(tmp_path, monkeypatch, capsys):
    """--against: per arm and depth, this comparison's set-averaged model minus the other's of the same seed,
    checked by hand; folders of other seed sets, another count or another config are refused."""
    fids = {"base": [10, 50], "fixed": [[10, 12], [20, 22]], "progressive": [[11, 11], [19, 25]]}
    a = folder(tmp_path / "a", "100-109", fids, overrides=("mix=loss", "project=true"))
    b = folder(tmp_path / "b", "300-309", {"base": [8, 52], "fixed": [[12, 10], [22, 20]],
                                           "progressive": [[9, 9], [21, 21]]}, overrides=("mix=loss", "project=true"))
    c = folder(tmp_path / "c", "100-109", {"base": [10, 50], "fixed": [[11, 11], [21, 21]],
                                           "progressive": [[12, 10], [20, 20]]})
    e = folder(tmp_path / "e", "300-309", {"base": [8, 52], "fixed": [[11, 13], [21, 21]],
                                           "progressive": [[10, 10], [20, 20]]})
    diff = S.paired(S.pooled([a, b]), S.pooled([c, e]))
    # fixed at 30: this (10+12)/2, (12+10)/2 = 11, 11; other (11+11)/2, (11+13)/2 = 11, 12
    assert [x["fid"] for x in diff["fixed"]["30"]] == pytest.approx([0.0, -1.0])
    # progressive at 8: this 20, 23; other 20, 20
    assert [x["fid"] for x in diff["progressive"]["8"]] == pytest.approx([0.0, 3.0])
    monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--against", str(c), str(e)])
    S.main()
    out = capsys.readouterr().out
    assert "| 30 (full) | -0.50 +- 0.71 | 1 of 2 | 0.0% +- 0.0 |" in out
    for against, message in (([e, c], "pair the folders set by set"), ([c], "one per seed set")):
        monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--against", *map(str, against)])
        with pytest.raises(SystemExit, match=message):
            S.main()
    r = json.loads((c / "report.json").read_text())
    r["config"] = "configs/variant/deep.yaml"
    (c / "report.json").write_text(json.dumps(r))
    (e / "report.json").write_text((e / "report.json").read_text().replace("d30.yaml", "deep.yaml"))
    monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--against", str(c), str(e)])
    with pytest.raises(SystemExit, match="config configs/variant/deep.yaml differs"):
        S.main()


def test_arms_pairs_only_the_named_arm(tmp_path, monkeypatch, capsys):
    """--arms fixed: the paired table has the fixed arm's columns only, with the same numbers as both arms give."""
    fids = {"base": [10, 50], "fixed": [[10, 12], [20, 22]], "progressive": [[11, 11], [19, 25]]}
    a = folder(tmp_path / "a", "100-109", fids, overrides=("mix=loss", "lr_schedule=cosine"))
    b = folder(tmp_path / "b", "300-309", fids, overrides=("mix=loss", "lr_schedule=cosine"))
    c = folder(tmp_path / "c", "100-109", {**fids, "fixed": [[11, 11], [21, 21]]})
    e = folder(tmp_path / "e", "300-309", {**fids, "fixed": [[11, 13], [21, 21]]})
    outs = {}
    for arms in ([], ["--arms", "fixed"]):
        monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--against", str(c), str(e), *arms])
        S.main()
        outs[bool(arms)] = capsys.readouterr().out
    # fixed at 30: this 10, 12 against 11, 12 -> -1, 0
    assert "| 30 (full) | -0.50 +- 0.71 | 1 of 2 | 0.0% +- 0.0 |\n" in outs[True]
    assert "progressive: FID change" not in outs[True] and "progressive: FID change" in outs[False]
    assert "| 30 (full) | -0.50 +- 0.71 | 1 of 2 | 0.0% +- 0.0 | 0.00 +- 0.00 |" in outs[False]
    monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--against", str(c), str(e),
                                      "--arms", "best"])
    with pytest.raises(SystemExit):
        S.main()
    monkeypatch.setattr(sys, "argv", ["variant_seedsets.py", str(a), str(b), "--arms", "fixed"])
    with pytest.raises(SystemExit, match="give --against too"):
        S.main()
