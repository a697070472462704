"""vgen's GPU checks, prepared as one command for a session that is lent a CUDA machine.

A lent GPU comes for minutes (15 of device time per task, one or two of them to start it), so every GPU
check lives here, most important first, each in its own process with its own time limit; a part that
fails or runs out of time does not stop the next. Three files go to ``--out``: report.md (one row per
part, then the end of each part's output), report.json, and log.txt (everything, as it ran).

The whole procedure, from this machine:

    bash tools/device_wheels.sh     # once: the wheels the device image lacks (diffusers, torchao) into .whl/
    bash tools/device_slim.sh hide  # the committed assets are over the 64 MiB a device call may send
    device run, carry [".whl"], timeout 600:
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
        PYTHONPATH=/tmp/site python3 tools/device_check.py --out $OUT
    bash tools/device_slim.sh restore   # at once, before any commit

`python tools/device_check.py --out DIR --quick` runs the parts a CPU can run, at toy sizes: a test does,
so that this script works the day a GPU comes.

Parts, in order:
  info             `vgen info`: torch, CUDA, the device, and which precision backends it grants
  gpu-tests        the tests marked `gpu` (pytest -m gpu on the files that have them)
  train-RECIPE     each recipe's tiny config on the device (sar on the VAR base); solrl and solrl_var
                   explore with `auto` (fp8 on Hopper, nvfp4 on Blackwell)
  explore-var      tools/solrl_var_preview_probe.py on the device: one explore pass of learn.yaml's size
                   per granted backend, its time against fp32's and how well its rewards rank the fp32
                   regenerations (RL on VAR's speed goal rests on these two figures)
  bench-quant      `vgen bench quant`: a GEMM and one SD3 block per backend, against bf16
  bench-var        `vgen bench var device=cuda` at assets/var-d30-shapes' size and settings (random weights:
                   speed does not depend on them; that folder does not travel), depths 16 / 8 / 2 (VARiant)
  bench-var-paper  the same at VAR-d30's size (random weights, bf16, batch 8: the paper's setting)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ("torch", "diffusers", "torchao", "transformers", "peft", "accelerate", "timm", "torchmetrics",
            "safetensors", "tensorboard", "pytest")
TAIL = 4000  # characters of each part's output in report.md


@dataclass
class Part:
    name: str
    commands: list[list[str]]  # run in turn; the part fails at the first that fails
    limit: int  # seconds, at most


def granted(device: str) -> list[str]:
    """The explore backends this device runs in hardware (fp32 first: the others are timed against it)."""
    from vgen.quant.backends import availability, bf16_native

    return [b for b in ("fp32", "bf16", "fp8", "nvfp4") if availability(b, device).ok
            and (b != "bf16" or bf16_native(device))]


def gpu_test_files() -> list[str]:
    """The test files holding a test marked for a GPU (the others need not even import there)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if re.search(r"\bgpu_(only|marks)\(", p.read_text()))


def parts(quick: bool, device: str, work: Path) -> list[Part]:
    vgen, py = [sys.executable, "-m", "vgen.cli"], sys.executable
    runs = f"run.out_dir={work / 'runs'}"

    def train(recipe: str, *extra: str) -> Part:
        return Part(f"train-{recipe}", [[*vgen, "train", f"configs/{recipe}/tiny.yaml", runs, *extra]], 240)

    probe = [py, "tools/solrl_var_preview_probe.py", "--device", device, "--backends", *granted(device),
             "--draws", "gumbel", "--min-scales", "6"]
    bench_var = [*vgen, "bench", "var", f"device={device}", runs]
    if quick:  # what a CPU can run, at toy sizes
        return [Part("info", [[*vgen, "info"]], 60),
                train("solrl_var", "eval_seeds=0", "iterations=1"),
                Part("explore-var", [[*probe, "--classes", "2", "--candidates", "4", "--repeats", "1"]], 120),
                Part("bench-var", [[*bench_var, "model=assets/var-tiny-shapes", "batch=2", "repeats=1",
                                    "depths=[4,2]", "per_image_batches=[]"]], 120)]
    paper, d30 = work / "var-d30-paper", work / "var-d30-shapes-random"
    return [Part("info", [[*vgen, "info"]], 60),
            Part("gpu-tests", [[py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                *gpu_test_files()]], 300),
            train("solrl"), train("solrl_var"), train("var"), train("sar", "init=assets/var-tiny-shapes"),
            train("variant"), train("scaleweaver"),
            Part("explore-var", [[*probe, "--repeats", "3"]], 240),
            Part("bench-quant", [[*vgen, "bench", "quant", "rows=1024", "cols=1024", "batch=8", "steps=4", runs]],
                 180),
            Part("bench-var", [[py, "tools/random_var_folder.py", str(d30), "--like", "assets/var-deep-shapes",
                                 "--depth", "30"],
                                [*bench_var, f"model={d30}", "cfg=3.0", "depths=[16,8,2]", "repeats=5",
                                 "per_image_batches=[1,16]"]], 180),
            Part("bench-var-paper", [[py, "tools/random_var_folder.py", str(paper), "--depth", "30"],
                                     [*bench_var, f"model={paper}", "batch=8", "precision=bf16", "uncached=false",
                                      "depths=[16,8,2]", "per_image_batches=[]", "repeats=3"]], 420)]


def run_part(part: Part, limit: float, log) -> dict:
    """Run the part's commands in turn (each in its own process group, killed whole at the limit)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out, rc, status, t0 = [], 0, "passed", time.perf_counter()
    for cmd in part.commands:
        left = limit - (time.perf_counter() - t0)
        log.write(f"\n=== {part.name}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            status = f"timed out after {limit:.0f} s"
        log.write(text)
        log.flush()
        out.append(text)
        rc = proc.returncode
        if status != "passed" or rc != 0:
            status = status if status != "passed" else f"failed (exit {rc})"
            break
    return {"name": part.name, "commands": [" ".join(c) for c in part.commands], "status": status, "exit": rc,
            "seconds": round(time.perf_counter() - t0, 1), "tail": "".join(out)[-TAIL:]}


def environment(device: str) -> dict:
    from importlib import metadata

    import torch

    have = {}
    for name in PACKAGES:  # installed distributions (a wheel put on PYTHONPATH counts), without importing them
        try:
            have[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            have[name] = "missing"
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu, {os.cpu_count()} cores"
    return {"device": where, "torch": torch.__version__, "cuda": torch.version.cuda, "packages": have,
            "backends": granted(device)}


def markdown(env: dict, rows: list[dict]) -> str:
    missing = [k for k, v in env["packages"].items() if v.startswith("missing")]
    lines = [f"# vgen device check: {env['device']}", "",
             f"torch {env['torch']} (CUDA {env['cuda']}); explore backends granted: {', '.join(env['backends'])}; "
             f"missing packages: {', '.join(missing) or 'none'}"
             + (" (carry them: bash tools/device_wheels.sh)" if missing else ""), "",
             "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']} |" for r in rows]
    for r in rows:
        lines += ["", f"## {r['name']}: {r['status']}", "", *(f"`{c}`" for c in r["commands"]), "",
                  "```", r["tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for report.md, report.json and log.txt")
    ap.add_argument("--quick", action="store_true", help="the CPU-capable parts at toy sizes, on the CPU")
    ap.add_argument("--budget", type=float, default=540, help="seconds for all parts together (default 540)")
    ap.add_argument("--only", nargs="+", metavar="PART", help="run only these parts")
    a = ap.parse_args()
    import torch

    device = "cpu" if a.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("device_check: no CUDA device here; --quick runs the CPU-capable parts")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work" if a.quick else Path("/tmp/vgen-device-check")  # only the three reports come back
    todo = parts(a.quick, device, work)
    if a.only:
        unknown = sorted(set(a.only) - {p.name for p in todo})
        if unknown:
            sys.exit(f"device_check: unknown part(s) {', '.join(unknown)}; parts: {', '.join(p.name for p in todo)}")
        todo = [p for p in todo if p.name in a.only]
    from vgen.io import atomic_write_json, atomic_write_text

    env, rows, deadline = environment(device), [], time.perf_counter() + a.budget
    with open(out / "log.txt", "w") as log:
        for part in todo:
            left = deadline - time.perf_counter()
            if left < 20:
                rows.append({"name": part.name, "commands": [" ".join(c) for c in part.commands],
                             "status": "skipped: out of time", "exit": None, "seconds": 0, "tail": ""})
                continue
            rows.append(run_part(part, min(part.limit, left), log))
            print(f"{part.name}: {rows[-1]['status']} ({rows[-1]['seconds']} s)", flush=True)
            # after every part, so that a kill leaves the parts done so far
            atomic_write_json(out / "report.json", {"environment": env, "parts": rows})
            atomic_write_text(out / "report.md", markdown(env, rows))
    atomic_write_json(out / "report.json", {"environment": env, "parts": rows})
    atomic_write_text(out / "report.md", markdown(env, rows))
    return 0 if all(r["status"] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
