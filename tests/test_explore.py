"""Explore copies: LoRA merged, backend applied, refreshed in place from the trained weights."""

import pytest
import torch
from conftest import gpu_only

from vgen.quant.emulate import NVFP4EmuLinear
from vgen.quant.explore import explore_copy, refresh
from vgen.quant.nvfp4 import dequantize, quantize


def _inputs(tr, b=2):
    g = torch.Generator().manual_seed(0)
    cfg = tr.config
    return dict(hidden_states=torch.randn(b, cfg.in_channels, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(b, 5, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(b, cfg.pooled_projection_dim, generator=g),
                timestep=torch.tensor([300.0, 700.0][:b]), return_dict=False)


@pytest.fixture()
def lora_transformer():
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16,
                               num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=64,
                               pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16).eval()
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                              init_lora_weights=False))  # random B: the merge matters
    return tr


@torch.no_grad()
def test_fp32_copy_merges_lora_and_refresh_follows_training(lora_transformer):
    tr = lora_transformer
    clone = explore_copy(tr, "fp32")
    assert clone.vgen_backend == "fp32" and not any("lora" in n for n, _ in clone.named_parameters())
    x = _inputs(tr)
    assert torch.allclose(clone(**x)[0], tr(**x)[0], atol=1e-5)
    for n, p in tr.named_parameters():  # a "training step" on the LoRA weights
        if "lora_B" in n:
            p.add_(0.1)
    assert not torch.allclose(clone(**x)[0], tr(**x)[0], atol=1e-3)
    seconds = refresh(clone, tr)
    assert seconds > 0 and torch.allclose(clone(**x)[0], tr(**x)[0], atol=1e-5)
    assert all(not p.requires_grad for p in clone.parameters())


@torch.no_grad()
def test_nvfp4_emu_copy_quantizes_the_planned_linears(lora_transformer):
    tr = lora_transformer
    clone = explore_copy(tr, "nvfp4-emu")
    emu = {n: m for n, m in clone.named_modules() if isinstance(m, NVFP4EmuLinear)}
    assert set(emu) == set(clone.vgen_targets) and "transformer_blocks.0.attn.to_q" in emu
    assert "proj_out" not in emu and "transformer_blocks.0.norm1.linear" not in emu
    merged = tr.transformer_blocks[0].attn.to_q
    w = merged.base_layer.weight + merged.get_delta_weight("default")
    assert torch.equal(emu["transformer_blocks.0.attn.to_q"].weight_dq, dequantize(quantize(w)))
    for n, p in tr.named_parameters():
        if "lora_B" in n:
            p.mul_(-1)
    refresh(clone, tr)
    w = merged.base_layer.weight + merged.get_delta_weight("default")
    assert torch.equal(emu["transformer_blocks.0.attn.to_q"].weight_dq, dequantize(quantize(w)))
    x = _inputs(tr)
    ref, got = tr(**x)[0], clone(**x)[0]
    assert torch.isfinite(got).all() and (got - ref).pow(2).mean() < ref.pow(2).mean()


@torch.no_grad()
def test_bf16_copy(lora_transformer):
    clone = explore_copy(lora_transformer, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in clone.parameters())
    x = {k: (v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v)
         for k, v in _inputs(lora_transformer).items()}
    assert torch.isfinite(clone(**x)[0]).all()


@gpu_only((8, 9), "fp8 needs a CUDA GPU with sm_89+")
@torch.no_grad()
def test_fp8_copy_on_gpu(lora_transformer):
    tr = lora_transformer.cuda()
    clone = explore_copy(tr, "fp8", device="cuda")
    x = {k: (v.cuda().bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v)
         for k, v in _inputs(tr).items()}
    x["timestep"] = x["timestep"].float()
    assert torch.isfinite(clone(**x)[0]).all()
    refresh(clone, tr)


def test_explore_policy_rolls_out_with_the_copy(model_dir):
    """An fp32 copy reproduces the policy bit for bit; a bf16 copy runs with the fp32 text
    encoders it shares (conditioning cast to its dtype) and stays close."""
    from vgen.engine import rollout
    from vgen.models.load import load_policy
    from vgen.quant.explore import explore_policy

    policy = load_policy(model_dir)
    kw = dict(steps=3, guidance=3.0, height=32, width=32)
    prompts, seeds = ["a photo of a red circle", "a photo of two squares"], [3, 4]
    ref = rollout(policy, prompts, seeds, **kw)
    same = rollout(explore_policy(policy, "fp32"), prompts, seeds, **kw)
    assert torch.equal(ref.latents, same.latents)
    bf = explore_policy(policy, "bf16")
    assert bf.transformer.dtype == torch.bfloat16 and policy.transformer.dtype == torch.float32
    low = rollout(bf, prompts, seeds, **kw)
    assert 0 < (low.images - ref.images).abs().mean() < 0.05
