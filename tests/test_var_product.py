"""VAR models as products: the one loader, `vgen eval` / `vgen export` / `vgen sample` on VAR folders
and runs, image-folder training with exact resume, and the shared loop rules."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import user_error
from test_solrl import _metrics
from test_var_train import VOLATILE, _args, _train, kill_after_first_checkpoint

from vgen.cli import main
from vgen.engine.scalewise import sample
from vgen.errors import UserError
from vgen.models.load import load
from vgen.train.loop import due


@pytest.fixture(scope="module")
def var_run(tmp_path_factory, var_tokenizer_dir):
    """A 4-step var run of the tiny config: checkpoints at 2 and 4, evaluation reports at 2 and 4."""
    root = tmp_path_factory.mktemp("varrun")
    assert _train(root, var_tokenizer_dir, "r") == 0
    return root / "r"


# ---------------------------------------------------------------- the loader


def test_load_tells_every_kind_apart(model_dir, var_model_dir, var_tokenizer_dir, var_run):
    pipe = load(model_dir, weights=False)
    assert (pipe.kind, pipe.source, pipe.policy) == ("pipeline", "model", None)
    assert load(model_dir).policy is not None
    v = load(var_model_dir)
    assert (v.kind, v.source) == ("var", "model") and v.var is not None and len(v.classes) == v.var.num_classes
    assert set(v.sampling) >= {"cfg", "top_k", "top_p"} and v.resolution == 16
    t = load(var_tokenizer_dir)
    assert t.kind == "var" and t.var is None and t.vqvae is not None
    r = load(var_run)
    assert (r.kind, r.source, r.step, r.checkpoint.name) == ("var", "run", 4, "step-000004")
    assert r.eval is not None and r.eval["step"] == 4 and r.config["recipe"] == "var"
    two = load(var_run, checkpoint=2)
    assert two.step == 2 and two.checkpoint.name == "step-000002"
    direct = load(var_run / "checkpoints" / "step-000002")
    assert direct.source == "run" and direct.step == 2
    for a, b in zip(two.var.state_dict().values(), direct.var.state_dict().values()):
        assert torch.equal(a, b)
    # the run's final checkpoint is the model the run saved
    final = load(var_run / "model")
    for k, x in final.var.state_dict().items():
        assert torch.equal(x, r.var.state_dict()[k])


def test_load_errors_are_one_line(tmp_path, var_run):
    (tmp_path / "f.txt").write_text("x")
    cases = [(tmp_path / "nope", "model folder not found"), (tmp_path / "f.txt", "is a file"),
             (tmp_path, "neither a model folder"), ("a.pth,b.pth", "official checkpoint not found")]
    for spec, needle in cases:
        with pytest.raises(UserError, match=needle) as e:
            load(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no complete checkpoint 'step-000003'.*step-000002, step-000004"):
        load(var_run, checkpoint=3)
    official = tmp_path / "official"
    official.mkdir()
    for name in ("vae_ch160v4096z32.pth", "var_d16.pth", "var_d20.pth"):
        (official / name).write_bytes(b"")
    with pytest.raises(UserError, match="2 var_d"):
        load(official)


# ---------------------------------------------------------------- vgen eval on VAR


def test_vgen_eval_on_a_var_folder_and_a_run(var_model_dir, var_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(var_model_dir), "--classes", "0-5", "--seeds", "0-2", "--cfg", "1.0",
                 "--top-k", "5", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["kind"] == "var" and r["classes"] == list(range(6)) and r["seeds"] == [0, 1, 2]
    assert (r["cfg"], r["top_k"], r["top_p"]) == (1.0, 5, 0.0)
    g = r["geneval_shapes"]
    assert g["n_images"] == 18 and g["n_seeds"] == 3 and len(g["overall"]["strict"]["per_seed"]) == 3
    assert r["fid_shapes"]["n_fake"] == r["fid_shapes"]["n_real"] == 18
    assert "6 classes x 3 seeds" in (out / "report.md").read_text()
    # the evaluation's images are `vgen sample`'s: class c, seed s -> the sampler's seed s
    m = load(var_model_dir)
    s = sample(m.var, m.vqvae, [4], [2], cfg=1.0, top_k=5)
    strict = np.array(g["overall"]["strict"]["mean"])
    assert 0 <= strict <= 1 and s.images.shape[-1] == 16
    # a run: the report lands in RUN/eval/step-N
    assert main(["eval", "--model", str(var_run), "--classes", "0", "1", "--seeds", "0", "--metrics",
                 "geneval", "--checkpoint", "2", "--force", "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2" / "report.json").read_text())["step"] == 2


def test_vgen_eval_full_depth_is_no_plan(var_model_dir, tmp_path):
    """--depth D (the model's two blocks) is the full network: no depth plan (tests/test_variant.py has the rest)."""
    out = tmp_path / "plan"
    assert main(["eval", "--model", str(var_model_dir), "--classes", "0-3", "--seeds", "0", "--metrics", "geneval",
                 "--switch-scale", "1", "--depth", "2", "--out", str(out)]) == 0
    assert "depth_plan" not in json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "3"], "--steps applies to diffusers pipelines"),
    (["--switch-scale", "1"], "a switch scale needs a depth below"),
    (["--depth", "1"], "depth 1 must be an integer in 2.."),
    (["--depth", "99"], "depth 99 must be an integer in 2.."),
    (["--depth", "2", "--switch-scale", "99"], "switch scale 99 must be an integer in 0.."),
    (["--patch-nums", "1,2,3,4"], "only a FlexVAR model"),
    (["--patch-nums", "2,1"], "increasing positive sizes"),
    (["--classes", "999"], "class 999 is out of range"),
    (["--ref-stats", "missing.npz", "--inception-weights", "missing.pth"], "file not found"),
])
def test_vgen_eval_var_errors_are_one_line(var_model_dir, tmp_path, capsys, extra, needle):
    msg = user_error(capsys, "eval", "--model", str(var_model_dir), "--seeds", "0", "--out", str(tmp_path / "o"),
                     *extra)
    assert needle in msg, msg


@pytest.mark.slow
def test_vgen_eval_ref_stats_fid(var_model_dir, tmp_path, capsys):
    """--ref-stats: FID and IS of the generated classes against an ADM-style .npz (Inception mu /
    sigma) with local Inception weights; a corrupt .npz is a one-line error."""
    from test_fid import random_inception_weights

    weights = tmp_path / "inception.pth"
    random_inception_weights(weights, fc_scale=100.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 8))
    np.savez(tmp_path / "ref.npz", mu=rng.normal(size=2048) * 1e-3, sigma=a @ a.T * 1e-6)
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(var_model_dir), "--classes", "0-4", "--seeds", "0-3", "--metrics", "geneval",
                 "--ref-stats", str(tmp_path / "ref.npz"), "--inception-weights", str(weights),
                 "--out", str(out)]) == 0
    f = json.loads((out / "report.json").read_text())["fid_ref_stats"]
    assert f["n"] == 20 and np.isfinite(f["fid"]) and f["fid"] > 0 and f["feature_dim"] == 2048
    assert "FID against reference statistics" in (out / "report.md").read_text()
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    capsys.readouterr()
    msg = user_error(capsys, "eval", "--model", str(var_model_dir), "--classes", "0", "--seeds", "0", "--metrics",
                     "geneval", "--ref-stats", str(tmp_path / "bad.npz"), "--inception-weights", str(weights),
                     "--out", str(tmp_path / "o2"))
    assert "bad.npz" in msg


# ---------------------------------------------------------------- vgen export on VAR


def test_exported_var_folder_samples_bit_identically(var_model_dir, var_run, tmp_path):
    from safetensors import safe_open

    for src in (var_model_dir, var_run):
        out = tmp_path / f"x-{src.name}"
        assert main(["export", str(src), str(out)]) == 0
        a, b = load(src), load(out)
        sa = sample(a.var, a.vqvae, [0, 3, 5], [0, 1, 2], **{k: a.sampling[k] for k in ("cfg", "top_k", "top_p")})
        sb = sample(b.var, b.vqvae, [0, 3, 5], [0, 1, 2], **{k: b.sampling[k] for k in ("cfg", "top_k", "top_p")})
        assert all(torch.equal(x, y) for x, y in zip(sa.tokens, sb.tokens)) and torch.equal(sa.images, sb.images)
        assert a.classes == b.classes and a.sampling == b.sampling
        with safe_open(str(out / "var.safetensors"), "pt") as f:
            assert f.metadata()["vgen_version"] and f.metadata()["config_hash"]
        card = (out / "README.md").read_text()
        assert (out / "samples.png").is_file() and "vgen sample --model" in card
    # the run's card states its newest evaluation (GenEval-Shapes of step 4)
    card = (tmp_path / "x-r" / "README.md").read_text()
    assert "eval/step-000004/report.json" in card and "GenEval-Shapes strict accuracy" in card


def test_export_of_a_var_folder_takes_a_given_evaluation(var_model_dir, tmp_path):
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(var_model_dir), "--classes", "0-3", "--seeds", "0", "--metrics", "geneval",
                 "--out", str(ev)]) == 0
    out = tmp_path / "x"
    assert main(["export", str(var_model_dir), str(out), "--eval", str(ev)]) == 0
    assert "GenEval-Shapes strict accuracy" in (out / "README.md").read_text()


# ---------------------------------------------------------------- image folders


def _image_folder(root, classes=("cat", "dog"), per_class=6, size=20):
    """Small coloured scenes: class c is a disc of colour c on a grey ground, at random places."""
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((size + 4 * i % 9, size, 3), 128, np.uint8)
            y, x = rng.integers(4, size - 4, 2)
            yy, xx = np.mgrid[:img.shape[0], :size]
            img[(yy - y) ** 2 + (xx - x) ** 2 < 16] = colours[c]
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_var_trains_on_an_image_folder_and_resumes_exactly_after_sigkill(tmp_path, var_tokenizer_dir, capsys):
    data = _image_folder(tmp_path / "data")
    common = [f"data={data}", "flip=true", "iterations=8", "checkpoint_every=2", "eval_every=4", "sample_every=0",
              "sample_classes=[0, 1]", "batch=4"]
    assert _train(tmp_path, var_tokenizer_dir, "ref", *common) == 0
    m = load(tmp_path / "ref" / "model")
    assert m.classes == ["cat", "dog"] and m.var.num_classes == 2
    r = json.loads((tmp_path / "ref" / "eval" / "step-000008" / "report.json").read_text())
    assert r["classes"] == [0, 1] and "geneval_shapes" not in r and r["held_out"]["val_loss"] > 0
    kill_after_first_checkpoint(_args(tmp_path, var_tokenizer_dir, "k", *common), tmp_path / "k")
    capsys.readouterr()
    assert _train(tmp_path, var_tokenizer_dir, "k", *common) == 0
    assert "resuming" in capsys.readouterr().out
    assert _metrics(tmp_path / "k", VOLATILE) == _metrics(tmp_path / "ref", VOLATILE)


def test_image_folder_errors_are_one_line(tmp_path, var_tokenizer_dir, capsys):
    data = _image_folder(tmp_path / "data")
    (data / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    msg = user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "b", f"data={data}", "cache_tokens=true"))
    assert "broken.png" in msg
    assert _train(tmp_path, var_tokenizer_dir, "s", f"data={data}", "skip_bad_images=true", "iterations=1",
                  "eval_every=0", "sample_every=0", "sample_classes=[0]") == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    msg = user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "n", f"data={tmp_path / 'none'}"))
    assert "none" in msg


# ---------------------------------------------------------------- shared loop rules


def test_every_n_rule():
    assert [s for s in range(1, 11) if due(3, s, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if due(0, s, 10)] == [10]
    assert [s for s in range(1, 5) if due(1, s, 4)] == [1, 2, 3, 4]


@pytest.mark.parametrize("value, ok", [("auto", True), ("never", True), ("bogus", False), ("Auto", False),
                                       ("", False)])
def test_resume_is_a_fixed_choice(tmp_path, var_tokenizer_dir, capsys, value, ok):
    args = _args(tmp_path, var_tokenizer_dir, "x", f"resume={value}", "iterations=1", "eval_every=0",
                 "sample_every=0", "save_model=false")
    if ok:
        assert main(["train", *args]) == 0
    else:
        assert "resume=" in user_error(capsys, "train", *args)


def test_resume_from_a_checkpoint_path(tmp_path, var_tokenizer_dir, var_run, capsys):
    """resume=PATH starts a new run from another run's checkpoint: the same config continues as that
    run did; another config is refused."""
    common = ["iterations=6", "eval_every=0", "sample_every=0", "checkpoint_every=2", "save_model=false"]
    assert _train(tmp_path, var_tokenizer_dir, "a", *common) == 0
    assert _train(tmp_path, var_tokenizer_dir, "b", *common,
                  f"resume={tmp_path / 'a' / 'checkpoints' / 'step-000002'}") == 0
    a, b = _metrics(tmp_path / "a", VOLATILE), _metrics(tmp_path / "b", VOLATILE)
    assert sorted(b) == [3, 4, 5, 6] and all(a[s] == b[s] for s in b)
    msg = user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "c", *common, "lr=0.5",
                                             f"resume={tmp_path / 'a'}"))
    assert "another config" in msg


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, var_tokenizer_dir, capsys):
    """What a kill during an append (or a full disk) leaves: a half line at the end of metrics.jsonl.
    The resumed run drops it with a note and ends with the metrics of an uninterrupted run."""
    common = ["eval_every=0", "sample_every=0", "checkpoint_every=2", "save_model=false"]
    assert _train(tmp_path, var_tokenizer_dir, "ref", "iterations=4", *common) == 0
    assert _train(tmp_path, var_tokenizer_dir, "k", "iterations=4", *common) == 0
    run = tmp_path / "k"  # as if killed after step 2's checkpoint, in the middle of step 3's line
    shutil.rmtree(run / "checkpoints" / "step-000004")
    (run / "checkpoints" / "latest").write_text("step-000002\n")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    capsys.readouterr()
    assert _train(tmp_path, var_tokenizer_dir, "k", "iterations=4", *common) == 0
    assert "dropped 1 unreadable line" in capsys.readouterr().out
    assert _metrics(tmp_path / "k", VOLATILE) == _metrics(tmp_path / "ref", VOLATILE)


@pytest.mark.parametrize("damage, needle", [
    (lambda c: c.update(class_prompts=list(range(70))), "'class_prompts' must be a list of non-empty strings"),
    (lambda c: c.update(sampling=[1, 2]), "'sampling' must be a mapping"),
    (lambda c: c.update(sampling={"cfg": -1}), "sampling cfg=-1"),
    (lambda c: c.update(sampling={"top_k": 1.5}), "sampling top_k=1.5"),
    (lambda c: c.update(sampling={"temperature": 1}), "unknown key 'temperature'"),
    (lambda c: c.update(resolution=-64), "'resolution' must be a positive number"),
    (lambda c: c.update(patch_nums=[2, 1]), "'patch_nums' must be increasing"),
    ("truncate", "cannot read checkpoint"),
    ("empty", "cannot read checkpoint"),
])
def test_a_damaged_var_folder_is_one_line(var_model_dir, tmp_path, capsys, damage, needle):
    folder = tmp_path / "m"
    shutil.copytree(var_model_dir, folder)
    if damage == "truncate":
        (folder / "var.safetensors").write_bytes((folder / "var.safetensors").read_bytes()[:1000])
    elif damage == "empty":
        (folder / "var.safetensors").write_bytes(b"")
    else:
        c = json.loads((folder / "config.json").read_text())
        damage(c)
        (folder / "config.json").write_text(json.dumps(c))
    for argv in (["sample", "--model", str(folder), "--classes", "0", "--out", str(tmp_path / "o")],
                 ["eval", "--model", str(folder), "--classes", "0", "1", "--out", str(tmp_path / "e")],
                 ["export", str(folder), str(tmp_path / "x")]):
        assert needle in user_error(capsys, *argv)
        assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", [["--cfg", "nan"], ["--cfg", "inf"], ["--cfg", "-1"], ["--top-p", "1.5"],
                                  ["--top-k", "-2"]])
def test_bad_var_sampling_flags_are_one_line(var_model_dir, tmp_path, capsys, flag):
    for cmd in ("sample", "eval"):
        msg = user_error(capsys, cmd, "--model", str(var_model_dir), "--classes", "0", "--out", str(tmp_path / "o"),
                         *flag)
        assert (flag[0] in msg or flag[0].lstrip("-").replace("-", "_") in msg) and not (tmp_path / "o").exists()


def test_bad_output_paths_are_found_before_any_work(var_model_dir, tmp_path, capsys):
    """--out (and export's OUT) that is a file, lies under a file, sits in /proc or has a name longer
    than the file system allows: one line, before the model loads."""
    (tmp_path / "file").write_text("x")
    long = tmp_path / ("x" * 300)
    for out, needle in ((tmp_path / "file", "exists and is not a folder"), (tmp_path / "file" / "sub", "is a file"),
                        (Path("/proc/vgen-out"), "cannot write"), (long, "too long")):
        for argv in (["sample", "--model", str(var_model_dir), "--classes", "0", "--out", str(out)],
                     ["eval", "--model", str(var_model_dir), "--classes", "0", "--out", str(out)]):
            assert needle in user_error(capsys, *argv)
    for out in (tmp_path / "file", long):
        user_error(capsys, "export", str(var_model_dir), str(out))


@pytest.mark.parametrize("damage, needle", [
    ("vae_truncated", "cannot load the"), ("text_encoder_empty", "cannot load the"),
    ("config_list", "not a JSON mapping"), ("config_invalid", "not a JSON mapping"),
    ("index_list", "must be [library, class]"), ("tokenizer_empty", "is empty"),
    ("vae_missing", "has no weights file"), ("text_encoder_missing", "has no weights file"),
])
def test_a_damaged_pipeline_folder_is_one_line(model_dir, tmp_path, capsys, damage, needle):
    """Damaged components of a diffusers folder fail in the one loader, in one line, before sampling."""
    folder = tmp_path / "p"
    shutil.copytree(model_dir, folder)
    if damage == "vae_truncated":
        w = next((folder / "vae").glob("*.safetensors"))
        w.write_bytes(w.read_bytes()[:500])
    elif damage.endswith("_missing"):
        next((folder / damage.split("_missing")[0]).glob("*.safetensors")).unlink()
    elif damage == "text_encoder_empty":
        next((folder / "text_encoder").glob("*.safetensors")).write_bytes(b"")
    elif damage == "config_list":
        (folder / "transformer" / "config.json").write_text("[1, 2]")
    elif damage == "config_invalid":
        (folder / "vae" / "config.json").write_text("{bad")
    elif damage == "index_list":
        index = json.loads((folder / "model_index.json").read_text())
        index["vae"] = ["diffusers"]
        (folder / "model_index.json").write_text(json.dumps(index))
    else:
        for f in (folder / "tokenizer").iterdir():
            f.unlink()
    msg = user_error(capsys, "sample", "--model", str(folder), "--prompts", "a photo of a circle", "--steps", "2",
                     "--out", str(tmp_path / "o"))
    assert needle in msg and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needle", [
    (["sample", "--model", "VAR", "--classes", "0", "--device", "bogus"], "unknown device 'bogus'"),
    (["sample", "--model", "VAR", "--classes", "0", "--device", "cuda:7"], "is not available"),
    (["sample", "--model", "PIPE", "--prompts", "@BINARY"], "is not UTF-8 text"),
    (["sample", "--model", "PIPE", "--prompts", "x", "--guidance", "nan"], "--guidance must be a finite number"),
    (["sample", "--model", "PIPE", "--prompts", "x", "--shift", "nan"], "--shift a finite number > 0"),
    (["sample", "--model", "PIPE", "--prompts", "x", "--height", "0"], "positive multiples of 16"),
    (["eval", "--model", "VAR", "--classes", "0", "--seeds", "0"], "FID needs at least two generated images"),
    (["eval", "--model", "PIPE", "--n", "1", "--seeds", "0"], "FID needs at least two generated images"),
    (["eval", "--model", "PIPE", "--resolution", "17"], "positive multiple of 16"),
    (["eval", "--model", "PIPE", "--resolution", "-16"], "positive multiple of 16"),
])
def test_bad_command_line_values_are_one_line(model_dir, var_model_dir, tmp_path, capsys, argv, needle):
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 4)
    subs = {"VAR": str(var_model_dir), "PIPE": str(model_dir), "@BINARY": f"@{tmp_path / 'bin.txt'}"}
    msg = user_error(capsys, *[subs.get(a, a) for a in argv], "--out", str(tmp_path / "o"))
    assert needle in msg and not (tmp_path / "o").exists()
