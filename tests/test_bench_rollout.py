"""`vgen bench rollout` runs end to end and reports every figure (speed itself is not asserted)."""

import json

from vgen.cli import main


def test_bench_rollout_reports_all_figures(model_dir, tmp_path, capsys):
    rc = main(["bench", "rollout", f"model={model_dir}", "batch=4", "steps=2", "resolution=32", "repeats=1",
               f"run.out_dir={tmp_path}", "run.name=b"])
    assert rc == 0
    r = json.loads((tmp_path / "b" / "report.json").read_text())
    assert set(r["seconds"]) == {"diffusers", "engine", "engine_folded", "forwards", "engine_bf16"}
    assert all(v > 0 for v in r["seconds"].values())
    assert r["engine_overhead"] > 0 and r["bf16_vs_fp32"] > 0
    assert "folded engine / diffusers" in (tmp_path / "b" / "report.md").read_text()
