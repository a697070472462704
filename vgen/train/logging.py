"""Per-iteration metrics: JSONL (one object per line, the record of truth) and TensorBoard.

``metrics.jsonl`` is appended each iteration with one ``write`` system call per line on a file
opened for appending, so a killed run leaves whole lines (a kill cannot interrupt a small
regular-file write half-way in practice). A resumed run first drops lines past its
checkpoint's step, so the file reads as one uninterrupted run; a torn last line (a disk that
filled up, a crash of the machine) is dropped with a note instead of stopping the resume.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _step(row: dict) -> float:
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) else math.inf


class MetricLog:
    def __init__(self, run_dir: Path, start: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.is_file():  # keep only what the checkpoint being resumed had seen
            lines = [ln for ln in self.path.read_text(errors="replace").splitlines() if ln.strip()]
            rows = [(ln, _parse(ln)) for ln in lines]
            if torn := sum(r is None for _, r in rows):
                print(f"{self.path}: dropped {torn} unreadable line(s) (a run killed while writing)", flush=True)
            kept = [ln for ln, r in rows if r is not None and _step(r) <= start]
            from vgen.io import atomic_write_text

            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is a dependency; a broken install still gets the JSONL
                self.tb = None

    def write(self, step: int, metrics: dict) -> None:
        os.write(self.fd, (json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n").encode())
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        os.close(self.fd)
        if self.tb is not None:
            self.tb.close()
