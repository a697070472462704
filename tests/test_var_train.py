"""The `vgen train` recipe ``var`` (class-conditional VAR / FlexVAR) on the tiny 16x16 tokenizer:
a run end to end, learning, exact resume after SIGKILL, the loss / schedule / optimizer pieces
against independent computations, data parallelism, bad input, FlexVAR."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_var_models, vgen_train
from safetensors.torch import load_file
from test_cli import user_error
from test_solrl import _metrics

from vgen import vartrain as T
from vgen.cli import main
from vgen.engine.scalewise import sample, teacher_forcing_inputs
from vgen.errors import UserError
from vgen.models.var.folder import build_var, load_var_model, save_var_model
from vgen.train.loop import lr_at
from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset

TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "var" / "tiny.yaml")
TINY = ["resolution=16", "data_size=64", "val_size=8", "progress=false"]
VOLATILE = ("time_", "images_per_s")
K = 3  # scales of the tiny tokenizer, patch_nums (1, 2, 4)


def _args(tmp_path, tokenizer, name, *extra) -> list[str]:
    return [TINY_YAML, f"tokenizer={tokenizer}", *TINY, f"run.out_dir={tmp_path}", f"run.name={name}", *extra]


def _train(tmp_path, tokenizer, name, *extra) -> int:
    return main(["train", *_args(tmp_path, tokenizer, name, *extra)])


def _weights(path) -> dict:
    return load_file(str(path))


# ---------------------------------------------------------------- the recipe end to end


def test_tiny_config_runs_end_to_end(tmp_path, var_tokenizer_dir, capsys):
    """configs/var/tiny.yaml: per-scale metrics every step, held-out loss at eval_every, checkpoints,
    a sample grid, and a model folder that holds the last checkpoint's weights and samples."""
    assert _train(tmp_path, var_tokenizer_dir, "a") == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "samples", "model", "tb"} <= {p.name for p in run.iterdir()}
    assert "recipe: var\n" in (run / "config.yaml").read_text()
    assert "model folder:" in out and "held-out teacher-forcing loss" in out

    m = _metrics(run, volatile=())
    assert sorted(m) == [1, 2, 3, 4]
    for step, row in m.items():
        for key in ("loss", "acc", "lr", "grad_norm", "time_step", "images_per_s",
                    *(f"{s}_scale{k}" for s in ("ce", "acc") for k in range(K))):
            assert math.isfinite(row[key]), (step, key)
        # acc is the token accuracy: the scales' accuracies weighted by their token counts (1, 4, 16)
        assert row["acc"] == pytest.approx(sum(n * row[f"acc_scale{k}"] for k, n in enumerate((1, 4, 16))) / 21)
        assert row["lr"] == pytest.approx(lr_at(step, 0.003, 4, 2, "cosine", 0.05))
    # the head starts at 0.02 x the init: near-uniform logits, every scale's CE close to ln(vocab)
    assert all(abs(m[1][f"ce_scale{k}"] - math.log(32)) < 0.05 for k in range(K))
    assert {s for s, r in m.items() if "val_loss" in r} == {2, 4} and "sample_strict" in m[4]

    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000004"]
    assert (ckpts / "latest").read_text().strip() == "step-000004"
    assert (run / "samples" / "step-000004.png").read_bytes().startswith(b"\x89PNG")

    vae, var, conf = load_var_model(run / "model")
    assert var is not None and not var.flex and conf["resolution"] == 16
    assert conf["class_prompts"] == list(CLASS_PROMPTS)
    assert conf["sampling"] == {"cfg": 1.5, "top_k": 0, "top_p": 0.0} and conf["var"]["cond_drop_rate"] == 0.1
    assert (var.depth, var.C, var.num_heads) == (2, 64, 2) and "recipe var" in (run / "model" / "README.md").read_text()
    last = _weights(ckpts / "step-000004" / "var.safetensors")  # a checkpoint is itself a VAR model folder
    saved = _weights(run / "model" / "var.safetensors")
    assert last.keys() == saved.keys() and all(torch.equal(last[k], saved[k]) for k in last)
    s = sample(var, vae, [0, 5], [0, 1], cfg=1.5)
    assert s.images.shape == (2, 3, 16, 16) and 0 <= float(s.images.min()) and float(s.images.max()) <= 1
    assert [t.shape[1] for t in s.tokens] == [1, 4, 16]


def test_it_learns_a_small_fixed_dataset(tmp_path, var_tokenizer_dir):
    """64 fixed scenes, 40 steps: the loss falls from ln(vocab) (the near-uniform initial head) to
    below the entropy of each token position's own frequencies in the data, the floor of any
    model that ignores the class and the coarser scales: it learnt to use its context."""
    assert _train(tmp_path, var_tokenizer_dir, "fit", "iterations=40", "warmup=3", "lr=0.01", "label_smoothing=0",
                  "cond_drop_rate=0", "eval_every=0", "sample_every=0", "checkpoint_every=0",
                  "save_model=false") == 0
    m = _metrics(tmp_path / "fit")
    first = sum(m[s]["loss"] for s in (1, 2)) / 2
    last = sum(m[s]["loss"] for s in range(36, 41)) / 5
    vae, _, _ = load_var_model(var_tokenizer_dir, tokenizer_only=True)
    tokens = torch.cat(T.tokenize_dataset(vae, ShapesClassDataset(64, 16, 0)), 1)  # the training set, (64, 21)
    p = torch.stack([torch.bincount(col, minlength=32) for col in tokens.T]).double() / 64
    floor = float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())
    assert first > 3.3 and last < 0.25 * first and last < floor, (first, last, floor)
    assert m[40]["val_loss"] < 0.4 * first


# ---------------------------------------------------------------- resume


def kill_after_first_checkpoint(train_args: list[str], run_dir) -> None:
    """Run `vgen train` in a subprocess and SIGKILL it as soon as its first checkpoint is complete."""
    cmd = [sys.executable, "-m", "vgen.cli", "train", *train_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished or failed


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, var_tokenizer_dir, capsys):
    """A real SIGKILL while the run works; the resumed run (same config, so the same lr schedule)
    reports bitwise the metrics of an uninterrupted one and ends with the same weights, because
    weights, optimizer, RNG state and history are all in the checkpoint. Another config is refused."""
    common = ["iterations=16", "checkpoint_every=4", "eval_every=8", "sample_every=0", "cond_drop_rate=0.3"]
    assert _train(tmp_path, var_tokenizer_dir, "ref", *common) == 0
    kill_after_first_checkpoint(_args(tmp_path, var_tokenizer_dir, "k", *common), tmp_path / "k")
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "k" / "checkpoints").glob("step-*"))
    assert steps and steps[-1] < 16
    for ckpt in (tmp_path / "k" / "checkpoints").glob("step-*"):
        assert (ckpt / "meta.json").is_file() and (ckpt / "state.pt").is_file()
    capsys.readouterr()
    assert _train(tmp_path, var_tokenizer_dir, "k", *common) == 0
    assert "resuming" in capsys.readouterr().out
    assert _metrics(tmp_path / "k", VOLATILE) == _metrics(tmp_path / "ref", VOLATILE)
    a, b = (_weights(tmp_path / name / "model" / "var.safetensors") for name in ("k", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    assert _train(tmp_path, var_tokenizer_dir, "k", *common, "label_smoothing=0.2") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "differs in: label_smoothing" in err and err.count("\n") == 1


def test_micro_batches_match_whole_batches(tmp_path, var_tokenizer_dir):
    """Gradient accumulation: each micro-batch's loss is weighted by its share of the batch, and
    the label drops come from (seed, step), so 4 micro-batches of 4 train as one batch of 16."""
    common = ["iterations=3", "eval_every=0", "sample_every=0", "checkpoint_every=0", "save_model=false",
              "cond_drop_rate=0.3"]
    assert _train(tmp_path, var_tokenizer_dir, "whole", *common) == 0
    assert _train(tmp_path, var_tokenizer_dir, "micro", *common, "micro_batch=4") == 0
    a, b = _metrics(tmp_path / "micro", VOLATILE), _metrics(tmp_path / "whole", VOLATILE)
    for step in b:
        for key, v in b[step].items():
            assert a[step][key] == pytest.approx(v, rel=1e-5, abs=1e-6), (step, key)


# ---------------------------------------------------------------- the pieces


def test_lr_schedule():
    """Linear warm-up to the peak, then cosine / linear decay ending at min_lr_ratio * lr on the
    last step; constant stays at the peak; a function of the step alone."""
    lr, it, wu, r = 0.01, 50, 10, 0.1
    for s in range(1, wu + 1):
        for sched in ("cosine", "linear", "constant"):
            assert lr_at(s, lr, it, wu, sched, r) == pytest.approx(lr * s / wu)
    for sched in ("cosine", "linear"):
        assert lr_at(it, lr, it, wu, sched, r) == pytest.approx(r * lr)
        values = [lr_at(s, lr, it, wu, sched, r) for s in range(wu, it + 1)]
        assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing after warm-up
    mid = wu + (it - wu) // 2  # half way: cosine at (1 + cos(pi / 2)) / 2 = 1/2, as linear
    assert lr_at(mid, lr, it, wu, "cosine", r) == pytest.approx(lr * (r + (1 - r) * 0.5))
    quarter = wu + (it - wu) // 4
    assert lr_at(quarter, lr, it, wu, "cosine", r) == pytest.approx(
        lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(quarter, lr, it, wu, "linear", r) == pytest.approx(lr * (r + (1 - r) * 0.75))
    assert all(lr_at(s, lr, it, wu, "constant", r) == lr for s in range(wu, it + 1))
    assert lr_at(1, lr, it, 0, "cosine", 0.0) < lr and lr_at(it, lr, it, 0, "cosine", 0.0) == pytest.approx(0.0)


def test_token_weights():
    """Every token alike by default; with scale weights, each token of scale k weighs in proportion
    to scale_weights[k] (so a scale's total share also grows with its token count)."""
    lengths = [1, 4, 16]
    w = T.token_weights(lengths)
    assert w.shape == (21,) and float(w.sum()) == pytest.approx(1) and torch.allclose(w, torch.full((21,), 1 / 21))
    sw = [3.0, 1.0, 0.5]
    w = T.token_weights(lengths, sw)
    assert float(w.sum()) == pytest.approx(1)
    per_scale = w.split(lengths)
    for k, part in enumerate(per_scale):
        assert torch.allclose(part, part[0].expand_as(part))  # alike within a scale
        assert float(part[0] / per_scale[1][0]) == pytest.approx(sw[k] / sw[1])
    assert float(per_scale[2].sum()) == pytest.approx(0.5 * 16 / (3 + 4 + 8))
    assert torch.equal(T.token_weights(lengths, [0, 0, 1]).split(lengths)[0], torch.zeros(1))
    for bad in ([1.0, 1.0], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(UserError):
            T.token_weights(lengths, bad)


def test_token_ce_matches_a_hand_written_loop():
    """Weighted, smoothed CE per sample against an explicit loop over samples and tokens; with
    uniform weights the loss is torch's mean cross-entropy; per-scale CE is unsmoothed."""
    g = torch.Generator().manual_seed(0)
    lengths, V, B, eps = [1, 4, 16], 7, 3, 0.1
    logits = torch.randn(B, 21, V, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (B, 21), generator=g)
    sw = [2.0, 1.0, 0.25]
    r = T.token_ce(logits, targets, lengths, eps, sw)
    wt = [sw[k] for k, n in enumerate(lengths) for _ in range(n)]
    for b in range(B):
        total = 0.0
        for t in range(21):
            logp = logits[b, t].detach().log_softmax(-1)
            total += wt[t] * ((1 - eps) * -logp[targets[b, t]] + eps * -logp.mean())
        assert float(r.per_sample[b]) == pytest.approx(float(total) / sum(wt), rel=1e-6)
    assert float(r.loss.detach()) == pytest.approx(float(r.per_sample.mean()), rel=1e-6)

    plain = T.token_ce(logits, targets, lengths, eps)
    x = logits.detach()
    torch_ce = F.cross_entropy(x.reshape(-1, V), targets.reshape(-1), label_smoothing=eps)
    assert float(plain.loss.detach()) == pytest.approx(float(torch_ce), rel=1e-6)
    for k, (xs, ts) in enumerate(zip(x.split(lengths, 1), targets.split(lengths, 1))):
        ce = F.cross_entropy(xs.reshape(-1, V), ts.reshape(-1))  # unsmoothed
        assert float(plain.ce_per_scale[k]) == pytest.approx(float(ce), rel=1e-6)
        assert float(plain.acc_per_scale[k]) == pytest.approx(float((xs.argmax(-1) == ts).double().mean()))
    plain.loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_make_optimizer_skips_decay_on_biases_gains_and_embeddings():
    """AdamW groups: weight decay only on matrices that are neither embeddings nor positions
    (NO_DECAY names), every trainable parameter exactly once, frozen ones left out."""
    var = build_var(dict(vocab_size=32, Cvae=8, num_classes=70, depth=2, embed_dim=32, num_heads=2,
                         patch_nums=[1, 2, 4], shared_aln=True))
    var.head.bias.requires_grad_(False)
    opt = T.make_optimizer(var, 1e-3, 0.05, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    names = {id(p): n for n, p in var.named_parameters()}
    dec, nod = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}
    assert not dec & nod and dec | nod == {n for n, p in var.named_parameters() if p.requires_grad}
    assert "head.bias" not in nod
    for n in ("pos_start", "pos_1LC", "class_emb.weight", "lvl_embed.weight", "blocks.0.ada_gss",
              "blocks.0.attn.scale_mul_1H11", "blocks.0.attn.q_bias", "blocks.1.attn.v_bias",
              "blocks.0.ffn.fc1.bias", "word_embed.bias"):
        assert n in nod, n
    assert {"head.weight", "word_embed.weight", "blocks.0.attn.mat_qkv.weight", "blocks.1.ffn.fc2.weight",
            "shared_ada_lin.1.weight", "head_nm.ada_lin.1.weight"} <= dec
    assert all(p.ndim >= 2 for p in decay["params"])



def test_lr_scales_give_named_parameters_their_own_lr_which_set_lr_keeps():
    """VARiant's private offsets: a group of their own, no decay, at the multiple of the lr, through the
    schedule's set_lr; the other groups as without it."""
    from vgen.train.loop import set_lr

    var = build_var(dict(vocab_size=32, Cvae=8, num_classes=70, depth=4, embed_dim=32, num_heads=2,
                         patch_nums=[1, 2, 4], private_depths=[2, 3]))
    plain = T.make_optimizer(var, 1e-3, 0.05)
    opt = T.make_optimizer(var, 1e-3, 0.05, lr_scales={"private.": 10.0})
    decay, no_decay, private = opt.param_groups
    names = {id(p): n for n, p in var.named_parameters()}
    assert sorted(names[id(p)] for p in private["params"]) == sorted(n for n, _ in var.named_parameters()
                                                                     if n.startswith("private."))
    assert private["weight_decay"] == 0.0 and private["lr"] == pytest.approx(1e-2)
    assert [len(g["params"]) for g in (decay, no_decay)] == [len(plain.param_groups[0]["params"]),
                                                            len(plain.param_groups[1]["params"]) - 4]
    assert len(plain.param_groups) == 2  # without a scale the offsets are biases: no decay
    set_lr(opt, 3e-4)
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4, pytest.approx(3e-3)]


def test_teacher_forcing_loss_is_the_ce_of_one_block_causal_forward():
    """tf_loss / tf_loss_from_tokens = CE of var(labels, teacher_forcing_inputs(tokens)) against the
    tokens of all scales; the last scale's tokens are targets only (no scale's input depends on them)."""
    vae, var = tiny_var_models()
    ds = ShapesClassDataset(6, 16, 0)
    images = torch.stack([ds[i]["image"] for i in range(6)])
    labels = torch.tensor([ds[i]["label"] for i in range(6)])
    tokens = vae.img_to_idx(images * 2 - 1)
    with torch.no_grad():
        logits = var(labels, teacher_forcing_inputs(vae, tokens, var.patch_nums))
        by_hand = F.cross_entropy(logits.reshape(-1, 32), torch.cat(tokens, 1).reshape(-1), label_smoothing=0.1)
        r = T.tf_loss_from_tokens(var, vae, tokens, labels, 0.1)
        assert float(r.loss) == pytest.approx(float(by_hand), rel=1e-6)
        assert float(T.tf_loss(var, vae, images, labels, 0.1).loss) == pytest.approx(float(by_hand), rel=1e-6)
        changed = [*tokens[:-1], (tokens[-1] + 1) % 32]
        logits2 = var(labels, teacher_forcing_inputs(vae, changed, var.patch_nums))
    assert torch.equal(logits, logits2)


def test_label_drops_are_a_function_of_seed_and_step():
    """The null-class drops of a step: the same for every split of the batch, about the rate."""
    a = T.label_drops(0, 5, 4000, 0.1)
    assert a == T.label_drops(0, 5, 4000, 0.1) and a != T.label_drops(0, 6, 4000, 0.1)
    assert 0.08 < sum(a) / len(a) < 0.12 and not any(T.label_drops(0, 5, 100, 0.0))


# ---------------------------------------------------------------- data parallel


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, var_tokenizer_dir):
    """torchrun, 2 CPU processes on gloo: each takes half the global batch, the weighted gradients
    are summed, so the metrics are one process's within float tolerance."""
    common = ["iterations=3", "eval_every=0", "sample_every=0", "checkpoint_every=0", "save_model=false",
              "cond_drop_rate=0.3"]
    two_processes(_args(tmp_path, var_tokenizer_dir, "two", *common))
    assert _train(tmp_path, var_tokenizer_dir, "one", *common) == 0
    assert_same_metrics(tmp_path / "two", tmp_path / "one", [1, 2, 3])


def two_processes(train_args: list[str]) -> None:
    vgen_train(train_args, processes=2)


def assert_same_metrics(run_a, run_b, steps: list[int]) -> None:
    """Every logged metric of two runs equal within float tolerance (timings aside)."""
    a, b = _metrics(run_a, VOLATILE), _metrics(run_b, VOLATILE)
    assert sorted(a) == sorted(b) == steps
    for step in a:
        assert a[step].keys() == b[step].keys()
        for key, v in a[step].items():
            assert v == pytest.approx(b[step][key], rel=1e-5, abs=1e-6), (step, key)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, message", [
    (["resolution=32"], "is for 16px images, resolution is 32"),
    (["tokenizer=/nonexistent/tokenizer"], "model folder not found: '/nonexistent/tokenizer'"),
    (["sample_classes=[0, 70]"], "sample_classes must lie in 0..69"),
    (["heads=3"], "heads (3) must divide width (64)"),
    (["scale_weights=[1.0, 2.0]"], "scale_weights has 2 entries, the model has 3 scales"),
])
def test_bad_input_is_one_line_user_error(tmp_path, var_tokenizer_dir, capsys, extra, message):
    msg = user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "bad", *extra))
    assert message in msg, msg


def test_init_starts_from_a_model_folder(tmp_path, var_tokenizer_dir, var_model_dir, capsys):
    """``init`` takes a folder's architecture and weights (width 32 there, 64 in the config); a
    folder without a transformer, or one for another vocabulary, is a one-line error."""
    assert _train(tmp_path, var_tokenizer_dir, "init", f"init={var_model_dir}", "iterations=1", "lr=1e-9",
                  "eval_every=0", "sample_every=0", "checkpoint_every=0") == 0
    _, var, _ = load_var_model(tmp_path / "init" / "model")
    _, base, _ = load_var_model(var_model_dir)
    assert var.C == 32 and var.arch["cond_drop_rate"] == 0.1
    a, b = var.state_dict(), base.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)  # one Adam step of ~lr from the init
    assert load_var_model(tmp_path / "init" / "model")[2]["sampling"] == {"cfg": 1.5, "top_k": 0, "top_p": 0.0}
    # sampling settings the config leaves unset come from init's folder (not the official defaults)
    vae0, _, _ = load_var_model(var_model_dir)
    guided = save_var_model(tmp_path / "guided", vae0, base, CLASS_PROMPTS, 16, {"cfg": 2.5, "top_k": 7, "top_p": 0.5})
    for name, extra, want in (("inherit", [], {"cfg": 2.5, "top_k": 7, "top_p": 0.5}),
                              ("own", ["sample_cfg=4.0", "sample_top_p=0.0"], {"cfg": 4.0, "top_k": 7, "top_p": 0.0})):
        assert _train(tmp_path, var_tokenizer_dir, name, f"init={guided}", "iterations=1", "eval_every=0",
                      "sample_every=0", "checkpoint_every=0", *extra) == 0
        assert load_var_model(tmp_path / name / "model")[2]["sampling"] == want
    assert "holds no transformer" in user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "x",
                                                                         f"init={var_tokenizer_dir}"))
    vae, _ = tiny_var_models()
    other = build_var(dict(vocab_size=16, Cvae=8, num_classes=70, depth=1, embed_dim=16, num_heads=1,
                           patch_nums=[1, 2, 4]))
    folder = save_var_model(tmp_path / "v16", vae, other, CLASS_PROMPTS, 16)
    msg = user_error(capsys, "train", *_args(tmp_path, var_tokenizer_dir, "y", f"init={folder}"))
    assert "has a transformer for 16 tokens of 8 channels, the tokenizer has 32 of 8" in msg


# ---------------------------------------------------------------- FlexVAR


def test_flexvar_trains_with_a_non_residual_tokenizer(tmp_path, var_tokenizer_dir):
    """A non-residual tokenizer makes the recipe build a FlexVAR (its folder says so), which then
    samples the training scales and, being flex, another scale list too."""
    vae, _ = tiny_var_models(flex=True)
    tok = save_var_model(tmp_path / "flextok", vae, None, CLASS_PROMPTS, 16)
    assert _train(tmp_path, tok, "flex", "iterations=2", "eval_every=0", "sample_every=0", "checkpoint_every=0",
                  "random_scales=false") == 0
    m = _metrics(tmp_path / "flex")
    assert sorted(m) == [1, 2] and all(math.isfinite(m[2][f"ce_scale{k}"]) for k in range(K))
    vae2, var, conf = load_var_model(tmp_path / "flex" / "model")
    assert var.flex and conf["var"]["flex"] is True and not vae2.residual and conf["vqvae"]["residual"] is False
    assert "FlexVAR" in (tmp_path / "flex" / "model" / "README.md").read_text()
    assert sample(var, vae2, [3], [0]).images.shape == (1, 3, 16, 16)
    assert [t.shape[1] for t in sample(var, vae2, [3], [0], patch_nums=(1, 2, 3, 4)).tokens] == [1, 4, 9, 16]


def test_flex_scale_list_rule():
    """First two sizes and the last always in; 1..max_mid distinct middle sizes from every integer
    between; increasing; a function of (seed, step) alone; every allowed list is drawn."""
    from vgen.vartrain import flex_scale_list

    seen = set()
    for step in range(400):
        pns = flex_scale_list(0, step, (1, 2, 3, 4, 6, 8), 3)
        assert pns[:2] == (1, 2) and pns[-1] == 8 and list(pns) == sorted(set(pns))
        assert 1 <= len(pns) - 3 <= 3 and all(3 <= p <= 7 for p in pns[2:-1])
        assert pns == flex_scale_list(0, step, (1, 2, 3, 4, 6, 8), 3)
        seen.add(pns)
    # C(5,1) + C(5,2) + C(5,3) = 25 lists; the full list 1..8 and 1, 2, 8 are never drawn
    assert len(seen) == 25 and (1, 2, 3, 4, 5, 6, 7, 8) not in seen and (1, 2, 8) not in seen
    assert flex_scale_list(0, 1, (1, 2), 3) == (1, 2)


def test_flexvar_trains_on_random_scale_lists(tmp_path):
    """By default a FlexVAR trains on a random scale list per step: its metrics are keyed by size
    and the token targets of each size equal the tokenizer's independent quantization."""
    from vgen.vartrain import Data, flex_scale_list

    vae, _ = tiny_var_models(flex=True)
    tok = save_var_model(tmp_path / "flextok", vae, None, CLASS_PROMPTS, 16)
    assert _train(tmp_path, tok, "flex", "iterations=2", "eval_every=0", "sample_every=0", "checkpoint_every=0") == 0
    m = _metrics(tmp_path / "flex")
    for step in (1, 2):
        pns = flex_scale_list(0, step, (1, 2, 4), 3)
        assert m[step]["num_scales"] == len(pns) and all(math.isfinite(m[step][f"ce_pn{p}"]) for p in pns)
    data = Data(vae, ShapesClassDataset(8, 16, 0), cache=True)
    fresh = Data(vae, ShapesClassDataset(8, 16, 0), cache=False)
    for a, b in zip(data.get([0, 5], "cpu", (1, 2, 3, 4))[0], fresh.get([0, 5], "cpu", (1, 2, 3, 4))[0]):
        assert torch.equal(a, b)
    code = _train(tmp_path, save_var_model(tmp_path / "vartok", tiny_var_models()[0], None, CLASS_PROMPTS, 16),
                  "bad", "iterations=1", "random_scales=true")
    assert code == 2


def test_a_training_job_tears_down_its_process_group(tmp_path, var_tokenizer_dir):
    """`vgen train` destroys the process group before it returns, so no gloo worker outlives the
    job into interpreter exit (where it can abort the process). A one-process gloo group stands in
    for torchrun's."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _train(tmp_path, var_tokenizer_dir, "pg", "iterations=1") == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
