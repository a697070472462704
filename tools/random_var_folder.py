"""Write a VAR model folder of official sizes with random weights, for speed benchmarks.

The VQ-VAE has the official VAR-d16 shapes (4096 codes, 32 channels, 10 scales up to 16x16,
256-pixel images), the transformer the official layout at the chosen depth (width 64 x depth)
and 1000 classes, initialised as the official code does. Nothing is downloaded; the images are
noise. Used for the official-size rows of `vgen bench var` in the README:

    python tools/random_var_folder.py /tmp/var-d8 --depth 8
    vgen bench var model=/tmp/var-d8 batch=1 repeats=2

and VARiant's speed at VAR-d30's size (2.0B parameters, an 8.4 GB folder):

    python tools/random_var_folder.py /tmp/var-d30 --depth 30
    vgen bench var model=/tmp/var-d30 batch=8 precision=bf16 uncached=false "depths=[16,8,2]" per_image_batches=[]

``--like FOLDER`` keeps that folder's tokenizer, classes, sampling settings and transformer layout and
changes only the depth (random weights): what a deeper base of the same kind would cost to sample,
before anyone trains it (sampling speed does not depend on the weights).
"""

from __future__ import annotations

import argparse

import torch

from vgen.models.var.folder import build_var, build_vqvae, save_var_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--depth", type=int, default=8, choices=range(1, 41), metavar="1..40")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--like", metavar="FOLDER", help="a VAR model folder to copy all but the depth and weights from")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.like:
        from vgen.models.load import load

        m = load(args.like)
        vae, arch, classes, size = m.vqvae, {**m.var.arch, "depth": args.depth}, list(m.classes), m.resolution
        sampling = dict(m.sampling)
    else:
        vae, arch = build_vqvae({}).eval(), {"depth": args.depth, "num_classes": 1000}
        classes, size = [f"class {i}" for i in range(1000)], 256
        sampling = {"cfg": 1.5, "top_k": 900, "top_p": 0.96}  # the official demo's settings
    var = build_var(arch).eval()
    var.init_weights()
    save_var_model(args.folder, vae, var, classes, size, sampling=sampling)
    print(f"wrote {args.folder}: depth {var.depth}, width {var.C}, {var.L} tokens, scales {list(var.patch_nums)}")


if __name__ == "__main__":
    main()
