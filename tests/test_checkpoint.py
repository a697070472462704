"""Checkpoints: atomic writes, LoRA and full kinds, reading a run back as a model."""

import pytest
import torch
import yaml
from conftest import transformer_forward as _forward

from vgen.errors import UserError
from vgen.models.load import load, load_policy
from vgen.train import checkpoint as ck


def _lora_transformer(model_dir, seed=0):
    from peft import LoraConfig


    tr = load_policy(model_dir).transformer
    tr.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained-looking adapter: B is zero at init
    return tr




def _make_run(tmp_path, model_dir, tr, step=3):
    run = tmp_path / "run"
    run.mkdir()
    config = {"recipe": "solrl", "model": str(model_dir), "lr": 1e-4, "run": {"name": "run"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    ck.save_checkpoint(run, step, tr, {"step": step, "rng": torch.get_rng_state()}, config, str(model_dir))
    return run, config


def test_lora_checkpoint_round_trips_into_a_fresh_base(tmp_path, model_dir):
    tr = _lora_transformer(model_dir)
    run, config = _make_run(tmp_path, model_dir, tr)
    ckpt = ck.latest_checkpoint(run)
    meta = ck.read_meta(ckpt)
    assert ckpt.name == "step-000003" and meta["kind"] == "lora" and meta["config_hash"] == ck.config_hash(config)
    assert not list((run / "checkpoints").glob(".*"))  # no temporary folder left
    loaded = load(run)
    assert loaded.source == "run" and loaded.meta["step"] == 3
    assert torch.equal(_forward(loaded.policy.transformer), _forward(tr))
    assert ck.load_state(ckpt)["step"] == 3 and ck.load_state(ckpt)["rng"].dtype == torch.uint8


def test_full_checkpoint_round_trips(tmp_path, model_dir):

    tr = load_policy(model_dir).transformer
    with torch.no_grad():
        tr.proj_out.weight.add_(0.5)
    run, _ = _make_run(tmp_path, model_dir, tr)
    assert ck.read_meta(ck.latest_checkpoint(run))["kind"] == "full"
    assert torch.equal(_forward(load_policy(run).transformer), _forward(tr))


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, model_dir, monkeypatch):
    tr = _lora_transformer(model_dir)
    run, config = _make_run(tmp_path, model_dir, tr, step=1)

    def boom(*a, **k):
        raise KeyboardInterrupt  # the process interrupted mid-write

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(run, 2, tr, {"step": 2}, config, str(model_dir))
    assert ck.latest_checkpoint(run).name == "step-000001"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000001"]


def test_bad_runs_and_checkpoints_are_one_line_errors(tmp_path, model_dir):
    tr = _lora_transformer(model_dir)
    run, _ = _make_run(tmp_path, model_dir, tr)
    (ck.latest_checkpoint(run) / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt state.pt"):
        ck.load_state(ck.latest_checkpoint(run))
    (run / "checkpoints" / "latest").write_text("step-000009\n")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        load(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="neither a model folder"):
        load(empty)
    (empty / "config.yaml").write_text("recipe: solrl\nmodel: x\n")
    with pytest.raises(UserError, match="no checkpoint yet"):
        load(empty)
