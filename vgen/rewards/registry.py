"""Rewards by name: built-ins registered in code, third-party ones through entry points.

A reward is a plain callable ``reward(images, prompts) -> np.ndarray`` (float32, shape (B,), higher is better).
Implementations always receive ``images`` as uint8 numpy (B, H, W, 3) and ``prompts`` as a list of B strings:
the callables that :func:`get_reward` and :func:`build` hand out normalise their input once (:func:`as_images`
also takes float tensors (B, 3, H, W) in [0, 1] and lists of PIL images) and check the output's shape.

NaN and inf scores are passed through unchanged, not filtered or clipped: the trainer decides what to do with a
sample whose reward failed, and a reward should say so with NaN rather than make a number up.

Third-party rewards: a package declares an entry point in the group ``vgen.rewards`` naming a factory,
``factory(**options) -> reward``; ``get_reward(name, **options)`` calls it. A built-in name wins over a plugin's::

    [project.entry-points."vgen.rewards"]
    myscore = "mypkg.rewards:make_myscore"
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Real
from typing import Any

import numpy as np

from vgen.errors import UserError
from vgen.rewards import builtin, models
from vgen.world.verifier import as_uint8_batch

Reward = Callable[[np.ndarray, list[str]], np.ndarray]
ENTRY_POINT_GROUP = "vgen.rewards"


def _options_of(fn: Callable) -> Callable[..., Reward]:
    """A factory for a plain reward function: its keyword options (after images, prompts) become the factory's."""
    def factory(**options):
        return functools.partial(fn, **options) if options else fn

    factory.__signature__ = inspect.Signature(list(inspect.signature(fn).parameters.values())[2:])
    return factory


_BUILTIN: dict[str, Callable[..., Reward]] = {
    "shapes": _options_of(builtin.shapes),
    "shapes_strict": _options_of(builtin.shapes_strict),
    "jpeg_compressibility": _options_of(builtin.jpeg_compressibility),
    "jpeg_incompressibility": _options_of(builtin.jpeg_incompressibility),
    "pickscore": models.pickscore,
    "clipscore": models.clipscore,
    "hpsv2": models.hpsv2,
    "imagereward": models.imagereward,
    "aesthetic": models.aesthetic,
}


def register(name: str, factory: Callable[..., Reward]) -> None:
    """Add a reward factory under ``name`` from code (an installed package uses the entry-point group instead)."""
    if name in _BUILTIN:
        raise ValueError(f"reward {name!r} is already registered")
    _BUILTIN[name] = factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plugins, looked up on each call so a package installed mid-session is seen."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every reward name :func:`get_reward` accepts: built-ins and installed plugins, sorted."""
    return sorted(set(_BUILTIN) | set(_entry_points()))


def _factory(name: str) -> Callable[..., Reward]:
    if name in _BUILTIN:
        return _BUILTIN[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise UserError(f"unknown reward {name!r}; available: {', '.join(available())}")
    try:
        return ep.load()
    except Exception as e:  # a broken plugin install is the user's environment, not a vgen bug
        raise UserError(f"reward plugin {name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None


def as_images(images) -> np.ndarray:
    """uint8 (B, H, W, 3) from uint8 / [0, 1] float arrays or tensors (HWC or CHW) or PIL images: the one format
    every reward implementation receives."""
    return as_uint8_batch(images)


def _prompts(prompts: str | Sequence[str], n: int) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts")
    return prompts


def _checked(name: str, fn: Reward) -> Reward:
    """``fn`` behind input normalisation and an output check: float32 of shape (B,), NaN kept as is."""
    def reward(images, prompts):
        x = as_images(images)
        prompts = _prompts(prompts, len(x))
        if not len(x):
            return np.zeros(0, np.float32)
        out = fn(x, prompts)
        out = np.asarray(out.detach().float().cpu() if hasattr(out, "detach") else out, np.float32)  # a torch tensor
        if out.shape != (len(x),):
            raise ValueError(f"reward {name!r} returned shape {out.shape} for {len(x)} images; expected ({len(x)},)")
        return out

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = getattr(getattr(fn, "func", fn), "__doc__", None)  # through functools.partial
    return reward


def get_reward(name: str, **options) -> Reward:
    """The reward ``name`` built with ``options`` (e.g. ``path=`` for a model); a bad name or option is a one-line
    :class:`UserError`."""
    factory = _factory(name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise UserError(f"reward {name!r}: {e}") from None
    except ValueError:  # a factory without an inspectable signature: let the call decide
        pass
    return _checked(name, factory(**options))


class WeightedSum:
    """sum_i w_i * reward_i(images, prompts). ``components`` gives each reward's own (unweighted) scores so a caller
    can log them, and ``combine`` turns those into the total without scoring twice; it keeps no state between calls,
    so one instance may serve several threads. Rewards of weight 0 are still computed (eval-only terms)."""

    def __init__(self, terms: dict[str, tuple[float, Reward]]):
        self.weights = {label: w for label, (w, _) in terms.items()}
        self.rewards = {label: r for label, (_, r) in terms.items()}

    def components(self, images, prompts) -> dict[str, np.ndarray]:
        x = as_images(images)
        prompts = _prompts(prompts, len(x))
        return {label: r(x, prompts) for label, r in self.rewards.items()}

    def combine(self, components: dict[str, np.ndarray]) -> np.ndarray:
        total = None
        for label, w in self.weights.items():
            term = np.float32(w) * np.asarray(components[label], np.float32)
            total = term if total is None else total + term
        return total

    def __call__(self, images, prompts) -> np.ndarray:
        return self.combine(self.components(images, prompts))

    def __repr__(self) -> str:
        return f"WeightedSum({self.weights})"


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise UserError(f"reward spec: weight of {where} must be a finite number, got {value!r}")
    return float(value)


def _terms(spec) -> list[tuple[str, str, float, dict]]:
    """(label, name, weight, options) for each entry of a spec."""
    if isinstance(spec, str):
        return [(spec, spec, 1.0, {})]
    if isinstance(spec, dict):
        out = []
        for name, value in spec.items():
            if isinstance(value, dict):
                opts = dict(value)
                out.append((opts.pop("label", name), name, _weight(opts.pop("weight", 1.0), repr(name)), opts))
            else:
                out.append((name, name, _weight(value, repr(name)), {}))
        return out
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            if isinstance(item, str):
                out.append((item, item, 1.0, {}))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                opts = dict(item)
                name = opts.pop("name")
                out.append((opts.pop("label", name), name, _weight(opts.pop("weight", 1.0), repr(name)), opts))
            else:
                raise UserError(f"reward spec: each list entry must be a name or a dict with a 'name', got {item!r}")
        return out
    raise UserError(f"reward spec must be a name, a dict of name: weight or a list of dicts, got {type(spec).__name__}")


def build(spec: str | dict | list) -> WeightedSum:
    """A weighted sum of rewards from a spec, as a config holds it:

    * ``"shapes"``: one reward, weight 1;
    * ``{"shapes": 1.0, "jpeg_compressibility": 0.1}``: name -> weight, or name -> options dict (``weight`` among
      them, default 1), e.g. ``{"pickscore": {"weight": 1.0, "path": "/models/pickscore"}}``;
    * ``[{"name": "pickscore", "weight": 1.0, "path": "/models/pickscore"}, "shapes"]``: a list of names or dicts;
      a ``label`` option names the component when one reward appears twice (e.g. two checkpoints).
    """
    terms = _terms(spec)
    if not terms:
        raise UserError("reward spec is empty: name at least one reward")
    labels = [t[0] for t in terms]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserError(f"reward spec: {', '.join(map(repr, dup))} appears twice; give each a distinct 'label'")
    return WeightedSum({label: (w, get_reward(name, **opts)) for label, name, w, opts in terms})


class AsyncReward:
    """Scores batches on background threads, so scoring chunk i overlaps generating chunk i+1.

    ``submit`` snapshots the batch (a uint8 copy: the caller may overwrite its buffers) and returns a
    ``concurrent.futures.Future`` of the scores. The overlap is real when the reward spends its time outside the GIL
    (torch kernels, PIL encoding, numpy), which every built-in does. Workers share the one reward object: one worker
    suits a model on one device; more can help rewards that release the GIL on CPU (PIL's JPEG encoder). Wrap
    ``WeightedSum.components`` to get the per-reward scores instead of the total.
    """

    def __init__(self, reward: Callable, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.reward = reward
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vgen-reward")

    def submit(self, images, prompts) -> Future:
        x = np.array(as_images(images), copy=True)
        return self._pool.submit(self.reward, x, _prompts(prompts, len(x)))

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def __enter__(self) -> AsyncReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
