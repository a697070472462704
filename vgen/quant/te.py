"""Transformer Engine NVFP4 linears: the ``nvfp4-te`` backend, an alternative to torchao's on
Blackwell. TE is an optional extra (``pip install 'vgen[te]'``), so every TE import happens
inside this module's functions; nothing here runs on a machine without it.

TE quantizes inside its own autocast context, so each converted linear enters that context
itself (NVFP4BlockScaling: E2M1 with E4M3 scales per 16 and an FP32 tensor scale, the same
format as vgen.quant.nvfp4) and the rest of the denoiser keeps running in bf16.
"""

from __future__ import annotations

import torch
from torch import nn


def _autocast(recipe):
    import transformer_engine.pytorch as te

    if hasattr(te, "autocast"):  # TE >= 2.9
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


class TENVFP4Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        import transformer_engine.pytorch as te
        from transformer_engine.common.recipe import NVFP4BlockScaling

        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.inner = te.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               params_dtype=torch.bfloat16, device=linear.weight.device)
        self.inner.requires_grad_(False)
        self.recipe = NVFP4BlockScaling()
        self.set_weight(linear.weight)
        if linear.bias is not None:
            self.bias.copy_(linear.bias)

    @property
    def bias(self):
        return self.inner.bias

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        self.inner.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(self.recipe):
            return self.inner(x.to(torch.bfloat16)).to(x.dtype)
