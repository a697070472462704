"""`vgen sample`: images from a local model folder for every (prompt, seed) pair, or for
every (class, seed) pair of a VAR model folder.

Both write one PNG per sample, ``grid.png`` labelled with prompt (or class and prompt) and
seed, and ``samples.json`` (prompt, seed, file and, for prompts of the shapes grammar, the
verifier's score and strict verdict, also drawn as a green / red bar on the grid).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from vgen.errors import UserError
from vgen.images import make_grid, to_uint8
from vgen.io import atomic_write_json, prepare_out_dir, save_png


def parse_seeds(items: list[str], what: str = "seed") -> list[int]:
    """Seeds (or other ids, named by ``what`` in errors) from ints and inclusive ranges:
    ``0 5 10-12`` -> [0, 5, 10, 11, 12]."""
    out = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise UserError(f"bad {what} {item!r}: use non-negative integers or ranges like 0-7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi - lo > 100_000:
            raise UserError(f"bad {what} range {item!r}")
        out += range(lo, hi + 1)
    return out


def parse_classes(items: list[str], num_classes: int) -> list[int]:
    """Class ids like seeds (``0 5 10-12``), or ``all``; each must be one of the model's classes."""
    ids = list(range(num_classes)) if [i.strip() for i in items] == ["all"] else parse_seeds(items, "class")
    if bad := [c for c in ids if c >= num_classes]:
        raise UserError(f"class {bad[0]} is out of range: the model has classes 0..{num_classes - 1}")
    return ids


def read_prompts(items: list[str]) -> list[str]:
    """Prompts as given; an item ``@FILE`` reads one prompt per non-empty line of FILE."""
    out = []
    for item in items:
        if item.startswith("@"):
            try:
                out += [ln.strip() for ln in Path(item[1:]).read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise UserError(f"cannot read prompt file {item[1:]!r}: {e.strerror}") from None
            except UnicodeDecodeError:
                raise UserError(f"prompt file {item[1:]!r} is not UTF-8 text") from None
        else:
            out.append(item)
    if not out:
        raise UserError("no prompts given")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def sample(model: str, prompts: list[str], seeds: list[str], out: str, steps: int | None = None,
           guidance: float | None = None,
           shift: float | None = None, height: int = 64, width: int = 64, chunk_size: int | None = None,
           device: str = "cpu", dtype: str = "float32") -> int:
    import math

    from vgen.engine import rollout
    from vgen.models.load import load

    if guidance is not None and not math.isfinite(guidance) or shift is not None and not (math.isfinite(shift)
                                                                                          and shift > 0):
        raise UserError("--guidance must be a finite number and --shift a finite number > 0")
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise UserError(f"--height and --width must be positive multiples of 16, got {height} x {width}")
    prompts, seed_list = read_prompts(prompts), parse_seeds(seeds)
    rec = load(model, weights=False).sampling
    prepare_out_dir(out)
    steps = steps if steps is not None else rec.get("steps", 20)
    guidance = guidance if guidance is not None else rec.get("guidance", 4.5)
    pairs = [(p, s) for p in prompts for s in seed_list]
    policy = load(model, device=device, dtype=dtype).policy
    t0 = time.perf_counter()
    r = rollout(policy, [p for p, _ in pairs], [s for _, s in pairs], steps=steps, guidance=guidance, shift=shift,
                height=height, width=width, chunk_size=chunk_size, progress=True)
    elapsed = time.perf_counter() - t0
    write_samples(out, r.images, [{"prompt": p, "seed": s} for p, s in pairs], [f"{p} ({s})" for p, s in pairs], {
        "model": str(model), "steps": steps, "guidance": guidance, "shift": shift, "height": height, "width": width,
        "seconds": elapsed})
    return 0


def sample_var(model: str, classes: list[str], seeds: list[str], out: str, cfg: float | None = None,
               top_k: int | None = None, top_p: float | None = None, device: str = "cpu", depth: int | None = None,
               switch_scale: int | None = None, control: list[str] | None = None,
               control_seeds: list[str] | None = None, control_kind: str | None = None,
               cfg_control: float | None = None, adapter: str | None = None) -> int:
    """`vgen sample` for a VAR model (folder, run or official files): every (class, seed); CFG /
    top-k / top-p and VARiant's depth / switch scale default to the model's ``sampling`` settings,
    so a trained model samples as its recipe evaluated it.

    ScaleWeaver (a model with a control adapter): ``control`` condition image files, or
    ``control_seeds``, the world's own scenes of each class from those seeds, whose ``control_kind``
    map (default: the folder's) is the condition; every (condition, class, seed) is sampled and the
    condition images are written beside the samples (control-NNNN.png). ``cfg_control``: a guidance
    scale of its own on the condition (default: the folder's, else the class's ``cfg``)."""
    from vgen.engine.scalewise import sample as scalewise
    from vgen.models.load import load

    described = load(model, weights=False, adapter=adapter)  # classes, seeds, flags checked before the weights
    prompts = described.classes
    class_ids, seed_list = parse_classes(classes, len(prompts)), parse_seeds(seeds)
    settings = var_settings({}, cfg, top_k, top_p)
    if cfg_control is not None:
        from vgen.models.var.folder import check_sampling

        check_sampling({"cfg_control": cfg_control}, "the")
    if arch := described_arch(described):
        var_depth_plan(arch["depth"], len(arch["patch_nums"]), described.sampling, depth, switch_scale)
    if control is not None and control_seeds is not None:
        raise UserError("give either --control FILE or --control-seeds, not both")
    if (control is not None or control_seeds is not None) and not (arch or {}).get("control"):
        raise UserError(f"{str(model)!r} has no control adapter (train one with the scaleweaver recipe)")
    if control_kind is not None and control_seeds is None:
        raise UserError("--control-kind applies to --control-seeds (the world's own maps)")
    if cfg_control is not None and control is None and control_seeds is None:
        raise UserError("--cfg-control guides the condition: give --control FILE or --control-seeds")
    pairs = [(c, s) for c in class_ids for s in seed_list]
    records = [{"class": c, "prompt": prompts[c], "seed": s} for c, s in pairs]
    conds = None
    if control is not None or control_seeds is not None:  # files are read before anything is written
        scene_seeds = parse_seeds(control_seeds, "control seed") if control_seeds is not None else None
        conds, records, pairs = control_images(described, control, scene_seeds, control_kind, pairs, records)
    prepare_out_dir(out)
    m = load_var(model, device, adapter)
    settings = var_settings(m.sampling, cfg, top_k, top_p)
    plan = var_depth_plan(m.var.depth, len(m.var.patch_nums), m.sampling, depth, switch_scale)
    if plan is not None:
        settings["depth_plan"] = plan
    if conds is not None:
        from vgen.scaleweaver.conditions import condition_guidance, control_run

        tc = condition_guidance(m.sampling, settings["cfg"], cfg_control)
        settings["control"] = control_run(m.var, m.vqvae, conds, settings["cfg"], tc)
    t0 = time.perf_counter()
    r = scalewise(m.var, m.vqvae, [c for c, _ in pairs], [s for _, s in pairs], **settings)
    elapsed = time.perf_counter() - t0
    if conds is not None:
        for i, img in enumerate(to_uint8(conds)):
            save_png(Path(out) / f"control-{i:04d}.png", img)
        settings.update(control=m.sampling.get("control", "edges") if control is None else "files", cfg_control=tc)
    write_samples(out, r.images, records, [f"{c}: {prompts[c]} ({s})" for c, s in pairs],
                  {"model": str(model), **({"adapter": str(adapter)} if adapter else {}), **settings,
                   "resolution": m.resolution, "seconds": elapsed})
    return 0


def control_images(m, files, scene_seeds, kind, pairs, records):
    """The condition of every sample: each file, or each class's world scene from each control seed,
    crossed with the (class, seed) pairs; returns (images (N, 3, H, W), records, pairs)."""
    import torch

    from vgen.scaleweaver.conditions import read_condition, scene_conditions

    if files is not None:
        per = [(read_condition(f, m.resolution), {"control": str(f)}) for f in files]
        rows = [(img, info, c, s) for img, info in per for c, s in pairs]
    else:
        kind = kind or m.sampling.get("control", "edges")
        rows = []
        for t in scene_seeds:
            for c, s in pairs:
                img, _ = scene_conditions([c], [t], kind, m.resolution)
                rows.append((img[0], {"control": f"{kind} of the world scene of class {c}, seed {t}"}, c, s))
    recs = {(r["class"], r["seed"]): r for r in records}
    return (torch.stack([img for img, *_ in rows]), [{**recs[(c, s)], **info} for _, info, c, s in rows],
            [(c, s) for *_, c, s in rows])


def load_var(model, device: str = "cpu", adapter=None):
    """The loaded VAR model (vgen.models.load.Loaded) that can sample: not a tokenizer-only folder."""
    from vgen.models.load import load

    m = load(model, device=device, adapter=adapter)
    if m.kind != "var":
        raise UserError(f"{str(model)!r} is a diffusers pipeline, not a VAR model")
    if m.var is None:
        raise UserError(f"{str(model)!r} holds a tokenizer only: there is no VAR transformer to sample from")
    return m


def var_settings(sampling: dict, cfg: float | None = None, top_k: int | None = None,
                 top_p: float | None = None) -> dict:
    """CFG / top-k / top-p: those given, else the model's ``sampling``, else CFG 1.5 and no filtering;
    a NaN, infinite or negative CFG, a negative top-k or a top-p outside [0, 1] is a one-line error."""
    from vgen.models.var.folder import DEFAULT_SAMPLING, check_sampling

    given = {"cfg": cfg, "top_k": top_k, "top_p": top_p}
    check_sampling({k: v for k, v in given.items() if v is not None}, "the")
    s = {**DEFAULT_SAMPLING, **sampling, **{k: v for k, v in given.items() if v is not None}}
    return {"cfg": float(s["cfg"]), "top_k": int(s["top_k"]), "top_p": float(s["top_p"])}


def described_arch(m) -> dict | None:
    """The transformer's constructor arguments (depth, patch_nums, ...) of a model loaded with
    ``weights=False``, when its folder records them (official files and tokenizer-only folders do not)."""
    return (m.var_config or {}).get("var")


def default_switch_scale(num_scales: int) -> int:
    """VARiant's switch when neither the call nor the folder names one: the last three scales run the
    subnet, as the paper's VAR-d30 plan (10 scales, the first 7 on the full network)."""
    return max(1, num_scales - 3)


def var_depth_plan(blocks: int, num_scales: int, sampling: dict, depth: int | None = None,
                   switch_scale: int | None = None) -> list[list[int]] | None:
    """VARiant's depth plan for a call on a model of ``blocks`` blocks (None: the full network on every scale).

    ``depth`` / ``switch_scale``: those given, else the folder's ``sampling`` defaults, else the full
    depth and :func:`default_switch_scale`. A depth outside 2..D or a switch scale outside the
    model's scales is a one-line error; depth D is the full network (no plan)."""
    from vgen.models.var import switch_plan

    D = blocks
    d = depth if depth is not None else sampling.get("depth", D)  # D: the full network (also when D = 1)
    s = switch_scale if switch_scale is not None else sampling.get("switch_scale", default_switch_scale(num_scales))
    if isinstance(d, bool) or not isinstance(d, int) or not (d == D or 2 <= d < D):
        raise UserError(f"depth {d!r} must be an integer in 2..{D} (the model has {D} blocks)")
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < num_scales:
        raise UserError(f"switch scale {s!r} must be an integer in 0..{num_scales - 1} (the model samples "
                        f"{num_scales} scales)")
    if switch_scale is not None and depth is None and "depth" not in sampling:
        raise UserError(f"a switch scale needs a depth below the model's {D} blocks (give --depth)")
    return None if d == D else switch_plan(D, num_scales, s, d)


def write_samples(out: str | Path, images, records: list[dict], labels: list[str], meta: dict) -> None:
    """What both `vgen sample` paths write and print: a PNG per sample, grid.png and samples.json.

    ``images``: (N, 3, H, W) in [0, 1]; ``records``: one dict per sample with its prompt and seed,
    completed here with the file name and, for prompts of the shapes grammar, the verifier's
    score and strict verdict; ``meta``: the top level of samples.json, with the run's seconds."""
    from vgen.world.grammar import is_grammar_prompt
    from vgen.world.verifier import verify

    images = to_uint8(images)
    out_dir = Path(out)
    verdicts: list = [None] * len(records)
    grammar = [i for i, r in enumerate(records) if is_grammar_prompt(r["prompt"])]
    if grammar:
        for i, v in zip(grammar, verify(images[grammar], [records[i]["prompt"] for i in grammar])):
            verdicts[i] = v
    for i, (rec, img) in enumerate(zip(records, images)):
        rec["file"] = f"{i:04d}-seed{rec['seed']}-{_slug(rec['prompt'])}.png"
        save_png(out_dir / rec["file"], img)
        if verdicts[i] is not None:
            rec.update(score=verdicts[i].score, strict=verdicts[i].strict)
    marks = [v.strict for v in verdicts] if len(grammar) == len(records) else None
    save_png(out_dir / "grid.png", make_grid(list(images), labels, cols=min(8, len(records)), marks=marks))
    atomic_write_json(out_dir / "samples.json", {**meta, "samples": records})
    n, elapsed = len(records), meta["seconds"]
    print(f"wrote {n} images and grid.png to {out_dir} ({n / elapsed:.1f} images/s)")
    if grammar:
        print(f"verifier: {np.mean([verdicts[i].strict for i in grammar]):.1%} strictly correct "
              f"({len(grammar)} grammar prompts)")


def check_device(device: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N``, ``mps``; anything else is one line."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                        "device(s)")
    if d.type not in ("cpu", "cuda", "mps") or d.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} is not available here")
    return device
