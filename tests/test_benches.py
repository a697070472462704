"""`vgen bench rollout` and `vgen bench explore` run end to end and report every figure (speeds not asserted)."""

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


def test_bench_explore_reports_every_backend(model_dir, tmp_path, capsys):
    rc = main(["bench", "explore", f"model={model_dir}", "batch=4", "repeats=1", "lora_rank=2",
               f"run.out_dir={tmp_path}", "run.name=e"])
    assert rc == 0
    r = json.loads((tmp_path / "e" / "report.json").read_text())
    assert set(r["backends"]) == {"fp32", "bf16", "fp8", "nvfp4", "nvfp4-emu"}
    assert r["backends"]["nvfp4-emu"]["refresh_ms"] > 0 and r["backends"]["bf16"]["available"]
