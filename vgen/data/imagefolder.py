"""Class-conditional images from an ImageNet-layout folder: ``ROOT/CLASS/.../IMAGE``.

Class ids are the positions of the class folder names in sorted order (``classes``); a class's
images are found recursively in its folder (extensions in :data:`IMAGE_EXTENSIONS`, any case;
hidden files and folders, names starting with ``.``, are skipped) and listed in sorted path
order, so two constructions over the same tree index the same items. Files directly in ROOT
are ignored.

Preprocessing is that of the ADM / VAR ImageNet-256 pipelines (guided-diffusion's
``center_crop_arr``): convert to RGB (alpha dropped, palette and grayscale expanded), halve the
image with a box filter while its shorter side is at least twice ``resolution``, resize with
bicubic so the shorter side is ``resolution`` (the longer one rounded), then take the centre
``resolution`` x ``resolution`` square (offsets rounded down). EXIF orientation is not applied,
as in the reference pipelines.

Flips. An item's flip is an argument, never global random state: :meth:`ImageFolderClasses.item`
takes ``flip: bool``, and :meth:`ImageFolderClasses.flip_for` gives the flip of index ``i`` at
step ``step`` of a run seeded ``seed`` as a hash of (seed, step, i) alone (always False when
the dataset was built with ``flip=False``). A training loop calls
``ds.item(i, ds.flip_for(i, seed, step))`` and a resumed run flips exactly as an
uninterrupted one. ``ds[i]`` is ``ds.item(i, ds.flip_for(i, ds.seed, ds.step))`` with the
attributes ``seed`` / ``step`` (both 0 unless set, see :meth:`set_step`), for a DataLoader.

Unreadable images. ``on_error="raise"`` (default) lists files without opening them; a file
that fails to decode raises a one-line :class:`UserError` naming it when its item is loaded.
Call :meth:`scan` to check every file up front. ``on_error="skip"`` runs :meth:`scan` in the
constructor: every file is opened once (PIL ``verify()``: header and, for PNG, chunk CRCs;
no pixel decoding) and the ones that fail are dropped from the index before any item is
served, so indices stay deterministic; their paths are in ``skipped`` (sorted). A file that
passes the scan but fails when decoded (e.g. a truncated JPEG, whose data ``verify()`` does
not read) still raises a one-line :class:`UserError` at load time: indices never shift
silently during training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vgen.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ON_ERROR = ("raise", "skip")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, symlinks followed, hidden entries skipped), sorted."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(top, f) for f in files if is_image_file(f))
    return sorted(found)


def center_crop_resize(img, resolution: int):
    """ADM's ``center_crop_arr`` on a PIL image: box-halve while the shorter side is >= 2 *
    ``resolution``, bicubic-resize the shorter side to ``resolution``, crop the centre square.
    Returns an (R, R, C) uint8 array."""
    from PIL import Image

    while min(img.size) >= 2 * resolution:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution].copy()


def _mix(seed: int, step: int, index: int) -> int:
    from vgen.engine.seeds import step_seed

    return step_seed(step_seed(seed, step), index)


class ImageFolderClasses(Dataset):
    """Images of ``root/<class>/**`` as class-conditional items.

    ``ds[i]`` / ``ds.item(i, flip)`` -> ``{"image": float32 (3, R, R) in [0, 1], "label": int,
    "path": str}``. ``classes`` (= ``class_prompts``): the class folder names, class ``c`` is
    ``classes[c]``; ``labels``: the label of every index; ``skipped``: the paths dropped by
    ``on_error="skip"``. See the module docstring for flips and unreadable files."""

    def __init__(self, root, resolution: int, flip: bool = False, on_error: str = "raise", seed: int = 0):
        if on_error not in ON_ERROR:
            raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if int(resolution) < 1:
            raise UserError(f"resolution must be >= 1, got {resolution}")
        self.root, self.resolution, self.flip, self.on_error = Path(root), int(resolution), bool(flip), on_error
        self.seed, self.step = int(seed), 0
        if not self.root.exists():
            raise UserError(f"image folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise UserError(f"image folder {str(self.root)!r} is not a directory")
        self.classes: list[str] = sorted(p.name for p in self.root.iterdir()
                                         if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise UserError(f"no class subfolders in {str(self.root)!r} (expected ROOT/CLASS/IMAGE files)")
        self.paths: list[str] = []
        self.labels: list[int] = []
        for c, name in enumerate(self.classes):
            files = list_images(self.root / name)
            if not files:
                raise UserError(f"class folder {str(self.root / name)!r} has no images "
                                f"({' '.join(IMAGE_EXTENSIONS)})")
            self.paths += files
            self.labels += [c] * len(files)
        self.skipped: list[str] = []
        if on_error == "skip":
            self.scan()

    # ------------------------------------------------------------ metadata

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_prompts(self) -> list[str]:
        """What class ``c`` means, for a VAR model folder: the class folder names."""
        return list(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return self.labels[i]

    # ------------------------------------------------------------ validation

    def scan(self) -> list[str]:
        """Open every listed file once (PIL ``verify()``). With ``on_error="raise"`` the first bad
        file raises a one-line UserError; with ``"skip"`` bad files are dropped from the index
        (added to ``skipped``) and a class left with no images raises. Returns the paths skipped
        by this call."""
        from PIL import Image

        bad = []
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as e:  # PIL raises many types for bad files: the file's fault, not ours
                if self.on_error == "raise":
                    raise UserError(f"cannot read image {path!r}: {_why(e)}") from None
                bad.append(path)
        if bad:
            drop = set(bad)
            kept = [(p, c) for p, c in zip(self.paths, self.labels) if p not in drop]
            self.paths, self.labels = [p for p, _ in kept], [c for _, c in kept]
            self.skipped = sorted(self.skipped + bad)
            empty = sorted(set(range(self.num_classes)) - set(self.labels))
            if empty:
                raise UserError(f"class folder {str(self.root / self.classes[empty[0]])!r} has no readable images "
                                f"({len(empty)} such class{'es' if len(empty) > 1 else ''})")
        return bad

    # ------------------------------------------------------------ items

    def flip_for(self, i: int, seed: int, step: int) -> bool:
        """Whether index ``i`` is mirrored at step ``step`` of a run seeded ``seed``: a hash of the
        three (a fair coin over indices), False when the dataset was built with ``flip=False``."""
        return self.flip and bool(_mix(seed, step, i) & 1)

    def set_step(self, step: int, seed: int | None = None) -> None:
        """Set the (seed, step) that ``ds[i]`` flips by (like a sampler's ``set_epoch``)."""
        self.step = int(step)
        if seed is not None:
            self.seed = int(seed)

    def load(self, i: int):
        """The preprocessed (R, R, 3) uint8 array of index ``i``, unflipped."""
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")  # decodes the whole file: truncated / corrupt data fails here
        except Exception as e:  # see scan()
            raise UserError(f"cannot read image {path!r}: {_why(e)}") from None
        return center_crop_resize(img, self.resolution)

    def item(self, i: int, flip: bool = False) -> dict:
        """Item ``i``, mirrored left-right when ``flip``."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        arr = self.load(i)
        if flip:
            arr = arr[:, ::-1].copy()
        image = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return {"image": image, "label": self.labels[i], "path": self.paths[i]}

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return self.item(i, self.flip_for(i, self.seed, self.step))

    def __repr__(self) -> str:
        return (f"ImageFolderClasses({str(self.root)!r}, resolution={self.resolution}, {len(self)} images, "
                f"{self.num_classes} classes, flip={self.flip}, skipped={len(self.skipped)})")


def _why(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
