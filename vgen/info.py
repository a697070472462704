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
    env["precision_backends"] = "not implemented yet (arrives with the precision-backends issue)"
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
    lines.append(f"precision backends: {env['precision_backends']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_environment(environment()), file=sys.stdout)
