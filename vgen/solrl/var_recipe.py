"""`vgen train` recipe ``solrl_var``: Sol-RL and its baseline families on a VAR / FlexVAR token policy.

The policy is the class-conditional categorical the sampler draws from (CFG ramp, then top-k /
top-p, the model's own sampling settings unless set), so a sample's log-probability is exact and
the update is GRPO on token log-probs (DESIGN section 7.4). One iteration, read top to bottom in
:func:`run`:

1. classes: ``explore_classes`` (default ``classes_per_step``) of ``train_classes``, from (seed, step);
2. explore: N samples per class, each with its own seed, from the explore copy of the policy
   (the transformer at ``explore_backend``'s precision, the VQ-VAE in bf16 unless the backend is
   fp32 or the CPU has no native bf16), scored by the reward against the class's prompt;
3. with more classes explored than trained: the ``classes_per_step`` with the largest explore
   reward spread (dynamic sampling); then k seeds per class by ``select``;
4. regenerate those seeds with the policy itself (train precision), recording each token's
   log-prob, and score them again;
5. advantages over each class's k rewards; non-finite rewards are dropped (and counted), a
   group with no spread contributes nothing;
6. ``inner_epochs`` optimizer steps of the clipped-ratio loss on the kept samples' tokens,
   normalised per scale (``vgen.solrl.tokens``), plus an optional KL to the base;
7. explore-copy refresh, logs; held-out evaluation, sample sheet and checkpoint every so many
   iterations.

Families (``family``) as on the diffusion side: ``sol_rl`` as above; ``k_in_k`` (DiffusionNFT's
k-in-k: k per class in train precision, all trained on); ``naive_scaling`` (N in train precision,
the selected k trained on); ``naive_quant`` (N from the explore copy, the selected k's explore
samples trained on, their old log-probs the explore copy's).

Seeds: training samples use seeds from 2**40 up; the held-out evaluation during training uses
``VAL_SEED`` + i and the tiny bases' cards (and `vgen eval --seeds 2000000 ...`) use 2,000,000 + i,
so no selection ever sees a test seed. ``draw: gumbel`` turns a seed into tokens by the Gumbel-max
rule instead of the inverse CDF: the same policy distribution, but a seed's bf16 explore sample
and its full-precision regeneration share far more tokens (``engine.scalewise.draw``), so the
selection made on the one holds better for the other. Every random choice derives from (run.seed, iteration),
so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vgen.config import param
from vgen.errors import UserError
from vgen.run import RunConfig
from vgen.train.loop import RESUME_HELP

RECIPE = "solrl_var"
Family = Literal["sol_rl", "k_in_k", "naive_scaling", "naive_quant"]
TRAIN_SEED = 2**40  # training seeds start here: far from every evaluation seed
VAL_SEED = 3_000_000  # held-out evaluation during training: VAL_SEED + i (test: 2,000,000 + i)


@dataclass
class SolRLVARConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/var-tiny-shapes", help="VAR / FlexVAR model folder (or a VAR run) of the base policy")
    family: Family = param("sol_rl", help="sol_rl | k_in_k (DiffusionNFT's k-in-k) | naive_scaling | naive_quant")
    reward: dict[str, float] = param(default_factory=lambda: {"shapes": 1.0}, help="reward name -> weight, "
                                     "scored against each class's prompt")
    reward_paths: dict[str, str] = param(default_factory=dict, help="reward name -> local weights (model rewards)")
    explore_backend: str = param("auto", help="explore precision: auto | fp32 | bf16 | fp8 | nvfp4 | nvfp4-te | "
                                 "nvfp4-emu (vgen.quant.backends.BACKENDS)")
    candidates: int = param(32, ge=2, le=100_000, help="N: samples explored per class")
    draw: Literal["inverse_cdf", "gumbel"] = param("inverse_cdf", help="how a seed becomes tokens in the explore "
                                                   "and training samples (the same policy distribution): gumbel "
                                                   "keeps a seed's explore and regenerated samples closer")
    k: int = param(8, ge=2, le=100_000, help="samples per class regenerated and trained on")
    select: Literal["best_worst", "mean_deviation", "random", "extremes_random"] = param("best_worst")
    classes_per_step: int = param(8, ge=1, le=100_000, help="classes trained per iteration (global)")
    explore_classes: int | None = param(None, ge=1, le=100_000, help="classes explored per iteration; the "
                                        "classes_per_step of them with the largest explore reward spread are "
                                        "trained (dynamic sampling); default: classes_per_step")
    train_classes: list[int] | None = param(None, help="class ids to train on (default: all)")
    cfg: float | None = param(None, ge=0, le=50, help="CFG scale of the policy (default: the model's)")
    top_k: int | None = param(None, ge=0, help="top-k of the policy (default: the model's)")
    top_p: float | None = param(None, ge=0, le=1, help="top-p of the policy (default: the model's)")
    advantage: Literal["group", "global_std", "mc_grpo"] = param("group", help="advantage normalisation")
    adv_max: float = param(5.0, gt=0, help="advantages are clipped to [-adv_max, adv_max]")
    clip: float = param(0.2, gt=0, le=1.0, help="PPO ratio clip range, per token")
    scale_norm: Literal["scale", "token"] = param("scale", help="scale: each scale weighs the same in a sample's "
                                                  "loss; token: a plain mean over all tokens")
    kl_beta: float = param(0.0, ge=0, help="weight of the token KL to the base (k3 estimator)")
    lora_rank: int = param(16, ge=0, le=4096, help="LoRA rank on every block's linears; 0 = full fine-tuning")
    lr: float = param(1e-4, gt=0, le=1.0, help="AdamW learning rate")
    weight_decay: float = param(0.0, ge=0, help="AdamW weight decay")
    grad_clip: float = param(1.0, gt=0, help="gradient norm clip")
    inner_epochs: int = param(1, ge=1, le=1000, help="optimizer steps per iteration on its samples (the ratio "
                              "to the rollout's log-probs is clipped from the second on)")
    train_batch: int = param(64, ge=1, le=100_000, help="samples per forward/backward micro-batch")
    iterations: int = param(20, ge=0, le=10_000_000, help="policy updates")
    eval_every: int = param(10, ge=0, help="held-out evaluation every this many iterations and at the end "
                            "(0: end only); the base is evaluated once before training")
    eval_seeds: int = param(5, ge=0, le=10_000, help="held-out seeds per class (VAL_SEED + i); 0: no held-out "
                            "evaluation (a smoke or timing run)")
    sample_every: int = param(10, ge=0, help="sample sheet of the trained samples every this many iterations "
                              "and at the end (0: end only)")
    checkpoint_every: int = param(5, ge=0, help="checkpoint every this many iterations (0: only at the end)")
    resume: str = param("auto", help=RESUME_HELP)
    progress: bool = param(True, help="show a progress bar")

    def check(self) -> None:
        from vgen.solrl.recipe import check_backend

        check_backend(self.explore_backend)


@dataclass
class Policy:
    """The trained VAR and what the loop needs around it."""
    var: torch.nn.Module
    vqvae: torch.nn.Module
    names: list[str]             # class prompts
    resolution: int
    sampling: dict               # cfg / top_k / top_p the policy samples with
    params: list[torch.Tensor]   # trainable
    lora: bool
    ref: list[torch.Tensor] | None = None  # the base's values of params (full fine-tuning with a KL)


# ---------------------------------------------------------------- pieces of the loop


def _setup(cfg: SolRLVARConfig, dist, ckpt: Path | None, state: dict | None) -> Policy:
    """The base with LoRA (or all weights trainable), a resumed checkpoint's weights loaded."""
    from vgen.models.load import load

    if cfg.k > cfg.candidates and cfg.family != "k_in_k":
        raise UserError(f"k ({cfg.k}) must not exceed candidates ({cfg.candidates})")
    if cfg.explore_classes is not None and cfg.explore_classes < cfg.classes_per_step:
        raise UserError(f"explore_classes ({cfg.explore_classes}) must be at least classes_per_step "
                        f"({cfg.classes_per_step})")
    m = load(cfg.model, device=dist.device)
    if m.kind != "var" or m.var is None:
        raise UserError(f"{cfg.model!r} is not a VAR model with a transformer: recipe solrl_var trains VAR / FlexVAR "
                        "(use recipe solrl for diffusers pipelines)")
    if any(not 0 <= c < len(m.classes) for c in cfg.train_classes or []):
        raise UserError(f"train_classes must lie in 0..{len(m.classes) - 1}")
    var, vqvae = m.var, m.vqvae
    var.cond_drop_rate = 0.0  # the policy is the sampler's distribution: no label dropout
    vqvae.requires_grad_(False)
    if cfg.lora_rank:
        from peft import LoraConfig, inject_adapter_in_model

        from vgen.scaleweaver.adapter import LORA_TARGETS

        var.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=LORA_TARGETS),
                                var)
    else:
        var.requires_grad_(True)
    params = [p for p in var.parameters() if p.requires_grad]
    # the KL's reference for full fine-tuning: the base weights, taken before a checkpoint's are loaded
    ref = [p.detach().clone() for p in params] if cfg.kl_beta and not cfg.lora_rank else None
    if ckpt is not None:
        if cfg.lora_rank:
            with torch.no_grad():
                for p, v in zip(params, state["lora"], strict=True):
                    p.copy_(v)
        else:
            from vgen.train.checkpoint import apply_weights

            apply_weights(ckpt, var)
    sampling = {"cfg": m.sampling.get("cfg", 1.5), "top_k": m.sampling.get("top_k", 0),
                "top_p": m.sampling.get("top_p", 0.0)}
    sampling.update({k: getattr(cfg, k) for k in sampling if getattr(cfg, k) is not None})
    return Policy(var, vqvae, list(m.classes), m.resolution, sampling, params, bool(cfg.lora_rank), ref)


def _explore_copy(policy: Policy, backend: str):
    """(transformer, VQ-VAE) of the explore role: the transformer at the backend's precision, the
    VQ-VAE (its next-scale inputs and the decode, half of the tiny base's sampling time) in bf16
    unless the backend is fp32 or the device is a CPU without native bf16, where bf16 convolutions
    are emulated (the decode of 16 tiny-base images: 9 s against 0.2 s in fp32 on an AVX2 EPYC)."""
    import copy

    from vgen.quant.backends import bf16_native
    from vgen.quant.explore import explore_copy

    device = policy.var.class_emb.weight.device
    var = explore_copy(policy.var, backend, device)
    half = var.vgen_backend != "fp32" and bf16_native(device)
    vqvae = copy.deepcopy(policy.vqvae).to(torch.bfloat16) if half else policy.vqvae
    return var, vqvae


def _classes(cfg: SolRLVARConfig, n_classes: int, step: int, n: int) -> list[int]:
    """This iteration's ``n`` classes, from (seed, step) alone: distinct while the pool allows."""
    pool = np.asarray(cfg.train_classes if cfg.train_classes else range(n_classes))
    rng = np.random.default_rng([cfg.run.seed, step, 7])
    return [int(c) for c in rng.choice(pool, n, replace=n > len(pool))]


def _seeds(cfg: SolRLVARConfig, step: int, n_classes: int, n: int) -> np.ndarray:
    """(classes, n) sample seeds: distinct across iterations and classes, all >= TRAIN_SEED."""
    from vgen.solrl.recipe import SEED_SPAN

    base = TRAIN_SEED + ((cfg.run.seed * 1_000_003 + step) * 1_000_000) % (SEED_SPAN - TRAIN_SEED)
    return base + np.arange(n_classes * n, dtype=np.int64).reshape(n_classes, n)


@dataclass
class Rollout:
    tokens: tuple[torch.Tensor, ...]           # per scale (P, n, pn^2) int64
    logprobs: tuple[torch.Tensor, ...] | None  # per scale (P, n, pn^2) float32
    images: np.ndarray                         # (P, n, H, W, 3) uint8

    def pick(self, chosen: np.ndarray) -> Rollout:
        """Samples ``chosen`` (P, k) of each row."""
        idx = torch.as_tensor(chosen)

        def take(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[i, c] for i, c in enumerate(idx)])

        return Rollout(tuple(take(t) for t in self.tokens),
                       None if self.logprobs is None else tuple(take(t) for t in self.logprobs),
                       np.stack([self.images[i, c] for i, c in enumerate(chosen)]))


def _generate(var, vqvae, classes: list[int], seeds: np.ndarray, sampling: dict, logprobs: bool,
              batch: int = 128, n_scales: int | None = None, draw_rule: str = "inverse_cdf") -> Rollout:
    """Sample every (class, seed) pair of the (P, n) ``seeds`` (their first ``n_scales`` scales: a preview)."""
    from vgen.engine.scalewise import sample
    from vgen.images import to_uint8

    p, n = seeds.shape
    flat_c = [c for c in classes for _ in range(n)]
    flat_s = seeds.ravel().tolist()
    toks, lps, images = [], [], []
    for lo in range(0, len(flat_c), batch):
        r = sample(var, vqvae, flat_c[lo:lo + batch], flat_s[lo:lo + batch], return_logprobs=logprobs,
                   n_scales=n_scales, draw_rule=draw_rule, **sampling)
        toks.append(r.tokens)
        lps.append(r.logprobs)
        images.append(to_uint8(r.images))
    K = len(toks[0])

    def joined(parts):
        return tuple(torch.cat([q[si] for q in parts]).reshape(p, n, -1) for si in range(K))

    img = np.concatenate(images)
    return Rollout(joined(toks), joined(lps) if logprobs else None, img.reshape(p, n, *img.shape[1:]))


@contextlib.contextmanager
def _reference(policy: Policy):
    """The base policy: LoRA adapters switched off, or the frozen base weights swapped in."""
    if policy.lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in policy.var.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
    else:
        from vgen.solrl.recipe import _swapped

        with _swapped(policy.params, policy.ref):
            yield


def _update(cfg: SolRLVARConfig, dist, policy: Policy, opt, classes: list[int], batch: Rollout,
            adv: np.ndarray, keep: np.ndarray) -> dict:
    """``inner_epochs`` optimizer steps of the token GRPO loss on the kept samples of every process.

    Each process backpropagates its samples' share of the global mean loss; gradients are summed
    over processes in ``grad_step``, so a step equals a one-process step on the whole batch."""
    from vgen.engine.scalewise import token_logprobs
    from vgen.solrl.recipe import kept_rows
    from vgen.solrl.tokens import token_grpo_loss, token_kl
    from vgen.train.loop import grad_step

    s = policy.sampling
    outs = []
    for _ in range(cfg.inner_epochs):
        idx, n_global = kept_rows(dist, keep, policy.params, opt)
        if n_global == 0:
            return {"loss": 0.0, "kl": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "approx_kl": 0.0,
                    "trained_samples": 0}
        k = keep.shape[1]
        toks = [t.reshape(-1, t.shape[-1])[idx] for t in batch.tokens]
        old = [t.reshape(-1, t.shape[-1])[idx] for t in batch.logprobs]
        cls = [classes[i // k] for i in idx]
        a = torch.as_tensor(adv.ravel()[idx], dtype=torch.float32).clamp(-cfg.adv_max, cfg.adv_max)
        sums = torch.zeros(4)  # loss, kl, clip fraction, approx kl (weighted sums over this process's samples)
        for lo in range(0, len(idx), cfg.train_batch):
            sl = slice(lo, lo + cfg.train_batch)
            lp = token_logprobs(policy.var, policy.vqvae, cls[sl], [t[sl] for t in toks], s["cfg"], s["top_k"],
                                s["top_p"])
            out = token_grpo_loss(lp, [o[sl] for o in old], a[sl], cfg.clip, cfg.scale_norm)
            w = len(cls[sl]) / n_global
            loss = out.per_sample.mean()
            sums += torch.tensor([loss.item(), 0.0, out.clip_frac.item(), out.approx_kl.item()]) * w
            if cfg.kl_beta:
                with torch.no_grad(), _reference(policy):
                    lp_ref = token_logprobs(policy.var, policy.vqvae, cls[sl], [t[sl] for t in toks], s["cfg"],
                                            s["top_k"], s["top_p"])
                kl = token_kl(lp, lp_ref, cfg.scale_norm).mean()
                loss = loss + cfg.kl_beta * kl
                sums[1] += kl.item() * w
            (loss * w).backward()
        stepped = grad_step(dist, policy.params, opt, sums, cfg.grad_clip)
        outs.append({"loss": float(sums[0]), "kl": float(sums[1]), "clip_frac": float(sums[2]),
                     "approx_kl": float(sums[3]), **stepped, "trained_samples": n_global})
    out = dict(outs[-1])
    for key in ("loss", "kl", "grad_norm", "clip_frac", "approx_kl"):
        out[key] = float(np.mean([o[key] for o in outs]))
    if any("skipped_update" in o for o in outs):
        out["skipped_update"] = sum(o.get("skipped_update", 0) for o in outs)
    return out


def _held_out(cfg: SolRLVARConfig, policy: Policy, run_dir: Path, step: int) -> dict[str, float]:
    """GenEval-Shapes on every class x ``eval_seeds`` held-out seeds with the policy's sampling
    settings, written to eval/step-N as `vgen eval` writes it: strict accuracy (the headline) and the
    verifier's mean score (partial credit, a smoother curve)."""
    from vgen.vartrain.recipe import write_eval

    seeds = [VAL_SEED + i for i in range(cfg.eval_seeds)]
    scores = write_eval(policy.var, policy.vqvae, policy.names, run_dir, run_dir / "eval" / f"step-{step:06d}", step,
                        seeds, policy.sampling, policy.resolution)
    overall = scores["geneval_shapes"]["overall"]
    return {"eval_strict": overall["strict"]["mean"], "eval_score": overall["score"]["mean"]}


def model_card(cfg: SolRLVARConfig, policy: Policy, history: dict) -> str:
    ev = history["eval"]
    scores = (f"Held-out GenEval-Shapes strict accuracy ({len(policy.names)} classes x {cfg.eval_seeds} seeds "
              f"{VAL_SEED}..): {ev[0][1]:.1%} at iteration {ev[0][0]} -> {ev[-1][1]:.1%} at iteration {ev[-1][0]}.\n"
              if ev else "")
    return f"""# VAR model post-trained by `vgen train` (recipe solrl_var)

RL on the token policy of `{cfg.model}`: family `{cfg.family}`, reward {cfg.reward}, {cfg.candidates} explored
and {cfg.k} trained samples per class, {cfg.classes_per_step} classes per iteration, {cfg.iterations} iterations,
{"LoRA rank " + str(cfg.lora_rank) + " (merged here)" if cfg.lora_rank else "full fine-tuning"}, lr {cfg.lr},
clip {cfg.clip}, KL {cfg.kl_beta}, seed {cfg.run.seed}. Sampling: {policy.sampling}.
{scores}
```
vgen sample --model THIS_FOLDER --classes 0 5 12 --seeds 0 1 --out samples
vgen eval --model THIS_FOLDER --seeds 2000000 2000001 2000002
```
"""


def dry_run(cfg: SolRLVARConfig, processes: int = 1, fsdp: bool = False) -> str:
    n_explore = cfg.explore_classes or cfg.classes_per_step
    n = cfg.k if cfg.family == "k_in_k" else cfg.candidates
    regen = cfg.classes_per_step * cfg.k if cfg.family == "sol_rl" else 0
    return (f"recipe solrl_var: family {cfg.family} on {cfg.model}; per iteration {n_explore} classes x {n} samples "
            f"explored ({cfg.explore_backend if cfg.family in ('sol_rl', 'naive_quant') else 'train precision'}), "
            f"{regen} regenerated, {cfg.classes_per_step * cfg.k} trained on "
            f"({-(-cfg.classes_per_step // processes)} classes per process); {cfg.iterations} iterations")


# ---------------------------------------------------------------- the recipe


def run(cfg: SolRLVARConfig, run_dir: Path) -> int:
    from tqdm.auto import tqdm

    from vgen.config import to_dict
    from vgen.models.var.folder import write_var_files
    from vgen.quant.explore import merged_copy, refresh
    from vgen.solrl.recipe import (
        build_reward,
        fill_selection,
        finite_advantages,
        gather_rows,
        informative,
        ranking_stats,
        reward_stats,
        sample_grid,
        score_groups,
        take_rows,
    )
    from vgen.solrl.selection import select
    from vgen.train.checkpoint import load_state, save_checkpoint
    from vgen.train.dist import Dist
    from vgen.train.logging import MetricLog
    from vgen.train.loop import due, resume_from, rng_state, set_rng_state

    dist = Dist()
    torch.manual_seed(cfg.run.seed)
    config = to_dict(cfg)
    ckpt = resume_from(cfg.resume, run_dir, config)
    state = load_state(ckpt) if ckpt is not None else None
    reward = build_reward(cfg.reward, cfg.reward_paths)
    policy = _setup(cfg, dist, ckpt, state)
    explore = _explore_copy(policy, cfg.explore_backend) if cfg.family in ("sol_rl", "naive_quant") else None
    opt = torch.optim.AdamW(policy.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, {"eval": []}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state)
        start, history = int(state["step"]), json.loads(state["history"])
        if dist.main:
            print(f"resumed from {ckpt} at iteration {start}", flush=True)

    def write_model(folder: Path, stamp: dict) -> str:  # every checkpoint is a loadable VAR model folder
        write_var_files(folder, policy.vqvae, merged_copy(policy.var), policy.names, policy.resolution,
                        policy.sampling, card=model_card(cfg, policy, history), metadata=stamp)
        return "var"

    log = MetricLog(run_dir, start) if dist.main else None
    n_cand = cfg.k if cfg.family == "k_in_k" else cfg.candidates
    n_explore = cfg.explore_classes or cfg.classes_per_step
    bar = tqdm(total=cfg.iterations, initial=start, desc=cfg.family, unit="it",
               disable=not (cfg.progress and dist.main))
    if start == 0 and dist.main and cfg.eval_seeds:
        scores = _held_out(cfg, policy, run_dir, 0)
        history["eval"].append([0, scores["eval_strict"]])
        log.write(0, scores)
    dist.barrier()
    for step in range(start + 1, cfg.iterations + 1):
        times, m = {}, {}
        all_classes = _classes(cfg, len(policy.names), step, n_explore)
        rows = dist.shard(list(range(n_explore)))  # global class rows of this process
        classes = [all_classes[i] for i in rows]
        all_seeds = _seeds(cfg, step, n_explore, n_cand)
        seeds = all_seeds[rows]

        # 1-2. explore (the explore copy), or generate in train precision for the families without one
        t = time.perf_counter()
        if cfg.family == "sol_rl":
            ex = _generate(*explore, classes, seeds, policy.sampling, logprobs=False, draw_rule=cfg.draw)
        else:
            ex = _generate(*(explore or (policy.var, policy.vqvae)), classes, seeds, policy.sampling, logprobs=True,
                           draw_rule=cfg.draw)
        times["explore"] = time.perf_counter() - t
        t = time.perf_counter()
        ex_r = score_groups(reward, ex.images, [policy.names[c] for c in classes])
        times["score"] = time.perf_counter() - t

        # 3. dynamic sampling, then k per class (each class row's own generator: the same in any process)
        t = time.perf_counter()
        if n_explore > cfg.classes_per_step:
            explored = gather_rows(dist, ex_r)
            kept = informative(explored, cfg.classes_per_step)
            m["explore_flat_classes"] = int(sum(np.nanmax(x) == np.nanmin(x) if np.isfinite(x).any() else 1
                                                for x in explored))
            rows = dist.shard(list(range(len(kept))))
            mine = kept[rows]
            ex_r = explored[mine]
            if cfg.family != "sol_rl":  # these train on the explored samples themselves
                picked = take_rows(dist, (ex.tokens, ex.logprobs, ex.images), list(mine))
                ex = Rollout(*picked)
            classes, seeds = [all_classes[i] for i in mine], all_seeds[mine]
        chosen = np.stack([fill_selection(select(r, cfg.k, cfg.select, np.random.default_rng([cfg.run.seed, step, g])),
                                          cfg.k, len(r)) for r, g in zip(ex_r, rows)])
        sel_seeds = np.take_along_axis(seeds, chosen, 1)
        times["select"] = time.perf_counter() - t

        # 4. regenerate the chosen seeds with the policy, recording token log-probs
        t = time.perf_counter()
        if cfg.family == "sol_rl":
            batch = _generate(policy.var, policy.vqvae, classes, sel_seeds, policy.sampling, logprobs=True,
                              draw_rule=cfg.draw)
            r = score_groups(reward, batch.images, [policy.names[c] for c in classes])
        else:
            batch = ex.pick(chosen)
            r = np.take_along_axis(ex_r, chosen, 1)
        times["regenerate"] = time.perf_counter() - t

        # 5. advantages over the whole batch; non-finite rewards dropped
        all_r, all_ex = gather_rows(dist, r), gather_rows(dist, ex_r)
        valid, adv = finite_advantages(all_r, cfg.advantage, step, dist.main)

        # 6. update
        t = time.perf_counter()
        m.update(_update(cfg, dist, policy, opt, classes, batch, adv.values[rows], adv.contributes[rows]))
        times["update"] = time.perf_counter() - t

        # 7. explore copy, evaluation, checkpoint, logs
        if explore is not None:
            times["refresh"] = refresh(explore[0], policy.var)
        scores = {}
        if dist.main and cfg.eval_seeds and due(cfg.eval_every, step, cfg.iterations):
            scores = _held_out(cfg, policy, run_dir, step)
            history["eval"].append([step, scores["eval_strict"]])
        all_chosen = gather_rows(dist, chosen) if cfg.family == "sol_rl" else None
        if dist.main:
            m.update({**reward_stats(all_ex, all_r, valid, adv),
                      "images_per_s": dist.world * (ex_r.size + (r.size if cfg.family == "sol_rl" else 0))
                      / max(times["explore"] + times["regenerate"], 1e-9)})
            if all_chosen is not None:
                m.update(ranking_stats(np.take_along_axis(all_ex, all_chosen, 1), all_r, cfg.k))
            m.update({f"time_{k}": v for k, v in times.items()})
            m.update(scores)
            if due(cfg.sample_every, step, cfg.iterations):
                sample_grid(run_dir, step, batch.images, [policy.names[c] for c in classes])
            log.write(step, m)
            if due(cfg.checkpoint_every, step, cfg.iterations):
                st = {"step": step, "optimizer": opt.state_dict(), "history": json.dumps(history), **rng_state()}
                if policy.lora:
                    st["lora"] = [p.detach().clone() for p in policy.params]
                save_checkpoint(run_dir, step, None, st, config, cfg.model, writer=write_model)
            bar.set_postfix(reward=f"{m['reward_mean']:.3f}", loss=f"{m['loss']:.4f}")
        dist.barrier()
        bar.update(1)
    bar.close()
    if not dist.main:
        return 0
    log.close()
    ev = history["eval"]
    if ev:
        print(f"held-out GenEval-Shapes strict accuracy ({len(policy.names)} classes x {cfg.eval_seeds} seeds): "
              f"{ev[0][1]:.1%} at iteration {ev[0][0]} -> {ev[-1][1]:.1%} at iteration {ev[-1][0]} "
              f"({100 * (ev[-1][1] - ev[0][1]):+.1f} points)", flush=True)
    return 0

