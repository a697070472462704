"""An elastic anchor for the full path (VARiant, a vgen extra, off by default: ``anchor`` = 0).

Every schedule tried moves along one trade-off: the subnet steps pull the shared weights away from
what the full network needs, and progressive's subnet-only last stage pulls hardest. Elastic weight
consolidation (Kirkpatrick et al., 2017) is the cheap way to say "learn the new task, keep the old
one": near the base, which the full path's training loss has at (close to) a minimum, a second-order
expansion gives the full path's loss increase as about half the sum over weights of F_i (theta_i -
theta*_i)^2, F the diagonal of the Fisher (the Hessian's stand-in for a log-likelihood). So subnet
steps add ``anchor`` times that estimate: anchor = 1 weighs the full path's estimated loss increase
as much as the subnet's own loss. F is the empirical Fisher of the base's full path, the mean over
``anchor_samples`` training samples of each one's squared loss gradient, computed once before
training (the same samples on every process, and again on a resume: it depends on the base alone).
The cost per step is one pass over the weights, no extra forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Anchor:
    names: list[str]                 # the anchored parameters (the shared weights, not private offsets)
    centre: list[torch.Tensor]       # theta*: the base's values
    fisher: list[torch.Tensor]       # F: mean squared per-sample gradient of the full path's loss

    def penalty(self, var) -> torch.Tensor:
        """1/2 sum_i F_i (theta_i - theta*_i)^2: the full path's estimated loss increase over the base."""
        params = dict(var.named_parameters())
        return 0.5 * sum((f * (params[n] - c).pow(2)).sum() for n, c, f in zip(self.names, self.centre, self.fisher))


def full_path_fisher(var, vqvae, data, indices: list[int], label_smoothing: float = 0.0,
                     scale_weights=None) -> Anchor:
    """The base's anchor: F from one forward / backward per training sample ``indices`` of ``data``
    along the full path, in eval mode (no label or path drop, so every process and every resume
    computes the same F); the model's gradients are left as they were (none)."""
    from vgen.vartrain.losses import tf_loss_from_tokens

    named = [(n, p) for n, p in var.named_parameters() if p.requires_grad and not n.startswith("private.")]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
    was_training = var.training
    var.eval()
    try:
        for j in indices:
            tokens, labels = data.get([j], var.head.weight.device)
            loss = tf_loss_from_tokens(var, vqvae, tokens, labels, label_smoothing, scale_weights).loss
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f += g.float().pow(2)
    finally:
        var.train(was_training)
    return Anchor([n for n, _ in named], [p.detach().clone() for _, p in named],
                  [f / len(indices) for f in fisher])
