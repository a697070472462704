"""`vgen info`: the environment a run would see (versions, devices, capabilities)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

LIBRARIES = ("torch", "diffusers", "transformers", "torchao", "timm", "torchmetrics", "accelerate", "peft",
             "safetensors", "huggingface_hub", "numpy", "scipy", "pillow", "pyyaml", "transformer_engine")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """A JSON-ready description of the software and devices."""
    import torch

    from vgen import __version__

    env = {
        "vgen": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    for i in range(torch.cuda.device_count() if env["cuda_available"] else 0):
        p = torch.cuda.get_device_properties(i)
        env["devices"].append({"index": i, "name": p.name, "capability": f"sm_{p.major}{p.minor}",
                               "memory_gib": round(p.total_memory / 2**30, 1)})
    from vgen.quant.backends import report, resolve

    device = "cuda" if env["cuda_available"] else "cpu"
    env["precision_backends"] = {a.name: {"available": a.ok, "reason": a.reason} for a in report(device)}
    env["explore_backend_auto"] = resolve("auto", device)[1]
    return env


def format_environment(env: dict) -> str:
    libs = env["libraries"]
    lines = [
        f"vgen {env['vgen']}  python {env['python']}  {env['platform']}  {env['cpu_cores']} CPU cores",
        "libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v),
        "not installed: " + (", ".join(k for k, v in libs.items() if not v) or "-"),
        f"torch CUDA build: {env['torch_cuda_build'] or 'none (CPU-only build)'}; "
        f"CUDA available: {'yes' if env['cuda_available'] else 'no'}",
    ]
    for d in env["devices"]:
        lines.append(f"  cuda:{d['index']} {d['name']} ({d['capability']}, {d['memory_gib']} GiB)")
    if not env["devices"]:
        lines.append("  device: cpu")
    lines.append("precision backends:")
    for name, b in env["precision_backends"].items():
        lines.append(f"  {name:10s} {'yes' if b['available'] else 'no ':4s} {b['reason']}")
    lines.append(f"  explore backend: {env['explore_backend_auto']}")
    return "\n".join(lines)


def quant_plan(model_dir: str) -> str:
    """The module policy applied to a pipeline folder's denoiser (its transformer)."""
    from pathlib import Path

    from vgen.errors import UserError
    from vgen.quant.policy import plan, summary

    path = Path(model_dir) / "transformer"
    if not (path / "config.json").is_file():
        raise UserError(f"no transformer/config.json in {model_dir!r}: not a diffusers pipeline folder")
    import json

    from diffusers import models

    cls_name = json.loads((path / "config.json").read_text()).get("_class_name", "")
    cls = getattr(models, cls_name, None)
    if cls is None:
        raise UserError(f"{path}: unknown transformer class {cls_name!r}")
    model = cls.from_config(cls.load_config(path))  # the architecture is enough: no weights needed
    return f"quantization plan for {model_dir} ({cls_name}):\n" + summary(
        plan(model), sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    print(format_environment(environment()), file=sys.stdout)
