"""`vgen bench sar`: a VAR / FlexVAR model's exposure-bias gap per scale, and what a SAR step costs.

Exposure bias: per-scale token CE and accuracy of the model's logits for the ground-truth tokens
of held-out images (eval mode, labels kept), under

* ``gt``: ground-truth context (teacher forcing, what training sees);
* ``own_argmax`` / ``own_sample``: the model's own context, each scale k >= 1 fed the input built
  from the model's predictions for the scales before it (argmax, or a CFG draw with SAR's ramp and
  the model's top-k / top-p, one seed per image), each prediction made under ground-truth
  context: the stagger-scale context SAR trains on (``all`` mode), one forward, no free-running
  rollout (whose context would drift from the image the targets come from).

The gap is own - gt per scale (scale 0 has no context: gap 0). Held-out images: the shapes world's
validation scenes (seed ``data_seed + 1``, as the training recipes hold out), or every 20th image
of an image folder.

Cost: one optimiser-free training step (forward + backward, train mode) of teacher forcing alone,
SAR ``last`` and SAR ``all`` (argmax tokens) on the same batch, interleaved in this process;
reported as seconds and as ratios to teacher forcing.

Writes report.json, report.md and gap.png (CE per scale under each context).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgen.bench.timing import best_times, publish
from vgen.config import param
from vgen.errors import UserError
from vgen.run import RunConfig

RECIPE = "bench.sar"


@dataclass
class SARBenchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = param("assets/flexvar-tiny-shapes", help="VAR / FlexVAR model folder, run or official files")
    data: str = param("shapes", help="shapes (the world's held-out scenes) or an image folder (every 20th image)")
    data_seed: int = param(0, ge=0, help="the training data seed; shapes holds out scenes of data_seed + 1")
    val_size: int = param(280, ge=1, le=100_000, help="held-out images")
    batch: int = param(56, ge=1, le=4096, help="images per forward")
    cfg: float | None = param(None, ge=0, le=50, help="own_sample: CFG scale (default: the model's)")
    time_batch: int = param(16, ge=1, le=4096, help="images in the timed training step")
    repeats: int = param(3, ge=1, le=20, help="timed repeats; the best is kept")


@torch.no_grad()
def exposure_gap(var, vqvae, data, settings: dict, batch: int, seed: int) -> dict:
    """Per-scale CE / accuracy of the ground-truth tokens under gt and own contexts (see the docstring)."""
    from vgen.engine.scalewise import evaluating, teacher_forcing_inputs
    from vgen.sar.losses import SARSettings, predicted_tokens, sample_seeds
    from vgen.vartrain.losses import token_ce

    pns, K = var.patch_nums, len(var.patch_nums)
    lengths = var.lengths()
    kinds = {"gt": None, "own_argmax": SARSettings(tokens="argmax"),
             "own_sample": SARSettings(tokens="sample", cfg=settings["cfg"], top_k=settings["top_k"],
                                       top_p=settings["top_p"])}
    ce = {k: torch.zeros(K, dtype=torch.float64) for k in kinds}
    hit = {k: torch.zeros(K, dtype=torch.float64) for k in kinds}
    with evaluating(var, vqvae):
        for lo in range(0, len(data), batch):
            idx = list(range(lo, min(lo + batch, len(data))))
            tokens, labels = data.get(idx, var.class_emb.weight.device)
            target = torch.cat(tokens, 1)
            inputs = teacher_forcing_inputs(vqvae, tokens, pns)
            tf = var(labels, inputs, patch_nums=pns)
            for kind, s in kinds.items():
                if s is None:
                    logits = tf
                else:
                    pred = predicted_tokens(var, tf, labels, inputs, pns, s, sample_seeds(seed, 0, idx))
                    logits = var(labels, teacher_forcing_inputs(vqvae, pred, pns), patch_nums=pns)
                r = token_ce(logits, target, lengths)  # per-scale means over this batch
                ce[kind] += r.ce_per_scale.double().cpu() * len(idx)
                hit[kind] += r.acc_per_scale.double().cpu() * len(idx)
    n = len(data)
    out = {k: {"ce": (ce[k] / n).tolist(), "acc": (hit[k] / n).tolist()} for k in kinds}
    for k in ("own_argmax", "own_sample"):
        out[k]["ce_gap"] = [a - b for a, b in zip(out[k]["ce"], out["gt"]["ce"])]
        out[k]["acc_gap"] = [a - b for a, b in zip(out[k]["acc"], out["gt"]["acc"])]
    return out


def step_costs(var, vqvae, data, n: int, repeats: int) -> dict:
    """Seconds of one training step's forward + backward: teacher forcing, SAR last, SAR all."""
    from vgen.sar.losses import SARSettings, sar_loss
    from vgen.vartrain.losses import tf_loss_from_tokens

    tokens, labels = data.get(list(range(min(n, len(data)))), var.class_emb.weight.device)
    var.train()
    drop, var.cond_drop_rate = var.cond_drop_rate, 0.0

    def step(fn):
        def go():
            var.zero_grad(set_to_none=True)
            fn().backward()
        return go

    try:
        t = best_times({"tf": step(lambda: tf_loss_from_tokens(var, vqvae, tokens, labels).loss),
                        "sar_last": step(lambda: sar_loss(var, vqvae, tokens, labels, SARSettings(mode="last")).loss),
                        "sar_all": step(lambda: sar_loss(var, vqvae, tokens, labels, SARSettings(mode="all")).loss)},
                       repeats)
    finally:
        var.cond_drop_rate = drop
        var.zero_grad(set_to_none=True)
        var.eval()
    return {"seconds": t, "sar_last_vs_tf": t["sar_last"] / t["tf"], "sar_all_vs_tf": t["sar_all"] / t["tf"],
            "images": len(labels)}


def run(cfg: SARBenchConfig, run_dir: Path) -> int:
    from vgen.data import open_class_dataset
    from vgen.models.load import load
    from vgen.sample import var_settings
    from vgen.vartrain.data import Data

    torch.manual_seed(cfg.run.seed)
    m = load(cfg.model)
    if m.kind != "var" or m.var is None:
        raise UserError(f"{cfg.model!r} is not a VAR / FlexVAR model (with a transformer)")
    var, vqvae = m.var.eval(), m.vqvae.eval()
    var.requires_grad_(True)
    vqvae.requires_grad_(False)
    if cfg.data == "shapes":
        data = Data(vqvae, open_class_dataset("shapes", m.resolution, cfg.val_size, cfg.data_seed + 1), cache=False)
    else:
        ds = open_class_dataset(cfg.data, m.resolution, cfg.val_size, 0)
        data = Data(vqvae, ds, cache=False, ids=[i for i in range(len(ds)) if not i % 20][:cfg.val_size])
        if not len(data):
            raise UserError(f"{cfg.data!r} holds no held-out image (every 20th)")
    if len(m.classes or []) != var.num_classes:
        raise UserError(f"{cfg.model!r} has {var.num_classes} classes, its names list {len(m.classes or [])}")
    settings = var_settings(m.sampling, cfg.cfg)
    gap = exposure_gap(var, vqvae, data, settings, cfg.batch, cfg.run.seed)
    costs = step_costs(var, vqvae, data, cfg.time_batch, cfg.repeats)
    report = {"recipe": RECIPE, "model": cfg.model, "data": cfg.data, "images": len(data), **settings,
              "patch_nums": list(var.patch_nums), "flex": bool(var.flex), "threads": torch.get_num_threads(),
              "exposure": gap, "cost": costs}
    _plot(report, run_dir / "gap.png")
    return publish(run_dir, report, _markdown(report))


def _markdown(r: dict) -> str:
    e, c = r["exposure"], r["cost"]
    lines = [f"# Exposure bias and SAR cost: {r['model']}", "",
             f"{r['images']} held-out images ({r['data']}), scales {r['patch_nums']}; own_sample: CFG {r['cfg']} "
             f"(SAR's ramp), top-k {r['top_k']}, top-p {r['top_p']}", "",
             "| scale | size | CE gt | CE own argmax | gap | CE own sample | gap | acc gt | acc own argmax | "
             "acc own sample |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k, pn in enumerate(r["patch_nums"]):
        lines.append(f"| {k} | {pn} | {e['gt']['ce'][k]:.3f} | {e['own_argmax']['ce'][k]:.3f} | "
                     f"{e['own_argmax']['ce_gap'][k]:+.3f} | {e['own_sample']['ce'][k]:.3f} | "
                     f"{e['own_sample']['ce_gap'][k]:+.3f} | {e['gt']['acc'][k]:.1%} | "
                     f"{e['own_argmax']['acc'][k]:.1%} | {e['own_sample']['acc'][k]:.1%} |")
    s = c["seconds"]
    lines += ["", f"- training step (forward + backward, {c['images']} images): TF {s['tf'] * 1e3:.1f} ms, "
              f"SAR last {s['sar_last'] * 1e3:.1f} ms ({c['sar_last_vs_tf']:.2f}x), SAR all "
              f"{s['sar_all'] * 1e3:.1f} ms ({c['sar_all_vs_tf']:.2f}x), interleaved, best of the repeats"]
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    """CE per scale under each context (gap.png); skipped with a note when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed (pip install 'vgen[plots]'): no gap.png", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgen.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(r["patch_nums"])))
    for kind, style in (("gt", "o-"), ("own_argmax", "s--"), ("own_sample", "^:")):
        ax.plot(x, r["exposure"][kind]["ce"], style, label=kind)
    ax.set(xticks=x, xticklabels=[str(p) for p in r["patch_nums"]], xlabel="scale (size)",
           ylabel="token CE of the ground truth", title="exposure bias: context from the data vs the model")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
