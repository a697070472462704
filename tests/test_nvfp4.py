"""NVFP4 reference: golden values, edge cases, the cuBLAS layout, and torchao as the oracle."""

import math

import pytest
import torch

from vgen.quant.nvfp4 import (
    dequantize,
    e2m1_decode,
    e2m1_encode,
    pack,
    pad_to_block,
    quantize,
    swizzle,
    swizzle_offset,
    unpack,
    unswizzle,
)

TORCHAO_PINNED = "0.18.0"


def test_e2m1_table():
    want = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert e2m1_decode(torch.arange(16, dtype=torch.uint8)).tolist() == want + [-v for v in want]


def test_every_rounding_tie_goes_to_the_even_code():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 1e9, 0.2, 0.3, 2.9, 3.1])
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 0.0, 0.5, 3.0, 3.0]
    assert e2m1_decode(e2m1_encode(x.clamp(-6, 6))).tolist() == want
    assert e2m1_decode(e2m1_encode(-x.clamp(-6, 6))).tolist() == [-v for v in want]


def test_pack_order_puts_the_even_element_low():
    codes = e2m1_encode(torch.tensor([1.0, 6.0]))
    assert pack(codes).tolist() == [0x72]
    c = torch.randint(0, 16, (5, 32), dtype=torch.uint8)
    assert torch.equal(unpack(pack(c)), c)


def test_swizzle_matches_the_offset_formula_and_round_trips():
    for rows, cols in ((128, 4), (256, 8), (130, 5), (1, 1), (300, 17)):
        s = torch.randint(1, 255, (rows, cols), dtype=torch.uint8)
        flat = swizzle(s)
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        assert torch.equal(flat[swizzle_offset(r, c, cols)], s)
        assert torch.equal(unswizzle(flat, rows, cols), s)
        assert flat.numel() == math.ceil(rows / 128) * 128 * math.ceil(cols / 4) * 4


def test_edge_cases():
    z = quantize(torch.zeros(4, 32))
    assert torch.equal(dequantize(z), torch.zeros(4, 32)) and float(z.global_scale) == 0
    x = torch.randn(2, 48)
    x[0, 16:32] = 0  # a zero block
    q = quantize(x)
    assert (q.scales.view(torch.uint8)[0, 1] == 0x08) and (dequantize(q)[0, 16:32] == 0).all()
    neg = quantize(torch.tensor([[-0.0] + [1.0] * 15]))
    assert unpack(neg.packed)[0, 0] == 0x8 and math.copysign(1, dequantize(neg)[0, 0].item()) == -1
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = torch.randn(1, 16)
        y[0, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            quantize(y)
    with pytest.raises(ValueError, match="multiple of 16, got 20"):
        quantize(torch.randn(3, 20))
    assert torch.equal(dequantize(quantize(pad_to_block(torch.ones(3, 20))))[:, 20:], torch.zeros(3, 12))


def test_sqnr_of_a_gaussian_matrix():
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    err = w - dequantize(quantize(w))
    assert 10 * math.log10(w.pow(2).sum() / err.pow(2).sum()) >= 16


def _distributions():
    g = torch.Generator().manual_seed(0)
    n = (64, 256)
    t = torch.distributions.StudentT(2.0)
    torch.manual_seed(0)
    zero_blocks = torch.randn(n, generator=g)
    zero_blocks[:, 32:64] = 0
    zero_blocks[5] = 0
    tiny_blocks = torch.randn(n, generator=g)
    tiny_blocks[:, :16] *= 1e-6  # blocks whose scale falls below E4M3's smallest normal
    lognormal_blocks = torch.randn(n, generator=g) * torch.exp(2 * torch.randn(64, 16, generator=g)).repeat_interleave(
        16, dim=1)
    return {
        "gaussian": torch.randn(n, generator=g),
        "student_t": t.sample(n),
        "lognormal_block_magnitudes": lognormal_blocks,
        "tiny": torch.randn(n, generator=g) * 1e-30,
        "huge": torch.randn(n, generator=g) * 1e30,
        "uniform": torch.rand(n, generator=g) * 2 - 1,
        "all_zero_blocks": zero_blocks,
        "subnormal_blocks": tiny_blocks,
        "outlier": torch.randn(n, generator=g).index_put_((torch.tensor([3]), torch.tensor([7])), torch.tensor(1e4)),
        "bfloat16": torch.randn(n, generator=g).bfloat16(),
        "exact_grid": (torch.randint(-6, 7, n, generator=g) * 0.5).float(),
    }


@pytest.mark.parametrize("name", list(_distributions()))
def test_codes_and_scale_bytes_equal_torchao(name):
    torchao = pytest.importorskip("torchao")
    if torchao.__version__.split("+")[0] != TORCHAO_PINNED:
        pytest.skip(f"compared against torchao {TORCHAO_PINNED}, found {torchao.__version__}")
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    x = _distributions()[name]
    ref = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.float().abs().amax()))
    q = quantize(x)
    assert torch.equal(q.packed, ref.qdata.view(torch.uint8))
    assert torch.equal(q.scales.view(torch.uint8), ref.scale.view(torch.uint8))
    assert torch.equal(q.global_scale, ref.per_tensor_scale.float())
    assert torch.equal(dequantize(q), ref.dequantize(torch.float32))


def test_all_zero_tensor_differs_from_torchao_by_design():
    """torchao divides 0 by the zero global scale and gets NaN; vgen gives exact zeros."""
    torchao = pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    del torchao
    x = torch.zeros(4, 32)
    ref = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax()))
    assert torch.isnan(ref.dequantize(torch.float32)).any()
    assert torch.equal(dequantize(quantize(x)), x)


# ---------------------------------------------------------------- tiny tensors: 1 / g overflows FP32

# amax / 2688 <= 2^-128 makes 1 / g inf in FP32: the two FP32 neighbours around that edge
AMAX_FINITE_RECIP = 7.899324189920213e-36  # g = 2^-128 + 2^-149, 1 / g finite
AMAX_INF_RECIP = 7.8993234724554e-36       # g = 2^-128, 1 / g = inf


def _reference(x: torch.Tensor, g: float, s: torch.Tensor | None = None):
    """The format rule in float64 with the stored FP32 global scale g (and, if given, these block scales):
    (codes as E2M1 values, block scales, dequantized values)."""
    blocks = x.double().reshape(*x.shape[:-1], -1, 16)
    if s is None:
        s = ((blocks.abs().amax(-1) / 6) / g).clamp(2.0**-6, 448).to(torch.float8_e4m3fn)
    s = s.double()
    v = (blocks / (s * g).unsqueeze(-1)).clamp(-6, 6)
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
    dist = (v.abs().unsqueeze(-1) - grid).abs()
    best = dist.min(-1, keepdim=True).values
    # nearest value, ties to the even index (odd indices ranked after every even one)
    idx = torch.where(dist == best, torch.arange(8) + 8 * (torch.arange(8) % 2), 99).min(-1).values % 8
    vals = grid[idx] * torch.where(torch.signbit(v), -1.0, 1.0)
    return vals.reshape(x.shape), s, (vals * (s * g).unsqueeze(-1)).reshape(x.shape)


def _scaled_gaussian(amax: float, seed: int = 0, shape=(32, 64)) -> torch.Tensor:
    """Gaussian rows scaled in float64 to the given amax, then FP32 (denormals included); one zero block,
    one block 1e-4 times smaller (scale clamped to 2^-6), and some exact zeros."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 16:32] *= 1e-4
    x[3, 32:48] = 0
    x[:, 5] = 0
    return (x / x.abs().max() * amax).float()


def test_the_overflow_edge_is_where_this_file_says():
    g_inf = torch.tensor(AMAX_INF_RECIP, dtype=torch.float32) / 2688
    g_fin = torch.tensor(AMAX_FINITE_RECIP, dtype=torch.float32) / 2688
    assert float(g_inf) == 2.0**-128 and float(g_fin) == 2.0**-128 + 2.0**-149
    assert torch.isinf(1 / g_inf) and torch.isfinite(1 / g_fin)


TINY_AMAXES = [1e-33, 5e-34, 1e-34, AMAX_FINITE_RECIP, AMAX_INF_RECIP, 1e-36, 1e-38, 1e-40]


@pytest.mark.parametrize("amax", TINY_AMAXES)
def test_tiny_tensors_quantize_to_the_float64_rule(amax):
    x = _scaled_gaussian(amax)
    assert float(x.abs().max()) == pytest.approx(amax, rel=1e-6)
    q = quantize(x)
    g = float(q.global_scale)
    assert g > 0 and math.isfinite(g) and g == float(torch.tensor(float(x.abs().max())) / 2688)
    codes = unpack(q.packed)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 0xF
    zero = x == 0  # exact zeros, and -0.0 where a negative value underflowed in FP32: a signed zero code
    assert torch.equal(codes[zero], torch.signbit(x[zero]).to(torch.uint8) * 8)  # never 0xB / 0xF
    out = dequantize(q)
    assert torch.isfinite(out).all() and (out[zero] == 0).all()
    # block scales: the float64 rule's, except where block_amax / 6 is an FP32 subnormal: torchao's FP32
    # order rounds it to the 2^-149 grid first (vgen keeps its bytes), so the scale is the rule's for some
    # value within 2^-150 of block_amax / 6
    _, s64, want64 = _reference(x, g)
    s32 = q.scales.double()
    bam6 = x.reshape(32, 4, 16).abs().amax(-1).double() / 6
    sub = bam6 < 2.0**-126
    assert torch.equal(s32[~sub], s64[~sub])

    def e4m3(v):
        return (v / g).clamp(2.0**-6, 448).to(torch.float8_e4m3fn).double()

    assert ((e4m3(bam6 - 2.0**-150) <= s32) & (s32 <= e4m3(bam6 + 2.0**-150)))[sub].all()
    # codes: exactly the float64 rule's given the stored scales (nearest, ties to even)
    vals, _, want = _reference(x, g, q.scales)
    assert torch.equal(e2m1_decode(codes).double(), vals)
    # dequantized: FP32 products with a subnormal g lose bits, a few ulps of the FP32 grid (2^-149)
    assert torch.allclose(out.double(), want, rtol=1e-6, atol=8 * 2.0**-149)
    same = (~sub).repeat_interleave(16, -1).reshape(x.shape)
    assert torch.allclose(out.double()[same], want64[same], rtol=1e-6, atol=8 * 2.0**-149)
    # and every element is within one block step (s * g) of its input: nothing saturates wrongly
    step = (s32 * g).repeat_interleave(16, -1).reshape(x.shape)
    assert ((out.double() - x.double()).abs() <= step + 8 * 2.0**-149).all()
    assert float(out.abs().max()) == pytest.approx(amax, rel=0.03)


@pytest.mark.parametrize("values", [[1e-38], [-1e-40], [AMAX_INF_RECIP], [1e-38, -3e-39], [-3e-42]])
def test_one_tiny_value_among_zeros(values):
    x = torch.zeros(4, 32)
    x[1, 5:5 + len(values)] = torch.tensor(values)
    q = quantize(x)
    codes, out = unpack(q.packed), dequantize(q)
    assert torch.isfinite(out).all() and int(codes.max()) <= 0xF
    nz = x != 0
    assert (codes[~nz] == 0).all() and (out[~nz] == 0).all()
    assert codes[1, 5] == (0xF if values[0] < 0 else 0x7)  # the amax element is +-6 x its block scale
    _, _, want = _reference(x, float(q.global_scale))
    assert torch.allclose(out.double(), want, rtol=1e-6, atol=8 * 2.0**-149)
    assert float(out[1, 5]) == pytest.approx(values[0], rel=0.2 if abs(values[0]) < 1e-41 else 0.03)


def test_below_fp32_global_scale_the_tensor_is_stored_as_zeros():
    """amax / 2688 rounds to 0 in FP32 (amax < ~1.9e-42): g = 0, the all-zero encoding, signs kept."""
    x = torch.zeros(2, 16)
    x[0, 0], x[1, 3] = 1e-42, -1e-42
    q = quantize(x)
    assert float(q.global_scale) == 0 and unpack(q.packed)[0, 0] == 0 and unpack(q.packed)[1, 3] == 0x8
    out = dequantize(q)
    assert (out == 0).all() and torch.signbit(out[1, 3])


def test_an_explicit_global_scale_is_checked_and_never_makes_nan():
    x = torch.tensor([[0.0, 1.0, -2.0] + [0.0] * 13])
    q = quantize(x, global_scale=torch.tensor(2.0**-149))  # far too small: saturates, zeros stay zero
    assert unpack(q.packed)[0, :3].tolist() == [0x0, 0x7, 0xF] and torch.isfinite(dequantize(q)).all()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="global scale"):
            quantize(x, global_scale=torch.tensor(bad))


def _torchao_nvfp4(x):
    torchao = pytest.importorskip("torchao")
    if torchao.__version__.split("+")[0] != TORCHAO_PINNED:
        pytest.skip(f"compared against torchao {TORCHAO_PINNED}, found {torchao.__version__}")
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.float().abs().amax()))


@pytest.mark.parametrize("amax", TINY_AMAXES)
def test_tiny_tensors_equal_torchao_wherever_its_reciprocal_is_finite(amax):
    x = _scaled_gaussian(amax, seed=1)
    ref, q = _torchao_nvfp4(x), quantize(x)
    # g and the scale bytes never involve 1 / g: equal everywhere
    assert torch.equal(q.global_scale, ref.per_tensor_scale.float())
    assert torch.equal(q.scales.view(torch.uint8), ref.scale.view(torch.uint8))
    # the codes: equal in every block whose (1 / g) / s torchao computes as a finite number
    finite = torch.isfinite((1.0 / ref.per_tensor_scale.float()) / ref.scale.float())
    ours, theirs = unpack(q.packed).view(32, 4, 16), unpack(ref.qdata.view(torch.uint8)).view(32, 4, 16)
    assert torch.equal(ours[finite], theirs[finite])
    assert torch.equal(dequantize(q).view(32, 4, 16)[finite], ref.dequantize(torch.float32).view(32, 4, 16)[finite])
    n_over = int((~finite).sum())
    # where it overflows, torchao's codes are +-6 or NaN's 0xB; ours are the float64 rule's (test above)
    # none at 1e-33; the zero block (s = 2^-6) from 5e-34; every block once 1 / g itself is inf
    assert (n_over > 0) == (amax < 1e-33) and (n_over == finite.numel()) == (amax <= AMAX_INF_RECIP)
    if n_over:
        assert (theirs[~finite] != ours[~finite]).any() and ((theirs[~finite] & 7) >= 3).all()
