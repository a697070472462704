"""PyTorch datasets of the shapes world, rendered on the fly (deterministic per index).

``ShapesDataset``: items of one prompt split, categories balanced, for text-to-image.
``ShapesClassDataset``: class-conditional items; class ``c`` is ``CLASS_PROMPTS[c]``.
With ``conditions=True`` items also carry control maps (edges, instance mask, boxes).

Images are float tensors (3, H, W) in [0, 1]; trainers rescale as their model needs.
Item ``i`` of a dataset built with seed ``s`` uses scene seed ``s * 2**32 + i``, so two
datasets with different seeds never share a scene, and item ``i`` is the same every epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vgen.world.grammar import parse, sample_prompts
from vgen.world.scene import condition_maps, render, sample_scene
from vgen.world.vocab import CATEGORIES

# The classes of class-conditional models: 70 prompts covering all six categories
# (4 single, 6 two-object, 12 counting, 24 colours, 12 position, 12 colour-attribution).
# The order is part of the checkpoint format: never reorder, only append.
CLASS_PROMPTS = (
    "a photo of a circle",
    "a photo of a square",
    "a photo of a triangle",
    "a photo of a diamond",
    "a photo of a circle and a square",
    "a photo of a circle and a triangle",
    "a photo of a circle and a diamond",
    "a photo of a square and a triangle",
    "a photo of a square and a diamond",
    "a photo of a triangle and a diamond",
    "a photo of two circles",
    "a photo of three circles",
    "a photo of four circles",
    "a photo of two squares",
    "a photo of three squares",
    "a photo of four squares",
    "a photo of two triangles",
    "a photo of three triangles",
    "a photo of four triangles",
    "a photo of two diamonds",
    "a photo of three diamonds",
    "a photo of four diamonds",
    "a photo of a red circle",
    "a photo of an orange circle",
    "a photo of a yellow circle",
    "a photo of a green circle",
    "a photo of a blue circle",
    "a photo of a purple circle",
    "a photo of a red square",
    "a photo of an orange square",
    "a photo of a yellow square",
    "a photo of a green square",
    "a photo of a blue square",
    "a photo of a purple square",
    "a photo of a red triangle",
    "a photo of an orange triangle",
    "a photo of a yellow triangle",
    "a photo of a green triangle",
    "a photo of a blue triangle",
    "a photo of a purple triangle",
    "a photo of a red diamond",
    "a photo of an orange diamond",
    "a photo of a yellow diamond",
    "a photo of a green diamond",
    "a photo of a blue diamond",
    "a photo of a purple diamond",
    "a photo of a circle left of a square",
    "a photo of a circle above a square",
    "a photo of a circle left of a triangle",
    "a photo of a circle above a triangle",
    "a photo of a circle left of a diamond",
    "a photo of a circle above a diamond",
    "a photo of a square left of a triangle",
    "a photo of a square above a triangle",
    "a photo of a square left of a diamond",
    "a photo of a square above a diamond",
    "a photo of a triangle left of a diamond",
    "a photo of a triangle above a diamond",
    "a photo of a red circle and a yellow square",
    "a photo of an orange circle and a green triangle",
    "a photo of a yellow circle and a blue diamond",
    "a photo of a green square and a purple triangle",
    "a photo of a blue square and a red diamond",
    "a photo of a purple triangle and an orange diamond",
    "a photo of a green circle and an orange square",
    "a photo of a blue circle and a yellow triangle",
    "a photo of a purple circle and a green diamond",
    "a photo of a red square and a blue triangle",
    "a photo of an orange square and a purple diamond",
    "a photo of a yellow triangle and a red diamond",
)


def item_seed(seed: int, index: int) -> int:
    return int(seed) * 2**32 + int(index)


def render_item(prompt: str, seed: int, resolution: int, conditions: bool) -> dict:
    """One dataset item: the image of ``prompt`` from ``seed`` and, optionally, its control maps."""
    spec = parse(prompt)
    scene = sample_scene(spec, seed)
    image = torch.from_numpy(render(scene, resolution)).permute(2, 0, 1).float().div_(255.0)
    item = {"image": image, "prompt": prompt, "category": spec.category, "constraints": spec.constraints,
            "seed": seed}
    if conditions:
        maps = condition_maps(scene, resolution)
        item["edges"] = torch.from_numpy(maps["edges"]).float().div_(255.0)[None]
        item["mask"] = torch.from_numpy(maps["mask"])
        item["boxes"] = torch.from_numpy(maps["boxes"])
        item["labels"] = maps["labels"]
    return item


class ShapesDataset(Dataset):
    """``size`` items of prompt split ``split``: (image, prompt, category, constraints, seed)."""

    def __init__(self, split: str = "train", size: int = 10_000, resolution: int = 64, seed: int = 0,
                 categories: tuple[str, ...] = CATEGORIES, conditions: bool = False):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.prompts = sample_prompts(split, size, seed, tuple(categories))
        self.split, self.resolution, self.seed, self.conditions = split, resolution, seed, conditions

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return render_item(self.prompts[i], item_seed(self.seed, i), self.resolution, self.conditions)


class ShapesClassDataset(Dataset):
    """``size`` class-conditional items, classes in round robin; ``label`` indexes CLASS_PROMPTS."""

    num_classes = len(CLASS_PROMPTS)

    def __init__(self, size: int = 10_000, resolution: int = 64, seed: int = 0, conditions: bool = False):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.resolution, self.seed, self.conditions = size, resolution, seed, conditions

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        label = i % self.num_classes
        item = render_item(CLASS_PROMPTS[label], item_seed(self.seed, i), self.resolution, self.conditions)
        item["label"] = label
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors of equal shape; keep everything else (prompts, constraints, boxes) as lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
