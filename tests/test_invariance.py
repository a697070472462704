"""batch_invariant: each sample's numbers the same in any batch on CPU, and nothing else changed."""

import pytest
import torch
from torch import nn

from vgen.engine.invariance import MIN_ROWS, batch_invariant, needed


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 8, 1),
                         nn.Flatten(2), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 5)).eval()


@torch.no_grad()
def test_each_sample_is_bit_identical_alone_and_in_any_batch():
    m, x = net(), torch.randn(40, 3, 4, 4)
    with batch_invariant(m):
        ref = m(x)
        for n in (1, 2, 3, 7, 16, 17):  # a row count on each side of MIN_ROWS, and a channels-last-looking batch of 1
            assert torch.equal(m(x[:n]), ref[:n])
            assert torch.equal(m(x[n:n + 1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)), ref[n:n + 1])
    assert torch.allclose(m(x), ref, atol=1e-5)  # the same function, within rounding


def test_a_few_row_linear_runs_on_min_rows_and_keeps_its_shape_and_gradient(monkeypatch):
    lin, seen, linear = nn.Linear(6, 4), [], nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda x, *a: seen.append(tuple(x.shape)) or linear(x, *a))
    x = torch.randn(2, 1, 6, requires_grad=True)
    with batch_invariant(lin):
        y = lin(x)
    assert seen == [(MIN_ROWS, 6)] and y.shape == (2, 1, 4)
    assert torch.allclose(y, linear(x, lin.weight, lin.bias), atol=1e-6)
    y.sum().backward()  # the padding rows carry no gradient: d(sum)/dx is the column sum of W
    assert torch.allclose(x.grad, lin.weight.sum(0).expand(2, 1, 6), atol=1e-6)


def test_forwards_are_restored_after_the_block_nested_or_raising():
    m = net()
    with batch_invariant(m), batch_invariant(m[5]):  # an inner block does not wrap twice
        assert getattr(m[5].forward, "batch_invariant", False)
        assert m[5].forward.__closure__[0].cell_contents.__self__ is m[5]
    with pytest.raises(RuntimeError), batch_invariant(m):
        raise RuntimeError("boom")
    assert all("forward" not in s.__dict__ for s in m.modules())


def test_lora_layers_are_covered():
    peft = pytest.importorskip("peft")
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    m = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False)).eval()
    x = torch.randn(20, 8)
    with torch.no_grad(), batch_invariant(m):
        ref = m(x)
        assert all(torch.equal(m(x[i:i + 1]), ref[i:i + 1]) for i in range(20))


def test_only_cpu_needs_it():
    assert needed("cpu") and not needed("meta") and not needed(torch.device("cuda", 0))
    m = net().to("meta")
    with batch_invariant(m):
        assert all("forward" not in s.__dict__ for s in m.modules())
