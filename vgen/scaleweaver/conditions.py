"""Condition images for ScaleWeaver: the world's own maps, user files, and the control run of a batch.

A condition image is drawn in the world's own palette: dark ink (``INK``) on the world's background,
edges as lines and masks as filled silhouettes, so that the model's VQ-VAE (trained on shapes
renders) keeps their layout when it tokenizes them; white-on-black maps are far outside what it
saw and lose it. A user's file follows the same convention (dark on light), at the model's
resolution, grey or RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vgen.errors import UserError
from vgen.world.datasets import CLASS_PROMPTS
from vgen.world.scene import condition_maps, sample_scene
from vgen.world.vocab import BACKGROUND

KINDS = ("edges", "mask")
INK = (40, 40, 40)


def condition_image(maps: dict, kind: str) -> torch.Tensor:
    """(3, H, W) image in [0, 1] of a scene's ``edges`` or ``mask`` (``condition_maps``)."""
    if kind not in KINDS:
        raise UserError(f"control kind {kind!r} is not one of {', '.join(KINDS)}")
    on = maps["edges"] > 0 if kind == "edges" else maps["mask"] > 0
    bg, ink = np.array(BACKGROUND, np.float32), np.array(INK, np.float32)
    img = np.where(on[..., None], ink, bg) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1).float()


def scene_conditions(class_ids, seeds, kind: str, resolution: int) -> tuple[torch.Tensor, list[dict]]:
    """Condition images (B, 3, H, W) and maps of the world's scenes of (class, seed) pairs: the scene a
    class prompt gives from that seed, exactly as the datasets draw it."""
    maps = [condition_maps(sample_scene(CLASS_PROMPTS[c], s), resolution) for c, s in zip(class_ids, seeds)]
    return torch.stack([condition_image(m, kind) for m in maps]), maps


def read_condition(path, resolution: int) -> torch.Tensor:
    """(3, H, W) condition image from a file: grey or RGB, exactly ``resolution`` pixels square."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode, size = im.mode, im.size
            img = np.asarray(im.convert("RGB") if mode in ("L", "RGB", "P") else im)
    except FileNotFoundError:
        raise UserError(f"condition image {str(p)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"condition image {str(p)!r} cannot be read: {e}") from None
    if mode not in ("L", "RGB", "P"):
        raise UserError(f"condition image {str(p)!r} has mode {mode}; give a grey (L) or RGB image")
    if size != (resolution, resolution):
        raise UserError(f"condition image {str(p)!r} is {size[0]}x{size[1]}; the model takes "
                        f"{resolution}x{resolution} (dark lines / silhouettes on a light background)")
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def control_run(var, vqvae, images: torch.Tensor, cfg: float, guide: bool = True, patch_nums=None):
    """The ``ControlRun`` that samples B images under ``images`` (B, 3, H, W): with CFG the
    unconditional rows drop the condition too when ``guide`` (guidance on class and condition
    together), else keep it (guidance on the class only)."""
    from vgen.scaleweaver.adapter import ControlRun, condition_latent

    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"condition images must be (B, 3, H, W), got {tuple(images.shape)}")
    B = images.shape[0]
    keep = torch.ones(2 * B if cfg else B)
    if cfg and guide:
        keep[B:] = 0
    dev = var.head.weight.device
    lat = condition_latent(vqvae, images.to(dev))
    return ControlRun(var, lat, keep.to(dev), var.check_patch_nums(patch_nums), cfg_rows=bool(cfg))
