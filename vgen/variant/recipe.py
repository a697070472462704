"""`vgen train` recipe ``variant``: VARiant's weight-shared supernet training of a pretrained VAR / FlexVAR.

One network serves every depth: scales before ``switch_scale`` run all D blocks, later scales the
equidistant subnet I_d of depth d (``subnet_indices``), the other blocks passing their tokens
through. Each step trains one path, the full network or one subnet from ``depths``, chosen by the
schedule from the step number (:mod:`vgen.variant.schedule`), with teacher forcing along that path
(:func:`vgen.variant.losses.variant_loss`); every step costs one forward / backward, so schedules
compare at equal steps and nearly equal compute. ``mix: loss`` (a vgen extra) reads the ratios as
loss weights instead: each step trains the full path and one subnet, f * L_full + s * L_subnet, so
the full network gets a gradient on every step of a stage with f > 0, at up to twice the compute.

Schedules:

* ``fixed``: one full:subnet ratio for the whole run (``ratio``, default 2:8);
* ``progressive`` (default): three stages, ``stage_ends`` (cumulative shares of the steps, default
  0.5, 0.75, 1) with ``stage_ratios`` (default 2:8, 1:9, 0:10). The paper moves "from joint
  optimization (full:subnet 2:8) to subnetwork optimization"; its end points are kept, the middle
  stage (half way, 1:9) and the boundaries are vgen's choice, since the stage lengths are not
  given in what vgen could read. The subnet path always runs the full network on the scales
  before the switch, so the full network's early scales keep training in the last stage.

``anchor`` (a vgen extra, off by default) adds to every subnet step an elastic pull towards the base,
weighted by the base full path's diagonal Fisher (:mod:`vgen.variant.anchor`): the subnets learn
where the full network's loss is flat and are held where it is steep.

``private`` (a vgen extra, off by default) gives each trained depth its own small parameters, offsets
to the AdaLN modulation of the blocks it runs and of the head's norm (``VAR.private``), on top of the
shared weights: the subnets then need not pull the full network's gains towards their own.

``project`` (a vgen extra, off by default, ``mix: loss`` only) is gradient surgery as NASViT does it for
a supernet's subnets (PCGrad's rule): where a step's subnet gradient points against the full path's
(negative inner product over all trainable weights, after summing the whole batch), it loses its
component along the full path's gradient, so to first order no subnet update raises the full path's
loss; the full path runs every step for its direction, a stage weight of 0 included.

The loop is the VAR family's (``vgen.vartrain.recipe.train``). Each held-out evaluation also runs
along every subnet path (``val_loss_d{d}``, ``eval_strict_d{d}``, reports in
``eval/step-N/d{d}/``), and the saved folders record ``switch_scale`` in their sampling defaults,
so ``vgen sample --model RUN/model --depth d`` switches where training did. ``init`` is required;
``tokenizer`` defaults to it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vgen.config import param
from vgen.vartrain.dryrun import dry_run  # noqa: F401 - `vgen train --dry-run` calls it
from vgen.vartrain.recipe import StepOut, VARTrainConfig, mean_acc, train

RECIPE = "variant"


@dataclass
class VariantConfig(VARTrainConfig):
    tokenizer: str | None = param(None, help="VAR model folder or run whose frozen VQ-VAE tokenizes images "
                                  "(default: init's)")
    init: str | None = param(None, help="the pretrained VAR / FlexVAR to turn into a supernet: a model folder, a "
                             "run or official 'VAE.pth,VAR.pth' files (required)")
    depths: list[int] = param(default_factory=lambda: [2], min_len=1, max_len=64, ge=2,
                              help="subnet depths trained (each 2..D-1), taken in turn by the subnet steps")
    switch_scale: int | None = param(None, ge=0, help="first scale (index into the model's scale list) that a "
                                     "subnet runs; default: the last three scales, as the paper's 7-of-10")
    schedule: Literal["progressive", "fixed"] = param("progressive", help="full:subnet ratio: fixed for the run, "
                                                      "or changing over three stages (stage_ends, stage_ratios)")
    ratio: list[float] = param(default_factory=lambda: [2.0, 8.0], min_len=2, max_len=2, ge=0,
                               help="schedule=fixed: full:subnet steps")
    stage_ends: list[float] = param(default_factory=lambda: [0.5, 0.75, 1.0], min_len=1, max_len=16, gt=0, le=1,
                                    help="schedule=progressive: cumulative share of the steps where each stage ends")
    stage_ratios: list[list[float]] = param(default_factory=lambda: [[2.0, 8.0], [1.0, 9.0], [0.0, 10.0]],
                                            min_len=1, max_len=16,
                                            help="schedule=progressive: full:subnet steps of each stage")
    mix: Literal["steps", "loss"] = param("steps", help="how a full:subnet ratio applies: 'steps' (each step "
                                          "trains one path; the ratio shares out the steps) or 'loss' (vgen extra: "
                                          "each step trains the full path and one subnet, the ratio weights their "
                                          "losses; up to two passes per step)")
    distill: float = param(0.0, ge=0, le=100, help="vgen extra: weight of KL(full || subnet) on subnet steps "
                           "(0: off, the paper's data loss only)")
    private: bool = param(False, help="vgen extra: each trained depth gets its own AdaLN offsets (d x 6 x C + 2 x C, "
                          "zero at the start, used only where its subnet runs) beside the shared weights")
    private_lr_scale: float = param(10.0, gt=0, le=1000, help="private=true: the offsets' lr as a multiple of lr "
                                    "(each depth's offsets train on its own share of the steps only, from zero)")
    anchor: float = param(0.0, ge=0, le=1e6, help="vgen extra: subnet steps add anchor x the full path's loss "
                          "increase over the base as the base's diagonal Fisher estimates it (EWC; 0: off)")
    project: bool = param(False, help="vgen extra, mix=loss only: gradient surgery (PCGrad / NASViT): the subnet's "
                          "gradient loses its component against the full path's where the two conflict; the full "
                          "path then runs every step, its stage weight 0 included, as the direction to keep")
    anchor_samples: int = param(64, ge=1, le=100_000, help="anchor > 0: training samples the base's Fisher is "
                                "averaged over (one forward / backward each, before training)")
    lr: float = param(1e-4, gt=0, le=1.0, help="peak AdamW learning rate")
    warmup: int = param(0, ge=0, help="linear warm-up steps (post-training continues a schedule's tail)")
    eval_every: int = param(100, ge=0, help="held-out loss and evaluation reports of every path every this many "
                            "steps (0: end only)")
    lr_schedule: Literal["cosine", "linear", "constant"] = param("constant", help="lr decay after warm-up (the "
                                                                 "var recipe's 'schedule'; here 'schedule' is the "
                                                                 "path schedule)")

    @property
    def lr_decay(self) -> str:
        return self.lr_schedule

    @property
    def lr_scales(self) -> dict[str, float]:
        return {"private.": self.private_lr_scale} if self.private else {}

    def check(self) -> None:
        from vgen.config import ConfigError

        if self.init is None:
            raise ConfigError("VARiant trains a pretrained model into a supernet: set init (a VAR / FlexVAR model "
                              "folder, a run, or official files)")
        if self.tokenizer is None:
            self.tokenizer = self.init
        if self.schedule == "progressive" and len(self.stage_ends) != len(self.stage_ratios):
            raise ConfigError(f"stage_ends has {len(self.stage_ends)} entries and stage_ratios "
                              f"{len(self.stage_ratios)}: one ratio per stage")
        if any(len(r) != 2 for r in self.stage_ratios):
            raise ConfigError("each of stage_ratios is a pair full:subnet, e.g. [2, 8]")
        if self.project and self.mix != "loss":
            raise ConfigError("project=true needs mix=loss: the projection sets each step's subnet gradient against "
                              "the full path's on the same micro-batch")
        if len(set(self.depths)) != len(self.depths):
            raise ConfigError(f"depths {self.depths} repeats a depth")
        self.path_schedule()  # bad ratios / ends are one line here, before any work
        super().check()

    def path_schedule(self):
        from vgen.config import ConfigError
        from vgen.errors import UserError
        from vgen.variant.schedule import Schedule

        ends, ratios = ((1.0,), (tuple(self.ratio),)) if self.schedule == "fixed" else \
            (tuple(self.stage_ends), tuple(tuple(r) for r in self.stage_ratios))
        try:
            return Schedule(tuple(self.depths), ends, ratios)
        except UserError as e:
            raise ConfigError(str(e)) from None


def switch_index(cfg: VariantConfig, var) -> int:
    """The first scale (index into the model's list) the subnets run; checks the depths too."""
    from vgen.errors import UserError
    from vgen.sample import default_switch_scale

    K = len(var.patch_nums)
    s = default_switch_scale(K) if cfg.switch_scale is None else cfg.switch_scale
    if not 0 <= s < K:
        raise UserError(f"switch_scale {s} must lie in 0..{K - 1} (the model has {K} scales)")
    if any(not 2 <= d < var.depth for d in cfg.depths):
        raise UserError(f"depths {cfg.depths} must each lie in 2..{var.depth - 1} (the model has {var.depth} blocks)")
    return s


def switch_size(cfg: VariantConfig, var) -> int:
    """Side of the first scale the subnet runs (by size, so random FlexVAR scale lists switch alike)."""
    return var.patch_nums[switch_index(cfg, var)]


def variant_objective(cfg: VariantConfig, anchored: dict | None = None):
    """The micro-batch objective; ``anchored["anchor"]`` (set by :func:`build` when ``anchor`` > 0) is the
    base's :class:`~vgen.variant.anchor.Anchor`."""
    from vgen.variant.losses import variant_loss
    from vgen.variant.schedule import joint_depth_at, loss_weights_at, path_at, plan_for

    sched = cfg.path_schedule()

    def pull(var, figures: dict, weight: float = 1.0):
        """The anchor's term of a step that trains a subnet with loss weight ``weight``."""
        pen = anchored["anchor"].penalty(var)
        figures["anchor"] = pen.detach()
        return weight * cfg.anchor * pen

    def path(var, vqvae, tokens, labels, pns, d):
        plan = plan_for(var.depth, pns, switch_size(cfg, var), d)
        return variant_loss(var, vqvae, tokens, labels, plan, pns, cfg.distill, cfg.label_smoothing,
                            cfg.scale_weights)

    def figures_of(var, r, pns, d) -> dict:
        out = {"loss": r.loss, "acc": mean_acc(var, r.tf.acc_per_scale, pns), "path_depth": float(d or var.depth),
               "ce_scale": r.tf.ce_per_scale, "acc_scale": r.tf.acc_per_scale}
        if cfg.distill and d is not None:
            out["kl"] = r.kl
        return out

    def one_path(var, vqvae, tokens, labels, pns, positions, step) -> StepOut:
        d = path_at(sched, step, cfg.iterations)
        r = path(var, vqvae, tokens, labels, pns, d)
        figures = figures_of(var, r, pns, d)
        loss = r.loss if d is None or not cfg.anchor else r.loss + pull(var, figures)
        figures["loss"] = loss.detach()
        return StepOut(loss, figures)

    def joint(var, vqvae, tokens, labels, pns, positions, step) -> StepOut:
        """Both paths on the same micro-batch. The per-scale figures and ``path_depth`` are the subnet's
        (the full path's in a stage with no subnet weight); each path's CE is logged on its own."""
        w_full, w_sub = loss_weights_at(sched, step, cfg.iterations)
        d = joint_depth_at(sched, step)
        guarded = cfg.project and w_sub > 0  # the full path's gradient is then the direction to keep
        full = path(var, vqvae, tokens, labels, pns, None) if w_full or guarded else None
        sub = path(var, vqvae, tokens, labels, pns, d) if w_sub else None
        shown, shown_d = (sub, d) if sub is not None else (full, None)
        figures = figures_of(var, shown, pns, shown_d)
        # guarded, the full path is the guard, not part of the loss: project(w_sub g_subnet) + w_full g_full
        parts = ((w_sub, sub),) if guarded else ((w_full, full), (w_sub, sub))
        loss = sum(w * r.loss for w, r in parts if r is not None)
        if sub is not None and cfg.anchor:
            loss = loss + pull(var, figures, w_sub)
        figures["loss"] = (loss + w_full * full.loss if guarded else loss).detach()
        for name, r in (("loss_full", full), ("loss_subnet", sub)):
            if r is not None:  # a path with weight 0 took no pass
                figures[name] = r.tf.loss.detach()
        return StepOut(loss, figures, full.loss if guarded else None, w_full)
    return joint if cfg.mix == "loss" else one_path


def build(cfg: VariantConfig, vqvae, num_classes: int, device, anchored: dict | None = None):
    """The base from ``init``, with private offsets for the trained depths when ``private`` asks for them;
    with ``anchor`` > 0, ``anchored["anchor"]`` becomes the base's anchor, from ``anchored["train"]``
    (before a resume puts a checkpoint's weights in, so a resumed run anchors to the same base)."""
    from vgen.vartrain.recipe import build_model

    var = build_model(cfg, vqvae, num_classes, device)
    if cfg.private:
        switch_index(cfg, var)  # the depths' range check names the setting before the model refuses them
        var.add_private_depths(cfg.depths)
        var.arch["private_depths"] = sorted(int(d) for d in var.private)  # the folder rebuilds them
    if cfg.anchor:
        anchored["anchor"] = base_anchor(cfg, var, vqvae, anchored["train"])
    return var


def base_anchor(cfg: VariantConfig, var, vqvae, train_data):
    """The anchor of ``var`` (the base) on the run's ``anchor_samples`` training items, drawn from
    (seed, step 0), the one step no training batch comes from."""
    from vgen.variant.anchor import full_path_fisher
    from vgen.vartrain.data import batch_indices

    idx = batch_indices(cfg.run.seed, 0, cfg.anchor_samples, len(train_data))
    return full_path_fisher(var, vqvae, train_data, idx, cfg.label_smoothing, cfg.scale_weights)


def eval_paths(cfg: VariantConfig):
    """Every trained subnet, evaluated along its plan at the model's own scale list."""
    from vgen.variant.schedule import plan_for

    def paths(var) -> dict:
        size = switch_size(cfg, var)
        return {f"_d{d}": plan_for(var.depth, var.patch_nums, size, d) for d in sorted(cfg.depths, reverse=True)}
    return paths


def model_card(cfg: VariantConfig, var, history: dict) -> str:
    last = history["eval"][-1] if history["eval"] else None
    rows = ""
    if last:
        rows = "\n| depth | held-out TF loss | token accuracy | strict (eval grid) |\n|---|---|---|---|\n" + "\n".join(
            f"| {d} | {last.get('val_loss' + sfx, float('nan')):.4f} | {last.get('val_acc' + sfx, float('nan')):.1%} | "
            f"{last.get('eval_strict' + sfx, float('nan')):.1%} |"
            for d, sfx in [(var.depth, "")] + [(d, f"_d{d}") for d in sorted(cfg.depths, reverse=True)])
        rows = f"\nAt step {last['step']}:\n{rows}\n"
    ratios = f"full:subnet {cfg.ratio}" if cfg.schedule == "fixed" else \
        f"stages ending at {cfg.stage_ends} of the steps with full:subnet {cfg.stage_ratios}"
    ratios += ", as loss weights on both paths every step" if cfg.mix == "loss" else ", as shares of the steps"
    ratios += "; the subnet's gradient projected off the full path's where they conflict" if cfg.project else ""
    size = switch_size(cfg, var)
    return f"""# VARiant supernet trained by `vgen train` (recipe variant)

One {"FlexVAR" if var.flex else "VAR"} that samples at every depth: scales of side >= {size} run the equidistant
subnet of the chosen depth, earlier scales all {var.depth} blocks. Base `{cfg.init}`; width {var.C}, scales
{list(var.patch_nums)}; data `{cfg.data}`. Trained depths {cfg.depths}, schedule {cfg.schedule} ({ratios}),
{cfg.iterations} steps, batch {cfg.batch}, AdamW lr {cfg.lr} ({cfg.lr_schedule}), distill {cfg.distill},
anchor {cfg.anchor}{f" (Fisher of {cfg.anchor_samples} samples)" if cfg.anchor else ""},
{"private AdaLN offsets per depth" if cfg.private else "pure weight sharing"}, seed {cfg.run.seed}.
{rows}
```
vgen sample --model THIS_FOLDER --classes 0 5 12 --seeds 0 1 --depth {min(cfg.depths)} --out samples
vgen eval --model THIS_FOLDER --seeds 0-9 --depth {min(cfg.depths)}
```
"""


def run(cfg: VariantConfig, run_dir: Path) -> int:
    anchored: dict = {}  # the training data, then the base's anchor (build -> objective)

    def prepare(vqvae, train_data, val_data):
        anchored["train"] = train_data

    return train(cfg, run_dir, RECIPE, variant_objective(cfg, anchored), model_card, eval_paths(cfg),
                 lambda var: {"switch_scale": switch_index(cfg, var)},
                 build=functools.partial(build, anchored=anchored), prepare=prepare)
