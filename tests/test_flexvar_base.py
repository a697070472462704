"""The committed tiny FlexVAR base (assets/flexvar-tiny-shapes, built by tools/build_var_tiny.py --flex)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vgen.engine.scalewise import sample
from vgen.images import to_uint8
from vgen.models.load import load
from vgen.world.datasets import CLASS_PROMPTS
from vgen.world.grammar import parse
from vgen.world.verifier import verify

BASE = Path(__file__).resolve().parents[1] / "assets" / "flexvar-tiny-shapes"
UNSEEN = (1, 2, 3, 4, 5, 6, 7, 8)  # all eight sizes: never a training list (flex_scale_list draws 1-3 middle sizes)


@pytest.fixture(scope="module")
def base():
    return load(BASE)


def test_the_base_is_small_safe_and_documented(base):
    files = [f for f in BASE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25e6
    assert {f.name for f in files if f.suffix == ".safetensors"} == {"vqvae.safetensors", "var.safetensors"}
    assert not [f for f in files if f.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert base.var.flex and not base.vqvae.residual and base.classes == list(CLASS_PROMPTS)
    build = json.loads((BASE / "config.json").read_text())["build"]
    card = (BASE / "README.md").read_text()
    for key in ("test", "test_unseen_scales"):
        assert f"{build[key]['strict']:.1%}" in card
    # the card's figures are the evaluator's reports kept in the folder
    for name, key in (("test", "test"), ("test-unseen-scales", "test_unseen_scales")):
        report = json.loads((BASE / "eval" / name / "report.json").read_text())
        assert report["geneval_shapes"]["overall"]["strict"]["mean"] == pytest.approx(build[key]["strict"])
    assert json.loads((BASE / "eval" / "test-unseen-scales" / "report.json").read_text())["patch_nums"] == \
        list(UNSEEN)


@pytest.mark.parametrize("pns", [None, UNSEEN])
def test_cached_sampling_equals_full_recompute(base, pns):
    s = base.sampling
    kw = dict(cfg=s["cfg"], top_k=s["top_k"], decode_images=False, patch_nums=pns)
    a = sample(base.var, base.vqvae, [0, 11, 30, 55], [3, 4, 5, 6], **kw)
    b = sample(base.var, base.vqvae, [0, 11, 30, 55], [3, 4, 5, 6], use_cache=False, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert [t.shape[1] for t in a.tokens] == [p * p for p in (pns or base.var.patch_nums)]


def test_samples_show_their_class_at_a_scale_list_never_trained_on(base):
    """The simplest classes (one shape; one coloured shape), sampled through all eight sizes."""
    classes = [c for c, p in enumerate(CLASS_PROMPTS) if parse(p).category in ("single_object", "colors")]
    seeds = [7_000_000 + i for i in range(len(classes))]
    s = base.sampling
    images = to_uint8(sample(base.var, base.vqvae, classes, seeds, cfg=s["cfg"], top_k=s["top_k"],
                             patch_nums=UNSEEN).images)
    assert np.mean([v.strict for v in verify(images, [CLASS_PROMPTS[c] for c in classes])]) >= 0.45  # 57% here
