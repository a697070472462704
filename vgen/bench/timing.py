"""Shared by the benchmarks: best-of-N timing, and writing a report."""

from __future__ import annotations

import time
from pathlib import Path


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def publish(run_dir: Path, report: dict, markdown: str) -> int:
    """Write report.json and report.md into the run directory (atomically) and print the markdown."""
    from vgen.io import atomic_write_json, atomic_write_text

    atomic_write_json(Path(run_dir) / "report.json", report)
    atomic_write_text(Path(run_dir) / "report.md", markdown)
    print(markdown)
    return 0
