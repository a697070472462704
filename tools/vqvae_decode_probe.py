"""Where a VAR folder's VQ-VAE decode spends its time, and what two cheaper layouts would buy.

    python tools/vqvae_decode_probe.py [assets/var-deep-shapes] [--batch 64] [--threads 1]

VARiant's smallest subnet gains less images/s than tokens/s because the decode costs the same at
every depth. This decodes one batch of random latents (best of 5 timed calls after a warm-up, the
ways interleaved so that the machine's noise hits them alike):

* fp32 as the sampler decodes (``engine.scalewise.decode``: batch-invariant, one image per
  convolution, a few latents per decoder call), the same as one decoder call for the whole batch
  (the same numbers; what the sampler did before 2026-12-06), the same with the decoder's upsample
  done by ``F.interpolate(mode="nearest")`` as the official code does (the same numbers; vgen's
  broadcast copy replaced it for speed), and fp32 in one batch as the models' own ``fhat_to_img``
  (what batch invariance costs);
* the share of the batch decode's time spent in convolutions (torch.profiler);
* channels-last fp32 and channels-last bf16 autocast: speed-up over fp32 and the largest pixel
  difference from the fp32 images (images in [-1, 1]), i.e. what each would change in every sample;
* the sampler's decode with the convolutions run on fixed groups of ``--groups`` images (the last group
  padded by repeating an image) instead of one image at a time: still batch-invariant (every convolution
  sees one shape), against the sampler's on the batch and on one image, and how many 8-bit pixels move.
"""

from __future__ import annotations

import argparse
import copy
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


@contextmanager
def torch_nearest_upsample():
    """Inside the block the VQ-VAE decoder upsamples with ``F.interpolate(mode="nearest")``, as the official
    code (and vgen before 2026-12-05) did: the same numbers, more time."""
    import vgen.models.var.vqvae as vqvae_module

    ours = vqvae_module.upsample_nearest_2x
    vqvae_module.upsample_nearest_2x = lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    try:
        yield
    finally:
        vqvae_module.upsample_nearest_2x = ours


@contextmanager
def grouped_convs(n: int):
    """Inside the block, batch-invariant convolutions run on groups of exactly n images (the last one padded)
    instead of one image at a time: one shape per layer still, so still batch-invariant; other numbers."""
    from vgen.engine import invariance

    ours = invariance._conv_forward

    def conv(forward):
        def run(x, *args, **kwargs):
            if x.dim() != 4:
                return forward(x, *args, **kwargs)
            return torch.cat([forward(invariance.pad_rows(g, n).contiguous(), *args, **kwargs)[:len(g)]
                              for g in x.split(n)])
        return run

    invariance._conv_forward = conv
    try:
        yield
    finally:
        invariance._conv_forward = ours


@contextmanager
def whole_batch_decode():
    """Inside the block the sampler's decode runs the whole batch in one decoder call, as vgen did before
    2026-12-06: the same numbers, more time on CPU (the activations of 64 images leave the cache)."""
    import vgen.engine.scalewise as scalewise

    ours = scalewise.DECODE_POSITIONS
    scalewise.DECODE_POSITIONS = 1 << 40
    try:
        yield
    finally:
        scalewise.DECODE_POSITIONS = ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="assets/var-deep-shapes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--groups", type=int, default=8, help="images per convolution in the grouped variant")
    a = ap.parse_args()
    from torch.profiler import profile

    from vgen.bench.timing import best_times
    from vgen.engine.scalewise import decode
    from vgen.sample import load_var

    torch.set_num_threads(a.threads)
    vq = load_var(a.model).vqvae
    f = torch.randn(a.batch, vq.post_quant_conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    cl = copy.deepcopy(vq).to(memory_format=torch.channels_last)
    f_cl = f.contiguous(memory_format=torch.channels_last)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl.fhat_to_img(f_cl).float()

    def one_call():
        with whole_batch_decode():
            return decode(vq, f)

    def grouped(x):
        def run():
            with grouped_convs(a.groups):
                return decode(vq, x)
        return run

    def sampler_torch_nearest():
        with torch_nearest_upsample():
            return decode(vq, f)

    with torch.inference_mode():
        ref = vq.fhat_to_img(f)
        ways = {"sampler": lambda: decode(vq, f), "one call": one_call, "sampler, torch nearest": sampler_torch_nearest,
                "fp32": lambda: vq.fhat_to_img(f), "channels-last fp32": lambda: cl.fhat_to_img(f_cl),
                "channels-last bf16": bf16, "grouped": grouped(f), "sampler, 1 image": lambda: decode(vq, f[:1]),
                "grouped, 1 image": grouped(f[:1])}
        t = best_times(ways, 5)
        print(f"{a.model}: decode of {a.batch} latents, {a.threads} thread(s)")
        ours = decode(vq, f)
        whole, same = t["one call"], torch.equal(ours, one_call())
        print(f"sampler's decode: {t['sampler']:.3f} s; in one decoder call {whole:.3f} s "
              f"({whole / t['sampler']:.2f}x slower, images {'identical' if same else 'DIFFER'})")
        slow = t["sampler, torch nearest"]
        same = torch.equal(ours, sampler_torch_nearest())
        print(f"with torch's nearest upsample {slow:.3f} s "
              f"({slow / t['sampler']:.2f}x slower, images {'identical' if same else 'DIFFER'})")
        with profile() as prof:
            vq.fhat_to_img(f)
        ev = prof.key_averages()
        conv = sum(e.self_cpu_time_total for e in ev if "convolution" in e.key)
        share = conv / sum(e.self_cpu_time_total for e in ev)
        print(f"fp32 in one batch: {t['fp32']:.3f} s ({t['sampler'] / t['fp32']:.2f}x faster than the sampler's), "
              f"convolutions {share:.0%} of the op time")
        for name in ("channels-last fp32", "channels-last bf16"):
            err = (ways[name]().float() - ref).abs().max().item()
            print(f"{name}: {t['fp32'] / t[name]:.2f}x fp32, largest pixel difference {err:.2g}")
        g = grouped(f)()
        perm = torch.randperm(a.batch, generator=torch.Generator().manual_seed(1))
        invariant = torch.equal(grouped(f[perm])(), g[perm]) and torch.equal(grouped(f[:1])(), g[:1])
        moved = int(((g * 255).round() != (ours * 255).round()).sum())
        print(f"convolutions on groups of {a.groups} images: {t['sampler'] / t['grouped']:.2f}x the sampler's decode "
              f"of {a.batch}, {t['sampler, 1 image'] / t['grouped, 1 image']:.2f}x on one image; batch-invariant: "
              f"{'yes' if invariant else 'NO'}; {moved} of {g.numel()} 8-bit pixel values move")


if __name__ == "__main__":
    main()
