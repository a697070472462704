"""The evaluation harness: GenEval-Shapes statistics, reports, and `vgen eval` end to end."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap

from vgen.eval.geneval import geneval_shapes, summarize
from vgen.eval.harness import evaluate, grid, markdown
from vgen.world.scene import render_prompt
from vgen.world.verifier import verify


def _images(prompts, seeds, wrong=()):
    """Real renders of each prompt; slots in ``wrong`` get another prompt's image (fails strict)."""
    out = []
    for i, (p, s) in enumerate(zip(prompts, seeds)):
        out.append(render_prompt("a photo of four diamonds" if i in wrong else p, s % 2**31, 64))
    return np.stack(out)


def test_real_images_score_perfectly_and_wrong_ones_fail():
    prompts, seeds = grid(24, [0, 1])
    g = geneval_shapes(_images(prompts, seeds), prompts, n_seeds=2)
    assert g["overall"]["strict"]["mean"] == 1.0 and g["n_prompts"] == 24 and g["n_images"] == 48
    assert set(g["per_category"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(v["n_prompts"] == 4 for v in g["per_category"].values())  # the sampler balances categories
    wrong = set(range(0, 48, 2))  # seed 0 of every slot is wrong, seed 1 right
    images = _images(prompts, seeds, wrong)
    g = geneval_shapes(images, prompts, n_seeds=2)
    s = g["overall"]["strict"]
    seed0 = np.mean([v.strict for v in verify(images[::2], prompts[::2])])  # e.g. "a diamond" still holds
    assert s["per_seed"][1] == 1.0 and s["per_seed"][0] == pytest.approx(seed0) and seed0 < 0.5
    assert s["per_seed_std"] == pytest.approx(np.std(s["per_seed"], ddof=1))


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    values = (rng.random((300, 3)) < 0.4).astype(float)
    ours = summarize(values, n_boot=4000)
    ref = bootstrap((values.mean(1),), np.mean, n_resamples=4000, method="percentile", random_state=1)
    assert ours["mean"] == pytest.approx(values.mean())
    assert ours["ci95"][0] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert ours["ci95"][1] == pytest.approx(ref.confidence_interval.high, abs=0.01)


def test_evaluate_with_rewards_and_the_markdown_report():
    prompts, seeds = grid(12, [0])
    r = evaluate(_images(prompts, seeds), prompts, 1, metrics=("geneval",), rewards=["shapes_strict",
                                                                                     "jpeg_compressibility"])
    assert r["rewards"]["shapes_strict"]["mean"] == 1.0 and r["rewards"]["jpeg_compressibility"]["mean"] < 0
    text = markdown(r)
    assert "GenEval-Shapes" in text and "| overall | 100.0%" in text and "jpeg_compressibility" in text


def test_vgen_eval_end_to_end(model_dir, tmp_path, capsys):
    from vgen.cli import main

    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(model_dir), "--metrics", "geneval", "--rewards", "shapes", "--n", "6",
               "--seeds", "0-1", "--steps", "2", "--resolution", "32", "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["n_prompts"] == 6 and r["seeds"] == [0, 1] and r["source"] == "model"
    assert 0 <= r["geneval_shapes"]["overall"]["strict"]["mean"] <= 1
    assert r["rewards"]["shapes"]["mean"] == pytest.approx(r["geneval_shapes"]["overall"]["score"]["mean"], abs=1e-6)
    assert (out / "samples.png").stat().st_size > 0 and "GenEval-Shapes" in (out / "report.md").read_text()
    # the report names the environment its figures came from
    assert r["environment"]["torch"] == torch.__version__ and r["environment"]["numpy"] == np.__version__
    assert f"torch {torch.__version__}, numpy {np.__version__}" in (out / "report.md").read_text()
    rc = main(["eval", "--model", str(model_dir), "--metrics", "geneval", "--n", "2", "--out", str(out)])
    assert rc == 2 and "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--model", "/nonexistent"], "neither a model folder"),
    (["--metrics", "fidd"], "unknown metric 'fidd'"),
    (["--rewards", "nope"], "unknown reward"),
    (["--inception-weights", "/no/such.pth"], "Inception weights file not found"),
])
def test_vgen_eval_bad_input_is_one_line(model_dir, tmp_path, capsys, argv, needle):
    from vgen.cli import main

    base = ["eval", "--model", str(model_dir), "--n", "2", "--steps", "1", "--resolution", "32",
            "--out", str(tmp_path / "x")]
    rc = main(base + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
