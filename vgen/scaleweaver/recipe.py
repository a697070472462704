"""`vgen train` recipe ``scaleweaver``: spatial control of a frozen VAR / FlexVAR by parameter-efficient training.

The base (``init``) stays frozen; :func:`vgen.scaleweaver.adapter.attach_control` adds the trainable
parts of ``mode``: ``reference`` (ScaleWeaver's Reference Attention: LoRA on the condition branch
of the first ``blocks`` blocks + zero-initialised projections), ``joint`` (the same with MM attention:
the condition also attends to the image) or ``controlnet`` (a trainable copy of the first blocks).
So the three differ only in how the condition enters; data, steps, lr and seeds are shared.

One iteration (the VAR family's loop, ``vgen.vartrain.recipe.train``):

1. a batch of shapes-world scenes (class ``i % 70``) with their condition maps (``control``: the
   scene's exact ``edges`` or instance ``mask``, drawn as ink on the world's background), or of an
   image folder (``data``) with the condition files at the same paths in ``control_data``; the
   conditions are tokenized once at start by the frozen VQ-VAE (:class:`ControlData`);
2. label dropout (``cond_drop_rate``) and, independently, condition dropout (``control_drop``), both
   drawn from (run.seed, step) for the global batch: a dropped condition contributes exactly zero,
   so the model also learns the unconditioned rows classifier-free guidance needs;
3. teacher forcing under the control, CE over every scale, one AdamW step on the adapter only;
4. every ``eval_every`` steps: the held-out teacher-forcing loss under the control and
   ``eval_items`` held-out items sampled under their own conditions and scored (edge F1, mask IoU;
   on the shapes world also GenEval-Shapes strict, in an image folder also the real images' own
   scores), a grid condition | sample in ``eval/step-N/``.

The saved model folder is the base plus its adapter (``config.json`` records the control), so
``vgen sample --model RUN/model --control FILE`` and ``vgen eval --metrics control`` load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vgen.config import param
from vgen.errors import UserError
from vgen.vartrain.dryrun import dry_run  # noqa: F401 - `vgen train --dry-run` calls it
from vgen.vartrain.recipe import StepOut, VARTrainConfig, mean_acc, train

RECIPE = "scaleweaver"


@dataclass
class ScaleWeaverConfig(VARTrainConfig):
    tokenizer: str | None = param(None, help="VAR model folder whose frozen VQ-VAE tokenizes images and conditions "
                                  "(default: init's)")
    init: str | None = param(None, help="the pretrained VAR / FlexVAR model folder or run to control (required)")
    mode: Literal["reference", "joint", "controlnet"] = param("reference", help="how the condition enters: "
                                                              "ScaleWeaver's reference attention, joint (MM) "
                                                              "attention, or a ControlNet-style branch")
    control: Literal["edges", "mask"] = param("edges", help="the condition map of each scene (shapes world; also "
                                              "recorded as the kind of an image folder's conditions)")
    control_data: str | None = param(None, help="image-folder mode: a folder with data's CLASS/IMAGE layout holding "
                                     "each image's condition at the same relative path (cropped and resized as "
                                     "the image)")
    blocks: int | None = param(None, ge=1, help="inject into the first this many blocks (default: half the depth, "
                               "as ScaleWeaver's 16 of 32)")
    lora_rank: int = param(8, ge=1, le=1024, help="reference / joint: LoRA rank of the condition branch")
    ref_scales: Literal["same", "causal"] = param("same", help="image queries attend to the condition of their own "
                                                  "scale only, or of every scale up to theirs")
    pos_bias: bool = param(False, help="reference / joint: a learnable bias per head on the condition keys at and "
                           "around each query's own position (vgen's option; VAR has no relative position signal)")
    control_drop: float = param(0.1, ge=0, le=1, help="share of samples trained without their condition (CFG)")
    guide_control: bool = param(True, help="sampling: the unconditional CFG rows also drop the condition")
    sample_cfg_control: float | None = param(None, ge=0, le=50, help="sampling: a guidance scale of the condition's "
                                             "own (multi-modal CFG; default: sample_cfg on class and condition "
                                             "together, or 0 without guide_control)")
    eval_items: int = param(140, ge=0, help="held-out scenes sampled under their condition at each evaluation")
    control_tol: int = param(1, ge=0, le=8, help="edge F1 tolerance, pixels")
    lr: float = param(5e-4, gt=0, le=1.0, help="peak AdamW learning rate")
    warmup: int = param(20, ge=0, help="linear warm-up steps")
    eval_every: int = param(100, ge=0, help="held-out control evaluation every this many steps (0: end only)")
    sample_cfg: float = param(2.0, ge=0, le=50, help="CFG of evaluations and of the saved model's defaults")
    sample_top_k: int = param(40, ge=0, help="top-k of evaluations and of the saved model (0: off)")
    sample_top_p: float = param(0.0, ge=0, le=1, help="top-p of evaluations and of the saved model (0: off)")

    def check(self) -> None:
        from vgen.config import ConfigError

        if self.init is None:
            raise ConfigError("ScaleWeaver trains a control for a pretrained model: set init (a VAR model folder "
                              "or run)")
        if self.tokenizer is None:
            self.tokenizer = self.init
        if self.data != "shapes" and self.control_data is None:
            raise ConfigError("an image folder (data) needs control_data: a folder of condition images at the same "
                              "CLASS/IMAGE paths")
        if self.pos_bias and self.mode == "controlnet":
            raise ConfigError("pos_bias biases the attention of image queries over condition keys: mode reference or "
                              "joint, not controlnet")
        if self.data == "shapes" and self.control_data is not None:
            raise ConfigError("control_data pairs an image folder (data); the shapes world draws its own conditions")
        super().check()


# ---------------------------------------------------------------- data


class ControlData:
    """The condition latent of every item of a VAR-family ``Data`` (the loop's training or held-out
    items, in its order), tokenized once: the world scene's exact map, drawn as ink on the
    background, or (``folder``) the file at the image's own relative path there, cropped and resized
    like the image. With flips on, both orientations are kept and each step takes the image's."""

    def __init__(self, vqvae, data, kind: str, folder: str | None = None, progress: bool = False):
        from tqdm.auto import tqdm

        from vgen.scaleweaver.adapter import condition_latent

        self.data, self.kind, self.folder = data, kind, None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise UserError(f"control_data {folder!r} is not a folder")
        parts, flipped = [], []
        for lo in tqdm(range(0, len(data), 256), desc="conditions", disable=not progress):
            imgs = torch.stack([self.image(j) for j in range(lo, min(lo + 256, len(data)))])
            parts.append(condition_latent(vqvae, imgs).cpu())
            if data.flip_seed is not None:
                flipped.append(condition_latent(vqvae, imgs.flip(-1)).cpu())
        self.latents = torch.cat(parts)
        self.flipped = torch.cat(flipped) if flipped else None

    def maps(self, j: int) -> dict:
        """The world scene's condition maps of item j (shapes data only)."""
        from vgen.world.datasets import CLASS_PROMPTS, item_seed
        from vgen.world.scene import condition_maps, sample_scene

        ds = self.data.ds
        return condition_maps(sample_scene(CLASS_PROMPTS[self.data.label(j)], item_seed(ds.seed, self.data.ids[j])),
                              ds.resolution)

    def image(self, j: int) -> torch.Tensor:
        from vgen.scaleweaver.conditions import condition_image

        if self.folder is None:
            return condition_image(self.maps(j), self.kind)
        from PIL import Image

        from vgen.data.imagefolder import center_crop_resize

        ds = self.data.ds
        rel = Path(ds.paths[self.data.ids[j]]).relative_to(ds.root)
        path = self.folder / rel
        try:
            with Image.open(path) as im:
                arr = center_crop_resize(im.convert("RGB"), ds.resolution)
        except FileNotFoundError:
            raise UserError(f"no condition image for {str(rel)!r}: expected {str(path)!r} in control_data") from None
        except OSError as e:
            raise UserError(f"cannot read condition image {str(path)!r}: {e}") from None
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def get(self, idx: list[int], step: int = 0) -> torch.Tensor:
        """Latents of items ``idx`` as the loop's ``Data.get`` shows them at ``step`` (its flips)."""
        rows = self.latents[idx]
        if self.flipped is not None:
            d = self.data
            flips = torch.tensor([d.ds.flip_for(d.ids[j], d.flip_seed, step) for j in idx])
            rows = torch.where(flips[:, None, None, None], self.flipped[idx], rows)
        return rows


def adapter_arch(cfg: ScaleWeaverConfig, depth: int) -> dict:
    """The adapter the config asks for on a base of ``depth`` blocks (attach_control's arguments)."""
    blocks = cfg.blocks or max(1, depth // 2)
    if blocks > depth:
        raise UserError(f"blocks = {blocks} but the base has {depth} blocks")
    return {"mode": cfg.mode, "blocks": blocks, "rank": cfg.lora_rank, "ref_scales": cfg.ref_scales,
            "pos_bias": cfg.pos_bias}


def guidance(cfg: ScaleWeaverConfig) -> dict:
    """The condition's guidance among the saved model's sampling defaults (vgen.scaleweaver.conditions.
    condition_guidance reads them)."""
    own = {} if cfg.sample_cfg_control is None else {"cfg_control": cfg.sample_cfg_control}
    return {"guide_control": cfg.guide_control, **own}


def drops(seed: int, step: int, batch: int, rate: float) -> np.ndarray:
    """Which samples of the global batch of ``step`` train without their condition (from (seed, step))."""
    if rate <= 0:
        return np.zeros(batch, bool)
    return np.random.default_rng([seed, step, 17]).random(batch) < rate


def control_objective(cfg: ScaleWeaverConfig, box: dict):
    """Teacher forcing under the control of each sample's own condition (dropped at ``control_drop``).
    ``box['train']`` is the training items' ControlData (made by ``prepare`` once the data is open)."""
    from vgen.scaleweaver.adapter import ControlRun
    from vgen.vartrain.data import batch_indices
    from vgen.vartrain.losses import tf_forward, token_ce

    def objective(var, vqvae, tokens, labels, pns, positions, step) -> StepOut:
        data = box["train"]
        idx = batch_indices(cfg.run.seed, step, cfg.batch, len(data.latents))  # the loop's own draw
        keep = torch.tensor(~drops(cfg.run.seed, step, cfg.batch, cfg.control_drop)[positions], dtype=torch.float32)
        dev = labels.device
        run = ControlRun(var, data.get([idx[p] for p in positions], step).to(dev), keep.to(dev), pns)
        _, logits = tf_forward(var, vqvae, tokens, labels, pns, control=run)
        r = token_ce(logits, torch.cat(tokens, 1), var.lengths(pns), cfg.label_smoothing, cfg.scale_weights)
        return StepOut(r.loss, {"loss": r.loss, "acc": mean_acc(var, r.acc_per_scale, pns),
                                "ce_scale": r.ce_per_scale, "acc_scale": r.acc_per_scale})
    return objective


# ---------------------------------------------------------------- evaluation


def write_grid(path: Path, conds: torch.Tensor, images: torch.Tensor, n: int = 12) -> None:
    """Condition | sample pairs, side by side (PNG)."""
    from PIL import Image

    conds, images = conds[:n].float().cpu(), images[:n].float().cpu()  # conditions may live on the GPU
    pairs = [torch.cat([c, i], 2) for c, i in zip(conds, images.clamp(0, 1))]
    grid = torch.cat([torch.cat(pairs[k:k + 4], 2) for k in range(0, len(pairs) - len(pairs) % 4 or 4, 4)
                      if pairs[k:k + 4]], 1) if len(pairs) >= 4 else torch.cat(pairs, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def make_evaluate(cfg: ScaleWeaverConfig, run_dir: Path, box: dict):
    """The loop's evaluation: the held-out teacher-forcing loss under each item's condition and the
    control scores of ``eval_items`` held-out items sampled under their own conditions, with a grid
    condition | sample in eval/step-N/. On the shapes world the items are scenes (data_seed + 1, never
    trained on), scored against their exact maps, with GenEval-Shapes strict; in an image folder they
    are the held-out images' condition files, scored against the files' ink (vgen.eval.control), and
    the real held-out images are scored against the same files (``*_real``): the ceiling of the
    metric on that data (the world's object test finds their edges; it fits images on a plain light
    background, and the real images' score says how well)."""
    from vgen.engine.scalewise import evaluating
    from vgen.eval.control import condition_targets, control_scores
    from vgen.eval.harness import var_pair_images
    from vgen.scaleweaver.adapter import ControlRun
    from vgen.scaleweaver.conditions import condition_guidance, scene_conditions
    from vgen.vartrain.losses import tf_forward, token_ce
    from vgen.world.datasets import CLASS_PROMPTS
    from vgen.world.verifier import scores as verifier_scores

    def evaluate(var, vqvae, step: int) -> dict:
        val, cond = box["val_data"], box["val"]
        dev, n = var.head.weight.device, len(box["val_data"])
        ce = acc = 0.0
        with evaluating(var), torch.no_grad():
            for lo in range(0, n, 64):
                ids = list(range(lo, min(lo + 64, n)))
                tokens, labels = val.get(ids, dev)
                run = ControlRun(var, cond.get(ids).to(dev), torch.ones(len(ids), device=dev), var.patch_nums)
                _, logits = tf_forward(var, vqvae, tokens, labels, var.patch_nums, control=run)
                r = token_ce(logits, torch.cat(tokens, 1), var.lengths())
                ce += float(r.per_sample.sum())
                acc += float(mean_acc(var, r.acc_per_scale, var.patch_nums)) * len(ids)
        ev = {"val_loss": ce / n, "val_acc": acc / n}
        folder = run_dir / "eval" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        if cfg.eval_items:
            k, world = min(cfg.eval_items, n), cfg.data == "shapes"
            pairs = [(val.label(j), val.ds.seed * 2**32 + val.ids[j] if world else val.ids[j]) for j in range(k)]
            if world:
                conds, maps = scene_conditions(*zip(*pairs), cfg.control, cfg.resolution)
                targets = np.stack([m["edges"] > 0 for m in maps]), np.stack([m["mask"] for m in maps])
            else:
                conds = torch.stack([cond.image(j) for j in range(k)])
                targets = condition_targets(conds, cfg.control)
            sampling = {"cfg": cfg.sample_cfg, "top_k": cfg.sample_top_k, "top_p": cfg.sample_top_p}
            with evaluating(var), torch.no_grad():
                images = var_pair_images(var, vqvae, pairs, sampling, 70, conditions=conds,
                                         cfg_control=condition_guidance(guidance(cfg), cfg.sample_cfg))
            sc = control_scores(images, *targets, cfg.control_tol)
            ev.update({"eval_edge_f1": float(sc["edge_f1"].mean()), "eval_mask_iou": float(sc["mask_iou"].mean())})
            if world:
                strict = verifier_scores(images, [CLASS_PROMPTS[c] for c, _ in pairs])[1]
                ev["eval_strict"] = float(strict.mean(dtype=np.float64))
            else:
                real = control_scores(torch.stack([val.image(j) for j in range(k)]), *targets, cfg.control_tol)
                ev.update({"eval_edge_f1_real": float(real["edge_f1"].mean()),
                           "eval_mask_iou_real": float(real["mask_iou"].mean())})
            write_grid(folder / "control.png", conds, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        from vgen.io import atomic_write_json

        atomic_write_json(folder / "report.json", {"step": step, "items": n, "tol": cfg.control_tol, **ev})
        return ev

    return evaluate


def model_card(cfg: ScaleWeaverConfig, var, history: dict) -> str:
    ad = var.control
    last = history["eval"][-1] if history["eval"] else {}
    scores = ""
    if "eval_edge_f1" in last:
        k = min(cfg.eval_items, cfg.val_size)
        scores = (f"Held-out {'scenes' if 'eval_strict' in last else 'images'} ({k}, step {last['step']}): edge F1 "
                  f"{last['eval_edge_f1']:.3f} (tolerance {cfg.control_tol} px), mask IoU {last['eval_mask_iou']:.3f}")
        scores += (f", GenEval-Shapes strict {last['eval_strict']:.1%}.\n" if "eval_strict" in last else
                   f" (the real held-out images against their own conditions: {last['eval_edge_f1_real']:.3f} / "
                   f"{last['eval_mask_iou_real']:.3f}).\n")
    return f"""# ScaleWeaver control trained by `vgen train` (recipe scaleweaver)

Base `{cfg.init}` (frozen) with a `{ad.mode}` control adapter on its first {ad.blocks} of {var.depth} blocks
({ad.trainable():,} trainable parameters; LoRA rank {ad.rank} on the condition branch for reference / joint),
condition: the scene's `{cfg.control}` drawn as ink on the world's background. Image queries attend to the
condition of {"their own scale" if ad.ref_scales == "same" else "every scale up to theirs"}{
    ", with a learned bias on the keys at and around their own position" if ad.pos is not None else ""}.

Trained {cfg.iterations} steps, batch {cfg.batch}, AdamW lr {cfg.lr}, label dropout {cfg.cond_drop_rate}, condition
dropout {cfg.control_drop}, seed {cfg.run.seed}.
{scores}
```
vgen sample --model THIS_FOLDER --classes 0 5 --control-seeds 7 8 --out samples
vgen sample --model THIS_FOLDER --classes 0 --control edges.png --out samples
```
"""


def run(cfg: ScaleWeaverConfig, run_dir: Path) -> int:
    from vgen.scaleweaver.adapter import attach_control
    from vgen.vartrain.recipe import build_model

    def build(c, vqvae, num_classes, device):  # the base, frozen, with the adapter of this mode
        var = build_model(c, vqvae, num_classes, device)
        if getattr(var, "control", None) is not None:
            raise UserError(f"init {cfg.init!r} already has a control adapter; start from its base")
        attach_control(var, **adapter_arch(cfg, var.depth))
        return var.train()

    box: dict = {}

    def prepare(vqvae, train_data, val_data):  # the conditions of the loop's own items, tokenized once
        box["train"] = ControlData(vqvae, train_data, cfg.control, cfg.control_data, cfg.progress)
        if val_data is not None:
            box["val_data"], box["val"] = val_data, ControlData(vqvae, val_data, cfg.control, cfg.control_data)

    return train(cfg, run_dir, RECIPE, control_objective(cfg, box), model_card,
                 sampling_extra=lambda var: {**guidance(cfg), "control": cfg.control},
                 evaluate=make_evaluate(cfg, run_dir, box), build=build, prepare=prepare)
