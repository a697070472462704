"""VAR: a decoder-only transformer that predicts token maps scale by scale (Tian et al. 2024).

The sequence is the K token maps of ``patch_nums`` flattened and concatenated (L = sum pn^2
tokens). Scale 0 is the start map: the class embedding plus ``pos_start``. The input of scale
k >= 1 is a (pn_k^2, Cvae) map built by the VQ-VAE from the tokens of scales < k, projected by
``word_embed``. Every token also gets a position embedding and, in VAR mode, a level (scale)
embedding. A block-causal mask lets a token see every token of its own and earlier scales.
Blocks are AdaLN self-attention blocks conditioned on the class embedding; ``head_nm`` (AdaLN)
and ``head`` give logits over the codebook. Depth d gives width 64 d and d heads by default
(the official rule); width and heads can be set for tiny models.

Names equal the official var_d16..d30 checkpoints (including the persistent buffers
``lvl_1L``, ``attn_bias_for_masking`` and ``blocks.N.attn.zero_k_bias``), which were trained
with ``attn_l2_norm=True`` (hence ``scale_mul_1H11``) and ``shared_aln=False``.

FlexVAR mode (``flex=True``): no level embedding, and ``pos_1LC`` is a learnable 2D grid
(1, C, G, G) initialised with 2D sinusoids (as FlexVAR); the position of a pn x pn scale is
the grid resampled to pn x pn ('area' when pn <= G, 'bicubic' above), so any scale list works
at inference, including scales never seen in training. Targets are the independent per-scale
tokens of a ``residual=False`` VQ-VAE. The first scale must keep the training size
(``pos_start`` has first_l rows).

Hooks for the post-training methods, all off by default:
* SAR: ``forward`` takes the per-scale inputs as a list (any maps, e.g. self-generated) and an
  optional ``scales`` subset (e.g. [0, K - 1]: start token + last scale only).
* VARiant: ``depth_plan[k]`` lists the blocks that scale k runs; other blocks pass its tokens
  through unchanged and never see them (no keys / values), exactly as the cached sampler does.
  ``private_depths`` (a vgen extra, none by default) gives a subnet depth d its own small
  parameters (``DepthOffsets``): offsets to the AdaLN modulation of the i-th block it runs and
  of the head's norm, added only on the scales that run a d-block subnet.
* ScaleWeaver: ``ref_kv`` gives each block extra (keys, values) that the sequence's queries can
  attend to, in the same softmax (joint attention), with an optional additive ``ref_bias``;
  ``kv_out`` collects each block's own keys / values, to build such a reference stream.
  ``scale_ref_bias`` builds the bias that gives each scale its own part of such a stream.
  The cached sampler (engine/scalewise.py) takes the same ``ref_kv`` / ``ref_bias``.
  ``control`` (a ``vgen.scaleweaver.adapter.ControlRun``) gives a block a ``side`` term: computed from
  the block's input and its attention's q / k / v, added to the residual after the attention
  sub-layer; the recipe's reference / joint attention and ControlNet-style branch are built on it.
* LoRA: every linear layer (``mat_qkv``, ``proj``, ``ffn.fc1`` / ``fc2``, ``ada_lin``,
  ``shared_ada_lin``, ``head``, ``word_embed``) is used through its module call, so a peft LoRA
  wrapping any of them takes effect; the q / v biases of ``mat_qkv`` are separate parameters
  (``q_bias``, ``v_bias``, official names) added after the projection, and the shared AdaLN
  projection is a plain linear whose output ``condition`` reshapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vgen.errors import UserError

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def subnet_indices(D: int, d: int) -> list[int]:
    """VARiant's equidistant subnet of depth d from D blocks: {floor(i (D - 1) / (d - 1)) : i < d}.

    The first and last blocks are always kept. The sets do not nest in general (D = 16: d = 4
    gives 0, 5, 10, 15 but d = 5 gives 0, 3, 7, 11, 15). d = 1 is allowed only when D = 1.
    """
    if D == d == 1:
        return [0]
    if not 2 <= d <= D:
        raise UserError(f"subnet depth {d} must be between 2 and the model depth {D}")
    return [i * (D - 1) // (d - 1) for i in range(d)]


def switch_plan(depth: int, num_scales: int, switch_scale: int, subnet_depth: int) -> list[list[int]]:
    """Depth plan: scales < switch_scale run all blocks, later ones the equidistant subnet."""
    sub = subnet_indices(depth, subnet_depth)
    return [list(range(depth)) if k < switch_scale else list(sub) for k in range(num_scales)]


def scale_ids(lengths: list[int], device=None) -> torch.Tensor:
    """(L,) index of the scale each token belongs to."""
    return torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(lengths)])


def block_causal_bias(lengths: list[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, L, L) additive mask: 0 where the key's scale <= the query's scale, -inf elsewhere."""
    d = scale_ids(lengths, device)
    return torch.where(d[:, None] >= d[None, :], 0.0, -torch.inf).to(dtype).view(1, 1, len(d), len(d))


def scale_ref_bias(lengths: list[int], ref_lengths: list[int], same_scale: bool = True, device=None,
                   dtype=torch.float32) -> torch.Tensor:
    """(1, 1, L, l_ref) additive bias over a reference stream laid out scale by scale like the sequence.

    0 where the reference token's scale equals the query token's scale (``same_scale``) or is <= it
    (``same_scale=False``), -inf elsewhere. With it one ``ref_kv`` over all reference scales gives
    each scale of the sequence its own (per-scale) reference, as ScaleWeaver's condition stream;
    a query always keeps its own sequence's keys, so fully masked reference rows are harmless."""
    q, r = scale_ids(lengths, device), scale_ids(ref_lengths, device)
    see = q[:, None] == r[None, :] if same_scale else q[:, None] >= r[None, :]
    return torch.where(see, 0.0, -torch.inf).to(dtype).view(1, 1, len(q), len(r))


def sinusoid_grid(size: int, C: int) -> torch.Tensor:
    """(1, C, size, size) 2D sinusoids: sin(y w) on even channels, cos(x w) on odd ones (FlexVAR init)."""
    w = torch.exp(torch.arange(0, C, 2, dtype=torch.float32) * (-math.log(10000.0) / C))
    r = torch.arange(size, dtype=torch.float32)
    grid = torch.zeros(size, size, C)
    grid[:, :, 0::2] = torch.sin(r[:, None, None] * w)[:, :, : C - C // 2].expand(size, size, -1)
    grid[:, :, 1::2] = torch.cos(r[None, :, None] * w)[:, :, : C // 2].expand(size, size, -1)
    return grid.permute(2, 0, 1).unsqueeze(0)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a whole sample's residual branch with probability p."""
    if p <= 0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


def check_labels(label_B: torch.Tensor, num_classes: int) -> None:
    """Class ids must lie in [0, num_classes]; num_classes itself is the null (unconditional) class."""
    if label_B.numel() and (int(label_B.min()) < 0 or int(label_B.max()) > num_classes):
        bad = [int(c) for c in label_B.flatten().tolist() if not 0 <= c <= num_classes]
        raise UserError(f"class id {bad[0]} is out of range: the model has classes 0..{num_classes - 1} "
                        f"({num_classes} = unconditional)")


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head attention with q/v biases (no k bias), optionally on l2-normalised q and k.

    With ``attn_l2_norm`` the logits are cos(q, k) * exp(scale_mul) per head (scale_mul starts at
    log 4 and is capped at log 100); without it they are q.k * 0.25 / sqrt(head_dim) (official).
    """

    def __init__(self, C: int, num_heads: int, attn_l2_norm: bool = True):
        super().__init__()
        assert C % num_heads == 0, "width must be divisible by the number of heads"
        self.num_heads, self.head_dim, self.attn_l2_norm = num_heads, C // num_heads, attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def qkv(self, x: torch.Tensor):
        """q, k, v as (B, H, l, head_dim), q and k already normalised / scaled when l2-norm is on."""
        B, L, C = x.shape
        # through the module call (a LoRA wrapping mat_qkv takes effect), then the q / zero-k / v bias
        bias = torch.cat((self.q_bias, self.zero_k_bias.to(self.q_bias.dtype), self.v_bias))
        qkv = self.mat_qkv(x)
        qkv = qkv + bias.to(qkv.dtype)  # the dtype the projection gives (autocast), as F.linear's bias would
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        return q, k, v

    def forward(self, x, attn_bias=None, cache: dict | None = None, ref_kv=None, ref_bias=None, kv_out=None,
                seen=None):
        """``cache``: a dict holding this block's keys / values of earlier scales; the new ones are
        appended (no mask is needed then: a scale sees all earlier scales and itself).
        ``ref_kv``: extra (k, v), each (B, H, l_ref, head_dim), attended to by every query.
        ``seen``: a list that receives (q, k, v), the keys / values of every scale this query sees."""
        B, L, C = x.shape
        q, k, v = self.qkv(x)
        if kv_out is not None:
            kv_out.append((k, v))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), 2), torch.cat((cache["v"], v), 2)
            cache["k"], cache["v"] = k, v
        if seen is not None:
            seen.append((q, k, v))
        if ref_kv is not None:
            if attn_bias is not None or ref_bias is not None:
                a = attn_bias if attn_bias is not None else q.new_zeros(1, 1, L, k.shape[2])
                r = ref_bias if ref_bias is not None else q.new_zeros(1, 1, L, ref_kv[0].shape[2])
                lead = torch.broadcast_shapes(a.shape[:-1], r.shape[:-1])
                attn_bias = torch.cat((a.to(q.dtype).expand(*lead, -1), r.to(q.dtype).expand(*lead, -1)), -1)
            k, v = torch.cat((k, ref_kv[0]), 2), torch.cat((v, ref_kv[1]), 2)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block; the class condition sets the (gamma, scale, shift) of both sub-layers."""

    def __init__(self, C: int, D: int, num_heads: int, mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False,
                 attn_l2_norm=True, drop_path=0.0):
        super().__init__()
        self.C, self.shared_aln, self.drop_path = C, shared_aln, drop_path
        self.attn = SelfAttention(C, num_heads, attn_l2_norm)
        self.ffn = FFN(C, round(C * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * C))

    def modulation(self, cond_BD, offset=None):
        """(gamma1, gamma2, scale1, scale2, shift1, shift2), each (B, 1, C); ``offset`` (a VARiant
        subnet's, (6, C) or per token (1, l, 6, C)) is added to all six, each then (B, l, C)."""
        if self.shared_aln:  # cond_BD is already the shared (B, 1, 6, C) projection
            m = self.ada_gss + cond_BD
        else:
            m = self.ada_lin(cond_BD).view(-1, 1, 6, self.C)
        return (m if offset is None else m + offset).unbind(2)

    def forward(self, x, cond_BD, attn_bias=None, cache=None, ref_kv=None, ref_bias=None, kv_out=None, side=None,
                offset=None):
        """``side(x, cond_BD, q, k, v)`` (ScaleWeaver's control): a (B, l, C) term added to the residual
        stream after the attention sub-layer, from the block input and the attention's q / k / v.
        ``offset``: a subnet's private modulation offset (``modulation``)."""
        g1, g2, s1, s2, b1, b2 = self.modulation(cond_BD, offset)
        seen = [] if side is not None else None
        a = self.attn(self.ln_wo_grad(x) * (s1 + 1) + b1, attn_bias, cache, ref_kv, ref_bias, kv_out, seen)
        h = x + drop_path(a * g1, self.drop_path, self.training)
        x = h if side is None else h + side(x, cond_BD, *seen[0])
        return x + drop_path(self.ffn(self.ln_wo_grad(x) * (s2 + 1) + b2) * g2, self.drop_path, self.training)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps=1e-6):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x, cond_BD, offset=None):
        m = self.ada_lin(cond_BD).view(-1, 1, 2, self.C)
        scale, shift = (m if offset is None else m + offset).unbind(2)
        return self.ln_wo_grad(x) * (scale + 1) + shift


class DepthOffsets(nn.Module):
    """A subnet depth's private parameters (VARiant, a vgen extra): offsets to the AdaLN modulation
    of each of its d blocks, in block order, and of the head's norm. A subnet feeds block i the
    output of a block that is not block i - 1, so the shared gains fit it badly; these let it re-tune
    them without moving the full network's. They start at zero: a new set changes nothing."""

    def __init__(self, d: int, C: int):
        super().__init__()
        self.blocks = nn.Parameter(torch.zeros(d, 6, C))
        self.head = nn.Parameter(torch.zeros(2, C))


class SharedAdaLin(nn.Linear):
    """The shared AdaLN projection: a plain linear (so a LoRA wrapper around it works); ``VAR.condition``
    reshapes its (B, 6C) output to (B, 1, 6, C)."""


class VAR(nn.Module):
    """Class-conditional next-scale prediction transformer (see the module docstring)."""

    def __init__(self, vocab_size=4096, Cvae=32, num_classes=1000, depth=16, embed_dim=None, num_heads=None,
                 mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False, cond_drop_rate=0.1, attn_l2_norm=True,
                 drop_path_rate=0.0, patch_nums=OFFICIAL_PATCH_NUMS, flex=False, pos_grid=32, private_depths=()):
        super().__init__()
        C = embed_dim or 64 * depth
        self.V, self.Cvae, self.num_classes, self.depth = vocab_size, Cvae, num_classes, depth
        self.C = self.D = C
        self.num_heads = num_heads or depth
        self.cond_drop_rate, self.flex, self.shared_aln = cond_drop_rate, flex, shared_aln
        self.patch_nums = tuple(patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        init_std = math.sqrt(1 / C / 3)

        self.word_embed = nn.Linear(Cvae, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)  # the last row is the null class (CFG)
        nn.init.trunc_normal_(self.class_emb.weight, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        if flex:
            self.pos_1LC = nn.Parameter(sinusoid_grid(pos_grid, C))
        else:
            self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
            nn.init.trunc_normal_(self.pos_1LC, std=init_std)
            self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
            nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)
            self.register_buffer("lvl_1L", scale_ids(self.lengths()).view(1, self.L))

        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if shared_aln else nn.Identity()
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linearly increasing
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, C, self.num_heads, mlp_ratio, norm_eps, shared_aln, attn_l2_norm, dpr[i])
            for i in range(depth)])
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.lengths()))
        self.head_nm = AdaLNBeforeHead(C, C, norm_eps)
        self.head = nn.Linear(C, vocab_size)
        self.private = nn.ModuleDict()  # subnet depth -> DepthOffsets; empty: no state, official names
        self.add_private_depths(private_depths)

    def add_private_depths(self, depths) -> None:
        """Give each subnet depth in ``depths`` (2..depth-1) that has none its own zero offsets."""
        if bad := [d for d in depths if not 2 <= int(d) < self.depth]:
            raise UserError(f"private depths {bad} must lie in 2..{self.depth - 1} (the model has {self.depth} blocks)")
        for d in sorted({int(d) for d in depths} - {int(k) for k in self.private}):
            self.private[str(d)] = DepthOffsets(d, self.C).to(self.head.weight.device)

    def private_for(self, blocks) -> DepthOffsets | None:
        """The private offsets of the subnet a scale runs (``blocks``: its entry of a depth plan), if any."""
        if blocks is None or len(blocks) >= self.depth:
            return None
        return self.private[str(len(blocks))] if str(len(blocks)) in self.private else None

    def private_rows(self, depth_plan, scales, lengths, block: int | None = None) -> torch.Tensor | None:
        """Per-token private offsets (1, l, 6 or 2, C) over the tokens of ``scales`` (``lengths`` each):
        block ``block``'s (its place in each scale's subnet) or, with None, the head's; zero on scales
        that run no subnet with offsets. None when no scale has any (the model's usual path)."""
        if depth_plan is None or not self.private:
            return None
        offs = [self.private_for(depth_plan[s]) for s in scales]
        if all(o is None for o in offs):
            return None
        rows = []
        for s, n, o in zip(scales, lengths, offs):
            if o is None:
                rows.append(self.head.weight.new_zeros(n, 6 if block is not None else 2, self.C))
            else:
                row = o.head if block is None else o.blocks[sorted(depth_plan[s]).index(block)]
                rows.append(row.expand(n, -1, -1))
        return torch.cat(rows).unsqueeze(0)

    # ------------------------------------------------------------------ embeddings

    def lengths(self, patch_nums=None, scales=None) -> list[int]:
        pns = tuple(patch_nums or self.patch_nums)
        return [pns[s] ** 2 for s in (range(len(pns)) if scales is None else scales)]

    def check_patch_nums(self, patch_nums) -> tuple[int, ...]:
        pns = tuple(patch_nums or self.patch_nums)
        if not self.flex and pns != self.patch_nums:
            raise UserError(f"scales {list(pns)} differ from the model's {list(self.patch_nums)}; "
                            "only a FlexVAR model (flex=True) takes another scale list")
        if pns[0] ** 2 != self.first_l:
            raise UserError(f"the first scale must be {self.patch_nums[0]}x{self.patch_nums[0]}, got {pns[0]}")
        return pns

    def pos_embed(self, si: int, patch_nums=None) -> torch.Tensor:
        """(1, pn^2, C) position (+ level) embedding of scale si."""
        pns = self.check_patch_nums(patch_nums)
        if self.flex:
            pn, g = pns[si], self.pos_1LC.shape[-1]
            grid = F.interpolate(self.pos_1LC, size=(pn, pn), mode="area" if pn <= g else "bicubic")
            return grid.flatten(2).transpose(1, 2)
        a = sum(self.lengths(pns)[:si])
        pos = self.pos_1LC[:, a:a + pns[si] ** 2]
        return pos + self.lvl_embed.weight[si].view(1, 1, -1)

    def start_tokens(self, cond_BD: torch.Tensor, patch_nums=None) -> torch.Tensor:
        """(B, first_l, C) input of scale 0: class embedding + pos_start + its position."""
        sos = cond_BD.unsqueeze(1).expand(-1, self.first_l, -1)
        return sos + self.pos_start + self.pos_embed(0, patch_nums)

    def embed_scale(self, inp_BlCv: torch.Tensor, si: int, patch_nums=None) -> torch.Tensor:
        """(B, pn^2, C) input of scale si >= 1 from its (B, pn^2, Cvae) map."""
        return self.word_embed(inp_BlCv.to(self.word_embed.weight.dtype)) + self.pos_embed(si, patch_nums)

    def condition(self, label_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class embedding for the head and start token, the blocks' condition)."""
        check_labels(label_B, self.num_classes)
        cond_BD = self.class_emb(label_B)
        cond = self.shared_ada_lin(cond_BD)
        if self.shared_aln:
            cond = cond.view(-1, 1, 6, self.C)
        return cond_BD, cond

    def logits(self, h: torch.Tensor, cond_BD: torch.Tensor, blocks=None, offset=None) -> torch.Tensor:
        """``blocks``: the blocks the scale of ``h`` ran (sampling), for its subnet's private head offset;
        ``offset``: the per-token one (``private_rows``, training)."""
        if blocks is not None and (o := self.private_for(blocks)) is not None:
            offset = o.head
        return self.head(self.head_nm(h, cond_BD, offset))

    # ------------------------------------------------------------------ transformer

    def step(self, x, cond, caches: list, blocks=None, ref_kv=None, ref_bias=None, control=None) -> torch.Tensor:
        """Run one scale's tokens through the blocks with a KV cache (sampling).

        ``caches``: one dict per block; ``blocks``: the block indices this scale runs (default all);
        the others neither change the tokens nor receive keys / values. ``ref_kv`` / ``ref_bias`` as in
        ``forward``, with ``ref_bias``'s query axis (if not 1) over this scale's tokens only. ``control``:
        a ScaleWeaver control run already placed at this scale (``ControlRun.at_scale``)."""
        run = range(self.depth) if blocks is None else sorted(blocks)
        off = self.private_for(blocks)
        for i, j in enumerate(run):
            x = self.blocks[j](x, cond, None, caches[j], ref_kv[j] if ref_kv else None, ref_bias,
                               side=control.side(j) if control is not None else None,
                               offset=None if off is None else off.blocks[i])
        return x

    def trunk(self, x, cond, lengths, scales, depth_plan=None, ref_kv=None, ref_bias=None, kv_out=None,
              control=None):
        """Run the whole sequence through the blocks under the block-causal mask (training).

        With a depth plan, block j sees only the tokens of scales that run it: they are gathered,
        processed under the mask restricted to them, and scattered back."""
        bias = self.attn_bias_for_masking if list(lengths) == self.lengths() else block_causal_bias(lengths, x.device)
        bias = bias.to(x.dtype)
        sid = None if depth_plan is None else torch.as_tensor(scales, device=x.device)[scale_ids(lengths, x.device)]
        for j, block in enumerate(self.blocks):
            rk = ref_kv[j] if ref_kv else None
            active = None if depth_plan is None else [s for s in scales if j in depth_plan[s]]
            if active is None or len(active) == len(scales):
                x = block(x, cond, bias, None, rk, ref_bias, kv_out, control.side(j) if control is not None else None,
                          offset=self.private_rows(depth_plan, scales, lengths, j))
            elif active:
                idx = torch.isin(sid, torch.as_tensor(active, device=x.device)).nonzero().squeeze(1)
                rb = ref_bias[..., idx, :] if ref_bias is not None and ref_bias.shape[-2] > 1 else ref_bias
                n = [lengths[scales.index(s)] for s in active]
                out = block(x[:, idx], cond, bias[..., idx[:, None], idx], None, rk, rb, kv_out,
                            offset=self.private_rows(depth_plan, active, n, j))
                x = x.index_copy(1, idx, out)
        return x

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l, *, patch_nums=None, scales=None, depth_plan=None,
                ref_kv=None, ref_bias=None, kv_out=None, control=None) -> torch.Tensor:
        """Teacher-forcing logits (B, L, V).

        ``x_BLCv_wo_first_l``: the inputs of scales[1:] as one (B, l, Cvae) tensor (official
        layout; None for a start-only sequence) or a list of (B, pn^2, Cvae) maps, one per scale.
        ``scales``: which scales the sequence holds (default all; must start with 0, increasing).
        In training mode labels are replaced by the null class with probability cond_drop_rate.
        ``control``: a ScaleWeaver control run (``vgen.scaleweaver.adapter``) for these rows.
        """
        pns = self.check_patch_nums(patch_nums)
        scales = list(range(len(pns))) if scales is None else [int(s) for s in scales]
        if not scales or scales[0] != 0 or any(b <= a for a, b in zip(scales, scales[1:])) or scales[-1] >= len(pns):
            raise UserError(f"scales {scales} must start at 0 and increase, below {len(pns)}")
        lengths = self.lengths(pns, scales)
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(label_B.shape[0], device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        cond_BD, cond = self.condition(label_B)
        inputs = x_BLCv_wo_first_l
        if isinstance(inputs, torch.Tensor):
            inputs = list(inputs.split(lengths[1:], dim=1))
        inputs = list(inputs or [])
        if len(inputs) != len(scales) - 1:
            raise UserError(f"got inputs for {len(inputs)} scales, expected {len(scales) - 1}")
        x = torch.cat([self.start_tokens(cond_BD, pns)]
                      + [self.embed_scale(inp, s, pns) for inp, s in zip(inputs, scales[1:])], 1)
        if control is not None:
            if depth_plan is not None:
                raise UserError("a control condition and a VARiant depth plan cannot be combined")
            control.start(scales, lengths, pns)
        h = self.trunk(x, cond, lengths, scales, depth_plan, ref_kv, ref_bias, kv_out, control)
        return self.logits(h, cond_BD, offset=self.private_rows(depth_plan, scales, lengths))

    @torch.no_grad()
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0):
        """The official initialisation (init_std < 0: sqrt(1 / 3C)); gammas start near zero."""
        std = math.sqrt(1 / self.C / 3) if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for b in self.blocks:
            b.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if b.shared_aln:
                b.ada_gss[:, :, 2:].mul_(init_adaln)
                b.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                w = b.ada_lin[-1].weight
                w[2 * self.C:].mul_(init_adaln)
                w[:2 * self.C].mul_(init_adaln_gamma)
                b.ada_lin[-1].bias.zero_()
        return self
