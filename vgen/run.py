"""Run directories: where a job writes its resolved config, logs, reports and images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vgen.config import param


@dataclass
class RunConfig:
    name: str | None = param(None, help="run directory name; default: <recipe>-<date>-<time>")
    out_dir: str = param("runs", help="parent folder of run directories")
    seed: int = param(0, ge=0, help="seed of every random choice the job makes")


def create_run_dir(run: RunConfig, recipe: str) -> Path:
    """Make a fresh run directory and record its name in ``run.name``.

    An existing directory is never reused: re-running a saved config writes ``NAME-2``,
    ``NAME-3``, ... beside it, so earlier results are never overwritten.
    """
    base = run.name or f"{recipe.replace('.', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = Path(run.out_dir)
    path, k = parent / base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            k += 1
            path = parent / f"{base}-{k}"
    run.name = path.name
    return path
