"""Sol-RL building blocks (selection, advantages, losses) against independent plain re-implementations."""

import math
import statistics

import numpy as np
import pytest
import torch

from vgen.solrl.advantages import advantages
from vgen.solrl.losses import (
    diffusionnft_loss,
    ema_decay,
    ema_update,
    flow_grpo_loss,
    forward_noise,
    kl_velocity,
    sample_s,
)
from vgen.solrl.recipe import informative
from vgen.solrl.selection import select

# ---------------------------------------------------------------- selection


def ref_select(r: list[float], k: int, rule: str) -> set[int]:
    """Deterministic rules in plain Python: sorted() over (key, index) tuples."""
    finite = [i for i, x in enumerate(r) if math.isfinite(x)]
    if k >= len(finite):
        return set(finite)
    if rule == "best_worst":
        ranked = sorted(finite, key=lambda i: (-r[i], i))
        return set(ranked[: k // 2]) | set(ranked[len(ranked) - (k - k // 2):])
    m = statistics.fmean(r[i] for i in finite)
    return set(sorted(finite, key=lambda i: (-abs(r[i] - m), i))[:k])


def reward_vectors(seed: int, count: int = 150):
    """Random reward vectors: continuous, coarse grids with many ties, some with NaN / inf holes."""
    rng = np.random.default_rng(seed)
    for j in range(count):
        n = int(rng.integers(1, 40))
        r = rng.normal(size=n) if j % 3 == 0 else rng.integers(0, 4, size=n) / 2  # dyadic: exact means, ties
        if j % 4 == 1:
            r[rng.random(n) < 0.3] = np.nan
        if j % 8 == 3:
            r[rng.random(n) < 0.1] = np.inf
        yield r, int(rng.integers(1, n + 1))


def check_basic(idx: np.ndarray, r: np.ndarray, k: int):
    n_finite = int(np.isfinite(r).sum())
    assert idx.dtype == np.int64 and list(idx) == sorted(set(idx.tolist()))
    assert len(idx) == min(k, n_finite)
    assert np.isfinite(r[idx]).all()


@pytest.mark.parametrize("rule", ["best_worst", "mean_deviation"])
def test_deterministic_rules_match_sorted(rule):
    for r, k in reward_vectors(0):
        idx = select(r, k, rule, np.random.default_rng(0))
        check_basic(idx, r, k)
        assert set(idx.tolist()) == ref_select(r.tolist(), k, rule), (r, k)


def test_best_worst_ties_by_index():
    r = np.zeros(6)
    assert select(r, 4, "best_worst").tolist() == [0, 1, 4, 5]  # head of the ranking, then its tail
    r = np.array([1.0, 2.0, 2.0, 0.0, 0.0, 1.0])
    assert select(r, 3, "best_worst").tolist() == [1, 3, 4]  # top 1 of the tied 2s is index 1; bottom 2 are 3, 4


def test_random_rules():
    for r, k in reward_vectors(1, 60):
        for rule in ("random", "extremes_random"):
            idx = select(r, k, rule, np.random.default_rng(3))
            check_basic(idx, r, k)
            assert np.array_equal(idx, select(r, k, rule, np.random.default_rng(3)))  # reproducible from the rng
            if rule == "extremes_random" and k < np.isfinite(r).sum():
                assert ref_select(r.tolist(), k // 2, "best_worst") <= set(idx.tolist())


def test_random_rules_are_uniform_over_the_rest():
    r = np.array([5.0, np.nan, 1.0, 2.0, 3.0, 4.0, 0.0, 6.0])
    rng = np.random.default_rng(0)
    counts = np.zeros(len(r))
    trials = 3000
    for _ in range(trials):
        counts[select(r, 3, "random", rng)] += 1
    assert counts[1] == 0
    np.testing.assert_allclose(counts[np.isfinite(r)] / trials, 3 / 7, atol=0.04)
    counts[:] = 0
    for _ in range(trials):
        counts[select(r, 4, "extremes_random", rng)] += 1
    # extremes: best 6.0 (index 7) and worst 0.0 (index 6) always; 2 of the 5 middle ones uniformly
    assert counts[7] == counts[6] == trials and counts[1] == 0
    np.testing.assert_allclose(counts[[0, 2, 3, 4, 5]] / trials, 2 / 5, atol=0.04)


def test_selection_edges():
    r = np.array([0.3, np.nan, 0.1, 0.9])
    for rule in ("best_worst", "mean_deviation", "random", "extremes_random"):
        assert select(np.arange(5.0), 5, rule).tolist() == [0, 1, 2, 3, 4]  # k == N: all, no rng needed
        assert select(r, 3, rule, np.random.default_rng(0)).tolist() == [0, 2, 3]  # NaN never chosen
        assert select(r, 4, rule, np.random.default_rng(0)).tolist() == [0, 2, 3]  # shortfall shows in the size
    with pytest.raises(ValueError):
        select(r, 5, "best_worst")
    with pytest.raises(ValueError):
        select(r, 0, "best_worst")
    with pytest.raises(ValueError):
        select(r, 2, "nope")
    with pytest.raises(ValueError):
        select(np.arange(8.0), 2, "random")  # a random rule needs an rng
    assert select(np.arange(8.0), 1, "extremes_random", np.random.default_rng(0)).shape == (1,)


# ---------------------------------------------------------------- advantages


def test_informative_keeps_the_prompts_with_the_most_spread():
    """Dynamic sampling against a brute force: every subset of ``keep`` prompts, the one with the
    largest total spread, ties broken towards lower indices (lexicographically first)."""
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(50):
        p, n = int(rng.integers(2, 7)), int(rng.integers(1, 6))
        keep = int(rng.integers(1, p + 1))
        r = rng.integers(0, 3, size=(p, n)).astype(np.float64) / 2  # coarse: many flat rows and ties
        r[rng.random((p, n)) < 0.15] = np.nan
        spread = [float(np.std(x[np.isfinite(x)])) if np.isfinite(x).sum() >= 2 else 0.0 for x in r]
        best = max(itertools.combinations(range(p), keep),
                   key=lambda c: (sorted((spread[i] for i in c), reverse=True), [-i for i in c]))
        assert informative(r, keep).tolist() == list(best)
    flat = np.array([[1.0, 1.0], [0.0, 1.0], [np.nan, 5.0], [0.2, 0.4]])
    assert informative(flat, 2).tolist() == [1, 3]  # the flat row and the one-finite row go last


def test_group_and_global_std():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 7))
    r[2] = 0.25  # degenerate
    eps = 1e-4
    everything = [x for row in r.tolist() for x in row]
    for mode in ("group", "global_std"):
        out = advantages(r, mode, eps)
        assert out.values.dtype == np.float32 and out.values.shape == r.shape
        assert out.n_degenerate == 1 and out.degenerate.tolist() == [False, False, True, False, False]
        for g, row in enumerate(r.tolist()):
            if g == 2:
                assert (out.values[g] == 0).all() and not out.contributes[g].any()
                continue
            scale = statistics.pstdev(row) if mode == "group" else statistics.pstdev(everything)
            want = [(x - statistics.fmean(row)) / (scale + eps) for x in row]
            np.testing.assert_allclose(out.values[g], want, rtol=1e-5, atol=1e-6)
            assert out.contributes[g].all()


def test_mc_grpo_odd_group():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(6, 5))
    out = advantages(r, "mc_grpo", 1e-4)
    for g, row in enumerate(r.tolist()):
        med = statistics.median(row)
        mad = statistics.median([abs(x - med) for x in row])
        np.testing.assert_allclose(out.values[g], [(x - med) / (mad + 1e-4) for x in row], rtol=1e-5, atol=1e-6)
        mid = row.index(med)
        assert out.values[g, mid] == 0.0
        assert out.contributes[g].tolist() == [i != mid for i in range(5)]
    assert out.n_degenerate == 0


def test_mc_grpo_ties_even_groups_and_zero_mad():
    out = advantages(np.array([[1.0, 3.0, 1.0, 3.0, 2.0, 2.0, 2.0]]), "mc_grpo")
    # sorted ascending (stable): 1,1,2(i4),2(i5),2(i6),3,3 -> the middle is index 5
    assert out.contributes[0].tolist() == [True, True, True, True, True, False, True]
    # median 2, MAD = median(1, 1, 1, 1, 0, 0, 0) = 1: the plain formula
    np.testing.assert_allclose(out.values[0], np.array([-1, 1, -1, 1, 0, 0, 0]) / (1 + 1e-4), rtol=1e-6)
    out = advantages(np.array([[2.0, 0.5, 2.0, 5.0, 2.0]]), "mc_grpo")  # MAD 0 -> mean |r - median| = 4.5 / 5
    np.testing.assert_allclose(out.values[0], np.array([0, -1.5, 0, 3, 0]) / (0.9 + 1e-4), rtol=1e-6)
    assert out.contributes[0].tolist() == [True, True, False, True, True]  # ascending: 0.5, 2(i0), 2(i2), 2(i4), 5
    assert np.abs(out.values).max() < 10
    even = np.array([[0.0, 1.0, 3.0, 4.0]])
    out = advantages(even, "mc_grpo")  # median 2, MAD 1.5, nobody excluded
    np.testing.assert_allclose(out.values[0], (even[0] - 2) / (1.5 + 1e-4), rtol=1e-6)
    assert out.contributes.all()


def test_non_finite_raises_and_valid_mask():
    for bad in (np.nan, np.inf, -np.inf):
        r = np.ones((2, 3))
        r[1, 2] = bad
        for mode in ("group", "global_std", "mc_grpo"):
            with pytest.raises(ValueError):
                advantages(r, mode)
    r = np.array([[0.0, 1.0, np.nan, 2.0], [1.0, np.nan, np.nan, 3.0]])
    valid = np.isfinite(r)
    out = advantages(r, "group", valid=valid)
    np.testing.assert_allclose(out.values[0, [0, 1, 3]], advantages(np.array([[0.0, 1.0, 2.0]])).values[0])
    assert out.values[0, 2] == 0 and out.contributes.tolist() == [[True, True, False, True], [True, False, False, True]]
    assert not np.isnan(out.values).any()
    out = advantages(np.array([[1.0, np.nan], [0.0, 1.0]]), "group", valid=[[True, False], [True, True]])
    assert out.degenerate.tolist() == [True, False]  # a single valid sample carries no signal
    with pytest.raises(ValueError):
        advantages(np.ones(4), "group")
    with pytest.raises(ValueError):
        advantages(np.ones((2, 2)), "median")


# ---------------------------------------------------------------- DiffusionNFT


def nft_reference(vt, vo, xt, x0, s, adv, amax, b, w_min=1e-5):
    """Per-sample, per-element float64 loop in torch (differentiable in vt), written from DESIGN section 5."""
    total = 0.0
    batch = vt.shape[0]
    for i in range(batch):
        r = min(max(float(adv[i]) / (2 * amax) + 0.5, 0.0), 1.0)
        sq_p, sq_n, ab_p, ab_n = 0.0, 0.0, 0.0, 0.0
        flat = [t[i].reshape(-1) for t in (vt, vo, xt, x0)]
        m = flat[0].numel()
        for j in range(m):
            v_t, v_o, x_t, x_0 = (f[j] for f in flat)
            vp = b * v_t + (1 - b) * v_o.detach()
            vn = (1 + b) * v_o.detach() - b * v_t
            ep = x_t - s[i] * vp - x_0
            en = x_t - s[i] * vn - x_0
            sq_p, sq_n = sq_p + ep * ep, sq_n + en * en
            ab_p, ab_n = ab_p + ep.detach().abs(), ab_n + en.detach().abs()
        wp, wn = max(float(ab_p) / m, w_min), max(float(ab_n) / m, w_min)
        total = total + (r * (sq_p / m) / wp + (1 - r) * (sq_n / m) / wn) / b * amax
    return total / batch


def nft_inputs(seed=0, shape=(4, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    s = torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=torch.float64)
    xt = forward_noise(x0, s, noise)
    vo = noise - x0 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    vt = (vo + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    return vt, vo, xt, x0, s


def test_forward_noise_and_kl():
    vt, vo, xt, x0, s = nft_inputs()
    noise = (xt - (1 - s.view(-1, 1, 1, 1)) * x0) / s.view(-1, 1, 1, 1)
    assert torch.allclose(forward_noise(x0, 0.0, noise), x0) and torch.allclose(forward_noise(x0, 1.0, noise), noise)
    assert torch.allclose(xt[1], 0.5 * x0[1] + 0.5 * noise[1])
    kl = kl_velocity(vt, vo)
    assert kl.shape == (4,)
    want = float(((vt[2] - vo[2]) ** 2).sum().detach()) / vt[2].numel()
    assert math.isclose(float(kl[2].detach()), want, rel_tol=1e-12)


def test_nft_loss_value_and_gradient_match_reference():
    vt, vo, xt, x0, s = nft_inputs()
    adv = torch.tensor([2.0, -0.7, 0.0, 9.0])  # the last one is clipped to r = 1
    amax, b = 5.0, 0.1
    out = diffusionnft_loss(vt, vo, xt, x0, s, adv, amax, b)
    ref = nft_reference(vt, vo, xt, x0, s, adv, amax, b)
    assert out.loss.dtype == torch.float64
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-10)
    np.testing.assert_allclose(out.r.numpy(), [0.7, 0.43, 0.5, 1.0], rtol=1e-6)
    (g_ours,) = torch.autograd.grad(out.loss, vt)
    (g_ref,) = torch.autograd.grad(ref, vt)
    assert torch.allclose(g_ours, g_ref, rtol=1e-9, atol=1e-12)
    assert g_ours.abs().sum() > 0
    # float32 / bf16 model outputs still give a float32 loss close to the float64 one
    out32 = diffusionnft_loss(vt.detach().bfloat16().float(), vo.float(), xt.float(), x0.float(), s.float(), adv,
                              amax, b)
    assert out32.loss.dtype == torch.float32 and math.isfinite(float(out32.loss))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nft_sign_property(sign):
    vt, vo, xt, x0, s = nft_inputs(1)
    vo = vt.detach().clone()  # on-policy: the old policy equals the current one
    amax = 5.0
    adv = torch.full((4,), sign * amax)

    def dist(v):
        return ((xt - s.view(-1, 1, 1, 1) * v - x0) ** 2).flatten(1).mean(1)

    out = diffusionnft_loss(vt, vo, xt, x0, s, adv, amax, 1.0)
    assert torch.all(out.r == (1.0 if sign > 0 else 0.0))
    (g,) = torch.autograd.grad(out.loss, vt)
    stepped = (vt - 0.05 * g).detach()
    after = diffusionnft_loss(stepped, vo, xt, x0, s, adv, amax, 1.0).loss
    assert after < out.loss  # the SGD step lowers the loss
    if sign > 0:
        assert torch.all(dist(stepped) < dist(vt.detach()))  # r = 1: x0_hat(v_theta) moves toward x0
    else:
        assert torch.all(dist(stepped) > dist(vt.detach()))  # r = 0: away from x0 (the negative branch)


def test_nft_zero_advantage_and_edges():
    vt, vo, xt, x0, s = nft_inputs(2)
    out = diffusionnft_loss(vt, vo, xt, x0, s, torch.zeros(4), 1.0, 1.0)
    assert torch.all(out.r == 0.5) and torch.isfinite(out.loss)
    v = vo.clone().requires_grad_()
    on = diffusionnft_loss(v, vo, xt, x0, s, torch.zeros(4), 1.0, 1.0)
    (g,) = torch.autograd.grad(on.loss, v)
    assert torch.isfinite(on.loss) and torch.allclose(g, torch.zeros_like(g), atol=1e-12)  # r = 1/2 on-policy: cancels
    # a perfect prediction: |error| = 0, the weight is clamped and nothing divides by zero
    exact = (xt - x0) / s.view(-1, 1, 1, 1)
    v = exact.clone().requires_grad_()
    perfect = diffusionnft_loss(v, exact, xt, x0, s, torch.ones(4), 1.0, 0.5)
    (g,) = torch.autograd.grad(perfect.loss, v)
    assert perfect.loss.item() < 1e-6 and torch.isfinite(g).all()
    with pytest.raises(ValueError):
        diffusionnft_loss(vt, vo, xt, x0, s, torch.zeros(4), 0.0, 1.0)
    with pytest.raises(ValueError):
        diffusionnft_loss(vt, vo, xt, x0, s, torch.zeros(4, 1), 1.0, 1.0)


def test_sample_s():
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    s = sample_s(64, sigmas, fraction=0.6, generator=g)
    assert s.shape == (64, 3)
    levels = sigmas[:-1].tolist()
    for row in s.tolist():
        assert len(set(row)) == 3 and set(row) <= set(levels)
    assert set(s[:, 0].tolist()) == set(levels)  # every level reachable
    full = sample_s(8, sigmas, generator=g)
    assert all(sorted(row) == sorted(levels) for row in full.tolist())  # fraction 1: a permutation
    assert sample_s(4, sigmas, fraction=0.01, generator=g).shape == (4, 1)
    u = sample_s(500, sigmas, mode="uniform", generator=g)
    assert u.shape == (500, 5) and u.min() >= 0.2 and u.max() <= 1.0
    u = sample_s(500, sigmas, fraction=0.2, mode="uniform", s_range=(0.3, 0.4), generator=g)
    assert u.shape == (500, 1) and u.min() >= 0.3 and u.max() <= 0.4
    a = sample_s(5, sigmas, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, sample_s(5, sigmas, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError):
        sample_s(4, sigmas, mode="logit")


# ---------------------------------------------------------------- Flow-GRPO and EMA


def test_flow_grpo_on_policy():
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    lp_old = torch.tensor([-1.3, 0.2, -0.7, -2.0])
    lp_new = lp_old.clone().requires_grad_()
    out = flow_grpo_loss(lp_new, lp_old, adv)
    assert out.loss.item() == pytest.approx(-adv.mean().item())
    assert float(out.clip_frac) == 0 and float(out.approx_kl) == 0
    (g,) = torch.autograd.grad(out.loss, lp_new)
    assert torch.allclose(g, -adv / 4)  # d/dlp of -mean(ratio A) at ratio 1
    per_step = flow_grpo_loss(lp_old[:, None].repeat(1, 3), lp_old[:, None].repeat(1, 3), adv)  # (B, T), A per sample
    assert per_step.loss.item() == pytest.approx(-adv.mean().item())
    with pytest.raises(ValueError):
        flow_grpo_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, 4))


def test_flow_grpo_clipping():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    lp_old = torch.zeros(4)
    lp_new = torch.tensor([0.01, -0.01, -0.01, 0.01], requires_grad=True)  # ratios ~1.01, 0.99, 0.99, 1.01
    out = flow_grpo_loss(lp_new, lp_old, adv, clip_range=1e-4)
    (g,) = torch.autograd.grad(out.loss, lp_new)
    # A > 0 above 1 + c and A < 0 below 1 - c: clipped, zero gradient; the other two stay pessimistic and live
    assert g[0] == 0 and g[2] == 0 and g[1] != 0 and g[3] != 0
    assert float(out.clip_frac) == 1.0
    assert float(out.approx_kl) == pytest.approx(0.5 * 1e-4, rel=1e-5)
    ratio = torch.exp(lp_new.detach())
    want = -torch.minimum(ratio * adv, ratio.clamp(1 - 1e-4, 1 + 1e-4) * adv).mean()
    assert out.loss.item() == pytest.approx(want.item())


def test_ema():
    assert ema_decay(0) == 0.0 and ema_decay(100) == pytest.approx(0.1) and ema_decay(1000) == 0.5
    assert ema_decay(10_000) == 0.5
    old = [torch.full((3,), 2.0), torch.zeros(2, 2)]
    new = [torch.full((3,), 4.0, requires_grad=True), torch.ones(2, 2, dtype=torch.float64)]
    assert ema_update(old, new, 100) == pytest.approx(0.1)
    assert torch.allclose(old[0], torch.full((3,), 0.1 * 2 + 0.9 * 4)) and old[1].dtype == torch.float32
    assert torch.allclose(old[1], torch.full((2, 2), 0.9))
    ema_update(old, new, 0)
    assert torch.equal(old[0], new[0].detach()) and not old[0].requires_grad
    ema_update(iter(old), (p for p in new), 5000)
    with pytest.raises(ValueError):
        ema_update(old, new[:1], 1)


def test_candidate_seeds_fit_int64_for_every_allowed_run_seed():
    """Any run.seed below 2**32 gives int64 candidate seeds, distinct within an iteration, and small
    seeds keep exactly the values of the original rule (run.seed * 1_000_003 + step) * 1_000_000 + i."""
    from types import SimpleNamespace

    from vgen.solrl.recipe import _seeds

    for seed in (0, 1, 2**22, 2**23 - 1, 2**32 - 1):
        cfg = SimpleNamespace(run=SimpleNamespace(seed=seed))
        s = _seeds(cfg, 10**7, 4, 96)
        assert s.dtype == np.int64 and len(np.unique(s)) == s.size and (s >= 0).all()
        if seed < 2**23:
            assert int(s[0, 0]) == (seed * 1_000_003 + 10**7) * 1_000_000 and int(s[3, 95]) == int(s[0, 0]) + 383
