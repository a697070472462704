"""Per-sample seeded noise, independent of batch composition, chunking and device.

A sample's initial noise is drawn from its own CPU generator seeded with its seed, with
the shape (1, C, h, w): exactly what diffusers' pipelines draw when given
``generator=[torch.Generator().manual_seed(s) for s in seeds]``, so a vgen sample can be
reproduced with a plain diffusers call. SDE noise of step k comes from a generator seeded
with a mix of (seed, k), so it never overlaps the initial noise stream.
"""

from __future__ import annotations

import torch

_MASK = (1 << 63) - 1


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for step ``step`` of sample ``seed`` (splitmix64 finaliser)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(step) + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def _draw(seeds: list[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    out = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s) & _MASK)) for s in seeds]
    return torch.cat(out).to(device=device, dtype=dtype)


def initial_noise(seeds: list[int], shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal noise, row i from ``seeds[i]`` alone."""
    return _draw(seeds, shape, device, dtype)


def step_noise(seeds: list[int], step: int, shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, *shape) SDE noise for step ``step``, row i from ``(seeds[i], step)`` alone."""
    return _draw([step_seed(s, step) for s in seeds], shape, device, dtype)
