"""Build assets/fid-shapes: the feature network behind FID-shapes and KID-shapes (vgen/eval/fid.py).

    python tools/build_fid_features.py [--out assets/fid-shapes] [--seed 0] [--steps 4000] [--batch 64]

FID needs an embedding in which distances mean something. Inception-v3 features mean little
on 64x64 images of flat shapes (and its weights can't be downloaded here), so we train our
own small CNN on the shapes world, supervised with what the world knows exactly about each
scene; its penultimate layer (global average pool, 256 dims) is the FID-shapes embedding.
FID-shapes numbers are comparable only with FID-shapes numbers from the same weights, never
with Inception FID.

Architecture: timm ``resnet10t`` (one BasicBlock per stage, deep-tiered stem, average-pool
downsampling) at half width: stem 16, stages 32/64/128/256, 1.25M parameters, ~5 MB in
float32. ResNet-10 is the smallest residual CNN timm ships and its cost at 64x64 is tiny
(~370 train / ~800 eval images/s on one CPU thread); half width keeps the asset under 5 MB
with no visible loss on this world's simple images. Built with ``pretrained=False``.

Targets (one linear layer on the pooled features, sliced into heads; see HEADS):
  * ``pairs``: which (shape, colour) pairs are present, 24 sigmoid outputs: shapes, colours
    and their binding (what GenEval-Shapes checks);
  * ``counts``: how many of each shape (0-4), 4 softmaxes of 5;
  * ``grid``: which cells of a 3x3 grid hold an object centre, 9 sigmoids (layout);
  * ``size``: mean object half-size (regression), as generators often get scale wrong;
  * ``severity``: how strongly the image was blurred, noised and JPEG-compressed, one
    regression output each, target sqrt(u) for strength u in [0, 1] (0 when not applied).
Severity is why the embedding sees image quality: content heads trained under augmentation
learn to *ignore* blur and noise, so FID could not see them. It is a regression, not a
classification of the degradation's kind: a classifier's features saturate (any noise
reads as "noisy") and FID then stops growing with strength; a regression target that
grows with strength, concave so that mild levels already move the features, makes FID-shapes
rise monotonically with blur sigma, noise std and JPEG compression (tests/test_fid.py).

Data: train-split prompts (balanced categories) rendered on the fly with fresh scene seeds.
Each image gets one of: nothing, Gaussian blur (sigma 4u px), additive Gaussian noise (std
64u of 255) or JPEG (quality 95 - 85u), a quarter each, u ~ U(0, 1). AdamW 2e-3, weight
decay 0.01 on weights, 100 warm-up steps then cosine decay, batch 64; loss = sum of the
heads' losses (x4 for size, x8 for severity). Validation on val-split prompts; note that
per-shape counts of (shape, number) pairs held out of the train split are never seen (the
val count accuracy stays at ~86% for that reason). The folder is built in ``<out>.tmp`` and
renamed into place. Deterministic from --seed for a given torch build and thread count
(one thread, as here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vgen  # noqa: E402
from vgen.world.datasets import item_seed  # noqa: E402
from vgen.world.degrade import blur, jpeg  # noqa: E402
from vgen.world.grammar import sample_prompts  # noqa: E402
from vgen.world.scene import render, sample_scene  # noqa: E402
from vgen.world.vocab import COLORS, SHAPES  # noqa: E402

ARCH = "resnet10t"
ARCH_KWARGS = {"channels": [32, 64, 128, 256], "stem_width": 16}
RESOLUTION = 64
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
PAIRS = [(s, c) for s in SHAPES for c in COLORS]
MAX_COUNT = 4
DEGRADATIONS = ("none", "blur", "noise", "jpeg")
BLUR_RANGE, NOISE_RANGE, JPEG_RANGE = (0.0, 4.0), (0.0, 64.0), (10, 95)
HEADS = {"pairs": len(PAIRS), "counts": len(SHAPES) * (MAX_COUNT + 1), "grid": 9, "size": 1, "severity": 3}


def head_slices() -> dict[str, slice]:
    out, lo = {}, 0
    for name, n in HEADS.items():
        out[name], lo = slice(lo, lo + n), lo + n
    return out


def scene_targets(scene) -> dict[str, np.ndarray]:
    pairs = np.zeros(len(PAIRS), np.float32)
    counts = np.zeros(len(SHAPES), np.int64)
    grid = np.zeros(9, np.float32)
    for o in scene.objects:
        pairs[PAIRS.index((o.shape, o.color))] = 1
        counts[SHAPES.index(o.shape)] += 1
        grid[min(int(o.cy * 3), 2) * 3 + min(int(o.cx * 3), 2)] = 1
    size = np.float32(np.mean([o.r for o in scene.objects]) / 0.25)
    return {"pairs": pairs, "counts": np.minimum(counts, MAX_COUNT), "grid": grid, "size": size}


def degrade_one(image: np.ndarray, kind: str, u: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply degradation ``kind`` at strength ``u`` in [0, 1]; returns the image and its severity target."""
    sev = np.zeros(3, np.float32)
    target = np.float32(np.sqrt(u))  # concave: mild degradations move the features as much as possible
    if kind == "blur":
        image = blur(image[None], BLUR_RANGE[0] + u * (BLUR_RANGE[1] - BLUR_RANGE[0]))[0]
        sev[0] = target
    elif kind == "noise":
        std = NOISE_RANGE[0] + u * (NOISE_RANGE[1] - NOISE_RANGE[0])
        image = np.clip(image + rng.normal(0.0, std, image.shape) + 0.5, 0, 255).astype(np.uint8)
        sev[1] = target
    elif kind == "jpeg":
        image = jpeg(image[None], int(round(JPEG_RANGE[1] - u * (JPEG_RANGE[1] - JPEG_RANGE[0]))))[0]
        sev[2] = target
    return image, sev


def make_batch(prompts: list[str], seeds: list[int], kinds: list[str], strengths: np.ndarray,
               rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, targets = [], {k: [] for k in ("pairs", "counts", "grid", "size", "degradation", "severity")}
    for p, s, kind, u in zip(prompts, seeds, kinds, strengths):
        scene = sample_scene(p, s)
        img, sev = degrade_one(render(scene, RESOLUTION), kind, float(u), rng)
        images.append(img)
        for k, v in scene_targets(scene).items():
            targets[k].append(v)
        targets["degradation"].append(DEGRADATIONS.index(kind))
        targets["severity"].append(sev)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x, {k: torch.as_tensor(np.stack(v)) for k, v in targets.items()}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def losses(logits: torch.Tensor, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    h = {k: logits[:, s] for k, s in head_slices().items()}
    counts = h["counts"].reshape(-1, MAX_COUNT + 1)
    return {
        "pairs": F.binary_cross_entropy_with_logits(h["pairs"], t["pairs"]),
        "counts": F.cross_entropy(counts, t["counts"].reshape(-1)),
        "grid": F.binary_cross_entropy_with_logits(h["grid"], t["grid"]),
        "size": 4 * F.mse_loss(h["size"][:, 0], t["size"]),
        "severity": 8 * F.mse_loss(h["severity"], t["severity"]),
    }


def draw_degradations(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    kinds = [DEGRADATIONS[i] for i in rng.integers(0, 4, size=n)]
    return kinds, rng.uniform(0, 1, size=n)


def validation_set(seed: int, n: int = 1024):
    """Val-split prompts, fixed seeds; a quarter of the images per degradation kind."""
    rng = np.random.default_rng([seed, 7])
    prompts = sample_prompts("val", n, seed=seed + 3)
    kinds = [DEGRADATIONS[i % 4] for i in range(n)]
    return make_batch(prompts, [item_seed(seed + 3, i) for i in range(n)], kinds, rng.uniform(0, 1, n), rng)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, t: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    logits = torch.cat([model(normalize(x[i:i + 256])) for i in range(0, len(x), 256)])
    model.train()
    h = {k: logits[:, s] for k, s in head_slices().items()}
    clean = t["degradation"] == 0
    pairs_ok = ((h["pairs"] > 0).float() == t["pairs"]).all(1)
    counts_ok = (h["counts"].reshape(len(x), -1, MAX_COUNT + 1).argmax(-1) == t["counts"]).all(1)
    sev_err = (h["severity"].clamp(0, 1).square() - t["severity"].square()).abs()  # in strength u, not sqrt(u)
    out = {
        "loss": float(sum(losses(logits, t).values())),
        "pairs_exact_clean": float(pairs_ok[clean].float().mean()),
        "pairs_exact_degraded": float(pairs_ok[~clean].float().mean()),
        "pairs_label_acc": float(((h["pairs"] > 0).float() == t["pairs"]).float().mean()),
        "counts_exact_clean": float(counts_ok[clean].float().mean()),
        "grid_label_acc": float(((h["grid"] > 0).float() == t["grid"]).float().mean()),
        "size_mae": float((h["size"][:, 0] - t["size"]).abs().mean() * 0.25),
    }
    for j, (kind, (lo, hi)) in enumerate(zip(("blur", "noise", "jpeg"), (BLUR_RANGE, NOISE_RANGE, JPEG_RANGE))):
        sel = t["degradation"] == DEGRADATIONS.index(kind)
        out[f"{kind}_severity_mae"] = float(sev_err[sel, j].mean() * (hi - lo))  # in sigma px / std / quality
    return out


def train(args, log) -> tuple[torch.nn.Module, dict]:
    import timm

    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    model = timm.create_model(ARCH, pretrained=False, num_classes=sum(HEADS.values()), **ARCH_KWARGS)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, args.steps - warmup)))))
    vx, vt = validation_set(args.seed)
    history, running, t0 = [], {}, time.time()
    for step in range(args.steps):
        prompts = sample_prompts("train", args.batch, seed=args.seed * 1_000_003 + step)
        seeds = [item_seed(args.seed + 1000, step * args.batch + i) for i in range(args.batch)]
        kinds, strengths = draw_degradations(args.batch, rng)
        x, t = make_batch(prompts, seeds, kinds, strengths, rng)
        parts = losses(model(normalize(x)), t)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if (step + 1) % args.log_every == 0:
            avg = {k: v / args.log_every for k, v in running.items()}
            running = {}
            rate = (step + 1) * args.batch / (time.time() - t0)
            log(f"step {step + 1}/{args.steps} loss {sum(avg.values()):.4f} "
                + " ".join(f"{k} {v:.3f}" for k, v in avg.items()) + f" ({rate:.0f} img/s)")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            m = evaluate(model, vx, vt)
            history.append({"step": step + 1, **{k: round(v, 4) for k, v in m.items()}})
            log("val " + " ".join(f"{k} {v:.3f}" for k, v in m.items()))
    model.eval()
    return model, {"val": history[-1], "history": history, "seconds": time.time() - t0,
                   "images_seen": args.steps * args.batch}


def readme(cfg: dict) -> str:
    v, t, res = cfg["training"]["val"], cfg["training"], cfg["input_resolution"]
    return f"""# fid-shapes

The feature network of **FID-shapes** and **KID-shapes**, vgen's distribution metrics for the built-in
shapes world (`vgen/eval/fid.py`). It is *not* Inception FID: the numbers are comparable only with other
FID-shapes numbers computed with these exact weights (sha256 `{cfg['weights_sha256'][:16]}...`).

- Network: timm `{cfg['architecture']}`, kwargs `{json.dumps(cfg['kwargs'])}`, built with
  `pretrained=False` and trained from scratch; {cfg['params'] / 1e6:.2f}M parameters.
- Embedding: the {cfg['feature_dim']}-d global-average-pooled features before the linear heads. Input: RGB
  {res}x{res}, scaled to [0, 1], normalised with mean {cfg['normalization']['mean']} and std
  {cfg['normalization']['std']}.
- Training (`tools/build_fid_features.py`, seed {t['seed']}): {t['steps']} steps of {t['batch']} train-split
  scenes rendered on the fly, three quarters blurred, noised or JPEG-compressed at a random strength. Heads:
  the (shape, colour) pairs present, per-shape counts, a 3x3 layout grid, object size, and the strength of
  each degradation (regression), so the embedding encodes both content and image quality, and FID-shapes
  grows monotonically with blur, noise and compression. {t['minutes']:.1f} minutes on {t['threads']} CPU
  thread(s), torch {cfg['torch']}, timm {cfg['timm']}.
- Validation (1,024 val-split scenes, a quarter each clean, blurred, noised, compressed): all 24 pair
  labels right on {v['pairs_exact_clean']:.1%} of clean and {v['pairs_exact_degraded']:.1%} of degraded images;
  all counts right on {v['counts_exact_clean']:.1%} of clean images (some (shape, number) pairs are held out
  of the train split); strength error: blur sigma {v['blur_severity_mae']:.2f} px, noise std
  {v['noise_severity_mae']:.1f}/255, JPEG quality {v['jpeg_severity_mae']:.1f}.

```python
from vgen.eval.fid import load_features, reference_stats, fid_kid
features = load_features("assets/fid-shapes")
ref = reference_stats(1000, split="test", features=features)   # cached by content hash
print(fid_kid(ref, generated_uint8_images, features))          # fid_shapes, kid_shapes_mean, kid_shapes_std
```
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets/fid-shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    t_start = time.time()
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{(time.time() - t_start) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    model, summary = train(args, log)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})  # one key: safetensors writes several in random order
    os.chmod(tmp / "model.safetensors", 0o644)
    import timm

    cfg = {
        "name": "fid-shapes",
        "metric": "FID-shapes (not Inception FID)",
        "architecture": ARCH,
        "kwargs": {**ARCH_KWARGS, "num_classes": sum(HEADS.values())},
        "feature_dim": model.num_features,
        "feature_layer": "global average pool before the heads (timm forward_head(pre_logits=True))",
        "input_resolution": RESOLUTION,
        "input": "RGB, float in [0, 1] (uint8 / 255), NCHW",
        "normalization": {"mean": MEAN, "std": STD},
        "heads": [{"name": k, "outputs": n, "slice": [s.start, s.stop]} for (k, n), s in
                  zip(HEADS.items(), head_slices().values())],
        "pairs": [f"{c} {s}" for s, c in PAIRS],
        "degradations": {"kinds": list(DEGRADATIONS), "blur_sigma": BLUR_RANGE, "noise_std": NOISE_RANGE,
                         "jpeg_quality": JPEG_RANGE},
        "params": sum(p.numel() for p in model.parameters()),
        "weights_sha256": hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest(),
        "training": {"seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                     "threads": torch.get_num_threads(), "minutes": round(summary["seconds"] / 60, 2),
                     "images_seen": summary["images_seen"], "val": summary["val"], "history": summary["history"]},
        "vgen_version": vgen.__version__, "torch": torch.__version__, "timm": timm.__version__,
    }
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "README.md").write_text(readme(cfg))
    (tmp / "build_log.txt").write_text("\n".join(log_lines) + "\n")
    old = out.with_name(out.name + ".old.tmp")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved {out} ({size / 2**20:.2f} MiB) in {(time.time() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
