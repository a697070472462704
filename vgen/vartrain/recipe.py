"""`vgen train` recipe ``var``: class-conditional VAR / FlexVAR training on the shapes world.

One iteration, read top to bottom in :func:`run`:

1. batch: ``batch`` dataset indices drawn from (run.seed, step) alone, split over processes;
   class ``i % 70`` of :class:`ShapesClassDataset` (``CLASS_PROMPTS``), 64x64 images;
2. tokens from the frozen VQ-VAE of ``tokenizer`` (a VAR model folder; with ``cache_tokens``
   the whole dataset is tokenized once at start, the same tokens every time);
3. teacher forcing (:func:`tf_loss_from_tokens`): the transformer sees the ground-truth
   inputs of every scale at once under the block-causal mask; cross-entropy over all scales
   with label smoothing and optional per-scale weights; labels dropped to the null class
   at ``cond_drop_rate`` (classifier-free guidance); which samples drop is
   drawn from (run.seed, step) for the global batch (:func:`label_drops`), so it does not
   depend on how the batch is split over processes or micro-batches;
4. gradients summed over processes (each process weights its share by its size over the
   global batch, so the sum is the global mean), clipped, one AdamW step; the learning rate
   is set each step from the step number (warm-up then cosine / linear decay);
5. metrics to ``metrics.jsonl`` / TensorBoard; held-out loss, sample grid (scored by the
   verifier) and an atomic checkpoint every so many steps; at the end, a model folder in
   ``RUN/model`` that `vgen sample` loads.

Every random choice comes from (run.seed, step) or from the torch generator, whose state is
checkpointed, so ``resume: auto`` continues exactly as an uninterrupted run on CPU.

The loop itself is :func:`train`, which takes the micro-batch objective: this recipe passes
teacher forcing (:func:`tf_objective`), SAR its own (``vgen.sar.recipe``); an objective returns a
:class:`StepOut` (the loss and the figures to log, and optionally a guard loss whose gradient is
kept apart and which the update must not oppose: VARiant's ``project``). The other pieces are plain functions:
:func:`token_ce`, :func:`tf_loss_from_tokens`, :func:`tf_loss`, :func:`tokenize`, :func:`lr_at`,
:func:`make_optimizer`, :func:`sample_grid`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vgen.config import param
from vgen.errors import UserError
from vgen.run import RunConfig
from vgen.train.loop import RESUME_HELP, grad_step, lr_at
from vgen.vartrain.data import Data, batch_indices, flex_scale_list, label_drops, open_data
from vgen.vartrain.dryrun import dry_run  # noqa: F401 - `vgen train --dry-run` calls it
from vgen.vartrain.losses import tf_loss_from_tokens, token_weights

RECIPE = "var"
SPREAD_CLASSES = [0, 3, 5, 11, 19, 22, 33, 44, 47, 56, 58, 69]  # one or two of each category


@dataclass
class VARTrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    tokenizer: str = param("assets/var-tiny-shapes", help="VAR model folder, run or official 'VAE.pth,VAR.pth' "
                           "whose frozen VQ-VAE tokenizes images (a tokenizer-only folder is fine); FlexVAR when "
                           "its VQ-VAE is non-residual")
    init: str | None = param(None, help="VAR model folder, run or official files to start the transformer from; "
                             "its architecture is used and depth / width / heads / mlp_ratio are ignored "
                             "(default: random init)")
    data: str = param("shapes", help="shapes (the built-in world's 70 class prompts) or the path of an "
                      "ImageNet-layout folder (one subfolder per class, class ids by sorted name)")
    flip: bool = param(False, help="image folder: random horizontal flips, drawn from (run.seed, step, index)")
    skip_bad_images: bool = param(False, help="image folder: skip unreadable images (counted) instead of stopping")
    val_data: str | None = param(None, help="image folder of held-out images (default: every 20th image of "
                                 "data, kept out of training)")
    depth: int = param(6, ge=1, le=64, help="transformer blocks")
    width: int = param(256, ge=8, le=8192, help="transformer width")
    heads: int = param(4, ge=1, le=128, help="attention heads (must divide width)")
    mlp_ratio: float = param(4.0, gt=0, le=16, help="FFN hidden width / width (round(width * mlp_ratio) >= 1)")
    cond_drop_rate: float = param(0.1, ge=0, le=1, help="share of labels dropped to the null class (CFG)")
    drop_path: float = param(0.0, ge=0, lt=1, help="stochastic depth rate of the last block")
    data_size: int = param(20_000, ge=1, help="ShapesClassDataset items (distinct scenes, classes round robin)")
    data_seed: int = param(0, ge=0, help="dataset seed (the held-out set uses data_seed + 1)")
    resolution: int = param(64, ge=8, le=1024, help="image side, pixels (the tokenizer's)")
    cache_tokens: bool = param(True, help="tokenize the whole dataset once at start instead of every batch")
    batch: int = param(64, ge=1, le=100_000, help="global batch (all processes)")
    micro_batch: int | None = param(None, ge=1, help="samples per forward/backward (gradient accumulation)")
    lr: float = param(1e-3, gt=0, le=1.0, help="peak AdamW learning rate")
    min_lr_ratio: float = param(0.05, ge=0, le=1, help="final lr / peak lr")
    warmup: int = param(100, ge=0, help="linear warm-up steps; more than iterations is accepted (a short run of a "
                        "long recipe's settings): the lr then rises for the whole run, to lr * iterations / warmup")
    schedule: Literal["cosine", "linear", "constant"] = param("cosine", help="decay after warm-up")
    betas: list[float] = param(default_factory=lambda: [0.9, 0.95], ge=0, lt=1, min_len=2, max_len=2,
                               help="AdamW betas: two numbers in [0, 1)")
    weight_decay: float = param(0.05, ge=0, help="AdamW weight decay (not on biases, norms, embeddings)")
    grad_clip: float = param(2.0, gt=0, help="gradient norm clip")
    label_smoothing: float = param(0.0, ge=0, lt=1, help="cross-entropy label smoothing")
    scale_weights: list[float] | None = param(None, ge=0, min_len=1, help="per-scale loss weights, one per scale of "
                                              "the tokenizer, >= 0 with one > 0 (default: every token alike)")
    random_scales: bool | None = param(None, help="train each step on a random scale list (FlexVAR's rule, see "
                                       "flex_scale_list); default: on for a FlexVAR (non-residual) tokenizer")
    max_mid_scales: int = param(3, ge=1, le=64, help="random_scales: at most this many random middle sizes")
    bf16: bool = param(True, help="bfloat16 autocast (CUDA only; CPU always runs float32)")
    iterations: int = param(2000, ge=0, le=10_000_000, help="optimizer steps")
    log_every: int = param(0, ge=0, help="print a line every this many steps (0: never)")
    eval_every: int = param(500, ge=0, help="held-out teacher-forcing loss and an evaluation report (eval/step-N) "
                            "every this many steps (0: end only)")
    val_size: int = param(280, ge=1, help="held-out items")
    eval_seeds: int = param(1, ge=0, le=64, help="seeds per class sampled for the evaluation report (GenEval-Shapes "
                            "of every class; 0: no report)")
    eval_fid: bool = param(False, help="add FID-shapes / KID to the evaluation report")
    sample_every: int = param(500, ge=0, help="sample grid every this many steps (0: end only)")
    sample_classes: list[int] = param(default_factory=lambda: list(SPREAD_CLASSES), ge=0,
                                      help="classes of the grid")
    sample_seeds: int = param(2, ge=1, le=64, help="seeds per class in the grid")
    sample_cfg: float | None = param(None, ge=0, le=50, help="CFG of grids and of the saved model's defaults "
                                     "(default: init's, else the official 1.5)")
    sample_top_k: int | None = param(None, ge=0, help="top-k of grids and of the saved model, 0: off (default: "
                                     "init's, else off); k at or above the tokenizer's vocabulary keeps every "
                                     "token, the same as off, and is accepted (the vocabulary is known only once "
                                     "the tokenizer loads)")
    sample_top_p: float | None = param(None, ge=0, le=1, help="top-p of grids and of the saved model, 0: off "
                                       "(default: init's, else off)")
    checkpoint_every: int = param(500, ge=0, help="checkpoint every this many steps (0: only at the end)")
    save_model: bool = param(True, help="write the final tokenizer + transformer to RUN/model (a model folder)")
    resume: str = param("auto", help=RESUME_HELP)
    progress: bool = param(True, help="show a progress bar")

    def check(self) -> None:
        """Cross-field rules that need nothing but the config (the run checks the rest)."""
        from vgen.config import ConfigError, _show

        if self.init is None:  # with init, the architecture comes from the folder
            if self.width % self.heads:
                raise ConfigError(f"heads ({self.heads}) must divide width ({self.width})")
            if round(self.width * self.mlp_ratio) < 1:
                raise ConfigError(f"'mlp_ratio' = {self.mlp_ratio} gives a zero-width FFN at width {self.width} "
                                  "(round(width * mlp_ratio) must be >= 1)")
        if self.scale_weights is not None and not any(w > 0 for w in self.scale_weights):
            raise ConfigError(f"'scale_weights' must have at least one weight > 0, got {_show(self.scale_weights)}")

    @property
    def lr_decay(self) -> str:
        """The lr decay after warm-up (a recipe whose ``schedule`` means something else overrides this)."""
        return self.schedule

    @property
    def lr_scales(self) -> dict[str, float]:
        """lr multipliers by parameter-name prefix (VARiant's private offsets); none by default."""
        return {}


# ---------------------------------------------------------------- optimisation


NO_DECAY = ("pos_start", "pos_1LC", "lvl_embed", "class_emb", "scale_mul", "q_bias", "v_bias", "ada_gss",
            "private.")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   lr_scales: dict[str, float] | None = None):
    """AdamW without weight decay on biases, gains and embeddings (as the official VAR trainer).
    ``lr_scales``: parameters whose name starts with a key get their own group (no decay) at that
    multiple of the lr, which ``set_lr`` keeps."""
    decay, no_decay = [], []
    scaled = {prefix: [] for prefix in lr_scales or {}}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((k for k in scaled if name.startswith(k)), None)
        if prefix is not None:
            scaled[prefix].append(p)
        else:
            (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, "weight_decay": 0.0, "lr_scale": lr_scales[k], "lr": lr * lr_scales[k]}
               for k, ps in scaled.items() if ps]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=False, foreach=False)


# ---------------------------------------------------------------- checkpoints, samples, evaluation


def sample_grid(var, vqvae, classes: list[int], seeds: list[int], path: Path, prompts, cfg: float = 1.5,
                top_k: int = 0, top_p: float = 0.0) -> float:
    """Sample every (class, seed), save a labelled sheet (green / red: the verifier's strict verdict
    when the class names are shapes prompts) and return the strict accuracy (NaN for other names)."""
    from vgen.eval.harness import var_images
    from vgen.images import sample_sheet

    images = var_images(var, vqvae, classes, seeds, {"cfg": cfg, "top_k": top_k, "top_p": top_p})
    verdicts = sample_sheet(path, images, [f"{c}: {prompts[c]} ({s})" for c in classes for s in seeds],
                            [prompts[c] for c in classes for _ in seeds], cols=len(seeds) * 2)
    return float(np.mean([v.strict for v in verdicts])) if verdicts else float("nan")


@torch.no_grad()
def held_out(var, vqvae, data: Data, device, batch: int = 64, depth_plan=None) -> dict[str, float]:
    """Teacher-forcing CE and accuracy on the held-out items, labels kept (eval mode), along
    ``depth_plan`` (VARiant; None: the full network)."""
    from vgen.engine.scalewise import evaluating

    n, ce, acc = len(data), 0.0, 0.0
    with evaluating(var):
        for lo in range(0, n, batch):
            idx = list(range(lo, min(lo + batch, n)))
            tokens, labels = data.get(idx, device)
            r = tf_loss_from_tokens(var, vqvae, tokens, labels, depth_plan=depth_plan)
            ce += float(r.per_sample.sum())
            acc += float(r.acc_per_scale @ torch.tensor(var.lengths(), dtype=torch.float32, device=device)
                         / var.L) * len(idx)
    return {"val_loss": ce / n, "val_acc": acc / n}


def eval_report(cfg, var, vqvae, class_names: list[str], run_dir: Path, step: int, held: dict, depth_plan=None,
                where: str = "") -> dict:
    """The evaluation of step ``step`` as `vgen eval` writes it (eval/step-N/report.json, report.md,
    samples.png): every class x ``eval_seeds`` seeds with the recipe's sampling settings, plus the
    held-out teacher-forcing figures. A VARiant path (``depth_plan``) writes into the sub-folder
    ``where`` of that folder, so the step's own report stays the full network's. Returns the
    figures to log."""
    settings = {"cfg": cfg.sample_cfg, "top_k": cfg.sample_top_k, "top_p": cfg.sample_top_p}
    if depth_plan is not None:
        settings["depth_plan"] = depth_plan
    scores = write_eval(var, vqvae, class_names, run_dir, run_dir / "eval" / f"step-{step:06d}" / where, step,
                        [1_000_000 + i for i in range(cfg.eval_seeds)], settings, cfg.resolution,
                        ("geneval", "fid") if cfg.eval_fid else ("geneval",), {"held_out": held})
    out = {}
    if "geneval_shapes" in scores:
        out["eval_strict"] = scores["geneval_shapes"]["overall"]["strict"]["mean"]
    if "fid_shapes" in scores:
        out["eval_fid_shapes"] = scores["fid_shapes"]["fid_shapes"]
    return out


def write_eval(var, vqvae, class_names: list[str], run_dir: Path, out: Path, step: int, seeds: list[int],
               settings: dict, resolution: int, metrics=("geneval",), extra: dict | None = None) -> dict:
    """Sample every class x ``seeds`` with ``settings``, score, and write the report `vgen eval` writes
    into ``out``; returns the scores."""
    from vgen import __version__
    from vgen.eval.harness import evaluate_var, write_report

    classes = list(range(len(class_names)))
    scores, images, prompts = evaluate_var(var, vqvae, class_names, classes, seeds, settings, metrics)
    report = {"vgen_version": __version__, "model": str(run_dir), "kind": "var", "source": "run",
              "step": step, "classes": classes, "n_classes": len(classes), "seeds": seeds, **settings,
              "patch_nums": list(var.patch_nums), "flex": bool(var.flex), "resolution": resolution,
              "threads": torch.get_num_threads(), **(extra or {}), **scores}
    write_report(out, report, images, prompts, len(seeds))
    return scores


def with_init_sampling(cfg: VARTrainConfig) -> VARTrainConfig:
    """``cfg`` with each sampling setting it leaves unset taken from ``init``'s folder, else the official
    defaults (CFG 1.5, no top-k / top-p): a fine-tuned folder keeps its base's guidance unless the
    config says otherwise, so that base and fine-tuned model are compared at the same settings."""
    keys = [k for k in ("cfg", "top_k", "top_p") if getattr(cfg, f"sample_{k}") is None]
    if not keys:
        return cfg
    from vgen.models.load import load
    from vgen.models.var.folder import DEFAULT_SAMPLING

    given = {**DEFAULT_SAMPLING, **(load(cfg.init, weights=False).sampling if cfg.init else {})}
    return replace(cfg, **{f"sample_{k}": given[k] for k in keys})


def build_model(cfg: VARTrainConfig, vqvae, num_classes: int, device):
    """The transformer: from ``init`` (its architecture and weights) or new with the official init."""
    from vgen.models.load import load
    from vgen.models.var.folder import build_var

    if cfg.init is not None:
        var = load(cfg.init, device=device).var
        if var is None:
            raise UserError(f"init folder {cfg.init!r} holds no transformer (var.safetensors)")
        if tuple(var.patch_nums) != tuple(vqvae.patch_nums):
            raise UserError(f"init folder {cfg.init!r} has scales {list(var.patch_nums)}, the tokenizer "
                            f"{list(vqvae.patch_nums)}")
        if (var.V, var.Cvae) != (vqvae.vocab_size, vqvae.Cvae):
            raise UserError(f"init folder {cfg.init!r} has a transformer for {var.V} tokens of {var.Cvae} channels, "
                            f"the tokenizer has {vqvae.vocab_size} of {vqvae.Cvae}")
        if var.num_classes != num_classes:
            raise UserError(f"init folder {cfg.init!r} has {var.num_classes} classes, the data ({cfg.data}) has "
                            f"{num_classes}")
        if not hasattr(var, "arch"):  # official files: record the constructor arguments for saving
            var.arch = _official_arch(var)
        var.cond_drop_rate = var.arch["cond_drop_rate"] = cfg.cond_drop_rate  # a training choice, not architecture
        return var.train()
    if cfg.width % cfg.heads:
        raise UserError(f"heads ({cfg.heads}) must divide width ({cfg.width})")
    if round(cfg.width * cfg.mlp_ratio) < 1:
        raise UserError(f"mlp_ratio {cfg.mlp_ratio} gives a zero-width FFN at width {cfg.width}")
    arch = dict(vocab_size=vqvae.vocab_size, Cvae=vqvae.Cvae, num_classes=num_classes, depth=cfg.depth,
                embed_dim=cfg.width, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, cond_drop_rate=cfg.cond_drop_rate,
                drop_path_rate=cfg.drop_path, patch_nums=list(vqvae.patch_nums), flex=not vqvae.residual)
    var = build_var(arch, device)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02)
    return var.train()


def _official_arch(var) -> dict:
    """Constructor arguments of a transformer loaded from official files (the released layout)."""
    return dict(vocab_size=var.V, Cvae=var.Cvae, num_classes=var.num_classes, depth=var.depth, embed_dim=var.C,
                num_heads=var.num_heads, cond_drop_rate=var.cond_drop_rate, patch_nums=list(var.patch_nums),
                flex=var.flex)


def model_card(cfg: VARTrainConfig, var, history: dict) -> str:
    n = sum(p.numel() for p in var.parameters())
    last = history["eval"][-1] if history["eval"] else None
    scores = (f"Held-out teacher-forcing loss {last['val_loss']:.4f}, token accuracy {last['val_acc']:.1%}; "
              f"sample grid strict accuracy {last.get('sample_strict', float('nan')):.1%} (step {last['step']}).\n"
              if last else "")
    return f"""# VAR model trained by `vgen train` (recipe var)

Class-conditional {"FlexVAR" if var.flex else "VAR"}: depth {var.depth}, width {var.C}, {var.num_heads} heads,
{n / 1e6:.2f}M parameters; scales {list(var.patch_nums)} ({var.L} tokens per image); tokenizer from
`{cfg.tokenizer}`; data `{cfg.data}`. Classes are the {var.num_classes} names in config.json (`class_prompts`).

Trained {cfg.iterations} steps, batch {cfg.batch}, AdamW lr {cfg.lr} ({cfg.schedule}, warm-up {cfg.warmup}),
label smoothing {cfg.label_smoothing}, label dropout {cfg.cond_drop_rate}, seed {cfg.run.seed}.
{scores}
```
vgen sample --model THIS_FOLDER --classes 0 5 12 --seeds 0 1 --out samples
```
"""


# ---------------------------------------------------------------- the loop


@dataclass
class StepOut:
    """What a recipe's objective gives for one micro-batch: the loss to backpropagate and the figures
    to log, each a scalar or a per-scale (K,) vector (NaN entries are not logged). Figures are
    averaged over the global batch; ``time_*`` ones are seconds, summed over micro-batches."""
    loss: torch.Tensor
    figures: dict[str, torch.Tensor]
    guard: torch.Tensor | None = None  # a loss the update must not oppose (``grad_step``'s guard), or none
    guard_weight: float = 1.0          # what of the guard's gradient the update adds after the projection


def tf_objective(cfg: VARTrainConfig):
    """The ``var`` recipe's objective: teacher-forcing CE over all scales."""
    def objective(var, vqvae, tokens, labels, pns, positions, step) -> StepOut:
        r = tf_loss_from_tokens(var, vqvae, tokens, labels, cfg.label_smoothing, cfg.scale_weights, pns)
        return StepOut(r.loss, {"loss": r.loss, "acc": mean_acc(var, r.acc_per_scale, pns),
                                "ce_scale": r.ce_per_scale, "acc_scale": r.acc_per_scale})
    return objective


def set_aside(params: list[torch.Tensor], loss: torch.Tensor, acc: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Add ``loss``'s gradient to ``acc`` (one tensor per parameter; zeros when None), not to ``p.grad``."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    if acc is None:
        acc = [torch.zeros_like(p) for p in params]
    for a, g in zip(acc, grads):
        if g is not None:
            a.add_(g)
    return acc


def mean_acc(var, acc_per_scale: torch.Tensor, pns) -> torch.Tensor:
    """Token accuracy over all tokens from per-scale accuracies."""
    n = torch.tensor(var.lengths(pns), dtype=torch.float32, device=acc_per_scale.device)
    return acc_per_scale @ n / n.sum()


def step_metrics(figures: dict[str, torch.Tensor], pns, random_scales: bool) -> dict[str, float]:
    """Loggable metrics: scalars as they are, per-scale vectors as NAME{k} (NAME_pn{size} when the
    scale list changes every step), NaN entries left out."""
    out = {}
    for key, v in figures.items():
        if v.numel() == 1:
            out[key] = float(v)
            continue
        for k, x in enumerate(v.tolist()):
            if x == x:  # not NaN
                out[f"{key.replace('_scale', '_pn')}{pns[k]}" if random_scales else f"{key}{k}"] = x
    return out


def run(cfg: VARTrainConfig, run_dir: Path) -> int:
    return train(cfg, run_dir, RECIPE, tf_objective(cfg), model_card)


def train(cfg: VARTrainConfig, run_dir: Path, recipe: str, objective, card, eval_paths=None,
          sampling_extra=None, evaluate=None, build=None, prepare=None) -> int:
    """The loop every VAR-family recipe runs (see the module docstring); ``objective`` makes the
    micro-batch loss, ``card(cfg, var, history)`` the model card of checkpoints and the final folder.

    ``eval_paths(var)`` (VARiant) gives ``{suffix: depth plan}``: each held-out evaluation also runs
    along each plan, its figures logged with the suffix (``val_loss_d4``) and its report written to
    ``eval/step-N/<suffix without the underscore>``; ``sampling_extra(var)`` joins the saved folders'
    sampling defaults (e.g. the switch scale). ``evaluate(var, vqvae, step)`` (ScaleWeaver) replaces the
    held-out evaluation and the sample grid: it writes its own report and returns the figures to log.
    ``build(cfg, vqvae, num_classes, device)`` replaces :func:`build_model` (ScaleWeaver: the frozen base
    with its adapter); ``prepare(vqvae, train, val)`` sees the data once it is open (ScaleWeaver: the
    conditions of the same items)."""
    from tqdm.auto import tqdm

    from vgen.config import to_dict
    from vgen.models.load import load
    from vgen.models.var.folder import save_var_model, write_var_files
    from vgen.train.checkpoint import apply_weights, load_state, save_checkpoint
    from vgen.train.dist import Dist
    from vgen.train.logging import MetricLog
    from vgen.train.loop import due, resume_from, rng_state, set_lr, set_rng_state

    dist = Dist()
    device = dist.device
    main = dist.main
    if cfg.batch % dist.world:
        raise UserError(f"batch {cfg.batch} cannot be split evenly over {dist.world} processes")
    torch.manual_seed(cfg.run.seed)
    config = to_dict(cfg)
    ckpt = resume_from(cfg.resume, run_dir, config)  # refuses a bad resume before any work
    cfg = with_init_sampling(cfg)
    tok = load(cfg.tokenizer, device=device, tokenizer_only=True)
    vqvae = tok.vqvae
    if tok.kind != "var":
        raise UserError(f"tokenizer {cfg.tokenizer!r} is a diffusers pipeline, not a VAR model")
    vqvae.requires_grad_(False)
    if not hasattr(vqvae, "arch"):
        raise UserError(f"tokenizer {cfg.tokenizer!r}: official VQ-VAE files cannot be saved with the model folder; "
                        "convert them to a vgen VAR folder first")
    if tok.resolution != cfg.resolution:
        raise UserError(f"the tokenizer in {cfg.tokenizer!r} is for {tok.resolution}px images, "
                        f"resolution is {cfg.resolution}")
    random_scales = (not vqvae.residual) if cfg.random_scales is None else cfg.random_scales
    if random_scales and vqvae.residual:
        raise UserError("random_scales needs a FlexVAR (non-residual) tokenizer: a residual VAR has one scale list")
    if random_scales and cfg.scale_weights is not None:
        raise UserError("scale_weights cannot be used with random_scales (the scale list changes every step)")
    train, val, names = open_data(cfg, vqvae, main)
    if prepare is not None:
        prepare(vqvae, train, val)
    if any(not 0 <= c < len(names) for c in cfg.sample_classes):
        raise UserError(f"sample_classes must lie in 0..{len(names) - 1}")
    var = (build or build_model)(cfg, vqvae, len(names), device)
    var.cond_drop_rate = 0.0  # the loop drops labels itself (label_drops); var.arch keeps the rate for the folder
    params = [p for p in var.parameters() if p.requires_grad]
    opt = make_optimizer(var, cfg.lr, cfg.weight_decay, cfg.betas, cfg.lr_scales)
    token_weights(var.lengths(), cfg.scale_weights)  # refuse bad weights before any work
    sampling = {"cfg": cfg.sample_cfg, "top_k": cfg.sample_top_k, "top_p": cfg.sample_top_p,
                **(sampling_extra(var) if sampling_extra else {})}
    paths = {"": None, **(eval_paths(var) if eval_paths else {})}

    def write_model(folder: Path, stamp: dict) -> str:  # every checkpoint is a loadable VAR model folder
        write_var_files(folder, vqvae, var, names, cfg.resolution, sampling, card=card(cfg, var, history),
                        metadata=stamp)
        return "var"

    start, history = 0, {"eval": []}
    if ckpt is not None:
        apply_weights(ckpt, var)
        st = load_state(ckpt)
        opt.load_state_dict(st["optimizer"])
        set_rng_state(st)
        start, history = int(st["step"]), json.loads(st["history"])
        if main:
            print(f"resumed from {ckpt} at step {start}", flush=True)
    log = MetricLog(run_dir, start) if main else None
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    micro = cfg.micro_batch or cfg.batch
    bar = tqdm(total=cfg.iterations, initial=start, desc=recipe, unit="step", disable=not (cfg.progress and main))
    t_run = time.perf_counter()
    for step in range(start + 1, cfg.iterations + 1):
        t = time.perf_counter()
        lr = lr_at(step, cfg.lr, cfg.iterations, cfg.warmup, cfg.lr_decay, cfg.min_lr_ratio)
        set_lr(opt, lr)
        idx = dist.shard(batch_indices(cfg.run.seed, step, cfg.batch, len(train)))
        drops = dist.shard(label_drops(cfg.run.seed, step, cfg.batch, cfg.cond_drop_rate))
        positions = dist.shard(list(range(cfg.batch)))  # places in the global batch (per-sample seeds)
        pns = flex_scale_list(cfg.run.seed, step, var.patch_nums, cfg.max_mid_scales) if random_scales \
            else var.patch_nums
        sums: dict[str, torch.Tensor] = {}  # figures summed over micro-batches, weighted to global means
        guard, guard_weight = None, 1.0  # the guard's gradient, summed over micro-batches apart from p.grad
        var.train()
        for lo in range(0, len(idx), micro):
            tokens, labels = train.get(idx[lo:lo + micro], device, pns, step)
            labels = labels.masked_fill(torch.tensor(drops[lo:lo + micro], device=device), var.num_classes)
            with torch.autocast(**amp):
                out = objective(var, vqvae, tokens, labels, pns, positions[lo:lo + micro], step)
            w = len(labels) / cfg.batch
            if out.guard is not None:
                guard, guard_weight = set_aside(params, out.guard * w, guard), out.guard_weight
            if out.loss.requires_grad:  # else nothing trainable took part (ScaleWeaver: every condition dropped)
                (out.loss * w).backward()
            for k, v in out.figures.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(-1)
                sums[k] = sums.get(k, 0) + (v / dist.world if k.startswith("time_") else w * v)
        flat = torch.cat(list(sums.values()))
        stepped = grad_step(dist, params, opt, flat, cfg.grad_clip, guard, guard_weight)
        opt.zero_grad(set_to_none=True)
        figures = dict(zip(sums, flat.split([len(v) for v in sums.values()])))
        m = {**step_metrics(figures, pns, random_scales), "lr": lr, **stepped}
        if random_scales:
            m["num_scales"] = len(pns)
        m["time_step"] = time.perf_counter() - t
        m["images_per_s"] = cfg.batch / m["time_step"]
        if main:
            last = cfg.iterations
            if evaluate is not None and due(cfg.eval_every, step, last):
                ev = evaluate(var, vqvae, step)
                m.update(ev)
                history["eval"].append({"step": step, **ev})
            elif due(cfg.eval_every, step, last) and val is not None:
                ev = {}
                for suffix, plan in paths.items():
                    e = held_out(var, vqvae, val, device, depth_plan=plan)
                    if cfg.eval_seeds:
                        e.update(eval_report(cfg, var, vqvae, names, run_dir, step, dict(e), plan,
                                             suffix.lstrip("_")))
                    ev.update({k + suffix: v for k, v in e.items()})
                m.update(ev)
                history["eval"].append({"step": step, **ev})
            if evaluate is None and due(cfg.sample_every, step, last):
                m["sample_strict"] = sample_grid(var, vqvae, cfg.sample_classes, list(range(cfg.sample_seeds)),
                                                 run_dir / "samples" / f"step-{step:06d}.png", names,
                                                 cfg.sample_cfg, cfg.sample_top_k, cfg.sample_top_p)
                if history["eval"] and history["eval"][-1]["step"] == step:
                    history["eval"][-1]["sample_strict"] = m["sample_strict"]
            log.write(step, m)
            if due(cfg.checkpoint_every, step, last):
                state = {"step": step, "optimizer": opt.state_dict(), "history": json.dumps(history), **rng_state()}
                save_checkpoint(run_dir, step, None, state, config, cfg.tokenizer, writer=write_model)
            if cfg.log_every and due(cfg.log_every, step, last):
                rate = (step - start) / (time.perf_counter() - t_run)
                print(f"step {step}/{cfg.iterations} loss {m['loss']:.4f} acc {m['acc']:.3f} lr {lr:.2e} "
                      f"{rate * cfg.batch:.1f} img/s eta {(cfg.iterations - step) / rate / 60:.1f} min"
                      + (f" val_loss {m['val_loss']:.4f}" if "val_loss" in m else "")
                      + (f" sample_strict {m['sample_strict']:.1%}" if "sample_strict" in m else ""), flush=True)
            bar.set_postfix(loss=f"{m['loss']:.4f}")
        dist.barrier()
        bar.update(1)
    bar.close()
    if not main:
        return 0
    log.close()
    if cfg.save_model:
        out = save_var_model(run_dir / "model", vqvae, var.eval(), names, cfg.resolution, sampling,
                             card=card(cfg, var, history))
        print(f"model folder: {out}", flush=True)
    if history["eval"]:
        e = history["eval"][-1]
        print(f"held-out teacher-forcing loss {e['val_loss']:.4f} (token accuracy {e['val_acc']:.1%}) at step "
              f"{e['step']}", flush=True)
    return 0
