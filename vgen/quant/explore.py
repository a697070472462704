"""The explore-precision copy of a policy's denoiser, and its cheap refresh.

Sol-RL explores with a low-precision copy of the policy it trains. ``explore_copy`` builds
that copy once: LoRA (peft) merged into plain weights, then the module policy's linears
converted for the backend (bf16 cast; nvfp4-emu emulated W4A4; torchao float8 / NVFP4 or
Transformer Engine NVFP4 on GPUs). ``refresh`` later copies the trained weights (LoRA merged again) into the same
modules in place, re-quantizing only what the backend quantizes: no module is rebuilt,
no memory is reallocated for the bf16 / fp32 cases.
"""

from __future__ import annotations

import copy as _copy
import time

import torch
from torch import nn

from vgen.quant.backends import resolve
from vgen.quant.emulate import NVFP4EmuLinear
from vgen.quant.policy import plan


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of ``model`` under its plain name, with active LoRA adapters merged in; the
    full tensors of an FSDP-sharded model (gathered: every process must call this)."""
    from vgen.train.fsdp import full

    out: dict[str, torch.Tensor] = {}
    loras = _lora_layers(model)
    for name, layer in loras.items():
        base = layer.get_base_layer()
        w = full(base.weight.detach())
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A and not layer.merged:
                w = w + full(layer.get_delta_weight(adapter)).to(w.dtype)
        out[f"{name}.weight"] = w
        if base.bias is not None:
            out[f"{name}.bias"] = full(base.bias.detach())
    for name, p in model.named_parameters():
        if "lora_" in name or ".base_layer." in name:
            continue
        if name not in out:
            out[name] = full(p.detach())
    return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def merged_copy(model: nn.Module) -> nn.Module:
    """A frozen full-precision copy of ``model`` with its LoRA adapters merged into plain linears
    (what an explore copy starts from; a VAR checkpoint's model folder is written from one)."""
    loras = _lora_layers(model)
    clone = _copy.deepcopy(model)
    weights = merged_weights(model)
    for lname in loras:  # plain linears in place of the LoRA wrappers
        _set_module(clone, lname, _copy.deepcopy(loras[lname].get_base_layer()))
    clone.load_state_dict(weights, strict=False)
    return clone.requires_grad_(False).eval()


def explore_copy(model: nn.Module, backend: str = "auto", device: str | torch.device = "cpu",
                 min_features: int = 64) -> nn.Module:
    """A frozen low-precision copy of ``model`` for the explore role (``copy.vgen_backend`` says which)."""
    name, why = resolve(backend, device)
    clone = merged_copy(model)
    targets = [d.name for d in plan(clone, min_features=min_features) if d.quantize]
    if name == "bf16":
        _cast_bf16(clone)
    elif name in ("nvfp4-emu", "nvfp4-te"):
        if name == "nvfp4-te":
            from vgen.quant.te import TENVFP4Linear as wrap

            clone.to(torch.bfloat16)
        else:
            wrap = NVFP4EmuLinear
        for t in targets:
            _set_module(clone, t, wrap(clone.get_submodule(t)))
    elif name in ("fp8", "nvfp4"):
        _torchao_quantize(clone, name, set(targets))
    clone.vgen_backend, clone.vgen_backend_reason, clone.vgen_targets = name, why, targets
    return clone


def _cast_bf16(model: nn.Module) -> None:
    """Cast to bf16 without diffusers' warning about casting after loading: an explore copy is
    meant to be all low precision, and the warning would print on every run."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        model.to(torch.bfloat16)
    finally:
        dlog.set_verbosity(level)


def explore_policy(policy, backend: str = "auto", min_features: int = 64):
    """``policy`` over an explore copy of its denoiser (text encoders, VAE, scheduler shared)."""
    return policy.with_transformer(explore_copy(policy.transformer, backend, policy.device, min_features))


def _torchao_quantize(model: nn.Module, backend: str, targets: set[str]) -> None:
    from torchao.quantization import quantize_

    if backend == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    else:
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        config = NVFP4DynamicActivationNVFP4WeightConfig()
    model.to(torch.bfloat16)
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in targets)


@torch.no_grad()
def refresh(clone: nn.Module, model: nn.Module) -> float:
    """Load ``model``'s current weights (LoRA merged) into ``clone`` in place; returns seconds taken."""
    t0 = time.perf_counter()
    weights = merged_weights(model)
    targets = set(clone.vgen_targets)
    handled = set()  # parameters re-quantized below; the rest are plain copies
    for name, module in clone.named_modules():
        if hasattr(module, "set_weight") or (name in targets and clone.vgen_backend in ("fp8", "nvfp4")):
            handled |= {f"{name}.weight", f"{name}.bias", f"{name}.inner.weight", f"{name}.inner.bias"}
        if hasattr(module, "set_weight"):  # NVFP4EmuLinear, TENVFP4Linear
            module.set_weight(weights[f"{name}.weight"])
            if module.bias is not None:
                module.bias.copy_(weights[f"{name}.bias"])
        elif name in targets and clone.vgen_backend in ("fp8", "nvfp4"):
            fresh = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=weights[f"{name}.weight"].device, dtype=torch.bfloat16)
            fresh.weight.copy_(weights[f"{name}.weight"])
            if fresh.bias is not None:
                fresh.bias.copy_(weights[f"{name}.bias"])
            _torchao_quantize(fresh, clone.vgen_backend, {""})
            module.weight = fresh.weight
            if module.bias is not None:
                module.bias.copy_(fresh.bias)
    for name, p in clone.named_parameters():
        if name not in handled and name in weights:
            p.copy_(weights[name])
    return time.perf_counter() - t0
