"""The renderer: determinism, layouts that meet the prompt, anti-aliasing, condition maps."""

import itertools
import math

import numpy as np
import pytest

from vgen.world.grammar import Relation, parse, sample_prompts
from vgen.world.scene import GAP, MAX_ANGLE, Obj, Scene, condition_maps, coverage, render, render_prompt, sample_scene
from vgen.world.vocab import BACKGROUND, COLORS


def test_same_prompt_and_seed_render_identically():
    a = render_prompt("a photo of three circles", 7)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_prompt("a photo of three circles", 7))
    assert not np.array_equal(a, render_prompt("a photo of three circles", 8))


def test_scenes_meet_their_prompt_and_never_overlap():
    for i, p in enumerate(sample_prompts("train", 300, seed=1)):
        spec, scene = parse(p), sample_scene(p, i)
        objs = scene.objects
        for c in spec.constraints:
            if hasattr(c, "n"):
                match = [o for o in objs if o.shape == c.shape and (getattr(c, "color", None) in (None, o.color))]
                assert len(match) == c.n, p
            if isinstance(c, Relation):
                a, b = objs[0], objs[1]
                dx, dy = a.cx - b.cx, a.cy - b.cy
                along = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[c.rel]
                across = dy if c.rel in ("left of", "right of") else dx
                assert along > 0 and abs(across) <= math.tan(math.radians(MAX_ANGLE)) * along + 1e-9, p
        for a, b in itertools.combinations(objs, 2):  # boxes apart by at least GAP on some axis
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= a.r + b.r + GAP - 1e-9
        for o in objs:
            assert 0 <= o.box[0] and 0 <= o.box[1] and o.box[2] <= 1 and o.box[3] <= 1
        cov = coverage(scene)
        assert (cov.sum(0) <= 1 + 1e-6).all()  # no pixel is covered twice


def test_sizes_and_positions_vary():
    objs = [sample_scene("a photo of a square", s).objects[0] for s in range(200)]
    r = np.array([o.r for o in objs])
    xy = np.array([(o.cx, o.cy) for o in objs])
    assert r.max() / r.min() > 1.6 and xy.std(0).min() > 0.12


def test_square_edges_are_antialiased_by_exact_area_coverage():
    """An axis-aligned square at fractional coordinates: pixel = background blended with its
    colour by the exact overlap area, computed here independently in closed form."""
    size, o = 64, Obj("square", "blue", 0.5 + 0.3 / 64, 0.5 - 0.45 / 64, 10.3 / 64)
    img = render(Scene((o,)), size).astype(np.float64)
    x0, y0, x1, y1 = (v * size for v in o.box)
    px = np.arange(size)
    ox = np.clip(np.minimum(px + 1, x1) - np.maximum(px, x0), 0, 1)
    oy = np.clip(np.minimum(px + 1, y1) - np.maximum(px, y0), 0, 1)
    cov = oy[:, None] * ox[None, :]
    want = np.array(BACKGROUND) * (1 - cov[..., None]) + np.array(COLORS["blue"]) * cov[..., None]
    # PIL draws at 4x on an integer grid: coverage is exact to 1/4 px per edge
    assert np.abs(img - want).max() <= 0.25 * 255 * 0.9
    edge = (cov > 0.05) & (cov < 0.95)
    assert edge.sum() > 20 and np.abs(img - want)[edge].mean() < 16


def test_resolution_is_configurable():
    scene = sample_scene("a photo of a red circle and a blue square", 0)
    for res in (32, 64, 128, 256):
        assert render(scene, res).shape == (res, res, 3)


def test_condition_maps_follow_the_scene():
    scene = sample_scene("a photo of four triangles", 5)
    maps = condition_maps(scene, 64)
    mask, edges, boxes = maps["mask"], maps["edges"], maps["boxes"]
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 1, 2, 3, 4}
    assert boxes.shape == (4, 4) and len(maps["labels"]) == 4
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ys, xs = np.nonzero(mask == i + 1)
        assert xs.min() >= math.floor(x0) and xs.max() <= math.ceil(x1)
        assert ys.min() >= math.floor(y0) and ys.max() <= math.ceil(y1)
    # edges lie exactly where the instance id changes between 4-neighbours
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    inner = mask[1:-1, 1:-1]
    interior = (inner == mask[:-2, 1:-1]) & (inner == mask[2:, 1:-1]) & (inner == mask[1:-1, :-2]) \
        & (inner == mask[1:-1, 2:])
    assert np.array_equal(edges[1:-1, 1:-1] == 0, interior)


def test_unplaceable_scene_is_an_error_not_a_hang(monkeypatch):
    import vgen.world.scene as R

    monkeypatch.setattr(R, "GAP", 2.0)  # no two boxes can ever be this far apart
    with pytest.raises(RuntimeError, match="could not place"):
        R.sample_scene("a photo of four circles", 0)
