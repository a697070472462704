"""Labelled image grids, for sample sheets in run directories and reports."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(images: list[np.ndarray], labels: list[str] | None = None, cols: int = 6, scale: int = 2,
              marks: list[bool] | None = None) -> Image.Image:
    """Tile (H, W, 3) uint8 images into a grid, each with its label underneath.

    ``marks`` (optional) draws a green (True) or red (False) bar above each tile, e.g. the
    verifier's strict verdict.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    h, w = images[0].shape[:2]
    tw, th = w * scale, h * scale
    font = ImageFont.load_default()
    chars = max(8, tw // 6)
    lines = [textwrap.wrap(lbl, chars)[:4] if lbl else [] for lbl in (labels or [""] * len(images))]
    text_h = 11 * max((len(x) for x in lines), default=0) + (4 if labels else 0)
    bar = 4 if marks is not None else 0
    rows = (len(images) + cols - 1) // cols
    cell_w, cell_h = tw + 4, bar + th + text_h + 4
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * cell_w + 2, (i // cols) * cell_h + 2
        if marks is not None:
            draw.rectangle([x, y, x + tw - 1, y + bar - 2], fill=(40, 160, 60) if marks[i] else (200, 40, 40))
        sheet.paste(Image.fromarray(np.asarray(im, np.uint8)).resize((tw, th), Image.Resampling.NEAREST), (x, y + bar))
        for j, line in enumerate(lines[i]):
            draw.text((x, y + bar + th + 2 + 11 * j), line, fill=(0, 0, 0), font=font)
    return sheet


def to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) float images in [0, 1] (a tensor) -> uint8 (N, H, W, 3), rounded: the one conversion
    every sampler output goes through before scoring or saving."""
    return (images.detach().permute(0, 2, 3, 1).float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def sample_sheet(path, images: np.ndarray, labels: list[str], prompts: list[str] | None = None, cols: int = 6) -> list:
    """Save a labelled sheet of uint8 (N, H, W, 3) images as a PNG, each tile marked green / red with
    the shapes verifier's strict verdict when every prompt is one of the shapes grammar. Returns the
    verdicts (empty when unmarked): the one sample-sheet helper of recipes and reports."""
    from vgen.io import save_png
    from vgen.world.grammar import is_grammar_prompt
    from vgen.world.verifier import verify

    verdicts = verify(images, prompts) if prompts is not None and all(map(is_grammar_prompt, prompts)) else []
    save_png(path, make_grid(list(images), labels, cols=cols, marks=[v.strict for v in verdicts] or None))
    return verdicts
