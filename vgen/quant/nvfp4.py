"""The NVFP4 format, as a vectorised PyTorch reference (any device).

A tensor x (..., K) is stored as
  * E2M1 codes, 4 bits each: sign bit 3, magnitude index 0..7 for {0, 0.5, 1, 1.5, 2, 3, 4, 6},
    packed two per byte with the even element in the low nibble;
  * one FP8 E4M3 scale per 16 consecutive elements along K;
  * one FP32 global scale  g = amax(|x|) / (448 * 6).
Block scale s = clamp((block_amax / 6) / g, 2^-6, 448) cast to E4M3 (round to nearest even);
codes = E2M1(clamp(x * ((1 / g) / s), -6, 6)), round to nearest, ties to the even code.
This arithmetic order is the one torchao's NVFP4Tensor and its kernels use, so codes and
scale bytes agree bit for bit (tests/test_nvfp4.py pins the torchao version).

Edge cases, by design:
  * all-zero tensor: g = 0, every scale 2^-6, every code +0: dequantizes to exact zeros
    (torchao divides 0 by 0 here and yields NaN);
  * a zero block inside a non-zero tensor: scale clamped to 2^-6 (E4M3's smallest normal,
    byte 0x08), codes +0;
  * blocks whose scale would fall below 2^-6 ("subnormal" blocks, tiny next to the tensor's
    amax) use 2^-6 too, so their values round coarsely or to zero: the format's real limit;
  * -0.0 and negatives that round to zero keep their sign: code 0x8 (-0);
  * tiny tensors: where (1 / g) / s overflows FP32 (g * s <~ 2^-128; every block once
    amax <= 2688 * 2^-128 ~= 7.8993e-36, blocks with s = 2^-6 from amax < ~5.1e-34), torchao
    multiplies by inf: non-zero elements become +-6 and zeros NaN (code 0xB). There vgen runs
    the same arithmetic on x * 2^96 and g * 2^96 (exact powers of two, g * 2^96 normal), i.e.
    torchao's rounding with an unbounded exponent: correct, finite codes, zeros stay +-0.
    Scale bytes and g are computed as before and still equal torchao's. g itself is FP32, so
    below amax ~ 3.2e-35 it is subnormal and carries fewer bits (amax 1e-40: ~5 bits, the
    block scales absorb most of it); once amax / 2688 rounds to 0 (amax < ~1.9e-42) the tensor
    is stored as g = 0, i.e. as the all-zero tensor (signed zero codes);
  * no NaN or inf is ever produced from finite input (nor from an explicit finite global scale);
  * NaN or +-inf anywhere: ValueError (one non-finite value would poison g for the tensor);
    a ``global_scale`` that is not one finite number >= 0: ValueError;
  * K not a multiple of 16: ValueError; pad with ``pad_to_block`` first (zeros are exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 16
E2M1_MAX, E4M3_MAX = 6.0, 448.0
E4M3_MIN_NORMAL = 2.0**-6
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
_RESCALE = 96  # 2^96: lifts any FP32 global scale (>= 2^-149) to a normal number whose reciprocal / 2^-6 is finite


@dataclass
class NVFP4:
    packed: torch.Tensor        # uint8 (..., K / 2)
    scales: torch.Tensor        # float8_e4m3fn (..., K / 16)
    global_scale: torch.Tensor  # float32 scalar
    shape: torch.Size


def e2m1_encode(v: torch.Tensor) -> torch.Tensor:
    """4-bit codes of values already scaled into [-6, 6]: nearest E2M1 value, ties to even."""
    m = v.abs().float()
    mid = _MIDPOINTS.to(m.device)
    idx = torch.bucketize(m, mid, right=False)  # nearest index; a tie lands on the lower one
    tie = (idx < 7) & (m == mid[idx.clamp(max=6)])
    idx = idx + (tie & (idx % 2 == 1)).long()  # ...and moves up when the lower code is odd
    return (idx | (torch.signbit(v).to(torch.int64) << 3)).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    mag = E2M1_VALUES.to(codes.device)[(codes & 7).long()]
    return torch.where((codes & 8).bool(), -mag, mag)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim: element 2i low nibble, 2i+1 high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd last dimension ({codes.shape[-1]})")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def pad_to_block(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last dim to a multiple of 16 (zeros quantize and dequantize exactly)."""
    extra = (-x.shape[-1]) % BLOCK
    return torch.nn.functional.pad(x, (0, extra)) if extra else x


def quantize(x: torch.Tensor, global_scale: torch.Tensor | None = None) -> NVFP4:
    """NVFP4 of ``x`` (see the module docstring); ``global_scale`` overrides amax / (448 * 6)."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got {x.shape[-1]}; "
                         "pad it with vgen.quant.nvfp4.pad_to_block")
    xf = x.float()
    bad = (~torch.isfinite(xf)).sum().item()
    if bad:
        raise ValueError(f"cannot quantize to NVFP4: the tensor has {bad} NaN or infinite values")
    blocks = xf.reshape(*x.shape[:-1], -1, BLOCK)
    if global_scale is None:
        g = xf.abs().amax() / (E4M3_MAX * E2M1_MAX)
    else:
        g = torch.as_tensor(global_scale).float().to(xf.device)
        if g.numel() != 1 or not (torch.isfinite(g) & (g >= 0)).all():
            raise ValueError(f"the NVFP4 global scale must be one finite number >= 0, got {global_scale}")
        g = g.reshape(())
    block_amax = blocks.abs().amax(-1)
    if g == 0:  # all-zero tensor, or amax so small that amax / 2688 is 0 in FP32: exact zeros, no 0 / 0
        scales = torch.full_like(block_amax, E4M3_MIN_NORMAL).to(torch.float8_e4m3fn)
        codes = e2m1_encode(blocks * 0)
    else:
        scales = ((block_amax / E2M1_MAX) / g).clamp(E4M3_MIN_NORMAL, E4M3_MAX).to(torch.float8_e4m3fn)
        recip = (1.0 / g) / scales.float()  # torchao's order: bit-identical codes wherever this is finite
        over = torch.isinf(recip)  # (1 / g) / s overflows FP32 (g * s < 2^-128): tiny tensors, see the docstring
        codes = e2m1_encode((blocks * recip.masked_fill(over, 0).unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX))
        if over.any():
            # the same arithmetic on x * 2^96 and g * 2^96: powers of two are exact, g * 2^96 is a normal
            # number, so this is torchao's rounding with an unbounded exponent, and finite
            k = 2.0**_RESCALE
            recip_k = (1.0 / (g * k)) / scales.float()
            codes_k = e2m1_encode(((blocks * k) * recip_k.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX))
            codes = torch.where(over.unsqueeze(-1), codes_k, codes)
    return NVFP4(pack(codes.reshape(x.shape)), scales, torch.as_tensor(g, dtype=torch.float32), x.shape)


def dequantize(q: NVFP4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    values = e2m1_decode(unpack(q.packed)).reshape(*q.shape[:-1], -1, BLOCK)
    out = values * (q.scales.float() * q.global_scale).unsqueeze(-1)
    return out.reshape(q.shape).to(dtype)


# ---------------------------------------------------------------- cuBLAS scale layout


def swizzle_offset(r: torch.Tensor, c: torch.Tensor, cols: int) -> torch.Tensor:
    """Position of scale (r, c) in cuBLAS's block-scaling layout: 128x4 tiles, row-major over
    tiles; inside a tile, row r' goes to (r' % 32) * 16 + (r' // 32) * 4, plus the column."""
    n_col_tiles = (cols + 3) // 4
    tile = (r // 128) * n_col_tiles + c // 4
    rr = r % 128
    return tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + c % 4


def swizzle(scales: torch.Tensor) -> torch.Tensor:
    """(rows, cols) scales -> flat cuBLAS layout, zero-padded to whole 128x4 tiles."""
    rows, cols = scales.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    padded = torch.zeros(pr, pc, dtype=scales.dtype, device=scales.device)
    padded[:rows, :cols] = scales
    return padded.view(pr // 128, 4, 32, pc // 4, 4).permute(0, 3, 2, 1, 4).flatten()


def unswizzle(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    tiles = flat.view(pr // 128, pc // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(pr, pc)[:rows, :cols]
