"""Datasets: deterministic items from the right split, class lists, condition maps, batching."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset, ShapesDataset, collate
from vgen.world.grammar import parse, split_of
from vgen.world.verifier import verify
from vgen.world.vocab import CATEGORIES


def test_items_are_deterministic_and_from_their_split():
    ds = ShapesDataset("val", size=24, seed=1)
    a, b = ds[5], ShapesDataset("val", size=24, seed=1)[5]
    assert torch.equal(a["image"], b["image"]) and a["prompt"] == b["prompt"] and a["seed"] == b["seed"]
    assert a["image"].shape == (3, 64, 64) and a["image"].dtype == torch.float32
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    assert a["constraints"] == parse(a["prompt"]).constraints
    assert all(split_of(ds[i]["prompt"]) == "val" for i in range(len(ds)))
    other = ShapesDataset("val", size=24, seed=2)
    assert not torch.equal(ds[0]["image"], other[0]["image"])


def test_items_pass_the_verifier():
    ds = ShapesDataset("train", size=48, seed=0, resolution=96)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (48, 3, 96, 96)
    assert all(v.strict for v in verify(batch["image"], batch["prompt"]))


def test_class_prompts_cover_every_category_and_are_fixed():
    assert len(CLASS_PROMPTS) == 70 and len(set(CLASS_PROMPTS)) == 70
    cats = [parse(p).category for p in CLASS_PROMPTS]
    assert set(cats) == set(CATEGORIES)
    assert CLASS_PROMPTS[0] == "a photo of a circle"
    assert CLASS_PROMPTS[-1] == "a photo of a yellow triangle and a red diamond"
    ds = ShapesClassDataset(size=140, seed=0)
    labels = [ds[i]["label"] for i in range(140)]
    assert labels == [i % 70 for i in range(140)]
    items = [ds[i] for i in range(0, 140, 7)]
    assert all(v.strict for v in verify(torch.stack([it["image"] for it in items]), [it["prompt"] for it in items]))
    assert all(it["prompt"] == CLASS_PROMPTS[it["label"]] for it in items)


def test_condition_maps_in_a_dataloader():
    ds = ShapesDataset("train", size=8, seed=0, conditions=True)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["edges"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert isinstance(batch["boxes"], list) and isinstance(batch["prompt"], list)
    assert batch["seed"].dtype == torch.int64
    for boxes, mask, labels in zip(batch["boxes"], batch["mask"], batch["labels"]):
        assert len(boxes) == len(labels) == int(mask.max())
        assert np.isin(np.unique(mask.numpy()), np.arange(len(labels) + 1)).all()
