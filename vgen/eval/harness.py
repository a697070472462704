"""The evaluation harness: generate a fixed (prompt x seed) grid, score it, write a report.

``evaluate`` scores images that already exist (a trainer's held-out pass calls it);
``evaluate_model`` generates them first from a model folder or a run. Metrics:
* ``geneval``: GenEval-Shapes strict accuracy and score (vgen.eval.geneval);
* ``fid``: FID-shapes and KID-shapes against real world images of the test split, in the
  embedding trained on the shapes world (vgen.eval.fid), never called Inception FID;
  with ``inception_weights`` (a local file) also Inception FID / KID;
* rewards: any registered reward by name (``name`` or ``name=PATH`` for a model reward),
  mean and 95% bootstrap interval over prompt slots;
* ``control`` (VAR models): each (class, seed) is also a world scene, the class prompt's scene from
  that seed; a model with a ScaleWeaver adapter samples under the scene's condition map, any other
  model without one (its chance level), and edge F1 / mask IoU against the scene's maps are
  reported (vgen.eval.control). Training scenes use seeds below ``data_size`` (20,000 by default),
  so seeds from 1,000,000 are held out. With ``control_data`` (a folder of condition files in
  CLASS/IMAGE folders, as a ScaleWeaver recipe's ``control_data``) every file is sampled for every
  seed instead, under its class, and scored against the file's own ink (``folder_control``).

report.json keys: ``vgen_version``, ``model``, ``source`` (model | run), ``step``, ``split``,
``n_prompts``, ``seeds``, ``steps``, ``guidance``, ``resolution``, ``geneval_shapes``, ``control``
(``kind``, ``tol``, ``controlled``, ``edge_f1`` / ``mask_iou`` as the GenEval figures, ``per_category``;
with ``control_data`` also ``folder``, ``n_files`` and ``per_class``)
(``overall`` / ``per_category`` -> ``strict`` / ``score`` -> ``mean``, ``ci95``, ``per_seed``,
``per_seed_std``), ``fid_shapes`` (``fid_shapes``, ``kid_shapes_mean``, ``kid_shapes_std``,
``n_real``, ``n_fake``), ``fid_inception`` (same with ``inception``), ``rewards`` (name ->
``mean``, ``ci95``, ``per_seed``, ``per_seed_std``), ``seconds`` (per phase).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vgen import __version__
from vgen.errors import UserError
from vgen.eval.geneval import geneval_shapes, summarize
from vgen.world.datasets import item_seed
from vgen.world.grammar import CATEGORIES, sample_prompts

METRICS = ("geneval", "fid", "control")


def grid(n_prompts: int, seeds: list[int], split: str = "test", prompt_seed: int = 0) -> tuple[list[str], list[int]]:
    """Slot-major (prompts, sample seeds): slot i, seed s -> prompt i, sample seed item_seed(s, i)."""
    prompts = sample_prompts(split, n_prompts, seed=prompt_seed)
    return ([p for p in prompts for _ in seeds], [item_seed(s, i) for i in range(n_prompts) for s in seeds])


def load_rewards(items: list[str]) -> dict:
    """Reward callables by name from ``name`` or ``name=PATH`` items (a model reward's local weights)."""
    from vgen.rewards import get_reward

    out = {}
    for item in items:
        name, _, path = item.partition("=")
        out[name] = get_reward(name, **({"path": path} if path else {}))
    return out


def check_metrics(metrics: tuple[str, ...]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)} (rewards go in --rewards)")


def evaluate(images: np.ndarray, prompts: list[str], n_seeds: int, metrics: tuple[str, ...] = METRICS,
             rewards: list[str] | dict = (), inception_weights: str | None = None, fid_reference: int = 2000,
             resolution: int = 64, features=None) -> dict:
    """Every requested metric of uint8 (N, H, W, 3) images laid out slot-major (see :func:`grid`);
    ``rewards`` are names (see :func:`load_rewards`) or already loaded callables by name."""
    check_metrics(metrics)
    out: dict = {"seconds": {}}
    if "geneval" in metrics:
        t = time.perf_counter()
        out["geneval_shapes"] = geneval_shapes(images, prompts, n_seeds)
        out["seconds"]["geneval"] = time.perf_counter() - t
    if "fid" in metrics:
        from vgen.eval.fid import fid_kid, load_features, reference_stats

        t = time.perf_counter()
        features = features if features is not None else load_features()
        ref = reference_stats(fid_reference, "test", seed=0, resolution=resolution, features=features)
        out["fid_shapes"] = fid_kid(ref, images, features)
        out["seconds"]["fid"] = time.perf_counter() - t
        if inception_weights:
            from vgen.eval.fid import inception_features

            t = time.perf_counter()
            inc = inception_features(inception_weights)
            ref = reference_stats(fid_reference, "test", seed=0, resolution=resolution, features=inc)
            out["fid_inception"] = fid_kid(ref, images, inc)
            out["seconds"]["fid_inception"] = time.perf_counter() - t
    if rewards:
        t = time.perf_counter()
        out["rewards"] = {}
        for name, fn in (rewards if isinstance(rewards, dict) else load_rewards(list(rewards))).items():
            r = np.asarray(fn(images, prompts), np.float64)
            out["rewards"][name] = summarize(r.reshape(-1, n_seeds))
        out["seconds"]["rewards"] = time.perf_counter() - t
    return out


def generate(policy, prompts: list[str], seeds: list[int], steps: int, guidance: float, resolution: int,
             batch: int = 64, progress: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3) images of (prompt, seed) pairs, ``batch`` per engine call."""
    from tqdm.auto import tqdm

    from vgen.engine import rollout
    from vgen.images import to_uint8

    out = []
    for lo in tqdm(range(0, len(prompts), batch), desc="generate", unit="batch", disable=not progress):
        r = rollout(policy, prompts[lo:lo + batch], seeds[lo:lo + batch], steps=steps, guidance=guidance,
                    height=resolution, width=resolution)
        out.append(to_uint8(r.images))
    return np.concatenate(out)


@dataclass
class EvalOptions:
    """What `vgen eval` generates and scores. Pipelines use n / steps / guidance / resolution (test-split
    prompts x seeds); VAR models use classes / cfg / top_k / top_p / patch_nums / the depth plan
    (classes x seeds; sample seed = the seed itself, so ``vgen sample --classes C --seeds S`` draws the
    same image). ``None`` takes the model's own default."""

    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: tuple[str, ...] = METRICS
    rewards: list[str] = field(default_factory=list)
    n: int = 300
    steps: int | None = None
    guidance: float | None = None
    resolution: int = 64
    classes: list[str] | None = None           # VAR: ids / ranges / "all" (default: all)
    control_kind: str | None = None            # VAR, metric control: edges | mask (default: the model's)
    control_tol: int = 1                       # VAR, metric control: edge F1 tolerance, pixels
    cfg_control: float | None = None           # VAR with a control: the condition's own guidance (default: the model's)
    control_data: str | None = None            # VAR, metric control: condition files (CLASS/IMAGE) for the scenes
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    patch_nums: list[int] | None = None        # VAR: another scale list (FlexVAR only)
    depth: int | None = None                   # VAR: VARiant run-time depth (subnet from switch_scale on)
    switch_scale: int | None = None
    inception_weights: str | None = None
    ref_stats: str | None = None               # VAR: ADM-style reference .npz (Inception mu / sigma)
    fid_reference: int = 2000
    checkpoint: str | None = None              # run: a named checkpoint instead of the newest
    adapter: str | None = None                 # VAR: a control adapter folder put on the model
    batch: int = 64
    progress: bool = True


def _check(opts: EvalOptions) -> None:
    check_metrics(opts.metrics)  # every request checked before the (long) generation
    if opts.cfg_control is not None:
        from vgen.models.var.folder import check_sampling

        check_sampling({"cfg_control": opts.cfg_control}, "the")
    if opts.n < 1 or not opts.seeds:
        raise UserError("--n must be >= 1 and --seeds must name at least one seed")
    for what, path in (("Inception weights", opts.inception_weights), ("reference statistics", opts.ref_stats)):
        if path and not Path(path).is_file():
            raise UserError(f"{what} file not found: {path!r}")
    if opts.ref_stats and not opts.inception_weights:
        raise UserError("--ref-stats needs --inception-weights (the network its statistics were computed with)")
    if opts.ref_stats:
        from vgen.eval.fid import load_ref_stats

        load_ref_stats(opts.ref_stats)  # a corrupt or malformed file is refused before any generation
    if opts.resolution < 16 or opts.resolution % 16:
        raise UserError(f"--resolution must be a positive multiple of 16, got {opts.resolution}")


def evaluate_model(model: str, opts: EvalOptions, described=None) -> tuple[dict, np.ndarray, list[str], int]:
    """(report, images, prompts, seeds per slot) for anything vgen.models.load reads."""
    from vgen.models.load import load

    _check(opts)
    described = described or load(model, weights=False, checkpoint=opts.checkpoint, adapter=opts.adapter)
    if described.kind == "var":
        return evaluate_var_model(model, opts, described)
    var_only = [k for k in ("classes", "cfg", "top_k", "top_p", "patch_nums", "depth", "switch_scale", "ref_stats",
                            "control_kind", "cfg_control", "control_data") if getattr(opts, k) is not None]
    if "control" in opts.metrics:
        raise UserError(f"the control metric applies to VAR models; {model!r} is a diffusers pipeline")
    if var_only:
        raise UserError(f"--{var_only[0].replace('_', '-')} applies to VAR models; {model!r} is a diffusers pipeline")
    if "fid" in opts.metrics and opts.n * len(opts.seeds) < 2:
        raise UserError("FID needs at least two generated images: raise --n or give more --seeds")
    rewards = load_rewards(list(opts.rewards))
    m = load(model, checkpoint=opts.checkpoint)
    steps = opts.steps or m.sampling.get("steps", 20)
    guidance = opts.guidance if opts.guidance is not None else m.sampling.get("guidance", 3.0)
    prompts, sample_seeds = grid(opts.n, opts.seeds)
    t = time.perf_counter()
    images = generate(m.policy, prompts, sample_seeds, steps, guidance, opts.resolution, opts.batch, opts.progress)
    gen_s = time.perf_counter() - t
    report = {"vgen_version": __version__, "model": str(model), "kind": "pipeline", "source": m.source,
              "step": m.step, "split": "test", "n_prompts": opts.n, "seeds": list(opts.seeds), "steps": steps,
              "guidance": guidance, "resolution": opts.resolution, "threads": torch.get_num_threads()}
    scored = evaluate(images, prompts, len(opts.seeds), opts.metrics, rewards, opts.inception_weights,
                      opts.fid_reference, opts.resolution)
    report.update(scored)
    report["seconds"] = {"generate": gen_s, **scored["seconds"]}
    return report, images, prompts, len(opts.seeds)


def var_images(var, vqvae, classes: list[int], seeds: list[int], settings: dict, batch: int = 64,
               progress: bool = False, conditions=None, cfg_control: float | None = None) -> np.ndarray:
    """uint8 (len(classes) * len(seeds), H, W, 3) samples, class-major (class c, then each seed);
    ``conditions`` (ScaleWeaver): one condition image per sample, in the same order, guided by
    ``cfg_control`` (default: the class's cfg)."""
    return var_pair_images(var, vqvae, [(c, s) for c in classes for s in seeds], settings, batch, progress, conditions,
                           cfg_control)


def var_pair_images(var, vqvae, pairs: list[tuple[int, int]], settings: dict, batch: int = 64,
                    progress: bool = False, conditions=None, cfg_control: float | None = None) -> np.ndarray:
    """uint8 (len(pairs), H, W, 3) samples of (class, seed) pairs, in batches (see ``var_images``)."""
    from tqdm.auto import tqdm

    from vgen.engine.scalewise import sample
    from vgen.images import to_uint8

    out = []
    for lo in tqdm(range(0, len(pairs), batch), desc="generate", unit="batch", disable=not progress):
        part = pairs[lo:lo + batch]
        extra = {}
        if conditions is not None:
            from vgen.scaleweaver.conditions import control_run

            extra["control"] = control_run(var, vqvae, conditions[lo:lo + len(part)], settings["cfg"], cfg_control,
                                           settings.get("patch_nums"))
        r = sample(var, vqvae, [c for c, _ in part], [s for _, s in part], **settings, **extra)
        out.append(to_uint8(r.images))
    return np.concatenate(out)


CLASS_REFERENCE_SEED = 2  # scenes no recipe sees: the var recipe trains on data seed 0, validates on 1


def class_reference(prompts: list[str], per_class: int, resolution: int, seed: int = CLASS_REFERENCE_SEED):
    """Real renders of each class prompt (class-major, ``per_class`` scenes each), uint8 (N, H, W, 3)."""
    from vgen.world.scene import render_prompt

    return np.stack([render_prompt(p, item_seed(seed, c * per_class + j), resolution)
                     for c, p in enumerate(prompts) for j in range(per_class)])


def evaluate_var(var, vqvae, class_prompts: list[str], classes: list[int], seeds: list[int], settings: dict,
                 metrics: tuple[str, ...] = METRICS, resolution: int = 64, batch: int = 64,
                 progress: bool = False, control: dict | None = None) -> tuple[dict, np.ndarray, list[str]]:
    """Sample every (class, seed) and score it: GenEval-Shapes against each class's prompt (classes
    whose prompt the shapes grammar reads), FID-shapes / KID against as many real renders of the same
    prompts. ``settings``: the sampler's keyword arguments (cfg, top_k, top_p, patch_nums, depth_plan).
    ``control`` ({"kind", "tol"}, metric ``control``): the scenes' condition maps, sampled under when
    the model has a control adapter. Returns (scores, images, prompts), images class-major."""
    from vgen.world.grammar import is_grammar_prompt

    if control and control.get("folder"):
        return folder_control(var, vqvae, class_prompts, seeds, settings, control, resolution, batch, progress)
    out: dict = {"seconds": {}}
    grammar = all(is_grammar_prompt(class_prompts[c]) for c in classes)
    conditions = maps = None
    controlled = getattr(var, "control", None) is not None
    if "control" in metrics:
        from vgen.scaleweaver.conditions import scene_conditions
        from vgen.world.datasets import CLASS_PROMPTS

        if tuple(class_prompts) != CLASS_PROMPTS[:len(class_prompts)]:
            raise UserError("the control metric needs a model of the shapes world's class prompts (its scenes give "
                            "the conditions)")
        cond_images, maps = scene_conditions([c for c in classes for _ in seeds], [s for _ in classes for s in seeds],
                                             control["kind"], resolution)
        conditions = cond_images if controlled else None
    t = time.perf_counter()
    images = var_images(var, vqvae, classes, seeds, settings, batch, progress, conditions,
                        (control or {}).get("cfg_control"))
    out["seconds"]["generate"] = time.perf_counter() - t
    prompts = [class_prompts[c] for c in classes for _ in seeds]
    if maps is not None:
        from vgen.world.grammar import parse

        overall, per_category = control_summary(
            images, np.stack([m["edges"] > 0 for m in maps]), np.stack([m["mask"] for m in maps]),
            [parse(class_prompts[c]).category for c in classes], len(seeds), control["tol"])
        out["control"] = control_report(control, controlled, len(prompts), overall, per_category=per_category)
    if "geneval" in metrics:
        if grammar:
            t = time.perf_counter()
            out["geneval_shapes"] = geneval_shapes(images, prompts, len(seeds))
            out["seconds"]["geneval"] = time.perf_counter() - t
        else:
            out["notes"] = ["GenEval-Shapes skipped: the class names are not prompts of the shapes grammar"]
    if "fid" in metrics and grammar:
        from vgen.eval.fid import fid_kid, load_features

        t = time.perf_counter()
        real = class_reference([class_prompts[c] for c in classes], len(seeds), images.shape[1])
        out["fid_shapes"] = fid_kid(real, images, load_features())
        out["seconds"]["fid"] = time.perf_counter() - t
    return out, images, prompts


def folder_control(var, vqvae, class_prompts: list[str], seeds: list[int], settings: dict, control: dict,
                   resolution: int = 64, batch: int = 64, progress: bool = False) -> tuple[dict, np.ndarray, list[str]]:
    """The control metric on a user's condition files: every file of ``control["folder"]`` (CLASS/IMAGE,
    the class folder names being the model's class names; cropped and resized as training reads them)
    is sampled for every seed under its class, with the file as its condition when the model has a
    control adapter, and scored against the file's own ink (vgen.eval.control.condition_targets), so a
    control trained on an image folder is measured on held-out files of the same kind. Returns (scores,
    images, prompts), file-major."""
    from vgen.data.imagefolder import ImageFolderClasses
    from vgen.eval.control import condition_targets

    ds = ImageFolderClasses(control["folder"], resolution)
    ids = {name: i for i, name in enumerate(class_prompts)}
    unknown = [c for c in ds.classes if c not in ids]
    if unknown:
        raise UserError(f"condition folder {str(control['folder'])!r}: class folder {unknown[0]!r} is not a class of "
                        f"the model (name the class folders as its classes, e.g. {class_prompts[0]!r})")
    conds = torch.stack([ds.item(i)["image"] for i in range(len(ds))])
    edges, masks = condition_targets(conds, control["kind"])
    n = len(seeds)
    labels = np.array([ids[ds.classes[ds.label(i)]] for i in range(len(ds))])
    pairs = [(int(c), s) for c in labels for s in seeds]
    controlled = getattr(var, "control", None) is not None
    t = time.perf_counter()
    images = var_pair_images(var, vqvae, pairs, settings, batch, progress,
                             conds.repeat_interleave(n, 0) if controlled else None, control["cfg_control"])
    seconds = {"generate": time.perf_counter() - t}
    overall, per_class = control_summary(images, np.repeat(edges, n, 0), np.repeat(masks, n, 0),
                                         [class_prompts[c] for c in labels], n, control["tol"])
    out = control_report(control, controlled, len(pairs), overall, per_category={}, per_class=per_class,
                         folder=str(control["folder"]), n_files=len(ds))
    return ({"control": out, "classes": sorted(set(labels.tolist())), "seconds": seconds}, images,
            [class_prompts[c] for c, _ in pairs])


def control_report(control: dict, controlled: bool, n_images: int, overall: dict, **groups) -> dict:
    """The report's ``control`` entry, whichever conditions were scored: the settings and the figures."""
    return {"kind": control["kind"], "tol": control["tol"], "controlled": controlled,
            "cfg_control": control["cfg_control"] if controlled else None, "n_images": n_images, **groups, **overall}


def control_summary(images, edges: np.ndarray, masks: np.ndarray, groups: list[str], n_seeds: int,
                    tol: int) -> tuple[dict, dict]:
    """Edge F1 and mask IoU of slot-major images (slot i, then each seed) against their target maps,
    summarised as the GenEval figures (mean, 95% bootstrap interval over slots, per-seed spread):
    overall, and per group of slots (``groups``: one name per slot, a scene's category or a file's class)."""
    from vgen.eval.control import control_scores

    sc = control_scores(images, edges, masks, tol)
    groups = np.asarray(groups)
    overall, per_group = {}, {}
    for key in ("edge_f1", "mask_iou"):
        v = sc[key].reshape(len(groups), n_seeds)
        overall[key] = summarize(v)
        for g in dict.fromkeys(groups.tolist()):
            per_group.setdefault(g, {})[key] = summarize(v[groups == g])
    return overall, per_group


def evaluate_var_model(model: str, opts: EvalOptions, described=None) -> tuple[dict, np.ndarray, list[str], int]:
    """`vgen eval` of a VAR model folder, VAR run or official checkpoint pair (see EvalOptions)."""
    from vgen.models.load import load
    from vgen.sample import described_arch, parse_classes, var_depth_plan, var_settings
    from vgen.scaleweaver.conditions import condition_guidance

    pipeline_only = [k for k in ("steps", "guidance") if getattr(opts, k) is not None]
    if pipeline_only or opts.rewards:
        flag = pipeline_only[0] if pipeline_only else "rewards"
        raise UserError(f"--{flag} applies to diffusers pipelines; {model!r} is a VAR model (it takes --cfg, "
                        "--top-k, --top-p, --classes)")
    if opts.control_data is not None and (tuple(opts.metrics) != ("control",) or opts.classes or opts.ref_stats):
        raise UserError("--control-data scores the control metric alone, on its files' classes: give --metrics "
                        "control only, and no --classes or --ref-stats")
    if opts.control_data is not None and not Path(opts.control_data).is_dir():
        raise UserError(f"--control-data {opts.control_data!r} is not a folder (CLASS/IMAGE condition files)")
    var_settings({}, opts.cfg, opts.top_k, opts.top_p)  # bad sampling flags first
    m = described or load(model, weights=False, checkpoint=opts.checkpoint, adapter=opts.adapter)
    classes = parse_classes(opts.classes or ["all"], len(m.classes))
    if opts.cfg_control is not None and not ("control" in opts.metrics and (described_arch(m) or {}).get("control")):
        raise UserError("--cfg-control guides a control adapter's condition: it needs a model with one and "
                        "--metrics control")
    if arch := described_arch(m):  # the depth flags checked before the weights load
        K = len(opts.patch_nums or arch["patch_nums"])
        var_depth_plan(arch["depth"], K, m.sampling, opts.depth, opts.switch_scale)
    if ("fid" in opts.metrics or opts.ref_stats) and len(classes) * len(opts.seeds) < 2:
        raise UserError("FID needs at least two generated images: give more --classes or --seeds")
    m = load(model, checkpoint=opts.checkpoint, adapter=opts.adapter)
    if m.var is None:
        raise UserError(f"{str(model)!r} holds a tokenizer only: there is no VAR transformer to evaluate")
    settings = var_settings(m.sampling, opts.cfg, opts.top_k, opts.top_p)
    pns = m.var.check_patch_nums(opts.patch_nums)
    if opts.patch_nums is not None:
        settings["patch_nums"] = list(pns)
    plan = var_depth_plan(m.var.depth, len(pns), m.sampling, opts.depth, opts.switch_scale)
    if plan is not None:
        settings["depth_plan"] = plan
    control = None
    if "control" in opts.metrics:
        kind = opts.control_kind or m.sampling.get("control", "edges")
        control = {"kind": kind, "tol": opts.control_tol, "folder": opts.control_data,
                   "cfg_control": condition_guidance(m.sampling, settings["cfg"], opts.cfg_control)}
    scores, images, prompts = evaluate_var(m.var, m.vqvae, m.classes, classes, list(opts.seeds), settings,
                                           opts.metrics, m.resolution, opts.batch, opts.progress, control)
    classes = scores.pop("classes", classes)  # a condition folder's own classes
    report = {"vgen_version": __version__, "model": str(model), "kind": "var", "source": m.source, "step": m.step,
              "classes": classes, "n_classes": len(classes), "seeds": list(opts.seeds), **settings,
              "patch_nums": list(pns), "flex": bool(m.var.flex), "resolution": m.resolution,
              "threads": torch.get_num_threads(), **scores}
    if opts.adapter:
        report["adapter"] = str(opts.adapter)
    if opts.ref_stats:
        from vgen.eval.fid import fid_against_ref_stats

        t = time.perf_counter()
        report["fid_ref_stats"] = fid_against_ref_stats(images, opts.ref_stats, opts.inception_weights)
        report["seconds"]["fid_ref_stats"] = time.perf_counter() - t
    return report, images, prompts, len(opts.seeds)


def _pct(s: dict) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:.1%} [{lo:.1%}, {hi:.1%}]"


def markdown(r: dict) -> str:
    adapter = f" with the control adapter {r['adapter']}" if r.get("adapter") else ""
    lines = [f"# Evaluation of {r.get('model', 'images')}{adapter}", ""]
    if r.get("kind") == "var":
        plan = "" if not r.get("depth_plan") else f", depth plan (blocks per scale) {r['depth_plan']}"
        lines.append(f"{r['n_classes']} classes x {len(r['seeds'])} seeds, CFG {r['cfg']}, top-k {r['top_k']}, "
                     f"top-p {r['top_p']}, scales {r['patch_nums']}{plan}, {r['resolution']} px; "
                     f"vgen {r['vgen_version']}.")
        lines += [f"Note: {n}" for n in r.get("notes", [])]
    elif "n_prompts" in r:
        lines.append(f"{r['n_prompts']} {r.get('split', 'test')}-split prompts x {len(r['seeds'])} seeds, "
                     f"{r['steps']} steps, CFG {r['guidance']}, {r['resolution']} px; vgen {r['vgen_version']}.")
    env = r.get("environment")
    if env:
        lines.append(f"Environment: torch {env['torch']}, numpy {env['numpy']}, Python {env['python']}, "
                     f"CPU kernels {env['cpu_kernels']}.")
    g = r.get("geneval_shapes")
    if g:
        lines += ["", "## GenEval-Shapes (95% bootstrap interval over prompts; spread = std across seeds)", "",
                  "| category | strict accuracy | per-seed spread | mean score |", "|---|---|---|---|"]
        rows = [(c, g["per_category"][c]) for c in CATEGORIES if c in g["per_category"]] + [("overall", g["overall"])]
        for c, v in rows:
            lines.append(f"| {c} | {_pct(v['strict'])} | {v['strict']['per_seed_std']:.1%} | "
                         f"{v['score']['mean']:.3f} |")
    for key, label in (("fid_shapes", "shapes"), ("fid_inception", "inception")):
        f = r.get(key)
        if f:
            name = "FID-shapes" if label == "shapes" else "Inception FID"
            real = "real renders of the same class prompts" if r.get("kind") == "var" else "real test-split images"
            lines += ["", f"## {name}", "", f"- {name}: {f[f'fid_{label}']:.3f} ({f['n_fake']} generated vs "
                      f"{f['n_real']} {real})",
                      f"- KID-{label}: {f[f'kid_{label}_mean']:.5f} ± {f[f'kid_{label}_std']:.5f}"]
    if r.get("control"):
        c = r["control"]
        source = f"condition file in {c['folder']} ({c['n_files']} files)" if c.get("folder") else "scene's"
        how = f"sampled under each {source}" if c["controlled"] else \
            f"sampled WITHOUT (no control adapter) each {source}"
        lines += ["", f"## Control ({how} {c['kind']} map; edge tolerance {c['tol']} px)", "",
                  "| category | edge F1 | mask IoU |", "|---|---|---|"]
        rows = [(k, c["per_category"][k]) for k in CATEGORIES if k in c["per_category"]]
        rows += [(k, v) for k, v in c.get("per_class", {}).items()] + [("overall", c)]
        for k, v in rows:
            lines.append(f"| {k} | {v['edge_f1']['mean']:.3f} [{v['edge_f1']['ci95'][0]:.3f}, "
                         f"{v['edge_f1']['ci95'][1]:.3f}] | {v['mask_iou']['mean']:.3f} "
                         f"[{v['mask_iou']['ci95'][0]:.3f}, {v['mask_iou']['ci95'][1]:.3f}] |")
    if r.get("fid_ref_stats"):
        f = r["fid_ref_stats"]
        lines += ["", "## FID against reference statistics", "",
                  f"- FID: {f['fid']:.3f} ({f['n']} generated images vs `{f['ref_stats']}`)"]
        if f.get("is_mean") is not None:
            lines.append(f"- Inception Score: {f['is_mean']:.3f} ± {f['is_std']:.3f}")
    if r.get("rewards"):
        lines += ["", "## Rewards", "", "| reward | mean | 95% interval | per-seed spread |", "|---|---|---|---|"]
        for name, s in r["rewards"].items():
            lines.append(f"| {name} | {s['mean']:.4f} | [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] | "
                         f"{s['per_seed_std']:.4f} |")
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in r.get("seconds", {}).items())
    lines += ["", f"Time: {secs}.", "", "![samples](samples.png)"]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    """What a figure depends on beyond vgen's own code. The same commit gave other held-out curves once
    its environment was rebuilt (packages are pinned only from below), so every report names its own."""
    import platform

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu_kernels": torch.backends.cpu.get_cpu_capability()}


def write_report(out: Path, report: dict, images: np.ndarray, prompts: list[str], n_seeds: int,
                 grid_prompts: int = 12) -> None:
    """report.json, report.md and samples.png (the first seed of the first slots), each written atomically;
    the report gains the environment it was made in."""
    from vgen.images import sample_sheet
    from vgen.io import atomic_write_json, atomic_write_text

    report = {**report, "environment": environment()}
    idx = list(range(0, len(images), n_seeds))[:grid_prompts]
    shown = [prompts[i] for i in idx]
    sample_sheet(out / "samples.png", images[idx], shown, shown, cols=6)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))


def run_eval(model: str, out: str | None, opts: EvalOptions, force: bool = False) -> Path:
    """`vgen eval`: evaluate, then write the report into ``out`` (default: RUN/eval/step-N for a
    run, runs/eval-<model>-<time> for a model folder); a non-empty ``out`` needs ``force``."""
    from vgen.io import prepare_out_dir
    from vgen.models.load import load

    _check(opts)
    m = load(model, weights=False, checkpoint=opts.checkpoint, adapter=opts.adapter)  # what it is, read once
    given = out is not None
    if not given:
        if m.source == "run" and m.adapter is None:  # a run's own evaluations are of the run's model alone
            run = Path(model) if not Path(model).parent.name == "checkpoints" else Path(model).parent.parent
            out = run / "eval" / f"step-{m.step:06d}"
        else:
            name = Path(model).name if m.source != "official" else "var-official"
            name += f"+{m.adapter.name}" if m.adapter is not None else ""
            out = Path("runs") / f"eval-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # a bad --out is found before the generation, not after
    out = prepare_out_dir(out, empty_or_force=force if given else None)
    report, images, prompts, n_seeds = evaluate_model(model, opts, m)
    write_report(out, report, images, prompts, n_seeds)
    return out
