"""Emulated NVFP4 W4A4 linear layers (``nvfp4-emu``): the format's numerics on any device.

The weight is quantized once (blocks of 16 along in_features) and kept both packed and
dequantized; each call quantizes the activations the same way (their own global scale),
dequantizes them and multiplies in fp32. The result is exactly fp32
``dequantize(Q(x)) @ dequantize(Q(W)).T + b``: what an NVFP4 tensor-core GEMM computes,
up to its accumulation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgen.quant.nvfp4 import dequantize, quantize


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """x through NVFP4 and back, in float32."""
    return dequantize(quantize(x))


class NVFP4EmuLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features % 16:
            raise ValueError(f"NVFP4 needs in_features divisible by 16, got {linear.in_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_dq", torch.empty(0), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(),
                                                                  requires_grad=False)
        self.set_weight(linear.weight)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """(Re)quantize from a high-precision weight, in place (used to refresh a copy)."""
        self.q = quantize(weight.detach().float())
        self.weight_dq = dequantize(self.q).to(weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(fake_quantize(x.float()), self.weight_dq, self.bias)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nvfp4-emu W4A4"
