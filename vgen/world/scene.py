"""Scenes of the shapes world: sampling a layout for a prompt, rendering it, condition maps.

A scene lives in normalised coordinates (the image is the unit square, y down), so one
scene renders at any resolution. Every shape is axis-aligned and inscribed in its box of
half-size ``r`` around ``(cx, cy)``: the square is the box, the circle touches its sides,
the diamond joins the side midpoints, the triangle has the bottom side as base and the
top-middle as apex. Boxes never overlap and keep a gap, so objects never touch.
Anti-aliasing: draw at 4x with PIL, then box-filter down (exact area coverage at 1/4 px).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vgen.world.grammar import Count, Exists, Relation, Spec, parse
from vgen.world.vocab import BACKGROUND, COLORS

SUPERSAMPLE = 4
GAP = 0.08            # min gap between boxes, in image widths (JPEG ringing bridges less)
BORDER = 0.02         # min gap to the image border
MAX_ANGLE = 20.0      # position prompts: max angle (deg) between the pair and the relation axis
# Half-size ranges by object count; small enough that four objects always fit.
SIZE_RANGE = {1: (0.13, 0.25), 2: (0.11, 0.18), 3: (0.10, 0.14), 4: (0.10, 0.13)}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    cx: float
    cy: float
    r: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: tuple[int, int, int] = BACKGROUND


def _rng(spec: Spec, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**64, zlib.crc32(spec.key.encode())])


def _objects_for(spec: Spec, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(shape, colour) for every object the constraints call for; free colours at random."""
    colors = list(COLORS)
    out: list[tuple[str, str]] = []
    for c in spec.constraints:
        if isinstance(c, (Exists, Count)):
            color = getattr(c, "color", None)
            out += [(c.shape, color or colors[rng.integers(len(colors))]) for _ in range(c.n)]
    return out


def _separated(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    (ax, ay, ar), (bx, by, br) = a, b
    need = ar + br + GAP
    return abs(ax - bx) >= need or abs(ay - by) >= need


def _relation_ok(a: tuple[float, float, float], b: tuple[float, float, float], rel: str) -> bool:
    """Does a lie ``rel`` b with a clear margin: separated along the axis, within MAX_ANGLE of it."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return along >= a[2] + b[2] + GAP and abs(across) <= math.tan(math.radians(MAX_ANGLE)) * along


def sample_scene(spec: Spec | str, seed: int) -> Scene:
    """A random layout meeting ``spec``, deterministic in (meaning of the prompt, seed)."""
    spec = parse(spec) if isinstance(spec, str) else spec
    rng = _rng(spec, seed)
    items = _objects_for(spec, rng)
    rel = next((c for c in spec.constraints if isinstance(c, Relation)), None)
    lo, hi = SIZE_RANGE[min(len(items), 4)]
    for attempt in range(2000):
        shrink = 0.85 ** (attempt // 200)  # a rare hard draw: try smaller boxes
        placed: list[tuple[float, float, float]] = []
        for _ in items:
            r = float(rng.uniform(lo, hi)) * shrink
            x, y = (float(v) for v in rng.uniform(r + BORDER, 1 - r - BORDER, size=2))
            if any(not _separated((x, y, r), p) for p in placed):
                break
            placed.append((x, y, r))
        else:
            if rel is None or _relation_ok(placed[0], placed[1], rel.rel):
                return Scene(tuple(Obj(s, c, *p) for (s, c), p in zip(items, placed)))
    raise RuntimeError(f"could not place a scene for {spec.prompt!r} (seed {seed})")


def _draw(draw: ImageDraw.ImageDraw, o: Obj, size: int, fill) -> None:
    x0, y0, x1, y1 = (v * size for v in o.box)
    cx, cy = o.cx * size, o.cy * size
    if o.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif o.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render(scene: Scene, resolution: int = 64) -> np.ndarray:
    """RGB uint8 image (H, W, 3) of ``scene``, anti-aliased."""
    big = resolution * SUPERSAMPLE
    img = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, big, COLORS[o.color])
    return np.array(img.resize((resolution, resolution), Image.Resampling.BOX))  # writable copy


def coverage(scene: Scene, resolution: int = 64) -> np.ndarray:
    """Per-object area coverage in [0, 1], shape (N, H, W)."""
    big = resolution * SUPERSAMPLE
    out = np.zeros((len(scene.objects), resolution, resolution), np.float32)
    for i, o in enumerate(scene.objects):
        img = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(img), o, big, 255)
        out[i] = np.asarray(img.resize((resolution, resolution), Image.Resampling.BOX), np.float32) / 255.0
    return out


def render_prompt(prompt: str, seed: int, resolution: int = 64) -> np.ndarray:
    """Shortcut: sample a scene for ``prompt`` from ``seed`` and render it."""
    return render(sample_scene(prompt, seed), resolution)


def condition_maps(scene: Scene, resolution: int = 64) -> dict[str, np.ndarray]:
    """Control conditions derived from the scene itself (exact, not estimated from pixels).

    ``mask``: int64 (H, W), 0 background, i + 1 where object i covers >= half the pixel;
    ``edges``: uint8 (H, W), 255 on pixels whose 4-neighbourhood crosses an instance border;
    ``boxes``: float32 (N, 4) pixel ``x0, y0, x1, y1``; ``labels``: "colour shape" per box.
    """
    cov = coverage(scene, resolution)
    mask = np.zeros((resolution, resolution), np.int64)
    if len(cov):
        best = cov.argmax(0)
        mask = np.where(cov.max(0) >= 0.5, best + 1, 0)
    pad = np.pad(mask, 1, mode="edge")
    diff = (pad[1:-1, 1:-1] != pad[:-2, 1:-1]) | (pad[1:-1, 1:-1] != pad[2:, 1:-1]) \
        | (pad[1:-1, 1:-1] != pad[1:-1, :-2]) | (pad[1:-1, 1:-1] != pad[1:-1, 2:])
    boxes = np.array([o.box for o in scene.objects], np.float32).reshape(-1, 4) * resolution
    return {"mask": mask, "edges": (diff * 255).astype(np.uint8), "boxes": boxes,
            "labels": [f"{o.color} {o.shape}" for o in scene.objects]}
