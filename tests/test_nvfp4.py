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
