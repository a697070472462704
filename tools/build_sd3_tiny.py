"""Build assets/sd3-tiny-shapes: a genuine diffusers StableDiffusion3Pipeline at tiny scale,
trained on the shapes world on CPU.

    python tools/build_sd3_tiny.py [--out assets/sd3-tiny-shapes] [--seed 0] [--steps N] ...

Parts (all stock diffusers / transformers classes, saved with ``save_pretrained``):
  * two ``CLIPTextModelWithProjection`` text encoders with a CLIP BPE tokenizer built
    locally for the grammar's words (vgen/models/tokenizer.py); a *null* T5: a genuine
    ``T5EncoderModel`` whose output is exactly zero (final RMS-norm weight 0), as if T5 were
    dropped, because diffusers only loads SD3 folders whose T5 slot is filled;
  * ``AutoencoderKL`` with 4x downsampling and 4 latent channels (64x64 -> 4x16x16), its
    ``scaling_factor`` / ``shift_factor`` set from the latent statistics as SD3 does;
  * ``SD3Transformer2DModel`` with patch size 2 (64 image tokens), RMS qk-norm;
  * ``FlowMatchEulerDiscreteScheduler``.

Stage 1 trains the VAE (L1 + MSE + a tiny KL). Stage 2 trains the transformer and both
text encoders jointly with the rectified-flow loss: x_s = (1 - s) x0 + s eps, target
v = eps - x0, s drawn logit-normal(0, 1) as in SD3; 10% of prompts are dropped to "" (the
pipeline's default negative prompt) for classifier-free guidance; an EMA of the weights
(decay 0.999, warmed up) is what gets saved.

Zero T5 tokens: the null T5 gives ``max_sequence_length`` (default 256) identical zero
tokens. Training uses one such token with a log(256) attention-logit bias,
which is exactly the same function (vgen/models/attention.py), so the saved pipeline works
with diffusers' default ``__call__`` arguments.

Finally it picks the CFG scale on val prompts, scores 500 test prompts with the verifier
through the stock pipeline call, and writes the model card. Deterministic from --seed for
a given torch build and thread count.
"""

from __future__ import annotations

import argparse
import copy
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

from vgen.models.attention import use_context_bias, use_stock_attention, zero_token_bias  # noqa: E402
from vgen.models.sd3 import null_t5  # noqa: E402
from vgen.models.tokenizer import build_clip_tokenizer  # noqa: E402
from vgen.world.datasets import item_seed  # noqa: E402
from vgen.world.grammar import _KNOWN, sample_prompts  # noqa: E402
from vgen.world.scene import render_prompt  # noqa: E402
from vgen.world.verifier import verify  # noqa: E402
from vgen.world.vocab import CATEGORIES  # noqa: E402

RESOLUTION = 64
MAX_TOKENS = 16          # CLIP context: the longest grammar prompt is 12 words + BOS/EOS
N_ZERO_T5 = 256          # diffusers' default max_sequence_length
SCHEDULER_SHIFT = 1.0    # 64 image tokens: little need to shift towards high noise
EVAL_STEPS = 20


def build_parts(seed: int):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = build_clip_tokenizer(sorted(_KNOWN), MAX_TOKENS)

    def clip(hidden: int, layers: int):
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                             projection_dim=hidden, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, hidden_act="gelu")
        return CLIPTextModelWithProjection(cfg)

    te1, te2 = clip(64, 2), clip(64, 2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=RESOLUTION,
                        use_quant_conv=False, use_post_quant_conv=False)
    transformer = SD3Transformer2DModel(sample_size=RESOLUTION // 4, patch_size=2, in_channels=4, num_layers=6,
                                        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=128,
                                        caption_projection_dim=128, pooled_projection_dim=128, out_channels=4,
                                        pos_embed_max_size=32, qk_norm="rms_norm")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SCHEDULER_SHIFT)
    return tok, te1, te2, vae, transformer, scheduler


def batch_images(prompts: list[str], seeds: list[int]) -> torch.Tensor:
    x = np.stack([render_prompt(p, s, RESOLUTION) for p, s in zip(prompts, seeds)])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, steps: int, batch: int, seed: int, log) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(steps):
        prompts = sample_prompts("train", batch, seed=seed * 100_003 + step)
        x = batch_images(prompts, [item_seed(seed + 1, step * batch + i) for i in range(batch)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} kl {kl.item():.4f}")
    vae.eval()


@torch.no_grad()
def latent_stats(vae, seed: int, n: int = 1024) -> tuple[float, float]:
    prompts = sample_prompts("train", n, seed=seed + 7)
    z = torch.cat([vae.encode(batch_images(prompts[i:i + 128], list(range(i, i + 128)))).latent_dist.mode()
                   for i in range(0, n, 128)])
    return float(z.mean()), float(z.std())


def encode_text(tok, te1, te2, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Context (B, MAX_TOKENS + 1, 128) and pooled (B, 128) as the SD3 pipeline builds them,
    with the zero T5 block folded into one token (see zero_token_bias)."""
    ids = tok(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    o1 = te1(ids, output_hidden_states=True)
    o2 = te2(ids, output_hidden_states=True)
    clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    zero = clip.new_zeros(clip.shape[0], 1, clip.shape[-1])
    return torch.cat([clip, zero], dim=1), torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)


def train_flow(tok, te1, te2, vae, transformer, steps: int, batch: int, seed: int, log) -> dict:
    use_context_bias(transformer)
    bias = zero_token_bias(MAX_TOKENS, N_ZERO_T5)
    params = list(transformer.parameters()) + list(te1.parameters()) + list(te2.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4, weight_decay=0.01, betas=(0.9, 0.99))
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    modules = {"transformer": transformer, "text_encoder": te1, "text_encoder_2": te2}
    ema = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in modules.items()}
    sf, sh = vae.config.scaling_factor, vae.config.shift_factor
    gen = torch.Generator().manual_seed(seed + 11)
    t0 = time.time()
    losses = []
    for step in range(steps):
        prompts = sample_prompts("train", batch, seed=seed * 1_000_003 + step + 1)
        with torch.no_grad():
            x = batch_images(prompts, [item_seed(seed + 2, step * batch + i) for i in range(batch)])
            x0 = (vae.encode(x).latent_dist.sample(generator=gen) - sh) * sf
        drop = torch.rand(batch, generator=gen) < 0.1
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        ctx, pooled = encode_text(tok, te1, te2, prompts)
        s = torch.sigmoid(torch.randn(batch, generator=gen)).view(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=gen)
        xs = (1 - s) * x0 + s * eps
        pred = transformer(hidden_states=xs, encoder_hidden_states=ctx, pooled_projections=pooled,
                           timestep=s.flatten() * 1000, joint_attention_kwargs={"context_bias": bias}).sample
        loss = F.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, m in modules.items():
                for pe, p in zip(ema[k].parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - t0)
            log(f"flow step {step}/{steps} loss {np.mean(losses[-50:]):.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{rate:.2f} steps/s eta {(steps - step - 1) / rate / 60:.1f} min")
    return ema


def generate(pipe, prompts: list[str], seeds: list[int], cfg: float, steps: int = EVAL_STEPS,
             fast: bool = True) -> np.ndarray:
    """Images from diffusers' own ``__call__``, one generator per sample.

    ``fast``: one zero T5 token with the log(256) bias instead of the default 256 zero
    tokens; the same function (main() measures the difference on a few samples).
    """
    out = []
    bias = zero_token_bias(MAX_TOKENS, N_ZERO_T5)
    extra = {"max_sequence_length": 1, "joint_attention_kwargs": {"context_bias": bias}}
    if fast:
        use_context_bias(pipe.transformer)
    else:
        use_stock_attention(pipe.transformer)
    for i in range(0, len(prompts), 50):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + 50]]
        imgs = pipe(prompts[i:i + 50], num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                    height=RESOLUTION, width=RESOLUTION, output_type="np", **(extra if fast else {})).images
        out.append((imgs * 255).round().astype(np.uint8))
    return np.concatenate(out)


def accuracy(images: np.ndarray, prompts: list[str]) -> dict:
    v = verify(images, prompts)
    per = {c: float(np.mean([x.strict for x in v if x.category == c])) for c in CATEGORIES}
    return {"strict": float(np.mean([x.strict for x in v])), "score": float(np.mean([x.score for x in v])),
            "per_category": per}


def attach_null_t5(pipe, seed: int) -> None:
    """Fill the pipeline's T5 slot with the zero-output T5 (see vgen.models.sd3.null_t5)."""
    t5, t5_tok = null_t5(sorted(_KNOWN), pipe.transformer.config.joint_attention_dim, seed)
    pipe.register_modules(text_encoder_3=t5, tokenizer_3=t5_tok)


def model_card(info: dict) -> str:
    res, n = info["test"], {k: f"{v / 1e6:.2f}M" for k, v in info["params"].items()}
    rows = "\n".join(f"| {c} | {res['per_category'][c]:.1%} |" for c in CATEGORIES)
    sweep = ", ".join(f"{k}: {v:.1%}" for k, v in info["cfg_sweep"].items())
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
license: apache-2.0
tags: [vgen, shapes-world, stable-diffusion-3, tiny]
---

# sd3-tiny-shapes

A genuine diffusers `StableDiffusion3Pipeline` at tiny scale ({info['params_total'] / 1e6:.2f}M parameters),
trained from scratch on CPU on vgen's built-in shapes world by `tools/build_sd3_tiny.py`
(seed {info['seed']}). It is the built-in base that vgen's post-training methods run on without downloads.

```python
from diffusers import StableDiffusion3Pipeline
pipe = StableDiffusion3Pipeline.from_pretrained("assets/sd3-tiny-shapes")
image = pipe("a photo of a red circle left of a blue square", num_inference_steps={EVAL_STEPS},
             guidance_scale={info['cfg']}, height=64, width=64).images[0]
```

## Parts

| part | class | parameters |
|---|---|---|
| transformer | `SD3Transformer2DModel` (6 joint blocks, width 128, patch 2, RMS qk-norm) | {n['transformer']} |
| vae | `AutoencoderKL` (64x64x3 -> 16x16x4) | {n['vae']} |
| text_encoder, text_encoder_2 | `CLIPTextModelWithProjection` (2 layers, width 64) | 2 x {n['text_encoder']} |
| tokenizer, tokenizer_2 | `CLIPTokenizer`, built locally for the grammar's words, 16 tokens | |
| scheduler | `FlowMatchEulerDiscreteScheduler`, shift {SCHEDULER_SHIFT} | |

`text_encoder_3` is a null T5: a genuine `T5EncoderModel` (1 layer) whose final norm weight is zero, so
its output is exactly zero, the same as SD3 with T5 dropped; diffusers needs the slot filled to load the
folder. The pipeline's default 256 zero T5 tokens are what training saw, exactly (one token with a
log(256) attention bias, see vgen/models/attention.py).

## Training

- VAE: {info['vae_steps']} steps, batch {info['vae_batch']}, L1 + MSE + 1e-4 KL; latent shift {info['shift']:.4f},
  scale {info['scale']:.4f}.
- Transformer and text encoders jointly: {info['steps']} steps, batch {info['batch']}, AdamW 4e-4 with
  warm-up and cosine decay, rectified-flow loss with logit-normal timesteps, 10% prompt dropout, EMA 0.999
  (the saved weights), gradient clipping 1.0. Train-split prompts only.
- Run time: {info['minutes']:.0f} minutes on {info['threads']} CPU threads (torch {info['torch']}).

## Scores (vgen verifier, GenEval-Shapes)

CFG scale chosen on 120 val prompts ({sweep}): **{info['cfg']}**. Test split, {res['n']} prompts
(categories balanced), {EVAL_STEPS} Euler steps, diffusers' `__call__` (scored with the one-token
form of the zero T5 block; on 8 samples it differs from the default call by at most
{res['fast_vs_stock_max_abs_diff_uint8']}/255 per pixel):
strict accuracy **{res['strict']:.1%}**, mean score {res['score']:.3f}.

| category | strict accuracy |
|---|---|
{rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets/sd3-tiny-shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--cfg-scales", default="2,3,4.5,6")
    args = ap.parse_args()
    from diffusers import StableDiffusion3Pipeline

    t_start = time.time()
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{(time.time() - t_start) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    tok, te1, te2, vae, transformer, scheduler = build_parts(args.seed)
    log(f"parts built; transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M params")
    train_vae(vae, args.vae_steps, args.vae_batch, args.seed, log)
    mean, std = latent_stats(vae, args.seed)
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    vae.requires_grad_(False)
    log(f"latent shift {mean:.4f} scale {1 / std:.4f}")
    ema = train_flow(tok, te1, te2, vae, transformer, args.steps, args.batch, args.seed, log)
    minutes = (time.time() - t_start) / 60

    transformer = ema["transformer"]
    use_stock_attention(transformer)  # the saved model is the stock class with its stock processor
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                    text_encoder=ema["text_encoder"], tokenizer=tok,
                                    text_encoder_2=ema["text_encoder_2"], tokenizer_2=copy.deepcopy(tok),
                                    text_encoder_3=None, tokenizer_3=None)
    attach_null_t5(pipe, args.seed)
    pipe.set_progress_bar_config(disable=True)
    val = sample_prompts("val", 120, seed=args.seed + 5)
    sweep = {}
    for cfg in [float(c) for c in args.cfg_scales.split(",")]:
        sweep[str(cfg)] = accuracy(generate(pipe, val, list(range(len(val))), cfg), val)["strict"]
        log(f"cfg {cfg}: val strict {sweep[str(cfg)]:.1%}")
    best = float(max(sweep, key=sweep.get))
    test = sample_prompts("test", args.n_test, seed=args.seed + 9)
    images = generate(pipe, test, [10_000 + i for i in range(len(test))], best)
    res = accuracy(images, test)
    res["n"] = len(test)
    check = test[:8]
    stock = generate(pipe, check, [10_000 + i for i in range(8)], best, fast=False)
    res["fast_vs_stock_max_abs_diff_uint8"] = int(np.abs(stock.astype(int) - images[:8].astype(int)).max())
    log(f"fast path vs stock call on 8 samples: max |diff| {res['fast_vs_stock_max_abs_diff_uint8']} (uint8)")
    log(f"test strict {res['strict']:.1%} per category {json.dumps(res['per_category'])}")

    use_stock_attention(pipe.transformer)
    pipe.save_pretrained(tmp, safe_serialization=True)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("transformer", transformer), ("vae", vae), ("text_encoder", ema["text_encoder"]))}
    info = {"seed": args.seed, "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "steps": args.steps,
            "batch": args.batch, "shift": mean, "scale": 1 / std, "cfg": best, "cfg_sweep": sweep, "test": res,
            "minutes": minutes, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "params": params, "params_total": params["transformer"] + params["vae"] + 2 * params["text_encoder"],
            "eval_steps": EVAL_STEPS, "resolution": RESOLUTION}
    (tmp / "README.md").write_text(model_card(info))
    (tmp / "vgen_base.json").write_text(json.dumps(info, indent=2) + "\n")
    (tmp / "build_log.txt").write_text("\n".join(log_lines) + "\n")
    from vgen.images import make_grid
    from vgen.io import save_png

    save_png(tmp / "samples.png", make_grid(list(images[:24]), test[:24], marks=[
        v.strict for v in verify(images[:24], test[:24])]))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"saved {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
