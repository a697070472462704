"""The exact, weight-free verifier of the shapes world (numpy + scipy only).

Image -> objects: pixels far from the background colour are foreground; 8-connected
foreground components are objects (one ``scipy.ndimage.label`` call for the whole batch).
Each object's colour is the palette entry nearest to the mean of its core pixels (those
at >= 70% of its largest distance from the background, so anti-aliased rims don't tint it).
Its coverage ``alpha`` per pixel is the projection of the pixel onto the background->colour
line, so area, centroid and moments are sub-pixel accurate. Shape, from three statistics:

* vertical skewness of the mass: an apex-up triangle holds 3/4 of its area in its lower
  half (skewness ~ -0.57); the other shapes are symmetric (0)       -> triangle if < -0.3
* cross = E[dx^2 dy^2] / E[dx^4] (mean of the x and y fourth moments): 5/9 for a square,
  1/3 for a disc, 1/6 for a diamond; an isotropic blur pulls it towards 1/3 only slowly,
  so the thresholds sit a little towards the disc  -> square > 0.42 > circle > 0.26 > diamond

Prompt -> constraints (grammar.py); an image meets ``Exists`` if enough detected objects
match shape (and colour), ``Count`` if the number of that shape is exact, ``Relation`` if
some pair of centroids lies in the named direction: their offset, shrunk on each axis by a
margin of 10% of the two objects' summed sizes, must point within 60 degrees of the
relation's axis. Score = fraction of constraints met; strict = all met.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from vgen.world.grammar import Count, Exists, Relation, Spec, parse
from vgen.world.vocab import BACKGROUND, COLORS

FG_DISTANCE = 50.0        # RGB distance from the background above which a pixel is foreground
CORE_FRACTION = 0.7       # core pixels for colour: distance >= this fraction of the object's max
MIN_AREA_FRACTION = 0.002  # objects smaller than this share of the image are noise
TRIANGLE_SKEW = -0.3
SQUARE_CROSS, CIRCLE_CROSS = 0.42, 0.26
POSITION_MARGIN = 0.1

_PALETTE = np.array(list(COLORS.values()), np.float32)
_COLOR_NAMES = list(COLORS)
_BG = np.array(BACKGROUND, np.float32)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    cx: float      # centroid, pixels
    cy: float
    w: float       # sqrt(12 * variance) along x and y: the side of a square, pixels
    h: float
    area: float    # coverage-weighted area, pixels
    skew: float    # vertical skewness of the mass (triangle ~ -0.57)
    cross: float   # E[dx^2 dy^2] / E[dx^4] (square 5/9, disc 1/3, diamond 1/6)


@dataclass
class Verdict:
    prompt: str
    category: str
    checks: list[tuple[str, bool]]
    objects: list[Detection] = field(repr=False)

    @property
    def score(self) -> float:
        return sum(ok for _, ok in self.checks) / len(self.checks)

    @property
    def strict(self) -> bool:
        return all(ok for _, ok in self.checks)


def as_uint8_batch(images) -> np.ndarray:
    """(B, H, W, 3) uint8 from: PIL images, uint8 or [0, 1] float arrays / tensors, HWC or CHW."""
    if hasattr(images, "convert") or (isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert")):
        images = [images] if hasattr(images, "convert") else images
        return np.stack([np.asarray(im.convert("RGB")) for im in images])
    if isinstance(images, (list, tuple)):
        return np.concatenate([as_uint8_batch(im) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().float().cpu().numpy() if images.is_floating_point() else images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, H, W, 3) or (B, 3, H, W), got {x.shape}")
    if x.shape[-1] != 3 and x.shape[1] == 3:
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected uint8 or float images, got {x.dtype}")
    return (np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True  # 8-connected within an image, never across the batch


def detect(images) -> list[list[Detection]]:
    """Objects found in each image of a batch."""
    x = as_uint8_batch(images).astype(np.float32)
    b, h, w, _ = x.shape
    diff = x - _BG
    dist = np.sqrt((diff * diff).sum(-1))
    labels, n = ndimage.label(dist > FG_DISTANCE, structure=_STRUCTURE)
    if n == 0:
        return [[] for _ in range(b)]
    flat = labels.ravel()
    on = np.flatnonzero(flat)
    lab = flat[on]
    d = dist.ravel()[on]
    rgb = diff.reshape(-1, 3)[on]
    img_of = np.zeros(n + 1, np.int64)
    img_of[lab] = on // (h * w)

    # colour: mean of core pixels, nearest palette entry
    dmax = np.zeros(n + 1, np.float32)
    np.maximum.at(dmax, lab, d)
    core = d >= CORE_FRACTION * dmax[lab]
    cnt = np.bincount(lab[core], minlength=n + 1).clip(1)
    mean = np.stack([np.bincount(lab[core], rgb[core, k], n + 1) for k in range(3)], 1) / cnt[:, None] + _BG
    color = ((mean[:, None, :] - _PALETTE[None]) ** 2).sum(-1).argmin(1)

    # coverage of each pixel by its object's colour
    axis = _PALETTE[color] - _BG
    alpha = np.clip((rgb * axis[lab]).sum(1) / (axis[lab] ** 2).sum(1), 0.0, 1.0)
    yy = (on // w) % h
    xx = on % w
    area = np.bincount(lab, alpha, n + 1)
    safe = np.maximum(area, 1e-6)
    cx = np.bincount(lab, alpha * xx, n + 1) / safe + 0.5
    cy = np.bincount(lab, alpha * yy, n + 1) / safe + 0.5
    dx, dy = xx + 0.5 - cx[lab], yy + 0.5 - cy[lab]
    vx = np.bincount(lab, alpha * dx**2, n + 1) / safe
    vy = np.bincount(lab, alpha * dy**2, n + 1) / safe
    skew = (np.bincount(lab, alpha * dy**3, n + 1) / safe) / np.maximum(vy, 1e-6) ** 1.5
    m22 = np.bincount(lab, alpha * dx**2 * dy**2, n + 1)
    m4 = np.bincount(lab, alpha * (dx**4 + dy**4), n + 1) / 2
    cross = m22 / np.maximum(m4, 1e-6)
    width, height = np.sqrt(12 * vx), np.sqrt(12 * vy)
    shape = np.where(skew < TRIANGLE_SKEW, 2, np.where(cross > SQUARE_CROSS, 1, np.where(cross > CIRCLE_CROSS, 0, 3)))
    shape_names = ("circle", "square", "triangle", "diamond")

    out: list[list[Detection]] = [[] for _ in range(b)]
    keep = np.flatnonzero(area >= MIN_AREA_FRACTION * h * w)
    keep = keep[keep > 0]
    rows = zip(img_of[keep].tolist(), shape[keep].tolist(), color[keep].tolist(), cx[keep].tolist(),
               cy[keep].tolist(), width[keep].tolist(), height[keep].tolist(), area[keep].tolist(),
               skew[keep].tolist(), cross[keep].tolist())
    for i, s, c, *stats in rows:
        out[i].append(Detection(shape_names[s], _COLOR_NAMES[c], *stats))
    return out


def relations(a: Detection, b: Detection) -> set[str]:
    """Directions in which ``a`` lies relative to ``b`` (possibly two, e.g. left of and above)."""
    off = np.array([a.cx - b.cx, a.cy - b.cy])
    norm = float(np.hypot(*off))
    margin = POSITION_MARGIN * np.array([a.w + b.w, a.h + b.h])
    shrunk = np.sign(off) * np.maximum(np.abs(off) - margin, 0.0)
    if norm == 0 or not shrunk.any():
        return set()
    ux, uy = shrunk / norm
    return {name for name, ok in (("left of", ux < -0.5), ("right of", ux > 0.5),
                                  ("above", uy < -0.5), ("below", uy > 0.5)) if ok}


def _check(c, objs: list[Detection]) -> bool:
    if isinstance(c, Exists):
        return sum(o.shape == c.shape and (c.color is None or o.color == c.color) for o in objs) >= c.n
    if isinstance(c, Count):
        return sum(o.shape == c.shape for o in objs) == c.n
    if isinstance(c, Relation):
        return any(c.rel in relations(a, b) for a in objs if a.shape == c.a for b in objs if b.shape == c.b)
    raise TypeError(f"unknown constraint {c!r}")


@lru_cache(maxsize=4096)
def _parse(prompt: str) -> Spec:
    return parse(prompt)


def verify(images, prompts: list[str] | str) -> list[Verdict]:
    """Judge each image against its prompt; a malformed prompt raises ``ValueError``."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    specs = [_parse(p) for p in prompts]  # parse first: bad prompts fail before any work
    found = detect(images)
    if len(found) != len(specs):
        raise ValueError(f"got {len(found)} images but {len(specs)} prompts")
    return [Verdict(s.prompt, s.category, [(c.describe(), _check(c, objs)) for c in s.constraints], objs)
            for s, objs in zip(specs, found)]


def scores(images, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(score in [0, 1], strict in {0, 1}) as float arrays, for rewards and metrics."""
    v = verify(images, prompts)
    return np.array([x.score for x in v], np.float32), np.array([x.strict for x in v], np.float32)
