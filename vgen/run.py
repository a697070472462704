"""Run directories: where a job writes its resolved config, logs, reports and images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vgen.config import ConfigError, _show, param


@dataclass
class RunConfig:
    name: str | None = param(None, help="run directory name, a plain folder name inside out_dir (no '/', '\\' or "
                             "'..'); default: <recipe>-<date>-<time>")
    out_dir: str = param("runs", help="parent folder of run directories ('.' for the current one; never empty)")
    seed: int = param(0, ge=0, help="seed of every random choice the job makes (0 <= seed < 2**32)")

    def check(self) -> None:
        """A run directory is always ``out_dir/name`` with ``name`` one folder: an empty ``out_dir``
        (the current directory, unasked) and names that leave ``out_dir`` are refused."""
        if not self.out_dir.strip():
            raise ConfigError("'run.out_dir' is empty: give the parent folder of run directories "
                              "(e.g. runs, or . for the current directory)")
        name = self.name
        if name is None:
            return
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
            raise ConfigError(f"'run.name' = {_show(name)} must be a plain folder name (not empty, no '/' or '\\', "
                              "not '.' or '..'): the run is written to out_dir/name")


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
