"""The `vgen` command: train | sample | eval | export | bench | info.

User errors (bad configs, paths, arguments) print one line ``vgen: error: ...`` and exit
with code 2; a traceback means a bug in vgen.
"""

from __future__ import annotations

import argparse
import sys

from vgen import __version__
from vgen.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _not_yet(what: str, arrives: str):
    def handler(args: argparse.Namespace) -> int:
        raise UserError(f"'vgen {what}' is not implemented yet; it arrives with {arrives}")

    return handler


def _job(table: dict, name: str, config: str | None, overrides: list[str], kind: str) -> int:
    from vgen import config as C
    from vgen import recipes
    from vgen.run import create_run_dir

    cls, run, recipe = recipes.resolve(table, name)
    cfg = C.load(cls, config, overrides, recipe=recipe)
    try:
        run_dir = create_run_dir(cfg.run, recipe)
    except (OSError, ValueError) as e:  # out_dir is a file, not writable, a name with a NUL byte, ...
        why = getattr(e, "strerror", None) or e
        raise UserError(f"cannot create a run directory in {cfg.run.out_dir!r}: {why}") from None
    C.save(cfg, run_dir / "config.yaml", recipe=recipe)
    print(f"vgen {kind} {name}: run directory {run_dir}", flush=True)
    return run(cfg, run_dir)


def cmd_sample(args: argparse.Namespace) -> int:
    from vgen.sample import sample

    if (args.steps is not None and args.steps < 1) or (args.chunk_size is not None and args.chunk_size < 1):
        raise UserError("--steps and --chunk-size must be >= 1")
    return sample(args.model, args.prompts, args.seeds, args.out, steps=args.steps, guidance=args.guidance,
                  shift=args.shift, height=args.height, width=args.width, chunk_size=args.chunk_size,
                  device=args.device, dtype=args.dtype)


def cmd_train(args: argparse.Namespace) -> int:
    from vgen import config as C
    from vgen import recipes

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
        raise UserError("--dry-run is not implemented yet for this recipe")
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
    p = _Parser(prog="vgen", description="Post-training for visual generative models (diffusion and scale-wise AR).")
    p.add_argument("--version", action="version", version=f"vgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="run a training recipe from a YAML config")
    t.add_argument("config", help="YAML config file with a top-level 'recipe' key")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. run.seed=1")
    t.add_argument("--dry-run", action="store_true", help="build everything on the meta device and report sizes")
    t.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="generate images from a local model folder")
    sm.add_argument("--model", required=True, help="local pipeline folder, e.g. assets/sd3-tiny-shapes")
    sm.add_argument("--prompts", nargs="+", required=True, help="prompts, or @FILE with one prompt per line")
    sm.add_argument("--seeds", nargs="+", default=["0"], help="seeds and ranges (0 3 10-15); every prompt x seed")
    sm.add_argument("--out", required=True, help="output folder")
    sm.add_argument("--steps", type=int, default=None, help="default: the model's vgen_base.json, else 20")
    sm.add_argument("--guidance", type=float, default=None,
                    help="CFG scale, 1 = off (default: the model's vgen_base.json, else 4.5)")
    sm.add_argument("--shift", type=float, default=None, help="timestep shift (default: the scheduler's)")
    sm.add_argument("--height", type=int, default=64)
    sm.add_argument("--width", type=int, default=64)
    sm.add_argument("--chunk-size", type=int, default=None, help="samples per batch (default: all)")
    sm.add_argument("--device", default="cpu")
    sm.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sm.set_defaults(func=cmd_sample)

    for name, help_text, arrives in (
        ("eval", "GenEval-Shapes, FID-shapes and reward evaluation", "the evaluation harness (issue 5)"),
        ("export", "export a run as a model-card checkpoint folder", "model-card export (issue 5)"),
    ):
        s = sub.add_parser(name, help=f"{help_text} (not implemented yet)")
        s.add_argument("args", nargs=argparse.REMAINDER)
        s.set_defaults(func=_not_yet(name, arrives))

    b = sub.add_parser("bench", help="run a benchmark (world: verifier accuracy and speed)")
    b.add_argument("name", help="benchmark name: world")
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
