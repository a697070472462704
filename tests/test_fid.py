"""FID-shapes / KID-shapes: they rank image quality, the reference cache is exact, errors are one line."""

import json
import shutil

import numpy as np
import pytest
import torch

from vgen.errors import UserError
from vgen.eval import fid as fidmod
from vgen.eval.fid import (
    extract_features,
    fid_kid,
    frechet_distance,
    inception_features,
    load_features,
    reference_stats,
)
from vgen.world.degrade import blur, jpeg
from vgen.world.grammar import sample_prompts

N = 300
KID = {"kid_subsets": 20, "kid_subset_size": 200}


def noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0.0, std, images.shape) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: small batches gain little from more, and contended cores make OpenMP spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def features():
    return load_features()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fid-cache")


@pytest.fixture(scope="module")
def ref(features, cache):
    return reference_stats(N, split="test", seed=0, features=features, cache_dir=cache)


@pytest.fixture(scope="module")
def real():
    """Real images disjoint from the reference: same split, another seed."""
    return fidmod._render_reference(sample_prompts("test", N, seed=1), 1, 64)


@pytest.fixture(scope="module")
def scores(ref, real, features):
    """fid_kid of the reference against real images under each degradation, computed once."""
    rng = np.random.default_rng(0)
    cases = {"real": real, "noise": rng.integers(0, 256, real.shape, dtype=np.uint8),
             "proxy": blur(jpeg(real, 30), 0.7)}
    cases |= {f"blur{s}": blur(real, s) for s in (0.5, 1.0, 2.0)}
    cases |= {f"noise{s}": noisy(real, s) for s in (4, 8, 16, 32)}
    return {k: fid_kid(ref, v, features, **KID) for k, v in cases.items()}


def test_fid_shapes_ranks_quality(scores):
    fid = {k: v["fid_shapes"] for k, v in scores.items()}
    assert fid["real"] * 3 < fid["proxy"] and fid["proxy"] * 10 < fid["noise"], fid
    assert set(scores["real"]) == {"fid_shapes", "kid_shapes_mean", "kid_shapes_std", "n_real", "n_fake"}


@pytest.mark.parametrize("kind, levels", [("blur", ("real", "blur0.5", "blur1.0", "blur2.0")),
                                          ("noise", ("real", "noise4", "noise8", "noise16", "noise32"))])
def test_fid_and_kid_rise_with_degradation(scores, kind, levels):
    for key in ("fid_shapes", "kid_shapes_mean"):
        curve = [scores[lv][key] for lv in levels]
        assert all(a < b for a, b in zip(curve, curve[1:])), (kind, key, curve)
    # the mildest level (blur sigma 0.5 px, noise std 4/255) is already clear of real-vs-real sampling noise
    assert scores[levels[1]]["fid_shapes"] > 1.2 * scores["real"]["fid_shapes"]


def test_kid_ranks_quality(scores):
    kid = {k: v["kid_shapes_mean"] for k, v in scores.items()}
    assert kid["real"] < kid["proxy"] < kid["noise"]
    assert abs(kid["real"]) < 3 * scores["real"]["kid_shapes_std"] + 1e-3  # unbiased: ~0 for equal distributions
    assert kid["proxy"] > 10 * scores["proxy"]["kid_shapes_std"]


def test_reference_stats_are_cached_and_exact(ref, real, features, cache, monkeypatch):
    assert ref["path"].parent == cache and ref["path"].is_file()
    assert ref["mean"].shape == (features.num_features,) and ref["features"].shape == (N, features.num_features)

    def boom(*a, **k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(fidmod, "_render_reference", boom)
    again = reference_stats(N, split="test", seed=0, features=features, cache_dir=cache)
    assert again["path"] == ref["path"]
    np.testing.assert_array_equal(again["cov"], ref["cov"])
    np.testing.assert_array_equal(again["features"], ref["features"])
    for changed in ({"seed": 1}, {"split": "val"}, {"resolution": 32}, {"n": N - 1}):
        args = {"n": N, "split": "test", "seed": 0, **changed}
        with pytest.raises(AssertionError, match="rendered again"):  # another key: not served from the cache
            reference_stats(**args, features=features, cache_dir=cache)
    monkeypatch.undo()

    from_cache = fid_kid(ref, real, features, **KID)
    scratch_real = fidmod._render_reference(sample_prompts("test", N, seed=0), 0, 64)
    from_scratch = fid_kid(scratch_real, real, features, **KID)
    for k in ("fid_shapes", "kid_shapes_mean", "kid_shapes_std"):
        assert from_cache[k] == pytest.approx(from_scratch[k], rel=1e-6, abs=1e-12), k


def test_cache_location_and_damaged_entries(features, tmp_path, monkeypatch):
    monkeypatch.setenv("VGEN_CACHE", str(tmp_path / "c"))
    stats = reference_stats(8, features=features, kid_features=5)
    assert stats["path"].parent == tmp_path / "c" / "fid" and stats["features"].shape[0] == 5
    assert not [p for p in stats["path"].parent.iterdir() if p.name.startswith(".")]  # no temp files left
    stats["path"].write_bytes(b"not an npz")
    rebuilt = reference_stats(8, features=features, kid_features=5)
    np.testing.assert_array_equal(rebuilt["mean"], stats["mean"])
    assert rebuilt["path"].stat().st_size > 100


def test_frechet_formula_matches_torchmetrics(ref, real, features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 32, generator=gen, dtype=torch.float64) @ torch.randn(32, 32, generator=gen,
                                                                               dtype=torch.float64)
    b = 0.8 * torch.randn(400, 32, generator=gen, dtype=torch.float64) @ torch.randn(32, 32, generator=gen,
                                                                                     dtype=torch.float64) + 0.3
    for x, y in ((a, b), (torch.as_tensor(ref["features"], dtype=torch.float64), extract_features(features, real))):
        metric = FrechetInceptionDistance(feature=fidmod._Given(x.shape[1]))
        metric.update(x, real=True)
        metric.update(y, real=False)
        ours = frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
        assert ours == pytest.approx(float(metric.compute()), rel=1e-6)


def test_features_accept_every_image_form(features, real):
    x = real[:5]
    base = features(torch.from_numpy(x))
    assert base.shape == (5, features.num_features) and base.dtype == torch.float32
    as_float_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(features(as_float_nchw), base)
    torch.testing.assert_close(features(x), base)
    features.train()
    assert not features.training and not features.net.training
    assert features(np.repeat(np.repeat(x, 2, 1), 2, 2)).shape == base.shape  # 128 px: resized to 64


def test_bad_feature_folders_are_one_line_user_errors(tmp_path, features):
    def fails(path, needle):
        with pytest.raises(UserError, match=needle) as e:
            load_features(path)
        assert "\n" not in str(e.value)

    fails(tmp_path / "missing", "not found.*build_fid_features")
    bad = tmp_path / "bad"
    shutil.copytree(fidmod.default_features_dir(), bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-10])
    fails(bad, "corrupt")
    (bad / "model.safetensors").write_bytes(data)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architecture": "no_such_net"}))
    fails(bad, "cannot build")
    (bad / "config.json").write_text("{")
    fails(bad, "not a FID-shapes config")
    (bad / "config.json").unlink()
    fails(bad, "cannot read")


def test_inception_weights_file_must_exist(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth.*not found") as e:
        inception_features(missing)
    assert "\n" not in str(e.value)


def test_inception_features_from_a_local_random_weights_file(tmp_path, real, monkeypatch):
    """The real loading path on random weights of the same class; matches torchmetrics' own FID."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from torchmetrics.image.fid import FrechetInceptionDistance

    with monkeypatch.context() as m:  # build the architecture with its random init, skipping the weights load
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(fe.torch, "load", lambda *a, **k: {})
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path="x")
    path = tmp_path / "pt_inception-2015-12-05-random.pth"
    torch.save(net.state_dict(), path)
    feats = inception_features(path, feature=64)
    assert feats.metric_name == "inception" and feats(real[:3]).shape == (3, 64)

    x, y = real[:6], blur(real[6:12], 1.5)
    ours = fid_kid(x, y, feats, kid_subsets=2, kid_subset_size=6)["fid_inception"]
    metric = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=str(path))
    metric.update(torch.from_numpy(x).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(y).permute(0, 3, 1, 2), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)

    torch.save({"not": "inception"}, path)
    with pytest.raises(UserError, match="not an FID Inception-v3 state dict"):
        inception_features(path)
