"""SAR's training step: teacher forcing, tokens from its own predictions, student forcing, CSFL.

One step on ground-truth tokens (as the authors' released code performs it, for FlexVAR):

1. teacher forcing (TF): one forward over all scales with ground-truth inputs, token CE;
2. under ``no_grad``, the TF logits of every scale become tokens: ``argmax`` (released default)
   or ``sample``: CFG against the null class with the ramp t = cfg * 0.5 * (1 + k / (K - 1)),
   top-k / top-p, a per-sample seed (so a sample's draw does not depend on its batch or process);
3. student forcing (SF) on those tokens: ``last`` (released) feeds the predicted map of scale
   K-2, embedded and brought to scale K-1, as the two-segment sequence [start token, that map]
   (one short extra forward); ``all`` (vgen's extension) feeds every scale k >= 1 the input built
   from the predictions of the scales before it, one forward under the block-causal mask;
4. CSFL: L = L_TF + sigma * CE(SF logits, stop-grad target), the target being the TF-predicted
   tokens of the same scale (``tf_pred``) or the ground truth (``ground_truth``, the ablation).

The self-generated input of scale k is what teacher forcing would feed for the predicted
tokens: FlexVAR, the upsampled embedding of scale k-1's prediction (the released rule); VAR
(residual; the released code has no VAR path, vgen's choice): f_hat accumulated over the
predicted tokens of all scales < k, area-downsampled to scale k - the same construction as the
ground-truth input, so SF differs from TF only in whose tokens build the context.

vgen differs from the released code in one detail: CFG's null-class logits come from a forward
of the null rows alone (the class rows' logits are the TF pass's own), not from a doubled batch:
the same numbers up to rounding at half the extra cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from vgen.engine.scalewise import draw, filter_logits, teacher_forcing_inputs
from vgen.engine.seeds import step_seed
from vgen.vartrain.losses import TFLoss, token_ce


@dataclass
class SARSettings:
    sigma: float = 0.01                                  # weight of the SF loss
    mode: Literal["last", "all"] = "last"                # which scales student forcing feeds
    target: Literal["tf_pred", "ground_truth"] = "tf_pred"
    tokens: Literal["argmax", "sample"] = "argmax"       # how TF logits become the self-generated tokens
    cfg: float = 1.5                                     # tokens=sample: CFG scale of the ramp
    top_k: int = 0                                       # tokens=sample: top-k (0 off)
    top_p: float = 0.0                                   # tokens=sample: top-p (0 off)


@dataclass
class SARLoss:
    loss: torch.Tensor              # L_TF + sigma * L_SF, differentiable
    tf: TFLoss                      # the teacher-forcing part (loss, per-scale CE / accuracy)
    sf_loss: torch.Tensor           # L_SF, detached
    sf_ce_per_scale: torch.Tensor   # (K,) SF CE against the target; NaN at scales SF does not train
    sf_acc_per_scale: torch.Tensor  # (K,) SF top-1 agreement with the target; NaN likewise
    seconds: dict                   # forward time of each pass: tf, tokens, sf


def sar_ramp(cfg: float, k: int, num_scales: int) -> float:
    """SAR's CFG strength at scale k: cfg * 0.5 * (1 + k / (K - 1)) (from cfg / 2 up to cfg)."""
    return cfg * 0.5 * (1 + k / (num_scales - 1)) if num_scales > 1 else cfg * 0.5


@torch.no_grad()
def predicted_tokens(var, logits: torch.Tensor, labels: torch.Tensor, inputs, pns, s: SARSettings,
                     seeds: list[int] | None = None) -> list[torch.Tensor]:
    """Per-scale tokens (B, pn^2) from the TF logits: argmax, or a CFG draw from sample b's seed."""
    lengths = var.lengths(pns)
    per_scale = logits.detach().float().split(lengths, 1)
    if s.tokens == "argmax":
        return [x.argmax(-1) for x in per_scale]
    if seeds is None or len(seeds) != len(labels):
        raise ValueError("tokens=sample needs one seed per sample")
    null = var(torch.full_like(labels, var.num_classes), inputs, patch_nums=pns).float().split(lengths, 1)
    K, out = len(pns), []
    for k, (c, u) in enumerate(zip(per_scale, null)):
        t = sar_ramp(s.cfg, k, K)
        out.append(draw(filter_logits((1 + t) * c - t * u, s.top_k, s.top_p), seeds, k))
    return out


def sf_logits(var, vqvae, labels: torch.Tensor, pred: list[torch.Tensor], pns, mode: str):
    """(SF logits (B, l, V), the scales they cover) for the self-generated inputs of ``pred``."""
    with torch.no_grad():
        inputs = teacher_forcing_inputs(vqvae, pred, pns)  # scale k's input from predictions of scales < k
    K = len(pns)
    if mode == "last":
        last = inputs[:, -pns[-1] ** 2:]
        return var(labels, [last], patch_nums=pns, scales=[0, K - 1])[:, -pns[-1] ** 2:], [K - 1]
    return var(labels, inputs, patch_nums=pns)[:, pns[0] ** 2:], list(range(1, K))


def sar_loss(var, vqvae, tokens: list[torch.Tensor], labels: torch.Tensor, s: SARSettings, patch_nums=None,
             seeds: list[int] | None = None, label_smoothing: float = 0.0, scale_weights=None) -> SARLoss:
    """One SAR step's loss on ground-truth ``tokens`` (see the module docstring). Labels are used as
    given (the recipe drops them to the null class beforehand, the same for both passes)."""
    pns = tuple(patch_nums or var.patch_nums)
    lengths = var.lengths(pns)
    t0 = time.perf_counter()
    inputs = teacher_forcing_inputs(vqvae, tokens, pns)
    logits = var(labels, inputs, patch_nums=pns)
    tf = token_ce(logits, torch.cat(tokens, 1), lengths, label_smoothing, scale_weights)
    t1 = time.perf_counter()
    pred = predicted_tokens(var, logits, labels, inputs, pns, s, seeds)
    t2 = time.perf_counter()
    sf, scales = sf_logits(var, vqvae, labels, pred, pns, s.mode)
    source = pred if s.target == "tf_pred" else tokens
    target = torch.cat([source[k] for k in scales], 1)
    r = token_ce(sf, target, [lengths[k] for k in scales])
    t3 = time.perf_counter()
    ce = torch.full((len(pns),), float("nan"), device=logits.device)
    acc = ce.clone()
    ce[scales], acc[scales] = r.ce_per_scale, r.acc_per_scale
    return SARLoss(tf.loss + s.sigma * r.loss, tf, r.loss.detach(), ce, acc,
                   {"tf": t1 - t0, "tokens": t2 - t1, "sf": t3 - t2})


def sample_seeds(seed: int, step: int, indices: list[int]) -> list[int]:
    """Per-sample seeds of the ``sample`` draws at step ``step``: from (run seed, step, position in
    the global batch) alone, so a sample draws the same tokens in any split over processes."""
    return [step_seed(step_seed(seed, step), i) for i in indices]
