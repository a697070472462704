"""One VARiant training step's loss: teacher forcing along the path the schedule picked.

The subnet path is the sampler's: the transformer runs the whole sequence under the block-causal
mask with a depth plan, so scales before the switch pass through every block and later scales only
through the equidistant subnet; a dropped block neither changes a later scale's tokens nor gives
it keys / values (``VAR.trunk``). The CE covers every token of the path, the early scales' too
(they are the full network's, as at sampling), so a step of any path costs one forward / backward.

Optional (a vgen extra, off by default): ``distill`` > 0 adds, on subnet steps, distill * KL(full
|| subnet) over the tokens of the subnet's scales, the full network's logits from a no-grad forward
of the same inputs (the paper trains with the data loss only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vgen.vartrain.losses import TFLoss, tf_forward, token_ce


@dataclass
class VariantLoss:
    loss: torch.Tensor             # CE (+ distill * KL), differentiable
    tf: TFLoss                     # the path's teacher-forcing CE, per-scale CE / accuracy
    kl: torch.Tensor               # mean KL(full || subnet) per token of the subnet scales, detached (NaN: none)


def variant_loss(var, vqvae, tokens: list[torch.Tensor], labels: torch.Tensor, plan, patch_nums=None,
                 distill: float = 0.0, label_smoothing: float = 0.0, scale_weights=None) -> VariantLoss:
    """Teacher-forcing loss of ground-truth ``tokens`` along the depth ``plan`` (None: the full network)."""
    pns = tuple(patch_nums or var.patch_nums)
    inputs, logits = tf_forward(var, vqvae, tokens, labels, pns, plan)
    tf = token_ce(logits, torch.cat(tokens, 1), var.lengths(pns), label_smoothing, scale_weights)
    kl = torch.tensor(float("nan"), device=logits.device)
    if plan is None or not distill:
        return VariantLoss(tf.loss, tf, kl)
    with torch.no_grad():
        teacher = var(labels, inputs, patch_nums=pns).float()
    D = var.depth
    sub = torch.cat([torch.full((n,), len(p) < D, device=logits.device) for n, p in zip(var.lengths(pns), plan)])
    lp_s = logits.float()[:, sub].log_softmax(-1)
    lp_t = teacher[:, sub].log_softmax(-1)
    per_token = F.kl_div(lp_s, lp_t, log_target=True, reduction="none").sum(-1)  # KL(teacher || student)
    kl_mean = per_token.mean()
    return VariantLoss(tf.loss + distill * kl_mean, tf, kl_mean.detach())
