"""`vgen train CONFIG --dry-run` for the VAR family (``var``, ``sar``, ``variant``, ``scaleweaver``): the models built
on the meta device (no weights read), parameter counts and an estimate of memory per GPU for N
processes, so a cluster recipe can be checked on a laptop.

Sizes come from the files the config names when they are here (a model folder or run: its
config.json; official files: their tensors' shapes); when ``init`` / ``tokenizer`` are not on this
machine, from the config's ``depth`` / ``width`` / ``heads`` / ``mlp_ratio`` (a FlexVAR when
``random_scales`` is on) and the official VAR tokenizer (4096 codes, 32 channels, scales 1..16),
with 1000 classes, and the output says so.

The estimate (bytes, documented so it can be checked):
* the frozen VQ-VAE: 4 per parameter (float32);
* the transformer: weights 4 + gradients 4 + AdamW moments 8 = 16 per parameter (DDP keeps a full
  copy on every process; these recipes do not shard);
* activations of one micro-batch of b images with L tokens, width C, depth D, vocabulary V:
  b * L * C * D * 34 under bf16 autocast (68 in float32) for the blocks, plus b * L * V * 12 for the
  logits (bf16 logits, their float32 CE copy and its gradient); a rough figure to compare recipes,
  not a bound. SAR's student-forcing pass adds its own sequence: (1 + last scale's tokens) / L of
  the teacher-forcing activations in ``last`` mode, the same again in ``all`` mode. VARiant's
  figure is its full-network step (a subnet step keeps fewer blocks' activations); with ``mix: loss``
  the deepest subnet's path is held at the same time: + b * sum_k n_k * |plan_k| * C * per-token
  for its blocks, n_k the tokens of scale k and |plan_k| the blocks it runs, and its logits again. VARiant's
  ``anchor`` keeps the base's shared weights and their Fisher in float32 beside the model: + 8 per shared
  parameter; ``project`` keeps the full path's gradient apart from the subnet's: + 4 per trained parameter.
  ScaleWeaver trains
  only its control adapter (16 per trainable parameter; the frozen base 4 per parameter) and its
  condition sequence runs through the first ``blocks`` blocks as well: + blocks / D of the blocks'
  activations.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vgen.errors import UserError

GIB = 2**30
OFFICIAL_TOKENIZER = dict(vocab_size=4096, z_channels=32, ch=160, ch_mult=[1, 1, 2, 2, 4], share_quant_resi=4)


def planned_arch(cfg) -> tuple[dict, dict, list[str]]:
    """(VQ-VAE constructor arguments, VAR constructor arguments, notes) of the run ``cfg`` describes."""
    from vgen.models.load import _official_pair, load

    notes = []

    def local(spec):
        if spec is None:
            return None
        pair = _official_pair(spec)
        if pair is not None:
            return load(spec) if all(p.is_file() for p in pair) else None  # shapes only come with the tensors
        return load(spec, weights=False) if Path(spec).exists() else None

    init, tok = local(cfg.init), local(cfg.tokenizer)
    source = init if init is not None and init.var_config is None else None
    if tok is not None and tok.var_config is not None:
        vae_arch = dict(tok.var_config["vqvae"])
    elif tok is not None and tok.vqvae is not None:
        vae_arch = dict(tok.vqvae.arch)
    else:
        vae_arch = dict(OFFICIAL_TOKENIZER)
        notes.append(f"tokenizer {cfg.tokenizer!r} is not on this machine: sizes of the official VAR tokenizer")
    if init is not None and init.var_config is not None and init.var_config.get("var"):
        var_arch = dict(init.var_config["var"])
    elif source is not None and source.var is not None:
        from vgen.vartrain.recipe import _official_arch

        var_arch = _official_arch(source.var)
    else:
        pns = vae_arch.get("patch_nums") or [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
        flex = cfg.random_scales if cfg.random_scales is not None else not vae_arch.get("residual", True)
        var_arch = dict(vocab_size=vae_arch["vocab_size"], Cvae=vae_arch["z_channels"], num_classes=1000,
                        depth=cfg.depth, embed_dim=cfg.width, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                        patch_nums=list(pns), flex=bool(flex))
        if cfg.init is not None:
            notes.append(f"init {cfg.init!r} is not on this machine: depth {cfg.depth}, width {cfg.width}, "
                         f"{cfg.heads} heads from the config, 1000 classes")
    return vae_arch, var_arch, notes


def dry_run(cfg, processes: int = 1, fsdp: bool = False) -> str:
    from vgen.models.var import VAR, VQVAE

    if fsdp:
        raise UserError("the VAR recipes replicate the model on every process (DDP); --fsdp does not apply")
    if processes < 1 or cfg.batch % processes:
        raise UserError(f"batch {cfg.batch} cannot be split evenly over {processes} processes")
    vae_arch, var_arch, notes = planned_arch(cfg)
    with torch.device("meta"):
        vae, var = VQVAE(**vae_arch), VAR(**var_arch)
        if getattr(cfg, "private", False):  # variant: each trained depth's own offsets
            var.add_private_depths(cfg.depths)
    n_vae = sum(p.numel() for p in vae.parameters())
    n_var = sum(p.numel() for p in var.parameters())
    b = min(cfg.micro_batch or cfg.batch, cfg.batch // processes)
    L, C, D, V = var.L, var.C, var.depth, var.V
    per_token = 34 if cfg.bf16 else 68
    act = b * L * C * D * per_token + b * L * V * 12
    sar = getattr(cfg, "sigma", None) is not None
    if sar:
        act += act * (1.0 if cfg.mode == "all" else (1 + var.patch_nums[-1] ** 2) / L)
    if getattr(cfg, "mix", None) == "loss":  # variant: the full path's graph and a subnet's at once
        from vgen.variant.recipe import switch_size
        from vgen.variant.schedule import plan_for

        plan = plan_for(D, var.patch_nums, switch_size(cfg, var), max(cfg.depths))
        act += b * C * per_token * sum(p * p * len(k) for p, k in zip(var.patch_nums, plan)) + b * L * V * 12
    n_private = sum(p.numel() for p in var.private.parameters())
    anchored, projected = getattr(cfg, "anchor", 0), getattr(cfg, "project", False)  # variant's extras
    kept = (8 * (n_var - n_private) if anchored else 0) + (4 * n_var if projected else 0)  # base + Fisher; g_full
    weights = n_vae * 4 + n_var * 16 + kept
    recipe = "sar" if sar else "variant" if hasattr(cfg, "switch_scale") else "var"
    trained = f"transformer {n_var / 1e6:.1f}M (trained)"
    if n_private:
        trained = f"transformer {n_var / 1e6:.1f}M (trained; {n_private:,} of them private per-depth offsets)"
    if hasattr(cfg, "lora_rank"):  # scaleweaver: the frozen base and its adapter
        from vgen.scaleweaver.adapter import attach_control
        from vgen.scaleweaver.recipe import adapter_arch

        arch = adapter_arch(cfg, D)
        recipe, blocks = "scaleweaver", arch["blocks"]
        with torch.device("meta"):
            n_ad = attach_control(var, **arch).trainable()
        weights = n_vae * 4 + n_var * 4 + n_ad * 16
        act += b * L * C * blocks * per_token
        trained = f"transformer {n_var / 1e6:.1f}M (frozen), {cfg.mode} adapter {n_ad / 1e6:.3f}M (trained)"
    lines = [f"recipe {recipe}: {'FlexVAR' if var.flex else 'VAR'} depth {D}, width {C}, "
             f"{var.num_heads} heads, {var.num_classes} classes, scales {list(var.patch_nums)} ({L} tokens), "
             f"vocabulary {V}",
             f"parameters: {trained}, VQ-VAE {n_vae / 1e6:.1f}M (frozen)",
             f"processes {processes}: global batch {cfg.batch}, {cfg.batch // processes} per process in micro-batches "
             f"of {b}; {cfg.iterations} steps = {cfg.iterations * cfg.batch:,} images",
             f"memory per GPU (estimate): weights + gradients + AdamW{' + anchor' if anchored else ''}"
             f"{' + the full path gradient' if projected else ''} "
             f"{weights / GIB:.2f} GiB, activations of one "
             f"micro-batch {act / GIB:.2f} GiB{' (SAR ' + cfg.mode + ' mode included)' if sar else ''}, "
             f"total {(weights + act) / GIB:.2f} GiB"]
    return "\n".join(lines + [f"note: {n}" for n in notes])
