"""The verifier, against ground truth that comes from the scene, not from the verifier."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from vgen.world.degrade import blur, jpeg
from vgen.world.grammar import all_prompts, parse, sample_prompts
from vgen.world.scene import Obj, Scene, render, render_prompt, sample_scene
from vgen.world.verifier import Detection, detect, relations, scores, verify
from vgen.world.vocab import CATEGORIES


@pytest.fixture(scope="module")
def test_set():
    prompts = sample_prompts("test", 360, seed=11)
    scenes = [sample_scene(p, 1000 + i) for i, p in enumerate(prompts)]
    return prompts, scenes, np.stack([render(s) for s in scenes])


def _true_centroid(o: Obj, size: int) -> tuple[float, float]:
    # a triangle's centroid is 2/3 of the way down from its apex; the others are symmetric
    cy = o.cy - o.r + (4 / 3) * o.r if o.shape == "triangle" else o.cy
    return o.cx * size, cy * size


def test_detections_match_the_scene(test_set):
    _, scenes, images = test_set
    for scene, found in zip(scenes, detect(images)):
        assert Counter((o.shape, o.color) for o in scene.objects) == Counter((d.shape, d.color) for d in found)
        for o in scene.objects:
            tx, ty = _true_centroid(o, 64)
            d = min(found, key=lambda d: math.hypot(d.cx - tx, d.cy - ty))
            assert math.hypot(d.cx - tx, d.cy - ty) < 0.35
            assert d.area == pytest.approx({"circle": math.pi, "square": 4, "diamond": 2, "triangle": 2}[o.shape]
                                           * (o.r * 64) ** 2, rel=0.08)


@pytest.mark.parametrize("shape, cross, skew", [("square", 5 / 9, 0), ("circle", 1 / 3, 0), ("diamond", 1 / 6, 0),
                                                ("triangle", None, -2 * math.sqrt(2) / 5)])
def test_shape_statistics_equal_their_closed_forms(shape, cross, skew):
    d = detect(render(Scene((Obj(shape, "green", 0.5, 0.5, 0.4),)), 512))[0][0]
    assert d.shape == shape
    assert d.skew == pytest.approx(skew, abs=2e-3)
    if cross is not None:
        assert d.cross == pytest.approx(cross, abs=2e-3)


def _relations_by_rule(a: Detection, b: Detection) -> set[str]:
    """The position rule written out independently, one axis at a time."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    norm = math.hypot(dx, dy)
    mx, my = 0.1 * (a.w + b.w), 0.1 * (a.h + b.h)
    sx = math.copysign(max(abs(dx) - mx, 0.0), dx)
    sy = math.copysign(max(abs(dy) - my, 0.0), dy)
    out = set()
    if norm > 0 and (sx or sy):
        if sx / norm < -0.5:
            out.add("left of")
        if sx / norm > 0.5:
            out.add("right of")
        if sy / norm < -0.5:
            out.add("above")
        if sy / norm > 0.5:
            out.add("below")
    return out


def test_relations_follow_the_rule():
    rng = random.Random(0)

    def det():
        return Detection("circle", "red", rng.uniform(0, 64), rng.uniform(0, 64), rng.uniform(4, 20),
                         rng.uniform(4, 20), 1.0, 0.0, 0.33)

    for _ in range(3000):
        a, b = det(), det()
        assert relations(a, b) == _relations_by_rule(a, b)
    a = Detection("circle", "red", 10, 30, 10, 10, 1, 0, 0.33)
    assert relations(a, Detection("square", "red", 40, 32, 10, 10, 1, 0, 0.55)) == {"left of"}
    assert relations(a, Detection("square", "red", 40, 60, 10, 10, 1, 0, 0.55)) == {"left of", "above"}
    assert relations(a, Detection("square", "red", 12, 31, 10, 10, 1, 0, 0.55)) == set()  # within the margin


def _rates(images, prompts):
    rng = random.Random(5)
    foils = [rng.choice([q for q in all_prompts(parse(p).category) if parse(q).key != parse(p).key]) for p in prompts]
    own, other = verify(images, prompts), verify(images, foils)
    cats = [v.category for v in own]
    acc = {c: np.mean([v.strict for v, k in zip(own, cats) if k == c]) for c in CATEGORIES}
    rej = {c: np.mean([not v.strict for v, k in zip(other, cats) if k == c]) for c in CATEGORIES}
    return acc, rej


def test_accepts_own_prompt_and_rejects_others_per_category(test_set):
    prompts, _, images = test_set
    acc, rej = _rates(images, prompts)
    assert min(acc.values()) >= 0.99 and min(rej.values()) >= 0.99, (acc, rej)


def test_survives_blur_and_jpeg(test_set):
    prompts, _, images = test_set
    acc, rej = _rates(jpeg(blur(images, 0.8), 75), prompts)
    assert min(acc.values()) >= 0.97 and min(rej.values()) >= 0.97, (acc, rej)


def test_works_at_other_resolutions():
    prompts = sample_prompts("test", 60, seed=2)
    images = np.stack([render_prompt(p, i, 128) for i, p in enumerate(prompts)])
    assert all(v.strict for v in verify(images, prompts))


def test_score_is_the_fraction_of_constraints_met():
    img = render(Scene((Obj("circle", "red", 0.25, 0.5, 0.12), Obj("square", "blue", 0.75, 0.5, 0.12))))
    v = verify(img, "a photo of a red circle and a green square")[0]
    assert v.checks == [("has red circle", True), ("has green square", False)] and v.score == 0.5 and not v.strict
    v = verify(img, "a photo of a circle left of a square")[0]
    assert v.strict and v.score == 1.0
    v = verify(img, "a photo of a square left of a circle")[0]
    assert v.score == pytest.approx(2 / 3) and not v.strict
    three = render(sample_scene("a photo of three circles", 4))
    for words, ok in (("one circle", False), ("two circles", False), ("three circles", True), ("four circles", False)):
        assert verify(three, f"a photo of {words}")[0].strict == ok


def test_empty_and_noise_images():
    blank = np.full((2, 64, 64, 3), 235, np.uint8)
    v = verify(blank, ["a photo of a circle", "a photo of two squares"])
    assert [x.score for x in v] == [0.0, 0.0] and v[0].objects == []
    noise = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    s, strict = scores(noise, ["a photo of a circle"] * 4)
    assert s.shape == (4,) and ((0 <= s) & (s <= 1)).all()


def test_input_formats_agree_and_batches_do_not_leak(test_set):
    prompts, _, images = test_set
    x, p = images[:12], prompts[:12]
    ref = [(v.checks, [(d.shape, d.color) for d in v.objects]) for v in verify(x, p)]
    as_float = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    for form in (as_float, [Image.fromarray(im) for im in x], list(x), x.astype(np.float64) / 255):
        assert [(v.checks, [(d.shape, d.color) for d in v.objects]) for v in verify(form, p)] == ref
    alone = [verify(im, q)[0].checks for im, q in zip(x, p)]
    assert alone == [c for c, _ in ref]


def test_bad_input_is_a_clear_error():
    img = render_prompt("a photo of a circle", 0)
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        verify(img, "a photo of a hexagon")
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        verify(img, ["a photo of a circle"] * 2)
    with pytest.raises(ValueError, match="3 colour channels"):
        verify(np.zeros((64, 64, 4), np.uint8), "a photo of a circle")
