"""Batched flow-matching rollouts for a list of (prompt, seed) pairs.

Guarantees:
* a sample depends only on its (prompt, seed) and the settings, never on its batch or chunk:
  noise comes from per-sample generators (seeds.py), and on CPU the text encoders, the
  denoiser and the VAE run under ``batch_invariant`` (engine/invariance.py): a matmul with few
  rows (the timestep / pooled-text embedders see one row per sample) is padded to 16 rows and
  convolutions run per image, so CPU BLAS rounds each sample the same way in any batch, while
  whole model calls stay unpadded. Bit-identity is tested on CPU; on GPUs cuBLAS heuristics
  may still vary with batch size.
* each distinct prompt is encoded once; the unconditional ("" ) embedding once;
* no autograd graph is built (``torch.no_grad``); stored tensors can still feed training.

CFG is on when ``guidance > 1``, as in diffusers: v = v_u + g (v_c - v_u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vgen.engine.flow import gaussian_log_prob, ode_step, sde_mean, sde_std, sde_step
from vgen.engine.invariance import batch_invariant
from vgen.engine.seeds import initial_noise, step_noise


@dataclass
class Rollout:
    prompts: list[str]
    seeds: list[int]
    latents: torch.Tensor                   # (B, C, h, w) final latents
    images: torch.Tensor | None             # (B, 3, H, W) float in [0, 1]
    sigmas: torch.Tensor                    # (T + 1,) noise levels visited, last is 0
    timesteps: torch.Tensor                 # (T,) model timesteps (1000 * sigma)
    trajectory: torch.Tensor | None = None  # (B, T + 1, C, h, w) latents before each step and the final
    log_probs: torch.Tensor | None = None   # (B, T) SDE step log-probs (None for ODE)


def decode_images(policy, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], each independent of its batch on CPU (see the module docstring)."""
    with batch_invariant(policy.vae):
        return policy.decode(latents)


def encode_unique(policy, prompts: list[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Encode each distinct prompt once: (cond rows per distinct prompt, row index per sample)."""
    order = list(dict.fromkeys(prompts))
    with batch_invariant(*policy.text_encoders):
        cond = policy.encode(order)
    where = {p: i for i, p in enumerate(order)}
    return cond, [where[p] for p in prompts]


def conditioning(policy, prompts: list[str], guidance: float) -> tuple[dict, dict | None]:
    """Per-sample (cond, uncond) rows; each distinct prompt and "" encoded once; uncond only with CFG."""
    cond_rows, idx = encode_unique(policy, prompts)
    cond = {k: v[torch.tensor(idx)] for k, v in cond_rows.items()}
    if guidance <= 1.0:
        return cond, None
    u = encode_unique(policy, [""])[0]
    return cond, {k: v[[0] * len(prompts)] for k, v in u.items()}


def _in_dtype(cond: dict, dtype: torch.dtype) -> dict:
    """Floating conditioning in the denoiser's dtype: an explore copy may run in bf16 while the
    text encoders it shares with the policy stay in fp32."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}


def guided_velocity(policy, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: dict | None,
                    guidance: float) -> torch.Tensor:
    """Model velocity with classifier-free guidance when ``uncond`` is given."""
    tt = t.to(policy.device).expand(x.shape[0])
    cond = _in_dtype(cond, policy.dtype)
    with batch_invariant(policy.transformer):
        if uncond is None:
            return policy.velocity(x, tt, cond)
        both = {k: torch.cat([v, cond[k]]) for k, v in _in_dtype(uncond, policy.dtype).items()}
        v = policy.velocity(torch.cat([x, x]), torch.cat([tt, tt]), both)
    v_u, v_c = v.chunk(2)
    return v_u + guidance * (v_c - v_u)


def schedule(policy, steps: int, shift: float | None = None, latent_shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (T + 1,), timesteps (T,)) from the policy's own diffusers scheduler.

    ``shift`` overrides the scheduler's static timestep shift; a policy whose pipeline sets
    its own sigmas or dynamic shift (FLUX) supplies them through
    ``policy.scheduler_kwargs(latent_shape, steps)``.
    """
    base = policy.scheduler  # a fresh copy: the pipeline's own scheduler keeps its state
    sched = type(base).from_config(base.config, **({} if shift is None else {"shift": shift}))
    if hasattr(policy, "scheduler_kwargs"):
        kwargs = policy.scheduler_kwargs(latent_shape, steps)
    else:
        kwargs = {"num_inference_steps": steps}
    sched.set_timesteps(device="cpu", **kwargs)
    return sched.sigmas.float().clone(), sched.timesteps.float().clone()


def chunk_for_budget(policy, latent_shape, steps: int, cfg: bool, record: bool, budget_mb: float) -> int:
    """Samples per chunk so that a chunk's activations and records fit ``budget_mb`` (an estimate:
    about 16 activations of model width per token alive at once, no autograd)."""
    c, h, w = latent_shape
    p = getattr(policy.transformer.config, "patch_size", 1) or 1
    width = policy.transformer.config.num_attention_heads * policy.transformer.config.attention_head_dim
    tokens = (h // p) * (w // p) + 300
    per = 16 * tokens * width * 4 * (2 if cfg else 1)
    if record:
        per += (steps + 1) * c * h * w * 4
    return max(1, int(budget_mb * 2**20 // per))


@torch.no_grad()
def rollout(policy, prompts: list[str], seeds: list[int], *, steps: int = 10, guidance: float = 4.5,
            shift: float | None = None, height: int = 64, width: int = 64, sde: bool = False,
            noise_level: float = 0.7, record: bool = False, decode: bool = True, chunk_size: int | None = None,
            memory_budget_mb: float | None = None, progress: bool = False) -> Rollout:
    """Generate one sample per (prompt, seed) pair; see the module docstring."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("nothing to generate: no prompts")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    shape = policy.latent_shape(height, width)
    sigmas, timesteps = schedule(policy, steps, shift, shape)
    steps = len(timesteps)
    s_cap = float(sigmas[1]) if len(sigmas) > 1 else 0.0
    all_cond, all_uncond = conditioning(policy, prompts, guidance)
    use_cfg = all_uncond is not None
    if chunk_size is None:
        chunk_size = (chunk_for_budget(policy, shape, steps, use_cfg, record, memory_budget_mb)
                      if memory_budget_mb else len(prompts))
    dev, dt = policy.device, policy.dtype

    latents, images, trajs, logps = [], [], [], []
    bar = tqdm(total=len(prompts) * steps, desc="rollout", unit="step", disable=not progress)
    for lo in range(0, len(prompts), chunk_size):
        sl = slice(lo, lo + chunk_size)
        sd = list(seeds[sl])
        cond = {k: v[sl] for k, v in all_cond.items()}
        uncond = {k: v[sl] for k, v in all_uncond.items()} if use_cfg else None
        x = initial_noise(sd, shape, device=dev, dtype=torch.float32)
        traj, lps = [x.cpu()] if record else None, []
        for k in range(steps):
            v = guided_velocity(policy, x.to(dt), timesteps[k], cond, uncond, guidance)
            if sde:
                z = step_noise(sd, k, shape, device=dev)
                x, lp = sde_step(x, v, sigmas[k], sigmas[k + 1], z, noise_level, s_cap)
                lps.append(lp.cpu())
            else:
                x = ode_step(x, v, sigmas[k], sigmas[k + 1]).float()
            if record:
                traj.append(x.cpu())
            bar.update(len(sd))
        latents.append(x.cpu())
        if decode:
            images.append(decode_images(policy, x).cpu())
        if record:
            trajs.append(torch.stack(traj, 1))
        if sde:
            logps.append(torch.stack(lps, 1))
    bar.close()
    return Rollout(list(prompts), list(seeds), torch.cat(latents), torch.cat(images) if decode else None,
                   sigmas, timesteps, torch.cat(trajs) if record else None, torch.cat(logps) if sde else None)


def step_log_prob(policy, x: torch.Tensor, x_next: torch.Tensor, k: int, sigmas: torch.Tensor,
                  timesteps: torch.Tensor, prompts: list[str], guidance: float, noise_level: float,
                  cond: tuple[dict, dict | None] | None = None) -> torch.Tensor:
    """log p(x_next | x) of SDE step ``k`` under the policy's current weights (B,), differentiable.

    Used by policy-gradient losses: with unchanged weights it reproduces the rollout's
    recorded log-probs, so the on-policy ratio is exactly 1. Pass ``cond`` (from
    :func:`conditioning`) when calling it for many steps, so prompts are encoded once.
    """
    cond, uncond = cond if cond is not None else conditioning(policy, prompts, guidance)
    v = guided_velocity(policy, x.to(policy.device, policy.dtype), timesteps[k], cond, uncond, guidance)
    s_cap = float(sigmas[1])
    mean = sde_mean(x.to(v.device), v, sigmas[k], sigmas[k + 1], noise_level, s_cap)
    return gaussian_log_prob(x_next.to(v.device), mean, sde_std(sigmas[k], sigmas[k + 1], noise_level, s_cap))
