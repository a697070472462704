"""The `vgen` command: train | sample | eval | export | bench | info.

User errors (bad configs, paths, arguments) print one line ``vgen: error: ...`` and exit
with code 2; a traceback means a bug in vgen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vgen import __version__
from vgen.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _run_dir(cfg, recipe: str, name: str, kind: str) -> str:
    """The run directory a job writes to: a named run with a checkpoint is continued when
    ``resume=auto`` and its config matches; otherwise a fresh directory with the config saved."""
    from vgen import config as C
    from vgen.run import create_run_dir
    from vgen.train.loop import check_resume

    if hasattr(cfg, "resume"):
        check_resume(cfg.resume)  # auto | never | a checkpoint path; anything else refused before any work
    existing = Path(cfg.run.out_dir) / cfg.run.name if cfg.run.name else None
    if getattr(cfg, "resume", "never") == "auto" and existing and (existing / "checkpoints" / "latest").is_file():
        from vgen.train.checkpoint import check_resumable

        check_resumable(existing, C.to_dict(cfg))  # refuses a checkpoint of another config
        print(f"vgen {kind} {name}: resuming {existing}", flush=True)
        return str(existing)
    try:
        run_dir = create_run_dir(cfg.run, recipe)
    except (OSError, ValueError) as e:  # out_dir is a file, not writable, a name with a NUL byte, ...
        why = getattr(e, "strerror", None) or e
        raise UserError(f"cannot create a run directory in {cfg.run.out_dir!r}: {why}") from None
    C.save(cfg, run_dir / "config.yaml", recipe=recipe)
    print(f"vgen {kind} {name}: run directory {run_dir}", flush=True)
    return str(run_dir)


def _job(table: dict, name: str, config: str | None, overrides: list[str], kind: str) -> int:
    from vgen import config as C
    from vgen import recipes
    from vgen.train.dist import on_main, shutdown

    cls, run, recipe = recipes.resolve(table, name)
    cfg = C.load(cls, config, overrides, recipe=recipe)
    try:
        run_dir = Path(on_main(lambda: _run_dir(cfg, recipe, name, kind)))  # one directory for all processes
        cfg.run.name = run_dir.name
        return run(cfg, run_dir)
    finally:
        shutdown()


# `vgen sample` flags of one model kind (default None: not given); the other kind refuses them.
_PIPELINE_FLAGS = ("prompts", "steps", "guidance", "shift", "height", "width", "chunk_size", "dtype")
_VAR_FLAGS = ("classes", "cfg", "top_k", "top_p", "depth", "switch_scale", "control", "control_seeds", "control_kind",
              "cfg_control", "adapter")


def cmd_sample(args: argparse.Namespace) -> int:
    from vgen.models.load import load
    from vgen.models.var.folder import is_var_folder
    from vgen.sample import check_device, sample, sample_var

    check_device(args.device)
    try:
        var = load(args.model, weights=False).kind == "var"
    except UserError:
        if is_var_folder(args.model):
            raise  # a damaged VAR folder: its own error
        var = False  # not a model at all: the flag checks below, then the pipeline path, say what is wrong
    own, other = (_VAR_FLAGS, _PIPELINE_FLAGS) if var else (_PIPELINE_FLAGS, _VAR_FLAGS)
    if wrong := [k for k in other if getattr(args, k) is not None]:
        flag = "--" + wrong[0].replace("_", "-")
        if var:
            raise UserError(f"{flag} does not apply to {args.model!r}, a VAR model folder "
                            "(it takes --classes, --cfg, --top-k, --top-p, --depth, --switch-scale, --control, "
                            "--control-seeds, --control-kind, --cfg-control, --adapter)")
        raise UserError(f"{flag} is for VAR model folders and {args.model!r} is not one (a pipeline takes --prompts)")
    items = args.classes if var else args.prompts
    if items is None:
        raise UserError("--classes is required for a VAR model folder" if var else "--prompts is required")
    if (args.steps is not None and args.steps < 1) or (args.chunk_size is not None and args.chunk_size < 1):
        raise UserError("--steps and --chunk-size must be >= 1")
    settings = {k: getattr(args, k) for k in own[1:] if getattr(args, k) is not None}  # unset: the model's default
    return (sample_var if var else sample)(args.model, items, args.seeds, args.out, device=args.device, **settings)


def cmd_export(args: argparse.Namespace) -> int:
    from vgen.export import export

    result = export(args.src, args.out, fmt=args.format, merge_lora=args.merge_lora, force=args.force,
                    eval_report=args.eval)
    print(f"exported {args.src} to {result['out']} (format {result['format']}"
          + (", LoRA merged" if result["merged"] else "") + ")")
    print(f"model card: {result['card']}")
    if result["before_after"] is not None:
        print(f"before / after training (same held-out prompts and seeds): {result['before_after']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vgen.eval.harness import EvalOptions, run_eval
    from vgen.sample import parse_seeds

    if (args.steps is not None and args.steps < 1) or args.fid_reference < 2:
        raise UserError("--steps must be >= 1 and --fid-reference >= 2")
    if args.top_k is not None and args.top_k < 0 or args.top_p is not None and not 0 <= args.top_p <= 1:
        raise UserError("--top-k must be >= 0 and --top-p in [0, 1]")
    if not 0 <= args.control_tol <= 16:
        raise UserError(f"--control-tol must be 0..16 pixels, got {args.control_tol}")
    pns = None
    if args.patch_nums is not None:
        try:
            pns = [int(x) for x in args.patch_nums.split(",")]
        except ValueError:
            raise UserError(f"--patch-nums takes sizes joined by commas (1,2,4,8), got {args.patch_nums!r}") from None
        if any(p < 1 for p in pns) or pns != sorted(set(pns)):
            raise UserError(f"--patch-nums must be increasing positive sizes, got {args.patch_nums!r}")
    opts = EvalOptions(seeds=parse_seeds(args.seeds), metrics=tuple(args.metrics), rewards=list(args.rewards),
                       n=args.n, steps=args.steps, guidance=args.guidance, resolution=args.resolution,
                       classes=args.classes, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, patch_nums=pns,
                       control_kind=args.control_kind, control_tol=args.control_tol, cfg_control=args.cfg_control,
                       control_data=args.control_data,
                       switch_scale=args.switch_scale, depth=args.depth,
                       inception_weights=args.inception_weights, ref_stats=args.ref_stats,
                       fid_reference=args.fid_reference, checkpoint=args.checkpoint, adapter=args.adapter)
    out = run_eval(args.model, args.out, opts, args.force)
    print(f"evaluation written to {out} (report.json, report.md, samples.png)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vgen import config as C
    from vgen import recipes

    if args.processes < 1:
        raise UserError(f"--processes must be >= 1, got {args.processes}")
    data = C.read_yaml(args.config)
    if not isinstance(data, dict):
        raise C.ConfigError(f"{args.config}: the top level must be a mapping of keys")
    name = data.get("recipe")
    if name is None:
        raise C.ConfigError(f"{args.config}: missing key 'recipe' naming the training recipe")
    if not isinstance(name, str):
        raise C.ConfigError(f"{args.config}: 'recipe' must be a recipe name, got {C._show(name)}")
    if name not in recipes.TRAIN:
        if name in recipes.PLANNED:
            raise UserError(f"training recipe {name!r} ({recipes.PLANNED[name]}) is not implemented yet")
        known = sorted(recipes.TRAIN) or ["none yet"]
        raise C.ConfigError(f"{args.config}: unknown recipe {name!r}; available: {', '.join(known)}")
    if args.dry_run:
        import importlib

        module = importlib.import_module(recipes.TRAIN[name][0])
        if not hasattr(module, "dry_run"):
            raise UserError(f"--dry-run is not implemented for recipe {name!r}")
        cls, _, recipe = recipes.resolve(recipes.TRAIN, name)
        cfg = C.load(cls, args.config, args.overrides, recipe=recipe)
        print(module.dry_run(cfg, args.processes, args.fsdp))
        return 0
    return _job(recipes.TRAIN, name, args.config, args.overrides, "train")


def cmd_bench(args: argparse.Namespace) -> int:
    from vgen import recipes

    if args.name not in recipes.BENCH:
        raise UserError(f"unknown benchmark {args.name!r}; available: {', '.join(recipes.BENCH)}")
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # `vgen bench world key=value` without a file
        config, overrides = None, [config, *overrides]
    return _job(recipes.BENCH, args.name, config, overrides, "bench")


def cmd_info(args: argparse.Namespace) -> int:
    from vgen.info import environment, format_environment

    if args.quant_plan:
        from vgen.info import quant_plan

        print(quant_plan(args.quant_plan))
        return 0
    env = environment()
    if args.json:
        import json

        print(json.dumps(env, indent=2))
    else:
        print(format_environment(env))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vgen import recipes  # light: job modules load only when their job runs
    p = _Parser(prog="vgen", description="Post-training for visual generative models (diffusion and scale-wise AR).")
    p.add_argument("--version", action="version", version=f"vgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="run a training recipe from a YAML config")
    t.add_argument("config", help="YAML config file with a top-level 'recipe' key")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. run.seed=1")
    t.add_argument("--dry-run", action="store_true", help="build everything on the meta device and report sizes")
    t.add_argument("--processes", type=int, default=1, help="with --dry-run: GPUs the job will use")
    t.add_argument("--fsdp", action="store_true", help="with --dry-run: shard the denoiser and its optimizer (FSDP)")
    t.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="generate images from a local model folder")
    sm.add_argument("--model", required=True,
                    help="local pipeline folder (assets/sd3-tiny-shapes) or VAR model folder (assets/var-tiny-shapes)")
    sm.add_argument("--prompts", nargs="+", help="pipeline: prompts, or @FILE with one prompt per line")
    sm.add_argument("--classes", nargs="+", help="VAR: class ids and ranges (0 5 10-15), or all")
    sm.add_argument("--seeds", nargs="+", default=["0"],
                    help="seeds and ranges (0 3 10-15); every prompt (class) x seed")
    sm.add_argument("--out", required=True, help="output folder")
    sm.add_argument("--steps", type=int, default=None, help="pipeline: default the model's vgen_base.json, else 20")
    sm.add_argument("--guidance", type=float, default=None,
                    help="pipeline: CFG scale, 1 = off (default: the model's vgen_base.json, else 4.5)")
    sm.add_argument("--shift", type=float, default=None, help="pipeline: timestep shift (default: the scheduler's)")
    sm.add_argument("--height", type=int, default=None, help="pipeline: default 64")
    sm.add_argument("--width", type=int, default=None, help="pipeline: default 64")
    sm.add_argument("--chunk-size", type=int, default=None, help="pipeline: samples per batch (default: all)")
    sm.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="pipeline: default float32")
    sm.add_argument("--cfg", type=float, default=None, help="VAR: CFG scale, 0 = off (default: the folder's)")
    sm.add_argument("--top-k", type=int, default=None, help="VAR: top-k, 0 = off (default: the folder's)")
    sm.add_argument("--top-p", type=float, default=None, help="VAR: top-p, 0 = off (default: the folder's)")
    sm.add_argument("--depth", type=int, default=None,
                    help="VAR: VARiant run-time depth: scales from --switch-scale on run the equidistant subnet of "
                    "this many blocks (2..D; default: the folder's, else the full network)")
    sm.add_argument("--switch-scale", type=int, default=None,
                    help="VAR: first scale the subnet runs (default: the folder's, else the last three scales)")
    sm.add_argument("--control", nargs="+", default=None, metavar="FILE",
                    help="VAR with a control adapter: condition images (dark on light, the model's size)")
    sm.add_argument("--control-seeds", nargs="+", default=None, metavar="SEED",
                    help="VAR with a control adapter: condition = each class's world scene from these seeds")
    sm.add_argument("--control-kind", default=None, choices=["edges", "mask"],
                    help="with --control-seeds: which map of the scene (default: the model's)")
    sm.add_argument("--cfg-control", type=float, default=None,
                    help="VAR with a control adapter: a guidance scale of the condition's own (multi-modal CFG; "
                    "default: the folder's, else --cfg: class and condition guided together)")
    sm.add_argument("--adapter", default=None, metavar="DIR",
                    help="VAR: put this control adapter (vgen export --format adapter) on --model, its base")
    sm.add_argument("--device", default="cpu")
    sm.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="GenEval-Shapes, FID-shapes / KID and rewards of a model or a run")
    ev.add_argument("--model", required=True, help="pipeline folder, VAR model folder, vgen run directory (newest "
                    "checkpoint), or official VAR files 'VAE.pth,VAR.pth'")
    ev.add_argument("--checkpoint", default=None, help="run: evaluate this checkpoint (step-000500 or 500)")
    ev.add_argument("--adapter", default=None, metavar="DIR",
                    help="VAR: put this control adapter (vgen export --format adapter) on --model, its base")
    ev.add_argument("--metrics", nargs="+", default=["geneval", "fid"],
                    help="geneval, fid (FID-shapes + KID) and, for VAR models, control (edge F1 / mask IoU against "
                         "each class x seed world scene, sampled under its condition when the model has a control "
                         "adapter)")
    ev.add_argument("--control-kind", default=None, choices=["edges", "mask"],
                    help="VAR, metric control: the scenes' condition map (default: the model's)")
    ev.add_argument("--control-tol", type=int, default=1, help="VAR, metric control: edge F1 tolerance in pixels")
    ev.add_argument("--control-data", default=None, metavar="DIR",
                    help="VAR, metric control alone: condition files in CLASS/IMAGE folders (the class folder names "
                         "are the model's class names) instead of the world's scenes; each is sampled for every seed "
                         "under its class and scored against its own ink")
    ev.add_argument("--cfg-control", type=float, default=None,
                    help="VAR with a control adapter, metric control: the condition's own guidance scale "
                    "(default: the model's, else --cfg)")
    ev.add_argument("--rewards", nargs="*", default=[], metavar="NAME[=PATH]",
                    help="registered rewards to average, e.g. jpeg_compressibility pickscore=/models/pickscore")
    ev.add_argument("--n", type=int, default=300, help="pipeline: test-split prompts (categories balanced)")
    ev.add_argument("--classes", nargs="+", default=None, help="VAR: class ids and ranges, or all (default all)")
    ev.add_argument("--cfg", type=float, default=None, help="VAR: CFG scale (default: the model's)")
    ev.add_argument("--top-k", type=int, default=None, help="VAR: top-k, 0 = off (default: the model's)")
    ev.add_argument("--top-p", type=float, default=None, help="VAR: top-p, 0 = off (default: the model's)")
    ev.add_argument("--patch-nums", default=None, metavar="1,2,...",
                    help="VAR: sample at this scale list (FlexVAR models; default: the model's)")
    ev.add_argument("--depth", "--subnet-depth", dest="depth", type=int, default=None,
                    help="VAR: VARiant run-time depth: scales from --switch-scale on run the equidistant subnet of "
                    "this many blocks (2..D; default: the model's, else the full network)")
    ev.add_argument("--switch-scale", type=int, default=None,
                    help="VAR: first scale the subnet runs (default: the model's, else the last three scales)")
    ev.add_argument("--ref-stats", default=None, metavar="FILE.npz",
                    help="VAR: FID (and IS) against ADM-style reference statistics (Inception mu / sigma); "
                    "needs --inception-weights")
    ev.add_argument("--seeds", nargs="+", default=["0"], help="seeds and ranges; every prompt x seed")
    ev.add_argument("--out", default=None, help="report folder (default: RUN/eval/step-N, or runs/eval-...)")
    ev.add_argument("--steps", type=int, default=None, help="pipeline: default the base's vgen_base.json, else 20")
    ev.add_argument("--guidance", type=float, default=None, help="pipeline: CFG scale (default: the base's, else 3.0)")
    ev.add_argument("--resolution", type=int, default=64)
    ev.add_argument("--inception-weights", default=None, metavar="FILE",
                    help="local Inception-v3 FID weights: adds Inception FID / KID (never downloaded)")
    ev.add_argument("--fid-reference", type=int, default=2000, help="real test-split images behind FID (cached)")
    ev.add_argument("--force", action="store_true", help="write into a non-empty --out")
    ev.set_defaults(func=cmd_eval)

    e = sub.add_parser("export", help="export a run or a model folder as a folder to hand on: weights + model card")
    e.add_argument("src", metavar="RUN_OR_MODEL", help="a vgen run directory, a diffusers model folder or a VAR "
                   "model folder")
    e.add_argument("out", metavar="OUT_DIR", help="the folder to write (built aside, renamed into place when complete)")
    e.add_argument("--format", default="diffusers", choices=["diffusers", "peft", "vgen", "var", "adapter"],
                   help="diffusers: a complete pipeline folder (default); peft: the LoRA adapter alone; "
                   "vgen: the checkpoint as a minimal run directory; var: a VAR model folder (what a VAR source "
                   "exports to by default); adapter: a ScaleWeaver control adapter alone (a scaleweaver model)")
    e.add_argument("--eval", default=None, metavar="REPORT",
                   help="the evaluation (report.json or its folder, from vgen eval) whose figures the card states "
                   "(default: a run's newest)")
    e.add_argument("--merge-lora", action="store_true", help="fuse a LoRA into the transformer weights (diffusers)")
    e.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="run a benchmark")
    b.add_argument("name", help="benchmark name: " + ", ".join(recipes.BENCH))
    b.add_argument("config", nargs="?", help="optional YAML config")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. n=500")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="report the environment: versions, devices")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--quant-plan", metavar="MODEL_DIR", help="print which linears of the model's transformer the "
                   "low-precision backends quantize")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    rc = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one rank of a launch: end it without the teardown
        from vgen.train.dist import end_rank

        end_rank(rc)
    return rc


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"vgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
