"""Policy losses for Sol-RL: DiffusionNFT (default) and Flow-GRPO, plus the EMA "old" policy.

Flow-matching conventions as in vgen/engine/flow.py: x_s = (1 - s) x0 + s eps, v = eps - x0, so
the clean sample implied by a velocity is x0_hat = x_s - s v. Per-sample quantities reduce by the
mean over every non-batch dim (as the reference implementations do), then the loss averages over
the batch. Losses are computed in at least float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

S_MODES = ("schedule", "uniform")


def _b(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or scalar quantity shaped to broadcast over ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def forward_noise(x0: torch.Tensor, s: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s noise, s per sample (B,) or a scalar; in at least float32."""
    x0, noise = _f(x0), _f(noise)
    s = _b(s, x0)
    return (1 - s) * x0 + s * noise


def sample_s(batch: int, sigmas: torch.Tensor, fraction: float = 1.0, mode: str = "schedule",
             s_range: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n) training noise levels; column j is the level of the j-th update pass per sample.

    ``sigmas`` is the rollout's (T + 1,) schedule (last entry 0) and n = max(1, int(fraction * T)),
    the "timestep fraction" of the reference code, in both modes.
    * ``schedule``: each sample draws n distinct levels uniformly, without replacement, from the
      schedule's T nonzero levels (s = 0 would give x_s = x0 and no signal), independently per
      sample. The schedule's shift is thus inherited: training sees the levels sampling visits.
    * ``uniform``: n levels uniform in ``s_range`` (default: [smallest nonzero sigma, largest sigma]).
    """
    if mode not in S_MODES:
        raise ValueError(f"unknown noise-level mode {mode!r}; choose one of {', '.join(S_MODES)}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    levels = torch.as_tensor(sigmas, dtype=torch.float32)[:-1]
    t = len(levels)
    if t < 1:
        raise ValueError("sigmas must hold at least two entries (one step)")
    n = max(1, int(fraction * t))
    if mode == "schedule":
        order = torch.rand(batch, t, generator=generator).argsort(dim=1)[:, :n]
        return levels[order]
    lo, hi = s_range if s_range is not None else (float(levels.min()), float(levels.max()))
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"s_range must satisfy 0 <= lo <= hi <= 1, got {(lo, hi)}")
    return lo + (hi - lo) * torch.rand(batch, n, generator=generator)


@dataclass
class NFTLoss:
    loss: torch.Tensor      # scalar, differentiable w.r.t. v_theta
    r: torch.Tensor         # (B,) optimality weights in [0, 1]
    positive: torch.Tensor  # (B,) weighted positive term ||x0_hat+ - x0||^2 / w+ (detached)
    negative: torch.Tensor  # (B,) weighted negative term ||x0_hat- - x0||^2 / w- (detached)


def diffusionnft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
                      s: torch.Tensor | float, adv: torch.Tensor, adv_max: float, beta: float,
                      w_min: float = 1e-5) -> NFTLoss:
    """DiffusionNFT's negative-aware loss (DESIGN section 5), mean over the batch:

        r = clip(A / (2 A_max) + 1/2, 0, 1)
        v+ = b v_theta + (1 - b) v_old,  v- = (1 + b) v_old - b v_theta,  x0_hat = x_t - s v
        L = [ r ||x0_hat+ - x0||^2 / w+ + (1 - r) ||x0_hat- - x0||^2 / w- ] / b * A_max

    ||.||^2 is the mean of squares over non-batch dims; w = mean |x0_hat - x0| per sample, detached
    (an adaptive weight that normalises the scale of the error across noise levels), clamped below
    at ``w_min`` so an exact prediction cannot divide by zero. ``v_old`` is detached: the old (EMA)
    policy is a fixed target. A sample with A = 0 (r = 1/2) is not inert: at v_theta = v_old its
    gradient cancels, elsewhere (w+ ~ w-) it pulls v_theta back toward v_old. ``adv`` is (B,) or a
    scalar. The KL term is separate (:func:`kl_velocity`) so the caller decides whether a reference
    pass is needed.
    """
    if adv_max <= 0 or beta <= 0:
        raise ValueError(f"adv_max and beta must be > 0, got adv_max={adv_max}, beta={beta}")
    v_theta, v_old, x_t, x0 = _f(v_theta), _f(v_old).detach(), _f(x_t), _f(x0)
    s = _b(s, x0)
    r = (torch.as_tensor(adv, dtype=x0.dtype, device=x0.device) / (2 * adv_max) + 0.5).clamp(0.0, 1.0)
    if r.dim() and r.shape != x0.shape[:1]:  # a (B, 1) advantage would silently broadcast to (B, B)
        raise ValueError(f"adv must be (B,) = {tuple(x0.shape[:1])} or a scalar, got {tuple(r.shape)}")

    def term(v: torch.Tensor) -> torch.Tensor:
        err = x_t - s * v - x0
        with torch.no_grad():
            w = _per_sample_mean(err.abs()).clamp_min(w_min)
        return _per_sample_mean(err**2) / w

    pos = term(beta * v_theta + (1 - beta) * v_old)
    neg = term((1 + beta) * v_old - beta * v_theta)
    per_sample = (r * pos + (1 - r) * neg) / beta * adv_max
    return NFTLoss(per_sample.mean(), r.detach(), pos.detach(), neg.detach())


def kl_velocity(v_theta: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """(B,) ||v_theta - v_ref||^2 (mean over non-batch dims): DiffusionNFT's KL surrogate to the base model."""
    return _per_sample_mean((_f(v_theta) - _f(v_ref).detach()) ** 2)


@dataclass
class GRPOLoss:
    loss: torch.Tensor       # scalar, differentiable w.r.t. log_prob_new
    clip_frac: torch.Tensor  # fraction of samples with |ratio - 1| > clip_range (detached)
    approx_kl: torch.Tensor  # 0.5 mean (lp_new - lp_old)^2, Flow-GRPO's estimator (detached)


def flow_grpo_loss(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, adv: torch.Tensor,
                   clip_range: float = 1e-4) -> GRPOLoss:
    """PPO clipped surrogate, mean over samples: -min(ratio A, clip(ratio, 1 - c, 1 + c) A).

    ratio = exp(lp_new - lp_old) per sample (and step, if the inputs carry one, e.g. (B, T));
    ``adv`` is a scalar, (B,) (one per sample, shared by its steps) or lp's shape; it and
    ``log_prob_old`` are constants. Clipping the advantage to [-A_max, A_max] is left to the caller.
    """
    lp_new, lp_old = _f(log_prob_new), _f(log_prob_old).detach()
    adv = _f(torch.as_tensor(adv, device=lp_new.device)).detach()
    if adv.dim() == 1 and lp_new.dim() > 1:
        adv = adv.view(-1, *([1] * (lp_new.dim() - 1)))
    try:
        fits = lp_old.shape == lp_new.shape == torch.broadcast_shapes(adv.shape, lp_new.shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"shapes do not line up: lp_new {tuple(lp_new.shape)}, lp_old "
                         f"{tuple(lp_old.shape)}, adv {tuple(adv.shape)}")
    diff = lp_new - lp_old
    ratio = torch.exp(diff)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    with torch.no_grad():
        clip_frac = ((ratio - 1).abs() > clip_range).float().mean()
        approx_kl = 0.5 * (diff**2).mean()
    return GRPOLoss(-surrogate.mean(), clip_frac, approx_kl)


def ema_decay(step: int, rate: float = 0.001, cap: float = 0.5) -> float:
    """DiffusionNFT's old-policy decay d = min(rate * step, cap): the old policy tracks the trained
    one exactly at first (d = 0) and lags it more as training settles."""
    return min(rate * step, cap)


@torch.no_grad()
def ema_update(old_params: Iterable[torch.Tensor], new_params: Iterable[torch.Tensor], step: int) -> float:
    """old <- d old + (1 - d) new in place, d = :func:`ema_decay` (step); returns d.

    At d = 0 old becomes an exact copy of new. ``new`` may live on another device or dtype.
    """
    old, new = list(old_params), list(new_params)
    if len(old) != len(new):
        raise ValueError(f"got {len(old)} old and {len(new)} new parameters")
    d = ema_decay(step)
    for o, n in zip(old, new):
        if o.shape != n.shape:
            raise ValueError(f"parameter shapes differ: {tuple(o.shape)} vs {tuple(n.shape)}")
        n = n.detach().to(device=o.device, dtype=o.dtype)
        if d == 0:
            o.copy_(n)
        else:
            o.mul_(d).add_(n, alpha=1 - d)
    return d
