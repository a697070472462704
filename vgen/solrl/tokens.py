"""RL on a scale-wise token policy (DESIGN section 7.4): the clipped-ratio loss and the KL on token log-probs.

A VAR sample is K token maps, scale k holding pn_k^2 tokens, each drawn from the categorical the
sampler builds (CFG ramp, then top-k / top-p). ``vgen.engine.scalewise.token_logprobs`` recomputes
their log-probs with gradients, equal to the sampler's with unchanged weights.

Per-scale normalisation: the loss of a sample is the mean over its K scales of the mean over that
scale's tokens. A plain mean over tokens weighs scale k by pn_k^2 / L: on the tiny base (scales
1, 2, 3, 4, 6, 8) the 1x1 and 2x2 maps, which fix the layout (how many objects, where), would get 5 of
130 shares and the last 8x8 map, which mostly adds detail, 64. Normalised per scale, every scale
gets the same share of each sample's advantage, whatever its size ("VAR RL Done Right" makes the
same point: an action's log-prob is normalised by its scale's token count). ``norm="token"`` keeps
the plain mean, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("scale", "token")


def per_scale_mean(terms: list[torch.Tensor], norm: str = "scale") -> torch.Tensor:
    """(B,) per-sample mean of per-token terms given per scale as (B, n_k): the mean over scales of
    each scale's token mean (``scale``), or the mean over all tokens (``token``)."""
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    if norm == "scale":
        return torch.stack([t.mean(1) for t in terms], 1).mean(1)
    return torch.cat(terms, 1).mean(1)


@dataclass
class TokenGRPO:
    per_sample: torch.Tensor  # (B,) the clipped surrogate's loss, differentiable w.r.t. lp_new
    clip_frac: torch.Tensor   # share of tokens whose ratio left [1 - clip, 1 + clip] (detached)
    approx_kl: torch.Tensor   # 0.5 mean (lp_new - lp_old)^2 over tokens (detached)


def token_grpo_loss(lp_new: list[torch.Tensor], lp_old: list[torch.Tensor], adv: torch.Tensor, clip: float,
                    norm: str = "scale") -> TokenGRPO:
    """PPO's clipped surrogate per token, -min(r A, clip(r, 1 - c, 1 + c) A) with r = exp(lp_new - lp_old)
    and A the sample's advantage (B,), reduced per sample by :func:`per_scale_mean`."""
    adv = adv.detach().float().view(-1, 1)
    terms, clipped, sq = [], [], []
    for new, old in zip(lp_new, lp_old, strict=True):
        diff = new.float() - old.detach().float()
        ratio = diff.exp()
        terms.append(-torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv))
        clipped.append(((ratio.detach() - 1).abs() > clip).float())
        sq.append(diff.detach() ** 2)
    return TokenGRPO(per_scale_mean(terms, norm), torch.cat(clipped, 1).mean(), 0.5 * torch.cat(sq, 1).mean())


def token_kl(lp_new: list[torch.Tensor], lp_ref: list[torch.Tensor], norm: str = "scale") -> torch.Tensor:
    """(B,) KL(policy || reference) estimated on the policy's own tokens with Schulman's k3,
    exp(d) - d - 1 with d = lp_ref - lp_new (>= 0 per token, unbiased), reduced like the loss."""
    terms = []
    for new, ref in zip(lp_new, lp_ref, strict=True):
        d = ref.detach().float() - new.float()
        terms.append(d.exp() - d - 1)
    return per_scale_mean(terms, norm)
