"""Weight-free rewards: the shapes world's verifier and DDPO's JPEG size rewards.

Each takes uint8 images (B, H, W, 3) and B prompts (the registry normalises other inputs) and returns float32 (B,).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vgen.errors import UserError
from vgen.world import verifier


def _verify(images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        return verifier.scores(images, prompts)
    except ValueError as e:  # a prompt outside the shapes grammar: the user paired this reward with other prompts
        raise UserError(f"the shapes rewards need prompts of the shapes grammar: {e}") from None


def shapes(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Fraction of the prompt's constraints the verifier finds met, in [0, 1]: a dense reward with partial credit."""
    return _verify(images, prompts)[0]


def shapes_strict(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """1 if the verifier finds every constraint met, else 0: the GenEval-style all-correct metric."""
    return _verify(images, prompts)[1]


def jpeg_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """Size in kB (1000 bytes) of each image saved by PIL as JPEG at ``quality``, as DDPO measures it."""
    sizes = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return np.array(sizes, np.float32)


def jpeg_compressibility(images: np.ndarray, prompts: list[str], quality: int = 95) -> np.ndarray:
    """-JPEG size in kB (DDPO): higher for simpler, smoother images. Ignores the prompts."""
    return -jpeg_kb(images, quality)


def jpeg_incompressibility(images: np.ndarray, prompts: list[str], quality: int = 95) -> np.ndarray:
    """+JPEG size in kB (DDPO): higher for busier, more detailed images. Ignores the prompts."""
    return jpeg_kb(images, quality)
