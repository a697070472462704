"""Scale-wise sampler: KV cache vs recompute, per-sample seeds, CFG / top-k / top-p, depth plans, TF consistency."""

import pytest
import torch

from vgen.engine.invariance import batch_invariant
from vgen.engine.scalewise import (
    DECODE_POSITIONS,
    DRAWS,
    cfg_mix,
    decode,
    draw,
    filter_logits,
    free_dropped,
    sample,
    teacher_forcing_inputs,
)
from vgen.engine.seeds import step_seed
from vgen.errors import UserError
from vgen.models.var import VAR, VQVAE, switch_plan
from vgen.models.var.vqvae import bicubic

PN = (1, 2, 3, 4)
KW = dict(cfg=2.0, top_k=24, top_p=0.9)


def models(flex=False, seed=0):
    torch.manual_seed(seed)
    vae = VQVAE(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, using_sa=False, patch_nums=PN,
                residual=not flex).eval()
    var = VAR(vocab_size=64, Cvae=8, num_classes=10, depth=3, embed_dim=64, num_heads=2, patch_nums=PN, flex=flex,
              pos_grid=8).eval()
    return var, vae


@pytest.fixture(scope="module")
def pair():
    return models()


def same_tokens(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))


def test_kv_cache_matches_full_recompute(pair):
    var, vae = pair
    cached = sample(var, vae, [1, 2, 3], [10, 11, 12], return_logprobs=True, **KW)
    full = sample(var, vae, [1, 2, 3], [10, 11, 12], use_cache=False, return_logprobs=True, **KW)
    assert same_tokens(cached, full)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(cached.logprobs, full.logprobs))
    assert [t.shape for t in cached.tokens] == [(3, p * p) for p in PN]
    assert cached.images.shape == (3, 3, 8, 8) and 0 <= cached.images.min() and cached.images.max() <= 1
    assert len({tuple(t.tolist()) for t in cached.tokens[-1]}) == 3  # distinct seeds, distinct samples


@pytest.mark.parametrize("flex", [False, True])
@pytest.mark.parametrize("cfg", [2.0, 0.0])
def test_sample_is_the_same_alone_and_in_a_batch(flex, cfg):
    """Bit-identical tokens, f_hat and image alone, in a batch of 4 and one of 20 (no model call is padded,
    so the first scales' matmuls have 1-2 rows alone and 20-40 in the batch)."""
    var, vae = models(flex=flex)
    kw = dict(KW, cfg=cfg)
    alone = sample(var, vae, [7], [5], **kw)
    for classes, seeds, at in (([4, 1, 7, 4], [3, 99, 5, 1234], 2), (list(range(10)) * 2, list(range(20)), 7)):
        seeds[at], classes[at] = 5, 7
        batch = sample(var, vae, classes, seeds, **kw)
        assert all(torch.equal(t[at:at + 1], a) for t, a in zip(batch.tokens, alone.tokens, strict=True))
        assert torch.equal(batch.f_hat[at:at + 1], alone.f_hat) and torch.equal(batch.images[at:at + 1], alone.images)
    assert not same_tokens(alone, sample(var, vae, [7], [6], **kw))


@torch.no_grad()
def test_decode_in_chunks_is_the_one_call_decode_bit_for_bit(pair, monkeypatch):
    """On CPU the decoder sees a few latents at a time (for cache locality); every image is the same bits
    as in one whole-batch call and alone, and a chunk holds DECODE_POSITIONS latent positions."""
    _, vae = pair
    f = torch.randn(19, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with batch_invariant(vae):
        whole = (vae.fhat_to_img(f) + 1) / 2
    sizes, fhat_to_img = [], vae.fhat_to_img
    monkeypatch.setattr(vae, "fhat_to_img", lambda x: sizes.append(len(x)) or fhat_to_img(x))
    assert torch.equal(decode(vae, f), whole)
    n = DECODE_POSITIONS // 64
    assert sizes == [n] * (19 // n) + [19 % n]
    assert all(torch.equal(decode(vae, f[i:i + 1]), whole[i:i + 1]) for i in (0, 9, 18))


def test_sampling_ignores_and_keeps_training_mode():
    var, vae = models()
    var.cond_drop_rate = 1.0  # in training mode every label would become the null class
    ref = sample(var, vae, [2], [7], use_cache=False, **KW)
    var.train()
    assert same_tokens(ref, sample(var, vae, [2], [7], use_cache=False, **KW)) and var.training


def test_teacher_forcing_logits_equal_the_samplers(pair):
    var, vae = pair
    s = sample(var, vae, [2, 9], [7, 8], return_logits=True, **KW)
    tf = var(torch.tensor([2, 9]), teacher_forcing_inputs(vae, s.tokens))
    assert torch.allclose(tf, torch.cat(s.logits, 1), atol=1e-5)
    assert torch.allclose(s.f_hat, vae.quantize.idx_to_fhat(s.tokens), atol=1e-6)


def test_flexvar_sampling_and_teacher_forcing():
    var, vae = models(flex=True)
    s = sample(var, vae, [2, 9], [7, 8], return_logits=True, **KW)
    tf = var(torch.tensor([2, 9]), teacher_forcing_inputs(vae, s.tokens))
    assert torch.allclose(tf, torch.cat(s.logits, 1), atol=1e-5)
    assert same_tokens(s, sample(var, vae, [2, 9], [7, 8], use_cache=False, **KW))
    new = (1, 2, 4, 6)  # a scale list the model was not built with
    t = sample(var, vae, [2], [7], patch_nums=new, **KW)
    assert [x.shape[1] for x in t.tokens] == [1, 4, 16, 36] and t.images.shape == (1, 3, 12, 12)
    assert torch.equal(t.tokens[1], s.tokens[1][:1])  # the shared prefix (1, 2) samples identically


def test_depth_plan_frees_dropped_caches_and_matches_recompute(pair):
    var, vae = pair
    plan = switch_plan(3, 4, 2, 2)  # scales 2, 3 run blocks 0 and 2 only
    cached = sample(var, vae, [1, 5], [3, 4], depth_plan=plan, **KW)
    assert cached.freed == {2: [1]}
    assert same_tokens(cached, sample(var, vae, [1, 5], [3, 4], depth_plan=plan, use_cache=False, **KW))
    assert not same_tokens(cached, sample(var, vae, [1, 5], [3, 4], **KW))
    assert same_tokens(sample(var, vae, [1, 5], [3, 4], depth_plan=[[0, 1, 2]] * 4, **KW),
                       sample(var, vae, [1, 5], [3, 4], **KW))
    with pytest.raises(UserError, match="depth plan has 2 scales"):
        sample(var, vae, [1], [3], depth_plan=plan[:2])


def test_free_dropped():
    caches = [{"k": 1, "v": 1}, {"k": 2, "v": 2}, {}]
    plan = [[0, 1, 2], [0, 2], [1]]
    assert free_dropped(caches, plan, 0) == []
    assert free_dropped(caches, plan, 2) == [0] and caches[0] == {} and caches[1]
    assert free_dropped(caches, None, 2) == []


def test_inputs_override(pair):
    var, vae = pair
    base = sample(var, vae, [3], [1], **KW)
    natural = teacher_forcing_inputs(vae, base.tokens)
    same = sample(var, vae, [3], [1], inputs_override={2: natural[:, 4:13]}, **KW)
    assert same_tokens(base, same)
    moved = sample(var, vae, [3], [1], inputs_override={2: natural[:, 4:13] + 3.0}, **KW)
    assert all(torch.equal(a, b) for a, b in zip(base.tokens[:2], moved.tokens[:2]))
    assert not torch.equal(base.tokens[2], moved.tokens[2])
    with pytest.raises(UserError, match="inputs_override"):
        sample(var, vae, [3], [1], inputs_override={2: natural[:, :4]})


def test_bad_requests_are_refused(pair):
    var, vae = pair
    with pytest.raises(UserError, match="class id 11 is out of range"):  # 10 is the null class: allowed
        sample(var, vae, [10, 11], [0, 1])
    with pytest.raises(UserError, match="class id -3 is out of range"):
        sample(var, vae, [-3], [0])
    with pytest.raises(UserError, match="2 class ids but 1 seeds"):
        sample(var, vae, [1, 2], [0])
    assert sample(var, vae, [10], [0], cfg=0, decode_images=False).images is None
    for n in (0, len(PN) + 1):
        with pytest.raises(UserError, match=r"n_scales must be in 1\.\.4"):
            sample(var, vae, [1], [0], n_scales=n)
    with pytest.raises(UserError, match="unknown draw rule 'cdf'"):
        sample(var, vae, [1], [0], draw_rule="cdf")


def test_cfg_ramp_and_filters():
    cond, null = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    both = torch.cat([cond, null])
    assert torch.equal(cfg_mix(both, 2, 4.0, 0, 5), cond)
    assert torch.allclose(cfg_mix(both, 2, 4.0, 4, 5), 5 * cond - 4 * null)
    assert torch.allclose(cfg_mix(both, 2, 4.0, 2, 5), 3 * cond - 2 * null)
    x = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    assert torch.isinf(filter_logits(x, top_k=2)).tolist() == [[[False, False, True, True]]]
    p = x.softmax(-1)[0, 0]  # 0.64, 0.24, 0.09, 0.03
    assert p[0] < 0.7 < p[0] + p[1]
    assert torch.isinf(filter_logits(x, top_p=0.7)).tolist() == [[[False, False, True, True]]]
    assert torch.isinf(filter_logits(x, top_p=0.5)).tolist() == [[[False, True, True, True]]]


def test_draw_follows_seeds_and_never_picks_filtered_tokens():
    logits = filter_logits(torch.randn(3, 50, 16), top_k=3)
    idx = draw(logits, [1, 2, 3], 0)
    assert torch.isfinite(logits.gather(-1, idx.unsqueeze(-1))).all()
    assert torch.equal(draw(logits[1:2], [2], 0), idx[1:2]) and not torch.equal(draw(logits, [1, 2, 3], 1), idx)
    # frequencies follow the probabilities
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    many = draw(probs.log().expand(1, 4000, 4), [5], 0)
    freq = many.flatten().bincount(minlength=4) / 4000
    assert torch.allclose(freq, probs, atol=0.03) and freq[3] == 0


def test_gumbel_draw_is_the_argmax_of_logits_plus_gumbel_noise_and_samples_the_categorical():
    from scipy.stats import chisquare

    logits = filter_logits(torch.randn(3, 50, 16), top_k=3)
    idx = draw(logits, [1, 2, 3], 4, "gumbel")
    for b, seed in enumerate([1, 2, 3]):  # the rule, row by row from the row's own seed
        u = torch.rand(50, 16, generator=torch.Generator().manual_seed(step_seed(seed, 4)), dtype=torch.float64)
        assert torch.equal(idx[b], (logits[b].double() - torch.log(-torch.log(u))).argmax(-1))
    assert torch.isfinite(logits.gather(-1, idx.unsqueeze(-1))).all()
    assert torch.equal(draw(logits[1:2], [2], 4, "gumbel"), idx[1:2])
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    counts = draw(probs.log().expand(1, 20000, 5), [5], 0, "gumbel").flatten().bincount(minlength=5)
    assert counts[4] == 0 and chisquare(counts[:4].numpy(), 20000 * probs[:4].numpy()).pvalue > 1e-3


def test_gumbel_keeps_more_tokens_of_a_seed_when_the_logits_are_rounded():
    """The two rules draw from the same distribution but couple a seed's draws under slightly
    different logits (an explore copy's bf16 against fp32) differently. Gumbel-max changes a token
    with probability at most 2 TV / (1 + TV) (TV: the two distributions' total variation); the
    inverse CDF changes it whenever the uniform falls between an old and a new boundary, and every
    token's error moves all later boundaries."""
    torch.manual_seed(0)
    logits = filter_logits(3 * torch.randn(1, 4000, 64), top_k=40)
    rounded = logits.bfloat16().float()
    changed = {r: (draw(logits, [7], 0, r) != draw(rounded, [7], 0, r)).double().mean().item() for r in DRAWS}
    tv = 0.5 * (logits.softmax(-1) - rounded.softmax(-1)).abs().sum(-1).double()
    bound = (2 * tv / (1 + tv)).mean().item()
    assert 0 < changed["gumbel"] <= bound * 1.2 + 2e-3
    assert changed["inverse_cdf"] > 5 * changed["gumbel"]  # here 2.3% against 0.15% (bound 0.57%)


@pytest.mark.parametrize("flex", [False, True])
def test_a_preview_is_the_full_samples_first_scales_decoded(flex):
    var, vae = models(flex=flex)
    full = sample(var, vae, [1, 2, 5], [10, 11, 12], return_logprobs=True, **KW)
    pre = sample(var, vae, [1, 2, 5], [10, 11, 12], return_logprobs=True, n_scales=2, **KW)
    assert len(pre.tokens) == 2 and all(torch.equal(a, b) for a, b in zip(pre.tokens, full.tokens[:2]))
    assert all(torch.equal(a, b) for a, b in zip(pre.logprobs, full.logprobs[:2]))
    f = None  # the latent of the first two scales' tokens, built step by step (the batch's convs: float rounding)
    with torch.no_grad():
        for si in range(2):
            f, _ = vae.quantize.next_input(si, f, vae.quantize.embed(pre.tokens[si], PN[si]), PN)
    assert torch.allclose(pre.f_hat, bicubic(f, PN[-1]), atol=1e-6) and pre.f_hat.shape == full.f_hat.shape
    assert torch.equal(pre.images, decode(vae, pre.f_hat)) and pre.images.shape == full.images.shape
    assert same_tokens(sample(var, vae, [1, 2, 5], [10, 11, 12], n_scales=len(PN), **KW), full)


def test_logprobs_are_of_the_sampling_distribution(pair):
    var, vae = pair
    greedy = sample(var, vae, [1], [0], cfg=1.0, top_k=1, return_logprobs=True, return_logits=True)
    assert all(torch.equal(lp, torch.zeros_like(lp)) for lp in greedy.logprobs)
    s = sample(var, vae, [1], [0], cfg=0, return_logprobs=True, return_logits=True)
    for lg, t, lp in zip(s.logits, s.tokens, s.logprobs):
        assert torch.allclose(lg.log_softmax(-1).gather(-1, t.unsqueeze(-1)).squeeze(-1), lp, atol=1e-5)
