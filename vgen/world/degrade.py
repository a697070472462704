"""Image degradations for robustness checks: Gaussian blur and JPEG round trips."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (B, H, W, 3) uint8 batch with ``sigma`` pixels, per channel."""
    out = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode each image of a (B, H, W, 3) uint8 batch as JPEG at ``quality``."""
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out
