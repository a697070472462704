"""Precision backends: which exist, which this machine can run, and which ``auto`` picks.

  fp32       full precision, everywhere
  bf16       bfloat16 weights and activations; CPUs and sm80+ GPUs
  fp8        torchao float8 rowwise dynamic (W8A8); CUDA sm89+ (Ada, Hopper, Blackwell)
  nvfp4      torchao NVFP4 dynamic W4A4; CUDA sm100+ (Blackwell)
  nvfp4-te   Transformer Engine NVFP4 (NVFP4BlockScaling); sm100+ with the optional `te` extra
  nvfp4-emu  W4A4 quantize-dequantize in fp32 (vgen.quant.emulate), any device: fidelity studies
  auto       the fastest low precision for the explore role: nvfp4 > fp8 > bf16, with the reason;
             on a CPU without native bfloat16 (AVX512-BF16 / AMX) bf16 matmuls are emulated and
             many times slower than fp32, so auto takes fp32 there

Asking for a backend the hardware lacks is a one-line error naming the requirement.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from vgen.errors import UserError

BACKENDS = ("fp32", "bf16", "fp8", "nvfp4", "nvfp4-te", "nvfp4-emu", "auto")


@dataclass(frozen=True)
class Availability:
    name: str
    ok: bool
    reason: str


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _has(module: str, attr: str) -> bool:
    try:
        mod = __import__(module, fromlist=[attr])
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return hasattr(mod, attr)


def cpu_bf16_native() -> bool:
    """Whether this CPU has bfloat16 matmul instructions: AVX512-BF16 or AMX on x86, BF16 on ARM.

    oneDNN's own check (``_is_mkldnn_bf16_supported``) is also true on any AVX-512 CPU without them
    (Skylake-SP to Ice Lake server), where it converts to fp32 in software: a bf16 matmul took 2.5-2.7x
    fp32's time and the tiny VAR's explore copy 1.6-2.0x (oneDNN limited to AVX-512 without BF16 on an
    AVX512-BF16 EPYC, ``tools/cpu_bf16_probe.py``). Without AVX-512 torch emulates them itself, 40x
    slower than fp32 on an AVX2 EPYC. So on x86 both the instructions and oneDNN's check must hold."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return onednn  # ARM: oneDNN's check is the BF16 extension itself
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # absent from a torch: not native
    return onednn and any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def bf16_native(device: str | torch.device) -> bool:
    """Whether bf16 runs in hardware on ``device`` (a GPU, or a CPU with AVX512-BF16 / AMX): where it
    does not, bf16 is emulated and slower than fp32, so neither ``auto`` nor an explore copy uses it."""
    return torch.device(device).type != "cpu" or cpu_bf16_native()


def availability(name: str, device: str | torch.device = "cpu") -> Availability:
    """Whether ``name`` can run on ``device``, and why (not)."""
    dev = torch.device(device)
    cap = _capability(dev)
    where = f"sm_{cap[0]}{cap[1]}" if cap else ("no CUDA device" if dev.type != "cuda" else "CUDA unavailable")
    if name in ("fp32", "nvfp4-emu"):
        return Availability(name, True, "runs on any device")
    if name == "bf16":
        if dev.type == "cpu":
            if cpu_bf16_native():
                return Availability(name, True, "CPU bfloat16 matmul (AVX512-BF16 / AMX)")
            return Availability(name, True, "runs, but this CPU has no AVX512-BF16 / AMX: bf16 matmuls are "
                                            "emulated and slower than fp32")
        ok = cap is not None and cap >= (8, 0)
        return Availability(name, ok, f"needs sm_80+; this device: {where}")
    if name == "fp8":
        if cap is None or cap < (8, 9):
            return Availability(name, False, f"needs a CUDA GPU with sm_89+ (Ada/Hopper); this device: {where}")
        if not _has("torchao.quantization", "Float8DynamicActivationFloat8WeightConfig"):
            return Availability(name, False, "needs torchao with Float8DynamicActivationFloat8WeightConfig")
        return Availability(name, True, f"torchao float8 rowwise on {where}")
    if name == "nvfp4":
        if cap is None or cap < (10, 0):
            return Availability(name, False, f"needs a CUDA GPU with sm_100+ (Blackwell); this device: {where}")
        if not _has("torchao.prototype.mx_formats", "NVFP4DynamicActivationNVFP4WeightConfig"):
            return Availability(name, False, "needs torchao with NVFP4DynamicActivationNVFP4WeightConfig")
        return Availability(name, True, f"torchao NVFP4 W4A4 on {where}")
    if name == "nvfp4-te":
        if cap is None or cap < (10, 0):
            return Availability(name, False, f"needs a CUDA GPU with sm_100+ (Blackwell); this device: {where}")
        if not _has("transformer_engine.common.recipe", "NVFP4BlockScaling"):
            return Availability(name, False, "needs Transformer Engine >= 2.8 (pip install 'vgen[te]')")
        return Availability(name, True, f"Transformer Engine NVFP4BlockScaling on {where}")
    raise UserError(f"unknown precision backend {name!r}; choose one of {', '.join(BACKENDS)}")


def resolve(name: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """(concrete backend, why) for a requested one; ``auto`` takes the first available of
    nvfp4, fp8, bf16. A concrete backend the hardware lacks is a one-line UserError."""
    if name == "auto":
        skipped = []
        for cand in ("nvfp4", "fp8", "bf16"):
            a = availability(cand, device)
            if a.ok and cand == "bf16" and not bf16_native(device):
                a = Availability(cand, False, "this CPU has no AVX512-BF16 / AMX (emulated bf16 is slower than fp32)")
            if a.ok:
                why = f"auto -> {cand}: {a.reason}" + (f" ({'; '.join(skipped)})" if skipped else "")
                return cand, why
            skipped.append(f"{cand}: {a.reason}")
        return "fp32", "auto -> fp32: " + "; ".join(skipped)
    a = availability(name, device)
    if not a.ok:
        raise UserError(f"precision backend {name!r} is not available: {a.reason}")
    return name, a.reason


def report(device: str | torch.device = "cpu") -> list[Availability]:
    """Every concrete backend's availability on ``device`` (for `vgen info`)."""
    return [availability(n, device) for n in BACKENDS if n != "auto"]
