"""What the VAR recipes train on: batches drawn from (seed, step) alone, label drops, FlexVAR's
random scale lists, and token data (the shapes world or an image folder, optionally tokenized
once) with held-out items. Shared by every VAR-family recipe."""

from __future__ import annotations

import numpy as np
import torch

from vgen.errors import UserError
from vgen.vartrain.losses import tokenize


def batch_indices(seed: int, step: int, batch: int, size: int) -> list[int]:
    """The global batch of step ``step``: uniform draws (with replacement) from (seed, step) alone."""
    return np.random.default_rng([seed, step, 7]).integers(0, size, batch).tolist()


def label_drops(seed: int, step: int, batch: int, rate: float) -> list[bool]:
    """Which samples of the global batch of step ``step`` train as the null class (CFG label
    dropout): from (seed, step) alone, like the batch itself, so every process and micro-batch
    drops the samples one process would."""
    if rate <= 0:
        return [False] * batch
    return (np.random.default_rng([seed, step, 11]).random(batch) < rate).tolist()


def flex_scale_list(seed: int, step: int, patch_nums, max_mid: int = 3) -> tuple[int, ...]:
    """The scale list of step ``step`` when a FlexVAR trains on random scale lists (from (seed, step)
    alone, so every process and micro-batch uses the same one).

    vgen's rule, after FlexVAR's (fixed small scales, random middle ones, the final size): the
    model's first two sizes and its last size are always in; between them, a uniformly random
    set of 1..``max_mid`` distinct sizes from every integer strictly between the second and the
    last (not only the model's own list). With the tiny base (1, 2, ..., 8) and max_mid = 3 the
    lists hold 4-6 scales, so the full 8-scale list (and 1, 2, 8) are never seen in training:
    sampling there tests scale generalisation."""
    pns = tuple(int(p) for p in patch_nums)
    if len(pns) < 3:
        return pns
    pool = list(range(pns[1] + 1, pns[-1]))
    if not pool:
        return pns
    rng = np.random.default_rng([seed, step, 13])
    n = int(rng.integers(1, min(max_mid, len(pool)) + 1))
    mid = sorted(rng.choice(pool, size=n, replace=False).tolist())
    return (*pns[:2], *mid, pns[-1])


def tokenize_dataset(vqvae, dataset, chunk: int = 256, progress: bool = False, patch_nums=None) -> list[torch.Tensor]:
    """Per-scale tokens (N, pn^2) of every item, in fixed chunks (the same tokens every run)."""
    from tqdm.auto import tqdm

    out = []
    for lo in tqdm(range(0, len(dataset), chunk), desc="tokenizing", disable=not progress):
        images = torch.stack([dataset[i]["image"] for i in range(lo, min(lo + chunk, len(dataset)))])
        out.append([t.cpu() for t in tokenize(vqvae, images, patch_nums)])
    return [torch.cat(parts) for parts in zip(*out)]


class Data:
    """Tokens and labels by dataset index: from a one-off cache, or rendered and tokenized on demand.

    A non-residual (FlexVAR) tokenizer quantizes every size independently, so its cache holds
    the tokens of every size 1..last and any scale list is a selection from it."""

    def __init__(self, vqvae, ds, cache: bool, progress: bool = False, ids: list[int] | None = None,
                 flip_seed: int | None = None):
        self.vqvae, self.ds = vqvae, ds
        self.ids = list(range(len(ds))) if ids is None else list(ids)  # item j of this Data = ds[ids[j]]
        self.flip_seed = flip_seed  # image folders with flips: flip of item i at step t from (seed, t, i)
        last = vqvae.patch_nums[-1]
        self.sizes = tuple(vqvae.patch_nums) if vqvae.residual else tuple(range(1, last + 1))
        self.cache = self.flipped = None
        if cache:
            self.cache = tokenize_dataset(vqvae, _Items(self), progress=progress, patch_nums=self.sizes)
            if flip_seed is not None:  # both orientations, so a flip is a lookup
                self.flipped = tokenize_dataset(vqvae, _Items(self, True), progress=progress, patch_nums=self.sizes)

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, j: int) -> int:
        i = self.ids[j]
        return self.ds.label(i) if hasattr(self.ds, "label") else i % self.ds.num_classes

    def image(self, j: int, flip: bool = False) -> torch.Tensor:
        i = self.ids[j]
        return self.ds.item(i, flip)["image"] if hasattr(self.ds, "item") else self.ds[i]["image"]

    def get(self, idx: list[int], device, patch_nums=None, step: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
        pns = tuple(patch_nums or self.vqvae.patch_nums)
        labels = torch.tensor([self.label(j) for j in idx], device=device)
        flips = [self.flip_seed is not None and self.ds.flip_for(self.ids[j], self.flip_seed, step) for j in idx]
        if self.cache is not None and (not self.vqvae.residual or pns == self.sizes):
            rows = torch.tensor(idx)
            out = []
            for pn in pns:
                t = self.cache[self.sizes.index(pn)][rows]
                if any(flips):
                    t = torch.where(torch.tensor(flips)[:, None], self.flipped[self.sizes.index(pn)][rows], t)
                out.append(t.to(device))
            return out, labels
        images = torch.stack([self.image(j, f) for j, f in zip(idx, flips)])
        return [t.to(device) for t in tokenize(self.vqvae, images, pns)], labels


class _Items:
    """A Data's items as a dataset of {"image"} (optionally all flipped), for tokenizing."""

    def __init__(self, data: Data, flip: bool = False):
        self.data, self.flip = data, flip

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int) -> dict:
        return {"image": self.data.image(j, self.flip)}


def open_data(cfg, vqvae, main: bool) -> tuple[Data, Data | None, list[str]]:
    """(training data, held-out data on the main process, class names) of ``cfg.data``."""
    from vgen.data import class_names, open_class_dataset

    on_error = "skip" if cfg.skip_bad_images else "raise"
    ds = open_class_dataset(cfg.data, cfg.resolution, cfg.data_size, cfg.data_seed, cfg.flip, on_error)
    names = class_names(ds)
    if cfg.data == "shapes":
        train = Data(vqvae, ds, cfg.cache_tokens, cfg.progress and main)
        val = open_class_dataset("shapes", cfg.resolution, cfg.val_size, cfg.data_seed + 1)
        return train, (Data(vqvae, val, cfg.cache_tokens) if main else None), names
    if getattr(ds, "skipped", None) and main:
        print(f"skipped {len(ds.skipped)} unreadable images in {cfg.data}", flush=True)
    flip_seed = cfg.run.seed if cfg.flip else None
    if cfg.val_data is None:
        train_ids = [i for i in range(len(ds)) if i % 20]
        val_ids = [i for i in range(len(ds)) if not i % 20][:cfg.val_size]
        train = Data(vqvae, ds, cfg.cache_tokens, cfg.progress and main, train_ids, flip_seed)
        return train, (Data(vqvae, ds, cfg.cache_tokens, ids=val_ids) if main and val_ids else None), names
    vds = open_class_dataset(cfg.val_data, cfg.resolution, cfg.val_size, 0, False, on_error)
    if class_names(vds) != names:
        raise UserError(f"val_data {cfg.val_data!r} has other classes than data {cfg.data!r}")
    train = Data(vqvae, ds, cfg.cache_tokens, cfg.progress and main, None, flip_seed)
    val = Data(vqvae, vds, cfg.cache_tokens, ids=list(range(min(len(vds), cfg.val_size)))) if main else None
    return train, val, names


