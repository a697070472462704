"""Shared by the benchmarks: best-of-N timing (waiting for the GPU), a call's peak GPU memory, the device
in words, and writing a report."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def _done() -> None:
    """Wait for queued GPU work, so that a call's time is its work's (CUDA runs asynchronously)."""
    if torch.cuda.is_initialized():  # false until something ran on a GPU
        torch.cuda.synchronize()


def gpu_peak(device, fn) -> int | None:
    """The most GPU memory allocated during one call of ``fn`` (weights, caches and activations), or None
    when ``device`` is not a GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def where(device) -> str:
    """The device in words: the GPU's name, or the CPU and its threads."""
    d = torch.device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else f"{d.type}, {torch.get_num_threads()} threads"


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    _done()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _done()
        times.append(time.perf_counter() - t)
    return min(times)


def round_times(fns: dict, repeats: int) -> dict:
    """Seconds of every call of several functions, interleaved: after one untimed warm-up call of each,
    ``repeats`` rounds of one call of each, so that a slow spell of a noisy machine hits them alike."""
    for fn in fns.values():
        fn()
    _done()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            _done()
            times[k].append(time.perf_counter() - t)
    return times


def best_times(fns: dict, repeats: int) -> dict:
    """The fastest of each function's ``round_times``: the fair way to take their ratios."""
    return {k: min(v) for k, v in round_times(fns, repeats).items()}


def publish(run_dir: Path, report: dict, markdown: str) -> int:
    """Write report.json and report.md into the run directory (atomically) and print the markdown."""
    from vgen.io import atomic_write_json, atomic_write_text

    atomic_write_json(Path(run_dir) / "report.json", report)
    atomic_write_text(Path(run_dir) / "report.md", markdown)
    print(markdown)
    return 0
