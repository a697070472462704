"""`vgen export`: each format loads back with plain diffusers / peft / vgen and reproduces the run; the card
states only what the run records; bad input is one line; a failed export leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml
from conftest import transformer_forward as _forward
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors import safe_open

from vgen import __version__
from vgen.cli import main
from vgen.engine import rollout
from vgen.errors import UserError
from vgen.export import export
from vgen.export import exporter as X
from vgen.models.load import load, load_policy
from vgen.train import checkpoint as ck

PROMPTS = ["a photo of a red circle", "a photo of two squares"]
SEEDS = [0, 1]
FAST = {"sample_steps": 2, "sample_size": 32}  # the sample grid at export: tiny and quick
# the layout vgen/eval/harness.py writes (summaries with mean and ci95), plus a plain number and junk
REPORT = {"split": "val", "step": 3, "n_prompts": 12, "seeds": [0, 1], "steps": 2, "guidance": 3.0, "resolution": 32,
          "geneval_shapes": {
              "overall": {"strict": {"mean": 0.42, "ci95": [0.3, 0.55], "per_seed": [0.4, 0.44], "per_seed_std": 0.02},
                          "score": {"mean": 0.61, "ci95": [0.5, 0.7]}},
              "per_category": {"counting": {"strict": {"mean": 0.25}, "score": {"mean": 0.5}}, "colors": 0.75}},
          "fid_shapes": {"fid_shapes": 12.5, "kid_shapes_mean": 0.01, "kid_shapes_std": 0.002, "n_real": 500,
                         "n_fake": 24},
          "rewards": {"verifier": {"mean": 0.6, "ci95": [0.5, 0.7], "per_seed": [0.6, 0.6]}, "broken": "?"},
          "seconds": {"generate": 1.0}}
EXPECTED = {"GenEval-Shapes strict accuracy": 0.42, "GenEval-Shapes score": 0.61,
            "GenEval-Shapes strict accuracy (counting)": 0.25, "GenEval-Shapes score (counting)": 0.5,
            "GenEval-Shapes colors": 0.75, "FID-shapes": 12.5, "KID-shapes mean": 0.01, "KID-shapes std": 0.002,
            "reward verifier (mean)": 0.6}


def _images(policy) -> torch.Tensor:
    return rollout(policy, [p for p in PROMPTS for _ in SEEDS], SEEDS * len(PROMPTS), steps=2, guidance=3.0,
                   height=32, width=32).images




def _base_transformer(model_dir):
    from vgen.models.load import load_policy

    return load_policy(model_dir).transformer  # the same attention processors as load_model's


def _pipeline(folder):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _make_run(root, model_dir, transformer, name="run"):
    run = root / name
    run.mkdir()
    config = {"recipe": "solrl", "model": str(model_dir), "lr": 1e-4, "lora": {"rank": 2}, "run": {"name": name}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ck.save_checkpoint(run, 3, transformer, {"step": 3}, config, str(model_dir))
    return run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, model_dir):
    """A LoRA run: alpha 4 over rank 2 (scale 2), so a loader that guessed alpha from shapes would be caught."""
    from peft import LoraConfig

    tr = _base_transformer(model_dir)
    torch.manual_seed(0)
    tr.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained-looking adapter: B is zero at init
    return _make_run(tmp_path_factory.mktemp("runs"), model_dir, tr)


@pytest.fixture(scope="module")
def evaluated_run(lora_run, tmp_path_factory):
    """The same run with an evaluation report and a sample sheet of its own."""
    from PIL import Image

    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(lora_run, run)
    (run / "eval" / "step-000003").mkdir(parents=True)
    (run / "eval" / "step-000003" / "report.json").write_text(json.dumps(REPORT))
    (run / "samples").mkdir()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(run / "samples" / "step-000003.png")
    return run


@pytest.fixture(scope="module")
def run_images(lora_run):
    return _images(load_policy(lora_run))


def _stamped(out, config_hash) -> int:
    """Every safetensors file under ``out`` carries vgen's metadata; returns how many there are."""
    files = sorted(out.rglob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as h:
            meta = h.metadata()
        assert meta["vgen_version"] == __version__ and meta["config_hash"] == config_hash, f
        assert meta["format"] == "pt", f
    return len(files)


def _card(out) -> tuple[dict, str]:
    card = ModelCard.load(out / "README.md")
    return card.data.to_dict(), card.text


# ---------------------------------------------------------------- formats round-trip


def test_diffusers_export_with_separate_lora_reproduces_the_run(lora_run, run_images, tmp_path, model_dir):
    from vgen.models.sd3 import SD3Policy

    out = tmp_path / "out"
    result = export(lora_run, out, **FAST)
    assert result == {"out": out, "card": out / "README.md", "format": "diffusers", "kind": "lora", "merged": False,
                      "before_after": None}  # a base outside the shapes world: no before / after grid
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "samples.png").is_file()
    assert not list(tmp_path.glob(".out*"))  # no temporary folder left beside it
    pipe = _pipeline(out)
    policy = SD3Policy(pipe)
    assert not torch.allclose(_images(policy), run_images, atol=1e-3)  # the base alone: the LoRA matters
    pipe.load_lora_weights(out)
    assert torch.allclose(_images(policy), run_images, atol=1e-6, rtol=0)
    meta = ck.read_meta(ck.latest_checkpoint(lora_run))
    assert _stamped(out, meta["config_hash"]) == 6  # five components and the LoRA
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as h:
        assert json.loads(h.metadata()["lora_adapter_metadata"])["transformer.lora_alpha"] == 4
    data, text = _card(out)
    assert data["library_name"] == "diffusers" and data["base_model"] == model_dir.name
    assert data["license"] == "apache-2.0" and data["datasets"] == ["vgen-shapes-world"]
    assert {"vgen", "solrl", "text-to-image", "lora"} <= set(data["tags"])
    assert "model-index" not in data and "not evaluated yet" in text.lower()
    assert "![samples](samples.png)" in text and "made at export" in text  # no run samples: a fresh grid
    assert f'pipe.load_lora_weights("{out.name}")' in text and "| lr | `0.0001` |" in text


def test_diffusers_export_with_merged_lora_reproduces_the_run(lora_run, run_images, tmp_path):
    from vgen.models.sd3 import SD3Policy

    out = tmp_path / "merged"
    assert export(lora_run, out, merge_lora=True, **FAST)["merged"] is True
    assert not list(out.glob("*lora*")) and not list(out.rglob("adapter_*"))
    with safe_open(str(next((out / "transformer").glob("*.safetensors"))), "pt") as h:
        assert not [k for k in h.keys() if "lora" in k or "base_layer" in k]
    assert torch.allclose(_images(SD3Policy(_pipeline(out))), run_images, atol=1e-5, rtol=0)
    data, text = _card(out)
    assert "load_lora_weights" not in text and "lora" in data["tags"]


def test_peft_export_loads_with_peft_and_diffusers(lora_run, tmp_path, model_dir):
    from peft import PeftModel

    out = tmp_path / "adapter"
    export(lora_run, out, fmt="peft", **FAST)
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                "pytorch_lora_weights.safetensors", "samples.png"}
    expected = _forward(load_policy(lora_run).transformer)
    assert not torch.equal(_forward(_base_transformer(model_dir)), expected)
    tr = _base_transformer(model_dir)
    PeftModel.from_pretrained(tr, out)  # injects the adapter into tr in place
    assert torch.allclose(_forward(tr), expected, atol=1e-6, rtol=0)
    tr = _base_transformer(model_dir)
    tr.load_lora_adapter(out, weight_name="pytorch_lora_weights.safetensors")  # its rank and alpha from metadata
    assert torch.allclose(_forward(tr), expected, atol=1e-6, rtol=0)
    pipe = _pipeline(model_dir)
    pipe.load_lora_weights(out)
    assert torch.allclose(_forward(pipe.transformer), expected, atol=1e-5, rtol=0)  # stock attention processors
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4 and cfg["base_model_name_or_path"] == model_dir.name
    assert _stamped(out, ck.read_meta(ck.latest_checkpoint(lora_run))["config_hash"]) == 2
    data, text = _card(out)
    assert data["library_name"] == "peft" and "PeftModel.from_pretrained" in text


def test_vgen_export_is_a_run_load_model_reads(evaluated_run, tmp_path, model_dir):
    out = tmp_path / "vgen"
    export(evaluated_run, out, fmt="vgen")
    loaded = load(out)
    assert loaded.source == "run" and loaded.meta["step"] == 3 and loaded.eval == REPORT
    assert torch.equal(_forward(loaded.policy.transformer), _forward(load_policy(evaluated_run).transformer))
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(model_dir.resolve())
    assert not list(out.rglob("state.pt"))
    assert _stamped(out, ck.config_hash(yaml.safe_load((evaluated_run / "config.yaml").read_text()))) == 1


def test_full_finetune_exports_the_trained_transformer(tmp_path, model_dir):
    tr = _base_transformer(model_dir)
    with torch.no_grad():
        tr.proj_out.weight.add_(0.5)
    run = _make_run(tmp_path, model_dir, tr)
    out = tmp_path / "full"
    assert export(run, out, **FAST)["kind"] == "full"
    exported = _base_transformer(out)
    assert torch.equal(_forward(exported), _forward(load_policy(run).transformer))
    with pytest.raises(UserError, match="full fine-tune run: it has no LoRA adapter"):
        export(run, tmp_path / "x", fmt="peft")
    assert "lora" not in _card(out)[0]["tags"]


def test_model_folder_exports_itself_with_its_card_license_and_dtypes(tmp_path, model_dir):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    src = tmp_path / "base"
    shutil.copytree(model_dir, src)
    (src / "README.md").write_text("---\nlicense: mit\nbase_model: org/parent\n---\n# base\n")
    SD3Transformer2DModel.from_pretrained(src / "transformer").to(torch.bfloat16).save_pretrained(src / "transformer")
    out = tmp_path / "out"
    export(src, out, **FAST)
    (a,), (b,) = (sorted((d / "transformer").glob("*.safetensors")) for d in (src, out))
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys() and all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    digest = hashlib.sha256((src / "model_index.json").read_bytes() + b"none").hexdigest()[:16]
    assert _stamped(out, digest) == 5  # transformer, vae, three text encoders
    data, text = _card(out)
    assert data["license"] == "mit" and data["base_model"] == "org/parent" and "lora" not in data["tags"]
    assert "not evaluated yet" in text.lower() and "model-index" not in data
    for fmt in ("peft", "vgen"):
        with pytest.raises(UserError, match="model folder"):
            export(src, tmp_path / fmt, fmt=fmt)


# ---------------------------------------------------------------- the card


def test_run_on_a_shapes_world_base_exports_a_before_after_grid_of_the_same_prompts_and_seeds(
        lora_run, model_dir, tmp_path, capsys):
    """The grid's base tiles are what the base draws, its trained tiles what the run draws, for the same held-out
    prompt and seed, each generated here independently; the card states both verdict counts."""
    import numpy as np
    from PIL import Image

    from vgen.images import to_uint8
    from vgen.models.load import pipeline_defaults
    from vgen.world.grammar import sample_prompts
    from vgen.world.verifier import verify

    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    (base / "vgen_base.json").write_text(json.dumps({"cfg": 3.0, "resolution": 32}))
    run = tmp_path / "runs" / "run"
    shutil.copytree(lora_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = str(base)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    meta = json.loads((run / "checkpoints" / "step-000003" / "meta.json").read_text())
    meta["base_model"] = str(base)
    (run / "checkpoints" / "step-000003" / "meta.json").write_text(json.dumps(meta))

    out = tmp_path / "out"
    result = export(run, out, **FAST)
    assert result["before_after"] == out / "before_after.png"
    sheet = np.asarray(Image.open(out / "before_after.png").convert("RGB"))
    prompts = list(dict.fromkeys(sample_prompts("test", 64, seed=0)))[:X.BEFORE_AFTER_PROMPTS]
    pairs = [(p, sd) for p in prompts for sd in X.BEFORE_AFTER_SEEDS]
    guidance = pipeline_defaults(base).get("guidance", 4.5)  # the exporter's default when the base names none

    def draw(policy):
        return to_uint8(rollout(policy, [p for p, _ in pairs], [sd for _, sd in pairs], steps=2, guidance=guidance,
                                height=32, width=32).images)

    before, after = draw(load_policy(base)), draw(load_policy(run))
    assert not np.array_equal(before, after)  # the adapter changes the images, so the test can tell them apart

    def tile(y: int) -> np.ndarray:  # column 0 of the grid: 2x nearest upscale from x = 2, read back at 1x
        return sheet[y:y + 64:2, 2:2 + 64:2]

    assert np.array_equal(tile(2 + 4), before[0])  # row 0: the base, below its verdict bar
    below = [y for y in range(70, sheet.shape[0] - 64) if np.array_equal(tile(y), after[0])]
    above_next_base = [y for y in range(70, sheet.shape[0] - 64) if np.array_equal(tile(y), before[6])]
    assert below and above_next_base and below[0] < above_next_base[0]  # row 1: the same prompt and seed, trained
    n_before = sum(v.strict for v in verify(before, [p for p, _ in pairs]))
    n_after = sum(v.strict for v in verify(after, [p for p, _ in pairs]))
    _, text = _card(out)
    assert "## Before and after training" in text and "![before and after](before_after.png)" in text
    assert f"base {n_before}/{len(pairs)} correct, trained {n_after}/{len(pairs)}" in text
    rc, stdout, err = _cli(capsys, "export", run, tmp_path / "o2")  # the command names the grid last
    assert rc == 0, err
    assert stdout.splitlines()[-1] == ("before / after training (same held-out prompts and seeds): "
                                       f"{tmp_path / 'o2' / 'before_after.png'}")


def test_card_reports_the_runs_evaluation_and_round_trips(evaluated_run, tmp_path):
    out = tmp_path / "card"
    export(evaluated_run, out, fmt="peft")
    data, text = _card(out)
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "card"
    assert {r.metric_name: r.metric_value for r in results} == EXPECTED
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {
        ("text-to-image", "vgen-shapes-world", "val")}
    assert "not evaluated yet" not in text.lower() and "eval/step-000003/report.json" in text
    assert "| GenEval-Shapes strict accuracy | 0.42 [0.3, 0.55] |" in text and "| FID-shapes | 12.5 |" in text
    assert "Protocol: 12 prompts, 2 seeds each, the val split, 2 steps, CFG 3.0, 32px." in text
    assert (out / "samples.png").read_bytes() == (evaluated_run / "samples" / "step-000003.png").read_bytes()


# ---------------------------------------------------------------- bad input and failures


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _user_error(capsys, *argv) -> str:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("vgen: error: "), (rc, out, err)
    return err


def test_bad_sources_are_one_line_errors(capsys, tmp_path, lora_run):
    assert "not a folder" in _user_error(capsys, "export", tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    assert "neither a model folder" in _user_error(capsys, "export", tmp_path / "empty", tmp_path / "o")
    (tmp_path / "empty" / "config.yaml").write_text("recipe: solrl\nmodel: x\n")
    assert "no checkpoint yet" in _user_error(capsys, "export", tmp_path / "empty", tmp_path / "o")
    broken = tmp_path / "broken"
    shutil.copytree(lora_run, broken)
    (ck.latest_checkpoint(broken) / "meta.json").write_text("{")
    assert "cannot read checkpoint" in _user_error(capsys, "export", broken, tmp_path / "o")
    (ck.latest_checkpoint(broken) / "meta.json").write_text('{"kind": "mystery"}')
    assert "corrupt meta.json" in _user_error(capsys, "export", broken, tmp_path / "o")
    assert "invalid choice: 'onnx'" in _user_error(capsys, "export", lora_run, tmp_path / "o", "--format", "onnx")
    assert "--merge-lora applies to --format diffusers" in _user_error(
        capsys, "export", lora_run, tmp_path / "o", "--format", "vgen", "--merge-lora")
    assert "holds the source" in _user_error(capsys, "export", lora_run, lora_run.parent, "--force")
    (tmp_path / "file").write_text("x")
    assert "cannot write beside" in _user_error(capsys, "export", lora_run, tmp_path / "file" / "o")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


def test_existing_output_needs_force_and_is_replaced_whole(capsys, tmp_path, evaluated_run):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "not empty; use --force" in _user_error(capsys, "export", evaluated_run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    rc, stdout, err = _cli(capsys, "export", evaluated_run, out, "--format", "peft", "--force")
    assert rc == 0, err
    assert stdout.splitlines() == [f"exported {evaluated_run} to {out} (format peft)",
                                   f"model card: {out / 'README.md'}"]
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing hidden left beside it


def test_a_failure_mid_export_leaves_nothing_behind(tmp_path, evaluated_run, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(X, "stamp_safetensors", boom)  # after every weight file is written
    with pytest.raises(RuntimeError, match="disk full"):
        export(evaluated_run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        export(evaluated_run, tmp_path / "out", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "old.txt").read_text() == "old"


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "no_config"])
def test_a_damaged_lora_checkpoint_is_one_line_in_eval_and_export(lora_run, tmp_path, capsys, damage):
    """The latest checkpoint's adapter truncated, zero bytes, random bytes, or its adapter_config.json
    gone (peft would then look on the hub): `vgen eval` and every `vgen export` format stop in one
    line and write nothing."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    weights = ckpt / "adapter_model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:300])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "random":
        weights.write_bytes(bytes(range(256)) * 16)
    else:
        (ckpt / "adapter_config.json").unlink()
    exports = [["export", str(run), str(tmp_path / f"x-{f}"), "--format", f] for f in ("diffusers", "peft", "vgen")]
    for argv in (["eval", "--model", str(run), "--n", "2", "--metrics", "geneval", "--out", str(tmp_path / "e")],
                 *exports):
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "checkpoint" in err, err
    assert not [p for p in tmp_path.iterdir() if p.name != "run"]
