"""FID-shapes and KID-shapes: distribution distances for images of the built-in shapes world.

FID compares Gaussians fitted to embeddings of real and generated images; it is only as
good as the embedding. Inception-v3 features mean little on 64x64 flat shapes and its
weights cannot be downloaded here, so the default embedding is **FID-shapes**: a small CNN
trained on the world itself to tell shapes, colours, counts, layout and image degradations
(``assets/fid-shapes``, built by ``tools/build_fid_features.py``). Its numbers are comparable
only with FID-shapes numbers from the same weights, never with Inception FID; results carry
the embedding's name in their keys (``fid_shapes``, ``kid_shapes_mean``, ``kid_shapes_std``).
Real Inception FID is available from a local weights file (:func:`inception_features`).
ImageNet FID / IS as the VAR papers report them, against published Inception statistics
(ADM's reference batch ``.npz``), is :func:`fid_against_ref_stats` (:func:`load_ref_stats`,
:func:`inception_score`).

Both metrics are computed by torchmetrics (``FrechetInceptionDistance`` and
``KernelInceptionDistance`` with a custom feature module) in float64. The embedding runs
once per image: both metrics receive its output through a pass-through module.

Reference statistics of real images (:func:`reference_stats`) are rendered once and cached
in ``$VGEN_CACHE/fid`` (default ``~/.cache/vgen/fid``) under a hash of everything they depend
on: the embedding's weights, the prompts, the renderer's output on probe scenes, n, split,
seed and resolution (no degradation). A cache entry holds the mean and covariance (FID) and
the raw features, up to ``kid_features`` of them (KID).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vgen.errors import UserError
from vgen.io import atomic_write_bytes
from vgen.world.datasets import item_seed
from vgen.world.grammar import sample_prompts
from vgen.world.scene import render_prompt
from vgen.world.verifier import as_uint8_batch

FEATURES_DIR = "assets/fid-shapes"
STATS_VERSION = 1
_PROBES = ("a photo of a circle left of a square", "a photo of three triangles",
           "a photo of a yellow diamond and a green square")


# ---------------------------------------------------------------- embeddings


def _to_float_nchw(images, device: torch.device) -> torch.Tensor:
    """float32 (B, 3, H, W) in [0, 1], quantised to 1/255 steps like a saved image.

    Accepts uint8 or [0, 1] float tensors / arrays, NCHW or NHWC, and PIL images.
    """
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if x.dtype == torch.uint8:
            return x.to(device=device, dtype=torch.float32) / 255.0
        if not x.is_floating_point():
            raise ValueError(f"expected uint8 or float images, got {x.dtype}")
        return (torch.nan_to_num(x.to(device=device, dtype=torch.float32)).clamp(0, 1) * 255).round() / 255.0
    x = torch.from_numpy(as_uint8_batch(images)).permute(0, 3, 1, 2)
    return x.to(device=device, dtype=torch.float32) / 255.0


class ShapesFeatures(nn.Module):
    """The FID-shapes embedding: images -> (B, D) pooled features of the trained timm CNN.

    Input: uint8 or [0, 1] float images, (B, H, W, 3) or (B, 3, H, W), tensors or arrays;
    resized (bilinear, antialiased) to the training resolution when needed. Never leaves
    eval mode, so batch-norm statistics stay fixed even inside a module put in train mode.
    """

    metric_name = "shapes"

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], resolution: int, fingerprint: str):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.resolution = int(resolution)
        self.num_features = int(net.num_features)  # torchmetrics reads this instead of a dummy forward
        self.fingerprint = fingerprint              # sha256 of the weights file: the cache key's part

    def train(self, mode: bool = True) -> ShapesFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        x = _to_float_nchw(images, self.mean.device)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def default_features_dir() -> Path:
    """``assets/fid-shapes`` of the checkout this package lives in, else of the working directory."""
    repo = Path(__file__).resolve().parents[2] / FEATURES_DIR
    return repo if repo.is_dir() or not Path(FEATURES_DIR).is_dir() else Path(FEATURES_DIR)


def load_features(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesFeatures:
    """Load the FID-shapes embedding from a local folder (``config.json`` + ``model.safetensors``).

    The weights are checked against the sha256 recorded in the config, so a truncated or
    edited file is refused rather than silently giving other numbers. Never downloads.
    """
    import timm
    from safetensors.torch import load as load_safetensors

    folder = Path(path) if path is not None else default_features_dir()
    hint = "build it with: python tools/build_fid_features.py"
    if not folder.is_dir():
        raise UserError(f"FID-shapes features folder {str(folder)!r} not found; {hint}")
    cfg_file, weights_file = folder / "config.json", folder / "model.safetensors"
    try:
        cfg = json.loads(cfg_file.read_text())
        arch, kwargs = str(cfg["architecture"]), dict(cfg["kwargs"])
        mean, std, res = list(cfg["normalization"]["mean"]), list(cfg["normalization"]["std"]), cfg["input_resolution"]
        data = weights_file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read FID-shapes features in {str(folder)!r}: {e.strerror} ({e.filename}); "
                        f"{hint}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(cfg_file)!r} is not a FID-shapes config ({type(e).__name__}: {e}); {hint}") from None
    digest = hashlib.sha256(data).hexdigest()
    if cfg.get("weights_sha256") not in (None, digest):
        raise UserError(f"{str(weights_file)!r} is corrupt: its sha256 differs from config.json's; {hint}")
    try:
        net = timm.create_model(arch, pretrained=False, **kwargs)
        net.load_state_dict(load_safetensors(data))
    except Exception as e:  # a bad architecture name, kwargs or state dict: all mean a broken folder
        msg = str(e).splitlines()[0][:200]
        raise UserError(f"cannot build FID-shapes features from {str(folder)!r}: {type(e).__name__}: {msg}") from None
    return ShapesFeatures(net, mean, std, res, digest).to(device)


class InceptionFeatures(nn.Module):
    """Standard FID Inception-v3 features (torch-fidelity's network, via torchmetrics), from a local file.

    Built with ``logits=True`` (:func:`inception_features`), :meth:`features_and_logits` also
    gives the unbiased 1008-way logits of the same forward pass (for the Inception Score).
    """

    metric_name = "inception"

    def __init__(self, net: nn.Module, num_features: int, fingerprint: str, has_logits: bool = False):
        super().__init__()
        self.net, self.num_features, self.fingerprint = net, num_features, fingerprint
        self.has_logits = has_logits

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)

    def _uint8(self, images) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return (_to_float_nchw(images, device) * 255).round().to(torch.uint8)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        return self.net(self._uint8(images))

    @torch.no_grad()
    def features_and_logits(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, num_features) pool features, (B, 1008) logits without the fc bias), one forward pass.

        The logits are ``logits_unbiased``: pool_3 times the fc weight, no bias, as the original
        Inception Score code (openai/improved-gan), ADM's evaluator and torch-fidelity compute it.
        """
        if not self.has_logits:
            raise ValueError("this Inception network was built without logits: inception_features(..., logits=True)")
        x = self._uint8(images)
        feats, logits = self.net._torch_fidelity_forward(x)  # what NoTrainInceptionV3.forward runs, all outputs
        return feats.reshape(len(x), -1), logits


def inception_features(weights_file: str | Path, feature: int = 2048, antialias: bool = True,
                       logits: bool = False) -> InceptionFeatures:
    """Inception-v3 FID features from a local weights file; never downloads.

    ``weights_file`` is the standard FID network converted from TensorFlow, as torch-fidelity
    and torchmetrics use (``weights-inception-2015-12-05-6726825d.pth``; pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` carries the same content hash in its name and is
    commonly passed to torchmetrics the same way; neither real file was available to test).
    Built as torchmetrics' ``NoTrainInceptionV3``, so ``feature`` (64, 192, 768, 2048) and
    ``antialias`` mean what they mean in ``FrechetInceptionDistance``, and the numbers match it.
    The file is first parsed with ``weights_only=True``: torch-fidelity itself unpickles it
    unrestricted, so only a file that holds nothing but tensors reaches it. Needs the
    ``torch-fidelity`` package. ``logits=True`` also computes the 1008-way logits in the same
    forward pass (:meth:`InceptionFeatures.features_and_logits`); the features are unchanged.
    """
    path = Path(weights_file)
    if not path.is_file():
        raise UserError(f"Inception FID weights file {str(path)!r} not found (vgen never downloads; "
                        "pass the local pt_inception-2015-12-05-6726825d.pth)")
    if feature not in (64, 192, 768, 2048):
        raise UserError(f"Inception feature must be 64, 192, 768 or 2048, got {feature}")
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise UserError("Inception FID needs the torch-fidelity package: pip install torch-fidelity") from None
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a state dict")
        outputs = [str(feature), "logits_unbiased"] if logits else [str(feature)]
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=outputs,
                                 feature_extractor_weights_path=io.BytesIO(data), antialias=antialias)
    except Exception as e:
        msg = str(e).splitlines()[0][:200]
        raise UserError(f"{str(path)!r} is not an FID Inception-v3 state dict ({type(e).__name__}: {msg})") from None
    return InceptionFeatures(net, feature, hashlib.sha256(data).hexdigest(), has_logits=logits)


def _fingerprint(features: nn.Module) -> str:
    """What identifies an embedding for the cache: its weights file hash, else a hash of its state."""
    fp = getattr(features, "fingerprint", None)
    if fp:
        return str(fp)
    h = hashlib.sha256(type(features).__qualname__.encode())
    for k, v in features.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def extract_features(features: nn.Module, images, batch_size: int = 256) -> torch.Tensor:
    """(N, D) float64 CPU embeddings of ``images`` (anything :class:`ShapesFeatures` accepts), batched."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        images = as_uint8_batch(images)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch_size):
            out.append(features(images[lo:lo + batch_size]).detach().to("cpu", torch.float64))
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


# ---------------------------------------------------------------- metrics


class _Given(nn.Module):
    """Pass-through 'feature extractor': lets torchmetrics take features computed once for both metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2), in float64.

    Tr((C1 C2)^1/2) is the sum of the square roots of the eigenvalues of C1^1/2 C2 C1^1/2, a
    symmetric PSD matrix with the spectrum of C1 C2: two symmetric eigendecompositions instead of
    scipy's general ``sqrtm`` (pytorch-fid's route), about 6x faster at 2048 dimensions (2.5 s
    against 15-19 s on 2 cores), and stable where the product is singular (fewer samples than
    dimensions), where ``sqrtm`` needs a diagonal offset. An independent implementation of what
    torchmetrics computes (tests compare the two); use it with statistics that have no raw
    features behind them.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # round-off can make a zero eigenvalue slightly negative
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ cov2 @ root1), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_covmean)


def _is_stats(real) -> bool:
    return isinstance(real, dict) and "mean" in real and "cov" in real


def fid_kid(real, fake, features: nn.Module, *, batch_size: int = 256, kid_subsets: int = 100,
            kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID between real and generated images in the embedding ``features``.

    ``real``: images, or a :func:`reference_stats` dict (its cached mean / covariance / features
    are loaded into torchmetrics' states, so the result equals the from-images one). ``fake``:
    images (uint8 or [0, 1] float, NHWC or NCHW, arrays, tensors or PIL). KID averages
    ``kid_subsets`` subsets of ``min(kid_subset_size, n_real, n_fake)`` drawn from a generator
    seeded with ``seed`` (one subset when that size covers both sets: every subset would be
    the same; its std is then 0).
    Returns ``fid_<name>``, ``kid_<name>_mean``, ``kid_<name>_std`` (``name`` is the embedding's
    ``metric_name``: ``shapes`` for FID-shapes, ``inception`` for Inception FID), ``n_real``,
    ``n_fake``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fake_f = extract_features(features, fake, batch_size)
    dim = fake_f.shape[1]
    fid = FrechetInceptionDistance(feature=_Given(dim))
    if _is_stats(real):
        n = int(real["n"])
        mean = torch.as_tensor(real["mean"], dtype=torch.float64)
        cov = torch.as_tensor(real["cov"], dtype=torch.float64)
        if mean.shape != (dim,):
            raise ValueError(f"reference stats have {mean.shape[0]} features, the embedding gives {dim}")
        # torchmetrics keeps sums: sum x and sum x x^T; rebuild them from the unbiased covariance
        fid.real_features_sum = mean * n
        fid.real_features_cov_sum = cov * (n - 1) + n * torch.outer(mean, mean)
        fid.real_features_num_samples = torch.tensor(n)
        real_f = torch.as_tensor(real["features"], dtype=torch.float64)
    else:
        real_f = extract_features(features, real, batch_size)
        n = len(real_f)
        fid.update(real_f, real=True)
    fid.update(fake_f, real=False)
    value = float(fid.compute())

    size = min(kid_subset_size, len(real_f), len(fake_f))
    # subsets as large as both sets are all the same sets (only permuted): one gives the same mean and std 0
    subsets = 1 if size == len(real_f) == len(fake_f) else kid_subsets
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Given(dim), subsets=subsets, subset_size=size)
    kid.update(real_f, real=True)
    kid.update(fake_f, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    name = getattr(features, "metric_name", "custom")
    return {f"fid_{name}": value, f"kid_{name}_mean": float(kid_mean), f"kid_{name}_std": float(kid_std),
            "n_real": n, "n_fake": len(fake_f)}


# ---------------------------------------------------------------- reference statistics


def cache_root() -> Path:
    return Path(os.environ.get("VGEN_CACHE") or "~/.cache/vgen").expanduser() / "fid"


def _render_reference(prompts: list[str], seed: int, resolution: int) -> np.ndarray:
    """The real images: exactly ``ShapesDataset(split, n, resolution, seed)``'s, as uint8 (N, H, W, 3)."""
    return np.stack([render_prompt(p, item_seed(seed, i), resolution) for i, p in enumerate(prompts)])


def _world_fingerprint(resolution: int) -> str:
    """Hash of a few probe renders: a renderer change invalidates cached statistics."""
    h = hashlib.sha256()
    for i, p in enumerate(_PROBES):
        h.update(render_prompt(p, i, resolution).tobytes())
    return h.hexdigest()


def reference_stats(n: int, split: str = "test", seed: int = 0, resolution: int = 64,
                    features: nn.Module | None = None, cache_dir: str | Path | None = None,
                    batch_size: int = 256, kid_features: int = 10_000) -> dict:
    """Statistics of ``n`` real world images of ``split`` prompts, cached by content hash.

    The images are ``ShapesDataset(split, n, resolution, seed)``'s (categories balanced).
    Returns ``{"mean", "cov", "n", "features", "key", "path", "meta"}``: float64 mean and
    unbiased covariance of all n embeddings, float32 features of the first ``kid_features``
    images for KID. A missing or unreadable cache file is (re)built and written atomically.
    """
    if n < 2:
        raise ValueError(f"reference statistics need n >= 2 images, got {n}")
    features = features if features is not None else load_features()
    prompts = sample_prompts(split, n, seed)
    meta = {"version": STATS_VERSION, "metric": f"fid_{getattr(features, 'metric_name', 'custom')}",
            "features": _fingerprint(features), "n": n, "split": split, "seed": seed, "resolution": resolution,
            "degradation": "none", "kid_features": min(n, kid_features),
            "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            "world": _world_fingerprint(resolution)}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    path = path / f"{split}-n{n}-r{resolution}-{key[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return {"mean": z["mean"], "cov": z["cov"], "n": int(z["n"]), "features": z["features"],
                            "key": key, "path": path, "meta": meta}
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged entry: rebuild it
    feats = extract_features(features, _render_reference(prompts, seed, resolution), batch_size)
    mean = feats.mean(0).numpy()
    cov = torch.cov(feats.T).numpy()
    kept = feats[:kid_features].to(torch.float32).numpy()
    buf = io.BytesIO()
    np.savez(buf, mean=mean, cov=cov, n=np.int64(n), features=kept, key=np.str_(key),
             meta=np.str_(json.dumps(meta, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())
    return {"mean": mean, "cov": cov, "n": n, "features": kept, "key": key, "path": path, "meta": meta}


# ---------------------------------------------------------------- FID / IS against published statistics

# (mean, covariance) key pairs of the .npz layouts load_ref_stats reads, in the order tried
REF_STATS_LAYOUTS = (("mu", "sigma"),    # ADM (guided-diffusion evaluator), pytorch-fid, torch-fidelity
                     ("mean", "cov"))    # vgen's own reference_stats cache entries
_SYMMETRY_RTOL = 1e-4  # float32-stored or GPU-computed covariances are symmetric only to rounding


def load_ref_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics ``(mu (d,), sigma (d, d))``, float64, from a local ``.npz`` file.

    Reads the VAR / ADM reference batch (openai/guided-diffusion ``evaluations/evaluator.py``,
    e.g. ``VIRTUAL_imagenet256_labeled.npz``, whose ``arr_0`` images and ``mu_s`` / ``sigma_s``
    spatial statistics are ignored), any ``mu`` / ``sigma`` file (pytorch-fid, torch-fidelity)
    or a vgen :func:`reference_stats` cache entry (``mean`` / ``cov``); see
    :data:`REF_STATS_LAYOUTS`. Loaded with ``allow_pickle=False``; never downloads.

    Every problem is a one-line :class:`UserError` naming the file: missing file, not an
    ``.npz`` archive (garbage, truncated, a pickle, a bare ``.npy``), none of the layouts' keys
    (the message lists the keys it has), non-numeric arrays, ``mu`` not 1-D, ``sigma`` not
    ``(d, d)``, non-finite values, a ``sigma`` that is not symmetric (beyond a 1e-4 relative
    tolerance) or has negative variances.
    """
    p = Path(path)
    where = f"reference statistics {str(p)!r}"
    if not p.exists():
        raise UserError(f"{where} not found (vgen never downloads; pass a local .npz such as ADM's "
                        "VIRTUAL_imagenet256_labeled.npz)")
    if p.is_dir():
        raise UserError(f"{where} is a directory, not an .npz file")

    def unreadable(e: BaseException) -> UserError:
        msg = (str(e).splitlines() or [""])[0][:200]
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        return UserError(f"{where} is not a readable .npz archive ({kind}: {msg})")

    try:
        z = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "pickle" not in str(e):
            raise unreadable(e) from None
        raise UserError(f"{where} is not an .npz archive (neither a zip nor an .npy file: numpy could only "
                        "unpickle it, which vgen never does)") from None
    except Exception as e:  # BadZipFile, OSError, EOFError, ...
        raise unreadable(e) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"{where} holds a single .npy array of shape {tuple(np.shape(z))}, not an .npz "
                        "archive with 'mu' and 'sigma'")
    with z:
        keys = list(z.files)
        layout = next(((m, c) for m, c in REF_STATS_LAYOUTS if m in keys and c in keys), None)
        if layout is None:
            shown = ", ".join(repr(k) for k in keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            wanted = " or ".join(f"{m!r} and {c!r}" for m, c in REF_STATS_LAYOUTS)
            raise UserError(f"{where} holds no Inception statistics: expected arrays {wanted}; "
                            f"it has {shown or 'no arrays'}")
        try:
            arrays = [z[k] for k in layout]
        except Exception as e:  # a damaged member: bad CRC, zlib error, object arrays (pickles)
            raise unreadable(e) from None
    (mk, ck), (mu, sigma) = layout, arrays
    for k, a in zip(layout, arrays):
        if a.dtype.kind not in "fiu":
            raise UserError(f"{where}: {k!r} holds {a.dtype} values, not numbers")
    if mu.ndim != 1 or mu.size == 0:
        raise UserError(f"{where}: {mk!r} must be a 1-D vector (d,), got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise UserError(f"{where}: {ck!r} must be ({d}, {d}) to match {mk!r} of shape ({d},), got shape {sigma.shape}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    for k, a in ((mk, mu), (ck, sigma)):
        bad = int(a.size - np.isfinite(a).sum())
        if bad:
            raise UserError(f"{where}: {k!r} has {bad} non-finite values (NaN or inf)")
    scale = float(np.abs(sigma).max())
    asym = float(np.abs(sigma - sigma.T).max())
    if asym > _SYMMETRY_RTOL * scale:
        raise UserError(f"{where}: {ck!r} is not symmetric (max |sigma - sigma.T| = {asym:.3g}, max |sigma| = "
                        f"{scale:.3g}): not a covariance matrix")
    if np.diag(sigma).min() < -_SYMMETRY_RTOL * scale:
        raise UserError(f"{where}: {ck!r} has negative variances on its diagonal: not a covariance matrix")
    return mu, sigma


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` of class probabilities ``probs`` (N, C), rows summing to 1.

    ``exp(E_x KL(p(y|x) || p(y)))`` on ``splits`` contiguous, equal splits (rows
    ``i*N//splits`` to ``(i+1)*N//splits``), ``p(y)`` the split's mean; mean and population std
    (ddof 0) over splits, in float64. This is torch-fidelity's ``isc`` without shuffling and
    openai/improved-gan's (whose 5000-image splits ADM's evaluator uses: 10 splits for the
    standard 50k samples). Raises ``ValueError`` for fewer rows than splits.
    """
    from scipy.special import xlogy

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise ValueError(f"inception_score needs (N, C) probabilities with N >= splits = {splits}, got {p.shape}")
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        q = part.mean(0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, q)).sum(1).mean()  # 0 log 0 = 0
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def fid_against_ref_stats(images, ref_stats: str | Path, inception: str | Path | nn.Module, *,
                          feature: int = 2048, batch_size: int = 100, is_splits: int = 10,
                          device: str | torch.device = "cpu", antialias: bool = True) -> dict:
    """ImageNet FID (and IS) of generated ``images`` as the VAR / FlexVAR papers report it.

    ``images``: uint8 (N, H, W, 3) arrays (anything :class:`InceptionFeatures` accepts).
    ``ref_stats``: a local ``.npz`` of reference statistics (:func:`load_ref_stats`: ADM's
    ``VIRTUAL_imagenet256_labeled.npz`` for ImageNet 256). ``inception``: the local FID
    Inception-v3 weights file (as ``--inception-weights``; built by :func:`inception_features`
    with ``feature``, ``antialias`` and the logits, on ``device``) or an already built
    features module. Pool features of all images (resized to 299 px by the network), their
    float64 mean and unbiased covariance, and :func:`frechet_distance` to the reference. The
    Inception Score comes from the same forward pass (:func:`inception_score`, ``is_splits``
    splits, softmax of the unbiased 1008-way logits); it is omitted (``None``) when the module
    gives no logits or there are fewer images than splits, and ``is_unavailable`` says why.

    Returns ``{"fid": float, "is_mean": float | None, "is_std": float | None,
    "is_splits": int, "is_unavailable": str | None, "n": N, "feature_dim": d,
    "ref_stats": str (the path)}``. Problems are one-line :class:`UserError` s (the file's,
    a feature dimension that differs from the reference's, fewer than 2 images).
    """
    mu_ref, sigma_ref = load_ref_stats(ref_stats)

    def mismatch(d: int) -> UserError:
        return UserError(f"reference statistics {str(ref_stats)!r} are {len(mu_ref)}-d but the Inception "
                         f"features are {d}-d")

    from_file = isinstance(inception, (str, Path))
    dim = feature if from_file else getattr(inception, "num_features", None)
    if dim is not None and int(dim) != len(mu_ref):  # before loading the network or running any image
        raise mismatch(int(dim))
    if from_file:
        net = inception_features(inception, feature=feature, antialias=antialias, logits=True).to(device)
    else:
        net = inception
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        images = as_uint8_batch(images)
    n = len(images)
    if n < 2:
        raise UserError(f"FID needs at least 2 images, got {n}")
    with_logits = bool(getattr(net, "has_logits", False))
    feats, logits = [], []
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            batch = images[lo:lo + batch_size]
            if with_logits:
                f, lg = net.features_and_logits(batch)
                logits.append(lg.detach().to("cpu", torch.float32))
            else:
                f = net(batch)
            feats.append(f.detach().to("cpu", torch.float64))
    x = torch.cat(feats).numpy()
    if x.shape[1] != len(mu_ref):
        raise mismatch(x.shape[1])
    if not np.isfinite(x).all():
        raise UserError("the Inception features of the images are not finite: a broken weights file?")
    fid = frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_ref, sigma_ref)

    is_mean = is_std = None
    if not with_logits:
        why = f"the features module {type(net).__name__} gives no class logits (build it with logits=True)"
    elif n < is_splits:
        why = f"the Inception Score needs at least is_splits = {is_splits} images, got {n}"
    else:
        why = None
        probs = torch.cat(logits).double().softmax(dim=1).numpy()
        is_mean, is_std = inception_score(probs, is_splits)
    return {"fid": fid, "is_mean": is_mean, "is_std": is_std, "is_splits": is_splits, "is_unavailable": why,
            "n": n, "feature_dim": int(x.shape[1]), "ref_stats": str(ref_stats)}
