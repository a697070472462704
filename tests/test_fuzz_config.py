"""Bad configs of the training recipes are one-line user errors before any work.

Every case runs `vgen train` in-process on a tiny recipe config plus bad overrides (or a bad
YAML file) and must end with exit code 2, exactly one line ``vgen: error: ...`` on stderr (no
traceback) and nothing written: no run directory, nothing in the current directory. Sol-RL
cases run with ``--dry-run`` (which loads the config first); the var recipe has no dry run, so
its cases run the job itself, whose config is loaded before the run directory is made.

Besides the hand-written cases (AdamW betas, seeds, explore backends, run names, long lines,
...), cases are generated from the config classes' field metadata: a value past every bound
of every ranged number (and list item), NaN / inf for every float, a wrong type for every
int / float / bool / list / mapping / choice field, and unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from vgen.cli import main
from vgen.solrl.recipe import SolRLConfig
from vgen.vartrain.recipe import VARTrainConfig

ROOT = Path(__file__).resolve().parents[1]
VAR = str(ROOT / "configs" / "var" / "tiny.yaml")
SOL = str(ROOT / "configs" / "solrl" / "tiny.yaml")
# absolute paths: the cases run in an empty current directory, to catch a run written there
BASE = {"var": [f"tokenizer={ROOT / 'assets' / 'var-tiny-shapes'}", "iterations=0", "progress=false"],
        "solrl": [f"model={ROOT / 'assets' / 'sd3-tiny-shapes'}"]}
LONG = "x" * 10_000_000  # a 10 MB line
SEED_VALUES = [2**63, 2**64, 99999999999999999999999, 2**32, -1]


def _walk(cls: type, prefix: str = ""):
    """(dotted key, type, metadata) of every leaf field of a config class."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, tp, f.metadata


def _plain(tp):
    """``X`` of ``X | None``; ``X`` itself otherwise."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _past(bound: str, b: float, integer: bool):
    """A value just past bound ``bound`` (ge / gt / le / lt) of value ``b``."""
    step = 1 if integer else max(abs(b) * 0.1, 0.01)
    value = {"ge": b - step, "gt": b, "le": b + step, "lt": b}[bound]
    return int(math.floor(value) if bound in ("ge", "gt") else math.ceil(value)) if integer else value


def case(recipe: str, overrides: list[str], id: str, flags: tuple[str, ...] = (), expect: str = ""):
    """A test case: ``expect`` must appear in the error line (by default the first override's key)."""
    if not expect and overrides and "=" in overrides[0]:
        expect = overrides[0].split("=", 1)[0][:60]
    return pytest.param(recipe, overrides, list(flags), expect, id=id)


def _generated(recipe: str, cls: type) -> list:
    cases = []
    for key, tp, meta in _walk(cls):
        tp = _plain(tp)
        origin = get_origin(tp)
        item = get_args(tp)[0] if origin in (list, tuple) else tp
        for bound in ("ge", "gt", "le", "lt"):
            if meta.get(bound) is None or item not in (int, float):
                continue
            v = _past(bound, meta[bound], item is int)
            text = f"[{v}]" if origin in (list, tuple) else repr(v)
            cases.append(case(recipe, [f"{key}={text}"], id=f"{recipe}-{key}-{bound}"))
        if tp is float:
            for v in (".nan", ".inf", "-.inf"):
                cases.append(case(recipe, [f"{key}={v}"], id=f"{recipe}-{key}-{v}"))
            wrong = ["abc", "[1.0]", "true"]
        elif tp is int:
            wrong = ["abc", "1.5", "true", "[1]"]
        elif tp is bool:
            wrong = ["maybe", "2"]
        elif origin in (list, tuple):
            wrong = ["5", "abc", "{a: 1}", "[[1]]"] + ([".nan"] if item is float else [])
            if item is float:
                cases.append(case(recipe, [f"{key}=[.nan]"], id=f"{recipe}-{key}-item-nan"))
                cases.append(case(recipe, [f"{key}=[1.0, .inf]"], id=f"{recipe}-{key}-item-inf"))
        elif origin is dict:
            wrong = ["5", "[1]", "{a: [1]}"]
            if get_args(tp)[1] is float:
                cases.append(case(recipe, [f"{key}={{shapes: .nan}}"], id=f"{recipe}-{key}-value-nan"))
        elif origin is Literal:
            wrong = ["bogus", ""]
        else:  # str: any override text is a string
            wrong = []
        cases += [case(recipe, [f"{key}={w}"], id=f"{recipe}-{key}-type-{w}") for w in wrong]
    for unknown in ("bogus=1", "run.bogus=1", "lrr=0.1", "run=3", "run.seed.x=1", "1x=2", "novalue"):
        cases.append(case(recipe, [unknown], id=f"{recipe}-unknown-{unknown}"))
    return cases


HAND = [
    # AdamW betas: exactly two, each in [0, 1)
    *[case("var", [f"betas={b}"], id=f"var-betas-{b}") for b in
      ("[]", "[0.9]", "[2.0, 0.9]", "[-0.5, 0.9]", "[.nan, 0.95]", "[0.9, .inf]", "[0.9, 0.95, 0.99]", "[0.9, 1.0]",
       "0.9", "[a, b]")],
    # seeds: 0 <= seed < 2**32 everywhere
    *[case(r, [f"run.seed={s}"], id=f"{r}-seed-{s}") for r in ("var", "solrl") for s in SEED_VALUES],
    *[case("var", [f"data_seed={s}"], id=f"var-data_seed-{s}") for s in SEED_VALUES],
    # explore backends
    *[case("solrl", [f"explore_backend={b}"], id=f"solrl-backend-{b!r}") for b in ("", "bogus", "NVFP4", " fp8")],
    # --processes
    *[case(r, [], id=f"{r}-processes{''.join(extra)}", flags=extra, expect="--processes must be >= 1")
      for r in ("var", "solrl")
      for extra in (["--processes", "0"], ["--processes", "-1"], ["--processes", "0", "--fsdp"],
                    ["--processes", "-1", "--fsdp"])],
    # zero-width FFN, heads not dividing width
    case("var", ["mlp_ratio=0.001"], id="var-mlp_ratio-0.001"),
    case("var", ["width=8", "mlp_ratio=0.01"], id="var-mlp_ratio-width8", expect="zero-width FFN"),
    case("var", ["heads=3"], id="var-heads-3", expect="heads (3) must divide width (64)"),
    # scale weights
    *[case("var", [f"scale_weights={w}"], id=f"var-scale_weights-{w}") for w in
      ("[.nan, 1, 1]", "[1, .inf, 1]", "[]", "[0, 0, 0]", "[-1, 1, 1]")],
    case("var", ["sample_classes=[0, -1]"], id="var-sample_classes-negative"),
    case("solrl", ["reward={shapes: .inf}"], id="solrl-reward-inf"),
    # run directory names and parents
    *[case(r, [f"run.out_dir={d}"], id=f"{r}-out_dir-{d!r}") for r in ("var", "solrl") for d in ("", " ")],
    *[case(r, [f"run.name={n}"], id=f"{r}-name-{n!r}") for r in ("var", "solrl")
      for n in ("../x", "..", ".", "", " ", "a/b", "/abs/x", "a\\b", "x\0y")],
    # long strings and lines
    case("var", ["data=" + LONG], id="var-data-10MB"),
    case("var", ["init=" + "x" * 300], id="var-init-300-char-name"),
    case("solrl", ["prompts=" + LONG], id="solrl-prompts-10MB"),
    case("solrl", ["resume=" + "x" * 5000], id="solrl-resume-5000"),
    case("solrl", ["reward_paths={shapes: " + "y" * 300 + "}"], id="solrl-reward_paths-300"),
    case("var", [LONG + "=1"], id="var-10MB-key", expect="unknown key"),
]

# YAML files appended to a recipe's tiny config: (recipe, text, id, what the error says)
FILES = [
    ("var", f"data: {LONG}\n", "var-file-10MB-value", "larger than 1 MiB"),
    ("var", f"# {LONG}\n", "var-file-10MB-comment", "larger than 1 MiB"),
    ("solrl", f"prompts: {LONG}\n", "solrl-file-10MB-value", "larger than 1 MiB"),
    ("solrl", f"? {LONG}\n: 1\n", "solrl-file-10MB-key", "larger than 1 MiB"),
    ("var", f"init: {'x' * 500_000}\n", "var-file-500KB-line", "'init' must have at most 4096 characters"),
    ("solrl", f"explore_backend: !{'t' * 500_000} x\n", "solrl-file-500KB-tag", "could not determine a constructor"),
    ("solrl", f"? {'k' * 500_000}\n: 1\n", "solrl-file-500KB-key", "unknown key"),
    ("var", "betas: [0.9]\n", "var-file-betas", "'betas' must have exactly 2 items"),
    ("var", "data: [1, 2]\n", "var-file-str-list", "'data' must be a string"),
    ("var", "data: 5\n", "var-file-str-int", "'data' must be a string"),
    ("solrl", "resume: {a: 1}\n", "solrl-file-str-map", "'resume' must be a string"),
    ("solrl", "run: {name: ../x}\n", "solrl-file-name", "'run.name' = '../x'"),
    ("solrl", "run: {seed: 18446744073709551616}\n", "solrl-file-seed", "a seed must be >= 0 and < 4294967296"),
    ("var", "data_seed: 4294967296\n", "var-file-data-seed", "a seed must be >= 0 and < 4294967296"),
    ("var", "grad_clip: .nan\n", "var-file-nan", "'grad_clip' must be a finite number"),
    ("solrl", "reward: {shapes: .nan}\n", "solrl-file-reward-nan", "'reward.shapes' must be a finite number"),
    ("var", "scale_weights: [.nan, 1, 1]\n", "var-file-scale-weights-nan", "'scale_weights[0]' must be a finite"),
    ("solrl", "explore_backend: ''\n", "solrl-file-backend-empty", "'explore_backend' = ''"),
]

CASES = HAND + _generated("var", VARTrainConfig) + _generated("solrl", SolRLConfig)


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _check(tmp_path: Path, monkeypatch, capsys, argv: list[str]) -> str:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a run written into the current directory would land here
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("vgen: error: "), err[-2000:]
    assert "Traceback" not in err and len(err) < 4000, err[:4000]
    assert _tree(tmp_path) == before, sorted(map(str, _tree(tmp_path) - before))
    return lines[0]


def _argv(recipe: str, config: str, tmp_path: Path, overrides: list[str], flags: list[str]) -> list[str]:
    # run.out_dir first: a case may override it
    args = ["train", config, f"run.out_dir={tmp_path / 'runs'}", *BASE[recipe], *overrides, *flags]
    return args + (["--dry-run"] if recipe == "solrl" and "--dry-run" not in flags else [])


@pytest.mark.parametrize("recipe, overrides, flags, expect", CASES)
def test_bad_override_is_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys, recipe, overrides, flags,
                                                           expect):
    line = _check(tmp_path, monkeypatch, capsys, _argv(recipe, VAR if recipe == "var" else SOL, tmp_path, overrides,
                                                        flags))
    assert expect in line, (expect, line)


@pytest.mark.parametrize("recipe, text, expect", [pytest.param(r, t, e, id=i) for r, t, i, e in FILES])
def test_bad_yaml_file_is_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys, recipe, text, expect):
    source = Path(VAR if recipe == "var" else SOL).read_text()
    path = tmp_path / "config.yaml"
    path.write_text(source + text)
    line = _check(tmp_path, monkeypatch, capsys, _argv(recipe, str(path), tmp_path, [], []))
    assert expect in line and len(line) < 1000, (expect, line[:2000])


def test_there_are_enough_cases():
    assert len(CASES) + len(FILES) >= 100


def _bench_cases() -> list:
    """The same generated cases for every benchmark's config (`vgen bench NAME key=value`)."""
    import importlib

    from vgen import recipes

    cases = []
    for name, (module, cls_name) in recipes.BENCH.items():
        cls = getattr(importlib.import_module(module), cls_name)
        cases += [pytest.param(*p.values, id="bench-" + p.id) for p in _generated(name, cls)]
    return cases


BENCH_CASES = _bench_cases()


@pytest.mark.parametrize("bench, overrides, flags, expect", BENCH_CASES)
def test_bad_bench_override_is_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys, bench, overrides,
                                                                 flags, expect):
    line = _check(tmp_path, monkeypatch, capsys, ["bench", bench, f"run.out_dir={tmp_path / 'runs'}", *overrides])
    assert expect in line, (expect, line)


def test_there_are_enough_bench_cases():
    assert len(BENCH_CASES) >= 100
