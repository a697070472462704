"""Token losses of scale-wise AR training: teacher-forcing cross-entropy over all scales, the
per-token weights that balance scales, tokenizing images. SAR and VARiant call these too."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vgen.errors import UserError


@dataclass
class TFLoss:
    loss: torch.Tensor              # scalar, differentiable: mean over samples of the weighted token CE
    per_sample: torch.Tensor        # (B,) the same per sample, detached
    ce_per_scale: torch.Tensor      # (K,) mean unsmoothed CE of each scale, detached
    acc_per_scale: torch.Tensor     # (K,) top-1 accuracy of each scale, detached


def token_weights(lengths: list[int], scale_weights=None, device=None) -> torch.Tensor:
    """(L,) weights summing to 1: every token alike (official VAR), or scale k's tokens sharing
    ``scale_weights[k]`` in proportion to their count (the weight is per token, not per scale)."""
    if scale_weights is None:
        w = torch.ones(sum(lengths), device=device)
    else:
        if len(scale_weights) != len(lengths):
            raise UserError(f"scale_weights has {len(scale_weights)} entries, the model has {len(lengths)} scales")
        if any(x < 0 for x in scale_weights) or not any(x > 0 for x in scale_weights):
            raise UserError("scale_weights must be >= 0 with at least one > 0")
        w = torch.cat([torch.full((n,), float(x), device=device) for n, x in zip(lengths, scale_weights)])
    return w / w.sum()


def token_ce(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int], label_smoothing: float = 0.0,
             scale_weights=None) -> TFLoss:
    """Cross-entropy of (B, L, V) logits against (B, L) token targets laid out scale after scale.

    Label smoothing is torch's: (1 - e) CE + e * mean over the vocabulary of -log p. Computed in
    float32 whatever the logits' dtype."""
    B, L, V = logits.shape
    lp = logits.float()
    ce = F.cross_entropy(lp.reshape(-1, V), targets.reshape(-1), label_smoothing=label_smoothing,
                         reduction="none").view(B, L)
    w = token_weights(lengths, scale_weights, logits.device)
    per_sample = (ce * w).sum(1)
    with torch.no_grad():
        plain = ce if not label_smoothing else F.cross_entropy(lp.reshape(-1, V), targets.reshape(-1),
                                                               reduction="none").view(B, L)
        hit = (lp.argmax(-1) == targets).float()
        ce_s = torch.stack([c.mean() for c in plain.split(lengths, 1)])
        acc_s = torch.stack([a.mean() for a in hit.split(lengths, 1)])
    return TFLoss(per_sample.mean(), per_sample.detach(), ce_s, acc_s)


@torch.no_grad()
def tokenize(vqvae, images: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
    """Per-scale token indices of images in [0, 1] (the world's convention; the VQ-VAE sees [-1, 1])."""
    return vqvae.img_to_idx(images.to(vqvae.quant_conv.weight) * 2 - 1, patch_nums)


def tf_forward(var, vqvae, tokens: list[torch.Tensor], labels: torch.Tensor, patch_nums, depth_plan=None,
               control=None):
    """(inputs, logits) of one teacher-forcing forward of ground-truth tokens over the scale list
    ``patch_nums`` along ``depth_plan`` (or under a ScaleWeaver ``control`` run); the inputs are
    returned for a second forward (VARiant's distillation teacher)."""
    from vgen.engine.scalewise import teacher_forcing_inputs

    inputs = teacher_forcing_inputs(vqvae, tokens, patch_nums)
    return inputs, var(labels, inputs, patch_nums=patch_nums, depth_plan=depth_plan, control=control)


def tf_loss_from_tokens(var, vqvae, tokens: list[torch.Tensor], labels: torch.Tensor, label_smoothing: float = 0.0,
                        scale_weights=None, patch_nums=None, depth_plan=None) -> TFLoss:
    """Teacher-forcing loss of ground-truth tokens: one forward over all scales under the
    block-causal mask (``patch_nums``: another scale list, FlexVAR only; ``depth_plan``: the blocks
    each scale runs, VARiant). In training mode the VAR drops labels with its cond_drop_rate."""
    pns = tuple(patch_nums or var.patch_nums)
    _, logits = tf_forward(var, vqvae, tokens, labels, pns, depth_plan)
    return token_ce(logits, torch.cat(tokens, 1), var.lengths(pns), label_smoothing, scale_weights)


def tf_loss(var, vqvae, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
            scale_weights=None) -> TFLoss:
    """Teacher-forcing loss of images in [0, 1] through the frozen tokenizer."""
    return tf_loss_from_tokens(var, vqvae, tokenize(vqvae, images, var.patch_nums), labels, label_smoothing,
                               scale_weights)


