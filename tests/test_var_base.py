"""The committed tiny VAR base (assets/var-tiny-shapes, built by tools/build_var_tiny.py)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vgen.engine.scalewise import sample
from vgen.models.var.folder import load_var_model
from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset
from vgen.world.grammar import parse
from vgen.world.verifier import verify

BASE = Path(__file__).resolve().parents[1] / "assets" / "var-tiny-shapes"


@pytest.fixture(scope="module")
def base():
    return load_var_model(BASE)


def test_the_base_is_small_safe_and_documented():
    files = [f for f in BASE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25e6
    assert {f.name for f in files if f.suffix == ".safetensors"} == {"vqvae.safetensors", "var.safetensors"}
    assert not [f for f in files if f.suffix in (".pt", ".pth", ".bin", ".pkl")]
    config = json.loads((BASE / "config.json").read_text())
    assert config["class_prompts"] == list(CLASS_PROMPTS) and config["resolution"] == 64
    card = (BASE / "README.md").read_text()
    assert f"{config['build']['test']['strict']:.1%}" in card


def psnr(a, b):
    return 10 * math.log10(4.0 / torch.nn.functional.mse_loss(a, b).item())


def test_reconstruction_improves_with_every_scale(base):
    """Residual tokenization: each scale quantizes what the earlier ones left, so decoding after
    more scales gets closer to the image (PSNR from the images themselves, not the builder's)."""
    vae, _, config = base
    ds = ShapesClassDataset(64, 64, seed=12345)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))]) * 2 - 1
    with torch.no_grad():
        _, fhats = vae.quantize.f_to_idx(vae.img_to_f(x), return_fhat=True)
        curve = [psnr(vae.fhat_to_img(f), x) for f in fhats]
    assert all(b > a for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] >= 24.0  # flat shapes on white: the full token map is a faithful image
    assert curve[-1] == pytest.approx(config["build"]["tokenizer_psnr_by_scales"][str(vae.patch_nums[-1])], abs=1.5)


def test_cached_sampling_equals_full_recompute_on_the_base(base):
    vae, var, config = base
    classes, seeds = [0, 11, 30, 55], [3, 4, 5, 6]
    s = config["sampling"]
    a = sample(var, vae, classes, seeds, cfg=s["cfg"], top_k=s["top_k"], decode_images=False)
    b = sample(var, vae, classes, seeds, cfg=s["cfg"], top_k=s["top_k"], decode_images=False, use_cache=False)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))


def test_samples_show_their_class(base):
    """The simplest classes (one shape; one coloured shape) come out right most of the time."""
    vae, var, config = base
    classes = [c for c, p in enumerate(CLASS_PROMPTS) if parse(p).category in ("single_object", "colors")]
    seeds = [7_000_000 + i for i in range(len(classes))]
    s = config["sampling"]
    images = sample(var, vae, classes, seeds, cfg=s["cfg"], top_k=s["top_k"]).images
    images = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert np.mean([v.strict for v in verify(images, [CLASS_PROMPTS[c] for c in classes])]) >= 0.5
