"""Flow-matching steps: x_s = (1 - s) x0 + s eps, the model predicts v = eps - x0.

ODE (Euler): x_{s'} = x_s + (s' - s) v, as diffusers' FlowMatchEulerDiscreteScheduler.step.

SDE (Flow-GRPO form), dt = s' - s < 0, noise level a:
    sig = a * sqrt(s / (1 - s))
    mean = x (1 + sig^2 dt / (2 s)) + v (1 + sig^2 (1 - s) / (2 s)) dt
    x' = mean + sig sqrt(-dt) z
At s = 1 the factor s / (1 - s) is infinite; as Flow-GRPO does, the denominator then uses
the schedule's second sigma (``s_cap``), so the first step stays finite. Log-probs are the
Gaussian log-density of x' around mean, averaged over the non-batch dims, in float32.
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def ode_step(x: torch.Tensor, v: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """Euler step of the probability-flow ODE, computed in float32, returned in v's dtype."""
    return (x.float() + _b(s_next - s, x) * v.float()).to(v.dtype)


def _b(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or scalar quantity shaped to broadcast over ``like``."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def sde_std(s: torch.Tensor, s_next: torch.Tensor, noise_level: float, s_cap: float) -> torch.Tensor:
    """sig * sqrt(-dt): the standard deviation of one SDE step."""
    s, s_next = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(s_next, dtype=torch.float32)
    denom = 1 - torch.where(s >= 1, torch.as_tensor(s_cap, dtype=torch.float32), s)
    sig = noise_level * torch.sqrt(s / denom)
    return sig * torch.sqrt(s - s_next)


def sde_mean(x: torch.Tensor, v: torch.Tensor, s, s_next, noise_level: float, s_cap: float) -> torch.Tensor:
    s32, n32 = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(s_next, dtype=torch.float32)
    denom = 1 - torch.where(s32 >= 1, torch.as_tensor(s_cap, dtype=torch.float32), s32)
    sig2 = noise_level**2 * s32 / denom
    dt = n32 - s32
    return (x.float() * _b(1 + sig2 * dt / (2 * s32), x)
            + v.float() * _b((1 + sig2 * (1 - s32) / (2 * s32)) * dt, x))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian log-density of x around mean (isotropic std), averaged over non-batch dims."""
    x, mean = x.float(), mean.float()
    std = _b(std, x)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1)


def sde_step(x: torch.Tensor, v: torch.Tensor, s, s_next, noise: torch.Tensor, noise_level: float,
             s_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One SDE step: (x', log p(x' | x)), both float32."""
    mean = sde_mean(x, v, s, s_next, noise_level, s_cap)
    std = sde_std(s, s_next, noise_level, s_cap)
    x_next = mean + _b(std, mean) * noise.float()
    return x_next, gaussian_log_prob(x_next, mean, std)
