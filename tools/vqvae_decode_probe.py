"""Where a VAR folder's VQ-VAE decode spends its time, and what two cheaper layouts would buy.

    python tools/vqvae_decode_probe.py [assets/var-deep-shapes] [--batch 64] [--threads 1]

VARiant's smallest subnet gains less images/s than tokens/s because the decode costs the same at
every depth. This decodes one batch of random latents (best of 5 timed calls after a warm-up, the
three ways interleaved so that the machine's noise hits them alike):

* fp32 as the sampler decodes, and the share of that time spent in convolutions (torch.profiler);
* channels-last fp32 and channels-last bf16 autocast: speed-up over fp32 and the largest pixel
  difference from the fp32 images (images in [-1, 1]), i.e. what each would change in every sample.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="assets/var-deep-shapes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from torch.profiler import profile

    from vgen.bench.timing import best_times
    from vgen.sample import load_var

    torch.set_num_threads(a.threads)
    vq = load_var(a.model).vqvae
    f = torch.randn(a.batch, vq.post_quant_conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    cl = copy.deepcopy(vq).to(memory_format=torch.channels_last)
    f_cl = f.contiguous(memory_format=torch.channels_last)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl.fhat_to_img(f_cl).float()

    with torch.inference_mode():
        ref = vq.fhat_to_img(f)
        ways = {"fp32": lambda: vq.fhat_to_img(f), "channels-last fp32": lambda: cl.fhat_to_img(f_cl),
                "channels-last bf16": bf16}
        t = best_times(ways, 5)
        with profile() as prof:
            vq.fhat_to_img(f)
        ev = prof.key_averages()
        conv = sum(e.self_cpu_time_total for e in ev if "convolution" in e.key)
        share = conv / sum(e.self_cpu_time_total for e in ev)
        print(f"{a.model}: decode of {a.batch} latents, {a.threads} thread(s)")
        print(f"fp32: {t['fp32']:.3f} s, convolutions {share:.0%} of the op time")
        for name in ("channels-last fp32", "channels-last bf16"):
            err = (ways[name]().float() - ref).abs().max().item()
            print(f"{name}: {t['fp32'] / t[name]:.2f}x fp32, largest pixel difference {err:.2g}")


if __name__ == "__main__":
    main()
