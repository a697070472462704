"""Scale-wise (next-scale) sampling of VAR / FlexVAR models, with per-sample seeds.

One step per scale: the transformer turns the current scale's input map into logits, CFG
mixes the class and null-class rows, top-k / top-p filter them, a token is drawn for every
position, and the VQ-VAE turns the new token map into the next scale's input.

* CFG: the official linear ramp, t = cfg * k / (K - 1) at scale k,
  logits = (1 + t) l_cond - t l_null; class and null rows run as one doubled batch.
  ``cfg=0`` skips the null rows altogether. FlexVAR uses the same ramp here (its reference
  code caps the denominator at 9 scales; with the 10 official scales that is the same).
* Top-k keeps the logits >= the k-th largest; top-p keeps the smallest set of most likely
  tokens whose probability reaches p (the most likely token is always kept) - the official
  rules.
* Seeds: the draws of sample b at scale k are uniforms from a CPU generator seeded with
  ``step_seed(seeds[b], k)``, turned into tokens by inverse-CDF sampling (float64), so a
  sample's tokens depend on its own seed only, never on its batch. On CPU both models run under
  ``batch_invariant`` (few-row matmuls padded, convolutions per image; engine/invariance.py), so
  the rounding does not depend on the batch either, without padding whole model calls.
* KV cache: each block keeps its keys / values across scales; ``use_cache=False`` recomputes
  the whole prefix each scale with the teacher-forcing forward (a reference for tests).
* Depth plan (VARiant): ``depth_plan[k]`` lists the blocks scale k runs; the cache of a block
  that no later scale runs is freed before the first scale that drops it.
* ``inputs_override[k]`` (SAR): a (B, pn_k^2, Cvae) map fed as scale k's input instead of the
  one built from the sampled tokens (the tokens and f_hat still follow the samples).
* Both models run in eval mode while sampling (no label dropout), their modes restored after.
* Log-probs (``return_logprobs``): log-probability of each drawn token under the distribution
  it was drawn from (after CFG and top-k / top-p), float32.
* Reference streams (ScaleWeaver): ``ref_kv`` / ``ref_bias`` as ``VAR.forward`` takes them, plumbed
  through both the cached path (``VAR.step``) and the uncached one (the teacher-forcing forward);
  see ``sample``. A per-scale stream is one stream over all scales with a ``ref_bias`` whose rows
  give each scale its own part (``vgen.models.var.var.scale_ref_bias``), exactly as in training.
* ScaleWeaver's control (``control``, a ``vgen.scaleweaver.adapter.ControlRun``): placed at each
  scale before the cached step, passed to the forward when recomputing.
* ``cache_stats`` (a dict, for `vgen bench var` / `vgen bench control`): filled with ``rows`` (model
  rows: the batch, doubled by CFG), ``bytes`` (what the KV caches of all blocks, and a control's
  state, hold after each scale; 0 with ``use_cache=False``) and ``peak_bytes``. Sampling itself is
  unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vgen.engine.invariance import batch_invariant, needed
from vgen.engine.seeds import step_seed
from vgen.errors import UserError
from vgen.models.var.var import check_labels
from vgen.models.var.vqvae import bicubic


@dataclass
class ScaleSample:
    class_ids: list[int]
    seeds: list[int]
    tokens: list[torch.Tensor]                      # per scale (B, pn^2) int64
    f_hat: torch.Tensor                             # (B, Cvae, h, w) latent the image decodes from
    images: torch.Tensor | None = None              # (B, 3, H, W) in [0, 1]
    logprobs: list[torch.Tensor] | None = None      # per scale (B, pn^2) float32
    logits: list[torch.Tensor] | None = None        # per scale (B, pn^2, V) raw class-conditional logits
    freed: dict[int, list[int]] = field(default_factory=dict)  # scale -> blocks whose KV cache was freed before it


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Logits with the tokens outside top-k / top-p set to -inf (official rules, not in place)."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if 0 < top_p < 1:
        srt, order = logits.sort(dim=-1)  # ascending
        drop = srt.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return logits


def cfg_mix(logits: torch.Tensor, B: int, cfg: float, si: int, num_scales: int,
            cfg_control: float | None = None) -> torch.Tensor:
    """(1 + t) l_cond - t l_null with t = cfg * si / (K - 1); rows [:B] are cond, [B:2B] null.
    With ``cfg_control`` (ScaleWeaver's separate guidance on the condition), rows [2B:3B] drop the
    condition too and t_c (l_null - l_none), t_c on the same ramp, is added."""
    def t(scale: float) -> float:
        return scale * si / (num_scales - 1) if num_scales > 1 else 0.0

    out = logits[:B] if not cfg else (1 + t(cfg)) * logits[:B] - t(cfg) * logits[B:2 * B]
    if cfg_control is not None:
        out = out + t(cfg_control) * (logits[B:2 * B] - logits[2 * B:3 * B])
    return out


DRAWS = ("inverse_cdf", "gumbel")


def draw(logits: torch.Tensor, seeds: list[int], si: int, rule: str = "inverse_cdf") -> torch.Tensor:
    """Tokens (B, l) drawn from softmax(logits), row b from ``step_seed(seeds[b], si)`` alone.

    Both rules draw exactly from the categorical; they differ in how a seed's draws move when the
    logits move a little. ``inverse_cdf`` (one uniform per token, the index where the cumulative
    probability passes it) flips a token when the uniform lies near any of the vocabulary's
    boundaries, and every token's error shifts all boundaries after it. ``gumbel`` (argmax of the
    logits plus one Gumbel noise per vocabulary entry) flips only when the two leading perturbed
    logits are within the error of each other, so the same seed under bf16 and fp32 logits keeps
    far more of its tokens: what Sol-RL's explore-then-regenerate rests on (the tiny base, 24 x 16
    seeds: explore/regenerate rank agreement tau 0.42 -> 0.73; tools/solrl_var_preview_probe.py)."""
    B, n, V = logits.shape
    gens = [torch.Generator().manual_seed(step_seed(s, si)) for s in seeds]
    if rule == "gumbel":
        u = torch.stack([torch.rand(n, V, generator=g, dtype=torch.float64) for g in gens]).to(logits.device)
        return (logits.double() - (-u.log()).log()).argmax(-1)
    cdf = logits.double().softmax(-1).cumsum(-1)
    u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in gens]).to(cdf.device)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=V - 1)


def free_dropped(caches: list[dict], depth_plan, si: int) -> list[int]:
    """Free the KV caches of blocks that no scale >= si runs; returns their indices."""
    if depth_plan is None:
        return []
    later = set().union(*(set(p) for p in depth_plan[si:]))
    freed = [j for j, c in enumerate(caches) if c and j not in later]
    for j in freed:
        caches[j].clear()
    return freed


def cache_bytes(caches: list[dict]) -> int:
    """Bytes the blocks' KV caches hold now (every cached key and value tensor)."""
    return sum(t.numel() * t.element_size() for c in caches for t in c.values())


def teacher_forcing_inputs(vqvae, tokens: list[torch.Tensor], patch_nums=None) -> torch.Tensor | None:
    """(B, L - first_l, Cvae) transformer inputs of scales 1..K-1 for ground-truth tokens."""
    with torch.no_grad():
        return vqvae.idx_to_var_input(tokens, patch_nums)


def check_depth_plan(depth_plan, num_scales: int, depth: int):
    if depth_plan is None:
        return None
    plan = [sorted({int(j) for j in p}) for p in depth_plan]
    if len(plan) != num_scales:
        raise UserError(f"depth plan has {len(plan)} scales, the model samples {num_scales}")
    if any(j < 0 or j >= depth for p in plan for j in p):
        raise UserError(f"depth plan names a block outside 0..{depth - 1}")
    return plan


DECODE_POSITIONS = 512  # latent positions per decoder call on CPU (8 latents of 8 x 8)


@torch.no_grad()
def decode(vqvae, f_hat: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (batch-independent on CPU: see engine/invariance.py).

    On CPU the batch goes through the decoder a few latents at a time (``DECODE_POSITIONS``): the
    decoder is batch-invariant there, so every image is the same bit for bit, and a small chunk's
    activations stay in cache between layers (the shapes tokenizer, 64 latents: 1.03-1.33x faster than
    one call on this 2-core machine, depending on its state; tools/vqvae_decode_probe.py)."""
    n = DECODE_POSITIONS // (f_hat.shape[-2] * f_hat.shape[-1]) if needed(f_hat.device) else len(f_hat)
    with batch_invariant(vqvae):
        images = [(vqvae.fhat_to_img(f) + 1) / 2 for f in f_hat.split(max(1, n))]
    return images[0] if len(images) == 1 else torch.cat(images)  # one chunk (CUDA, small batches): no copy


def ref_rows(t: torch.Tensor, B: int, cfg: float) -> torch.Tensor:
    """A per-sample tensor (B or 1 rows) laid out as the model rows: doubled for CFG."""
    if t.shape[0] == 1:
        return t.expand(2 * B if cfg else B, *t.shape[1:])
    return torch.cat([t, t]) if cfg else t


def check_ref(var, ref_kv, ref_bias, B: int, L: int, dev):
    """Validate a reference stream for B samples; returns (ref_kv, ref_bias) on the model's device."""
    if ref_kv is None:
        if ref_bias is not None:
            raise UserError("ref_bias needs a ref_kv stream")
        return None, None
    ref_kv = list(ref_kv)
    if len(ref_kv) != var.depth:
        raise UserError(f"ref_kv has {len(ref_kv)} entries, the model has {var.depth} blocks")
    out, l_ref = [], set()
    for j, kv in enumerate(ref_kv):
        if kv is None:
            out.append(None)
            continue
        k, v = kv
        if k.dim() != 4 or k.shape != v.shape or k.shape[0] not in (1, B) \
                or (k.shape[1], k.shape[3]) != (var.num_heads, var.C // var.num_heads):
            raise UserError(f"ref_kv[{j}] has shapes {tuple(k.shape)}, {tuple(v.shape)}; expected two "
                            f"({B} or 1, {var.num_heads}, l_ref, {var.C // var.num_heads}) tensors")
        l_ref.add(k.shape[2])
        out.append((k.to(dev), v.to(dev)))
    if ref_bias is not None:
        ref_bias = torch.as_tensor(ref_bias, device=dev)
        bad = not 1 <= ref_bias.dim() <= 4 or (ref_bias.dim() >= 2 and ref_bias.shape[-2] not in (1, L)) \
            or (ref_bias.dim() == 4 and ref_bias.shape[0] not in (1, B)) \
            or any(ref_bias.shape[-1] not in (1, n) for n in l_ref)
        if bad:
            raise UserError(f"ref_bias has shape {tuple(ref_bias.shape)}; it must broadcast to "
                            f"({B} or 1, heads, {L} or 1, l_ref)")
    return out, ref_bias


def query_rows(ref_bias, a: int, b: int):
    """The rows of queries a..b-1 of a ref_bias that has a query axis (others broadcast as they are)."""
    if ref_bias is None or ref_bias.dim() < 2 or ref_bias.shape[-2] == 1:
        return ref_bias
    return ref_bias[..., a:b, :]


@torch.no_grad()
def sample(var, vqvae, class_ids, seeds, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
           use_cache: bool = True, return_logprobs: bool = False, return_logits: bool = False,
           depth_plan=None, inputs_override: dict | None = None, patch_nums=None,
           decode_images: bool = True, cache_stats: dict | None = None, ref_kv=None,
           ref_bias=None, control=None, n_scales: int | None = None, draw_rule: str = "inverse_cdf") -> ScaleSample:
    """Sample token maps for ``class_ids`` (num_classes = unconditional) with one seed per sample.

    ``ref_kv`` (ScaleWeaver's reference attention): a list with one entry per block, None for a
    block without a stream, else (k, v), each (B, H, l_ref, head_dim) for the B samples (or 1 row,
    shared by all), in the model's dtype. Every query of every scale attends to them in the same
    softmax as its own sequence's keys. The sampler lays them out as its model rows: with CFG,
    repeated for the null-class rows, which thus see the same reference as the conditional ones
    (the guidance contrasts the class only).
    ``ref_bias``: an additive bias over the reference keys, broadcastable to
    (rows, H, l_query, l_ref); a leading batch axis of B is laid out as ``ref_kv``. Its query
    axis, when not 1, spans the whole sampled sequence (L = sum pn^2 of the scales), as in the
    training forward; each scale uses its own rows. So a stream that differs per scale is one
    stream over all scales with a bias that shows each scale its part (``scale_ref_bias``).
    ``control``: a ScaleWeaver ``ControlRun`` for these samples, laid out for this ``cfg``
    (``vgen.scaleweaver.conditions.control_run`` makes one from condition images); one made with a
    ``cfg_control`` adds a third copy of the rows (null class, no condition) and its guidance term.
    ``n_scales``: run only the first n scales and decode the latent built so far, a preview of the
    full sample that the same seeds give (the same tokens up to scale n, drawn under the same CFG ramp;
    FlexVAR's latest map is brought to the last scale's size first).
    ``draw_rule``: how a seed becomes tokens, ``inverse_cdf`` (vgen's default) or ``gumbel``: the same
    distribution, a different coupling across precisions (see ``draw``)."""
    class_ids, seeds = [int(c) for c in class_ids], [int(s) for s in seeds]
    if len(class_ids) != len(seeds):
        raise UserError(f"got {len(class_ids)} class ids but {len(seeds)} seeds")
    if not class_ids:
        raise UserError("nothing to sample: no class ids")
    if top_k < 0 or not 0 <= top_p <= 1:
        raise UserError(f"top_k must be >= 0 and top_p in [0, 1], got {top_k} and {top_p}")
    pns = var.check_patch_nums(patch_nums)
    plan = check_depth_plan(depth_plan, len(pns), var.depth)
    if n_scales is not None and not 1 <= n_scales <= len(pns):
        raise UserError(f"n_scales must be in 1..{len(pns)} (the scales {list(pns)}), got {n_scales}")
    if draw_rule not in DRAWS:
        raise UserError(f"unknown draw rule {draw_rule!r}; expected one of {', '.join(DRAWS)}")
    dev = var.class_emb.weight.device
    labels = torch.tensor(class_ids, device=dev)
    check_labels(labels, var.num_classes)
    ref_kv, ref_bias = check_ref(var, ref_kv, ref_bias, len(class_ids), sum(pn * pn for pn in pns), dev)
    if control is not None:
        if plan is not None or ref_kv is not None:
            raise UserError("a control condition cannot be combined with a depth plan or a reference stream")
        copies = 3 if control.cfg_control is not None else 2 if cfg else 1
        if control.B != len(class_ids) or control.R != copies * len(class_ids) or control.pns != pns:
            raise UserError(f"the control was prepared for {control.B} samples ({control.R} rows, scales "
                            f"{list(control.pns)}); sampling {len(class_ids)} with cfg {cfg} at {list(pns)}")

    # no label dropout / stochastic depth while sampling; the same rounding in any batch (CPU)
    with evaluating(var, vqvae), batch_invariant(var, vqvae):
        return _sample(var, vqvae, class_ids, seeds, labels, pns, plan, cfg, top_k, top_p, use_cache,
                       return_logprobs, return_logits, inputs_override, decode_images, cache_stats,
                       ref_kv, ref_bias, control, n_scales=n_scales, draw_rule=draw_rule)


def token_logprobs(var, vqvae, class_ids, tokens: list[torch.Tensor], cfg: float, top_k: int = 0,
                   top_p: float = 0.0, patch_nums=None) -> list[torch.Tensor]:
    """Per scale, the (B, pn^2) float32 log-probs of given ``tokens`` under the distribution the sampler
    draws from (CFG ramp, then top-k / top-p), with gradients w.r.t. ``var``'s weights (RL on the
    token policy, DESIGN section 7.4).

    It runs the sampler's own scale-by-scale cached steps with the tokens forced instead of drawn, in
    the same mode and under the same batch invariance, so with unchanged weights the result is the
    sampler's ``return_logprobs`` bit for bit (a teacher-forcing forward over the whole sequence at once
    would round the attention differently, about 1e-5 in a log-prob). The support is recomputed from
    the current logits; a forced token outside it (after an update) is put back with its own logit,
    so its log-prob stays finite and its ratio merely small."""
    class_ids = [int(c) for c in class_ids]
    pns = var.check_patch_nums(patch_nums)
    if len(tokens) != len(pns) or any(t.shape != (len(class_ids), pn * pn) for t, pn in zip(tokens, pns)):
        raise UserError(f"tokens must be one (B, pn^2) map per scale of {list(pns)} for {len(class_ids)} samples")
    labels = torch.tensor(class_ids, device=var.class_emb.weight.device)
    check_labels(labels, var.num_classes)
    with evaluating(var, vqvae), batch_invariant(var, vqvae):
        return _sample(var, vqvae, class_ids, [0] * len(class_ids), labels, pns, None, cfg, top_k, top_p, True, True,
                       False, None, False, forced=tokens).logprobs


@contextmanager
def evaluating(*modules):
    """Eval mode inside the block, each module's own mode restored after."""
    modes = [m.training for m in modules]
    try:
        yield [m.eval() for m in modules]
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _sample(var, vqvae, class_ids, seeds, labels, pns, plan, cfg, top_k, top_p, use_cache, return_logprobs,
            return_logits, inputs_override, decode_images, cache_stats=None, ref_kv=None,
            ref_bias=None, control=None, forced=None, n_scales=None, draw_rule="inverse_cdf") -> ScaleSample:
    K, B = len(pns), len(class_ids)
    # Model rows: the B samples, then (with CFG) the same B rows with the null class (and, with a
    # control's own guidance, once more without the condition: the control's keep says which).
    copies = control.R // B if control is not None else 2 if cfg else 1
    tc = None if control is None else control.cfg_control
    rows = torch.cat([labels] + [torch.full_like(labels, var.num_classes)] * (copies - 1))
    cond_BD, cond = var.condition(rows)
    if ref_kv is not None:  # the reference stream, laid out as the model rows (null rows: the same reference)
        ref_kv = [None if kv is None else tuple(ref_rows(t, B, cfg) for t in kv) for kv in ref_kv]
        if ref_bias is not None and ref_bias.dim() == 4 and ref_bias.shape[0] > 1:
            ref_bias = ref_rows(ref_bias, B, cfg)
    caches = [{} for _ in range(var.depth)]
    if cache_stats is not None:
        cache_stats.update(rows=len(rows), bytes=[], peak_bytes=0)
    inputs, tokens, logps, raw, freed = [], [], [], [], {}
    x = var.start_tokens(cond_BD, pns)
    f_hat = nxt = None
    start = 0  # first sequence position of scale si
    for si, pn in enumerate(pns[:n_scales]):
        if si > 0:
            inp = nxt
            if inputs_override is not None and si in inputs_override:
                inp = inputs_override[si].to(nxt)
                if inp.shape != nxt.shape:
                    raise UserError(f"inputs_override[{si}] has shape {tuple(inp.shape)}, "
                                    f"expected {tuple(nxt.shape)}")
            inp = inp.repeat(copies, 1, 1)
            inputs.append(inp)
            x = var.embed_scale(inp, si, pns)
        if use_cache:
            if freed_now := free_dropped(caches, plan, si):
                freed[si] = freed_now
            if control is not None:
                control.at_scale(si)
            h = var.step(x, cond, caches, None if plan is None else plan[si], ref_kv=ref_kv,
                         ref_bias=query_rows(ref_bias, start, start + pn * pn), control=control)
            logits = var.logits(h, cond_BD, None if plan is None else plan[si])
        else:
            logits = var(rows, inputs, patch_nums=pns, scales=range(si + 1), depth_plan=plan, ref_kv=ref_kv,
                         ref_bias=query_rows(ref_bias, 0, start + pn * pn), control=control)[:, -pn * pn:]
        start += pn * pn
        if cache_stats is not None:
            cache_stats["bytes"].append(cache_bytes(caches) + (control.state_bytes() if control is not None else 0))
            cache_stats["peak_bytes"] = max(cache_stats["bytes"])
        mixed = cfg_mix(logits.float(), B, cfg, si, K, tc)
        guided = filter_logits(mixed, top_k, top_p)
        idx = draw(guided, seeds, si, draw_rule) if forced is None else forced[si].to(guided.device)
        tokens.append(idx)
        if return_logprobs:  # a forced token outside the support keeps its own logit (a no-op for drawn ones)
            at = idx.unsqueeze(-1)
            logps.append(guided.scatter(-1, at, mixed.gather(-1, at)).log_softmax(-1).gather(-1, at).squeeze(-1))
        if return_logits:
            raw.append(logits[:B].float())
        f_hat, nxt = vqvae.quantize.next_input(si, f_hat, vqvae.quantize.embed(idx, pn), pns)
        if nxt is not None:
            nxt = nxt.flatten(2).transpose(1, 2)
    f_hat = bicubic(f_hat, pns[-1])  # a FlexVAR preview's latest map; the full sample's is already this size
    images = decode(vqvae, f_hat) if decode_images and forced is None else None
    return ScaleSample(class_ids, seeds, tokens, f_hat, images, logps if return_logprobs else None,
                       raw if return_logits else None, freed)
