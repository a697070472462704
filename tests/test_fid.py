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
    fid_against_ref_stats,
    fid_kid,
    frechet_distance,
    inception_features,
    inception_score,
    load_features,
    load_ref_stats,
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


def test_frechet_distance_of_singular_covariances_matches_sqrtm():
    """Fewer samples than dimensions (rank-deficient covariances, a singular product): the
    eigendecomposition route gives scipy's sqrtm value, with no offset needed."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 48)), 1.3 * rng.normal(size=(9, 48)) + 0.2
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(closed_form_fid(*args), rel=1e-6)


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


def random_inception_weights(path, fc_scale: float = 1.0, seed: int = 0):
    """Write random FID Inception-v3 weights (torch-fidelity's class, its random init) to ``path``.

    ``fc_scale`` multiplies the 1008-way fc weight: random-init pool features are tiny (~1e-7),
    so the logits need ~1e9 to give class probabilities far from uniform.
    """
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with pytest.MonkeyPatch.context() as m:  # build the architecture with its random init, skipping the weights load
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(fe.torch, "load", lambda *a, **k: {})
        torch.manual_seed(seed)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path="x")
    state = net.state_dict()
    state["fc.weight"] = state["fc.weight"] * fc_scale
    torch.save(state, path)
    return path


def test_inception_features_from_a_local_random_weights_file(tmp_path, real):
    """The real loading path on random weights of the same class; matches torchmetrics' own FID."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = random_inception_weights(tmp_path / "pt_inception-2015-12-05-random.pth")
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


# ---------------------------------------------------------------- FID / IS against reference statistics (.npz)

IS_N = 20  # images through the random Inception: 10 IS splits of 2


def write_stats(path, **arrays):
    np.savez(path, **arrays)
    return path


def closed_form_fid(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), written out here (not vgen's frechet_distance)."""
    from scipy import linalg

    root = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "pt_inception-random.pth", fc_scale=1e9)


@pytest.fixture(scope="module")
def inception_run(inception_file, real):
    """The network with logits, and the test images' 64-d pool features and logits from one pass."""
    inc = inception_features(inception_file, feature=64, logits=True)
    images = real[:IS_N]
    feats, logits = inc.features_and_logits(images)
    return inc, images, feats.double().numpy(), logits.double()


@pytest.mark.slow
def test_fid_against_own_stats_is_zero_and_shifted_stats_give_the_closed_form(inception_file, inception_run,
                                                                               tmp_path, monkeypatch):
    inc, images, x, logits = inception_run
    assert x.shape == (IS_N, 64) and logits.shape == (IS_N, 1008)
    torch.testing.assert_close(inc(images[:2]).double().numpy(), x[:2])  # the plain FID forward: same features
    with monkeypatch.context() as m:  # the logits are the unbiased ones: pool_3 (2048) times the fc weight
        m.setattr(inc.net, "features_list", ["2048"])
        pool = inc.net(torch.from_numpy(images[:2]).permute(0, 3, 1, 2)).double()
    # float32 sums of 2048 products of size ~40: ~4e-5 off; the fc bias (up to ~0.02) would be far more
    assert logits.abs().max() < 200 and inc.net.fc.bias.abs().max() > 1e-2
    torch.testing.assert_close(logits[:2], pool @ inc.net.fc.weight.double().T, rtol=0, atol=1e-3)

    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    own = write_stats(tmp_path / "own.npz", mu=mu, sigma=sigma)
    r = fid_against_ref_stats(images, own, inception_file, feature=64)  # from the weights file, as the CLI
    assert set(r) == {"fid", "is_mean", "is_std", "is_splits", "is_unavailable", "n", "feature_dim", "ref_stats"}
    assert r["n"] == IS_N and r["feature_dim"] == 64 and r["ref_stats"] == str(own) and r["is_splits"] == 10
    assert abs(r["fid"]) < 1e-5 * np.trace(sigma) + 1e-12, (r["fid"], np.trace(sigma))

    # Inception Score of the same pass equals torch-fidelity's on these logits (its splits, no shuffle)
    from torch_fidelity.metric_isc import isc_features_to_metric

    ref_is = isc_features_to_metric(logits, splits=10, shuffle=False)
    assert r["is_unavailable"] is None and r["is_mean"] > 1.01
    assert r["is_mean"] == pytest.approx(ref_is["inception_score_mean"], rel=1e-6)
    assert r["is_std"] == pytest.approx(ref_is["inception_score_std"], rel=1e-5, abs=1e-9)

    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 64)) * np.sqrt(np.trace(sigma) / 64) / 8
    mu2, sigma2 = mu + rng.normal(size=64) * 0.01, 0.5 * sigma + a @ a.T  # full rank, unlike the 20-image sigma
    shifted = write_stats(tmp_path / "shifted.npz", mu=mu2.astype(np.float32), sigma=sigma2.astype(np.float32))
    mu2, sigma2 = mu2.astype(np.float32).astype(np.float64), sigma2.astype(np.float32).astype(np.float64)
    r2 = fid_against_ref_stats(images, shifted, inc)  # a built module: its own feature size
    expected = closed_form_fid(mu, sigma, mu2, sigma2)
    assert expected > 10 * abs(r["fid"]) + 1e-6
    assert r2["fid"] == pytest.approx(expected, rel=1e-6)
    assert r2["is_mean"] == r["is_mean"] and r2["is_std"] == r["is_std"]


def test_fid_against_ref_stats_without_logits_or_enough_images(inception_run, tmp_path):
    inc, images, x, _ = inception_run
    stats = write_stats(tmp_path / "s.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    plain = fidmod.InceptionFeatures(inc.net, 64, "no-logits")  # the plain FID module: features only
    r = fid_against_ref_stats(images[:3], stats, plain)
    assert r["is_mean"] is None and r["is_std"] is None and "logits" in r["is_unavailable"]
    assert np.isfinite(r["fid"]) and r["n"] == 3
    r = fid_against_ref_stats(images[:3], stats, inc)
    assert r["is_mean"] is None and "at least is_splits = 10 images, got 3" in r["is_unavailable"]
    with pytest.raises(UserError, match="at least 2 images, got 1"):
        fid_against_ref_stats(images[:1], stats, inc)


def test_ref_stats_dimension_must_match_the_features(inception_file, inception_run, tmp_path):
    inc, images, _, _ = inception_run
    adm_like = write_stats(tmp_path / "VIRTUAL_imagenet256_labeled.npz", mu=np.zeros(2048), sigma=np.eye(2048),
                           arr_0=np.zeros((1, 8, 8, 3), np.uint8), mu_s=np.zeros(4), sigma_s=np.eye(4))
    for net in (inc, inception_file):  # a built module, and the weights file (feature=64 asked)
        with pytest.raises(UserError, match=r"are 2048-d but the Inception features are 64-d") as e:
            fid_against_ref_stats(images, adm_like, net, feature=64)
        assert "\n" not in str(e.value) and str(adm_like) in str(e.value)


def test_load_ref_stats_reads_the_documented_layouts(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    mu, sigma = rng.normal(size=8), a @ a.T
    adm = write_stats(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu.astype(np.float32),
                      sigma=sigma.astype(np.float32), mu_s=np.zeros(3), sigma_s=np.eye(3))
    m, s = load_ref_stats(adm)
    assert m.dtype == s.dtype == np.float64 and m.shape == (8,) and s.shape == (8, 8)
    np.testing.assert_array_equal(m, mu.astype(np.float32))
    np.savez_compressed(tmp_path / "vgen.npz", mean=mu, cov=sigma, n=np.int64(10), features=np.zeros((3, 8)))
    m, s = load_ref_stats(str(tmp_path / "vgen.npz"))  # a reference_stats cache entry; str paths too
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)


def _bad_stats(tmp_path, case):
    """Write the bad file of ``case``; returns (path, what the message must say)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    good = {"mu": rng.normal(size=8), "sigma": a @ a.T}
    p = tmp_path / f"{case}.npz"
    if case == "missing":
        return p, "not found"
    if case == "directory":
        p.mkdir()
        return p, "is a directory"
    if case == "garbage":
        p.write_bytes(b"\x00\x01 this is not an npz archive" * 10)
        return p, "is not an .npz archive .neither a zip nor an .npy file"
    if case == "empty":
        p.write_bytes(b"")
        return p, "not a readable .npz archive .EOFError"
    if case in ("truncated", "corrupt_member"):
        np.savez_compressed(p, **good)
        data = bytearray(p.read_bytes())
        if case == "truncated":
            data = data[:len(data) // 2]
        else:  # flip bytes inside the first member's compressed data: a zlib / CRC error on reading it
            for i in range(60, 90):
                data[i] ^= 0xFF
        p.write_bytes(bytes(data))
        return p, "not a readable .npz archive"
    if case == "npy":
        with open(p, "wb") as f:  # a file object: np.save would add .npy to a name
            np.save(f, good["mu"])
        return p, "single .npy array"
    if case == "pickled":
        np.savez(p, mu=np.array([1.0, None], dtype=object), sigma=good["sigma"])
        return p, "not a readable .npz archive"
    arrays = {
        "no_keys": {"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "mu_s": np.zeros(3)},
        "mu_only": {"mu": good["mu"]},
        "strings": {"mu": np.array(["a"] * 8), "sigma": good["sigma"]},
        "mu_2d": {"mu": good["mu"][None], "sigma": good["sigma"]},
        "mu_empty": {"mu": np.zeros(0), "sigma": np.zeros((0, 0))},
        "sigma_shape": {"mu": good["mu"], "sigma": good["sigma"][:, :7]},
        "sigma_1d": {"mu": good["mu"], "sigma": np.ones(8)},
        "dim_mismatch": {"mu": good["mu"], "sigma": np.eye(9)},
        "nan_mu": {"mu": np.where(np.arange(8) == 3, np.nan, good["mu"]), "sigma": good["sigma"]},
        "inf_sigma": {"mu": good["mu"], "sigma": np.where(np.eye(8) > 0, np.inf, good["sigma"])},
        "asymmetric": {"mu": good["mu"], "sigma": a},
        "negative_variance": {"mu": good["mu"], "sigma": -np.eye(8)},
    }[case]
    needle = {"no_keys": r"holds no Inception statistics: expected arrays 'mu' and 'sigma' or 'mean' and 'cov'; "
                         r"it has 'arr_0', 'mu_s'",
              "mu_only": r"holds no Inception statistics.*it has 'mu'$",
              "strings": r"'mu' holds <U1 values, not numbers",
              "mu_2d": r"'mu' must be a 1-D vector \(d,\), got shape \(1, 8\)",
              "mu_empty": r"'mu' must be a 1-D vector \(d,\), got shape \(0,\)",
              "sigma_shape": r"'sigma' must be \(8, 8\) to match 'mu'.*got shape \(8, 7\)",
              "sigma_1d": r"'sigma' must be \(8, 8\).*got shape \(8,\)",
              "dim_mismatch": r"'sigma' must be \(8, 8\).*got shape \(9, 9\)",
              "nan_mu": r"'mu' has 1 non-finite values",
              "inf_sigma": r"'sigma' has 8 non-finite values",
              "asymmetric": r"'sigma' is not symmetric",
              "negative_variance": r"'sigma' has negative variances"}[case]
    np.savez(p, **arrays)
    return p, needle


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "garbage", "truncated", "corrupt_member", "npy",
                                  "pickled", "no_keys", "mu_only", "strings", "mu_2d", "mu_empty", "sigma_shape",
                                  "sigma_1d", "dim_mismatch", "nan_mu", "inf_sigma", "asymmetric", "negative_variance"])
def test_bad_ref_stats_are_one_line_user_errors_naming_the_file(tmp_path, case):
    path, needle = _bad_stats(tmp_path, case)
    with pytest.raises(UserError, match=needle) as e:
        load_ref_stats(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "Traceback" not in msg, msg
    assert e.value.__suppress_context__ or e.value.__context__ is None, msg  # no chained traceback


def test_nearly_symmetric_sigma_is_accepted(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 16))
    sigma = a @ a.T
    sigma[0, 1] += 1e-7 * np.abs(sigma).max()  # rounding-size asymmetry (float32 / GPU covariances)
    m, s = load_ref_stats(write_stats(tmp_path / "s.npz", mu=np.zeros(16), sigma=sigma))
    np.testing.assert_array_equal(s, sigma)


def _brute_force_is(p: np.ndarray, splits: int) -> tuple[float, float]:
    """exp(mean_x sum_y p(y|x) log(p(y|x) / p(y))) per split, with plain loops."""
    n, scores = len(p), []
    for i in range(splits):
        rows = [p[j] for j in range(i * n // splits, (i + 1) * n // splits)]
        py = [sum(r[c] for r in rows) / len(rows) for c in range(p.shape[1])]
        kl = [sum(r[c] * np.log(r[c] / py[c]) for c in range(p.shape[1]) if r[c] > 0) for r in rows]
        scores.append(np.exp(sum(kl) / len(kl)))
    mean = sum(scores) / splits
    return mean, float(np.sqrt(sum((s - mean) ** 2 for s in scores) / splits))


@pytest.mark.parametrize("n, classes, splits", [(50, 7, 10), (23, 5, 10), (12, 3, 4), (10, 1008, 1)])
def test_inception_score_equals_the_formula(n, classes, splits):
    p = np.random.default_rng(n).dirichlet(np.full(classes, 0.3), size=n)
    p[0] = np.eye(classes)[0]  # an exactly one-hot row: 0 log 0 = 0
    ours = inception_score(p, splits)
    mean, std = _brute_force_is(p, splits)
    assert ours[0] == pytest.approx(mean, rel=1e-10) and ours[1] == pytest.approx(std, rel=1e-8, abs=1e-12)
    from torch_fidelity.metric_isc import isc_features_to_metric  # softmax(log p) = p

    tf = isc_features_to_metric(torch.from_numpy(np.log(np.clip(p, 1e-300, None))), splits=splits, shuffle=False)
    assert ours[0] == pytest.approx(tf["inception_score_mean"], rel=1e-9)


def test_inception_score_degenerate_cases():
    eye = np.eye(10)
    assert inception_score(np.tile(eye, (3, 1)), 3) == pytest.approx((10.0, 0.0))  # confident, all classes: IS = C
    assert inception_score(np.tile(eye[4], (30, 1)), 10) == pytest.approx((1.0, 0.0))  # one class: IS = 1
    assert inception_score(np.full((30, 10), 0.1), 10) == pytest.approx((1.0, 0.0))  # no confidence: IS = 1
    two = np.concatenate([np.tile(eye, (1, 1)), np.tile(eye[:2], (5, 1))])  # splits of 10 classes, then of 2
    assert inception_score(two, 2) == pytest.approx((6.0, 4.0))
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(np.full((5, 3), 1 / 3), 10)
