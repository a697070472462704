"""Control metrics: how well a generated image follows its spatial condition.

* **edge F1** at a tolerance of ``tol`` pixels (Chebyshev distance): the generated image's edges
  are the borders of its objects, found as the verifier finds objects (pixels far from the
  background colour, 8-connected components) and drawn as the world draws a condition's edges
  (a pixel whose 4-neighbourhood crosses an instance border). Precision is the share of generated
  edge pixels within ``tol`` of a condition edge pixel, recall the share of condition edge pixels
  within ``tol`` of a generated one (the usual boundary F-measure with a fixed tolerance).
* **mask IoU**: the generated image's foreground (the same background test) against the
  condition's instance mask > 0.

Both are 1 when both maps are empty; F1 is 0 when exactly one is.

A condition *image* (an image folder's file; the world draws its maps the same way) holds its map
as dark ink on a light background: :func:`condition_targets` reads the ink back (mean RGB below
one half). An edge map's mask is its ink with the enclosed holes filled; a mask's edges are the
borders of its ink's 8-connected parts. On the world's own condition images this gives exactly
the maps they were drawn from for the map of their kind (tested).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vgen.world.verifier import _BG, FG_DISTANCE, as_uint8_batch


def foreground(images) -> np.ndarray:
    """(B, H, W) bool: pixels whose RGB distance from the background exceeds the verifier's threshold."""
    x = as_uint8_batch(images).astype(np.float32) - _BG
    return np.sqrt((x * x).sum(-1)) > FG_DISTANCE


def instance_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 4-neighbourhood crosses a border of the integer label map (0 = background)."""
    p = np.pad(labels, 1, mode="edge")
    c = p[1:-1, 1:-1]
    return (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])


def object_edges(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) bool borders of the 8-connected parts of (B, H, W) bool masks."""
    eight = np.ones((3, 3), bool)
    return np.stack([instance_edges(ndimage.label(m, structure=eight)[0]) for m in masks])


def image_edges(images) -> np.ndarray:
    """(B, H, W) bool edges of generated images (borders of their 8-connected foreground objects)."""
    return object_edges(foreground(images))


def edge_f1(pred: np.ndarray, target: np.ndarray, tol: int = 1) -> float:
    """Boundary F1 of two (H, W) bool edge maps with a tolerance of ``tol`` pixels (Chebyshev)."""
    if not pred.any() and not target.any():
        return 1.0
    if not pred.any() or not target.any():
        return 0.0
    grow = np.ones((2 * tol + 1, 2 * tol + 1), bool) if tol > 0 else np.ones((1, 1), bool)
    near_t = ndimage.binary_dilation(target, grow)
    near_p = ndimage.binary_dilation(pred, grow)
    precision = float((pred & near_t).sum() / pred.sum())
    recall = float((target & near_p).sum() / target.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    union = (pred | target).sum()
    return 1.0 if union == 0 else float((pred & target).sum() / union)


def control_scores(images, edges: np.ndarray, masks: np.ndarray, tol: int = 1) -> dict[str, np.ndarray]:
    """Per image edge F1 (against ``edges``, (B, H, W) bool) and mask IoU (against ``masks`` > 0)."""
    pe, pf = image_edges(images), foreground(images)
    return {"edge_f1": np.array([edge_f1(p, t.astype(bool), tol) for p, t in zip(pe, edges)]),
            "mask_iou": np.array([mask_iou(p, t > 0) for p, t in zip(pf, masks)])}


def condition_targets(conditions, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(edges, masks), (B, H, W) bool, read from condition images of ``kind`` (edges | mask) drawn as
    dark ink on a light background."""
    ink = as_uint8_batch(conditions).astype(np.float32).mean(-1) < 127.5
    if kind == "edges":
        return ink, np.stack([ndimage.binary_fill_holes(e) for e in ink])
    return object_edges(ink), ink
