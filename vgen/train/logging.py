"""Per-iteration metrics: JSONL (one object per line, the record of truth) and TensorBoard.

``metrics.jsonl`` is appended and flushed each iteration; a resumed run first drops lines
past its checkpoint's step, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricLog:
    def __init__(self, run_dir: Path, start: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.is_file():  # keep only what the checkpoint being resumed had seen
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= start]
            from vgen.io import atomic_write_text

            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.f = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is a dependency; a broken install still gets the JSONL
                self.tb = None

    def write(self, step: int, metrics: dict) -> None:
        self.f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
