"""What a class-row decode would save in Sol-RL's explore pass on a VAR, against the sampler's own.

    OMP_NUM_THREADS=1 taskset -c 0 python tools/explore_decode_probe.py [assets/var-tiny-shapes]
        [--classes 24] [--candidates 16] [--repeats 3]

The sampler decodes one image at a time, so that a sample never depends on its batch
(engine/invariance.py). An explore pass could instead decode each class's row of candidates in
one call: a row is never split between processes, so 2 processes would still equal 1. This times
one explore pass of the bf16 explore copy, as `configs/solrl_var/learn.yaml` runs it (classes x
candidates, sampler batches of 128), both ways, interleaved, best of ``--repeats``, and the recipe's
pass as it ran before two changes that keep every image: the decoder's upsample by
``F.interpolate`` and one decoder call per sampler batch. It also prints
the share of pixels the two decodes give differently, and the largest difference. vgen keeps the
per-image decode: see the README, RL on VAR, 'Probes toward the speed goal'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="assets/var-tiny-shapes")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from vqvae_decode_probe import torch_nearest_upsample, whole_batch_decode

    from vgen.bench.timing import best_times
    from vgen.engine.scalewise import evaluating, sample
    from vgen.images import to_uint8
    from vgen.models.load import load
    from vgen.sample import var_settings
    from vgen.solrl.var_recipe import Policy, _explore_copy, _generate

    m = load(a.model)
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    var, vqvae = _explore_copy(pol, "bf16")
    n = a.candidates
    classes = [i % len(m.classes) for i in range(a.classes)]
    seeds = np.arange(10**6, 10**6 + a.classes * n).reshape(a.classes, n)

    def per_image():  # what the recipe runs
        return _generate(var, vqvae, classes, seeds, pol.sampling, logprobs=False).images

    def by_row():
        flat_c = [c for c in classes for _ in range(n)]
        flat_s = seeds.ravel().tolist()
        f = torch.cat([sample(var, vqvae, flat_c[lo:lo + 128], flat_s[lo:lo + 128], decode_images=False,
                              **pol.sampling).f_hat for lo in range(0, len(flat_c), 128)])
        with torch.inference_mode(), evaluating(vqvae):
            img = torch.cat([vqvae.fhat_to_img(f[i:i + n].bfloat16().contiguous()) for i in range(0, len(f), n)])
        return to_uint8((img.float() + 1) / 2).reshape(a.classes, n, *img.shape[2:], 3)

    def per_image_torch_nearest():  # what the recipe ran before the decoder's upsample changed
        with torch_nearest_upsample():
            return per_image()

    def per_image_one_call():  # what the recipe ran before the decode went a few latents at a time
        with whole_batch_decode():
            return per_image()

    t = best_times({"per-image": per_image, "by row": by_row, "per-image, torch nearest": per_image_torch_nearest,
                    "per-image, one call": per_image_one_call}, a.repeats)
    ours = per_image()
    same = np.array_equal(ours, per_image_torch_nearest())
    diff = np.abs(ours.astype(int) - by_row().astype(int))
    k = a.classes * n
    print(f"{a.model}: explore pass of {a.classes} classes x {n} candidates, bf16 explore copy, "
          f"{torch.get_num_threads()} thread(s)")
    for name, sec in t.items():
        print(f"  {name} decode: {sec:.2f} s ({sec / k * 1e3:.1f} ms per sample)")
    print(f"  the decoder's broadcast upsample makes the pass {t['per-image, torch nearest'] / t['per-image']:.2f}x "
          f"faster than torch's nearest one (images {'identical' if same else 'DIFFER'})")
    same = np.array_equal(ours, per_image_one_call())
    print(f"  decoding a few latents per call makes the pass {t['per-image, one call'] / t['per-image']:.2f}x "
          f"faster than one call per sampler batch (images {'identical' if same else 'DIFFER'})")
    print(f"  by row is {t['per-image'] / t['by row']:.2f}x faster; pixels differing: {(diff > 0).mean():.1%}, "
          f"largest difference {diff.max()} of 255")


if __name__ == "__main__":
    main()
