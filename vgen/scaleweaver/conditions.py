"""Condition images for ScaleWeaver: the world's own maps, user files, and the control run of a batch.

A condition image is drawn in the world's own palette: dark ink (``INK``) on the world's background,
edges as lines and masks as filled silhouettes, so that the model's VQ-VAE (trained on shapes
renders) keeps their layout when it tokenizes them; white-on-black maps are far outside what it
saw and lose it. A user's file follows the same convention (dark on light), at the model's
resolution, grey or RGB.
"""

from __future__ import annotations

import math
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


def condition_guidance(sampling: dict, cfg: float, cfg_control: float | None = None) -> float:
    """The guidance scale on the condition: ``cfg_control`` when given, else the model folder's
    ``cfg_control``, else ``cfg`` (one guidance on class and condition together) unless the folder's
    ``guide_control`` is false (the class alone: 0)."""
    if cfg_control is not None:
        return float(cfg_control)
    if sampling.get("cfg_control") is not None:
        return float(sampling["cfg_control"])
    return float(cfg) if sampling.get("guide_control", True) else 0.0


def control_run(var, vqvae, images: torch.Tensor, cfg: float, cfg_control: float | None = None, patch_nums=None):
    """The ``ControlRun`` that samples B images under ``images`` (B, 3, H, W), with guidance ``cfg``
    on the class and ``cfg_control`` (default: ``cfg``) on the condition, multi-modal CFG on the
    sampler's ramp: l(y, c) + t (l(y, c) - l(0, c)) + t_c (l(0, c) - l(0, 0)), 0 the null class or no
    condition. Equal scales, or a zero one, need only the samples and their null-class twins (2B rows,
    l(0, 0) or l(0, c) as the null); other scales add a third copy of the rows."""
    from vgen.scaleweaver.adapter import ControlRun, condition_latent

    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"condition images must be (B, 3, H, W), got {tuple(images.shape)}")
    tc = float(cfg if cfg_control is None else cfg_control)
    if not (tc >= 0 and math.isfinite(tc)):
        raise UserError(f"the condition's guidance (cfg_control) must be finite and >= 0, got {tc}")
    B = images.shape[0]
    if tc == cfg or tc == 0:  # the null rows drop the condition when it is guided
        copies, keep = (2 if cfg else 1), torch.ones(2 * B if cfg else B)
        keep[B:] = 0.0 if tc else 1.0
        tc = None
    else:  # [class + condition, null + condition, null alone]
        copies, keep = 3, torch.cat([torch.ones(2 * B), torch.zeros(B)])
    dev = var.head.weight.device
    lat = condition_latent(vqvae, images.to(dev))
    return ControlRun(var, lat, keep.to(dev), var.check_patch_nums(patch_nums), copies=copies, cfg_control=tc)
