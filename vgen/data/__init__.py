"""Datasets the training recipes read: the built-in shapes world and ImageNet-layout image folders.

:func:`open_class_dataset` turns a recipe's ``data`` setting into a class-conditional dataset
(items ``{"image": float32 (3, R, R) in [0, 1], "label": int, ...}``) and :func:`class_names`
gives what each class id means (the prompts a VAR model folder stores for ``vgen sample``).
"""

from __future__ import annotations

from vgen.data.imagefolder import IMAGE_EXTENSIONS, ImageFolderClasses

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderClasses", "class_names", "open_class_dataset"]


def open_class_dataset(spec: str, resolution: int, size: int, seed: int, flip: bool = False,
                       on_error: str = "raise"):
    """``"shapes"``: ``ShapesClassDataset(size, resolution, seed)`` (``flip`` / ``on_error`` unused:
    the world renders its own scenes). Anything else is the path of an image folder:
    ``ImageFolderClasses(spec, resolution, flip, on_error)``, whose items are the files there,
    so ``size`` and ``seed`` are not used (its flips are drawn by ``flip_for(i, seed, step)``)."""
    if spec == "shapes":
        from vgen.world.datasets import ShapesClassDataset

        return ShapesClassDataset(size, resolution, seed)
    return ImageFolderClasses(spec, resolution, flip, on_error)


def class_names(dataset) -> list[str]:
    """What class ``c`` of ``dataset`` means: ``CLASS_PROMPTS`` for the shapes world, the class
    folder names for an image folder."""
    if isinstance(dataset, ImageFolderClasses):
        return list(dataset.classes)
    from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset

    if isinstance(dataset, ShapesClassDataset):
        return list(CLASS_PROMPTS)
    raise TypeError(f"no class names for {type(dataset).__name__}")
