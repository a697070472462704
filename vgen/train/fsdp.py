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


def shard(model: torch.nn.Module) -> str:
    """``fully_shard`` each transformer block, then the root (embedders, norms, output head);
    gradients are summed over processes, not averaged: the trainer already weights each sample
    by the global sample count. Returns a line saying the units and this process's weight memory."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    def mib(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    whole = mib(model.parameters())
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("0", "false")
    units = 0
    for name in BLOCK_LISTS:
        for block in getattr(model, name, None) or []:
            fully_shard(block, reshard_after_forward=reshard)
            units += 1
    fully_shard(model, reshard_after_forward=reshard)
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
