"""`vgen bench control`: what each ScaleWeaver control mode costs, side by side in one process.

For the base model and each mode of ``modes`` (reference attention, joint attention, the
ControlNet-style branch), on the same ``batch`` of world scenes (their ``kind`` maps as conditions,
``per_condition`` samples of each scene with different sample seeds, as one asks for several
variants of one edge map) with the base's own CFG / top-k / top-p:

* sampling images/s (condition tokenized, images decoded), the modes and the uncontrolled base
  timed interleaved, one call of each per round, so their ratios are fair on a noisy machine. The
  reference stream depends on the condition alone, so it runs once per distinct condition; the
  joint stream and the branch depend on the image and run for every sample;
* sampling memory: the peak bytes the KV caches and the control's own state (the reference
  keys / values, the joint stream's or the branch's caches) hold per image, from the sampler's
  accounting;
* one training step (forward, backward, AdamW) on ``train_batch`` scenes, interleaved the same way;
* training memory: on CPU, the bytes of the tensors autograd saves for the backward of one step
  (what activation memory scales with; deterministic); on CUDA, ``max_memory_allocated`` as well;
* trainable parameters of each adapter.

The adapters are made fresh on the base (``blocks`` and ``lora_rank`` as the recipe's) with
their zero parts moved off zero, unless ``models`` names trained folders (mode -> folder): speed
and memory do not depend on the values of the weights. Other names in ``models`` are benched as
well, each as its folder's adapter (say, one with pos_bias or more blocks beside the three modes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_times, publish
from vgen.config import param
from vgen.run import RunConfig

RECIPE = "bench.control"


@dataclass
class ControlBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/var-tiny-shapes", help="the base VAR model folder (no adapter)")
    modes: list[str] = param(default_factory=lambda: ["reference", "joint", "controlnet"], min_len=1, max_len=3,
                             help="control modes to compare")
    models: dict[str, str] = param(default_factory=dict, help="trained model folders by mode (default: fresh "
                                   "adapters on the base); other names are benched too, as their folder's adapter")
    blocks: int | None = param(None, ge=1, help="injected blocks of fresh adapters (default: half the depth)")
    lora_rank: int = param(8, ge=1, le=1024, help="LoRA rank of fresh reference / joint adapters")
    pos_bias: bool = param(False, help="fresh reference / joint adapters with pos_bias (the recipe's option)")
    kind: str = param("edges", help="condition map: edges or mask")
    batch: int = param(64, ge=1, le=4096, help="images per sampling call")
    per_condition: int = param(4, ge=1, le=4096, help="samples of each condition in the batch (sample seeds differ)")
    train_batch: int = param(32, ge=1, le=4096, help="scenes per training step")
    repeats: int = param(3, ge=1, le=20, help="timed repeats; the best is kept")


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (each storage counted once)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def run(cfg: ControlBenchConfig, run_dir: Path) -> int:
    from vgen.engine.scalewise import sample
    from vgen.errors import UserError
    from vgen.sample import load_var, var_settings
    from vgen.scaleweaver.adapter import MODES, ControlRun, attach_control, condition_latent
    from vgen.scaleweaver.conditions import KINDS, control_run, scene_conditions
    from vgen.vartrain.losses import tf_forward, token_ce, tokenize
    from vgen.world.datasets import ShapesClassDataset

    if bad := [m for m in cfg.modes if m not in MODES]:
        raise UserError(f"unknown control mode {bad[0]!r}; choose from {', '.join(MODES)}")
    variants = [*cfg.modes, *(n for n in cfg.models if n not in cfg.modes)]
    if cfg.kind not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    torch.manual_seed(cfg.run.seed)
    base = load_var(cfg.model)
    if getattr(base.var, "control", None) is not None:
        raise UserError(f"{cfg.model!r} already has a control adapter: give the base model")
    settings = var_settings(base.sampling, None)
    vqvae, dev = base.vqvae, base.var.head.weight.device
    blocks = cfg.blocks or max(1, base.var.depth // 2)
    models = {"base": base.var}
    for name in variants:  # a mode (fresh adapter unless models names a folder) or a named folder
        if name in cfg.models:
            var = load_var(cfg.models[name]).var
            if getattr(var, "control", None) is None or (name in MODES and var.control.mode != name):
                raise UserError(f"models[{name!r}] = {cfg.models[name]!r} is not a "
                                f"{name if name in MODES else 'ScaleWeaver'} control model")
        else:
            var = load_var(cfg.model).var
            attach_control(var, mode=name, blocks=blocks, rank=cfg.lora_rank,
                           pos_bias=cfg.pos_bias and name != "controlnet")
            g = torch.Generator().manual_seed(cfg.run.seed)
            with torch.no_grad():
                for p in var.control.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=g).to(p))
        models[name] = var.eval()

    k = cfg.per_condition
    classes, seeds = [(i // k) % 70 for i in range(cfg.batch)], list(range(cfg.batch))
    conds, _ = scene_conditions(classes, [i // k for i in range(cfg.batch)], cfg.kind, base.resolution)

    def sampler(name, stats=None):
        var = models[name]
        extra = {} if name == "base" else {"control": control_run(var, vqvae, conds, settings["cfg"])}
        return sample(var, vqvae, classes, seeds, **settings, **extra, cache_stats=stats)

    speed = best_times({n: (lambda n=n: sampler(n)) for n in models}, cfg.repeats)
    peaks = {}
    for n in models:
        stats: dict = {}
        sampler(n, stats)
        peaks[n] = stats["peak_bytes"] / cfg.batch

    ds = ShapesClassDataset(cfg.train_batch, base.resolution, 0, conditions=True)
    items = [ds[i] for i in range(cfg.train_batch)]
    images = torch.stack([it["image"] for it in items]).to(dev)
    labels = torch.tensor([it["label"] for it in items], device=dev)
    tokens = tokenize(vqvae, images)
    timgs, _ = scene_conditions([int(c) for c in labels], [ds.seed * 2**32 + i for i in range(cfg.train_batch)],
                                cfg.kind, base.resolution)
    latent = condition_latent(vqvae, timgs.to(dev))
    opts = {n: torch.optim.AdamW([p for p in models[n].control.parameters()], lr=1e-6) for n in variants}

    def step(name):
        var = models[name]
        var.train()
        run = ControlRun(var, latent, torch.ones(len(labels), device=dev), var.patch_nums)
        _, logits = tf_forward(var, vqvae, tokens, labels, var.patch_nums, control=run)
        token_ce(logits, torch.cat(tokens, 1), var.lengths()).loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        var.eval()

    train_s = best_times({n: (lambda n=n: step(n)) for n in variants}, cfg.repeats)
    rows = {}
    for n in models:
        row = {"images_per_s": cfg.batch / speed[n], "sample_vs_base": speed["base"] / speed[n],
               "peak_state_bytes_per_image": peaks[n]}
        if n != "base":
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            row |= {"train_step_s": train_s[n], "train_images_per_s": cfg.train_batch / train_s[n],
                    "train_saved_bytes": saved_bytes(lambda n=n: step(n)),
                    "trainable_params": models[n].control.trainable(), "blocks": models[n].control.blocks}
            if dev.type == "cuda":
                row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        rows[n] = row
    report = {"recipe": RECIPE, "model": cfg.model, "kind": cfg.kind, "batch": cfg.batch, "per_condition": k,
              "train_batch": cfg.train_batch, **settings, "threads": torch.get_num_threads(), "device": str(dev),
              "trained_models": cfg.models, "rows": rows}
    return publish(run_dir, report, _markdown(report))


def _markdown(r: dict) -> str:
    lines = [f"# Control cost: `{r['model']}` ({r['kind']} conditions)", "",
             f"Sampling batch {r['batch']} ({r.get('per_condition', 1)} samples per condition, CFG {r['cfg']}, top-k "
             f"{r['top_k']}), training batch {r['train_batch']}, "
             f"{r['threads']} threads on {r['device']}; speeds timed interleaved in one process.", "",
             "| variant | images/s | images/s vs base | KV + control state / image | train step | train saved-for-"
             "backward | trainable params |", "|---|---|---|---|---|---|---|"]
    for n, v in r["rows"].items():
        train = (f"{v['train_step_s']:.3f} s | {v['train_saved_bytes'] / 2**20:.1f} MiB | "
                 f"{v['trainable_params']:,}") if "train_step_s" in v else "- | - | 0"
        lines.append(f"| {n} | {v['images_per_s']:.1f} | {v['sample_vs_base']:.2f}x | "
                     f"{v['peak_state_bytes_per_image'] / 1024:.0f} KiB | {train} |")
    return "\n".join(lines) + "\n"
