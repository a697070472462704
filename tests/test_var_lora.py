"""LoRA (real peft) on VAR: every linear takes effect, merging is exact, zero-init is a no-op, KV cache agrees."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_var_models
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from vgen.engine.scalewise import sample, teacher_forcing_inputs
from vgen.models.var.folder import build_var

ALL = ["mat_qkv", "proj", "fc1", "fc2"]
KW = dict(cfg=2.0, top_k=0, top_p=0.0)


def lively(var: nn.Module, seed: int = 1) -> nn.Module:
    """The tiny VAR with every linear at PyTorch's default init: ``init_weights`` starts the AdaLN gammas
    at 1e-5, which would make every block (and so every LoRA on it) all but invisible in the logits."""
    torch.manual_seed(seed)
    for m in var.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return var


@pytest.fixture(scope="module")
def models():
    vae, var = tiny_var_models()
    return vae, lively(var)


def tf_batch(vae, B=3, seed=0):
    """Labels and teacher-forcing inputs of random token maps."""
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, 32, (B, p * p), generator=g) for p in (1, 2, 4)]
    return torch.tensor([1, 5, 9, 2, 7][:B]), teacher_forcing_inputs(vae, tokens)


def lora(var, targets, seed=2, r=4):
    """A copy of var with a LoRA (peft, injected in place) on ``targets``; B random unless seed is None."""
    m = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets), copy.deepcopy(var))
    if seed is not None:
        randomize_b(m, seed)
    return m


def randomize_b(model, seed):
    torch.manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    for m in layers:
        nn.init.normal_(m.lora_B["default"].weight, std=0.3)


def test_qkv_goes_through_the_module_and_matches_the_fused_linear(models):
    var = copy.deepcopy(models[1])
    attn = var.blocks[0].attn
    with torch.no_grad():
        attn.q_bias.normal_(), attn.v_bias.normal_()
        x = torch.randn(3, 5, var.C)
        q, k, v = attn.qkv(x)
        bias = torch.cat((attn.q_bias, attn.zero_k_bias, attn.v_bias))
        ref = F.linear(x, attn.mat_qkv.weight, bias).view(3, 5, 3, attn.num_heads, attn.head_dim)
        ref = ref.permute(2, 0, 3, 1, 4)
        rq = F.normalize(ref[0], dim=-1) * attn.scale_mul_1H11.clamp_max(attn.max_scale_mul).exp()
        assert torch.allclose(q, rq, atol=1e-6) and torch.allclose(k, F.normalize(ref[1], dim=-1), atol=1e-6)
        assert torch.allclose(v, ref[2], atol=1e-6)
    names = set(var.state_dict())
    assert {"blocks.0.attn.mat_qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
            "blocks.0.attn.zero_k_bias"} <= names and "blocks.0.attn.mat_qkv.bias" not in names


@pytest.mark.parametrize("targets", [ALL, ["mat_qkv"], ["proj"], ["fc1"], ["fc2"], ["ada_lin.1"], ["head"],
                                     ["word_embed"]])
def test_a_nonzero_lora_changes_the_logits(models, targets):
    vae, var = models
    labels, x = tf_batch(vae)
    with torch.no_grad():
        base, tuned = var(labels, x), lora(var, targets)(labels, x)
    assert (tuned - base).abs().max() > 1e-2, targets


def test_lora_on_the_shared_adaln_projection_takes_effect():
    vae, var = tiny_var_models()
    shared = lively(build_var({**var.arch, "shared_aln": True}).eval())
    labels, x = tf_batch(vae)
    with torch.no_grad():
        base = shared(labels, x)
        tuned = lora(shared, ["shared_ada_lin.1"])
        assert (tuned(labels, x) - base).abs().max() > 1e-2
        assert "shared_ada_lin.1.weight" in shared.state_dict()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_merging_gives_the_unmerged_logits(models, dtype, tol):
    """float64: max |merged - unmerged| is ~1e-15 (asserted < 1e-6). float32: ~4e-7 measured on logits of
    size ~2.5 (a few ulps of float32 through two blocks: W x + B A x and (W + B A) x round differently);
    asserted < 1e-5 so another BLAS cannot break it."""
    vae, var = models
    labels, x = tf_batch(vae)
    x = x.to(dtype)
    base = copy.deepcopy(var).to(dtype)
    names = set(base.state_dict())
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=ALL + ["head"]))
    randomize_b(pm, 3)
    with torch.no_grad():
        unmerged = pm(labels, x)
        merged_model = pm.merge_and_unload()
        merged = merged_model(labels, x)
        assert (unmerged - base(labels, x)).abs().max() > 1e-2
    assert (merged - unmerged).abs().max() < tol
    assert isinstance(merged_model.blocks[0].attn.mat_qkv, nn.Linear) and set(merged_model.state_dict()) == names


def test_a_zero_initialised_lora_is_bit_identical(models):
    vae, var = models
    labels, x = tf_batch(vae)
    m = lora(var, ALL + ["ada_lin.1", "head", "word_embed"], seed=None)  # peft's default: B = 0
    assert sum(isinstance(mod, LoraLayer) for mod in m.modules()) == 2 * 5 + 3  # + head_nm.ada_lin.1, head, word_embed
    with torch.no_grad():
        assert torch.equal(m(labels, x), var(labels, x))
    assert all(torch.equal(a, b) for a, b in zip(sample(m, vae, [1, 4], [0, 1], **KW).tokens,
                                                  sample(var, vae, [1, 4], [0, 1], **KW).tokens))


def test_the_kv_cached_sampler_agrees_with_recompute_on_a_lora_model(models):
    vae, var = models
    m = lora(var, ALL)
    cached = sample(m, vae, [1, 4, 9], [0, 1, 2], return_logits=True, **KW)
    full = sample(m, vae, [1, 4, 9], [0, 1, 2], use_cache=False, return_logits=True, **KW)
    assert all(torch.equal(a, b) for a, b in zip(cached.tokens, full.tokens))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached.logits, full.logits))
    base = sample(var, vae, [1, 4, 9], [0, 1, 2], **KW)
    assert not all(torch.equal(a, b) for a, b in zip(cached.tokens, base.tokens))  # the LoRA is in effect
