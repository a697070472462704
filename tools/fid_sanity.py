"""Sanity check of FID-shapes / KID-shapes: real vs real, the tiny SD3 base, degradations, noise.

    python tools/fid_sanity.py [--n 500] [--ref-n 1000] [--model assets/sd3-tiny-shapes] [--threads 1]
                               [--time-n 1000] [--json runs/fid-sanity.json]

Reference: ``--ref-n`` real test-split images (seed 0, cached by vgen.eval.fid.reference_stats).
Compared against ``--n`` images each of: other real test images (seed 1, same distribution:
the floor set by sampling noise), the base's samples on those same prompts at its
recommended CFG scale and steps (vgen_base.json), the real images blurred / noised / JPEG'd
at several strengths, and uniform noise. A sound metric orders them
real < mild degradations < base-or-strong degradations < noise. ``--time-n`` also times
features + FID + KID of that many images against the cached reference (the cost an
evaluation pays per checkpoint), plus the GenEval-Shapes verifier on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgen.eval.fid import _render_reference, fid_kid, load_features, reference_stats  # noqa: E402
from vgen.world.degrade import blur, jpeg  # noqa: E402
from vgen.world.grammar import sample_prompts  # noqa: E402
from vgen.world.verifier import verify  # noqa: E402


def noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0.0, std, images.shape) + 0.5, 0, 255).astype(np.uint8)


def generate(model: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, dict]:
    from vgen.engine import rollout
    from vgen.images import to_uint8
    from vgen.models.load import load_policy, pipeline_defaults

    rec = pipeline_defaults(model)
    steps, guidance = rec.get("steps", 20), rec.get("guidance", 4.5)
    policy = load_policy(model)
    r = rollout(policy, prompts, seeds, steps=steps, guidance=guidance, chunk_size=50, progress=True)
    images = to_uint8(r.images)
    return images, {"steps": steps, "guidance": guidance}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ref-n", type=int, default=1000)
    ap.add_argument("--model", default="assets/sd3-tiny-shapes")
    ap.add_argument("--features", default=None, help="FID-shapes folder (default assets/fid-shapes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-n", type=int, default=0, help="also time scoring this many images")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    features = load_features(args.features)
    t0 = time.perf_counter()
    ref = reference_stats(args.ref_n, split="test", seed=0, features=features)
    print(f"reference: {args.ref_n} real test images, {time.perf_counter() - t0:.1f} s ({ref['path']})")
    prompts = sample_prompts("test", args.n, seed=1)
    real = _render_reference(prompts, 1, 64)
    cases = {"real (other seeds)": real}
    cases |= {f"blur sigma {s}": blur(real, s) for s in (0.5, 1.0, 2.0)}
    cases |= {f"noise std {s}": noisy(real, s) for s in (4, 8, 16, 32)}
    cases |= {f"jpeg q{q}": jpeg(real, q) for q in (75, 50, 25, 10)}
    info = {}
    if args.model:
        t0 = time.perf_counter()
        base, info = generate(args.model, prompts, [10_000 + i for i in range(args.n)])
        info["seconds"] = time.perf_counter() - t0
        info["strict"] = float(np.mean([v.strict for v in verify(base, prompts)]))
        cases["tiny SD3 base"] = base
        print(f"base: {args.n} samples in {info['seconds']:.0f} s, cfg {info['guidance']}, {info['steps']} steps, "
              f"GenEval-Shapes strict {info['strict']:.1%}")
    cases["uniform noise"] = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)

    results = {}
    print(f"\n{'vs reference':24s} {'FID-shapes':>12s} {'KID-shapes':>12s} {'+-':>10s}")
    for name, images in cases.items():
        r = fid_kid(ref, images, features)
        results[name] = r
        print(f"{name:24s} {r['fid_shapes']:12.3f} {r['kid_shapes_mean']:12.5f} {r['kid_shapes_std']:10.5f}")

    timing = {}
    if args.time_n:
        images = _render_reference(sample_prompts("test", args.time_n, seed=2), 2, 64)
        fid_kid(ref, images[:16], features, kid_subset_size=16)  # imports and first-call setup, timed apart
        t0 = time.perf_counter()
        fid_kid(ref, images, features)
        timing["fid_kid_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify(images, sample_prompts("test", args.time_n, seed=2))
        timing["verifier_seconds"] = time.perf_counter() - t0
        print(f"\n{args.time_n} images, {args.threads} thread(s): features + FID + KID "
              f"{timing['fid_kid_seconds']:.2f} s, verifier {timing['verifier_seconds']:.2f} s")
    if args.json:
        from vgen.io import atomic_write_json

        atomic_write_json(args.json, {"n": args.n, "ref_n": args.ref_n, "threads": args.threads, "base": info,
                                      "results": results, "timing": timing})


if __name__ == "__main__":
    main()
