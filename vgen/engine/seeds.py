"""Per-sample seeded noise, independent of batch composition, chunking and device.

A sample's initial noise is drawn from its own CPU generator seeded with its seed, with
the shape (1, C, h, w): exactly what diffusers' pipelines draw when given
``generator=[torch.Generator().manual_seed(generator_seed(s)) for s in seeds]`` (which is
``manual_seed(s)`` for seeds below 2**32), so a vgen sample can be reproduced with a plain
diffusers call. SDE noise of step k comes from a generator seeded
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


def generator_seed(seed: int) -> int:
    """The seed given to a torch CPU generator for sample seed ``seed``.

    torch's CPU generator (mt19937) keeps only the low 32 bits of its seed, so seeds 2**32
    apart (``item_seed(s, i)`` for different s) would draw the same noise. Seeds below 2**32
    are used as they are (diffusers' ``manual_seed(s)`` gives the same noise); larger ones are
    hashed to 32 bits, where a collision with another seed of a run is a 1-in-2**32 event."""
    seed = int(seed)
    return seed if 0 <= seed < 1 << 32 else step_seed(seed, -1) & 0xFFFFFFFF


def _draw(seeds: list[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    out = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(generator_seed(s))) for s in seeds]
    return torch.cat(out).to(device=device, dtype=dtype)


def initial_noise(seeds: list[int], shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal noise, row i from ``seeds[i]`` alone."""
    return _draw(seeds, shape, device, dtype)


def step_noise(seeds: list[int], step: int, shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, *shape) SDE noise for step ``step``, row i from ``(seeds[i], step)`` alone."""
    return _draw([step_seed(s, step) for s in seeds], shape, device, dtype)
