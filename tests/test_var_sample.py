"""`vgen sample` on a VAR model folder, and the sampler's KV-cache statistics behind `vgen bench var`."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_var_models
from PIL import Image

from vgen.cli import main
from vgen.engine.scalewise import sample, teacher_forcing_inputs
from vgen.errors import UserError
from vgen.models.var import switch_plan
from vgen.models.var.folder import build_var, load_var_model
from vgen.models.var.var import scale_ref_bias
from vgen.sample import parse_classes
from vgen.world.datasets import CLASS_PROMPTS


def sample_cli(capsys, model, out, *args: str) -> tuple[dict, str]:
    rc = main(["sample", "--model", str(model), "--out", str(out), *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads((out / "samples.json").read_text()), captured.out


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_var_writes_pngs_grid_and_records(var_model_dir, tmp_path, capsys):
    meta, printed = sample_cli(capsys, var_model_dir, tmp_path / "o", "--classes", "0", "5-6", "--seeds", "3", "7")
    assert [(r["class"], r["seed"]) for r in meta["samples"]] == [(0, 3), (0, 7), (5, 3), (5, 7), (6, 3), (6, 7)]
    assert all(r["prompt"] == CLASS_PROMPTS[r["class"]] and isinstance(r["strict"], bool) and 0 <= r["score"] <= 1
               for r in meta["samples"])
    assert (meta["cfg"], meta["top_k"], meta["top_p"]) == (1.5, 0, 0.0)  # the folder's sampling settings
    assert meta["model"] == str(var_model_dir) and meta["seconds"] > 0
    for r in meta["samples"]:
        assert png(tmp_path / "o" / r["file"]).shape == (16, 16, 3)
    assert Image.open(tmp_path / "o" / "grid.png").size[0] > 32 * 6
    assert "images/s" in printed and "strictly correct (6 grammar prompts)" in printed


def test_a_class_and_seed_give_the_same_image_alone_and_in_a_larger_request(var_model_dir, tmp_path, capsys):
    many, _ = sample_cli(capsys, var_model_dir, tmp_path / "many", "--classes", "2-4", "--seeds", "0-5")
    alone, _ = sample_cli(capsys, var_model_dir, tmp_path / "alone", "--classes", "3", "--seeds", "4")
    [want] = [r for r in many["samples"] if (r["class"], r["seed"]) == (3, 4)]
    assert np.array_equal(png(tmp_path / "alone" / alone["samples"][0]["file"]), png(tmp_path / "many" / want["file"]))
    other, _ = sample_cli(capsys, var_model_dir, tmp_path / "other", "--classes", "3", "--seeds", "4", "--cfg", "0",
                          "--top-k", "3")
    assert (other["cfg"], other["top_k"]) == (0.0, 3)  # flags override the folder's settings
    assert not np.array_equal(png(tmp_path / "other" / other["samples"][0]["file"]),
                              png(tmp_path / "alone" / alone["samples"][0]["file"]))


def test_parse_classes():
    assert parse_classes(["0", "3-4"], 70) == [0, 3, 4]
    assert parse_classes(["all"], 5) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="class 5 is out of range"):
        parse_classes(["4-5"], 5)


@pytest.mark.parametrize("args, needle", [
    (["--classes", "70"], "class 70 is out of range: the model has classes 0..69"),
    (["--classes", "x"], "bad class 'x'"),
    (["--classes", "1", "--top-k", "-1"], "top_k must be >= 0"),
    (["--prompts", "a photo of a circle"], "--prompts does not apply to"),
    (["--classes", "1", "--steps", "2"], "--steps does not apply to"),
    ([], "--classes is required for a VAR model folder"),
])
def test_bad_var_sample_requests_are_one_line(var_model_dir, tmp_path, capsys, args, needle):
    rc = main(["sample", "--model", str(var_model_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("vgen: error: ") and needle in err, err
    assert not (tmp_path / "o").exists()


def test_classes_for_a_pipeline_folder_and_a_tokenizer_folder_are_one_line(var_tokenizer_dir, tmp_path, capsys):
    for model, needle in ((tmp_path, "--classes is for VAR model folders"), (var_tokenizer_dir, "a tokenizer only")):
        rc = main(["sample", "--model", str(model), "--classes", "0", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_cache_stats_peak_is_the_full_cache_and_leaves_sampling_unchanged(var_model_dir):
    vae, var, _ = load_var_model(var_model_dir)
    stats: dict = {}
    s = sample(var, vae, [1, 2, 3], [0, 1, 2], cache_stats=stats)
    # CFG: 3 samples doubled; each of the blocks holds k and v for all L tokens
    assert stats["rows"] == 6
    assert stats["peak_bytes"] == stats["bytes"][-1] == var.depth * 2 * 6 * var.L * var.C * 4
    assert stats["bytes"] == sorted(stats["bytes"])
    assert all(torch.equal(a, b) for a, b in zip(s.tokens, sample(var, vae, [1, 2, 3], [0, 1, 2]).tokens))
    sample(var, vae, [1], [0], cfg=0, use_cache=False, cache_stats=stats)  # the dict is refilled, not extended
    assert stats["rows"] == 1 and stats["bytes"] == [0, 0, 0]


def test_a_variant_plan_frees_caches_and_lowers_the_peak():
    vae, var = tiny_var_models()
    deep = build_var({**var.arch, "depth": 4}).eval()
    deep.init_weights()
    full, sub = {}, {}
    sample(deep, vae, [1, 2], [0, 1], cache_stats=full)
    out = sample(deep, vae, [1, 2], [0, 1], depth_plan=switch_plan(4, 3, 2, 2), cache_stats=sub)
    assert out.freed == {2: [1, 2]}  # the subnet is blocks 0 and 3
    assert sub["peak_bytes"] == full["peak_bytes"] // 2


# ----------------------------------------------------------------------------- reference streams (ScaleWeaver)


def lively_var_models():
    """The tiny models with every linear of the VAR at PyTorch's default init (``init_weights`` starts the
    AdaLN gammas at 1e-5, which would hide the blocks, and so any reference stream, from the logits)."""
    vae, var = tiny_var_models()
    torch.manual_seed(1)
    for m in var.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    return vae, var


@pytest.fixture(scope="module")
def lively():
    return lively_var_models()


REF_KW = dict(cfg=2.0, top_k=0, top_p=0.0)
L_TINY = 1 + 4 + 16


def random_stream(var, B, l_ref=5, seed=0):
    """Per-block (k, v), each (B, H, l_ref, head_dim), for B samples; block 1 has none."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, var.num_heads, l_ref, var.C // var.num_heads)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g))] + [None] * (var.depth - 1)


def per_scale_stream(var, vae, B, seed=0):
    """ScaleWeaver-style: the keys / values of a condition sequence (kv_out of the teacher-forcing forward),
    each scale of the sample seeing the condition's same scale (scale_ref_bias, a query axis over L)."""
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, 32, (B, p * p), generator=g) for p in (1, 2, 4)]
    kv: list = []
    with torch.no_grad():
        var(torch.full((B,), 3), teacher_forcing_inputs(vae, tokens), kv_out=kv)
    lengths = var.lengths()
    return kv, scale_ref_bias(lengths, lengths)


def tokens_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))


@pytest.mark.parametrize("kind", ["random", "per_sample_bias", "shared", "per_scale", "per_scale_plan", "no_cfg"])
def test_a_reference_stream_gives_the_same_tokens_cached_and_recomputed(lively, kind):
    vae, var = lively
    B, kw, plan = 3, dict(REF_KW), None
    ref, bias = random_stream(var, B), None
    if kind == "per_sample_bias":  # a finite bias with a batch axis (padded / doubled like the stream)
        bias = torch.randn(B, 1, 1, 5, generator=torch.Generator().manual_seed(4))
    elif kind == "shared":  # one row for every sample
        ref = [None if kv is None else (kv[0][:1], kv[1][:1]) for kv in ref]
    elif kind.startswith("per_scale"):
        ref, bias = per_scale_stream(var, vae, B)
        plan = [[0, 1], [0, 1], [1]] if kind == "per_scale_plan" else None
    elif kind == "no_cfg":
        kw["cfg"] = 0
    args = (var, vae, [1, 4, 9], [0, 1, 2])
    cached = sample(*args, ref_kv=ref, ref_bias=bias, depth_plan=plan, return_logits=True, **kw)
    full = sample(*args, ref_kv=ref, ref_bias=bias, depth_plan=plan, use_cache=False, return_logits=True, **kw)
    assert tokens_equal(cached, full)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached.logits, full.logits, strict=True))
    none = sample(*args, depth_plan=plan, return_logits=True, **kw)
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(cached.logits, none.logits))
    if kind == "shared":  # a one-row stream equals the same stream given for every sample
        wide = [None if kv is None else (kv[0].expand(B, -1, -1, -1), kv[1].expand(B, -1, -1, -1)) for kv in ref]
        assert tokens_equal(cached, sample(*args, ref_kv=wide, **kw))


def test_a_reference_stream_changes_the_tokens(lively):
    vae, var = lively
    args = (var, vae, [1, 4, 9], [0, 1, 2])
    with_ref = sample(*args, ref_kv=random_stream(var, 3), **REF_KW)
    assert not tokens_equal(with_ref, sample(*args, **REF_KW))
    ref, bias = per_scale_stream(var, vae, 3)
    assert not tokens_equal(sample(*args, ref_kv=ref, ref_bias=bias, **REF_KW), sample(*args, **REF_KW))


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_fully_masked_reference_stream_changes_nothing(lively, use_cache):
    """Zero values and bias -inf on every reference key: each query still has its own sequence's keys, so
    the softmax is the one without the stream (no NaN)."""
    vae, var = lively
    ref = [(k, torch.zeros_like(v)) for k, v in random_stream(var, 3, seed=5)[:1]] * var.depth
    args = (var, vae, [1, 4, 9], [0, 1, 2])
    for bias in (torch.full((1, 1, 1, 5), -torch.inf), torch.full((3, var.num_heads, L_TINY, 5), -torch.inf)):
        masked = sample(*args, ref_kv=ref, ref_bias=bias, use_cache=use_cache, return_logits=True, **REF_KW)
        plain = sample(*args, use_cache=use_cache, return_logits=True, **REF_KW)
        assert tokens_equal(masked, plain)
        assert all(torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-6)
                   for a, b in zip(masked.logits, plain.logits, strict=True))


@pytest.mark.parametrize("kind", ["random", "per_scale"])
def test_a_sample_with_a_reference_stream_is_the_same_alone_and_in_a_batch(lively, kind):
    vae, var = lively
    if kind == "random":
        ref, bias = random_stream(var, 3, seed=7), torch.randn(3, 1, 1, 5, generator=torch.Generator().manual_seed(8))
    else:
        ref, bias = per_scale_stream(var, vae, 3, seed=7)
    def row(i):  # sample i's own stream and bias
        return ([None if kv is None else (kv[0][i:i + 1], kv[1][i:i + 1]) for kv in ref],
                bias[i:i + 1] if bias.dim() == 4 and len(bias) > 1 else bias)

    batch = sample(var, vae, [4, 7, 2], [3, 5, 11], ref_kv=ref, ref_bias=bias, **REF_KW)
    one, one_bias = row(1)
    alone = sample(var, vae, [7], [5], ref_kv=one, ref_bias=one_bias, **REF_KW)
    assert all(torch.equal(t[1:2], a) for t, a in zip(batch.tokens, alone.tokens, strict=True))
    assert torch.equal(batch.images[1:2], alone.images)
    # another sample's stream gives another sample; in the batch each row (and its null-class row) saw its own
    other, other_bias = row(0)
    assert not tokens_equal(alone, sample(var, vae, [7], [5], ref_kv=other, ref_bias=other_bias, **REF_KW))


def test_scale_ref_bias():
    b = scale_ref_bias([1, 4], [1, 4, 9])
    assert b.shape == (1, 1, 5, 14)
    assert (b[0, 0, 0, :1] == 0).all() and (b[0, 0, 0, 1:] == -torch.inf).all()
    assert (b[0, 0, 1:, 1:5] == 0).all() and (b[0, 0, 1:, :1] == -torch.inf).all() and (b[..., 5:] < 0).all()
    c = scale_ref_bias([1, 4], [1, 4, 9], same_scale=False)
    assert (c[0, 0, 1:, :5] == 0).all() and (c[..., 5:] == -torch.inf).all()


@pytest.mark.parametrize("ref, bias, needle", [
    ("short", None, "ref_kv has 1 entries, the model has 2 blocks"),
    ("batch2", None, "ref_kv[0] has shapes (2, 2, 5, 16)"),
    (None, "bias", "ref_bias needs a ref_kv stream"),
    ("ok", "queries", "ref_bias has shape (1, 1, 7, 5)"),
    ("ok", "batch2", "ref_bias has shape (2, 1, 1, 5)"),
])
def test_bad_reference_streams_are_user_errors(lively, ref, bias, needle):
    vae, var = lively
    refs = {"short": random_stream(var, 3)[:1], "batch2": random_stream(var, 2), "ok": random_stream(var, 3),
            None: None}
    biases = {None: None, "bias": torch.zeros(1, 1, 1, 5), "queries": torch.zeros(1, 1, 7, 5),
              "batch2": torch.zeros(2, 1, 1, 5)}
    with pytest.raises(UserError) as e:
        sample(var, vae, [1, 4, 9], [0, 1, 2], ref_kv=refs[ref], ref_bias=biases[bias], **REF_KW)
    assert needle in str(e.value)
