"""What bf16 costs on this CPU against fp32: one matmul, and the tiny VAR base's explore pass split into
the transformer (sampling without decoding) and the VQ-VAE decode: the bf16 transformer with a bf16 VQ-VAE,
the solrl_var explore copy as built here (`explore_backend=bf16`: its VQ-VAE is fp32 on a CPU without
AVX512-BF16 / AMX, where bf16 is emulated), and the fp32 policy.

    python tools/cpu_bf16_probe.py [--threads 1] [--samples 16]
"""

from __future__ import annotations

import argparse
import copy
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgen.bench.timing import best_time  # noqa: E402
from vgen.engine.scalewise import sample  # noqa: E402
from vgen.models.load import load  # noqa: E402
from vgen.quant.backends import cpu_bf16_native  # noqa: E402
from vgen.sample import var_settings  # noqa: E402
from vgen.solrl.var_recipe import Policy, _explore_copy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"native bf16 (AVX512-BF16 / AMX): {cpu_bf16_native()}; {a.threads} thread(s)")
    for dt in (torch.float32, torch.bfloat16):
        x, w = torch.randn(256, 256, dtype=dt), torch.randn(256, 1024, dtype=dt)
        print(f"matmul 256 x 256 x 1024, {dt}: {1e3 * best_time(partial(torch.matmul, x, w), 20):.2f} ms")
    m = load("assets/var-tiny-shapes")
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    classes, seeds = [0, 1] * (a.samples // 2), list(range(a.samples))
    ex_var, ex_vae = _explore_copy(pol, "bf16")
    runs = {"bf16 transformer, bf16 VQ-VAE": (ex_var, copy.deepcopy(m.vqvae).to(torch.bfloat16)),
            "the explore copy (explore_backend=bf16)": (ex_var, ex_vae), "the fp32 policy": (m.var, m.vqvae)}
    for name, (var, vae) in runs.items():
        run = partial(sample, var, vae, classes, seeds, **pol.sampling)
        tokens = best_time(partial(run, decode_images=False), a.repeats)
        decoded = best_time(run, a.repeats)
        print(f"{name} (VQ-VAE {next(vae.parameters()).dtype}): {a.samples} samples, transformer {tokens:.2f} s, "
              f"decode {decoded - tokens:.2f} s")


if __name__ == "__main__":
    main()
