"""`vgen sample` on a VAR model folder, and the sampler's KV-cache statistics behind `vgen bench var`."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_var_models
from PIL import Image

from vgen.cli import main
from vgen.engine.scalewise import sample
from vgen.errors import UserError
from vgen.models.var import switch_plan
from vgen.models.var.folder import build_var, load_var_model
from vgen.sample import parse_classes
from vgen.world.datasets import CLASS_PROMPTS


def sample_cli(capsys, model, out, *args: str) -> tuple[dict, str]:
    rc = main(["sample", "--model", str(model), "--out", str(out), *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads((out / "samples.json").read_text()), captured.out


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_var_writes_pngs_grid_and_records(var_model_dir, tmp_path, capsys):
    meta, printed = sample_cli(capsys, var_model_dir, tmp_path / "o", "--classes", "0", "5-6", "--seeds", "3", "7")
    assert [(r["class"], r["seed"]) for r in meta["samples"]] == [(0, 3), (0, 7), (5, 3), (5, 7), (6, 3), (6, 7)]
    assert all(r["prompt"] == CLASS_PROMPTS[r["class"]] and isinstance(r["strict"], bool) and 0 <= r["score"] <= 1
               for r in meta["samples"])
    assert (meta["cfg"], meta["top_k"], meta["top_p"]) == (1.5, 0, 0.0)  # the folder's sampling settings
    assert meta["model"] == str(var_model_dir) and meta["seconds"] > 0
    for r in meta["samples"]:
        assert png(tmp_path / "o" / r["file"]).shape == (16, 16, 3)
    assert Image.open(tmp_path / "o" / "grid.png").size[0] > 32 * 6
    assert "images/s" in printed and "strictly correct (6 grammar prompts)" in printed


def test_a_class_and_seed_give_the_same_image_alone_and_in_a_larger_request(var_model_dir, tmp_path, capsys):
    many, _ = sample_cli(capsys, var_model_dir, tmp_path / "many", "--classes", "2-4", "--seeds", "0-5")
    alone, _ = sample_cli(capsys, var_model_dir, tmp_path / "alone", "--classes", "3", "--seeds", "4")
    [want] = [r for r in many["samples"] if (r["class"], r["seed"]) == (3, 4)]
    assert np.array_equal(png(tmp_path / "alone" / alone["samples"][0]["file"]), png(tmp_path / "many" / want["file"]))
    other, _ = sample_cli(capsys, var_model_dir, tmp_path / "other", "--classes", "3", "--seeds", "4", "--cfg", "0",
                          "--top-k", "3")
    assert (other["cfg"], other["top_k"]) == (0.0, 3)  # flags override the folder's settings
    assert not np.array_equal(png(tmp_path / "other" / other["samples"][0]["file"]),
                              png(tmp_path / "alone" / alone["samples"][0]["file"]))


def test_parse_classes():
    assert parse_classes(["0", "3-4"], 70) == [0, 3, 4]
    assert parse_classes(["all"], 5) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="class 5 is out of range"):
        parse_classes(["4-5"], 5)


@pytest.mark.parametrize("args, needle", [
    (["--classes", "70"], "class 70 is out of range: the model has classes 0..69"),
    (["--classes", "x"], "bad class 'x'"),
    (["--classes", "1", "--top-k", "-1"], "top_k must be >= 0"),
    (["--prompts", "a photo of a circle"], "--prompts does not apply to"),
    (["--classes", "1", "--steps", "2"], "--steps does not apply to"),
    ([], "--classes is required for a VAR model folder"),
])
def test_bad_var_sample_requests_are_one_line(var_model_dir, tmp_path, capsys, args, needle):
    rc = main(["sample", "--model", str(var_model_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("vgen: error: ") and needle in err, err
    assert not (tmp_path / "o").exists()


def test_classes_for_a_pipeline_folder_and_a_tokenizer_folder_are_one_line(var_tokenizer_dir, tmp_path, capsys):
    for model, needle in ((tmp_path, "--classes is for VAR model folders"), (var_tokenizer_dir, "a tokenizer only")):
        rc = main(["sample", "--model", str(model), "--classes", "0", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_cache_stats_peak_is_the_full_cache_and_leaves_sampling_unchanged(var_model_dir):
    vae, var, _ = load_var_model(var_model_dir)
    stats: dict = {}
    s = sample(var, vae, [1, 2, 3], [0, 1, 2], cache_stats=stats)
    # CFG: 3 samples padded to MIN_ROWS = 16, doubled; each of the blocks holds k and v for all L tokens
    assert stats["rows"] == 32
    assert stats["peak_bytes"] == stats["bytes"][-1] == var.depth * 2 * 32 * var.L * var.C * 4
    assert stats["bytes"] == sorted(stats["bytes"])
    assert all(torch.equal(a, b) for a, b in zip(s.tokens, sample(var, vae, [1, 2, 3], [0, 1, 2]).tokens))
    sample(var, vae, [1], [0], cfg=0, use_cache=False, cache_stats=stats)  # the dict is refilled, not extended
    assert stats["rows"] == 16 and stats["bytes"] == [0, 0, 0]


def test_a_variant_plan_frees_caches_and_lowers_the_peak():
    vae, var = tiny_var_models()
    deep = build_var({**var.arch, "depth": 4}).eval()
    deep.init_weights()
    full, sub = {}, {}
    sample(deep, vae, [1, 2], [0, 1], cache_stats=full)
    out = sample(deep, vae, [1, 2], [0, 1], depth_plan=switch_plan(4, 3, 2, 2), cache_stats=sub)
    assert out.freed == {2: [1, 2]}  # the subnet is blocks 0 and 3
    assert sub["peak_bytes"] == full["peak_bytes"] // 2
