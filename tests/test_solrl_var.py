"""RL on VAR token policies (recipe solrl_var): exact log-probs, the token loss and KL against
independent computations, the families end to end, exact resume, 2 processes = 1, NaN rewards."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import gpu_only, tiny_var_models
from safetensors.torch import load_file
from test_cli import user_error
from test_var_train import assert_same_metrics, kill_after_first_checkpoint, two_processes

from vgen.cli import main
from vgen.engine.scalewise import sample, token_logprobs
from vgen.rewards import registry
from vgen.solrl.tokens import per_scale_mean, token_grpo_loss, token_kl
from vgen.train.checkpoint import latest_checkpoint

TINY_YAML = "configs/solrl_var/tiny.yaml"
VOLATILE = ("time_", "images_per_s")
NO_EVAL = "eval_seeds=0"  # runs whose held-out evaluation (70 classes, before and after) no assertion reads


@pytest.fixture(autouse=True)
def _test_rewards():
    def nan_half(images, prompts):
        r = images.reshape(len(images), -1).mean(1) / 255.0
        r[::2] = np.nan
        return r

    def all_nan(images, prompts):
        return np.full(len(images), np.nan)

    extra = {"test_nan": lambda: nan_half, "test_all_nan": lambda: all_nan,
             "test_brightness": lambda: (lambda images, prompts: images.reshape(len(images), -1).mean(1) / 255.0)}
    for k, v in extra.items():
        registry._BUILTIN[k] = v
    yield
    for k in extra:
        registry._BUILTIN.pop(k, None)


def _args(tmp_path, name, *extra):
    return [TINY_YAML, f"run.out_dir={tmp_path}", f"run.name={name}", *extra]


def _metrics(run, volatile=VOLATILE):
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(volatile)} for r in rows}


def lively(var, seed=1):
    """Every linear at PyTorch's default init (init_weights starts the AdaLN gammas near 0, so the
    blocks would barely touch the logits)."""
    torch.manual_seed(seed)
    for m in var.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    return var


# ---------------------------------------------------------------- exact log-probs


@pytest.mark.parametrize("flex", [False, True])
@pytest.mark.parametrize("kw", [dict(cfg=2.0, top_k=8), dict(cfg=0.0), dict(cfg=1.5, top_p=0.7),
                                dict(cfg=3.0, top_k=12, top_p=0.8)])
def test_recomputed_logprobs_equal_the_samplers(flex, kw):
    """Under unchanged weights the ratio is 1 within 1e-6 (here: bit for bit), with CFG and top-k / top-p
    as sampled, in another batch composition than the sampler's."""
    vae, var = tiny_var_models(flex=flex)
    var = lively(var)
    cls, seeds = [3, 5, 69, 0, 12, 40, 7], list(range(100, 107))
    s = sample(var, vae, cls, seeds, return_logprobs=True, decode_images=False, **kw)
    for part in (slice(0, 7), slice(2, 5)):  # all at once, and three of them alone
        lp = token_logprobs(var, vae, cls[part], [t[part] for t in s.tokens], kw["cfg"], kw.get("top_k", 0),
                            kw.get("top_p", 0.0))
        for a, b in zip(lp, s.logprobs):
            assert (a - b[part]).exp().sub(1).abs().max() <= 1e-6
            assert torch.equal(a, b[part])
    assert any(float(t.min()) < -0.5 for t in s.logprobs)  # not a degenerate distribution


@pytest.mark.parametrize("flex", [False, True])
def test_gumbel_drawn_tokens_recompute_their_logprobs(flex):
    """The draw rule changes which tokens a seed gives, not their distribution: the log-probs are the same."""
    vae, var = tiny_var_models(flex=flex)
    var = lively(var)
    cls, seeds, kw = [3, 5, 69, 0], [100, 101, 102, 103], dict(cfg=2.0, top_k=8, top_p=0.0)
    s = sample(var, vae, cls, seeds, return_logprobs=True, decode_images=False, draw_rule="gumbel", **kw)
    assert not all(torch.equal(a, b) for a, b in zip(s.tokens, sample(var, vae, cls, seeds, decode_images=False,
                                                                         **kw).tokens))
    lp = token_logprobs(var, vae, cls, s.tokens, **kw)
    assert all(torch.equal(a, b) for a, b in zip(lp, s.logprobs))


@pytest.mark.slow
def test_the_real_base_explore_copy_keeps_more_of_a_seeds_tokens_with_gumbel_draws():
    """What ``draw: gumbel`` is for: the bf16 explore copy and the fp32 policy, same seeds, share more
    of their tokens (on 2 x 16 seeds here: 0.44 of them with the inverse CDF, 0.85 with Gumbel)."""
    from vgen.models.load import load
    from vgen.sample import var_settings
    from vgen.solrl.var_recipe import Policy, _explore_copy

    m = load("assets/var-tiny-shapes")
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    explore = _explore_copy(pol, "bf16")
    cls, seeds = [4] * 16 + [60] * 16, list(range(3_000_000, 3_000_032))
    shared = {}
    for rule in ("inverse_cdf", "gumbel"):
        a, b = (sample(v, q, cls, seeds, decode_images=False, draw_rule=rule, **pol.sampling)
                for v, q in (explore, (m.var, m.vqvae)))
        shared[rule] = float(torch.cat([x == y for x, y in zip(a.tokens, b.tokens)], 1).double().mean())
    assert shared["gumbel"] > shared["inverse_cdf"] + 0.25, shared


def test_the_real_base_recomputes_its_own_logprobs():
    from vgen.models.load import load

    m = load("assets/var-tiny-shapes")
    s = sample(m.var, m.vqvae, list(range(0, 70, 7)), list(range(10)), cfg=2.0, top_k=40, return_logprobs=True,
               decode_images=False)
    lp = token_logprobs(m.var, m.vqvae, list(range(0, 70, 7)), s.tokens, 2.0, 40)
    assert all(torch.equal(a, b) for a, b in zip(lp, s.logprobs))


@gpu_only()
def test_the_real_base_recomputes_its_own_logprobs_on_a_gpu():
    """On CUDA the same batch recomputes the sampler's log-probs bit for bit (the same kernels on the same
    shapes); another batch composition within 1e-5 of a ratio of 1, since cuBLAS picks its kernels by
    shape (on a CPU, batch invariance makes that bit for bit too)."""
    from vgen.models.load import load

    m = load("assets/var-tiny-shapes", device="cuda")
    cls, seeds = list(range(0, 70, 7)), list(range(10))
    for rule in ("inverse_cdf", "gumbel"):
        s = sample(m.var, m.vqvae, cls, seeds, cfg=2.0, top_k=40, return_logprobs=True, decode_images=False,
                   draw_rule=rule)
        lp = token_logprobs(m.var, m.vqvae, cls, s.tokens, 2.0, 40)
        assert all(torch.equal(a, b) for a, b in zip(lp, s.logprobs))
        lp = token_logprobs(m.var, m.vqvae, cls[3:6], [t[3:6] for t in s.tokens], 2.0, 40)
        assert max(float((a - b[3:6]).exp().sub(1).abs().max()) for a, b in zip(lp, s.logprobs)) <= 1e-5


@gpu_only((8, 9), "fp8 needs a CUDA GPU with sm_89+")
def test_the_real_base_fp8_explore_copy_keeps_more_of_a_seeds_tokens_with_gumbel_draws():
    """The explore copy of a Hopper GPU: fp8 linears (torchao rowwise) and a bf16 VQ-VAE; as the CPU's bf16
    copy, it shares more of a seed's tokens with the fp32 policy under Gumbel draws."""
    from vgen.models.load import load
    from vgen.sample import var_settings
    from vgen.solrl.var_recipe import Policy, _explore_copy

    m = load("assets/var-tiny-shapes", device="cuda")
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    explore = _explore_copy(pol, "fp8")
    assert explore[0].vgen_backend == "fp8" and next(explore[1].parameters()).dtype == torch.bfloat16
    cls, seeds = [4] * 16 + [60] * 16, list(range(3_000_000, 3_000_032))
    shared = {}
    for rule in ("inverse_cdf", "gumbel"):
        a, b = (sample(v, q, cls, seeds, draw_rule=rule, **pol.sampling) for v, q in (explore, (m.var, m.vqvae)))
        assert torch.isfinite(a.images).all() and a.images.shape == b.images.shape
        shared[rule] = float(torch.cat([x == y for x, y in zip(a.tokens, b.tokens)], 1).double().mean())
    assert shared["gumbel"] > shared["inverse_cdf"], shared


def test_logprobs_are_differentiable_through_class_and_null_rows_and_stay_finite_off_support():
    vae, var = tiny_var_models()
    var = lively(var)
    s = sample(var, vae, [1, 2], [0, 1], cfg=2.0, top_k=4, return_logprobs=True, decode_images=False)
    lp = token_logprobs(var, vae, [1, 2], s.tokens, 2.0, 4)
    sum(t.sum() for t in lp).backward()
    g = var.class_emb.weight.grad
    assert g[1].abs().sum() > 0 and g[var.num_classes].abs().sum() > 0 and g[5].abs().sum() == 0
    # a token outside the top-k support keeps a finite log-prob (its own logit), and the support's
    # normaliser grows by exactly that token's mass
    forced = [t.clone() for t in s.tokens]
    with torch.no_grad():
        full = token_logprobs(var, vae, [1, 2], forced, 2.0, 0)
        low = token_logprobs(var, vae, [1, 2], forced, 2.0, 1)  # support: the top token, plus the forced one
    assert all(torch.isfinite(t).all() for t in low) and all((a >= b - 1e-6).all() for a, b in zip(low, full))
    assert any((a < 0).any() for a in low)  # some forced tokens were outside the top-1 support


def test_bad_token_maps_are_a_clear_error():
    from vgen.errors import UserError

    vae, var = tiny_var_models()
    with pytest.raises(UserError, match="one \\(B, pn\\^2\\) map per scale"):
        token_logprobs(var, vae, [1], [torch.zeros(1, 1, dtype=torch.long)], 1.0)


# ---------------------------------------------------------------- the loss and the KL


def test_token_loss_matches_a_per_token_loop_and_normalises_per_scale():
    g = torch.Generator().manual_seed(0)
    lengths = [1, 4, 16]
    new = [torch.randn(3, n, generator=g) * 0.3 for n in lengths]
    old = [x + torch.randn(x.shape, generator=g) * 0.3 for x in new]
    adv = torch.tensor([1.5, -0.7, 0.0])
    clip = 0.2
    out = token_grpo_loss(new, old, adv, clip)
    for b in range(3):
        per_scale = []
        for si in range(3):
            terms = []
            for i in range(lengths[si]):
                r = float(np.exp(new[si][b, i].item() - old[si][b, i].item()))
                a = adv[b].item()
                terms.append(-min(r * a, min(max(r, 1 - clip), 1 + clip) * a))
            per_scale.append(np.mean(terms))
        assert out.per_sample[b].item() == pytest.approx(np.mean(per_scale), rel=1e-5, abs=1e-7)
    flat = token_grpo_loss(new, old, adv, clip, norm="token")
    for b in range(3):
        allterms = torch.cat([-torch.minimum((n - o).exp() * adv[b], (n - o).exp().clamp(1 - clip, 1 + clip) * adv[b])
                              for n, o in zip((x[b] for x in new), (x[b] for x in old))])
        assert flat.per_sample[b].item() == pytest.approx(allterms.mean().item(), rel=1e-5, abs=1e-7)
    ratios = torch.cat([(n - o).exp() for n, o in zip(new, old)], 1)
    assert out.clip_frac.item() == pytest.approx(((ratios - 1).abs() > clip).float().mean().item())


def test_per_scale_normalisation_gives_every_scale_the_same_gradient_share():
    """At ratio 1 each scale's tokens together get 1/K of a sample's gradient, whatever their number."""
    lengths = [1, 4, 64]
    new = [torch.zeros(1, n, requires_grad=True) for n in lengths]
    token_grpo_loss(new, [x.detach() for x in new], torch.tensor([1.0]), 0.2).per_sample.sum().backward()
    assert [float(x.grad.sum()) for x in new] == pytest.approx([-1 / 3] * 3)
    new2 = [torch.zeros(1, n, requires_grad=True) for n in lengths]
    token_grpo_loss(new2, [x.detach() for x in new2], torch.tensor([1.0]), 0.2, "token").per_sample.sum().backward()
    assert [float(x.grad.sum()) for x in new2] == pytest.approx([-n / 69 for n in lengths])
    with pytest.raises(ValueError, match="unknown normalisation"):
        per_scale_mean(new, "scales")


def test_k3_kl_averaged_over_the_policy_is_the_exact_kl():
    """E_p[exp(d) - d - 1], d = log q - log p, summed exactly over every token, equals KL(p || q)."""
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(5, 30, generator=g), torch.randn(5, 30, generator=g)
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    k3 = token_kl([lp], [lq], norm="token")  # (5,) mean over the 30 "tokens" of each row
    weighted = (lp.exp() * ((lq - lp).exp() - (lq - lp) - 1)).sum(-1)
    exact = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p_logits),
                                              torch.distributions.Categorical(logits=q_logits))
    assert torch.allclose(weighted, exact, atol=1e-5)
    assert torch.allclose(k3, ((lq - lp).exp() - (lq - lp) - 1).mean(-1))
    assert (k3 >= 0).all() and token_kl([lp], [lp]).abs().max() == 0


def test_one_update_raises_the_positive_samples_logprob_and_lowers_the_negatives():
    """The sign of the update: a step on one positive and one negative sample moves each token
    log-prob of the positive up and of the negative down on average."""
    vae, var = tiny_var_models()
    var = lively(var)
    s = sample(var, vae, [4, 4], [0, 1], cfg=1.0, return_logprobs=True, decode_images=False)
    opt = torch.optim.SGD(var.parameters(), lr=0.05)
    lp = token_logprobs(var, vae, [4, 4], s.tokens, 1.0)
    token_grpo_loss(lp, s.logprobs, torch.tensor([1.0, -1.0]), 0.2).per_sample.mean().backward()
    opt.step()
    with torch.no_grad():
        after = token_logprobs(var, vae, [4, 4], s.tokens, 1.0)
    change = per_scale_mean([a - b for a, b in zip(after, s.logprobs)])
    assert change[0] > 0 > change[1]


# ---------------------------------------------------------------- the recipe


@pytest.mark.parametrize("family", ["sol_rl", "k_in_k", "naive_scaling", "naive_quant"])
@pytest.mark.slow
def test_each_family_runs_logs_and_checkpoints_a_loadable_model(tmp_path, family, capsys):
    evaluated = family == "sol_rl"  # the held-out evaluation is the same code for every family
    assert main(["train", *_args(tmp_path, family, f"family={family}", "reward={test_brightness: 1.0}",
                                 *([] if evaluated else [NO_EVAL]))]) == 0
    run = tmp_path / family
    m = _metrics(run, volatile=())
    if evaluated:
        assert sorted(m) == [0, 1, 2] and "eval_strict" in m[0] and "eval_strict" in m[2] and "eval_score" in m[2]
    else:  # eval_seeds=0: no row for the base, no scores, no report
        assert sorted(m) == [1, 2] and not any(k.startswith("eval_") for r in m.values() for k in r)
        assert not (run / "eval").exists()
    for key in ("reward_mean", "time_explore", "time_update", "loss", "clip_frac", "grad_norm", "degenerate_groups"):
        assert key in m[1], key
    assert m[1]["trained_samples"] == 4 * (2 - m[1]["degenerate_groups"])
    assert ("rank_tau" in m[1]) == (family == "sol_rl")
    assert ("time_refresh" in m[1]) == (family in ("sol_rl", "naive_quant"))
    assert m[1]["time_regenerate"] > (0.05 if family == "sol_rl" else -1)
    # every checkpoint is a VAR model folder with the LoRA merged: `vgen eval` reads the run
    ck = latest_checkpoint(run)
    assert (ck / "var.safetensors").is_file() and not any("lora" in k for k in load_file(str(ck / "var.safetensors")))
    assert main(["eval", "--model", str(run), "--seeds", "2000000", "--n", "1", "--out", str(tmp_path / f"ev{family}"),
                 "--metrics", "geneval"]) == 0
    assert ("held-out GenEval-Shapes strict accuracy" in capsys.readouterr().out) == evaluated  # training's summary
    if family == "sol_rl":  # and exports as a VAR model folder with its card
        assert main(["export", str(run), str(tmp_path / "export")]) == 0
        assert (tmp_path / "export" / "var.safetensors").is_file() and (tmp_path / "export" / "README.md").is_file()


def test_the_saved_folder_samples_as_the_trained_policy(tmp_path):
    """The merged checkpoint folder gives the policy's distribution: its log-probs of the policy's own
    samples agree to float rounding (merging LoRA rounds differently, so not bit for bit)."""
    from vgen.models.load import load
    from vgen.solrl.var_recipe import SolRLVARConfig, _setup
    from vgen.train.checkpoint import load_state
    from vgen.train.dist import Dist

    assert main(["train", *_args(tmp_path, "m", "reward={test_brightness: 1.0}", "lr=0.01", NO_EVAL)]) == 0
    ck = latest_checkpoint(tmp_path / "m")
    cfg = SolRLVARConfig(lora_rank=4)
    policy = _setup(cfg, Dist(), ck, load_state(ck))
    saved = load(str(tmp_path / "m"))
    s = sample(policy.var, policy.vqvae, [3, 9, 50], [5, 6, 7], return_logprobs=True, decode_images=False,
               **policy.sampling)
    with torch.no_grad():
        lp = token_logprobs(saved.var, saved.vqvae, [3, 9, 50], s.tokens, **policy.sampling)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(lp, s.logprobs))
    base = load("assets/var-tiny-shapes")
    with torch.no_grad():
        lp0 = token_logprobs(base.var, base.vqvae, [3, 9, 50], s.tokens, **policy.sampling)
    assert max(float((a - b).abs().max()) for a, b in zip(lp0, s.logprobs)) > 1e-3  # it did train


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    common = ["iterations=4", "checkpoint_every=2", "inner_epochs=2",
              "kl_beta=0.1", "explore_classes=3", NO_EVAL]  # the evaluation's resume: the test below
    assert main(["train", *_args(tmp_path, "ref", *common)]) == 0
    kill_after_first_checkpoint(_args(tmp_path, "k", *common), tmp_path / "k")
    assert main(["train", *_args(tmp_path, "k", *common)]) == 0
    assert "resumed" in capsys.readouterr().out
    ref = _metrics(tmp_path / "ref")
    assert _metrics(tmp_path / "k") == ref and ref[3]["kl"] > 0 and "explore_flat_classes" in ref[3]
    a = load_file(str(tmp_path / "ref" / "checkpoints" / "step-000004" / "var.safetensors"))
    b = load_file(str(tmp_path / "k" / "checkpoints" / "step-000004" / "var.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_full_fine_tuning_resumes_too(tmp_path):
    common = ["iterations=2", "lora_rank=0", "reward={test_brightness: 1.0}", "kl_beta=0.1", "lr=1e-3", "eval_every=1"]
    assert main(["train", *_args(tmp_path, "ref", *common)]) == 0
    assert main(["train", *_args(tmp_path, "cut", *common[1:], "iterations=1")]) == 0
    assert main(["train", *_args(tmp_path, "cut", *common)]) == 0
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "ref")


@pytest.mark.parametrize("backend, iterations", [("bf16", 1), ("fp32", 2)])
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, backend, iterations):
    """The gradient sum over 2 processes rounds differently from one process's (weights agree to
    about 1e-6). A bf16 explore copy can turn that into another bf16 weight and another drawn token
    from the second iteration on, so the bf16 explore is compared over the first iteration (sharded
    explore, selection, regeneration, update) and the fp32 one over two (refresh, second update, and
    the held-out evaluation the main process runs)."""
    common = [f"iterations={iterations}", "classes_per_step=2", "explore_classes=4", "sample_every=0",
              f"explore_backend={backend}", f"eval_seeds={int(backend == 'fp32')}"]
    two_processes(_args(tmp_path, "two", *common))
    assert main(["train", *_args(tmp_path, "one", *common)]) == 0
    first = 0 if backend == "fp32" else 1  # without the evaluation there is no row for the base
    assert_same_metrics(tmp_path / "two", tmp_path / "one", list(range(first, iterations + 1)))


def test_nan_rewards_never_reach_the_weights(tmp_path):
    with pytest.warns(UserWarning, match="non-finite rewards dropped"):
        assert main(["train", *_args(tmp_path, "half", "reward={test_nan: 1.0}", "iterations=1", NO_EVAL)]) == 0
    m = _metrics(tmp_path / "half")[1]
    assert m["nonfinite_rewards"] > 0 and np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
    with pytest.warns(UserWarning):
        assert main(["train", *_args(tmp_path, "all", "reward={test_all_nan: 1.0}", "iterations=1", NO_EVAL)]) == 0
    m = _metrics(tmp_path / "all")[1]
    assert m["trained_samples"] == 0 and m["degenerate_groups"] == 2
    w = load_file(str(latest_checkpoint(tmp_path / "all") / "var.safetensors"))
    base = load_file("assets/var-tiny-shapes/var.safetensors")
    assert all(torch.equal(w[k], base[k]) for k in base)


@pytest.mark.parametrize("extra, message", [
    (["model=assets/sd3-tiny-shapes"], "is not a VAR model"),
    (["k=9"], "k (9) must not exceed candidates (8)"),
    (["explore_classes=1"], "explore_classes (1) must be at least classes_per_step (2)"),
    (["train_classes=[0, 70]"], "train_classes must lie in 0..69"),
    (["explore_backend=fp4"], "'explore_backend'"),
    (["scale_norm=tokens"], "'scale_norm'"),
    (["draw=cdf"], "'draw'"),
    (["clip=0"], "'clip'"),
    (["model=/nonexistent/var"], "not found"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, extra, message):
    msg = user_error(capsys, "train", *_args(tmp_path, "bad", *extra))
    assert message in msg, msg
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_dry_run_describes_the_iteration(capsys):
    assert main(["train", TINY_YAML, "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe solrl_var: family sol_rl") and "4 regenerated" not in out and "8 regenerated" in out


def test_a_flexvar_policy_trains_with_an_emulated_nvfp4_explore_copy(tmp_path):
    assert main(["train", *_args(tmp_path, "flex", "model=assets/flexvar-tiny-shapes", "iterations=1",
                                 "explore_backend=nvfp4-emu", "reward={test_brightness: 1.0}", NO_EVAL)]) == 0
    m = _metrics(tmp_path / "flex")[1]
    assert m["trained_samples"] > 0 and np.isfinite(m["loss"]) and "rank_tau" in m


@pytest.mark.parametrize("native", [True, False])
def test_explore_copy_is_bf16_and_refreshes_from_the_policy(monkeypatch, native):
    """The transformer is bf16 on any CPU; the VQ-VAE too where the CPU has native bf16, else it stays
    the policy's fp32 one (emulated bf16 convolutions cost far more than they save)."""
    from vgen.models.load import load
    from vgen.quant import backends
    from vgen.quant.explore import refresh
    from vgen.solrl.var_recipe import Policy, _explore_copy

    monkeypatch.setattr(backends, "cpu_bf16_native", lambda: native)
    m = load("assets/var-tiny-shapes")
    var = copy.deepcopy(m.var)
    pol = Policy(var, m.vqvae, m.classes, 64, {"cfg": 2.0, "top_k": 40, "top_p": 0.0}, [], False)
    ex_var, ex_vae = _explore_copy(pol, "bf16")
    assert ex_var.head.weight.dtype == torch.bfloat16
    assert next(ex_vae.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    assert (ex_vae is m.vqvae) != native and next(m.vqvae.parameters()).dtype == torch.float32
    with torch.no_grad():
        var.head.bias.add_(1.0)
    refresh(ex_var, var)
    assert torch.equal(ex_var.head.bias, var.head.bias.bfloat16())
    s = sample(ex_var, ex_vae, [0, 1], [0, 1], cfg=2.0, top_k=40)
    assert s.images.shape == (2, 3, 64, 64)


def test_int8_explore_probe_ranks_the_fp32_copy_as_the_policy(monkeypatch, capsys):
    """tools/solrl_var_int8_probe.py: the fp32 copy is the policy itself, so it must rank the regenerated samples
    perfectly; each int8 copy gets a row with its cost and agreement."""
    import sys
    from pathlib import Path

    if not hasattr(torch.ao.quantization, "quantize_dynamic"):  # deprecated by torch; the probe needs it
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    tools = str(Path(__file__).resolve().parents[1] / "tools")
    monkeypatch.syspath_prepend(tools)
    import solrl_var_int8_probe

    from vgen.quant.backends import cpu_bf16_native

    monkeypatch.setattr(sys, "argv", ["probe", "--classes", "2", "--candidates", "4", "--repeats", "1"])
    solrl_var_int8_probe.main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(("| fp32", "| bf16", "| int8"))]
    assert len(rows) == 4 + cpu_bf16_native()  # a bf16 row where the CPU has native bf16
    assert rows[0].split(" | ")[3:6] == ["1.000", "1.00", "100% |"]
