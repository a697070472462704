"""Precision backends, the emulated NVFP4 linear, and the module policy."""

import math

import pytest
import torch
from torch import nn

from vgen.errors import UserError
from vgen.quant.backends import availability, cpu_bf16_native, report, resolve
from vgen.quant.emulate import NVFP4EmuLinear
from vgen.quant.nvfp4 import dequantize, quantize
from vgen.quant.policy import plan


def test_cpu_backends_and_auto():
    avail = {a.name: a.ok for a in report("cpu")}
    assert avail == {"fp32": True, "bf16": True, "fp8": False, "nvfp4": False, "nvfp4-te": False, "nvfp4-emu": True}
    name, why = resolve("auto", "cpu")
    assert "sm_100" in why and "sm_89" in why
    # auto takes bf16 on a CPU only where bf16 matmuls are native (AVX512-BF16 / AMX)
    assert name == ("bf16" if cpu_bf16_native() else "fp32")


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_needs_native_bf16(monkeypatch, native):
    import vgen.quant.backends as b

    monkeypatch.setattr(b, "cpu_bf16_native", lambda: native)
    name, why = b.resolve("auto", "cpu")
    assert name == ("bf16" if native else "fp32")
    assert native or "AVX512-BF16" in why
    assert b.availability("bf16", "cpu").ok  # asked for by name, it still runs


@pytest.mark.parametrize("onednn, avx512_bf16, amx, machine, want", [
    (True, False, False, "x86_64", False),  # AVX-512 without BF16: oneDNN says yes and converts in software
    (True, True, False, "x86_64", True),    # Cooper Lake, Zen 4 and 5
    (True, False, True, "x86_64", True),    # AMX
    (False, True, True, "x86_64", False),   # oneDNN held below its bf16 ISA (ONEDNN_MAX_CPU_ISA) or absent
    (True, False, False, "aarch64", True),  # ARM: oneDNN's check is the BF16 extension itself
    (False, False, False, "aarch64", False),
])
def test_cpu_bf16_native_needs_the_instructions_and_onednn(monkeypatch, onednn, avx512_bf16, amx, machine, want):
    import platform

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert cpu_bf16_native() is want


@pytest.mark.parametrize("name, needle", [("fp8", "sm_89+"), ("nvfp4", "sm_100+"), ("nvfp4-te", "sm_100+")])
def test_missing_hardware_is_a_one_line_error(name, needle):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=needle) as e:
        resolve(name, "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown precision backend 'fp4'"):
        availability("fp4")


def test_transformer_engine_backend_is_import_guarded(monkeypatch):
    """On a Blackwell-class device without the `te` extra, nvfp4-te names the missing package."""
    import vgen.quant.backends as b

    monkeypatch.setattr(b, "_capability", lambda dev: (10, 0))
    monkeypatch.setattr(b, "_has", lambda module, attr: not module.startswith("transformer_engine"))
    a = b.availability("nvfp4-te", "cuda")
    assert not a.ok and "Transformer Engine" in a.reason and "vgen[te]" in a.reason
    assert b.availability("nvfp4", "cuda").ok
    assert b.resolve("auto", "cuda")[0] == "nvfp4"  # auto prefers torchao's NVFP4


def test_emulated_linear_is_exactly_dequantize_then_fp32_matmul():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(5, 7, 64, generator=g)
    emu = NVFP4EmuLinear(lin)
    ref = dequantize(quantize(x)) @ dequantize(quantize(lin.weight.detach())).T + lin.bias.detach()
    assert torch.equal(emu(x), ref)


def test_emulated_linear_sqnr_on_a_gaussian_1024_layer():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(1024, 1024, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1024, 1024, generator=g))
    x = torch.randn(256, 1024, generator=g)
    with torch.no_grad():
        ref, got = lin(x), NVFP4EmuLinear(lin)(x)
    sqnr = 10 * math.log10(ref.pow(2).sum() / (ref - got).pow(2).sum())
    assert sqnr >= 16, sqnr


def test_refresh_requantizes_in_place():
    lin = nn.Linear(32, 32)
    emu = NVFP4EmuLinear(lin)
    with torch.no_grad():
        lin.weight.mul_(2)
    emu.set_weight(lin.weight)
    assert torch.equal(emu.weight_dq, dequantize(quantize(lin.weight.detach())))


def test_policy_quantizes_block_attention_and_mlps_only(sd3_pipe):
    tr = sd3_pipe.transformer  # tiny: width 16, so lower the size floor to see the rule itself
    decisions = {d.name: d for d in plan(tr, min_features=16)}
    assert decisions["transformer_blocks.0.attn.to_q"].quantize
    assert decisions["transformer_blocks.0.ff.net.2"].quantize
    assert not decisions["transformer_blocks.0.norm1.linear"].quantize  # adaLN modulation
    assert not decisions["proj_out"].quantize and not decisions["norm_out.linear"].quantize
    assert not any(d.quantize for n, d in decisions.items() if "embed" in n)
    assert not any(d.quantize for d in plan(tr))  # with the default floor (64) nothing this small
    forced = {d.name: d for d in plan(tr, include=("proj_out",), exclude=("*.attn.to_q",), min_features=16)}
    assert forced["proj_out"].quantize and not forced["transformer_blocks.0.attn.to_q"].quantize


def test_info_quant_plan_cli(model_dir, tmp_path, capsys):
    from vgen.cli import main

    assert main(["info", "--quant-plan", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "SD3Transformer2DModel" in out and "linears quantized" in out and "proj_out" in out
    assert main(["info", "--quant-plan", str(tmp_path)]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err
