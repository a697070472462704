"""Pieces every training loop uses, written once: the "every N steps" rule, the learning-rate
schedule, the gradient step, where a run resumes from, and the RNG state a checkpoint keeps.

Recipes stay plain loops that call these; there is no Trainer class (DESIGN: copy a loop rather
than inherit one).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vgen.errors import UserError

RESUME_CHOICES = ("auto", "never")
RESUME_HELP = ("auto: continue the run named run.name from its newest checkpoint; never: start afresh; "
               "or the path of a checkpoint (or run) to start from, with the same config")


def due(every: int, step: int, last: int) -> bool:
    """The one "every N steps" rule of every recipe (eval, samples, checkpoints, logs): at each
    multiple of ``every`` and always at the last step; ``every = 0`` means at the last step only."""
    return step == last or (every > 0 and step % every == 0)


def lr_at(step: int, lr: float, iterations: int, warmup: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate of (1-based) step ``step``: linear warm-up, then decay to ``min_lr_ratio * lr``
    at the last step. A function of the step alone, so a resumed run needs no scheduler state."""
    if warmup and step <= warmup:
        return lr * step / warmup
    if schedule == "constant" or iterations <= warmup:
        return lr
    t = min(1.0, (step - warmup) / max(1, iterations - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * shape)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr``, times its ``lr_scale`` where it has one."""
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr


def grad_step(dist, params: list[torch.Tensor], opt: torch.optim.Optimizer, sums: torch.Tensor,
              grad_clip: float, guard: list[torch.Tensor] | None = None, guard_weight: float = 1.0) -> dict:
    """Sum the gradients (each process weighted its share already) and the statistics ``sums``
    over processes, clip, step. FSDP-sharded parameters were summed by FSDP itself. A non-finite
    gradient norm drops the whole update (``skipped_update``) and never reaches the weights. A
    parameter with no gradient takes part as zeros, so every process sums the same tensors.

    ``guard`` (one tensor per parameter, summed apart from ``p.grad``): a gradient the update must
    not oppose. After the sums, :func:`project_conflict` takes from the gradients their component
    against it and adds ``guard_weight`` x it; the projection sees the whole batch's gradients, so
    2 processes still equal 1."""
    from vgen.train.fsdp import clip_grad_norm_, full, is_sharded

    for p in params:
        if p.grad is None and not is_sharded(p):
            p.grad = torch.zeros_like(p)
    if guard is not None and any(is_sharded(p) for p in params):
        raise UserError("a guarded gradient step needs whole parameters; it does not run with FSDP sharding")
    dist.sum_([p.grad for p in params if not is_sharded(p)] + (guard or []) + [sums])
    out = {} if guard is None else project_conflict([p.grad for p in params], guard, guard_weight)
    norm = full(clip_grad_norm_(params, grad_clip))  # sharded: the norm an unsharded run gets, to the bit
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return {**out, "grad_norm": float(norm), "skipped_update": 1}
    opt.step()
    return {**out, "grad_norm": float(norm)}


def project_conflict(grads: list[torch.Tensor], guard: list[torch.Tensor], weight: float) -> dict:
    """Gradient surgery in place (PCGrad, Yu et al. 2020; NASViT's rule for a supernet's subnets):
    when g (``grads``, flattened over every tensor) points against h (``guard``), g loses its
    component along h, g <- g - (g.h / |h|^2) h; then g <- g + weight x h. To first order a plain
    gradient step then never raises the guard's loss, however the two are weighted (an adaptive
    optimizer rescales each weight's step, so there it holds only roughly). Returns the cosine
    of g and h before the projection and whether it projected (``guard_cos``, ``projected``)."""
    dot = sum(torch.sum(g.double() * h.double()) for g, h in zip(grads, guard))
    gg = sum(torch.sum(g.double() ** 2) for g in grads)
    hh = sum(torch.sum(h.double() ** 2) for h in guard)
    cos = float(dot / (gg.sqrt() * hh.sqrt())) if gg > 0 and hh > 0 else 0.0
    c = float(dot / hh) if dot < 0 else 0.0  # NaN dot: no projection, the non-finite norm drops the step
    for g, h in zip(grads, guard):
        g.add_(h, alpha=weight - c)
    return {"guard_cos": cos, "projected": float(c != 0.0)}


def check_resume(value: str) -> None:
    """``resume`` is ``auto``, ``never`` or an existing checkpoint / run path; anything else is refused."""
    if value in RESUME_CHOICES:
        return
    p = Path(value)
    if not (p / "meta.json").is_file() and not (p / "checkpoints" / "latest").is_file():
        raise UserError(f"resume={value!r}: choose auto, never, or the path of a checkpoint "
                        "(RUN/checkpoints/step-N) or of a run with one")


def resume_from(value: str, run_dir: Path, config: dict) -> Path | None:
    """The checkpoint a run starts from: its own newest (``auto``), none (``never``), or the one a
    path names (a checkpoint folder, or a run's newest), which must have been written under the
    same config (the keys that decide what is trained; see checkpoint.resumable)."""
    from vgen.train.checkpoint import config_hash, latest_checkpoint, read_meta

    check_resume(value)
    if value == "never":
        return None
    if value == "auto":
        return latest_checkpoint(run_dir)
    p = Path(value)
    ckpt = p if (p / "meta.json").is_file() else latest_checkpoint(p)
    if read_meta(ckpt).get("config_hash") != config_hash(config):
        raise UserError(f"resume={value!r}: that checkpoint was trained with another config")
    return ckpt


def rng_state() -> dict:
    """The torch RNG states a checkpoint keeps (CPU, and every CUDA device when there is one)."""
    state = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        saved = state["cuda_rng"]
        saved = [saved] if saved.dim() == 1 else list(saved)
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # another GPU count: the current device's state, as before
            torch.cuda.set_rng_state(saved[0])
