"""Build assets/var-tiny-shapes: a multi-scale VQ-VAE and a class-conditional VAR, trained on
the shapes world on CPU, saved as a vgen VAR model folder (vgen/models/var/folder.py).

    python tools/build_var_tiny.py [--out assets/var-tiny-shapes] [--seed 0] [--vae-steps N] [--steps N] ...
    python tools/build_var_tiny.py --flex      # assets/flexvar-tiny-shapes: the FlexVAR base

``--flex`` builds the FlexVAR variant: a non-residual tokenizer (every scale quantizes the
downsampled latent itself; the image decodes from the last scale alone) and a ``flex=True``
transformer that the ``var`` recipe trains on a random scale list per step (FlexVAR's rule as
vgen states it in ``vgen/vartrain/data.py: flex_scale_list``), so it samples at scale lists it never
saw, e.g. all eight sizes 1..8.

Classes are the 70 prompts of ``vgen.world.datasets.CLASS_PROMPTS`` (all six GenEval
categories: 4 single objects, 6 pairs, 12 counts, 24 coloured objects, 12 positions, 12
colour attributions), images 64x64.

Scale schedule: the tokenizer downsamples 8x, so the latent is 8x8 and the scales are
1, 2, 3, 4, 6, 8 (130 tokens per image). Why: the official 16x16 latent with its ten scales
(680 tokens) costs about 5x more per image in every transformer pass, and a 16x16 latent
buys nothing on this world - its smallest objects are 13 px wide, more than a latent cell
and a half at 8x - while the residual scales still go coarse to fine in roughly 1.4x steps
(the official ratio is 1.2-1.3x). Six scales keep sampling to six transformer steps.

Stage 1, the tokenizer: ``VQVAE(ch=16, ch_mult=(1, 2, 4, 4))`` with 8 GroupNorm groups, one residual block per
level, mid attention only, 16-channel codes, one shared codebook of 512 codes for all
scales (VAR's rule), 4 shared Phi convs. Loss: L1 + MSE reconstruction + the quantizer's
codebook / commitment terms averaged over scales (``VectorQuantizer.forward``). The codebook
starts from encoder outputs, and codes that stop being used (per-scale usage EMA, the
``ema_vocab_hit_SV`` buffer) are restarted on residuals of the current batch every 100 steps,
the usual remedy for codebook collapse. AdamW with a one-cycle schedule.

Stage 2, the transformer: the ``var`` training recipe (vgen/vartrain/recipe.py) with the config in
``var_config``; teacher forcing, label smoothing, label dropout for CFG.

Finally the CFG scale and top-k are picked on validation seeds, and the test seeds are scored
by vgen's one VAR evaluator (what `vgen eval` runs): GenEval-Shapes of every class against its
prompt, FID-shapes against the class prompts' real renders; plus reconstruction PSNR per number
of scales. The test report is saved in the folder (``eval/test/``), so `vgen export` states it.
Deterministic from --seed for a given torch build and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgen.models.var.folder import build_vqvae  # noqa: E402
from vgen.models.var.vqvae import area  # noqa: E402
from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset  # noqa: E402

RESOLUTION = 64
PATCH_NUMS = (1, 2, 3, 4, 6, 8)
VQVAE_ARCH = dict(vocab_size=512, z_channels=16, ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, dropout=0.0,
                  beta=0.25, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, patch_nums=PATCH_NUMS,
                  residual=True, using_sa=False, using_mid_sa=True, norm_groups=8)


def tokenizer_arch(flex: bool) -> dict:
    return {**VQVAE_ARCH, "residual": not flex}


def images(seed: int, start: int, n: int) -> torch.Tensor:
    """n world images in [-1, 1]: items start..start+n of the class dataset with scene seed ``seed``."""
    ds = ShapesClassDataset(start + n, RESOLUTION, seed)
    return torch.stack([ds[i]["image"] for i in range(start, start + n)]) * 2 - 1


@torch.no_grad()
def residuals(vae, f: torch.Tensor) -> torch.Tensor:
    """Every scale's area-downsampled residual vector, (N, Cvae): what the codebook must cover."""
    q = vae.quantize
    out, f_hat = [], torch.zeros_like(f)
    for si, pn in enumerate(q.patch_nums):
        r = area(f - f_hat if q.residual else f, pn)
        out.append(r.permute(0, 2, 3, 1).reshape(-1, q.Cvae))
        f_hat = f_hat + q.phi_up(q.embed(q.nearest(r), pn), si, f.shape[-1], len(q.patch_nums))
    return torch.cat(out)


@torch.no_grad()
def restart_dead_codes(vae, f: torch.Tensor, generator: torch.Generator, min_hits: float = 0.03) -> int:
    """Codes whose usage EMA, summed over scales, fell below ``min_hits`` per step get new values:
    random residual vectors of this batch (plus a little noise so that restarts differ)."""
    q = vae.quantize
    dead = (q.ema_vocab_hit_SV.sum(0) < min_hits).nonzero().squeeze(1)
    if len(dead):
        pool = residuals(vae, f)
        pick = torch.randint(0, len(pool), (len(dead),), generator=generator)
        q.embedding.weight[dead] = pool[pick] + 0.01 * pool.std() * torch.randn(len(dead), q.Cvae,
                                                                                generator=generator)
        q.ema_vocab_hit_SV[:, dead] = 1.0  # a grace period before the next check
    return len(dead)


def train_tokenizer(steps: int, batch: int, seed: int, log, lr: float = 1e-3, flex: bool = False):
    """Stage 1: a multi-scale VQ-VAE (residual, or FlexVAR's non-residual one) trained on world images."""
    torch.manual_seed(seed)
    vae = build_vqvae(tokenizer_arch(flex))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # codebook from the encoder's (untrained) outputs, at every scale
        f = vae.img_to_f(images(seed + 100, 0, 64))
        pool = torch.cat([area(f, pn).permute(0, 2, 3, 1).reshape(-1, vae.Cvae) for pn in PATCH_NUMS])
        vae.quantize.embedding.weight.copy_(pool[torch.randint(0, len(pool), (vae.vocab_size,), generator=g)])
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.05)
    vae.train()
    for step in range(steps):
        x = images(seed, step * batch, batch)
        rec, vq = vae(x)
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + vq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        restarted = restart_dead_codes(vae, vae.img_to_f(x).detach(), g) if step % 100 == 99 else 0
        if step % 100 == 0 or step == steps - 1:
            log(f"tokenizer step {step}/{steps} loss {loss.item():.4f} vq {vq.item():.4f} "
                f"psnr {psnr(rec.detach().clamp(-1, 1), x):.2f} dB" + (f" restarted {restarted}" if restarted else ""))
    return vae.eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def psnr_per_scales(vae, x: torch.Tensor) -> list[float]:
    """Reconstruction PSNR decoding f_hat after 1, 2, ..., K scales."""
    _, fhats = vae.quantize.f_to_idx(vae.img_to_f(x), return_fhat=True)
    return [psnr(vae.fhat_to_img(fh), x) for fh in fhats]


def evaluate(var, vae, seeds: list[int], cfg: float, top_k: int, fid: bool = False,
             patch_nums=None) -> tuple[dict, dict, np.ndarray]:
    """(summary, vgen eval report body, images) of every class x ``seeds`` through vgen's one VAR
    evaluator (vgen.eval.harness.evaluate_var, what `vgen eval` runs): GenEval-Shapes strict accuracy
    per category and overall (also category-balanced), and with ``fid`` FID-shapes / KID-shapes
    against as many real renders of the same class prompts."""
    from vgen.eval.harness import evaluate_var

    classes = list(range(len(CLASS_PROMPTS)))
    settings = {"cfg": cfg, "top_k": top_k, "top_p": 0.0, **({"patch_nums": list(patch_nums)} if patch_nums else {})}
    scores, images, _ = evaluate_var(var, vae, CLASS_PROMPTS, classes, seeds, settings,
                                     ("geneval", "fid") if fid else ("geneval",), RESOLUTION, batch=128)
    g = scores["geneval_shapes"]
    per_cat = {c: v["strict"]["mean"] for c, v in g["per_category"].items()}
    summary = {"strict": g["overall"]["strict"]["mean"], "strict_ci95": g["overall"]["strict"]["ci95"],
               "score": g["overall"]["score"]["mean"],
               "strict_category_balanced": float(np.mean(list(per_cat.values()))), "per_category": per_cat,
               "n_classes": len(classes), "n_seeds": len(seeds), "fid": scores.get("fid_shapes")}
    return summary, {**settings, "classes": classes, "n_classes": len(classes), "seeds": seeds, **scores}, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="default: assets/var-tiny-shapes, or assets/flexvar-tiny-shapes "
                    "with --flex")
    ap.add_argument("--flex", action="store_true", help="build the FlexVAR base (non-residual tokenizer, flex=True)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--var-config", default="configs/var/base.yaml", help="the var recipe config of stage 2")
    ap.add_argument("--var-overrides", nargs="*", default=[], help="key=value overrides of that config")
    ap.add_argument("--cfg-scales", default="0,1,2,3,4.5")
    ap.add_argument("--top-ks", default="0,40")
    ap.add_argument("--val-seeds", type=int, default=4)
    ap.add_argument("--test-seeds", type=int, default=10)
    ap.add_argument("--tokenizer-only", action="store_true", help="stop after stage 1 (a tokenizer-only folder)")
    ap.add_argument("--tokenizer", metavar="FOLDER", help="skip stage 1: reuse the tokenizer of a built base "
                    "(e.g. assets/var-tiny-shapes for a deeper transformer on the same tokens)")
    ap.add_argument("--resume", metavar="BUILD_DIR",
                    help="continue an interrupted build from its work folder (assets/.var-tiny-shapes.build.*): "
                         "reuse its tokenizer and resume the transformer from its last checkpoint")
    ap.add_argument("--evaluate-only", metavar="FOLDER", help="re-score a built base with the current evaluator "
                    "and rewrite its card and eval/ reports (no training)")
    ap.add_argument("--earlier-minutes", type=float, help="with --resume: wall minutes of the interrupted part, "
                    "for the model card")
    args = ap.parse_args()
    from vgen.cli import main as vgen_main
    from vgen.models.load import load
    from vgen.models.var.folder import save_var_model

    t_start = time.time()
    lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{(time.time() - t_start) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        lines.append(line)

    if args.evaluate_only:
        evaluate_only(Path(args.evaluate_only), log)
        log(f"re-evaluated {args.evaluate_only}")
        return
    out = Path(args.out or ("assets/flexvar-tiny-shapes" if args.flex else "assets/var-tiny-shapes"))
    if args.resume:  # the var recipe resumes its run by default (resume: auto), so stage 2 needs nothing more
        work = Path(args.resume)
        tok_dir = work / "tokenizer"
        if not (tok_dir / "config.json").is_file():
            raise SystemExit(f"--resume: no finished tokenizer in {str(work)!r}")
        vae = load(tok_dir).vqvae
        log(f"resuming the build in {work}: tokenizer reused, transformer resumed from its last checkpoint")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)  # the work folder sits beside OUT: one rename at the end
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build.", dir=out.parent))
        if args.tokenizer:
            vae = load(args.tokenizer, tokenizer_only=True).vqvae
            if vae.residual == args.flex:
                raise SystemExit(f"--tokenizer {args.tokenizer!r} is {'not ' if args.flex else ''}residual; "
                                 f"{'--flex needs a non-residual one' if args.flex else 'drop --flex'}")
            log(f"tokenizer reused from {args.tokenizer}")
        else:
            vae = train_tokenizer(args.vae_steps, args.vae_batch, args.seed, log, flex=args.flex)
        tok_dir = save_var_model(work / "tokenizer", vae, None, CLASS_PROMPTS, RESOLUTION)
    val = images(args.seed + 1, 0, 256)
    curve = psnr_per_scales(vae, val)
    log("tokenizer val PSNR by scales: " + ", ".join(f"{pn}: {p:.2f} dB" for pn, p in zip(PATCH_NUMS, curve)))
    if args.tokenizer_only:
        if out.exists():
            shutil.rmtree(out)
        os.replace(tok_dir, out)
        shutil.rmtree(work, ignore_errors=True)
        log(f"saved tokenizer-only folder {out}")
        return
    t_var = time.time()
    code = vgen_main(["train", args.var_config, f"tokenizer={tok_dir}", f"run.out_dir={work}", "run.name=var",
                      f"run.seed={args.seed}", "progress=false", *args.var_overrides])
    if code:
        raise SystemExit(f"stage 2 (var recipe) failed with exit code {code}")
    var_minutes = (time.time() - t_var) / 60
    log(f"transformer trained in {var_minutes:.1f} min")
    trained = load(work / "var" / "model")
    vae, var = trained.vqvae, trained.var
    metrics = [json.loads(x) for x in (work / "var" / "metrics.jsonl").read_text().splitlines()]
    last_eval = [m for m in metrics if "val_loss" in m][-1]

    val_seeds = [1_000_000 + i for i in range(args.val_seeds)]  # sampling seeds: val and test never overlap
    sweep = {}
    for top_k in [int(k) for k in args.top_ks.split(",")]:
        for cfg in [float(c) for c in args.cfg_scales.split(",")]:
            acc, _, _ = evaluate(var, vae, val_seeds, cfg, top_k)
            sweep[f"cfg={cfg},top_k={top_k}"] = {"cfg": cfg, "top_k": top_k, "strict": acc["strict"]}
            log(f"val: cfg {cfg} top-k {top_k}: strict {acc['strict']:.1%}")
    best = max(sweep.values(), key=lambda r: r["strict"])
    test_seeds = [2_000_000 + i for i in range(args.test_seeds)]
    info = {"seed": args.seed, "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "out": str(out),
            "tokenizer_from": args.tokenizer,
            "vqvae": {k: list(v) if isinstance(v, tuple) else v for k, v in tokenizer_arch(args.flex).items()},
            "flex": args.flex,
            "tokenizer_psnr_by_scales": dict(zip(map(str, PATCH_NUMS), curve)),
            "var_config": args.var_config, "var_overrides": args.var_overrides, "var_minutes": var_minutes,
            "resumed": bool(args.resume), "earlier_minutes": args.earlier_minutes,
            "held_out_tf": {k: last_eval[k] for k in ("step", "val_loss", "val_acc")},
            "sampling_sweep": sweep, "sampling": {"cfg": best["cfg"], "top_k": best["top_k"], "top_p": 0.0},
            "test_seeds": test_seeds, "minutes": (time.time() - t_start) / 60, "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "depth": var.depth, "width": var.C,
            "params": {"vqvae": sum(p.numel() for p in vae.parameters()),
                       "var": sum(p.numel() for p in var.parameters())}}
    final = test_and_card(work / "final", vae, var, info, log)
    (final / "build_log.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(work / "var" / "metrics.jsonl", final / "train_metrics.jsonl")
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"saved {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB)")


UNSEEN_SCALES = (1, 2, 3, 4, 5, 6, 7, 8)  # a FlexVAR base never trains on all eight sizes (flex_scale_list)


def test_and_card(folder: Path, vae, var, info: dict, log) -> Path:
    """Score the test seeds with vgen's VAR evaluator (and, for FlexVAR, once more at a scale list it
    never trained on), then write the model folder: weights, card, sample sheet and the evaluation
    reports under ``eval/`` (``vgen export`` of the folder states them). ``info`` gets ``test`` (and
    ``test_unseen_scales``)."""
    from vgen import __version__
    from vgen.eval.harness import var_images, write_report
    from vgen.images import sample_sheet
    from vgen.models.var.folder import save_var_model

    seeds, best = info["test_seeds"], info["sampling"]
    runs = [("test", None)] + ([("test-unseen-scales", UNSEEN_SCALES)] if info.get("flex") else [])
    reports = {}
    for name, pns in runs:
        t = time.perf_counter()
        res, report, images = evaluate(var, vae, seeds, best["cfg"], best["top_k"], fid=True, patch_nums=pns)
        res["images_per_s"] = len(images) / (time.perf_counter() - t)
        res["patch_nums"] = list(pns or PATCH_NUMS)
        info["test" if pns is None else "test_unseen_scales"] = res
        reports[name] = (report, images)
        log(f"{name} ({len(seeds)} seeds per class, scales {res['patch_nums']}): strict {res['strict']:.1%} "
            f"(category-balanced {res['strict_category_balanced']:.1%}); per category "
            f"{json.dumps(res['per_category'])}; FID-shapes {res['fid']['fid_shapes']:.2f}")
    folder = save_var_model(folder, vae, var, CLASS_PROMPTS, RESOLUTION, info["sampling"], card=model_card(info),
                            extra={"build": info})
    shown = list(range(len(CLASS_PROMPTS)))[::3][:24]
    grid = var_images(var, vae, shown, [seeds[0]], best)
    sample_sheet(folder / "samples.png", grid, [f"{c}: {CLASS_PROMPTS[c]}" for c in shown],
                 [CLASS_PROMPTS[c] for c in shown], cols=6)
    for name, (report, images) in reports.items():  # as `vgen eval` writes them
        write_report(folder / "eval" / name, {"vgen_version": __version__, "model": folder.name, "kind": "var",
                                              "source": "model", "step": None, "flex": bool(info.get("flex")),
                                              "resolution": RESOLUTION, "patch_nums": list(var.patch_nums),
                                              **report},
                     images, [CLASS_PROMPTS[c] for c in report["classes"] for _ in seeds], len(seeds))
    return folder


def evaluate_only(folder: Path, log) -> None:
    """Re-score an existing base with the current evaluator and rewrite its card and reports in place
    (built aside, then swapped in); the build record in config.json is kept, its test figures replaced."""
    from vgen.models.load import load

    m = load(folder)
    info = dict(m.var_config.get("build") or {})
    if not info:
        raise SystemExit(f"{folder}: config.json has no build record; nothing to re-evaluate against")
    info.setdefault("test_seeds", [2_000_000 + i for i in range(info.get("test", {}).get("n_seeds", 10))])
    info.setdefault("flex", not m.vqvae.residual)
    aside = folder.parent / f".{folder.name}.reeval"
    test_and_card(aside, m.vqvae, m.var, info, log)
    for keep in ("build_log.txt", "train_metrics.jsonl"):
        if (folder / keep).is_file():
            shutil.copy(folder / keep, aside / keep)
    shutil.rmtree(folder)
    os.replace(aside, folder)


def resumed_note(info: dict) -> str:
    """A resumed build's clock starts at the resume: say so, with what the earlier part took if known."""
    if not info.get("resumed"):
        return ""
    earlier = f", about {info['earlier_minutes']:.0f} minutes" if info.get("earlier_minutes") else ""
    return (f"; resumed after an interruption with `--resume`, so these times count only the resumed part (the "
            f"tokenizer and the transformer's first checkpointed steps ran before{earlier})")


def model_card(info: dict) -> str:
    t = info["test"]
    cats = "\n".join(f"| {k} | {v:.1%} |" for k, v in t["per_category"].items())
    psnr_row = " / ".join(f"{v:.1f}" for v in info["tokenizer_psnr_by_scales"].values())
    where = info.get("out") or ("assets/flexvar-tiny-shapes" if info.get("flex") else "assets/var-tiny-shapes")
    reused = f" (reused from `{info['tokenizer_from']}`, not retrained)" if info.get("tokenizer_from") else ""
    u = info.get("test_unseen_scales")
    unseen = "" if not u else (
        f"\n\nAt a scale list it never trained on, all eight sizes {u['patch_nums']} (204 tokens; training drew the "
        f"first two sizes, the last and 1-3 sizes between, so never all eight): strict accuracy **{u['strict']:.1%}** "
        f"(category-balanced {u['strict_category_balanced']:.1%}), FID-shapes {u['fid']['fid_shapes']:.2f}, same "
        f"seeds and sampling settings.")
    trained = ("FlexVAR with AdaLN blocks, trained on a random scale list per step" if info.get("flex")
               else "VAR with AdaLN blocks")
    return f"""---
license: apache-2.0
library_name: vgen
tags: [var, visual-autoregressive, class-conditional, shapes-world, tiny]
---
# {Path(where).name}

A tiny class-conditional {"FlexVAR" if info.get("flex") else "VAR"} (next-scale prediction) model of the vgen
shapes world, built on CPU by `python tools/build_var_tiny.py{" --flex" if info.get("flex") else ""}{
    f" --tokenizer {info['tokenizer_from']} --var-config {info['var_config']}"
    + (" --var-overrides " + " ".join(info["var_overrides"]) if info.get("var_overrides") else "") + f" --out {where}"
    if info.get("tokenizer_from") else ""}` in
{info["minutes"]:.0f} minutes ({info['threads']} threads, torch {info['torch']}){resumed_note(info)}.
Classes: the {len(CLASS_PROMPTS)} prompts listed in `config.json` (`class_prompts`), covering GenEval's six
categories. Images are 64x64.

- Tokenizer{reused}: {"non-residual (FlexVAR)" if info.get("flex") else "residual"} multi-scale VQ-VAE,
  {info['params']['vqvae'] / 1e6:.2f}M parameters, 8x downsampling
  (8x8 latent, 16-d codes), one 512-code codebook, scales {list(PATCH_NUMS)} (130 tokens).
  Reconstruction PSNR on 256 held-out images after 1..6 scales: {psnr_row} dB.
- Transformer: {trained}, depth {info.get('depth', '?')}, width {info.get('width', '?')},
  {info['params']['var'] / 1e6:.2f}M parameters, trained with the `var`
  recipe (`{info['var_config']}`) in {info['var_minutes']:.0f} minutes; held-out teacher-forcing loss
  {info['held_out_tf']['val_loss']:.3f}, token accuracy {info['held_out_tf']['val_acc']:.1%}.
- Sampling defaults (picked on validation seeds): CFG {info['sampling']['cfg']}, top-k {info['sampling']['top_k']}.

## Quality

{t['n_seeds']} test seeds per class, each sample scored by the world's verifier against its class prompt:
GenEval-Shapes strict accuracy **{t['strict']:.1%}** over all classes (category-balanced
{t['strict_category_balanced']:.1%}; score {t['score']:.3f}); FID-shapes {t['fid']['fid_shapes']:.2f}
and KID-shapes {t['fid']['kid_shapes_mean']:.4f} against as many real renders of the same prompts
(`eval/test/report.md`, written by vgen's evaluator, as `vgen eval` writes it).{unseen}

| category | strict accuracy |
|---|---|
{cats}

## Use

```
vgen sample --model {where} --classes 0 5 12 --seeds 0-3 --out samples
```
```python
from vgen.models.load import load
from vgen.engine.scalewise import sample
m = load("{where}")
images = sample(m.var, m.vqvae, class_ids=[0, 5], seeds=[0, 1], **m.sampling).images
```
"""


if __name__ == "__main__":
    main()
