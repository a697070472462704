"""The benchmarks run end to end and report every figure (speeds not asserted)."""

import json
import statistics

import pytest
import torch
from conftest import gpu_marks, tiny_var_models

from vgen.cli import main
from vgen.models.var.folder import build_var, save_var_model
from vgen.world.datasets import CLASS_PROMPTS


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
    assert set(r["backends"]) == {"fp32", "bf16", "fp8", "nvfp4", "nvfp4-te", "nvfp4-emu"}
    assert r["backends"]["nvfp4-emu"]["refresh_ms"] > 0 and r["backends"]["bf16"]["available"]


def test_bench_fidelity_compares_cheap_rankings_with_the_reference(model_dir, tmp_path, capsys):
    rc = main(["bench", "fidelity", f"model={model_dir}", "prompts=2", "seeds=6", "top_k=2", "preview_steps=2",
               "steps=3", "guidance=3.0", "cheap=[nvfp4-emu, fp32]", "min_features=16", f"run.out_dir={tmp_path}",
               "run.name=f"])
    assert rc == 0
    r = json.loads((tmp_path / "f" / "report.json").read_text())
    assert set(r["cheap"]) == {"nvfp4-emu", "fp32"} and len(r["prompts"]) == 2
    for v in r["cheap"].values():
        assert len(v["per_group_tau"]) == 2 and 0 <= v["top2_overlap_mean"] <= 1
    assert r["cheap"]["nvfp4-emu"]["quantized_linears"] > 0


def test_bench_fidelity_refuses_an_unavailable_backend_before_any_work(model_dir, tmp_path, capsys):
    rc = main(["bench", "fidelity", f"model={model_dir}", "cheap=[fp8]", f"run.out_dir={tmp_path}"])
    assert rc == 2 and "sm_89+" in capsys.readouterr().err


def test_bench_quant_reports_cpu_figures_and_skips_gpu_part(model_dir, tmp_path, capsys):
    rc = main(["bench", "quant", f"model={model_dir}", "rows=32", "cols=64", "batch=2", "steps=1", "repeats=1",
               f"run.out_dir={tmp_path}", "run.name=q"])
    assert rc == 0
    r = json.loads((tmp_path / "q" / "report.json").read_text())
    assert set(r["quantize_cpu"]) == {"vgen_quantize", "vgen_dequantize", "vgen_pack", "torchao_to_nvfp4"}
    assert set(r["rollout_cpu"]) == {"fp32", "bf16", "nvfp4-emu copy"}
    if not torch.cuda.is_available():
        assert "no CUDA device" in r["gpu"]["skipped"]


def test_bench_var_reports_speeds_and_the_kv_cache_peak(var_model_dir, tmp_path, capsys):
    rc = main(["bench", "var", f"model={var_model_dir}", "batch=3", "repeats=3", f"run.out_dir={tmp_path}",
               "run.name=v"])
    assert rc == 0
    r = json.loads((tmp_path / "v" / "report.json").read_text())
    full = r["full"]
    assert set(full["images_per_s"]) == {"cached", "uncached"} and full["cache_speedup"] > 0
    # 3 images doubled by CFG: the peak is the closed form, per real image
    assert full["rows"] == 6 and r["kv_formula_matches"] and r["variant"] is None
    assert full["kv_peak_bytes"] == 2 * 2 * 6 * 21 * 32 * 4 == full["kv_peak_bytes_per_image"] * 3
    md = (tmp_path / "v" / "report.md").read_text()
    assert "closed form" in md and "plain official procedure" in md
    # batch 1 and 16 beside the plain official procedure: no model call is padded, so batch 1 pays no
    # 16x tax (a loose bound on the best of 3 timed calls: one call on a shared CI machine can stall)
    per = r["seconds_per_image"]
    assert set(per) == {"1", "16"} and all(set(t) == {"vgen", "plain", "ratio"} for t in per.values())
    assert 0 < per["1"]["vgen"] < 4 * per["1"]["plain"]


def test_bench_var_in_bf16_without_the_uncached_timing(var_model_dir, tmp_path):
    """bf16 halves the cache's bytes (the closed form in the model's dtype); uncached=false times no
    uncached call, so it reports no cache speed-up."""
    rc = main(["bench", "var", f"model={var_model_dir}", "batch=3", "repeats=1", "precision=bf16", "uncached=false",
               "per_image_batches=[]", f"run.out_dir={tmp_path}", "run.name=v"])
    assert rc == 0
    r = json.loads((tmp_path / "v" / "report.json").read_text())
    full = r["full"]
    assert r["precision"] == "bf16" and set(full["images_per_s"]) == {"cached"} and full["cache_speedup"] is None
    assert r["kv_formula_matches"] and full["kv_peak_bytes"] == 2 * 2 * 6 * 21 * 32 * 2
    md = (tmp_path / "v" / "report.md").read_text()
    assert "bf16, " in md and "| full depth |" in md and "| not timed | - |" in md


def test_the_plain_reference_sampler_is_the_same_procedure(var_model_dir):
    """Greedy (top-k 1) leaves no randomness: the benchmark's plain sampler must then draw vgen's tokens."""
    from vgen.bench.var import plain_sample
    from vgen.engine.scalewise import sample
    from vgen.models.var.folder import load_var_model

    vae, var, _ = load_var_model(var_model_dir)
    ours = sample(var, vae, [1, 5, 9], [0, 1, 2], cfg=1.5, top_k=1)
    plain = plain_sample(var, vae, [1, 5, 9], cfg=1.5, top_k=1, top_p=0.0, generator=torch.Generator())
    assert torch.allclose(plain, ours.images, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu_marks())])
def test_bench_var_shows_each_depth_lowering_the_peak(tmp_path, capsys, device):
    """Peak KV bytes per depth against the closed form: after the last scale the subnet's d blocks hold
    all L tokens; before the switch all D blocks hold the early tokens (here the later peak is larger).
    On a GPU each run's peak allocated memory too: a subnet frees caches, so it never needs more."""
    vae, var = tiny_var_models(patch_nums=(1, 2, 3, 4))
    deep = build_var({**var.arch, "depth": 6}).eval()
    save_var_model(tmp_path / "deep", vae, deep, CLASS_PROMPTS, 16)
    rc = main(["bench", "var", f"model={tmp_path / 'deep'}", "batch=2", "repeats=2", "depths=[4,2]",
               "switch_scale=2", "per_image_batches=[]", f"device={device}", f"run.out_dir={tmp_path}", "run.name=v"])
    assert rc == 0
    r = json.loads((tmp_path / "v" / "report.json").read_text())
    v, full = r["variant"], r["full"]
    if device == "cpu":
        assert r["device"] == f"cpu, {torch.get_num_threads()} threads" and full["gpu_peak_bytes"] is None
        assert all(x["gpu_peak_bytes"] is None for x in v["depths"].values())
    else:
        assert r["device"] == torch.cuda.get_device_name()
        assert 0 < v["depths"]["2"]["gpu_peak_bytes"] <= v["depths"]["4"]["gpu_peak_bytes"] <= full["gpu_peak_bytes"]
    assert v["switch_scale"] == 2 and v["depths"]["2"]["subnet"] == [0, 5]
    assert v["depths"]["4"]["subnet"] == [0, 1, 3, 5]
    assert v["depths"]["2"]["freed"] == {"2": [1, 2, 3, 4]}
    per_block_token = full["kv_peak_bytes"] / (6 * 30)  # 30 tokens over scales 1, 2, 3, 4
    for d in (4, 2):
        assert v["depths"][str(d)]["kv_peak_bytes"] == max(6 * 5, d * 30) * per_block_token
        assert abs(v["depths"][str(d)]["peak_vs_full"] - d / 6) < 1e-12
        assert v["depths"][str(d)]["images_per_s"] > 0
        # each round's own ratio, from the reported per-round seconds
        rounds = v["round_seconds"]
        assert len(rounds["full"]) == len(rounds[f"d{d}"]) == 2
        assert v["depths"][str(d)]["round_speed_vs_full"] == sorted(
            a / b for a, b in zip(rounds["full"], rounds[f"d{d}"]))
        assert abs(v["depths"][str(d)]["speed_vs_full"] - min(rounds["full"]) / min(rounds[f"d{d}"])) < 1e-12
    # the decode ceiling from the reported rates: full time / (full time - full time without decoding);
    # none when this tiny model's decode is lost in the timing noise
    t_img, t_tok = 1 / v["full_images_per_s"], 1 / v["full_token_maps_per_s"]
    out = capsys.readouterr().out
    assert "| 2 | [0, 5] |" in out
    rr = v["depths"]["2"]["round_speed_vs_full"]
    assert f"| {statistics.median(rr):.2f}x ({rr[0]:.2f}-{rr[-1]:.2f}) |" in out
    if v["speed_ceiling"] is None:
        assert t_img <= t_tok and v["decode_share"] == 0 and "no depth can pass" not in out
    else:
        assert abs(v["speed_ceiling"] - t_img / (t_img - t_tok)) < 1e-9 * v["speed_ceiling"]
        assert abs(v["decode_share"] - (t_img - t_tok) / t_img) < 1e-9
        assert f"would reach {v['speed_ceiling']:.2f}x the full network's images/s" in out
    for extra, needle in ((["switch_scale=1"], "switch_scale needs depths"),
                          (["depths=[6]"], "depths must be below the model's 6 blocks"),
                          (["depths=[7]"], "depth 7 must be an integer in 2..6"),
                          (["depths=[2]", "switch_scale=4"], "switch scale 4 must be an integer in 0..3"),
                          (["device=tpu"], "unknown device 'tpu'"),
                          (["device=cuda:7"], "device 'cuda:7' is not available")):
        assert main(["bench", "var", f"model={tmp_path / 'deep'}", *extra, f"run.out_dir={tmp_path}"]) == 2
        assert needle in capsys.readouterr().err


# ---------------------------------------------------------------- vgen bench world: speed is reported, verdicts decide


def _world(tmp_path, name, *extra):
    return main(["bench", "world", "n=24", "throughput_batch=24", "grid=0", f"run.out_dir={tmp_path}",
                 f"run.name={name}", *extra])


def test_bench_world_slow_machine_is_reported_but_exits_0(tmp_path, capsys, monkeypatch):
    import vgen.bench.world as world

    monkeypatch.setattr(world, "throughput", lambda *a, **k: 1469.0)  # a busy machine
    rc = _world(tmp_path, "slow", "min_throughput=2000")
    out = capsys.readouterr().out
    assert rc == 0
    r = json.loads((tmp_path / "slow" / "report.json").read_text())
    assert r["passed"] is True and r["failures"] == [] and r["throughput_below_target"] is True
    assert r["throughput_images_per_s"] == 1469.0 and r["min_throughput"] == 2000
    assert r["notes"] and r["notes"][0].startswith("throughput 1469 images/s < 2000")
    assert "Verifier throughput: 1469 images/s" in out and "throughput 1469 images/s < 2000" in out
    assert "Result: verdict targets met; note: throughput 1469" in out and "FAILED" not in out
    assert "throughput 1469 images/s < 2000" in (tmp_path / "slow" / "report.md").read_text()


def test_bench_world_wrong_verdict_still_exits_1(tmp_path, capsys, monkeypatch):
    import vgen.bench.world as world

    real = world.verify

    def wrong_first(images, prompts):  # the verifier rejects the first image of every batch
        verdicts = real(images, prompts)
        verdicts[0].checks = [(name, False) for name, _ in verdicts[0].checks]
        return verdicts

    monkeypatch.setattr(world, "verify", wrong_first)
    monkeypatch.setattr(world, "throughput", lambda *a, **k: 1e6)  # fast: only the verdict can fail
    rc = _world(tmp_path, "wrong")
    out = capsys.readouterr().out
    assert rc == 1
    r = json.loads((tmp_path / "wrong" / "report.json").read_text())
    assert r["passed"] is False and r["throughput_below_target"] is False and r["notes"] == []
    assert r["failures"] and all("acceptance" in f for f in r["failures"])
    assert "Result: FAILED: clean" in out


def test_bench_sar_reports_the_exposure_gap_and_the_step_cost(var_model_dir, tmp_path):
    """gt CE is teacher forcing's per-scale CE of the same held-out images; scale 0 has no context to
    expose (gap 0); own-context figures and both SAR step costs are reported, with the PNG."""
    from vgen.data import open_class_dataset
    from vgen.models.var.folder import load_var_model
    from vgen.vartrain.data import Data
    from vgen.vartrain.losses import tf_loss_from_tokens

    rc = main(["bench", "sar", f"model={var_model_dir}", "val_size=12", "batch=5", "time_batch=4", "repeats=1",
               f"run.out_dir={tmp_path}", "run.name=s"])
    assert rc == 0
    r = json.loads((tmp_path / "s" / "report.json").read_text())
    e = r["exposure"]
    assert e["own_argmax"]["ce_gap"][0] == 0 and e["own_sample"]["ce_gap"][0] == 0
    vae, var, _ = load_var_model(var_model_dir)
    tokens, labels = Data(vae, open_class_dataset("shapes", 16, 12, 1), cache=False).get(list(range(12)), "cpu")
    with torch.no_grad():
        ref = tf_loss_from_tokens(var.eval(), vae, tokens, labels).ce_per_scale
    assert torch.allclose(torch.tensor(e["gt"]["ce"], dtype=torch.float32), ref, atol=1e-5)
    assert r["cost"]["sar_last_vs_tf"] > 0 and r["cost"]["sar_all_vs_tf"] > 0
    assert (tmp_path / "s" / "gap.png").stat().st_size > 1000
