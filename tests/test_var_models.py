"""VAR-family models: official checkpoint layout, tokenizer rules, mask, depth plans, FlexVAR positions."""

import pytest
import torch
import torch.nn.functional as F

from vgen.errors import UserError
from vgen.models.var import VAR, VQVAE, load_official, subnet_indices, switch_plan
from vgen.models.var.official import read_state_dict
from vgen.models.var.vqvae import VectorQuantizer, area, phi_index, upsample_nearest_2x

PN = (1, 2, 3, 4)
OFFICIAL_PN = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# ----------------------------------------------------------------------------- the official layouts, written out


def official_var_layout(depth, V=4096, Cvae=32, num_classes=1000, patch_nums=OFFICIAL_PN):
    """Names and shapes of the official var_d{depth}.pth (width 64 d, d heads, attn_l2_norm, no shared AdaLN)."""
    C, L, K = 64 * depth, sum(p * p for p in patch_nums), len(patch_nums)
    out = {"word_embed.weight": (C, Cvae), "word_embed.bias": (C,), "class_emb.weight": (num_classes + 1, C),
           "pos_start": (1, 1, C), "pos_1LC": (1, L, C), "lvl_embed.weight": (K, C), "lvl_1L": (1, L),
           "attn_bias_for_masking": (1, 1, L, L), "head_nm.ada_lin.1.weight": (2 * C, C),
           "head_nm.ada_lin.1.bias": (2 * C,), "head.weight": (V, C), "head.bias": (V,)}
    for i in range(depth):
        b = f"blocks.{i}."
        out |= {b + "attn.scale_mul_1H11": (1, depth, 1, 1), b + "attn.q_bias": (C,), b + "attn.v_bias": (C,),
                b + "attn.zero_k_bias": (C,), b + "attn.mat_qkv.weight": (3 * C, C), b + "attn.proj.weight": (C, C),
                b + "attn.proj.bias": (C,), b + "ffn.fc1.weight": (4 * C, C), b + "ffn.fc1.bias": (4 * C,),
                b + "ffn.fc2.weight": (C, 4 * C), b + "ffn.fc2.bias": (C,), b + "ada_lin.1.weight": (6 * C, C),
                b + "ada_lin.1.bias": (6 * C,)}
    return out


def official_vae_layout(ch=160, ch_mult=(1, 1, 2, 2, 4), z=32, V=4096, K=10, n_phi=4, nrb=2):
    """Names and shapes of the official vae_ch160v4096z32.pth (taming-style encoder / decoder)."""
    out = {}

    def conv(name, cin, cout, k):
        out[name + ".weight"], out[name + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        out[name + ".weight"], out[name + ".bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c), conv(name + ".qkv", c, 3 * c, 1), conv(name + ".proj_out", c, c, 1)

    n = len(ch_mult)
    conv("encoder.conv_in", 3, ch, 3)
    c = ch
    for i, m in enumerate(ch_mult):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
            if i == n - 1:
                attn(f"encoder.down.{i}.attn.{j}", c)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    res("encoder.mid.block_1", c, c), attn("encoder.mid.attn_1", c), res("encoder.mid.block_2", c, c)
    norm("encoder.norm_out", c), conv("encoder.conv_out", c, z, 3)
    c = ch * ch_mult[-1]
    conv("decoder.conv_in", z, c, 3)
    res("decoder.mid.block_1", c, c), attn("decoder.mid.attn_1", c), res("decoder.mid.block_2", c, c)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
            if i == n - 1:
                attn(f"decoder.up.{i}.attn.{j}", c)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c), conv("decoder.conv_out", c, 3, 3)
    conv("quant_conv", z, z, 3), conv("post_quant_conv", z, z, 3)
    out["quantize.embedding.weight"] = (V, z)
    out["quantize.ema_vocab_hit_SV"] = (K, V)
    for i in range(n_phi):
        conv(f"quantize.quant_resi.qresi_ls.{i}", z, z, 3)
    return out


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [16, 20, 24, 30])
def test_var_matches_official_layout(depth):
    with torch.device("meta"):
        model = VAR(depth=depth)
    assert shapes(model) == official_var_layout(depth)
    if depth == 16:  # the public d16 numbers, spelled out
        s = shapes(model)
        assert s["class_emb.weight"] == (1001, 1024) and s["pos_1LC"] == (1, 680, 1024)
        assert s["blocks.0.attn.mat_qkv.weight"] == (3072, 1024) and s["head.weight"] == (4096, 1024)
        assert s["blocks.15.ada_lin.1.weight"] == (6144, 1024) and "blocks.16.attn.q_bias" not in s
        assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 310  # the paper's 310M
        assert model.state_dict()["lvl_1L"].dtype == torch.long


def test_vqvae_matches_official_layout():
    with torch.device("meta"):
        vae = VQVAE()
    assert shapes(vae) == official_vae_layout()
    s = shapes(vae)
    assert s["encoder.conv_in.weight"] == (160, 3, 3, 3) and s["encoder.down.4.attn.1.qkv.weight"] == (1920, 640, 1, 1)
    assert s["decoder.conv_out.weight"] == (3, 160, 3, 3) and s["quantize.embedding.weight"] == (4096, 32)
    assert s["quantize.quant_resi.qresi_ls.3.weight"] == (32, 32, 3, 3) and s["quantize.ema_vocab_hit_SV"] == (10, 4096)
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6) == 109  # the paper's 109M tokenizer


def random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in layout.items()}


TINY_VAE = dict(ch=32, ch_mult=(1, 2), z=8, V=64, K=10, n_phi=4)  # usage stats of 10 scales, as released


def tiny_official_files(tmp_path, depth=2, V=64, fmt="pth"):
    vae_sd = random_state(official_vae_layout(**TINY_VAE))
    var_sd = random_state(official_var_layout(depth, V=V, Cvae=8, num_classes=10, patch_nums=PN), 1)
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(PN)])
    var_sd["lvl_1L"] = lvl.view(1, -1)
    var_sd["attn_bias_for_masking"] = torch.where(lvl[:, None] >= lvl[None], 0.0, -torch.inf).view(1, 1, 30, 30)
    var_sd["blocks.0.attn.zero_k_bias"].zero_()
    vae_p, var_p = tmp_path / "vae.pth", tmp_path / f"var_d{depth}.{fmt}"
    torch.save(vae_sd, vae_p)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(var_sd, str(var_p))
    else:
        torch.save(var_sd, var_p)
    return vae_p, var_p, vae_sd, var_sd


TINY_KW = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_classes=10, patch_nums=PN)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_tiny_official_checkpoint_loads_strictly(tmp_path, fmt):
    vae_p, var_p, vae_sd, var_sd = tiny_official_files(tmp_path, fmt=fmt)
    vae, var = load_official(vae_p, var_p, **TINY_KW)
    assert var.depth == 2 and var.C == 128 and var.num_heads == 2 and not var.training
    for k, v in var.state_dict().items():
        assert torch.equal(v, var_sd[k]), k
    for k, v in vae.state_dict().items():
        if k != "quantize.ema_vocab_hit_SV":  # statistics of another scale list are reset, as the official does
            assert torch.equal(v, vae_sd[k]), k
    assert vae.quantize.ema_vocab_hit_SV.shape == (len(PN), 64)
    tokens = vae.img_to_idx(torch.rand(2, 3, 8, 8) * 2 - 1)
    logits = var(torch.tensor([1, 2]), vae.idx_to_var_input(tokens))
    assert logits.shape == (2, 30, 64) and torch.isfinite(logits).all()


def test_mismatched_checkpoints_are_refused(tmp_path):
    vae_p, var_p, _, _ = tiny_official_files(tmp_path, depth=2)
    with pytest.raises(UserError, match="checkpoint has depth 2, config expects 3"):
        load_official(None, var_p, **(TINY_KW | {"depth": 3}))
    with pytest.raises(UserError, match="checkpoint has vocabulary 64, config expects 128"):
        load_official(vae_p, None, **(TINY_KW | {"vocab_size": 128}))
    with pytest.raises(UserError, match="checkpoint has vocabulary 64, config expects 128"):
        load_official(None, var_p, **(TINY_KW | {"vocab_size": 128}))
    with pytest.raises(UserError, match="checkpoint has classes 10, config expects 1000"):
        load_official(None, var_p, **(TINY_KW | {"num_classes": 1000}))
    with pytest.raises(UserError, match="not found"):
        load_official(tmp_path / "missing.pth")


def _renamed(tmp_path, var_sd, renames: dict, name="var_d2.pth"):
    """The tiny file with keys renamed (new name) or dropped (None), in the original order."""
    sd = {renames.get(k, k): v for k, v in var_sd.items() if renames.get(k, k) is not None}
    torch.save(sd, tmp_path / name)
    return tmp_path / name


def test_a_renamed_key_is_named_before_the_architecture_it_implies(tmp_path):
    """Renaming scale_mul_1H11 would read as attn_l2_norm False; the message names the keys instead, in one line."""
    _, _, _, var_sd = tiny_official_files(tmp_path, depth=2)
    p = _renamed(tmp_path, var_sd, {"blocks.0.attn.scale_mul_1H11": "blocks.0.attn.renamed"})
    with pytest.raises(UserError) as e:
        load_official(None, p, **TINY_KW)
    assert str(e.value) == ("var_d2.pth: missing key 'blocks.0.attn.scale_mul_1H11'; "
                            "unexpected key 'blocks.0.attn.renamed'")
    assert "attn_l2_norm" not in str(e.value) and len(str(e.value).splitlines()) == 1
    # several keys: the first of each (model / file order) and how many more; a defining key (head.weight)
    # renamed is named too, not reported as "not a VAR-layout checkpoint"
    p = _renamed(tmp_path, var_sd, {"head.weight": "head.w", "blocks.1.attn.scale_mul_1H11": "blocks.1.attn.s",
                                    "blocks.1.ffn.fc1.bias": None, "pos_start": "pos_begin"})
    with pytest.raises(UserError) as e:
        load_official(None, p, depth=2, **TINY_KW)
    assert str(e.value) == ("var_d2.pth: missing key 'pos_start' (and 3 more); "
                            "unexpected key 'pos_begin' (and 2 more)")
    # only a dropped key: only the missing part
    p = _renamed(tmp_path, var_sd, {"blocks.1.ffn.fc2.weight": None})
    with pytest.raises(UserError, match=r"^var_d2.pth: missing key 'blocks.1.ffn.fc2.weight'$"):
        load_official(None, p, **TINY_KW)
    # a consistent checkpoint of another architecture is still named by its architecture
    p = _renamed(tmp_path, var_sd, {k: None for k in var_sd if k.endswith("scale_mul_1H11")})
    with pytest.raises(UserError, match="checkpoint has attn_l2_norm False, config expects True"):
        load_official(None, p, **TINY_KW)
    with pytest.raises(UserError, match="not a VAR-layout checkpoint"):
        load_official(None, tmp_path / "vae.pth", **TINY_KW)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_not_executed(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_state_dict(p)


# ----------------------------------------------------------------------------- tokenizer


def test_phi_choice_matches_official_ticks():
    # Official: 4 Phi convs at ticks linspace(1/12, 11/12, 4), the one nearest to k / 9 for 10 scales.
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 4, 4) for k in range(4)] == [0, 1, 2, 3]


def kmeans(x, k, iters=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(len(c)):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    return c


def test_residual_reconstruction_error_decreases_with_scales():
    """Why it holds: every scale adds the code map nearest to the area-downsampled residual,
    upsampled. With a codebook fit (k-means) to those residuals, the added map is close to the
    residual's low-pass band at that scale, which removes that band's energy; the zero code in
    the codebook means a scale never has to add anything; at the last scale (pn = latent size)
    there is no resampling, so nearest-code quantization with a zero code cannot increase the
    error. Phi is made the identity here (centre-tap conv) to test the quantizer itself."""
    torch.manual_seed(0)
    B, C, H = 96, 4, 4
    f = sum(F.interpolate(torch.randn(B, C, s, s), size=(H, H), mode="bicubic") * a
            for s, a in ((1, 1.0), (2, 0.6), (4, 0.3))) + 0.05 * torch.randn(B, C, H, H)
    vq = VectorQuantizer(vocab_size=1 + 32 * len(PN), Cvae=C, patch_nums=PN)
    with torch.no_grad():
        for phi in vq.quant_resi.qresi_ls:
            phi.weight.zero_()
            phi.weight[:, :, 1, 1] = torch.eye(C)
            phi.bias.zero_()
        codes, f_hat = [torch.zeros(1, C)], torch.zeros_like(f)
        for si, pn in enumerate(PN):  # greedy fit: codes for the residuals each scale actually sees
            r = area(f - f_hat, pn)
            codes.append(kmeans(r.permute(0, 2, 3, 1).reshape(-1, C), 32, seed=si))
            vq.embedding.weight.zero_()
            vq.embedding.weight[:sum(len(c) for c in codes)] = torch.cat(codes)
            f_hat = f_hat + vq.phi_up(vq.embed(vq.nearest(r), pn), si, H, len(PN))
    idx, fhats = vq.f_to_idx(f, return_fhat=True)
    errors = [F.mse_loss(fh, f).item() for fh in fhats]
    assert all(b < 0.9 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < F.mse_loss(torch.zeros_like(f), f).item()
    assert [t.shape for t in idx] == [(B, p * p) for p in PN]
    assert torch.allclose(vq.idx_to_fhat(idx), fhats[-1], atol=1e-6)


def tiny_vae(residual=True, seed=0):
    torch.manual_seed(seed)
    return VQVAE(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=PN,
                 residual=residual).eval()


def test_teacher_forcing_input_is_downsampled_cumulative_fhat():
    vae = tiny_vae()
    idx = [torch.randint(0, 64, (2, p * p)) for p in PN]
    q, f_hat, expected = vae.quantize, torch.zeros(2, 8, 4, 4), []
    for si, pn in enumerate(PN[:-1]):
        up = F.interpolate(q.embed(idx[si], pn), size=(4, 4), mode="bicubic")
        f_hat = f_hat + q.quant_resi.qresi_ls[phi_index(si, 4, 4)](up)
        expected.append(F.interpolate(f_hat, size=(PN[si + 1],) * 2, mode="area").flatten(2).transpose(1, 2))
    got = vae.idx_to_var_input(idx)
    assert got.shape == (2, 29, 8)
    assert torch.allclose(got, torch.cat(expected, 1), atol=1e-6)


def test_flexvar_tokenizer_quantizes_each_scale_independently():
    vae = tiny_vae(residual=False)
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    f = vae.img_to_f(img)
    idx = vae.img_to_idx(img)
    for si, pn in enumerate(PN):  # no residual: each scale is the nearest codes of the downsampled latent
        assert torch.equal(idx[si], vae.quantize.nearest(area(f, pn)))
    inp = vae.idx_to_var_input(idx)
    nxt = F.interpolate(vae.quantize.embed(idx[1], 2), size=(3, 3), mode="bicubic").flatten(2).transpose(1, 2)
    assert torch.allclose(inp[:, 4:13], nxt, atol=1e-6)  # scale 2's input: scale 1's code map, upsampled
    assert torch.allclose(vae.idx_to_img(idx), vae.fhat_to_img(vae.quantize.embed(idx[-1], 4)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 4, 7), (2, 16, 8, 8)])
def test_decoder_upsample_is_torch_nearest(shape):
    """The decoder's 2x upsample is the official ``F.interpolate(nearest)``, bit for bit, on any layout."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        assert torch.equal(upsample_nearest_2x(t), F.interpolate(t, scale_factor=2, mode="nearest"))


def test_vqvae_training_forward_reaches_encoder_and_codebook():
    vae = tiny_vae().train()
    rec, loss = vae(torch.rand(2, 3, 8, 8) * 2 - 1)
    ((rec - 0.1) ** 2).mean().add(loss).backward()
    assert rec.shape == (2, 3, 8, 8)
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0 and vae.quantize.embedding.weight.grad.abs().sum() > 0
    assert vae.quantize.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- transformer


def tiny_var(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=64, Cvae=8, num_classes=10, depth=3, embed_dim=64, num_heads=2, patch_nums=PN)
    return VAR(**(args | kw)).eval()


def test_width_and_heads_follow_depth_by_default():
    with torch.device("meta"):
        m = VAR(vocab_size=64, Cvae=8, num_classes=10, depth=4, patch_nums=PN)
    assert (m.C, m.num_heads, m.blocks[0].attn.head_dim) == (256, 4, 64)


def test_shared_adaln_and_plain_attention_variants():
    m = tiny_var(shared_aln=True, attn_l2_norm=False).init_weights()
    names = set(m.state_dict())
    assert {"shared_ada_lin.1.weight", "blocks.0.ada_gss"} <= names and "blocks.0.attn.scale_mul_1H11" not in names
    assert not any(k.startswith("blocks.0.ada_lin") for k in names)
    logits = m(torch.tensor([1, 2]), torch.randn(2, 29, 8))
    assert logits.shape == (2, 30, 64) and torch.isfinite(logits).all()


def test_block_causal_mask_hides_later_scales():
    m = tiny_var()
    x = torch.randn(2, 29, 8)
    y = x.clone()
    y[:, 4:13] += torch.randn(2, 9, 8)  # the input of scale 2 (tokens 5..13 of the sequence)
    a, b = m(torch.tensor([1, 2]), x), m(torch.tensor([1, 2]), y)
    assert torch.equal(a[:, :5], b[:, :5])  # scales 0 and 1 are untouched
    assert not torch.allclose(a[:, 5:14], b[:, 5:14]) and not torch.allclose(a[:, 14:], b[:, 14:])
    mask = m.attn_bias_for_masking[0, 0]
    assert mask[4, :5].eq(0).all() and mask[4, 5:].eq(-torch.inf).all() and mask[29].eq(0).all()


def test_label_dropout_only_in_training():
    m = tiny_var(cond_drop_rate=1.0)
    x, labels = torch.randn(2, 29, 8), torch.tensor([1, 2])
    null = m(torch.tensor([10, 10]), x)
    assert not torch.allclose(m(labels, x), null)
    assert torch.allclose(m.train()(labels, x), null)


def test_class_ids_out_of_range_are_refused():
    m = tiny_var()
    with pytest.raises(UserError, match="class id 11 is out of range"):
        m(torch.tensor([1, 11]), torch.randn(2, 29, 8))
    with pytest.raises(UserError, match="class id -1"):
        m(torch.tensor([-1]), torch.randn(1, 29, 8))


def test_sar_inputs_as_list_and_scale_subsets():
    m = tiny_var()
    x, labels = torch.randn(2, 29, 8), torch.tensor([3, 4])
    full = m(labels, x)
    assert torch.equal(m(labels, list(x.split([4, 9, 16], 1))), full)
    last = m(labels, [x[:, 13:]], scales=[0, 3])  # start token + the last scale only
    assert last.shape == (2, 17, 64)
    assert torch.allclose(last[:, :1], full[:, :1], atol=1e-6)
    assert not torch.allclose(last[:, 1:], full[:, 14:])  # scales 1, 2 are no longer in its context
    with pytest.raises(UserError, match="must start at 0"):
        m(labels, [x[:, 13:]], scales=[3])


def test_subnet_indices():
    assert subnet_indices(16, 4) == [0, 5, 10, 15]
    assert subnet_indices(16, 5) == [0, 3, 7, 11, 15]
    assert subnet_indices(30, 2) == [0, 29] and subnet_indices(6, 6) == list(range(6)) and subnet_indices(1, 1) == [0]
    for D in (2, 7, 16, 30):
        for d in range(2, D + 1):
            s = subnet_indices(D, d)
            assert s[0] == 0 and s[-1] == D - 1 and len(set(s)) == d and s == sorted(s)
    assert not set(subnet_indices(16, 4)) <= set(subnet_indices(16, 5))  # the subnets do not nest
    for bad in ((16, 1), (16, 17), (4, 0)):
        with pytest.raises(UserError):
            subnet_indices(*bad)
    assert switch_plan(4, 3, 2, 2) == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 3]]


def test_depth_plan_passes_dropped_tokens_through():
    m = tiny_var()
    x, labels = torch.randn(2, 29, 8), torch.tensor([1, 5])
    full = m(labels, x)
    assert torch.allclose(m(labels, x, depth_plan=[[0, 1, 2]] * 4), full)
    planned = m(labels, x, depth_plan=switch_plan(3, 4, 3, 2))  # the last scale skips block 1
    assert torch.allclose(planned[:, :14], full[:, :14], atol=1e-6)
    assert not torch.allclose(planned[:, 14:], full[:, 14:])
    # skipping every block of the last scale: its hidden states are its embedded inputs, untouched
    skip = m(labels, x, depth_plan=[[0, 1, 2]] * 3 + [[]])
    cond_BD, _ = m.condition(labels)
    expect = m.logits(m.embed_scale(x[:, 13:], 3), cond_BD)
    assert torch.allclose(skip[:, 14:], expect, atol=1e-5)


def test_reference_attention_hook():
    m = tiny_var()
    x, labels = torch.randn(2, 29, 8), torch.tensor([1, 5])
    kv = []
    base = m(labels, x, kv_out=kv)
    assert len(kv) == 3 and kv[0][0].shape == (2, 2, 30, 32)
    ref = [(k[:, :, :7], v[:, :, :7]) for k, v in kv]
    hidden = m(labels, x, ref_kv=ref, ref_bias=torch.full((1, 1, 1, 7), -torch.inf))
    assert torch.allclose(hidden, base, atol=1e-6)  # masked-out references change nothing
    assert not torch.allclose(m(labels, x, ref_kv=ref), base)  # visible ones are attended to


def test_flexvar_positions_handle_new_scale_lists():
    m = tiny_var(flex=True, pos_grid=8)
    assert not hasattr(m, "lvl_embed") and m.pos_1LC.shape == (1, 64, 8, 8)
    new = (1, 2, 4, 6, 10)  # 10 > the 8x8 grid: bicubic; the others: area
    pos = [m.pos_embed(i, new) for i in range(len(new))]
    assert [p.shape[1] for p in pos] == [1, 4, 16, 36, 100]
    assert torch.equal(pos[1], m.pos_embed(1, PN)) and torch.allclose(pos[2], m.pos_embed(3, PN))
    assert torch.allclose(pos[0], m.pos_1LC.mean((2, 3)).view(1, 1, -1), atol=1e-6)
    logits = m(torch.tensor([1]), torch.randn(1, 156, 8), patch_nums=new)
    assert logits.shape == (1, 157, 64) and torch.isfinite(logits).all()
    with pytest.raises(UserError, match="only a FlexVAR model"):
        tiny_var()(torch.tensor([1]), torch.randn(1, 156, 8), patch_nums=new)


def test_official_files_can_be_saved_as_a_model_folder(tmp_path):
    """A recipe started from official files (init / tokenizer 'VAE.pth,VAR.pth') saves its checkpoints as
    model folders: the official VQ-VAE records its constructor arguments like the transformer."""
    from vgen.models.var.folder import load_var_model, save_var_model
    from vgen.vartrain.recipe import _official_arch

    vae_p, var_p, _, _ = tiny_official_files(tmp_path)
    vae, var = load_official(vae_p, var_p, **TINY_KW)
    var.arch = _official_arch(var)
    folder = save_var_model(tmp_path / "folder", vae, var, [f"class {i}" for i in range(10)], 8)
    vae2, var2, _ = load_var_model(folder)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), vae2.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(var.state_dict().values(), var2.state_dict().values()))


def test_uninitialized_skips_only_torch_nn_init():
    """Inside ``uninitialized`` every torch.nn.init call leaves its tensor as it was; other ops still compute."""
    from vgen.models.var.official import uninitialized

    t = torch.zeros(3)
    with uninitialized():
        torch.nn.init.constant_(t, 3.0)
        torch.nn.init.normal_(tensor=t)  # the keyword form, as nn.init forwards it
        lin = torch.nn.Linear(4, 4)
        computed = torch.full((2,), 4.0).log()
    assert torch.equal(t, torch.zeros(3)) and lin.weight.device.type == "cpu"
    assert torch.equal(computed, torch.full((2,), 4.0).log())
    torch.nn.init.constant_(t, 3.0)  # and nothing is skipped after it
    assert torch.equal(t, torch.full((3,), 3.0))


def test_loading_builds_uninitialised_without_dynamo_or_committed_memory():
    """Loading a model folder imports no torch._dynamo (the meta device's Python kernels did: 1.3-1.7 s of
    every `vgen sample`), and a 1B-parameter VAR (3.9 GiB in fp32) is built without writing its memory."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = """
import json, resource, sys, torch
from vgen.models.load import load
had = "torch._dynamo" in sys.modules  # a torch that imports it itself leaves nothing to check
load("assets/var-tiny-shapes")
dynamo = "torch._dynamo" in sys.modules and not had
from vgen.models.var.official import uninitialized
from vgen.models.var.var import VAR
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with uninitialized():
    v = VAR(depth=24, embed_dim=1536, num_heads=24, vocab_size=4096, Cvae=32, num_classes=1000)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"dynamo": dynamo, "params": sum(p.numel() for p in v.parameters()), "grew": grew}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["dynamo"]
    assert r["params"] > 1e9 and r["grew"] < 0.5 * 2**30, r  # initialised, it commits 3.9 GiB
