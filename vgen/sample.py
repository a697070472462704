"""`vgen sample`: images from a local model folder for every (prompt, seed) pair.

Writes one PNG per sample, ``grid.png`` labelled with prompt and seed, and
``samples.json`` (prompt, seed, file and, for prompts of the shapes grammar, the
verifier's score and strict verdict, also drawn as a green / red bar on the grid).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from vgen.errors import UserError
from vgen.images import make_grid
from vgen.io import atomic_write_json, save_png


def load_policy(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """The engine policy for a local model folder, chosen by its model_index.json."""
    import torch

    from vgen.models.policy import check_pipeline_folder

    kind = check_pipeline_folder(Path(path)).get("_class_name")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    if kind in ("StableDiffusion3Pipeline",):
        from vgen.models.sd3 import SD3Policy

        return SD3Policy.from_pretrained(path, dtype=torch_dtype, device=device)
    if kind in ("FluxPipeline",):
        from vgen.models.flux import FluxPolicy

        return FluxPolicy.from_pretrained(path, dtype=torch_dtype, device=device)
    if kind in ("SanaPipeline",):
        from vgen.models.sana import SanaPolicy

        return SanaPolicy.from_pretrained(path, dtype=torch_dtype, device=device)
    raise UserError(f"{str(path)!r} holds a {kind!r}; vgen supports StableDiffusion3Pipeline, FluxPipeline and "
                    "SanaPipeline folders")


def parse_seeds(items: list[str]) -> list[int]:
    """Seeds from ints and inclusive ranges: ``0 5 10-12`` -> [0, 5, 10, 11, 12]."""
    out = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise UserError(f"bad seed {item!r}: use non-negative integers or ranges like 0-7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi - lo > 100_000:
            raise UserError(f"bad seed range {item!r}")
        out += range(lo, hi + 1)
    return out


def read_prompts(items: list[str]) -> list[str]:
    """Prompts as given; an item ``@FILE`` reads one prompt per non-empty line of FILE."""
    out = []
    for item in items:
        if item.startswith("@"):
            try:
                out += [ln.strip() for ln in Path(item[1:]).read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise UserError(f"cannot read prompt file {item[1:]!r}: {e.strerror}") from None
        else:
            out.append(item)
    if not out:
        raise UserError("no prompts given")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def recommended(model: str | Path) -> dict:
    """Sampling defaults a vgen base records in ``vgen_base.json`` (CFG scale, steps), if any."""
    import json

    try:
        info = json.loads((Path(model) / "vgen_base.json").read_text())
        return {"guidance": float(info["cfg"]), "steps": int(info["eval_steps"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def sample(model: str, prompts: list[str], seeds: list[str], out: str, steps: int | None = None,
           guidance: float | None = None,
           shift: float | None = None, height: int = 64, width: int = 64, chunk_size: int | None = None,
           device: str = "cpu", dtype: str = "float32") -> int:
    from vgen.engine import rollout
    from vgen.world.grammar import parse
    from vgen.world.verifier import verify

    prompts, seed_list = read_prompts(prompts), parse_seeds(seeds)
    rec = recommended(model)
    steps = steps if steps is not None else rec.get("steps", 20)
    guidance = guidance if guidance is not None else rec.get("guidance", 4.5)
    pairs = [(p, s) for p in prompts for s in seed_list]
    policy = load_policy(model, device, dtype)
    t0 = time.perf_counter()
    r = rollout(policy, [p for p, _ in pairs], [s for _, s in pairs], steps=steps, guidance=guidance, shift=shift,
                height=height, width=width, chunk_size=chunk_size, progress=True)
    elapsed = time.perf_counter() - t0
    images = (r.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out_dir = Path(out)
    records = []
    verdicts: list = [None] * len(pairs)
    grammar = [i for i, (p, _) in enumerate(pairs) if _parses(parse, p)]
    if grammar:
        for i, v in zip(grammar, verify(images[grammar], [pairs[i][0] for i in grammar])):
            verdicts[i] = v
    for i, ((p, s), img) in enumerate(zip(pairs, images)):
        name = f"{i:04d}-seed{s}-{_slug(p)}.png"
        save_png(out_dir / name, img)
        rec = {"prompt": p, "seed": s, "file": name}
        if verdicts[i] is not None:
            rec.update(score=verdicts[i].score, strict=verdicts[i].strict)
        records.append(rec)
    marks = [v.strict for v in verdicts] if len(grammar) == len(pairs) else None
    save_png(out_dir / "grid.png", make_grid(list(images), [f"{p} ({s})" for p, s in pairs],
                                             cols=min(8, len(pairs)), marks=marks))
    atomic_write_json(out_dir / "samples.json", {
        "model": str(model), "steps": steps, "guidance": guidance, "shift": shift, "height": height, "width": width,
        "seconds": elapsed, "samples": records})
    print(f"wrote {len(pairs)} images and grid.png to {out_dir} ({len(pairs) / elapsed:.1f} images/s)")
    if grammar:
        print(f"verifier: {np.mean([verdicts[i].strict for i in grammar]):.1%} strictly correct "
              f"({len(grammar)} grammar prompts)")
    return 0


def _parses(parse, prompt: str) -> bool:
    try:
        parse(prompt)
        return True
    except ValueError:
        return False
