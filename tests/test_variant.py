"""VARiant: run-time depth from one model, the path schedule, the subnet path's loss, the recipe."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import gpu_marks, tiny_var_models
from safetensors.torch import load_file
from test_cli import user_error
from test_solrl import _metrics
from test_var_train import assert_same_metrics, kill_after_first_checkpoint, two_processes

from vgen.cli import main
from vgen.engine.scalewise import sample, teacher_forcing_inputs
from vgen.errors import UserError
from vgen.models.var import subnet_indices, switch_plan
from vgen.variant import Schedule, path_at, plan_for, variant_loss
from vgen.variant.schedule import joint_depth_at, loss_weights_at

PN = (1, 2, 3, 4)
D = 5


def lively(flex: bool = False):
    """A 5-block random model whose logits depend on every block (the official init starts them near zero)."""
    vae, var = tiny_var_models(seed=4, flex=flex, patch_nums=PN, depth=D)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    var.train()
    var.cond_drop_rate = 0.0
    tokens = [torch.randint(0, 32, (3, p * p), generator=g) for p in PN]
    return vae, var, tokens, torch.tensor([0, 7, 70])


@pytest.fixture(scope="module")
def deep_folder(tmp_path_factory):
    from vgen.models.var.folder import save_var_model
    from vgen.world.datasets import CLASS_PROMPTS

    vae, var, _, _ = lively()
    return save_var_model(tmp_path_factory.mktemp("variant") / "deep", vae, var.eval(), CLASS_PROMPTS, 16,
                          {"cfg": 1.5, "top_k": 0, "top_p": 0.0})


# ---------------------------------------------------------------- the path schedule


def test_fixed_ratio_spreads_full_steps_and_takes_depths_in_turn():
    s = Schedule((8, 4, 2), (1.0,), ((2.0, 8.0),))
    paths = [path_at(s, step, 50) for step in range(1, 51)]
    assert [i + 1 for i, p in enumerate(paths) if p is None] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert [p for p in paths if p is not None][:6] == [8, 4, 2, 8, 4, 2]
    assert sorted({d: sum(p == d for p in paths) for d in (8, 4, 2)}.values()) == [13, 13, 14]


def test_progressive_default_stages_by_brute_force():
    """Each stage's full steps counted independently: a running share that emits a full step each time it
    passes a whole number (exact fractions), and the subnet depths in turn across stage boundaries."""
    from fractions import Fraction

    ends, ratios = (0.5, 0.75, 1.0), ((2, 8), (1, 9), (0, 10))
    s = Schedule((4, 2), ends, tuple((float(a), float(b)) for a, b in ratios))
    for n in (20, 37, 200):
        got = [path_at(s, step, n) for step in range(1, n + 1)]
        want, cuts, k = [], [0] + [round(e * n) for e in ends], 0
        for (a, b), lo, hi in zip(ratios, cuts, cuts[1:]):
            acc, r = Fraction(0), Fraction(a, a + b)
            for _ in range(lo, hi):
                before, acc = acc, acc + r
                if int(acc) > int(before):
                    want.append(None)
                else:
                    want.append((4, 2)[k % 2])
                    k += 1
        assert got == want, n
    assert [path_at(s, t, 20) is None for t in range(1, 21)].count(True) == 2  # steps 5 and 10 only


@pytest.mark.parametrize("ends, ratios, message", [
    ((0.5, 0.4, 1.0), ((1, 1),) * 3, "must increase"),
    ((0.5,), ((1, 1),), "must increase from above 0 to 1"),
    ((1.0,), ((0, 0),), "not both 0"),
    ((0.5, 1.0), ((1, 1),), "one full:subnet ratio per stage"),
])
def test_bad_schedules_are_refused(ends, ratios, message):
    with pytest.raises(UserError, match=message):
        Schedule((2,), ends, ratios)


def test_plan_switches_by_size():
    assert plan_for(D, PN, 3, 2) == switch_plan(D, 4, 2, 2) == [list(range(D))] * 2 + [[0, 4]] * 2
    assert plan_for(D, (1, 2, 5, 6, 8), 3, 3) == [list(range(D))] * 2 + [subnet_indices(D, 3)] * 3
    assert plan_for(D, PN, 3, None) is None


def test_loss_mix_weights_follow_the_stages():
    """mix=loss: each step's (full, subnet) weights are its stage's ratio normalised; the subnet depths
    take turns step by step."""
    s = Schedule((4, 2), (0.5, 0.75, 1.0), ((2.0, 8.0), (1.0, 9.0), (0.0, 10.0)))
    got = [loss_weights_at(s, t, 8) for t in range(1, 9)]
    want = [(0.2, 0.8)] * 4 + [(0.1, 0.9)] * 2 + [(0.0, 1.0)] * 2
    assert all(g == pytest.approx(w) for g, w in zip(got, want))
    assert [joint_depth_at(s, t) for t in range(1, 6)] == [4, 2, 4, 2, 4]
    with pytest.raises(UserError, match="beyond"):
        loss_weights_at(s, 9, 8)


# ---------------------------------------------------------------- the subnet path's loss


def sampler_logits(var, vae, tokens, labels, plan):
    """Logits of ground-truth inputs computed as the sampler does: one scale at a time through the blocks
    its plan names, with per-block KV caches."""
    cond_BD, cond = var.condition(labels)
    inputs = teacher_forcing_inputs(vae, tokens).split([p * p for p in PN[1:]], 1)
    caches, out = [{} for _ in range(var.depth)], []
    for k in range(len(PN)):
        x = var.start_tokens(cond_BD) if k == 0 else var.embed_scale(inputs[k - 1], k)
        out.append(var.logits(var.step(x, cond, caches, blocks=plan[k]), cond_BD, plan[k]))
    return torch.cat(out, 1)


def with_private(var, depths=(2, 3, 4), scale=0.3):
    """``var`` with random (non-zero) private offsets for ``depths``."""
    var.add_private_depths(depths)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in var.private.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return var


@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize("flex", [False, True])
@pytest.mark.parametrize("depth, switch", [(2, 2), (3, 1), (4, 3)])
def test_subnet_path_loss_is_the_samplers_path(flex, depth, switch, private):
    vae, var, tokens, labels = lively(flex)
    if private:
        with_private(var)
    plan = plan_for(D, PN, PN[switch], depth)
    r = variant_loss(var, vae, tokens, labels, plan)
    with torch.no_grad():
        logits = sampler_logits(var, vae, tokens, labels, plan)
        ref = F.cross_entropy(logits.flatten(0, 1), torch.cat(tokens, 1).flatten())
    assert r.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    full = variant_loss(var, vae, tokens, labels, None)
    assert abs(full.loss.item() - r.loss.item()) > 1e-3  # the subnet is another network
    # scales before the switch are the full network's, so their CE is the full path's
    assert torch.allclose(r.tf.ce_per_scale[:switch], full.tf.ce_per_scale[:switch], atol=1e-5)


@pytest.mark.parametrize("ratio", [(3.0, 7.0), (0.0, 1.0)])
def test_loss_mix_step_is_the_weighted_sum_of_both_paths(ratio):
    """mix=loss: one step's loss and gradient are w_full * (full path) + w_subnet * (subnet path), each
    path's loss computed on its own; a zero weight skips that path's pass."""
    from vgen.variant.recipe import VariantConfig, variant_objective

    vae, var, tokens, labels = lively()
    cfg = VariantConfig(init="unused", depths=[3, 2], switch_scale=2, schedule="fixed", ratio=list(ratio),
                        mix="loss", iterations=4)
    out = variant_objective(cfg)(var, vae, tokens, labels, PN, None, 2)  # step 2: depth 2, the second in turn
    params = [p for p in var.parameters() if p.requires_grad]
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    w_full = ratio[0] / sum(ratio)
    full = variant_loss(var, vae, tokens, labels, None).loss
    sub = variant_loss(var, vae, tokens, labels, plan_for(D, PN, PN[2], 2)).loss
    want_loss = w_full * full + (1 - w_full) * sub
    want = torch.autograd.grad(want_loss, params, allow_unused=True)
    assert out.loss.item() == pytest.approx(want_loss.item(), rel=1e-6)
    for g, w in zip(got, want):
        assert (g is None) == (w is None) and (g is None or torch.allclose(g, w, rtol=1e-5, atol=1e-7))
    assert out.figures["path_depth"] == 2
    assert out.figures["loss_subnet"].item() == pytest.approx(sub.item(), rel=1e-6)
    if w_full:
        assert out.figures["loss_full"].item() == pytest.approx(full.item(), rel=1e-6)
    else:
        assert "loss_full" not in out.figures and out.loss.item() == pytest.approx(sub.item(), rel=1e-6)


def test_new_private_offsets_change_nothing():
    vae, var, tokens, labels = lively()
    plan = switch_plan(D, 4, 1, 3)
    inputs = teacher_forcing_inputs(vae, tokens)
    before = var(labels, inputs, depth_plan=plan)
    var.add_private_depths([3, 2])
    assert sorted(var.private) == ["2", "3"] and all(not p.any() for p in var.private.parameters())
    assert torch.equal(var(labels, inputs, depth_plan=plan), before)


@pytest.mark.parametrize("switch", [0, 2])
def test_private_offsets_are_adaln_bias_shifts_of_the_subnets_blocks(switch):
    """Independent computation: a subnet scale's offsets act as shifts of the kept blocks' (and the head
    norm's) AdaLN biases, by the block's place in the subnet; scales before the switch are untouched."""
    import copy

    vae, var, tokens, labels = lively()
    var.eval()
    plain = copy.deepcopy(var)
    with_private(var, depths=(3,))
    plan = switch_plan(D, 4, switch, 3)
    shifted = copy.deepcopy(plain)
    with torch.no_grad():
        for i, j in enumerate(subnet_indices(D, 3)):
            shifted.blocks[j].ada_lin[-1].bias += var.private["3"].blocks[i].flatten()
        shifted.head_nm.ada_lin[-1].bias += var.private["3"].head.flatten()
        inputs = teacher_forcing_inputs(vae, tokens)
        got = var(labels, inputs, depth_plan=plan)
        cut = sum(p * p for p in PN[:switch])
        if switch == 0:  # every scale runs the subnet: the whole output is the shifted model's
            assert torch.allclose(got, shifted(labels, inputs, depth_plan=plan), atol=1e-5)
        else:  # the full network's scales are the plain model's; the subnet's see the shift through attention
            assert torch.equal(got[:, :cut], plain(labels, inputs, depth_plan=plan)[:, :cut])
            assert not torch.allclose(got[:, cut:], plain(labels, inputs, depth_plan=plan)[:, cut:], atol=1e-3)
        assert torch.equal(var(labels, inputs), plain(labels, inputs))  # the full path never uses them


def test_private_depths_outside_the_model_are_refused():
    _, var, _, _ = lively()
    with pytest.raises(UserError, match=r"private depths \[5\] must lie in 2..4"):
        var.add_private_depths([2, 5])


def test_distillation_term_is_the_kl_from_the_full_network():
    vae, var, tokens, labels = lively()
    plan = plan_for(D, PN, 3, 2)
    r = variant_loss(var, vae, tokens, labels, plan, distill=0.5)
    with torch.no_grad():
        inputs = teacher_forcing_inputs(vae, tokens)
        student = var(labels, inputs, depth_plan=plan)[:, 5:]  # tokens of scales 2 and 3 (1 + 4 before)
        teacher = var(labels, inputs)[:, 5:]
        kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=teacher),
                                               torch.distributions.Categorical(logits=student)).mean()
    assert r.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert r.loss.item() == pytest.approx(r.tf.loss.item() + 0.5 * kl.item(), rel=1e-5)
    assert torch.isnan(variant_loss(var, vae, tokens, labels, None, distill=0.5).kl)  # no KL on a full step


# ---------------------------------------------------------------- run-time depth from one model


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu_marks())])
def test_switching_depth_between_calls_touches_no_weights(deep_folder, device):
    from vgen.models.load import load

    m = load(deep_folder, device=device)
    before = {k: (v.data_ptr(), v.clone()) for k, v in m.var.state_dict().items()}
    kw = dict(cfg=1.5, top_k=5)
    full = sample(m.var, m.vqvae, [3, 9], [0, 1], **kw)
    for d in (2, 3, 4):
        s = sample(m.var, m.vqvae, [3, 9], [0, 1], depth_plan=switch_plan(D, 4, 2, d), **kw)
        assert not all(torch.equal(a, b) for a, b in zip(s.tokens, full.tokens))
    again = sample(m.var, m.vqvae, [3, 9], [0, 1], **kw)
    assert all(torch.equal(a, b) for a, b in zip(again.tokens, full.tokens))
    for k, v in m.var.state_dict().items():
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k


@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("switch", [0, 1, 2, 3])
def test_cached_sampling_equals_recompute_for_every_plan(depth, switch, private):
    vae, var, _, _ = lively()
    if private:
        with_private(var)
    var.eval()
    plan = switch_plan(D, 4, switch, depth)
    kw = dict(cfg=1.5, top_k=8, depth_plan=plan, return_logits=True)
    cached = sample(var, vae, [1, 5], [3, 4], **kw)
    recomputed = sample(var, vae, [1, 5], [3, 4], use_cache=False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(cached.tokens, recomputed.tokens))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(cached.logits, recomputed.logits))
    dropped = sorted(set(range(D)) - set(subnet_indices(D, depth)))
    assert sorted(cached.freed.get(switch, [])) == (dropped if switch else [])  # switch 0: never filled


def test_vgen_sample_and_eval_take_depth_and_switch_scale(deep_folder, tmp_path):
    from vgen.models.load import load

    out = tmp_path / "s"
    assert main(["sample", "--model", str(deep_folder), "--classes", "3", "--seeds", "0", "1", "--depth", "2",
                 "--switch-scale", "1", "--out", str(out)]) == 0
    meta = json.loads((out / "samples.json").read_text())
    plan = switch_plan(D, 4, 1, 2)
    assert meta["depth_plan"] == plan
    m = load(deep_folder)
    ref = sample(m.var, m.vqvae, [3, 3], [0, 1], cfg=1.5, depth_plan=plan)
    from PIL import Image

    from vgen.images import to_uint8

    files = [out / r["file"] for r in meta["samples"]]
    assert all((torch.from_numpy(to_uint8(ref.images)[i]).numpy() == Image.open(f)).all() for i, f in enumerate(files))
    ev = tmp_path / "e"
    assert main(["eval", "--model", str(deep_folder), "--classes", "0-3", "--seeds", "0", "--metrics", "geneval",
                 "--depth", "3", "--switch-scale", "2", "--out", str(ev)]) == 0
    r = json.loads((ev / "report.json").read_text())
    assert r["depth_plan"] == switch_plan(D, 4, 2, 3)
    assert "depth plan (blocks per scale)" in (ev / "report.md").read_text()


def test_the_folders_depth_defaults_apply(deep_folder, tmp_path):
    import shutil

    folder = tmp_path / "withdefaults"
    shutil.copytree(deep_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sampling"].update(depth=3, switch_scale=2)
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["sample", "--model", str(folder), "--classes", "3", "--seeds", "0", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "samples.json").read_text())["depth_plan"] == switch_plan(D, 4, 2, 3)
    assert main(["sample", "--model", str(folder), "--classes", "3", "--seeds", "0", "--depth", str(D),
                 "--out", str(tmp_path / "b")]) == 0
    assert "depth_plan" not in json.loads((tmp_path / "b" / "samples.json").read_text())


@pytest.mark.parametrize("extra, needle", [
    (["--depth", "1"], "depth 1 must be an integer in 2..5"),
    (["--depth", "6"], "depth 6 must be an integer in 2..5"),
    (["--depth", "2", "--switch-scale", "4"], "switch scale 4 must be an integer in 0..3"),
    (["--depth", "2", "--switch-scale", "-1"], "switch scale -1 must be an integer in 0..3"),
    (["--switch-scale", "1"], "a switch scale needs a depth below the model's 5 blocks"),
])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_bad_depth_flags_are_one_line_errors(deep_folder, tmp_path, capsys, extra, needle, command):
    msg = user_error(capsys, command, "--model", str(deep_folder), "--classes", "0", "1", "--seeds", "0",
                     "--out", str(tmp_path / "o"), *extra)
    assert needle in msg, msg
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_depth_flags_are_checked_before_the_weights_load(deep_folder, tmp_path, capsys, command):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(deep_folder, broken)
    (broken / "var.safetensors").write_bytes(b"not safetensors")
    msg = user_error(capsys, command, "--model", str(broken), "--classes", "0", "1", "--seeds", "0", "--depth", "9",
                     "--out", str(tmp_path / "o"))
    assert "depth 9 must be an integer in 2..5" in msg, msg


def test_a_depth_plan_of_the_wrong_length_is_refused():
    vae, var, _, _ = lively()
    with pytest.raises(UserError, match="depth plan has 3 scales, the model samples 4"):
        sample(var.eval(), vae, [1], [0], depth_plan=switch_plan(D, 3, 1, 2))


# ---------------------------------------------------------------- the recipe


TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "variant" / "tiny.yaml")
QUICK = ["data_size=64", "val_size=8", "progress=false", "eval_every=0", "checkpoint_every=0", "save_model=false",
         "cond_drop_rate=0.3", "batch=8"]
VOLATILE = ("time_", "images_per_s")


def _args(tmp_path, name, *extra):
    return [TINY_YAML, *QUICK, f"run.out_dir={tmp_path}", f"run.name={name}", *extra]


@pytest.mark.slow
def test_tiny_config_trains_every_path_and_evaluates_every_depth(tmp_path):
    assert main(["train", TINY_YAML, "progress=false", "data_size=64", "val_size=8", "batch=8", "iterations=8",
                 "eval_every=8", "eval_seeds=1", f"run.out_dir={tmp_path}", "run.name=t"]) == 0
    m = _metrics(tmp_path / "t", VOLATILE)
    # progressive 2:8 / 1:9 / 0:10 over 8 steps: stages 1-4, 5-6, 7-8; no full step (the 5th of stage 1 is past it)
    assert [m[s]["path_depth"] for s in range(1, 9)] == [4, 2, 4, 2, 4, 2, 4, 2]
    last = m[8]
    for sfx in ("", "_d4", "_d2"):
        assert {f"val_loss{sfx}", f"val_acc{sfx}", f"eval_strict{sfx}"} <= last.keys()
    assert last["val_loss_d2"] > last["val_loss"]
    run = tmp_path / "t"
    assert (run / "eval" / "step-000008" / "report.json").is_file()
    for d in (4, 2):
        r = json.loads((run / "eval" / "step-000008" / f"d{d}" / "report.json").read_text())
        assert r["depth_plan"] == switch_plan(6, 6, 3, d)
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["sampling"]["switch_scale"] == 3  # the last three of six scales, as the paper's 7 of 10
    card = (run / "model" / "README.md").read_text()
    assert "| 2 |" in card and "--depth 2" in card


def test_flexvar_trains_on_random_scale_lists_switching_by_size(tmp_path):
    """FlexVAR draws a scale list per step; the subnet runs the scales at least as large as the switch
    scale of its own list (size 4 for the last three of 1, 2, 3, 4, 6, 8 -> 5 of 8 sizes here)."""
    from vgen.vartrain.data import flex_scale_list

    assert main(["train", *_args(tmp_path, "f", "init=assets/flexvar-tiny-shapes", "iterations=2",
                                 "switch_scale=3")]) == 0
    m = _metrics(tmp_path / "f", VOLATILE)
    for step in (1, 2):
        assert m[step]["num_scales"] == len(flex_scale_list(0, step, tuple(range(1, 9)), 3))
        assert m[step]["path_depth"] in (4, 2)


def test_full_only_schedule_trains_exactly_as_the_var_recipe(tmp_path):
    """ratio 1:0 trains the full network every step: the var recipe's step, bit for bit."""
    common = ["init=assets/var-tiny-shapes", "tokenizer=assets/var-tiny-shapes", "iterations=3", "lr=1e-4",
              "warmup=0", *QUICK[:3], "batch=8", "save_model=true", "cond_drop_rate=0.3", "sample_every=0",
              "eval_seeds=0", "eval_every=0", "label_smoothing=0.1"]
    assert main(["train", TINY_YAML, *common, "schedule=fixed", "ratio=[1,0]", "lr_schedule=constant",
                 f"run.out_dir={tmp_path}", "run.name=v"]) == 0
    assert main(["train", TINY_YAML.replace("variant/tiny", "var/tiny"), *common, "schedule=constant",
                 f"run.out_dir={tmp_path}", "run.name=tf"]) == 0
    a, b = _metrics(tmp_path / "v", VOLATILE), _metrics(tmp_path / "tf", VOLATILE)
    assert all(a[s]["loss"] == b[s]["loss"] and a[s]["grad_norm"] == b[s]["grad_norm"] for s in (1, 2, 3))
    wa, wb = (load_file(str(tmp_path / n / "model" / "var.safetensors")) for n in ("v", "tf"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_private_offsets_train_save_and_switch_without_touching_weights(tmp_path):
    """private=true: the offsets of each trained depth train (they leave zero), the folder rebuilds them, and
    the loaded model samples every depth with them and no weight touched; the full path ignores them."""
    from vgen.models.load import load

    assert main(["train", *_args(tmp_path, "p", "iterations=4", "private=true", "save_model=true")]) == 0
    m = load(tmp_path / "p" / "model")
    assert json.loads((tmp_path / "p" / "model" / "config.json").read_text())["var"]["private_depths"] == [2, 4]
    assert all(m.var.private[str(d)].blocks.abs().sum() > 0 for d in (2, 4))
    before = {k: (v.data_ptr(), v.clone()) for k, v in m.var.state_dict().items()}
    kw = dict(cfg=1.5, top_k=5, return_logits=True)
    full = sample(m.var, m.vqvae, [3, 9], [0, 1], **kw)
    sub = sample(m.var, m.vqvae, [3, 9], [0, 1], depth_plan=switch_plan(6, 6, 3, 2), **kw)
    for k, v in m.var.state_dict().items():
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k
    with torch.no_grad():
        for p in m.var.private.parameters():
            p.zero_()
    assert torch.equal(sample(m.var, m.vqvae, [3, 9], [0, 1], **kw).logits[-1], full.logits[-1])
    bare = sample(m.var, m.vqvae, [3, 9], [0, 1], depth_plan=switch_plan(6, 6, 3, 2), **kw)
    assert torch.equal(bare.logits[2], sub.logits[2]) and not torch.equal(bare.logits[-1], sub.logits[-1])


def test_private_lr_scale_moves_the_offsets_that_much_faster(tmp_path):
    """Adam's first steps move a parameter by about its lr, so the offsets move about 10x as far at
    private_lr_scale=10 (the shared weights' lr unchanged)."""
    from vgen.models.load import load

    size = {}
    for k in (1, 10):
        assert main(["train", *_args(tmp_path, f"s{k}", "iterations=2", "schedule=fixed", "ratio=[0,1]",
                                     "private=true", f"private_lr_scale={k}", "save_model=true")]) == 0
        var = load(tmp_path / f"s{k}" / "model").var
        size[k] = var.private["4"].blocks.abs().mean().item()
    assert 7 < size[10] / size[1] < 13


def test_loss_mix_trains_both_paths_every_step(tmp_path):
    """mix=loss end to end: stages 2:8 / 1:9 train both paths (both CEs logged), the 0:10 stage the
    subnet only, the depths in turn."""
    assert main(["train", *_args(tmp_path, "j", "iterations=8", "mix=loss")]) == 0
    m = _metrics(tmp_path / "j", VOLATILE)
    assert [m[s]["path_depth"] for s in range(1, 9)] == [4, 2] * 4
    assert all({"loss_full", "loss_subnet"} <= m[s].keys() for s in range(1, 7))
    assert all("loss_full" not in m[s] and m[s]["loss"] == m[s]["loss_subnet"] for s in (7, 8))
    assert all(m[s]["loss"] == pytest.approx(0.2 * m[s]["loss_full"] + 0.8 * m[s]["loss_subnet"], rel=1e-5)
               for s in range(1, 5))


def test_project_conflict_is_pcgrad_by_brute_force():
    """grad_step's projection, against the formula on one flat vector: where g.h < 0, g - (g.h / h.h) h,
    else g unchanged; then + weight x h; the cosine is taken before."""
    from vgen.train.loop import project_conflict

    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    for case in range(40):
        g = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        h = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        weight = [0.0, 0.25, 1.0][case % 3]
        fg, fh = torch.cat([t.reshape(-1) for t in g]), torch.cat([t.reshape(-1) for t in h])
        dot = float(fg @ fh)
        want = (fg - dot / float(fh @ fh) * fh if dot < 0 else fg) + weight * fh
        stats = project_conflict(g, h, weight)
        assert torch.allclose(torch.cat([t.reshape(-1) for t in g]), want, rtol=1e-12, atol=1e-12)
        assert stats["projected"] == float(dot < 0)
        assert stats["guard_cos"] == pytest.approx(dot / float(fg.norm() * fh.norm()), rel=1e-9)
        if dot < 0:  # what is left of g no longer points against h
            assert abs(float((want - weight * fh) @ fh)) < 1e-9


@pytest.mark.parametrize("ratio", [(2.0, 8.0), (0.0, 1.0)])
def test_projected_step_sets_the_subnets_gradient_against_the_full_paths(ratio):
    """project=true: the objective backpropagates w_sub x the subnet path and hands the full path's loss
    (unweighted) to grad_step as the guard with weight w_full, a zero weight included; grad_step's update
    is then PCGrad of the two paths' gradients, checked against a hand projection with SGD at lr 1."""
    from vgen.train.loop import grad_step
    from vgen.variant.recipe import VariantConfig, variant_objective

    class One:
        world = 1

        def sum_(self, tensors):
            pass

    vae, var, tokens, labels = lively()
    cfg = VariantConfig(init="unused", depths=[3, 2], switch_scale=2, schedule="fixed", ratio=list(ratio),
                        mix="loss", project=True, iterations=4)
    params = [p for p in var.parameters() if p.requires_grad]
    w_full = ratio[0] / sum(ratio)
    full = variant_loss(var, vae, tokens, labels, None).loss
    sub = variant_loss(var, vae, tokens, labels, plan_for(D, PN, PN[2], 2)).loss
    hf = [g if g is not None else torch.zeros_like(p)
          for g, p in zip(torch.autograd.grad(full, params, allow_unused=True), params)]
    gs = [g if g is not None else torch.zeros_like(p)
          for g, p in zip(torch.autograd.grad((1 - w_full) * sub, params, allow_unused=True), params)]
    fg, fh = torch.cat([t.reshape(-1) for t in gs]).double(), torch.cat([t.reshape(-1) for t in hf]).double()
    dot = float(fg @ fh)
    want = (fg - dot / float(fh @ fh) * fh if dot < 0 else fg) + w_full * fh

    out = variant_objective(cfg)(var, vae, tokens, labels, PN, None, 2)
    assert out.guard is not None and out.guard.item() == pytest.approx(full.item(), rel=1e-6)
    assert out.guard_weight == w_full and out.loss.item() == pytest.approx((1 - w_full) * sub.item(), rel=1e-6)
    assert out.figures["loss"].item() == pytest.approx(w_full * full.item() + (1 - w_full) * sub.item(), rel=1e-6)
    from vgen.vartrain.recipe import set_aside

    guard = set_aside(params, out.guard, None)
    out.loss.backward()
    before = [p.detach().clone() for p in params]
    stats = grad_step(One(), params, torch.optim.SGD(params, lr=1.0), torch.zeros(1), grad_clip=1e9,
                      guard=guard, guard_weight=out.guard_weight)
    moved = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, params)]).double()
    assert torch.allclose(moved, want, rtol=1e-4, atol=1e-6)
    assert stats["projected"] == float(dot < 0)


def test_projection_runs_the_full_path_in_a_subnet_only_stage(tmp_path):
    """End to end: in the 0:10 stage the full path still runs (its CE logged) and every step logs the
    two gradients' cosine; without project the same stage skips the full path."""
    assert main(["train", *_args(tmp_path, "g", "iterations=8", "mix=loss", "project=true")]) == 0
    m = _metrics(tmp_path / "g", VOLATILE)
    assert all({"loss_full", "loss_subnet", "guard_cos", "projected"} <= m[s].keys() for s in range(1, 9))
    assert all(m[s]["loss"] == pytest.approx(m[s]["loss_subnet"], rel=1e-5) for s in (7, 8))
    assert all(-1 <= m[s]["guard_cos"] <= 1 and m[s]["projected"] == float(m[s]["guard_cos"] < 0) for s in m)


# ---------------------------------------------------------------- the anchor (vgen extra)

class _Rows:
    """Data stand-in: item j is sample j of fixed token maps."""

    def __init__(self, tokens, labels):
        self.tokens, self.labels = tokens, labels

    def get(self, idx, device, patch_nums=None, step=0):
        return [t[idx] for t in self.tokens], self.labels[idx]


def test_anchor_fisher_is_the_mean_squared_per_sample_gradient_and_the_penalty_its_quadratic():
    """F against per-sample gradients taken from one batched forward (each sample's own CE row, not the
    per-sample forwards the anchor runs), and the penalty and its gradient against their formulas."""
    from vgen.variant.anchor import full_path_fisher
    from vgen.vartrain.losses import tf_loss_from_tokens

    vae, var, tokens, labels = lively()
    var.add_private_depths([2])  # private offsets are the subnet's own: not anchored
    anchor = full_path_fisher(var, vae, _Rows(tokens, labels), [0, 2, 1, 2], label_smoothing=0.1)
    assert var.training and all(p.grad is None for p in var.parameters())
    assert not any(n.startswith("private.") for n in anchor.names)
    params = dict(var.named_parameters())
    var.eval()
    per_sample = tf_loss_from_tokens(var, vae, tokens, labels, 0.1).per_sample  # detached: recompute rows
    inputs = teacher_forcing_inputs(vae, tokens, PN)
    logits = var(labels, inputs)
    ce = F.cross_entropy(logits.float().flatten(0, 1), torch.cat(tokens, 1).flatten(), label_smoothing=0.1,
                         reduction="none").view(3, -1).mean(1)
    assert torch.allclose(ce.detach(), per_sample, atol=1e-6)
    expect = {n: torch.zeros_like(p) for n, p in params.items() if n in anchor.names}
    for j in (0, 2, 1, 2):
        grads = torch.autograd.grad(ce[j], [params[n] for n in expect], retain_graph=True, allow_unused=True)
        for n, g in zip(expect, grads):
            if g is not None:
                expect[n] += g.pow(2) / 4
    assert list(expect) == anchor.names
    for n, f in zip(anchor.names, anchor.fisher):
        assert torch.allclose(f, expect[n], rtol=1e-4, atol=1e-10), n
    assert sum(f.sum() for f in anchor.fisher) > 0
    assert anchor.penalty(var).item() == 0.0
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    pen = anchor.penalty(var)
    brute = sum(0.5 * float(f[i] * (params[n].detach().reshape(-1)[i] - c.reshape(-1)[i]) ** 2)
                for n, c, f in zip(anchor.names, anchor.centre, (f.reshape(-1) for f in anchor.fisher))
                for i in range(c.numel()))
    assert pen.item() == pytest.approx(brute, rel=1e-4)
    pen.backward()
    for n, c, f in zip(anchor.names, anchor.centre, anchor.fisher):
        assert torch.allclose(params[n].grad, f * (params[n].detach() - c), rtol=1e-5, atol=1e-12), n


@pytest.mark.slow
def test_anchor_pulls_the_subnet_steps_towards_the_base_where_the_full_path_is_steep(tmp_path):
    """anchor > 0: subnet steps log the penalty and add anchor x it to their loss; full steps do not;
    a strong anchor leaves the trained weights far closer to the base in the Fisher's metric."""
    from vgen.models.load import load
    from vgen.variant.anchor import full_path_fisher
    from vgen.vartrain.data import Data, batch_indices
    from vgen.world.datasets import ShapesClassDataset

    common = ["iterations=6", "schedule=fixed", "ratio=[1,2]", "save_model=true", "anchor_samples=16"]
    for name, a in (("free", 0), ("held", 1e6)):
        assert main(["train", *_args(tmp_path, name, *common, f"anchor={a}")]) == 0
    m = _metrics(tmp_path / "held", VOLATILE)
    free = _metrics(tmp_path / "free", VOLATILE)
    assert [m[s]["path_depth"] for s in range(1, 7)] == [4, 2, 6, 4, 2, 6]
    assert "anchor" not in m[3] and "anchor" not in m[6] and m[1]["anchor"] == 0.0 and m[2]["anchor"] > 0
    assert m[1]["loss"] == free[1]["loss"] and m[3]["loss"] != free[3]["loss"]  # step 1 starts at the base
    base = load("assets/var-tiny-shapes")
    ds = ShapesClassDataset(64, base.resolution, 0)
    anchor = full_path_fisher(base.var, base.vqvae, Data(base.vqvae, ds, False), batch_indices(0, 0, 16, 64), 0.1)
    pen = {n: anchor.penalty(load(tmp_path / n / "model").var).item() for n in ("free", "held")}
    assert pen["held"] < 0.4 * pen["free"], pen  # 0.21 when written (full steps move the weights freely)


def test_a_loss_mix_anchors_with_the_subnets_weight(tmp_path):
    """mix=loss: f * L_full + s * (L_subnet + anchor x the estimate), the estimate logged as ``anchor``."""
    assert main(["train", *_args(tmp_path, "ja", "iterations=3", "mix=loss", "schedule=fixed", "anchor=10000",
                                 "anchor_samples=4")]) == 0
    m = _metrics(tmp_path / "ja", VOLATILE)
    assert m[1]["anchor"] == 0.0 and m[3]["anchor"] > 0
    for s in (1, 2, 3):
        expect = 0.2 * m[s]["loss_full"] + 0.8 * (m[s]["loss_subnet"] + 10000 * m[s]["anchor"])
        assert m[s]["loss"] == pytest.approx(expect, rel=1e-5)
    assert 10000 * m[3]["anchor"] > 1e-4 * m[3]["loss"]  # the term is not lost in the rounding


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    # with private offsets, so the resumed optimizer has their group (at its own lr) too, and the anchor, whose
    # Fisher a resume computes again from the base
    common = ["iterations=6", "checkpoint_every=2", "distill=0.5", "schedule=fixed", "ratio=[1,2]", "private=true",
              "anchor=100", "anchor_samples=8"]
    assert main(["train", *_args(tmp_path, "ref", *common)]) == 0
    kill_after_first_checkpoint(_args(tmp_path, "k", *common), tmp_path / "k")
    assert main(["train", *_args(tmp_path, "k", *common)]) == 0
    assert "resum" in capsys.readouterr().out
    ref = _metrics(tmp_path / "ref", VOLATILE)
    assert _metrics(tmp_path / "k", VOLATILE) == ref
    assert [ref[s]["path_depth"] for s in range(1, 7)] == [4, 2, 6, 4, 2, 6] and "kl" in ref[1] and "kl" not in ref[3]


@pytest.mark.parametrize("extra", [["distill=0.5", "anchor=100", "anchor_samples=8"],
                                   ["mix=loss", "project=true", "micro_batch=2"]])
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, extra):
    """The projection too: it sees the whole batch's summed gradients, micro-batches included."""
    common = ["iterations=2", *extra]
    two_processes(_args(tmp_path, "two", *common))
    assert main(["train", *_args(tmp_path, "one", *common)]) == 0
    assert_same_metrics(tmp_path / "two", tmp_path / "one", [1, 2])


@pytest.mark.parametrize("extra, message", [
    (["depths=[6]"], "depths [6] must each lie in 2..5"),
    (["depths=[1]"], "'depths[0]' = 1 is out of range"),
    (["depths=[2,2]"], "repeats a depth"),
    (["switch_scale=6"], "switch_scale 6 must lie in 0..5"),
    (["schedule=cyclic"], "'schedule'"),
    (["mix=both"], "'mix'"),
    (["stage_ends=[0.5,1.0]"], "one ratio per stage"),
    (["stage_ratios=[[1,1,1],[1,1],[1,1]]"], "each of stage_ratios is a pair"),
    (["schedule=fixed", "ratio=[0,0]"], "not both 0"),
    (["stage_ends=[0.6,0.5,1.0]"], "must increase"),
    (["init=null"], "set init"),
    (["anchor=-1"], "'anchor'"),
    (["anchor_samples=0"], "'anchor_samples'"),
    (["project=true"], "project=true needs mix=loss"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, extra, message):
    msg = user_error(capsys, "train", *_args(tmp_path, "bad", "iterations=1", *extra))
    assert message in msg, msg
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_dry_run_names_the_recipe(capsys):
    assert main(["train", TINY_YAML, "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe variant: VAR depth 6") and "8 per process" in out


def test_dry_run_counts_both_paths_of_a_loss_mix(capsys):
    """mix=loss holds the full path's and the deepest subnet's activations at once: the estimate grows by
    the subnet path's blocks x tokens and its logits (a VAR-d16-sized plan, so the GiB show)."""
    big = ["init=not/here", "depth=16", "width=1024", "heads=16", "batch=64", "depths=[8,2]", "switch_scale=7"]

    def activations(*extra) -> float:
        assert main(["train", TINY_YAML, *big, *extra, "--dry-run"]) == 0
        out = capsys.readouterr().out
        return float(out.split("activations of one micro-batch ")[1].split(" GiB")[0])

    steps, loss = activations(), activations("mix=loss")
    pns = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]  # the official tokenizer's scales (init is not here)
    blocks = sum(p * p * (16 if k < 7 else 8) for k, p in enumerate(pns))
    extra = 64 * 1024 * 34 * blocks + 64 * sum(p * p for p in pns) * 4096 * 12
    assert loss - steps == pytest.approx(extra / 2**30, abs=0.011)


def test_dry_run_counts_the_anchors_two_float32_copies(capsys):
    """anchor > 0 keeps the base's shared weights and their Fisher: 8 bytes per shared parameter more (a
    VAR-d30-sized model, from the config's sizes, so the difference shows at two decimals of a GiB)."""
    size = ["init=not/here", "tokenizer=not/here", "depth=30", "width=1920", "heads=30", "private=true", "depths=[16]"]
    out = {}
    for a in (0, 1):
        assert main(["train", TINY_YAML, *size, f"anchor={a}", "--dry-run"]) == 0
        out[a] = capsys.readouterr().out
    n = float(out[0].split("transformer ")[1].split("M")[0]) * 1e6
    private = int(out[0].split("trained; ")[1].split(" of them")[0].replace(",", ""))
    gib = [float(o.split("AdamW")[1].split(" GiB")[0].split()[-1]) for o in (out[0], out[1])]
    assert "AdamW + anchor" in out[1] and "anchor" not in out[0]
    assert gib[1] - gib[0] == pytest.approx(8 * (n - private) / 2**30, abs=0.02)


def test_dry_run_counts_the_projections_kept_gradient(capsys):
    """project=true keeps the full path's gradient apart from p.grad: 4 bytes per trained parameter more."""
    size = ["init=not/here", "tokenizer=not/here", "depth=30", "width=1920", "heads=30", "mix=loss"]
    out = {}
    for flag in ("false", "true"):
        assert main(["train", TINY_YAML, *size, f"project={flag}", "--dry-run"]) == 0
        out[flag] = capsys.readouterr().out
    n = float(out["false"].split("transformer ")[1].split("M")[0]) * 1e6
    gib = [float(o.split("AdamW")[1].split(" GiB")[0].split()[-1]) for o in out.values()]
    assert "AdamW + the full path gradient" in out["true"] and "full path gradient" not in out["false"]
    assert gib[1] - gib[0] == pytest.approx(4 * n / 2**30, abs=0.02)


def test_dry_run_counts_the_private_offsets(capsys):
    """Each trained depth d adds d x 6 x C + 2 x C parameters (the tiny base: width 128, depths 4 and 2)."""
    assert main(["train", TINY_YAML, "private=true", "--dry-run"]) == 0
    assert f"{(4 * 6 + 2 + 2 * 6 + 2) * 128:,} of them private per-depth offsets" in capsys.readouterr().out
