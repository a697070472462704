"""ScaleWeaver's control / quality table: reference attention, joint attention and a ControlNet-style branch
in the same frozen backbone, against the uncontrolled base, over several seeds.

    python tools/scaleweaver_compare.py [--config configs/scaleweaver/edges.yaml] [--seeds 0 1 2]
                                        [--eval-seeds 1000000-1000002] [--arms reference joint controlnet]
                                        [--parallel 2 | --cores 1] [--out runs/scaleweaver-compare]
                                        [--cfg-control X --tag NAME] [key=value ...]

Each arm trains the config with its own ``mode`` (``causal`` is reference attention with
``ref_scales=causal``; ``lr3e-3`` reference attention at three times the lr; ``reference-pos`` and
``joint-pos`` with ``pos_bias``; ``reference-pos-b6``, ``joint-pos-b6`` and ``controlnet-b6`` in all 6 blocks):
the same base, data,
steps, lr and seeds, so they differ only in how the condition enters. Then ``vgen eval --metrics
geneval fid control`` scores the base and every final model on held-out world scenes: every class x
``--eval-seeds`` (training scenes use seeds below the config's data_size), each sampled under its
own condition map (the base without it: its chance level). It writes ``report.json``, ``report.md``
(mean +- std over seeds of edge F1, mask IoU, GenEval-Shapes strict and FID-shapes per arm, with the
``vgen bench control`` cost table of the seed-0 models when ``--bench`` ran) and ``grid.png``
(held-out scenes: condition, base, then each arm, same class and seed). Finished runs and
evaluations are reused, so the script resumes.

``--cfg-control X`` evaluates the arms with a guidance scale of the condition's own (multi-modal CFG;
default: the config's CFG on class and condition together). ``--tag NAME`` keeps such evaluations
apart (``ARM-sS-eval-NAME``, ``report-NAME.*``, ``grid-NAME.png``), e.g. a sweep of the scale on
other held-out scenes (``--eval-seeds 2000000``) before one test evaluation at the chosen scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from solrl_learning import read_config, run_all  # noqa: E402

ARMS = {"reference": ["mode=reference"], "joint": ["mode=joint"], "controlnet": ["mode=controlnet"],
        "causal": ["mode=reference", "ref_scales=causal"],
        "lr3e-3": ["mode=reference", "lr=0.003"],  # post hoc: is reference attention only slower to train?
        "reference-pos": ["mode=reference", "pos_bias=true"],  # post hoc: the learned bias on the query's own cell
        "joint-pos": ["mode=joint", "pos_bias=true"],
        "reference-pos-b6": ["mode=reference", "pos_bias=true", "blocks=6"],  # ... injected into every block
        "controlnet-b6": ["mode=controlnet", "blocks=6"],  # its baseline at the same depth
        "joint-pos-b6": ["mode=joint", "pos_bias=true", "blocks=6"]}


def scores(report_dir: Path) -> dict:
    r = json.loads((report_dir / "report.json").read_text())
    c = r["control"]
    return {"edge_f1": c["edge_f1"]["mean"], "mask_iou": c["mask_iou"]["mean"],
            "strict": r["geneval_shapes"]["overall"]["strict"]["mean"], "fid": r["fid_shapes"]["fid_shapes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/scaleweaver/edges.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-seeds", default="1000000-1000002")
    ap.add_argument("--arms", nargs="+", default=["reference", "joint", "controlnet"], choices=list(ARMS))
    ap.add_argument("--parallel", type=int, default=1, help="runs at once, on cores 0..N-1 (one thread each)")
    ap.add_argument("--cores", type=int, nargs="+", help="the cores to run on instead (one run per core)")
    ap.add_argument("--bench", action="store_true", help="also run `vgen bench control` on the seed-0 models")
    ap.add_argument("--out", default="runs/scaleweaver-compare")
    ap.add_argument("--cfg-control", type=float, default=None, help="the arms' guidance scale of the condition")
    ap.add_argument("--tag", default="", help="suffix of this evaluation's folders and report (e.g. a sweep)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of every arm's config")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = read_config(a.config, a.overrides)
    cores = a.cores or list(range(a.parallel))
    kind = cfg.get("control", "edges")

    tag = f"-{a.tag}" if a.tag else ""
    guide = [] if a.cfg_control is None else ["--cfg-control", str(a.cfg_control)]

    def evaluation(model: str, name: str) -> list:
        rep = out / f"{name}-eval{tag}"
        if (rep / "report.json").is_file():
            return []
        return [(["eval", "--model", model, "--seeds", a.eval_seeds, "--metrics", "geneval", "fid", "control",
                  "--control-kind", kind, "--cfg", str(cfg.get("sample_cfg", 2.0)), "--top-k",
                  str(cfg.get("sample_top_k", 40)), "--out", str(rep), "--force", *([] if name == "base" else guide)],
                 out / f"{rep.name}.log")]

    train, evals = [], evaluation(cfg["init"], "base")
    for s in a.seeds:
        for arm in a.arms:
            name = f"{arm}-s{s}"
            if not (out / name / "model" / "var.safetensors").is_file():
                train.append((["train", a.config, f"run.seed={s}", f"run.out_dir={out}", f"run.name={name}",
                               "progress=false", *a.overrides, *ARMS[arm]], out / f"{name}.log"))
            evals += evaluation(str(out / name / "model"), name)
    run_all(train, cores)
    run_all(evals, cores)
    if a.bench and not (out / "bench" / "report.json").is_file():
        models = "{" + ",".join(f"{m}: {out / f'{m}-s{a.seeds[0]}' / 'model'}" for m in a.arms if m in
                                ("reference", "joint", "controlnet")) + "}"
        run_all([(["bench", "control", f"model={cfg['init']}", f"models={models}", f"kind={kind}",
                   f"run.out_dir={out}", "run.name=bench"], out / "bench.log")], cores[:1])

    table = {"base": scores(out / f"base-eval{tag}")}
    for arm in a.arms:
        table[arm] = [scores(out / f"{arm}-s{s}-eval{tag}") for s in a.seeds]
    bench = json.loads((out / "bench" / "report.json").read_text()) if (out / "bench" / "report.json").is_file() \
        else None
    report = {"config": a.config, "overrides": a.overrides, "seeds": a.seeds, "eval_seeds": a.eval_seeds,
              "kind": kind, "cfg_control": a.cfg_control, "table": table, "bench": bench and bench["rows"]}
    (out / f"report{tag}.json").write_text(json.dumps(report, indent=1))
    how = "" if a.cfg_control is None else \
        f" The arms guide the condition at {a.cfg_control} (class: the config's CFG)."
    lines = [f"# ScaleWeaver control table: `{a.config}` {' '.join(a.overrides)}", "",
             f"Held-out world scenes: every class x seeds {a.eval_seeds}, each sampled under its own {kind} map "
             f"(the base without it); mean +- std over training seeds {a.seeds}. Edge F1 at 1 px tolerance.{how}", "",
             "| variant | edge F1 | mask IoU | GenEval-Shapes strict | FID-shapes |", "|---|---|---|---|---|"]

    def ms(rows, key, pct=False, digits=3):
        x = np.array([r[key] for r in rows]) * (100 if pct else 1)
        d = 1 if pct else digits
        unit = "%" if pct else ""
        return f"{x.mean():.{d}f}{unit} +- {x.std(ddof=1):.{d}f}" if len(x) > 1 else f"{x[0]:.{d}f}{unit}"

    b = table["base"]
    lines.append(f"| base (no control) | {b['edge_f1']:.3f} | {b['mask_iou']:.3f} | {b['strict']:.1%} | "
                 f"{b['fid']:.2f} |")
    for arm in a.arms:
        r = table[arm]
        lines.append(f"| {arm} | {ms(r, 'edge_f1')} | {ms(r, 'mask_iou')} | {ms(r, 'strict', True)} | "
                     f"{ms(r, 'fid', digits=2)} |")
    if bench:
        from vgen.bench.control import _markdown

        lines += ["", _markdown(bench)]
    (out / f"report{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    grid(out / f"grid{tag}.png", cfg, a.arms, out, a.seeds[0], kind, a.cfg_control)


def grid(path: Path, cfg: dict, arms: list[str], out: Path, seed: int, kind: str, cfg_control=None,
         n: int = 8) -> None:
    """Rows of held-out scenes: condition | base sample | each arm's sample (same class and seed)."""
    import torch
    from PIL import Image, ImageDraw

    from vgen.engine.scalewise import sample
    from vgen.models.load import load
    from vgen.scaleweaver.conditions import control_run, scene_conditions
    from vgen.world.datasets import CLASS_PROMPTS

    classes, seeds = [0, 3, 10, 25, 46, 49, 58, 66][:n], [2_000_000 + i for i in range(n)]
    conds, _ = scene_conditions(classes, seeds, kind, 64)
    settings = {"cfg": float(cfg.get("sample_cfg", 2.0)), "top_k": int(cfg.get("sample_top_k", 40))}
    cols = [conds]
    base = load(cfg["init"])
    cols.append(sample(base.var, base.vqvae, classes, seeds, **settings).images)
    for arm in arms:
        m = load(out / f"{arm}-s{seed}" / "model")
        run = control_run(m.var, m.vqvae, conds, settings["cfg"], cfg_control)
        cols.append(sample(m.var, m.vqvae, classes, seeds, **settings, control=run).images)
    g = torch.cat([torch.cat(list(c.clamp(0, 1)), 1) for c in cols], 2)  # (3, n*64, cols*64)
    img = Image.fromarray((g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize(
        (g.shape[2] * 2, g.shape[1] * 2), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 16), "white")
    canvas.paste(img, (0, 16))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate([f"{kind} (held out)", "base", *arms]):
        draw.text((i * 128 + 4, 2), label, fill="black")
    canvas.save(path)
    print(f"grid: {path} (classes {[CLASS_PROMPTS[c] for c in classes]})")


if __name__ == "__main__":
    main()
