"""`vgen sample` end to end on a tiny random SD3 pipeline saved to a temporary folder."""

import json

import numpy as np
import pytest
from PIL import Image

from vgen.cli import main
from vgen.sample import parse_seeds


def test_sample_writes_pngs_grid_and_records(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["sample", "--model", str(model_dir), "--prompts", "a photo of a red circle", "a cat",
               "--seeds", "3", "5-6", "--out", str(out), "--steps", "2", "--height", "32", "--width", "32"])
    assert rc == 0
    meta = json.loads((out / "samples.json").read_text())
    assert [(r["prompt"], r["seed"]) for r in meta["samples"]] == [
        ("a photo of a red circle", 3), ("a photo of a red circle", 5), ("a photo of a red circle", 6),
        ("a cat", 3), ("a cat", 5), ("a cat", 6)]
    assert "strict" in meta["samples"][0] and "strict" not in meta["samples"][3]  # verifier only for grammar prompts
    for r in meta["samples"]:
        assert np.asarray(Image.open(out / r["file"])).shape == (32, 32, 3)
    assert Image.open(out / "grid.png").size[0] > 32 * 6
    # the same (prompt, seed) gives the same image in another run with another batch
    rc = main(["sample", "--model", str(model_dir), "--prompts", "a photo of a red circle", "--seeds", "5",
               "--out", str(tmp_path / "again"), "--steps", "2", "--height", "32", "--width", "32"])
    again = json.loads((tmp_path / "again" / "samples.json").read_text())["samples"][0]["file"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / again)),
                          np.asarray(Image.open(out / meta["samples"][1]["file"])))


@pytest.mark.parametrize("args, needle", [
    (["--model", "/nonexistent"], "model folder not found"),
    (["--model", "."], "no model_index.json"),
    (["--model", "MODEL", "--seeds", "x"], "bad seed 'x'"),
    (["--model", "MODEL", "--prompts", "@/nonexistent.txt"], "cannot read prompt file"),
])
def test_sample_bad_input_is_one_line(model_dir, tmp_path, capsys, args, needle):
    args = [str(model_dir) if a == "MODEL" else a for a in args]
    if "--prompts" not in args:
        args += ["--prompts", "a photo of a circle"]
    rc = main(["sample", *args, "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1


def test_parse_seeds():
    assert parse_seeds(["0", "5", "10-12"]) == [0, 5, 10, 11, 12]


def test_a_folder_missing_a_component_is_one_line(model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    rc = main(["sample", "--model", str(broken), "--prompts", "a photo of a circle", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing its 'vae' component" in err and len(err.splitlines()) == 1, err
    (broken / "vae").mkdir()  # present but empty: found by the loader, still one line
    rc = main(["sample", "--model", str(broken), "--prompts", "a photo of a circle", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "component folder" in err and "is empty" in err and len(err.splitlines()) == 1, err


def test_a_prompt_longer_than_the_text_window_is_one_line(model_dir, tmp_path, capsys):
    long = "a photo of " + " and ".join(["a red circle"] * 6)
    rc = main(["sample", "--model", str(model_dir), "--prompts", long, "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "the text encoder reads at most 16" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything was written
