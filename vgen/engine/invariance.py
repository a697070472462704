"""Batch-invariant inference on CPU: a sample's numbers do not depend on what else is in its batch.

What was measured (x86 CPU, MKL / oneDNN as in the PyPI torch wheel, 1 and 2 threads):
* ``F.linear`` rounds each output row the same way for any number of rows >= 12 (checked up to
  8192, hidden sizes 16 .. 6144), but takes another kernel below that (2 threads: most row counts
  under 12; 1 thread: 1 .. 3 rows), so a matmul with a handful of rows - a per-sample embedder, the
  first scales of a VAR - rounds differently alone and in a batch;
* ``conv2d`` changes kernel with the batch size (2 threads: batch 1 vs 2+ on small maps; 1 thread:
  any batch under 16 for the VQ-VAE decoder), while the per-image cost barely depends on the batch
  (official VQ-VAE decoder: 2.52 s per image alone, 3.09 s per image in a batch of 16);
* layer / group norm, interpolation, embedding lookups and the attention of the samplers gave the
  same rows in any batch - as long as the memory layout is the same: a (1, C, H, W) view whose
  strides also read as channels-last (a transposed attention output, say) sends ``conv2d`` and
  ``group_norm`` to their channels-last kernels, a (B, C, H, W) one does not.

So ``batch_invariant(*modules)`` pays only where rounding changes: every ``nn.Linear`` whose input
has fewer than ``MIN_ROWS`` rows (all leading axes together) runs on those rows padded to
``MIN_ROWS``, every ``nn.Conv2d`` runs one contiguous image at a time (always the same shape and
layout) and every ``nn.GroupNorm`` gets a contiguous input. Whole model
calls are not padded, so a batch of 1 costs about what it costs without the guarantee.

On CUDA nothing is done: cuBLAS / cuDNN choose kernels (tile sizes, split-K) by shape at every
size, so no padding rule makes results batch-independent there; samples then agree across
batches up to float rounding (tokens or pixels may occasionally differ). The tests check
bit-identity on CPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

MIN_ROWS = 16


def pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` with its last row repeated up to ``n`` rows (unchanged when it has that many)."""
    return t if t.shape[0] >= n else torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])])


def needed(device) -> bool:
    """Whether batch-invariance needs the hooks on this device (CPU only, see the module docstring)."""
    return torch.device(device).type == "cpu"


def _linear_forward(forward):
    def run(x, *args, **kwargs):
        rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
        if not 0 < rows < MIN_ROWS:
            return forward(x, *args, **kwargs)
        out = forward(pad_rows(x.reshape(rows, x.shape[-1]), MIN_ROWS), *args, **kwargs)
        return out[:rows].reshape(*x.shape[:-1], out.shape[-1])
    return run


def _conv_forward(forward):
    def run(x, *args, **kwargs):
        if x.dim() != 4:
            return forward(x, *args, **kwargs)
        # contiguous: the kernel also depends on the memory layout, which a batch of 1 can blur
        return torch.cat([forward(x[i:i + 1].contiguous(), *args, **kwargs) for i in range(x.shape[0])])
    return run


def _contiguous_forward(forward):
    def run(x, *args, **kwargs):
        return forward(x.contiguous(), *args, **kwargs)
    return run


def _kind(m: nn.Module):
    if isinstance(m, nn.Linear):
        return _linear_forward
    if isinstance(m, nn.Conv2d):
        return _conv_forward
    if isinstance(m, nn.GroupNorm):
        return _contiguous_forward
    return None


@contextmanager
def batch_invariant(*modules: nn.Module):
    """Inside the block, the ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GroupNorm`` layers of ``modules`` (on
    CPU) round every sample the same way in any batch: few-row matmuls padded, convolutions per
    image, 4-d inputs contiguous. Their
    ``forward`` is wrapped on the instance and restored on exit; weights and outputs are untouched."""
    wrapped = []
    for m in {id(s): s for mod in modules for s in mod.modules()}.values():
        kind = _kind(m)
        if kind is None or not needed(_device(m)) or getattr(m.forward, "batch_invariant", False):
            continue  # not a layer that needs it, or already wrapped by an enclosing block
        had = "forward" in m.__dict__
        wrapped.append((m, had, m.__dict__.get("forward")))
        m.forward = kind(m.forward)
        m.forward.batch_invariant = True
    try:
        yield
    finally:
        for m, had, old in reversed(wrapped):
            if had:
                m.forward = old
            else:
                del m.forward


def _device(m: nn.Module):
    p = next(m.parameters(recurse=False), None)
    return p.device if p is not None else "cpu"
