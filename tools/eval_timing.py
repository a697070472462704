"""Time GenEval-Shapes + FID-shapes + KID on 1,000 images, excluding generation.

The "generated" images are real test-split renders (the timing does not depend on what the
images show). The reference statistics are built (and cached) by a warm-up call first, as
they are once per machine in normal use.
"""

import time

import numpy as np

from vgen.eval.harness import evaluate, grid
from vgen.world.scene import render_prompt


def main(n: int = 1000) -> None:
    prompts, seeds = grid(n, [0])
    images = np.stack([render_prompt(p, s % 2**31, 64) for p, s in zip(prompts, seeds)])
    evaluate(images[:16], prompts[:16], 1)  # warm-up: imports, feature net, cached reference
    t = time.perf_counter()
    r = evaluate(images, prompts, 1)
    total = time.perf_counter() - t
    strict, fid = r["geneval_shapes"]["overall"]["strict"]["mean"], r["fid_shapes"]["fid_shapes"]
    print(f"{n} images: {total:.2f} s (geneval {r['seconds']['geneval']:.2f} s, fid {r['seconds']['fid']:.2f} s); "
          f"strict {strict:.1%}, FID-shapes {fid:.2f}")


if __name__ == "__main__":
    main()
