"""ScaleWeaver: reference attention, joint attention and a ControlNet-style branch on a frozen VAR."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_var_models
from test_cli import user_error
from test_solrl import _metrics
from test_var_train import assert_same_metrics, kill_after_first_checkpoint, two_processes

from vgen.cli import main
from vgen.engine.scalewise import filter_logits, sample, teacher_forcing_inputs
from vgen.errors import UserError
from vgen.eval.control import edge_f1, image_edges, mask_iou
from vgen.models.var.var import block_causal_bias
from vgen.scaleweaver.adapter import MODES, ControlRun, attach_control, condition_latent
from vgen.scaleweaver.conditions import (
    condition_guidance,
    condition_image,
    control_run,
    read_condition,
    scene_conditions,
)

PN = (1, 2, 3, 4)
B = 3


def models(mode, blocks=2, ref_scales="same", seed=4, pos_bias=False):
    """A 4-block random VAR whose logits depend on every block, its tokens, and a control adapter."""
    vae, var = tiny_var_models(seed=seed, patch_nums=PN, depth=4)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    var.eval()
    base = copy.deepcopy(var)
    attach_control(var, mode=mode, blocks=blocks, rank=4, ref_scales=ref_scales, pos_bias=pos_bias)
    tokens = [torch.randint(0, 32, (B, p * p), generator=g) for p in PN]
    cond = torch.rand(B, 8, 4, 4, generator=g)  # condition latents (B, Cvae, h, w)
    return vae, var.eval(), base, tokens, torch.tensor([0, 7, 70]), cond


def liven(var, scale=0.3):
    """Move every adapter parameter off its start (zero projections, zero LoRA B) so the control acts."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in var.control.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def tf_logits(var, vae, tokens, labels, run=None):
    return var(labels, teacher_forcing_inputs(vae, tokens, PN), control=run)


# ---------------------------------------------------------------- starts from the base


@pytest.mark.parametrize("mode, pos_bias", [(m, False) for m in MODES] + [("reference", True), ("joint", True)])
def test_untrained_control_is_the_base_bit_for_bit(mode, pos_bias):
    vae, var, base, tokens, labels, cond = models(mode, pos_bias=pos_bias)
    ref = tf_logits(base, vae, tokens, labels)
    for c in (cond, -3 * cond, torch.zeros_like(cond)):
        assert torch.equal(tf_logits(var, vae, tokens, labels, ControlRun(var, c, torch.ones(B), PN)), ref)
    for cfg in (0.0, 2.0):
        want = sample(base, vae, labels.tolist(), [1, 2, 3], cfg=cfg, top_k=8, return_logits=True)
        keep = torch.ones(2 * B if cfg else B)
        got = sample(var, vae, labels.tolist(), [1, 2, 3], cfg=cfg, top_k=8, return_logits=True,
                     control=ControlRun(var, cond, keep, PN, copies=2 if cfg else 1))
        assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))
        assert torch.equal(got.images, want.images)


@pytest.mark.parametrize("mode", ["reference", "joint"])
def test_lora_acts_on_the_condition_branch_only(mode):
    """With LoRA trained but the output projections still zero, nothing reaches the image."""
    vae, var, base, tokens, labels, cond = models(mode)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in var.control.named_parameters():
            if "lora" in name:
                p.add_(torch.randn(p.shape, generator=g))
    run = ControlRun(var, cond, torch.ones(B), PN)
    assert torch.equal(tf_logits(var, vae, tokens, labels, run), tf_logits(base, vae, tokens, labels))
    assert torch.equal(tf_logits(var, vae, tokens, labels), tf_logits(base, vae, tokens, labels))  # no condition


def test_dropped_rows_are_the_base_and_kept_rows_are_not():
    vae, var, base, tokens, labels, cond = models("reference")
    liven(var)
    out = tf_logits(var, vae, tokens, labels, ControlRun(var, cond, torch.tensor([1.0, 0.0, 1.0]), PN))
    ref = tf_logits(base, vae, tokens, labels)
    assert torch.equal(out[1], ref[1])
    assert not torch.allclose(out[0], ref[0], atol=1e-3) and not torch.allclose(out[2], ref[2], atol=1e-3)


# ---------------------------------------------------------------- the defining rule, computed by hand


def merged_block(block, view):
    """The base block with each LoRA folded into its weight: W + (alpha / r) B A, by hand."""
    out = copy.deepcopy(block)
    for name in ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2"):
        wrapped = view.get_submodule(name)
        A, Bm = wrapped.lora_A["default"].weight, wrapped.lora_B["default"].weight
        lin = out.get_submodule(name)
        with torch.no_grad():
            lin.weight += wrapped.scaling["default"] * Bm @ A
    return out


def position_bias_by_hand(w: torch.Tensor) -> torch.Tensor:
    """(H, L, L) bias of pos_bias, query i over condition key j, by loops over the grids of PN."""
    cells = [(k, r, c) for k, p in enumerate(PN) for r in range(p) for c in range(p)]
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    out = torch.zeros(w.shape[0], len(cells), len(cells))
    for i, (k, r, c) in enumerate(cells):
        for j, (k2, r2, c2) in enumerate(cells):
            if k == k2 and (r2 - r, c2 - c) in offsets:
                out[:, i, j] = w[:, offsets.index((r2 - r, c2 - c))]
    return out


@pytest.mark.parametrize("ref_scales, pos_bias", [("same", False), ("causal", False), ("same", True),
                                                  ("causal", True)])
def test_reference_attention_by_hand(ref_scales, pos_bias):
    """Block 0's output = base block with the term Z(softmax(q Kc^T s + M + P) Vc) added after attention, where
    Kc, Vc come from the condition sequence through the LoRA-merged block under the null class and P is
    pos_bias's learned bias of the keys around each query's own cell (zero without it)."""
    vae, var, base, tokens, labels, cond = models("reference", blocks=1, ref_scales=ref_scales, pos_bias=pos_bias)
    liven(var)
    run = ControlRun(var, cond, torch.ones(B), PN)
    inputs = teacher_forcing_inputs(vae, tokens, PN)
    captured = {}
    var.blocks[0].register_forward_hook(lambda m, a, o: captured.update(x=a[0], out=o))
    var(labels, inputs, control=run)

    blk, x = base.blocks[0], captured["x"]
    lengths = [p * p for p in PN]
    sid = torch.cat([torch.full((n,), k) for k, n in enumerate(lengths)])
    mask = block_causal_bias(lengths)
    _, c_mod = base.condition(labels)
    null = base.condition(torch.tensor([70]))[1]
    # the condition sequence: each scale's latent, area-resampled, embedded like an image scale
    c = torch.cat([base.word_embed(F.interpolate(cond, size=(p, p), mode="area").flatten(2).transpose(1, 2))
                   + base.pos_embed(k) for k, p in enumerate(PN)], 1)
    merged = merged_block(blk, var.control.views[0])
    g1, g2, s1, s2, b1, b2 = merged.modulation(null)
    _, kc, vc = merged.attn.qkv(merged.ln_wo_grad(c) * (s1 + 1) + b1)
    # the image side of block 0
    g1, g2, s1, s2, b1, b2 = blk.modulation(c_mod)
    hn = blk.ln_wo_grad(x) * (s1 + 1) + b1
    q, k, v = blk.attn.qkv(hn)
    att = (q @ k.transpose(-1, -2) * blk.attn.scale + mask).softmax(-1) @ v
    h = x + blk.attn.proj(att.transpose(1, 2).reshape(B, -1, var.C)) * g1
    see = sid[:, None] == sid[None, :] if ref_scales == "same" else sid[:, None] >= sid[None, :]
    logits = q @ kc.transpose(-1, -2) * blk.attn.scale
    if pos_bias:
        logits = logits + position_bias_by_hand(var.control.pos[0].detach())
    o = logits.masked_fill(~see, -torch.inf).softmax(-1) @ vc
    h = h + var.control.out[0](o.transpose(1, 2).reshape(B, -1, var.C))
    want = h + blk.ffn(blk.ln_wo_grad(h) * (s2 + 1) + b2) * g2
    torch.testing.assert_close(captured["out"], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- independence and caching


def test_reference_condition_stream_ignores_the_image_and_joint_does_not():
    for mode, independent in (("reference", True), ("joint", False)):
        vae, var, base, tokens, labels, cond = models(mode)
        liven(var)
        streams = []
        for t in (tokens, [torch.randint(0, 32, x.shape, generator=torch.Generator().manual_seed(1)) for x in tokens]):
            run = ControlRun(var, cond, torch.ones(B), PN)
            kv: list = []
            grab = kv.append
            hooks = [view.attn.register_forward_hook(lambda m, a, o, grab=grab: grab(o.detach()))
                     for view in var.control.views]
            tf_logits(var, vae, t, labels, run)
            for hk in hooks:
                hk.remove()
            streams.append(kv)
        same = all(torch.equal(a, b) for a, b in zip(*streams))
        assert same == independent, mode


@pytest.mark.parametrize("mode, pos_bias", [(m, False) for m in MODES] + [("reference", True), ("joint", True)])
@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_cached_sampling_equals_recompute(mode, pos_bias, cfg):
    vae, var, base, tokens, labels, cond = models(mode, pos_bias=pos_bias)
    liven(var)
    keep = torch.tensor([1.0, 1.0, 1.0] + ([0.0, 0.0, 0.0] if cfg else []))
    out = [sample(var, vae, labels.tolist(), [4, 5, 6], cfg=cfg, top_k=8, return_logits=True, use_cache=cache,
                  control=ControlRun(var, cond, keep, PN, copies=2 if cfg else 1)) for cache in (True, False)]
    for a, b in zip(out[0].logits, out[1].logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(out[0].tokens, out[1].tokens))
    plain = sample(base, vae, labels.tolist(), [4, 5, 6], cfg=cfg, top_k=8, return_logits=True)
    assert not torch.allclose(out[0].logits[-1], plain.logits[-1], atol=1e-3)  # the control acts


# ---------------------------------------------------------------- multi-modal CFG


@pytest.mark.parametrize("mode", MODES)
def test_separate_condition_guidance_is_multimodal_cfg(mode):
    """The sampler's log-probs under a condition guidance of its own equal, by three independent
    teacher-forcing forwards, l(y,c) + t (l(y,c) - l(0,c)) + t_c (l(0,c) - l(0,0)) on the CFG ramp,
    then top-k."""
    vae, var, base, tokens, labels, cond = models(mode)
    liven(var)
    cfg, tc = 2.0, 5.0
    keep = torch.tensor([1.0] * (2 * B) + [0.0] * B)
    r = sample(var, vae, labels.tolist(), [4, 5, 6], cfg=cfg, top_k=8, return_logprobs=True,
               control=ControlRun(var, cond, keep, PN, copies=3, cfg_control=tc))
    null = torch.full_like(labels, var.num_classes)
    with torch.no_grad():
        yc = tf_logits(var, vae, r.tokens, labels, ControlRun(var, cond, torch.ones(B), PN))
        nc = tf_logits(var, vae, r.tokens, null, ControlRun(var, cond, torch.ones(B), PN))
        nn = tf_logits(base, vae, r.tokens, null)  # no condition: the base itself
    assert not torch.allclose(nc, nn, atol=1e-3)  # the third term is not zero
    start = 0
    for si, pn in enumerate(PN):
        at = slice(start, start + pn * pn)
        start += pn * pn
        t, t_c = cfg * si / (len(PN) - 1), tc * si / (len(PN) - 1)
        mixed = yc[:, at] + t * (yc[:, at] - nc[:, at]) + t_c * (nc[:, at] - nn[:, at])
        want = filter_logits(mixed.float(), 8).log_softmax(-1).gather(-1, r.tokens[si].unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(r.logprobs[si], want, atol=1e-4, rtol=1e-4)


def test_condition_guidance_equal_or_zero_needs_two_copies_only(trained):
    """Equal scales are one guidance on class and condition, a zero one guides the class alone: both
    run the samples and their null twins only, and equal the three-copy form up to rounding."""
    from vgen.models.load import load

    m = load(trained / "model")
    images, _ = scene_conditions([0, 10, 46], [5, 5, 5], "edges", 64)
    latent = condition_latent(m.vqvae, images)
    for tc, running in ((2.0, [0, 1, 2]), (0.0, None)):  # the rows that see the condition (None: all)
        two = control_run(m.var, m.vqvae, images, 2.0, tc)
        assert two.R == 6 and two.cfg_control is None
        assert (two.on if two.on is None else two.on.tolist()) == running
        three = ControlRun(m.var, latent, torch.tensor([1.0] * 6 + [0.0] * 3), m.var.patch_nums, copies=3,
                           cfg_control=tc)
        a, b = (sample(m.var, m.vqvae, [0, 10, 46], [3, 4, 5], cfg=2.0, top_k=40, return_logprobs=True, control=run)
                for run in (two, three))
        assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
        for x, y in zip(a.logprobs, b.logprobs):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert control_run(m.var, m.vqvae, images, 2.0).R == 6  # default: the class's scale on both
    assert control_run(m.var, m.vqvae, images, 2.0, 4.0).R == 9
    assert control_run(m.var, m.vqvae, images, 0.0, 0.0).R == 3
    with pytest.raises(UserError, match="finite and >= 0"):
        control_run(m.var, m.vqvae, images, 2.0, float("nan"))


@pytest.mark.parametrize("sampling, given, want", [
    ({}, None, 2.0), ({"guide_control": False}, None, 0.0), ({"cfg_control": 5.0}, None, 5.0),
    ({"cfg_control": 5.0, "guide_control": False}, None, 5.0), ({"cfg_control": 5.0}, 1.5, 1.5)])
def test_condition_guidance_defaults(sampling, given, want):
    assert condition_guidance(sampling, 2.0, given) == want


def test_recipe_records_its_condition_guidance(tmp_path):
    assert main(["train", *_args(tmp_path, "g", "iterations=1", "save_model=true", "sample_cfg_control=5")]) == 0
    sampling = json.loads((tmp_path / "g" / "model" / "config.json").read_text())["sampling"]
    assert sampling["cfg_control"] == 5.0 and sampling["guide_control"] is True


def test_cfg_control_flags(trained, tmp_path, capsys):
    model = str(trained / "model")
    for name, extra in (("a", []), ("b", ["--cfg-control", "6"])):
        assert main(["sample", "--model", model, "--classes", "0", "10", "46", "--control-seeds", "3",
                     "--out", str(tmp_path / name), *extra]) == 0
    a, b = (json.loads((tmp_path / n / "samples.json").read_text()) for n in "ab")
    assert (a["cfg_control"], b["cfg_control"]) == (a["cfg"], 6.0)
    assert main(["eval", "--model", model, "--classes", "0", "--seeds", "1000000", "--metrics", "control",
                 "--cfg-control", "6", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["control"]["cfg_control"] == 6.0
    capsys.readouterr()
    for args, message in (
            (["sample", "--model", model, "--classes", "0", "--cfg-control", "3"], "give --control FILE"),
            (["sample", "--model", model, "--classes", "0", "--control-seeds", "3", "--cfg-control", "-1"],
             "cfg_control"),
            (["sample", "--model", "assets/var-tiny-shapes", "--classes", "0", "--control-seeds", "3",
              "--cfg-control", "3"], "no control adapter"),
            (["eval", "--model", "assets/var-tiny-shapes", "--classes", "0", "--metrics", "control",
              "--cfg-control", "3"], "needs a model with one")):
        msg = user_error(capsys, *args, "--out", str(tmp_path / "x"))
        assert message in msg, msg
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mode, pos_bias", [("controlnet", False), ("reference", True)])
def test_the_folder_keeps_the_adapter(tmp_path, mode, pos_bias):
    from vgen.models.load import load
    from vgen.models.var.folder import save_var_model
    from vgen.world.datasets import CLASS_PROMPTS

    vae, var, base, tokens, labels, cond = models(mode, pos_bias=pos_bias)
    liven(var)
    folder = save_var_model(tmp_path / "m", vae, var, CLASS_PROMPTS, 16)
    m = load(folder)
    assert m.var.control.mode == mode and m.var.control.blocks == 2 and (m.var.control.pos is not None) == pos_bias
    run = lambda v: ControlRun(v, cond, torch.ones(B), PN)  # noqa: E731
    # the same weights; the LoRA views of a loaded model may round differently (about 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(m.var.state_dict().values(), var.state_dict().values()))
    torch.testing.assert_close(tf_logits(m.var, m.vqvae, tokens, labels, run(m.var)),
                               tf_logits(var, vae, tokens, labels, run(var)), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- conditions and metrics


def test_condition_images_are_ink_on_the_world_background():
    img, maps = scene_conditions([10], [3], "edges", 32)
    on = torch.from_numpy(maps[0]["edges"] > 0)
    assert on.any() and torch.allclose(img[0][:, on], torch.full((3, int(on.sum())), 40 / 255))
    assert torch.allclose(img[0][:, ~on], torch.full((3, int((~on).sum())), 235 / 255))
    mask = condition_image(maps[0], "mask")
    assert (mask[0] < 0.5).sum() == (maps[0]["mask"] > 0).sum()


def near(b, tol):
    """Pixels within Chebyshev distance tol of a set pixel of b, by looking at every pixel's window."""
    n = b.shape[0]
    return np.array([[b[max(0, i - tol):i + tol + 1, max(0, j - tol):j + tol + 1].any() for j in range(n)]
                     for i in range(n)])


def test_edge_f1_against_a_brute_force_count():
    rng = np.random.default_rng(0)
    for tol in (0, 1, 2):
        p, t = rng.random((12, 12)) < 0.15, rng.random((12, 12)) < 0.15
        prec, rec = (p & near(t, tol)).sum() / p.sum(), (t & near(p, tol)).sum() / t.sum()
        assert edge_f1(p, t, tol) == pytest.approx(2 * prec * rec / (prec + rec))
    z = np.zeros((4, 4), bool)
    assert edge_f1(z, z) == 1.0 and edge_f1(z | np.eye(4, dtype=bool), z) == 0.0
    assert mask_iou(np.eye(4, dtype=bool), np.ones((4, 4), bool)) == 0.25


def test_a_rendered_scene_matches_its_own_condition():
    """The world's render against its own maps: every metric near its top (the metric's sanity)."""
    from vgen.eval.control import control_scores
    from vgen.world.datasets import CLASS_PROMPTS
    from vgen.world.scene import condition_maps, render, sample_scene

    scenes = [sample_scene(CLASS_PROMPTS[c], 11) for c in (0, 10, 46)]
    images = np.stack([render(s, 64) for s in scenes])
    maps = [condition_maps(s, 64) for s in scenes]
    sc = control_scores(images, np.stack([m["edges"] > 0 for m in maps]), np.stack([m["mask"] for m in maps]))
    assert sc["edge_f1"].min() > 0.9 and sc["mask_iou"].min() > 0.9
    shuffled = control_scores(images[::-1], np.stack([m["edges"] > 0 for m in maps]),
                              np.stack([m["mask"] for m in maps]))
    assert shuffled["edge_f1"].mean() < 0.5
    assert image_edges(images).shape == (3, 64, 64)


def test_condition_targets_read_the_maps_back_from_condition_images():
    """An image folder's condition files are scored against their ink: on the world's own condition
    images that is exactly the map each was drawn from, and the other map is close to the exact one."""
    from vgen.eval.control import condition_targets
    from vgen.world.datasets import CLASS_PROMPTS
    from vgen.world.scene import condition_maps, sample_scene

    maps = [condition_maps(sample_scene(CLASS_PROMPTS[c], 11), 64) for c in (0, 10, 25, 46, 66)]
    edges, masks = np.stack([m["edges"] > 0 for m in maps]), np.stack([m["mask"] > 0 for m in maps])
    for kind in ("edges", "mask"):
        imgs = torch.stack([condition_image(m, kind) for m in maps])
        e, k = condition_targets(imgs, kind)
        assert np.array_equal(e if kind == "edges" else k, edges if kind == "edges" else masks)
        assert np.array_equal(condition_targets((imgs.permute(0, 2, 3, 1) * 255).round().byte().numpy(), kind)[0], e)
        other = k if kind == "edges" else e
        want = masks if kind == "edges" else edges
        if kind == "edges":
            assert min(mask_iou(a, b) for a, b in zip(other, want)) > 0.8
        else:
            assert min(edge_f1(a, b, 1) for a, b in zip(other, want)) > 0.8


def test_condition_files_are_checked(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (235, 235, 235)).save(tmp_path / "ok.png")
    assert read_condition(tmp_path / "ok.png", 16).shape == (3, 16, 16)
    Image.new("L", (16, 16), 200).save(tmp_path / "grey.png")
    assert read_condition(tmp_path / "grey.png", 16).shape == (3, 16, 16)
    Image.new("RGB", (20, 16)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match="is 20x16; the model takes 16x16"):
        read_condition(tmp_path / "big.png", 16)
    Image.new("RGBA", (16, 16)).save(tmp_path / "alpha.png")
    with pytest.raises(UserError, match="mode RGBA"):
        read_condition(tmp_path / "alpha.png", 16)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot be read"):
        read_condition(tmp_path / "bad.png", 16)
    with pytest.raises(UserError, match="does not exist"):
        read_condition(tmp_path / "nope.png", 16)


def test_bad_adapters_and_combinations_are_refused():
    vae, var = tiny_var_models(patch_nums=PN, depth=4)
    with pytest.raises(UserError, match="one of reference, joint, controlnet"):
        attach_control(var, mode="cross")
    with pytest.raises(UserError, match="blocks must be 1..4"):
        attach_control(var, blocks=5)
    with pytest.raises(UserError, match="not controlnet"):
        attach_control(var, mode="controlnet", pos_bias=True)
    vae, var, base, tokens, labels, cond = models("reference")
    with pytest.raises(UserError, match="cannot be combined"):
        var(labels, teacher_forcing_inputs(vae, tokens, PN), control=ControlRun(var, cond, torch.ones(B), PN),
            depth_plan=[[0, 1, 2, 3]] * 4)
    with pytest.raises(UserError, match="prepared for 3 samples"):
        sample(var, vae, [0, 1], [0, 1], cfg=0, control=ControlRun(var, cond, torch.ones(B), PN))
    with pytest.raises(UserError, match="no control adapter"):
        ControlRun(base, cond, torch.ones(B), PN)
    with pytest.raises(UserError, match=r"\(B, 3, H, W\)"):
        control_run(var, vae, torch.zeros(2, 1, 16, 16), 0.0)


# ---------------------------------------------------------------- the recipe and the CLI


TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "scaleweaver" / "tiny.yaml")
QUICK = ["data_size=64", "val_size=8", "progress=false", "eval_every=0", "checkpoint_every=0", "save_model=false",
         "cond_drop_rate=0.3", "control_drop=0.3", "batch=8", "eval_items=0"]
VOLATILE = ("time_", "images_per_s")


def _args(tmp_path, name, *extra):
    return [TINY_YAML, *QUICK, f"run.out_dir={tmp_path}", f"run.name={name}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw")
    assert main(["train", TINY_YAML, "progress=false", "data_size=64", "val_size=8", "batch=8", "iterations=3",
                 "eval_every=3", "eval_items=4", "lr=3e-3", f"run.out_dir={out}", "run.name=t"]) == 0
    return out / "t"


def test_recipe_trains_the_adapter_only_and_evaluates_control(trained):
    from safetensors.torch import load_file

    m = _metrics(trained, VOLATILE)
    assert {"eval_edge_f1", "eval_mask_iou", "eval_strict", "val_loss"} <= m[3].keys()
    assert (trained / "eval" / "step-000003" / "control.png").is_file()
    base = load_file("assets/var-tiny-shapes/var.safetensors")
    got = load_file(str(trained / "model" / "var.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in base.items())  # the base is frozen
    extra = [k for k in got if k not in base]
    assert extra and all(k.startswith("control.") for k in extra)
    assert any(got[k].abs().sum() > 0 for k in extra if k.startswith("control.out."))  # the projections moved
    cfg = json.loads((trained / "model" / "config.json").read_text())
    assert cfg["var"]["control"]["mode"] == "reference" and cfg["sampling"]["control"] == "edges"


def test_vgen_sample_takes_a_control(trained, tmp_path, capsys):
    assert main(["sample", "--model", str(trained / "model"), "--classes", "0", "10", "--control-seeds", "3",
                 "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert len(s["samples"]) == 2 and "seed 3" in s["samples"][0]["control"]
    assert (tmp_path / "a" / "control-0001.png").is_file()
    assert main(["sample", "--model", str(trained / "model"), "--classes", "0", "--control",
                 str(tmp_path / "a" / "control-0000.png"), "--out", str(tmp_path / "b")]) == 0
    # the same batch (one sample): the CPU kernels round alike only for batches of one size
    assert main(["sample", "--model", str(trained / "model"), "--classes", "0", "--control-seeds", "3",
                 "--out", str(tmp_path / "a1")]) == 0
    a = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "a1" / s["samples"][0]["file"]))
    b = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "b" / "0000-seed0-a-photo-of-a-circle.png"))
    assert np.array_equal(a, b)  # the same condition from a file samples the same image
    msg = user_error(capsys, "sample", "--model", "assets/var-tiny-shapes", "--classes", "0", "--control-seeds", "1",
                     "--out", str(tmp_path / "c"))
    assert "has no control adapter" in msg and not (tmp_path / "c").exists()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, capsys, mode):
    common = ["iterations=4", "checkpoint_every=2", f"mode={mode}", "blocks=2"]
    assert main(["train", *_args(tmp_path, "ref", *common)]) == 0
    kill_after_first_checkpoint(_args(tmp_path, "k", *common), tmp_path / "k")
    assert main(["train", *_args(tmp_path, "k", *common)]) == 0
    assert "resum" in capsys.readouterr().out
    assert _metrics(tmp_path / "k", VOLATILE) == _metrics(tmp_path / "ref", VOLATILE)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    common = ["iterations=2"]
    two_processes(_args(tmp_path, "two", *common))
    assert main(["train", *_args(tmp_path, "one", *common)]) == 0
    assert_same_metrics(tmp_path / "two", tmp_path / "one", [1, 2])


@pytest.mark.parametrize("extra, message", [
    (["mode=cross"], "'mode'"),
    (["blocks=7"], "blocks = 7 but the base has 6 blocks"),
    (["control=depth"], "'control'"),
    (["init=null"], "set init"),
    (["data=some/folder"], "needs control_data"),
    (["mode=controlnet", "pos_bias=true"], "not controlnet"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, extra, message):
    msg = user_error(capsys, "train", *_args(tmp_path, "bad", "iterations=1", *extra))
    assert message in msg, msg
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_vgen_eval_reports_control_for_the_model_and_the_base(trained, tmp_path):
    for name, model in (("m", trained / "model"), ("base", "assets/var-tiny-shapes")):
        assert main(["eval", "--model", str(model), "--classes", "0", "10", "46", "--seeds", "1000000", "1000001",
                     "--metrics", "geneval", "control", "--out", str(tmp_path / name)]) == 0
    m, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("m", "base"))
    assert m["control"]["controlled"] and not b["control"]["controlled"]
    assert m["control"]["n_images"] == 6 and 0 <= m["control"]["edge_f1"]["mean"] <= 1
    assert set(m["control"]["per_category"]) == {"single_object", "counting", "position"}
    assert "## Control" in (tmp_path / "m" / "report.md").read_text()
    # the base is sampled exactly as without the metric: the control metric only scores it
    assert main(["eval", "--model", "assets/var-tiny-shapes", "--classes", "0", "10", "46", "--seeds", "1000000",
                 "1000001", "--metrics", "geneval", "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["geneval_shapes"]["overall"] == b["geneval_shapes"]["overall"]


def test_vgen_eval_scores_control_on_a_folder_of_condition_files(trained, tmp_path, capsys):
    from PIL import Image

    from vgen.world.datasets import CLASS_PROMPTS

    model, seed = str(trained / "model"), 1000000
    classes = sorted([0, 10, 46], key=lambda c: CLASS_PROMPTS[c])  # the folder's order: by class folder name
    conds, _ = scene_conditions(classes, [seed] * 3, "edges", 64)
    for c, img in zip(classes, conds):
        (tmp_path / "conds" / CLASS_PROMPTS[c]).mkdir(parents=True)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(
            tmp_path / "conds" / CLASS_PROMPTS[c] / "scene.png")
    common = ["eval", "--model", model, "--metrics", "control", "--seeds", str(seed)]
    assert main([*common, "--control-data", str(tmp_path / "conds"), "--out", str(tmp_path / "f")]) == 0
    assert main([*common, "--classes", *map(str, classes), "--out", str(tmp_path / "w")]) == 0
    f, w = (json.loads((tmp_path / n / "report.json").read_text()) for n in "fw")
    fc, wc = f["control"], w["control"]
    assert fc["controlled"] and (fc["n_files"], fc["n_images"]) == (3, 3) and f["classes"] == sorted(classes)
    assert set(fc["per_class"]) == {CLASS_PROMPTS[c] for c in classes}
    # the world's own condition files, each sampled at its scene's seed: the same samples as the scene
    # path, scored against the files' ink, which is exactly the scenes' edges (the mask, filled from
    # the edges, is close)
    assert fc["edge_f1"]["per_seed"] == pytest.approx(wc["edge_f1"]["per_seed"], abs=1e-9)
    assert abs(fc["mask_iou"]["mean"] - wc["mask_iou"]["mean"]) < 0.1
    assert "condition file in" in (tmp_path / "f" / "report.md").read_text()
    (tmp_path / "conds" / "not a class").mkdir()
    Image.new("L", (64, 64), 255).save(tmp_path / "conds" / "not a class" / "x.png")
    capsys.readouterr()
    for args, message in (
            (["--control-data", str(tmp_path / "conds")], "'not a class' is not a class of the model"),
            (["--control-data", str(tmp_path / "nowhere")], "is not a folder"),
            (["--control-data", str(tmp_path / "conds"), "--classes", "0"], "control metric alone"),
            (["--control-data", str(tmp_path / "conds"), "--metrics", "geneval", "control"], "control metric alone")):
        msg = user_error(capsys, *common, *args, "--out", str(tmp_path / "x"))
        assert message in msg, msg
        assert not (tmp_path / "x").exists()


def test_export_adapter_round_trip(trained, tmp_path, capsys):
    from vgen.models.load import load
    from vgen.scaleweaver.adapter import load_adapter

    assert main(["export", str(trained / "model"), str(tmp_path / "ad"), "--format", "adapter"]) == 0
    files = {p.name for p in (tmp_path / "ad").iterdir()}
    assert {"adapter_config.json", "adapter.safetensors", "README.md", "samples.png"} <= files
    card = (tmp_path / "ad" / "README.md").read_text()
    assert "var.safetensors" not in files and "load_adapter" in card and "--adapter ad" in card
    full, base = load(trained / "model"), load("assets/var-tiny-shapes")
    load_adapter(base.var, tmp_path / "ad")
    conds, _ = scene_conditions([0, 10], [5, 5], "edges", 64)
    a, b = (sample(m.var, m.vqvae, [0, 10], [3, 4], cfg=2.0, top_k=40, control=control_run(m.var, m.vqvae, conds, 2.0))
            for m in (full, base))
    assert torch.equal(a.images, b.images)
    msg = user_error(capsys, "export", "assets/var-tiny-shapes", str(tmp_path / "x"), "--format", "adapter")
    assert "has no control adapter" in msg
    deep = load("assets/var-deep-shapes")
    with pytest.raises(UserError, match="fits a base with depth=6"):
        load_adapter(deep.var, tmp_path / "ad")


def test_sample_and_eval_put_an_exported_adapter_on_its_base(trained, tmp_path, capsys):
    """`--adapter` on the base samples and scores exactly as the trained model folder does."""
    from vgen.models.load import load

    ad = tmp_path / "ad"
    assert main(["export", str(trained / "model"), str(ad), "--format", "adapter"]) == 0
    for name, extra in (("full", ["--model", str(trained / "model")]),
                        ("put", ["--model", "assets/var-tiny-shapes", "--adapter", str(ad)])):
        assert main(["sample", *extra, "--classes", "0", "10", "--seeds", "3", "--control-seeds", "5",
                     "--out", str(tmp_path / f"s-{name}")]) == 0
        assert main(["eval", *extra, "--classes", "0", "10", "--seeds", "1000000", "--metrics", "geneval", "control",
                     "--out", str(tmp_path / f"e-{name}")]) == 0
    full, put = (json.loads((tmp_path / f"s-{n}" / "samples.json").read_text()) for n in ("full", "put"))
    assert put["adapter"] == str(ad) and [r["file"] for r in put["samples"]] == [r["file"] for r in full["samples"]]
    for r in full["samples"]:
        a, b = (np.asarray(__import__("PIL.Image").Image.open(tmp_path / f"s-{n}" / r["file"]))
                for n in ("full", "put"))
        assert np.array_equal(a, b)
    full, put = (json.loads((tmp_path / f"e-{n}" / "report.json").read_text()) for n in ("full", "put"))
    assert put["adapter"] == str(ad) and put["control"]["controlled"]
    assert put["control"]["edge_f1"] == full["control"]["edge_f1"]
    assert put["geneval_shapes"]["overall"] == full["geneval_shapes"]["overall"]
    assert "with the control adapter" in (tmp_path / "e-put" / "report.md").read_text()
    m = load("assets/var-tiny-shapes", adapter=ad)  # the base's own weights are untouched, the adapter's added
    base = load("assets/var-tiny-shapes")
    own = dict(base.var.state_dict())
    assert all(torch.equal(v, own[k]) for k, v in m.var.state_dict().items() if not k.startswith("control."))
    assert m.sampling["control"] == "edges" and m.var.control is not None
    assert base.var_config["var"].get("control") is None
    capsys.readouterr()
    for model, adapter, want in (
            ("assets/var-deep-shapes", ad, "fits a base with depth=6"),
            (str(trained / "model"), ad, "already has a control adapter"),
            ("assets/sd3-tiny-shapes", ad, "pipeline"),
            ("assets/var-tiny-shapes", tmp_path / "nothing", "is not a control adapter folder"),
            ("assets/var-tiny-shapes", trained / "model", "is not a control adapter folder")):
        for cmd in (["sample", "--classes", "0", "--seeds", "1"], ["eval", "--classes", "0", "--seeds", "1"]):
            msg = user_error(capsys, *cmd, "--model", model, "--adapter", str(adapter), "--out", str(tmp_path / "x"))
            assert want in msg, (cmd, msg)
            assert not (tmp_path / "x").exists()


def test_shared_conditions_run_once_and_match_separate_runs():
    vae, var, base, tokens, labels, cond = models("reference")
    liven(var)
    twin = cond[[0, 0, 1]]
    t2 = [t[[0, 0, 1]] for t in tokens]
    run = ControlRun(var, twin, torch.ones(B), PN)
    out = tf_logits(var, vae, t2, labels[[0, 0, 1]], run)
    assert run.ref_k[0][0].shape[0] == 3 and len(run.maps[0]) == 2  # two distinct conditions, three rows
    assert torch.equal(out[0], out[1])
    alone = tf_logits(var, vae, [t[:2] for t in tokens], labels[:2], ControlRun(var, cond[:2], torch.ones(2), PN))
    torch.testing.assert_close(out[[0, 2]], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bench_control_reports_every_mode(tmp_path):
    assert main(["bench", "control", "batch=4", "per_condition=2", "train_batch=2", "repeats=1",
                 f"run.out_dir={tmp_path}", "run.name=b"]) == 0
    r = json.loads((tmp_path / "b" / "report.json").read_text())
    rows = r["rows"]
    assert set(rows) == {"base", "reference", "joint", "controlnet"}
    assert rows["controlnet"]["trainable_params"] > 5 * rows["reference"]["trainable_params"]
    assert rows["reference"]["trainable_params"] == rows["joint"]["trainable_params"]
    # the reference keys are held for each running row: 3 blocks x k and v over every token
    from vgen.models.load import load

    tiny = load("assets/var-tiny-shapes").var
    extra = 3 * 2 * tiny.L * tiny.C * 4
    assert rows["reference"]["peak_state_bytes_per_image"] == rows["base"]["peak_state_bytes_per_image"] + extra
    assert main(["bench", "control", "batch=4", "per_condition=2", "train_batch=2", "repeats=1", "pos_bias=true",
                 "modes=[reference]", f"run.out_dir={tmp_path}", "run.name=p"]) == 0
    pos = json.loads((tmp_path / "p" / "report.json").read_text())["rows"]["reference"]["trainable_params"]
    assert pos == rows["reference"]["trainable_params"] + 3 * tiny.num_heads * 9  # a bias per block, head, offset


def test_bench_control_benches_named_folders_too(trained, tmp_path, capsys):
    assert main(["bench", "control", "batch=4", "per_condition=2", "train_batch=2", "repeats=1", "modes=[joint]",
                 f"models={{mine: {trained / 'model'}}}", f"run.out_dir={tmp_path}", "run.name=b"]) == 0
    rows = json.loads((tmp_path / "b" / "report.json").read_text())["rows"]
    assert set(rows) == {"base", "joint", "mine"} and rows["mine"]["blocks"] == 3
    msg = user_error(capsys, "bench", "control", "repeats=1", f"models={{joint: {trained / 'model'}}}",
                     f"run.out_dir={tmp_path}", "run.name=c")
    assert "is not a joint control model" in msg


def test_dry_run_counts_the_adapter(capsys):
    for mode, n in (("reference", "0.099M"), ("controlnet", "0.956M")):
        assert main(["train", TINY_YAML, f"mode={mode}", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "recipe scaleweaver" in out and f"{mode} adapter {n} (trained)" in out and "1.9M (frozen)" in out


def _scene_folder(root: Path, ctl: Path, n: int = 6):
    """An image folder of world renders (two classes) and, at the same paths, their edge conditions."""
    from PIL import Image

    from vgen.world.scene import condition_maps, render, sample_scene

    for c, prompt in (("circle", "a photo of a circle"), ("square", "a photo of a square")):
        for i in range(n):
            scene = sample_scene(prompt, 100 + i)
            for folder, arr in ((root, render(scene, 64)),
                                (ctl, (condition_image(condition_maps(scene, 64), "edges").permute(1, 2, 0).numpy()
                                       * 255).round().astype(np.uint8))):
                (folder / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(folder / c / f"{i}.png")


def test_image_folder_mode_pairs_each_image_with_its_condition(tmp_path, capsys):
    from vgen.models.load import load
    from vgen.models.var.folder import build_var, save_var_model
    from vgen.scaleweaver.recipe import ControlData
    from vgen.vartrain.data import Data

    _scene_folder(tmp_path / "img", tmp_path / "ctl")
    tiny = load("assets/var-tiny-shapes")  # a base of the folder's two classes, on the tiny tokenizer
    var = build_var({**tiny.var.arch, "num_classes": 2}).init_weights()
    save_var_model(tmp_path / "base2", tiny.vqvae, var, ["circle", "square"], 64)
    common = [f"init={tmp_path / 'base2'}", f"data={tmp_path / 'img'}", f"control_data={tmp_path / 'ctl'}",
              "iterations=2", "flip=true",
              "eval_every=2", "val_size=4", "eval_items=4", "sample_classes=[0,1]"]
    assert main(["train", *_args(tmp_path, "f", *common)]) == 0
    m = _metrics(tmp_path / "f", VOLATILE)
    # the held-out images' condition files are the targets: the real images score near the top on them
    assert {"val_loss", "eval_edge_f1", "eval_mask_iou", "eval_edge_f1_real"} <= m[2].keys()
    assert "eval_strict" not in m[2] and m[2]["eval_edge_f1_real"] > 0.9 and m[2]["eval_mask_iou_real"] > 0.8
    assert (tmp_path / "f" / "eval" / "step-000002" / "control.png").is_file()
    # the latents are those of the files at the images' own paths, flipped with the image
    from vgen.data.imagefolder import ImageFolderClasses
    from vgen.scaleweaver.adapter import condition_latent

    vq = load("assets/var-tiny-shapes").vqvae
    ds = ImageFolderClasses(tmp_path / "img", 64, flip=True)
    data = Data(vq, ds, cache=False, ids=[0, 7], flip_seed=3)
    cd = ControlData(vq, data, "edges", str(tmp_path / "ctl"))
    want = torch.stack([read_condition(tmp_path / "ctl" / Path(ds.paths[i]).relative_to(ds.root), 64) for i in (0, 7)])
    flips = [ds.flip_for(i, 3, 5) for i in (0, 7)]
    got = cd.get([0, 1], step=5)
    for k, f in enumerate(flips):
        torch.testing.assert_close(got[k], condition_latent(vq, want[k:k + 1].flip(-1))[0] if f
                                   else condition_latent(vq, want[k:k + 1])[0], rtol=1e-4, atol=1e-5)
    assert any(flips) and not all(flips)
    (tmp_path / "ctl" / "square" / "3.png").unlink()
    msg = user_error(capsys, "train", *_args(tmp_path, "g", *common))
    assert "no condition image for 'square/3.png'" in msg
    msg = user_error(capsys, "train", *_args(tmp_path, "h", f"data={tmp_path / 'img'}"))
    assert "needs control_data" in msg
