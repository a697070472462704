"""`vgen train` recipe ``sar``: SAR post-training of a pretrained VAR / FlexVAR.

The loop is the VAR family's (``vgen.vartrain.recipe.train``: batches and label drops from
(run.seed, step), FlexVAR's random scale list per step, gradient sum over processes, held-out
loss, evaluation reports, sample grids, atomic checkpoints that are model folders, exact
resume); SAR changes what one micro-batch computes (:func:`vgen.sar.losses.sar_loss`):

1. teacher forcing over all scales on the ground-truth tokens, token CE;
2. the TF logits turned into tokens (``tokens``: argmax, or CFG sampling with SAR's ramp and a
   per-sample seed from (run.seed, step, place in the global batch));
3. student forcing on those tokens (``mode``: ``last`` as released, ``all``), the same dropped
   labels as the TF pass;
4. L = L_TF + ``sigma`` * CE(SF logits, stop-grad ``target``).

Logged per step, besides the TF figures of the ``var`` recipe (``loss`` is the total): ``tf_loss``,
``sf_loss``, per-scale ``sf_ce_scale{k}`` / ``sf_acc_scale{k}`` (``_pn{size}`` on random scale
lists) for the scales SF trains, and the seconds of the TF forward, the token pass and the SF
forward (``time_tf``, ``time_tokens``, ``time_sf``).

SAR post-trains: ``init`` (a model folder, a run, or official files) is required; ``tokenizer``
defaults to the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vgen.config import param
from vgen.vartrain.dryrun import dry_run  # noqa: F401 - `vgen train --dry-run` calls it
from vgen.vartrain.recipe import StepOut, VARTrainConfig, mean_acc, train

RECIPE = "sar"


@dataclass
class SARConfig(VARTrainConfig):
    tokenizer: str | None = param(None, help="VAR model folder or run whose frozen VQ-VAE tokenizes images "
                                  "(default: init's)")
    init: str | None = param(None, help="the pretrained VAR / FlexVAR to post-train: a model folder, a run or "
                             "official 'VAE.pth,VAR.pth' files (required)")
    sigma: float = param(0.01, ge=0, le=100, help="weight of the student-forcing loss (0: plain teacher forcing)")
    mode: Literal["last", "all"] = param("last", help="last: student forcing on the last scale only, fed the "
                                         "prediction of the one before (released); all: every scale k >= 1 fed "
                                         "the prediction of scale k-1, one forward")
    target: Literal["tf_pred", "ground_truth"] = param("tf_pred", help="SF target: the TF-predicted tokens of "
                                                       "the same scale (CSFL) or the ground truth (ablation)")
    tokens: Literal["argmax", "sample"] = param("argmax", help="how the TF logits become the self-generated "
                                                "tokens: argmax (released) or CFG sampling")
    token_cfg: float = param(1.5, ge=0, le=50, help="tokens=sample: CFG scale; scale k uses "
                             "token_cfg * 0.5 * (1 + k / (K - 1))")
    token_top_k: int = param(0, ge=0, help="tokens=sample: top-k (0: off)")
    token_top_p: float = param(0.0, ge=0, le=1, help="tokens=sample: top-p (0: off)")
    lr: float = param(1e-4, gt=0, le=1.0, help="peak AdamW learning rate")
    warmup: int = param(0, ge=0, help="linear warm-up steps (post-training continues a schedule's tail)")
    eval_every: int = param(100, ge=0, help="held-out teacher-forcing loss and an evaluation report every this "
                            "many steps (0: end only)")

    def check(self) -> None:
        from vgen.config import ConfigError

        if self.init is None:
            raise ConfigError("SAR post-trains a pretrained model: set init (a VAR / FlexVAR model folder, a run, "
                              "or official files)")
        if self.tokenizer is None:
            self.tokenizer = self.init
        super().check()


def sar_objective(cfg: SARConfig):
    from vgen.sar.losses import SARSettings, sample_seeds, sar_loss

    s = SARSettings(cfg.sigma, cfg.mode, cfg.target, cfg.tokens, cfg.token_cfg, cfg.token_top_k, cfg.token_top_p)

    def objective(var, vqvae, tokens, labels, pns, positions, step) -> StepOut:
        seeds = sample_seeds(cfg.run.seed, step, positions) if s.tokens == "sample" else None
        r = sar_loss(var, vqvae, tokens, labels, s, pns, seeds, cfg.label_smoothing, cfg.scale_weights)
        return StepOut(r.loss, {
            "loss": r.loss, "tf_loss": r.tf.loss, "sf_loss": r.sf_loss, "acc": mean_acc(var, r.tf.acc_per_scale, pns),
            "ce_scale": r.tf.ce_per_scale, "acc_scale": r.tf.acc_per_scale,
            "sf_ce_scale": r.sf_ce_per_scale, "sf_acc_scale": r.sf_acc_per_scale,
            **{f"time_{k}": v for k, v in r.seconds.items()}})
    return objective


def model_card(cfg: SARConfig, var, history: dict) -> str:
    last = history["eval"][-1] if history["eval"] else None
    scores = (f"Held-out teacher-forcing loss {last['val_loss']:.4f}, token accuracy {last['val_acc']:.1%} "
              f"(step {last['step']}).\n" if last else "")
    return f"""# {"FlexVAR" if var.flex else "VAR"} post-trained with SAR by `vgen train` (recipe sar)

Base `{cfg.init}`; depth {var.depth}, width {var.C}, scales {list(var.patch_nums)}; data `{cfg.data}`.
SAR: mode {cfg.mode}, target {cfg.target}, tokens {cfg.tokens}, sigma {cfg.sigma}; {cfg.iterations} steps,
batch {cfg.batch}, AdamW lr {cfg.lr} ({cfg.schedule}, warm-up {cfg.warmup}), seed {cfg.run.seed}.
{scores}
```
vgen sample --model THIS_FOLDER --classes 0 5 12 --seeds 0 1 --out samples
```
"""


def run(cfg: SARConfig, run_dir: Path) -> int:
    return train(cfg, run_dir, RECIPE, sar_objective(cfg), model_card)
