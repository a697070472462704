"""ScaleWeaver's control for a VAR: Reference Attention, and the two baselines in the same backbone.

A condition image (an edge map, a mask) is tokenized with the model's own VQ-VAE; its latent,
area-resampled to each scale's size, is embedded like an image scale (``word_embed`` + the scale's
position) and becomes a condition sequence laid out scale by scale like the image. Three ways to
inject it into the first ``blocks`` blocks of the frozen base (``mode``):

* ``reference`` (ScaleWeaver): the condition sequence runs through the base's own blocks (shared
  weights) with LoRA on that branch only, under the block-causal mask over condition scales and
  the null-class modulation, so it depends on the condition alone: computed once for all scales
  and shared by every row (class, CFG row). Image queries attend to the condition keys of their
  own scale (``ref_scales: same``) or of every scale up to theirs (``causal``); the condition
  never attends to the image.
* ``joint`` (MM attention): the same, but condition queries also attend to the image keys of
  scales up to their own, so the condition stream depends on the image and is recomputed for
  every row and every scale (it cannot be cached ahead).
* ``controlnet``: a trainable copy of the first ``blocks`` blocks runs on the image tokens plus the
  condition (through a zero-initialised input projection), with its own KV caches.

In every mode the result enters the image stream of block j through a zero-initialised linear
projection, added to the residual after the attention sub-layer (``AdaLNSelfAttn``'s ``side``). The
image attention keeps its own softmax: a single softmax over [image keys, condition keys] would
renormalise the base's attention by the condition keys from the first step, and the model would
not start as the base. With the projections at zero every output equals the base's bit for bit,
for any condition (tested).

Rows that train or sample without the condition (condition dropout; the unconditional rows of
classifier-free guidance) get ``keep = 0``: their control term is exactly zero.

``pos_bias`` (a vgen option, reference and joint modes): a learnable bias per block, head and
offset on the condition keys at and around the query's own position (3 x 3, same scale), starting
on the query's own cell (``local_start``). VAR attends by cosine similarity at a temperature of
about 4 and knows positions only through the absolute embedding added at the input, so an image
query cannot single out the condition token under itself; Infinity, the paper's base, rotates
queries and keys by their 2-D position (RoPE), which gives reference attention that relative signal.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vgen.errors import UserError
from vgen.models.var.var import block_causal_bias, scale_ids
from vgen.models.var.vqvae import area

MODES = ("reference", "joint", "controlnet")
OFFSETS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]  # pos_bias: condition key - query, in grid cells
LORA_TARGETS = ["attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2"]


def _zero_linear(C: int) -> nn.Linear:
    lin = nn.Linear(C, C)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _view(m: nn.Module) -> nn.Module:
    """A second module object over the same parameters, buffers and leaf modules as ``m``, whose own
    child table can be changed (peft wraps its linears) without touching ``m``."""
    c = copy.copy(m)
    for k, v in m.__dict__.items():  # own child table and hooks; the same _parameters / _buffers dicts, so
        if isinstance(v, dict) and k not in ("_parameters", "_buffers"):  # loads and .to() reach both
            c.__dict__[k] = copy.copy(v)
    return c


def condition_branch(block: nn.Module, rank: int, alpha: float) -> tuple[nn.Module, list[nn.Module]]:
    """The base block seen through LoRA: a view of ``block`` whose attention and FFN linears peft
    wraps; the image branch keeps using ``block`` itself. Returns (view, the LoRA layers)."""
    from peft import LoraConfig, inject_adapter_in_model

    view = _view(block)
    view.attn, view.ffn = _view(block.attn), _view(block.ffn)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS,
                                       init_lora_weights=True), view)
    layers = [m for m in view.modules() if hasattr(m, "lora_A")]
    return view, layers


class ControlAdapter(nn.Module):
    """The trainable parts of one control mode (see the module docstring); attach with
    :func:`attach_control`. Its ``arch`` dict is what a model folder records."""

    def __init__(self, var, mode: str = "reference", blocks: int = 2, rank: int = 8, alpha: float | None = None,
                 ref_scales: str = "same", pos_bias: bool = False):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"control mode {mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= blocks <= var.depth:
            raise UserError(f"control blocks must be 1..{var.depth} (the model's depth), got {blocks}")
        if ref_scales not in ("same", "causal"):
            raise UserError(f"ref_scales must be 'same' or 'causal', got {ref_scales!r}")
        if rank < 1:
            raise UserError(f"LoRA rank must be >= 1, got {rank}")
        if pos_bias and mode == "controlnet":
            raise UserError("pos_bias biases the attention of image queries over condition keys: reference or joint "
                            "mode, not controlnet")
        self.mode, self.blocks, self.rank, self.ref_scales = mode, blocks, rank, ref_scales
        self.alpha = float(alpha if alpha is not None else rank)
        self.arch = {"mode": mode, "blocks": blocks, "rank": rank, "alpha": self.alpha, "ref_scales": ref_scales}
        if pos_bias:  # recorded only when on: folders written before it load unchanged
            self.arch["pos_bias"] = True
        dev = var.head.weight.device
        with torch.device(dev):
            self.out = nn.ModuleList([_zero_linear(var.C) for _ in range(blocks)])
            self.pos = nn.Parameter(local_start(blocks, var.num_heads, var.patch_nums)) if pos_bias else None
            if mode == "controlnet":
                self.branch = nn.ModuleList([copy.deepcopy(var.blocks[j]) for j in range(blocks)])
                self.branch_in = _zero_linear(var.C)
                return
        views, lora = [], []
        for j in range(blocks):
            view, layers = condition_branch(var.blocks[j], rank, self.alpha)
            views.append(view)
            lora += [nn.ModuleDict({"A": m.lora_A, "B": m.lora_B}) for m in layers]
        object.__setattr__(self, "views", views)  # not registered: they hold the base's own weights
        self.lora = nn.ModuleList(lora)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())


def attach_control(var, **arch) -> ControlAdapter:
    """Give ``var`` a control adapter (``var.control``, saved with the model) and freeze the base."""
    if getattr(var, "control", None) is not None:
        raise UserError("this model already has a control adapter")
    var.requires_grad_(False)
    adapter = ControlAdapter(var, **arch)
    adapter.requires_grad_(True)
    var.control = adapter
    if hasattr(var, "arch"):
        var.arch["control"] = dict(adapter.arch)
    return adapter


ADAPTER_FORMAT = "vgen-var-control"
BASE_KEYS = ("vocab_size", "Cvae", "num_classes", "depth", "embed_dim", "num_heads", "mlp_ratio", "patch_nums", "flex")


def save_adapter(folder, var, class_prompts, resolution: int, sampling: dict, metadata: dict | None = None) -> None:
    """Write ``var``'s control adapter alone into the existing ``folder``: adapter_config.json (its arch,
    the base arch it fits) and adapter.safetensors (its weights, without the ``control.`` prefix)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    base = {k: (list(v) if isinstance(v, tuple) else v) for k, v in var.arch.items() if k in BASE_KEYS}
    config = {"format": ADAPTER_FORMAT, "version": 1, "control": dict(var.control.arch), "base": base,
              "class_prompts": list(class_prompts), "resolution": int(resolution), "sampling": dict(sampling)}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in var.control.state_dict().items()}
    save_file(state, str(folder / "adapter.safetensors"), metadata={"format": "pt", **(metadata or {})})


def read_adapter(folder) -> dict:
    """The checked adapter_config.json of an adapter folder (``save_adapter``); a missing or damaged
    one is a one-line error."""
    import json
    from pathlib import Path

    folder = Path(folder)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{str(folder)!r} is not a control adapter folder (adapter_config.json: "
                        f"{getattr(e, 'strerror', None) or e})") from None
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT or not all(
            isinstance(config.get(k), dict) for k in ("control", "base", "sampling")):
        raise UserError(f"{str(folder)!r}: adapter_config.json is not a vgen control adapter")
    return config


def check_fit(config: dict, arch: dict, folder) -> None:
    """The adapter (its ``read_adapter`` config) fits a base of constructor arguments ``arch``."""
    have = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items() if k in BASE_KEYS}
    if diff := [k for k, v in config["base"].items() if have.get(k) != v]:
        raise UserError(f"the adapter in {str(folder)!r} fits a base with {diff[0]}={config['base'][diff[0]]!r}; "
                        f"this model has {have.get(diff[0])!r}")


def load_adapter(var, folder) -> ControlAdapter:
    """Attach the adapter saved in ``folder`` (``save_adapter``; `vgen export --format adapter`) to the base
    ``var``; a base it does not fit, or a damaged folder, is a one-line error."""
    config = read_adapter(folder)
    check_fit(config, getattr(var, "arch", {}), folder)
    return attach_saved(var, folder, config)


def attach_saved(var, folder, config: dict) -> ControlAdapter:
    """Attach the adapter of ``folder`` whose config ``read_adapter`` returned and ``check_fit`` passed."""
    from pathlib import Path

    from vgen.models.var.official import load_state, read_state_dict

    adapter = attach_control(var, **config["control"])
    path = Path(folder) / "adapter.safetensors"
    load_state(adapter, read_state_dict(path), path)
    return adapter


def local_start(blocks: int, heads: int, pns) -> torch.Tensor:
    """pos_bias's start: log(n) on the key in the query's own cell, n the largest scale's token count,
    0 around it, so that each query starts with about as much weight on the condition under it as
    on the rest of its scale. (A bias that starts at zero stays near it: AdamW moves it about lr per
    step, 0.3 in 300 steps at lr 1e-3, while singling out one key at a temperature of 4 takes a few
    units; measured: about 0.1 after 300 steps.)"""
    start = torch.zeros(blocks, heads, len(OFFSETS))
    start[..., OFFSETS.index((0, 0))] = math.log(max(pns) ** 2)
    return start


def grid_positions(sid: torch.Tensor, pns) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of each token of a sequence laid out scale by scale, from its scale ids ``sid``."""
    L = len(sid)
    at = torch.arange(L, device=sid.device)
    first = torch.ones(L, dtype=torch.bool, device=sid.device)
    first[1:] = sid[1:] != sid[:-1]
    idx = at - torch.cummax(torch.where(first, at, 0), 0).values  # index within its scale
    pn = torch.as_tensor(pns, device=sid.device)[sid]
    return idx // pn, idx % pn


@torch.no_grad()
def condition_latent(vqvae, images: torch.Tensor) -> torch.Tensor:
    """(B, Cvae, h, w) quantized latent of condition images in [0, 1], (B, 3, H, W): the model's
    own tokens of every scale, summed as the decoder sees them."""
    idx = vqvae.img_to_idx(images.to(vqvae.quant_conv.weight) * 2 - 1)
    return vqvae.quantize.idx_to_fhat(idx)


class ControlRun:
    """The control of one forward or one sampling call: the condition of B samples laid out as the
    model's R = ``copies`` x B rows (B; 2B with CFG: the samples, then their null-class twins; 3B with
    a separate condition guidance ``cfg_control``: then the null class without the condition too),
    which rows keep it, and each mode's state (the reference keys, the joint stream, the ControlNet
    branch).

    Only the rows that keep the condition (``keep`` != 0) run any of it: the others get an exact zero,
    so the unconditional CFG rows cost nothing extra in any mode.

    ``start(scales, lengths, pns)`` prepares a full-sequence forward (training, recompute);
    ``at_scale(si)`` one cached sampling step. ``side(j)`` is block j's hook for ``AdaLNSelfAttn``."""

    def __init__(self, var, latent: torch.Tensor, keep: torch.Tensor, pns, copies: int = 1,
                 cfg_control: float | None = None):
        if getattr(var, "control", None) is None:
            raise UserError("this model has no control adapter: train one with the scaleweaver recipe")
        if (copies == 3) != (cfg_control is not None) or copies not in (1, 2, 3):
            raise UserError(f"a control runs 1 or 2 copies of the samples, or 3 with cfg_control; got {copies} "
                            f"copies and cfg_control {cfg_control}")
        self.var, self.ad, self.cfg_control = var, var.control, cfg_control
        B = latent.shape[0]
        self.B, self.R = B, copies * B
        if keep.shape != (self.R,):
            raise UserError(f"keep must give one weight per model row ({self.R}), got shape {tuple(keep.shape)}")
        self.pns = tuple(pns)
        dt = var.head.weight.dtype
        # samples that share a condition share its condition sequence (and, in reference mode, its stream)
        uniq, cond_of = torch.unique(latent.flatten(1), dim=0, return_inverse=True)
        latent = uniq.view(-1, *latent.shape[1:])
        self.maps = [area(latent.to(dt), pn).flatten(2).transpose(1, 2) for pn in self.pns]  # (U, pn^2, Cvae)
        on = keep.nonzero().squeeze(1)
        self.on = None if len(on) == self.R else on  # the rows that run the control (None: all)
        self.sample_of = cond_of[(torch.arange(self.R, device=keep.device) if self.on is None else on) % B]
        self.keep = keep.to(dt)[torch.arange(self.R, device=keep.device) if self.on is None else on].view(-1, 1, 1)
        self.null = var.condition(torch.full((1,), var.num_classes, device=latent.device))[1]
        self.ref_k = None  # reference mode: per block (k, v) of the condition over every scale, per running row
        self.cached = False

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        """The running rows of a tensor over the R model rows (one shared row stays as it is)."""
        return t if self.on is None or t.shape[0] == 1 else t.index_select(0, self.on)

    def place(self, y: torch.Tensor) -> torch.Tensor:
        """The running rows' result laid out over the R model rows, exact zeros elsewhere."""
        return y if self.on is None else y.new_zeros(self.R, *y.shape[1:]).index_copy(0, self.on, y)

    def per_row(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor over the distinct conditions, one row per running row."""
        n = self.sample_of.numel()
        if n == t.shape[0] and bool((self.sample_of == torch.arange(n, device=t.device)).all()):
            return t
        return t.index_select(0, self.sample_of)

    def embed(self, scales) -> torch.Tensor:
        """(rows, l, C) condition sequence of ``scales`` for the running rows: each scale's latent as an
        image scale's input."""
        return self.per_row(torch.cat([self.var.embed_scale(self.maps[s], s, self.pns) for s in scales], 1))

    # ------------------------------------------------------------------ set-up per call

    def start(self, scales, lengths, pns) -> None:
        if tuple(pns) != self.pns:
            raise UserError(f"the control was prepared for scales {list(self.pns)}, the forward runs {list(pns)}")
        dev = self.keep.device
        self.cached, self.q_sid = False, torch.as_tensor(list(scales), device=dev)[scale_ids(lengths, dev)]
        self.bias = block_causal_bias(lengths, dev, self.keep.dtype)
        if self.ad.mode == "reference":
            self._reference_stream()
        else:  # joint: the condition stream; controlnet: the branch's condition input
            self.c = self.embed(scales)
        self._set_ref_bias(self.c_sid if self.ad.mode == "reference" else self.q_sid)

    def at_scale(self, si: int) -> None:
        dev = self.keep.device
        if si == 0:
            self.caches = [{} for _ in range(self.ad.blocks)]
        self.cached, self.q_sid = True, torch.full((self.pns[si] ** 2,), si, device=dev)
        if self.ad.mode == "reference":
            self._reference_stream()
        else:
            self.c = self.embed([si])
        # the condition keys a scale's queries see: every scale (reference) or those cached so far (joint)
        self._set_ref_bias(self.c_sid if self.ad.mode == "reference"
                           else scale_ids([n * n for n in self.pns[:si + 1]], dev))

    def _reference_stream(self) -> None:
        """The condition through the LoRA branch over every scale at once, block-causal: its keys and
        values per block (they depend on the condition alone: computed once per distinct condition)."""
        if self.ref_k is not None:
            return
        lengths = [pn * pn for pn in self.pns]
        dev = self.keep.device
        c = torch.cat([self.var.embed_scale(self.maps[s], s, self.pns) for s in range(len(self.pns))], 1)
        bias, self.c_sid = block_causal_bias(lengths, dev, self.keep.dtype), scale_ids(lengths, dev)
        self.ref_k = []
        for view in self.ad.views:
            kv: list = []
            c = view(c, self.null, bias, None, kv_out=kv)
            self.ref_k.append(tuple(self.per_row(t) for t in kv[0]))

    def state_bytes(self) -> int:
        """Bytes the control holds for the rest of a sampling call: the reference keys / values, or the
        joint stream's and the branch's KV caches (what it adds to the sampler's KV-cache peak)."""
        held = [t for kv in (self.ref_k or []) for t in kv]
        held += [t for c in getattr(self, "caches", []) for t in c.values()]
        return sum(t.numel() * t.element_size() for t in held)

    # ------------------------------------------------------------------ the per-block hook

    def side(self, j: int):
        if j >= self.ad.blocks or (self.on is not None and not len(self.on)):  # no running row: the base
            return None
        return lambda x, cond, q, k, v: self.place(self._side(j, x, cond, q, k, v))

    def _set_ref_bias(self, c_sid: torch.Tensor) -> None:
        """The mask of image queries (``q_sid``) over condition keys of scales ``c_sid``, made once per
        forward or sampling step and shared by every injected block (controlnet has no such attention);
        with ``pos_bias``, which key lies at which offset from which query (same scale)."""
        if self.ad.mode == "controlnet":
            return
        q, r = self.q_sid, c_sid
        see = q[:, None] == r[None, :] if self.ad.ref_scales == "same" else q[:, None] >= r[None, :]
        self.ref_bias = torch.where(see, 0.0, -torch.inf).to(self.keep.dtype).view(1, 1, len(q), len(r))
        if self.ad.pos is not None:
            (qr, qc), (kr, kc) = grid_positions(q, self.pns), grid_positions(r, self.pns)
            same = q[:, None] == r[None, :]
            self.offsets = torch.stack([same & (kr[None] - qr[:, None] == dr) & (kc[None] - qc[:, None] == dc)
                                        for dr, dc in OFFSETS]).to(self.keep.dtype)  # (9, Lq, Lc)

    def _attend(self, j: int, q, kc, vc, bias) -> torch.Tensor:
        """Image queries over condition keys (their own softmax), heads merged, through the zero-init
        projection, times keep."""
        B, H, L, hd = q.shape
        if self.ad.pos is not None:
            bias = bias + torch.einsum("ho,oqc->hqc", self.ad.pos[j], self.offsets).unsqueeze(0)
        o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=bias, scale=self.var.blocks[j].attn.scale)
        return self.ad.out[j](o.transpose(1, 2).reshape(B, L, H * hd)) * self.keep

    def _side(self, j: int, x, cond, q, k, v) -> torch.Tensor:
        """Block j's control term for the running rows; each mode picks only the tensors it reads
        (the image keys / values are the whole cache: copying them for nothing costs every step)."""
        mode, pick = self.ad.mode, self.pick
        if mode == "reference":
            kc, vc = self.ref_k[j]
            return self._attend(j, pick(q), kc, vc, self.ref_bias)
        if mode == "joint":
            view, kv = self.ad.views[j], []
            if self.cached:  # this scale's condition tokens; their keys join the block's condition cache
                cache = self.caches[j]
                self.c = view(self.c, self.null, None, cache, ref_kv=(pick(k), pick(v)), kv_out=kv)
                kc, vc = cache["k"], cache["v"]
            else:
                self.c = view(self.c, self.null, self.bias, None, ref_kv=(pick(k), pick(v)), ref_bias=self.bias,
                              kv_out=kv)
                kc, vc = kv[0]
            return self._attend(j, pick(q), kc, vc, self.ref_bias)
        # controlnet: the branch copy of block j on its own hidden states (and caches)
        if j == 0:
            self.h = pick(x) + self.ad.branch_in(self.c)
        self.h = self.ad.branch[j](self.h, pick(cond), None if self.cached else self.bias,
                                   self.caches[j] if self.cached else None)
        return self.ad.out[j](self.h) * self.keep
