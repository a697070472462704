"""Multi-scale VQ-VAE tokenizer of VAR (Tian et al. 2024), and the FlexVAR non-residual variant.

An image is encoded to a latent f (B, Cvae, h, w) and tokenized into K token maps of sizes
``patch_nums`` (1x1 ... hxw), all drawn from one codebook ``quantize.embedding`` (V x Cvae).

* Residual (VAR, ``residual=True``): at scale k the *residual* f - f_hat is area-downsampled
  to pn_k x pn_k and quantized to its nearest codes; the code map is upsampled (bicubic) to
  h x w, refined by a Phi conv (h <- (1 - r) h + r conv(h), r = 0.5) and added to f_hat. The
  image is decoded from the final f_hat. The transformer's input at scale k + 1 is the
  area-downsampled cumulative f_hat after scale k (``next_input``).
* Non-residual (FlexVAR, ``residual=False``): each scale independently quantizes the
  area-downsampled latent f itself; the transformer's input at scale k + 1 is the code map of
  scale k upsampled (bicubic) to pn_{k+1}; the image is decoded from the last scale's code
  map alone, so the last scale must match the latent size. No Phi convs are used.

Phi sharing follows the released model: ``share_quant_resi`` = n convs for K scales, the one
for scale k is the conv whose tick (n points spread in (0, 1)) is nearest to k / (K - 1).

Module and buffer names equal those of the official checkpoint ``vae_ch160v4096z32.pth``
(encoder.*, decoder.*, quant_conv, post_quant_conv, quantize.embedding,
quantize.quant_resi.qresi_ls.N, quantize.ema_vocab_hit_SV), so it loads with strict=True for
the official hyper-parameters (the defaults here). Only the partially shared Phi layout
(share_quant_resi >= 2, the released one) has the official names; 0 (one Phi per scale) and
1 (one Phi for all) work but use the same ``qresi_ls`` naming.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def phi_ticks(n: int) -> np.ndarray:
    """Positions in (0, 1) of n shared Phi convs (the official spacing, 1/(3n) margins for n = 4)."""
    return np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)


def phi_index(si: int, num_scales: int, n: int) -> int:
    """Which of n Phi convs refines scale si of num_scales: the tick nearest to si / (K - 1).

    Computed with numpy in float64 exactly as the official code does, because some scales sit
    on a tie (e.g. si = 2 of 10 with n = 4) that rounding breaks.
    """
    ratio = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(phi_ticks(n) - ratio)))


def area(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, size=(size, size), mode="area")


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, size=(size, size), mode="bicubic")


# ----------------------------------------------------------------------------- conv encoder / decoder


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one 1x1 conv for q, k, v."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # each B, HW, C
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in taming / latent-diffusion


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(upsample_nearest_2x(x))


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="nearest")`` as a broadcast copy: the same numbers, and on
    CPU several times faster (PyTorch 2.x's nearest kernel was a quarter of the decoder's time)."""
    B, C, H, W = x.shape
    return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> (B, z_channels, H / 2^(levels - 1), ...); attention at the lowest level."""

    def __init__(self, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, dropout=0.0, in_channels=3, z_channels=32,
                 using_sa=True, using_mid_sa=True, norm_groups=32):
        super().__init__()
        g = norm_groups
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        c_in = ch
        for level, mult in enumerate(ch_mult):
            last = level == len(ch_mult) - 1
            down = nn.Module()
            down.block = nn.ModuleList()
            down.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(c_in, ch * mult, dropout, g))
                c_in = ch * mult
                if last and using_sa:
                    down.attn.append(AttnBlock(c_in, g))
            if not last:
                down.downsample = Downsample2x(c_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c_in, c_in, dropout, g)
        self.mid.attn_1 = AttnBlock(c_in, g) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(c_in, c_in, dropout, g)
        self.norm_out = group_norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image; ``up`` is stored lowest-resolution-last, as in the official layout."""

    def __init__(self, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, dropout=0.0, in_channels=3, z_channels=32,
                 using_sa=True, using_mid_sa=True, norm_groups=32):
        super().__init__()
        g = norm_groups
        c_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c_in, c_in, dropout, g)
        self.mid.attn_1 = AttnBlock(c_in, g) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(c_in, c_in, dropout, g)
        ups = []
        for level in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(c_in, ch * ch_mult[level], dropout, g))
                c_in = ch * ch_mult[level]
                if level == len(ch_mult) - 1 and using_sa:
                    up.attn.append(AttnBlock(c_in, g))
            if level != 0:
                up.upsample = Upsample2x(c_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- quantizer


class Phi(nn.Conv2d):
    """Refinement of an upsampled code map: (1 - r) h + r conv3x3(h)."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__(channels, channels, 3, 1, 1)
        self.ratio = abs(ratio)

    def forward(self, h):
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiShared(nn.Module):
    """n Phi convs shared by K scales (see ``phi_index``)."""

    def __init__(self, channels: int, n: int, ratio: float = 0.5):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, ratio) if abs(ratio) > 1e-6 else nn.Identity() for _ in range(n)])

    def forward(self, h: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        return self.qresi_ls[phi_index(si, num_scales, len(self.qresi_ls))](h)


class VectorQuantizer(nn.Module):
    """One codebook for all scales; residual (VAR) or independent per-scale (FlexVAR) tokenization."""

    def __init__(self, vocab_size=4096, Cvae=32, beta=0.25, quant_resi=0.5, share_quant_resi=4,
                 patch_nums=OFFICIAL_PATCH_NUMS, residual=True):
        super().__init__()
        self.vocab_size, self.Cvae, self.beta = vocab_size, Cvae, beta
        self.patch_nums, self.residual = tuple(patch_nums), residual
        self.quant_resi = PhiShared(Cvae, share_quant_resi or len(self.patch_nums), quant_resi)
        # Per-scale EMA of code usage, kept only because the official checkpoint stores it.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def nearest(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """Indices (B, h*w) of the codes nearest (L2) to each vector of a (B, C, h, w) map."""
        B, C = z_BChw.shape[:2]
        z = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        e = self.embedding.weight.detach().to(z.dtype)
        d = z.square().sum(1, keepdim=True) + e.square().sum(1) - 2 * z @ e.T
        return d.argmin(1).view(B, -1)

    def embed(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Code map (B, Cvae, pn, pn) of token indices (B, pn*pn)."""
        return self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.Cvae, pn, pn)

    def phi_up(self, h_BChw: torch.Tensor, si: int, size: int, num_scales: int) -> torch.Tensor:
        """Scale si's contribution to f_hat: upsample to the latent size, then Phi."""
        return self.quant_resi(bicubic(h_BChw, size), si, num_scales)

    def next_input(self, si: int, f_hat: torch.Tensor | None, h_BChw: torch.Tensor, patch_nums=None):
        """After scale si produced code map h: (new f_hat, transformer input map for scale si + 1 or None).

        Residual: f_hat += Phi(up(h)); the next input is f_hat area-downsampled to pn_{si+1}.
        FlexVAR: f_hat is h itself (the latest map); the next input is h upsampled to pn_{si+1}.
        ``f_hat`` is None before scale 0 (residual mode starts from zeros of the latent size).
        """
        pns = tuple(patch_nums or self.patch_nums)
        K, H = len(pns), pns[-1]
        nxt = pns[si + 1] if si + 1 < K else None
        if not self.residual:
            return h_BChw, (bicubic(h_BChw, nxt) if nxt is not None else None)
        if f_hat is None:
            f_hat = h_BChw.new_zeros(h_BChw.shape[0], self.Cvae, H, H)
        f_hat = f_hat + self.phi_up(h_BChw, si, H, K)
        return f_hat, (area(f_hat, nxt) if nxt is not None else None)

    @torch.no_grad()
    def f_to_idx(self, f: torch.Tensor, patch_nums=None, return_fhat: bool = False):
        """Token indices per scale [(B, pn*pn)], and with ``return_fhat`` each scale's
        reconstruction of f (residual: cumulative f_hat; FlexVAR: that scale's map upsampled)."""
        pns = tuple(patch_nums or self.patch_nums)
        H, W = f.shape[-2:]
        if H != W or pns[-1] != H:
            raise ValueError(f"latent is {H}x{W} but the last scale is {pns[-1]}")
        rest, f_hat, idx, fhats = f.detach(), torch.zeros_like(f), [], []
        for si, pn in enumerate(pns):
            ids = self.nearest(area(rest if self.residual else f.detach(), pn))
            h = self.embed(ids, pn).to(f.dtype)
            if self.residual:
                f_hat = f_hat + self.phi_up(h, si, H, len(pns))
                rest = f.detach() - f_hat
            else:
                f_hat = bicubic(h, H)
            idx.append(ids)
            fhats.append(f_hat)
        return (idx, fhats) if return_fhat else idx

    def idx_to_fhat(self, idx: list[torch.Tensor], patch_nums=None) -> torch.Tensor:
        """The latent the decoder sees: residual sum of all scales, or the last scale's map (FlexVAR)."""
        pns = tuple(patch_nums or self.patch_nums)
        f_hat = None
        for si, pn in enumerate(pns):
            f_hat, _ = self.next_input(si, f_hat, self.embed(idx[si], pn), pns)
        return f_hat

    def idx_to_var_input(self, idx: list[torch.Tensor], patch_nums=None) -> torch.Tensor | None:
        """Teacher-forcing input (B, L - first_l, Cvae): the inputs of scales 1..K-1, flattened and
        concatenated (official ``idxBl_to_var_input``); None when there is a single scale."""
        pns = tuple(patch_nums or self.patch_nums)
        f_hat, out = None, []
        for si in range(len(pns) - 1):
            f_hat, nxt = self.next_input(si, f_hat, self.embed(idx[si], pns[si]), pns)
            out.append(nxt.flatten(2).transpose(1, 2))
        return torch.cat(out, 1) if out else None

    def forward(self, f: torch.Tensor):
        """VQ-VAE training: (f_hat with straight-through gradient to f, VQ loss averaged over scales).

        The loss is the usual codebook + beta * commitment term at every scale; gradients reach
        the codebook and the Phi convs through f_hat, and the encoder through the straight-through
        estimator. In training mode the per-scale code usage EMA is updated.
        """
        pns, H = self.patch_nums, f.shape[-1]
        f_ng, f_hat, loss = f.detach(), torch.zeros_like(f), 0.0
        for si, pn in enumerate(pns):
            ids = self.nearest(area(f_ng - f_hat.detach() if self.residual else f_ng, pn))
            h = self.embed(ids, pn).to(f.dtype)
            f_hat = f_hat + self.phi_up(h, si, H, len(pns)) if self.residual else bicubic(h, H)
            loss = loss + F.mse_loss(f_hat, f_ng) + self.beta * F.mse_loss(f_hat.detach(), f)
            if self.training:
                hits = ids.flatten().bincount(minlength=self.vocab_size).to(self.ema_vocab_hit_SV.dtype)
                self.ema_vocab_hit_SV[si].mul_(0.99).add_(hits, alpha=0.01)
        return (f_hat.detach() - f_ng) + f, loss / len(pns)


# ----------------------------------------------------------------------------- the VQ-VAE


class VQVAE(nn.Module):
    """Encoder -> quant_conv -> multi-scale quantizer -> post_quant_conv -> decoder.

    Images are in [-1, 1]. Defaults are the released VAR tokenizer (vae_ch160v4096z32).
    ``num_res_blocks``, ``using_sa``, ``norm_groups`` and ``dropout`` exist to build tiny models
    (the released one has 32 GroupNorm groups, which needs at least 32 channels per level).
    """

    def __init__(self, vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, dropout=0.0,
                 beta=0.25, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, patch_nums=OFFICIAL_PATCH_NUMS,
                 residual=True, using_sa=True, using_mid_sa=True, norm_groups=32):
        super().__init__()
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.patch_nums = tuple(patch_nums)
        self.downsample = 2 ** (len(ch_mult) - 1)
        dd = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, dropout=dropout, z_channels=z_channels,
                  using_sa=using_sa, using_mid_sa=using_mid_sa, norm_groups=norm_groups)
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(vocab_size, z_channels, beta, quant_resi, share_quant_resi, patch_nums,
                                        residual)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)

    @property
    def residual(self) -> bool:
        return self.quantize.residual

    def img_to_f(self, img: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(img))

    @torch.no_grad()
    def img_to_idx(self, img: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """Token indices per scale, [(B, pn*pn)] from the smallest scale to the largest."""
        return self.quantize.f_to_idx(self.img_to_f(img), patch_nums)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode a latent to an image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def idx_to_img(self, idx: list[torch.Tensor], patch_nums=None) -> torch.Tensor:
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx, patch_nums))

    def idx_to_var_input(self, idx: list[torch.Tensor], patch_nums=None) -> torch.Tensor | None:
        return self.quantize.idx_to_var_input(idx, patch_nums)

    def forward(self, img: torch.Tensor):
        """VQ-VAE training forward: (reconstruction in [-1, 1] range before clamping, VQ loss)."""
        f_hat, vq_loss = self.quantize(self.img_to_f(img))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
