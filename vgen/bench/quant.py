"""`vgen bench quant`: what the precision backends cost and gain, side by side in one process.

* CPU quantize throughput: vgen's NVFP4 reference (quantize, dequantize, pack) against
  torchao's ``NVFP4Tensor.to_nvfp4`` on the same (rows x cols) fp32 tensor;
* CPU rollout speed: the policy in fp32, in bf16 (the CPU explore backend), and with an
  nvfp4-emu explore copy of its denoiser; folded engine, same prompts and seeds;
* on a CUDA GPU only: a (gemm x gemm) by (gemm x gemm) GEMM and one SD3 joint transformer
  block in bf16, fp8 (torchao rowwise), nvfp4-emu and, on Blackwell, nvfp4; speeds are
  relative to bf16. Without a GPU this part is reported as skipped, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_time, publish
from vgen.config import param
from vgen.run import RunConfig

RECIPE = "bench.quant"


@dataclass
class QuantBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/sd3-tiny-shapes", help="local SD3 pipeline folder for the rollout part")
    rows: int = param(4096, ge=16, le=65536, help="rows of the quantized tensor")
    cols: int = param(4096, ge=16, le=65536, help="columns (a multiple of 16)")
    batch: int = param(64, ge=1, le=4096, help="samples per rollout")
    steps: int = param(10, ge=1, le=1000, help="rollout steps")
    guidance: float = param(4.5, ge=1.0, le=50.0, help="CFG scale")
    gemm: int = param(4096, ge=16, le=32768, help="GPU GEMM size (square)")
    block_tokens: int = param(4096, ge=16, le=65536, help="image tokens through the GPU transformer block")
    repeats: int = param(3, ge=1, le=50, help="timed repeats; the best is kept")


def _quantize_throughput(cfg: QuantBenchConfig) -> dict:
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    from vgen.quant.nvfp4 import dequantize, pack, quantize, unpack

    x = torch.randn(cfg.rows, cfg.cols, generator=torch.Generator().manual_seed(0))
    q = quantize(x)
    codes = unpack(q.packed)
    timed = {
        "vgen_quantize": best_time(lambda: quantize(x), cfg.repeats),
        "vgen_dequantize": best_time(lambda: dequantize(q), cfg.repeats),
        "vgen_pack": best_time(lambda: pack(codes), cfg.repeats),
        "torchao_to_nvfp4": best_time(
            lambda: NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax())), cfg.repeats),
    }
    n = x.numel()
    return {k: {"seconds": v, "melem_per_s": n / v / 1e6} for k, v in timed.items()}


def _rollout_speed(cfg: QuantBenchConfig) -> dict:
    from vgen.engine import rollout
    from vgen.models.load import load_policy
    from vgen.quant.explore import explore_policy
    from vgen.world.grammar import sample_prompts

    prompts = sample_prompts("train", cfg.batch, seed=cfg.run.seed)
    seeds = list(range(cfg.batch))
    fp32 = load_policy(cfg.model)
    runs = {"fp32": fp32, "bf16": load_policy(cfg.model, dtype="bfloat16"),
            "nvfp4-emu copy": explore_policy(fp32, "nvfp4-emu")}
    kw = dict(steps=cfg.steps, guidance=cfg.guidance)
    secs = {k: best_time(lambda p=p: rollout(p, prompts, seeds, **kw), cfg.repeats) for k, p in runs.items()}
    return {k: {"seconds": v, "images_per_s": cfg.batch / v, "speed_vs_fp32": secs["fp32"] / v}
            for k, v in secs.items()}


def _gpu(cfg: QuantBenchConfig) -> dict:
    """GEMM and transformer-block timings on a CUDA device, relative to bf16."""
    from torch import nn

    from vgen.quant.backends import availability
    from vgen.quant.emulate import NVFP4EmuLinear
    from vgen.quant.explore import _set_module, _torchao_quantize

    dev = torch.device("cuda")

    def timed(fn):  # best_time waits for the GPU after every call
        return best_time(fn, cfg.repeats)

    def convert(module: nn.Module, backend: str) -> nn.Module:
        module = module.to(dev, torch.bfloat16).eval().requires_grad_(False)
        names = {n for n, m in module.named_modules() if isinstance(m, nn.Linear) and m.in_features % 16 == 0}
        if backend in ("fp8", "nvfp4"):
            _torchao_quantize(module, backend, names)
        elif backend == "nvfp4-emu":
            for n in names:
                _set_module(module, n, NVFP4EmuLinear(module.get_submodule(n)))
        return module

    backends = ["bf16"] + [b for b in ("fp8", "nvfp4", "nvfp4-emu") if availability(b, dev).ok]
    g = cfg.gemm
    x = torch.randn(g, g, device=dev, dtype=torch.bfloat16)
    gemm = {}
    for b in backends:
        lin = nn.Sequential(nn.Linear(g, g, bias=False))
        lin = convert(lin, b)
        with torch.no_grad():
            gemm[b] = timed(lambda lin=lin: lin(x))
    from diffusers.models.attention import JointTransformerBlock

    block_s = {}
    h = torch.randn(1, cfg.block_tokens, 1536, device=dev, dtype=torch.bfloat16)
    c = torch.randn(1, 333, 1536, device=dev, dtype=torch.bfloat16)
    temb = torch.randn(1, 1536, device=dev, dtype=torch.bfloat16)
    for b in backends:
        torch.manual_seed(0)
        block = convert(JointTransformerBlock(dim=1536, num_attention_heads=24, attention_head_dim=64), b)
        with torch.no_grad():
            block_s[b] = timed(lambda block=block: block(h, c, temb))
    flops = 2 * g**3
    return {"device": torch.cuda.get_device_name(dev),
            "gemm": {b: {"seconds": s, "tflops": flops / s / 1e12, "speed_vs_bf16": gemm["bf16"] / s}
                     for b, s in gemm.items()},
            "block": {b: {"seconds": s, "speed_vs_bf16": block_s["bf16"] / s} for b, s in block_s.items()}}


def run(cfg: QuantBenchConfig, run_dir: Path) -> int:
    if cfg.cols % 16:
        from vgen.errors import UserError

        raise UserError(f"cols must be a multiple of 16 (NVFP4 blocks), got {cfg.cols}")
    report = {"recipe": RECIPE, "threads": torch.get_num_threads(), "shape": [cfg.rows, cfg.cols],
              "quantize_cpu": _quantize_throughput(cfg), "rollout_cpu": _rollout_speed(cfg)}
    report["gpu"] = _gpu(cfg) if torch.cuda.is_available() else {"skipped": "no CUDA device on this machine"}
    return publish(run_dir, report, _markdown(report, cfg))


def _markdown(r: dict, cfg: QuantBenchConfig) -> str:
    lines = [f"# Precision benchmark ({r['threads']} CPU threads)", "",
             f"## NVFP4 quantize throughput, CPU, {cfg.rows}x{cfg.cols} fp32", "",
             "| op | ms | Melem/s |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds'] * 1e3:.1f} | {v['melem_per_s']:.0f} |" for k, v in r["quantize_cpu"].items()]
    lines += ["", f"## Rollout, CPU: batch {cfg.batch}, {cfg.steps} steps, CFG {cfg.guidance}", "",
              "| denoiser | seconds | images/s | speed vs fp32 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['seconds']:.2f} | {v['images_per_s']:.1f} | {v['speed_vs_fp32']:.2f}x |"
              for k, v in r["rollout_cpu"].items()]
    gpu = r["gpu"]
    lines += ["", "## GPU", ""]
    if "skipped" in gpu:
        lines.append(f"Skipped: {gpu['skipped']}.")
    else:
        lines += [f"{gpu['device']}: {cfg.gemm}^3 GEMM and one SD3 joint block (dim 1536, {cfg.block_tokens} + 333 "
                  "tokens)", "", "| backend | GEMM TFLOP/s | GEMM vs bf16 | block ms | block vs bf16 |",
                  "|---|---|---|---|---|"]
        for b, v in gpu["gemm"].items():
            blk = gpu["block"][b]
            lines.append(f"| {b} | {v['tflops']:.0f} | {v['speed_vs_bf16']:.2f}x | {blk['seconds'] * 1e3:.2f} | "
                         f"{blk['speed_vs_bf16']:.2f}x |")
    return "\n".join(lines) + "\n"
