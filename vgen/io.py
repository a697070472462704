"""Atomic file writes: every artefact is written to a temporary file, then renamed.

A run killed mid-write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_png(path: str | Path, image) -> None:
    """Save a PIL image or an (H, W, 3) uint8 array as PNG, atomically."""
    import io

    from PIL import Image

    im = image if hasattr(image, "save") else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def prepare_out_dir(path: str | Path, flag: str = "--out", empty_or_force: bool | None = None) -> Path:
    """The one check of an output folder, made before any expensive work, that leaves nothing
    behind: it is a folder, or can be made one, that this process can write into (and, with
    ``empty_or_force=False``, an empty one). A path that is a file or lies under one, an
    unwritable or virtual place (/proc), a name longer than the file system allows: one-line
    UserError. The folder itself is made by whoever writes into it."""
    from vgen.errors import UserError

    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {str(p)!r} exists and is not a folder")
        if empty_or_force is False and p.is_dir() and any(p.iterdir()):
            raise UserError(f"output folder {str(path)!r} is not empty; pass --force to write into it")
        base = p.absolute()
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise UserError(f"cannot write to {flag} {str(p)!r}: {str(base)!r} is a file")
        limit = os.pathconf(base, "PC_NAME_MAX")
        if any(len(part.encode()) > limit for part in p.absolute().parts):
            raise UserError(f"cannot write to {flag} {str(p)!r}: a name is longer than the file system allows "
                            f"({limit} bytes)")
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".vgen-write-test-"))  # can we create folders there?
    except OSError as e:
        raise UserError(f"cannot write to {flag} {str(p)!r}: {e.strerror or e}") from None
    return p
