"""FSDP2 sharding of a trained denoiser (torch's ``fully_shard``), and moving tensors in and out of it.

With sharding on, each process holds 1/world of every parameter, gradient and optimizer
moment, and gathers a block's full weights only while that block runs. Every forward and
backward is then a collective: all processes must make the same calls in the same order,
which the Sol-RL trainer arranges (equal micro-batch counts, evaluation split over all
processes). What leaves the sharded model (checkpoints, the explore copy's weights) is
gathered to full tensors first, so a checkpoint is the same file with or without sharding
and resumes under either.

Sharding is asked for with the recipe key ``fsdp: true``, or by ``accelerate launch`` with an
FSDP config (configs/accelerate/fsdp2.yaml), which sets ACCELERATE_USE_FSDP in the
environment; vgen applies FSDP2 itself (one unit per transformer block, then the root), so
the accelerate file's wrap settings are not read.
"""

from __future__ import annotations

import os

import torch

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")  # SD3 and SANA; FLUX has both


def requested(flag: bool) -> bool:
    """Sharding on: the recipe's flag, or an accelerate FSDP launch (refused unless FSDP2)."""
    from vgen.errors import UserError

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise UserError(f"vgen shards with FSDP2; the accelerate config asks for fsdp_version {version} "
                            "(set fsdp_version: 2, as configs/accelerate/fsdp2.yaml does)")
        return True
    return flag


def shard(model: torch.nn.Module, exact: bool = True) -> str:
    """``fully_shard`` each transformer block, then the root (embedders, norms, output head);
    gradients are summed over processes, not averaged: the trainer already weights each sample
    by the global sample count. ``exact``: gradients are reduced in float64, for :class:`GradSum`
    (each process adds its micro-batches up unsharded in float64, one reduce-scatter at the last).
    Returns a line saying the units and this process's weight memory."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    def mib(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    whole = mib(model.parameters())
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("0", "false")
    kw = {"reshard_after_forward": reshard}
    if exact:  # computing stays in the weights' dtype; only the gradient sum is float64
        kw["mp_policy"] = MixedPrecisionPolicy(reduce_dtype=torch.float64)
    units = 0
    for name in BLOCK_LISTS:
        for block in getattr(model, name, None) or []:
            fully_shard(block, **kw)
            units += 1
    fully_shard(model, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    local = mib(p.to_local() for p in model.parameters())
    return f"{units + 1} units; its weights take {local:.2f} MiB in this process of {whole:.2f} MiB whole"


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process must call it), or ``t`` itself."""
    return t.full_tensor() if is_sharded(t) else t


def like(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor ``t`` laid out as ``param`` is: this process's shard when ``param`` is sharded."""
    if not is_sharded(param):
        return t
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(param.dtype), param.device_mesh, param.placements)


class GradSum:
    """The backward passes of ``n`` micro-batches, their gradients added up so that the sum does
    not depend on how the samples are split over processes (``with GradSum(...) as backward:
    ... backward(loss)``).

    fp32 sums in another order round differently: a sharded step (FSDP adds each micro-batch's
    gradients over processes, then into the shard) and a one-process step (sample after sample)
    differed by ~1e-6 in the gradients, ~1e-5 in the weights after Adam, enough for the explore
    copy's NVFP4 re-quantization to give other explore rewards an iteration later. With ``exact``
    the micro-batch gradients are added up in float64 and rounded to the weights' dtype once:
    unsharded, hooks move each gradient into a float64 sum; sharded (``shard(..., exact=True)``),
    FSDP keeps each process's sum unsharded in float64 until the last micro-batch, which
    reduce-scatters it in float64. That holds a float64 copy of the trained weights' gradients
    whole in every process during the update: small for LoRA; a full fine-tune (``exact=False``)
    keeps fp32 sums, one reduce-scatter per micro-batch, equal to one process up to their order.
    Every process must make the same ``n`` calls (they are collectives when sharded)."""

    def __init__(self, model: torch.nn.Module, params: list[torch.Tensor], n: int, exact: bool = True):
        self.model, self.params, self.n, self.exact = model, params, n, exact
        self.sharded = bool(params) and is_sharded(params[0])
        self.calls, self.sums, self.hooks = 0, {}, []

    def _move(self, p: torch.Tensor) -> None:
        if p in self.sums:
            self.sums[p].add_(p.grad)
        else:
            self.sums[p] = p.grad.to(torch.float64)
        p.grad = None

    def __enter__(self):
        if self.exact and not self.sharded:
            self.hooks = [p.register_post_accumulate_grad_hook(self._move) for p in self.params]
        return self.backward

    def backward(self, loss: torch.Tensor) -> None:
        if self.sharded and self.exact:
            self.model.set_requires_gradient_sync(self.calls == self.n - 1)  # reduce at the last one only
        self.calls += 1
        loss.backward()

    def __exit__(self, kind, value, tb) -> None:
        for h in self.hooks:
            h.remove()
        if self.sharded:
            self.model.set_requires_gradient_sync(True)
        for p, total in self.sums.items():  # rounded once
            p.grad = total.to(p.dtype)
        if kind is None and self.sharded and self.calls != self.n:
            raise RuntimeError(f"{self.calls} backward passes of the {self.n} announced: gradients not reduced")


@torch.no_grad()
def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` whose norm, for sharded gradients, is bitwise the one an
    unsharded run gets (a collective when sharded: every process must call it).

    torch's own call on sharded gradients sums per-shard norms over processes, which rounds
    differently from the norm of the whole tensor: the clip factor then differs in its last bit,
    every weight by an ulp after the step, and the explore copy's NVFP4 re-quantization turns
    that into other explore rewards and other selected samples (a sharded run drifted from the
    one-process run from iteration 2 on). Here each sharded gradient's norm is taken over its
    full tensor (gathered one at a time), in the order and with the kernels torch uses for
    unsharded ones, and the shards are scaled by the same factor. Unsharded, torch's own call."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(is_sharded(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    groups: dict[tuple, list[torch.Tensor]] = {}  # torch's grouping by (device, dtype), one group in practice
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms = [torch._foreach_norm([full(g)], 2.0)[0] for group in groups.values() for g in group]
    total = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g.to_local() if is_sharded(g) else g).mul_(coef.to(g.device))
    return total


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with every sharded moment gathered: the same layout as an unsharded run's."""
    sd = opt.state_dict()
    sd["state"] = {i: {k: full(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                   for i, s in sd["state"].items()}
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, params: list[torch.Tensor], sd: dict) -> None:
    """Load a full optimizer state (see :func:`full_optimizer_state`), sharding each moment as its parameter."""
    opt.load_state_dict(sd)
    for p in params:
        state = opt.state.get(p, {})
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and not is_sharded(v):
                state[k] = like(v, p)
