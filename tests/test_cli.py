"""The `vgen` command: exit codes, one-line user errors, `vgen info`, and `vgen bench world` end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import string
import subprocess
import sys
import typing
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgen import __version__
from vgen.bench.world import WorldBenchConfig
from vgen.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORLD_YAML = ROOT / "configs" / "bench" / "world.yaml"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    """The message of a user error: exactly one line ``vgen: error: ...`` and no traceback."""
    assert err.endswith("\n") and len(err.splitlines()) == 1, repr(err)
    assert err.startswith("vgen: error: ") and len(err) > len("vgen: error: \n"), repr(err)
    assert "Traceback" not in err
    return err[len("vgen: error: "):-1]


def user_error(capsys, *argv: str) -> str:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    return one_line_error(err)


# ---------------------------------------------------------------- the command itself


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_exit_zero(capsys, flag):
    with pytest.raises(SystemExit) as info:
        main([flag])
    assert info.value.code == 0
    out = capsys.readouterr().out
    if flag == "--version":
        assert out == f"vgen {__version__}\n"
    else:
        assert out.startswith("usage: vgen") and all(c in out for c in ("train", "bench", "info"))


def test_usage_errors_are_one_line(capsys):
    assert "the following arguments are required: COMMAND" in user_error(capsys)
    assert "invalid choice: 'frobnicate'" in user_error(capsys, "frobnicate")
    assert user_error(capsys, "bench", "nope") == ("unknown benchmark 'nope'; available: world, rollout, explore, "
                                                   "fidelity, quant, var, sar, control")
    assert "unrecognized arguments: --nope" in user_error(capsys, "info", "--nope")


def test_a_launched_rank_ends_with_its_exit_code_and_flushed_streams(tmp_path):
    """Under a launcher (WORLD_SIZE > 1) the CLI ends its process at once, skipping the teardown
    where gloo ranks aborted; what it printed still arrives, and the exit code is the command's."""
    def launched(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vgen.cli", *argv], capture_output=True, text=True, timeout=300,
                              env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                                   "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})

    info = launched("info")  # stdout is block-buffered into a pipe: lost unless flushed
    assert info.returncode == 0 and f"torch {metadata.version('torch')}" in info.stdout, info
    bad = launched("train", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "missing.yaml" in one_line_error(bad.stderr)


def test_info_prints_the_torch_version(capsys):
    rc, out, err = run_cli(capsys, "info")
    assert rc == 0 and err == ""
    assert f"torch {metadata.version('torch')}" in out and "CUDA available:" in out


def test_info_json(capsys):
    rc, out, _ = run_cli(capsys, "info", "--json")
    env = json.loads(out)
    assert rc == 0 and {"libraries", "cuda_available"} <= set(env)
    assert env["libraries"]["torch"] == metadata.version("torch") and isinstance(env["cuda_available"], bool)


def test_export_is_wired_and_its_usage_errors_are_one_line(capsys, tmp_path):
    """The command itself is tested in test_export.py."""
    assert "the following arguments are required: RUN_OR_MODEL, OUT_DIR" in user_error(capsys, "export")
    assert "invalid choice: 'onnx'" in user_error(capsys, "export", "a", "b", "--format", "onnx")
    assert "is not a folder" in user_error(capsys, "export", tmp_path / "nope", tmp_path / "out")


# ---------------------------------------------------------------- vgen train


def test_train_planned_recipe_is_not_implemented_yet(capsys, tmp_path, monkeypatch):
    from vgen import recipes

    monkeypatch.setitem(recipes.PLANNED, "later", "a recipe still to come")
    (tmp_path / "t.yaml").write_text("recipe: later\n")
    message = user_error(capsys, "train", tmp_path / "t.yaml")
    assert message == "training recipe 'later' (a recipe still to come) is not implemented yet"


def test_train_unknown_recipe_lists_what_is_available(capsys, tmp_path):
    (tmp_path / "t.yaml").write_text("recipe: nope\n")
    message = user_error(capsys, "train", tmp_path / "t.yaml")
    assert message.endswith("unknown recipe 'nope'; available: sar, scaleweaver, solrl, solrl_var, var, variant")


def test_train_config_problems(capsys, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("lr: 1\n")
    assert user_error(capsys, "train", path).endswith("t.yaml: missing key 'recipe' naming the training recipe")
    path.write_text("recipe: [solrl]\n")
    assert user_error(capsys, "train", path).endswith("t.yaml: 'recipe' must be a recipe name, got ['solrl']")
    path.write_text("- 1\n")
    assert "top level must be a mapping" in user_error(capsys, "train", path)
    assert user_error(capsys, "train", tmp_path / "missing.yaml").startswith("config file not found")


# ---------------------------------------------------------------- vgen bench world


def test_bench_world_end_to_end_and_rerun_from_the_saved_config(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "bench", "world", WORLD_YAML, "n=60", "throughput_batch=60", "grid=6",
                           f"run.out_dir={tmp_path}", "run.name=a", "min_throughput=0")
    first = tmp_path / "a"
    assert rc == 0 and err == "", err
    assert f"run directory {first}" in out and "Result: all targets met." in out
    assert {p.name for p in first.iterdir()} == {"config.yaml", "report.json", "report.md", "grid.png"}
    report = json.loads((first / "report.json").read_text())
    assert report["passed"] is True and report["failures"] == [] and report["n"] == 60
    assert set(report["rates"]) == {"clean", "blur", "jpeg", "blur+jpeg"}
    assert (first / "grid.png").read_bytes().startswith(b"\x89PNG")
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["recipe"] == "bench.world" and saved["run"] == {"name": "a", "out_dir": str(tmp_path), "seed": 0}

    rc, out, err = run_cli(capsys, "bench", "world", first / "config.yaml")  # as saved, no overrides
    second = tmp_path / "a-2"
    assert rc == 0 and err == "" and f"run directory {second}" in out
    assert json.loads((second / "report.json").read_text())["rates"] == report["rates"]
    assert yaml.safe_load((second / "config.yaml").read_text())["run"]["name"] == "a-2"
    assert json.loads((first / "report.json").read_text()) == report  # the first run is untouched


def test_bench_world_overrides_without_a_file(capsys, tmp_path):
    assert user_error(capsys, "bench", "world", "n=oops", f"run.out_dir={tmp_path}") == \
        "'n' must be an integer, got 'oops'"
    assert not any(tmp_path.iterdir())


def test_bench_world_unwritable_run_directory_is_a_user_error(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    message = user_error(capsys, "bench", "world", "n=60", f"run.out_dir={tmp_path / 'file'}")
    assert message == f"cannot create a run directory in {str(tmp_path / 'file')!r}: Not a directory"


def test_console_script_reports_a_bad_override_in_one_line(tmp_path):
    script = shutil.which("vgen", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "vgen.cli"]
    proc = subprocess.run([*command, "bench", "world", str(WORLD_YAML), "n=oops", f"run.out_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == ["vgen: error: 'n' must be an integer, got 'oops'"]
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- malformed configs, property-based

# The benchmark's schema, spelled out here so that a schema change is noticed (test_schema_table_is_current).
INT_RANGES = {"run.seed": (0, None), "n": (6, 1_000_000), "resolution": (48, 1024), "jpeg_quality": (1, 100),
              "throughput_batch": (1, 100_000), "grid": (0, 256)}
FLOAT_RANGES = {"blur_sigma": (0.0, 5.0), "min_accept": (0.0, 1.0), "min_reject": (0.0, 1.0),
                "min_degraded": (0.0, 1.0), "min_throughput": (0.0, None)}
SPLITS = ("train", "val", "test")
VALID = {"run": {"seed": 1, "name": "x"}, "split": "val", "n": 60, "resolution": 64, "blur_sigma": 0.5,
         "jpeg_quality": 80, "grid": 0, "min_accept": 0.5, "min_throughput": 0}
VALID_OVERRIDES = ["n=60", "grid=0", "run.seed=2", "split=val", "blur_sigma=0.5", "run.name=x", "min_accept=1"]


def _dotted_keys(cls: type, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        out.add(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _dotted_keys(hints[f.name], prefix + f.name + ".")
    return out


KEYS = _dotted_keys(WorldBenchConfig)


def test_schema_table_is_current():
    assert KEYS == {*INT_RANGES, *FLOAT_RANGES, "split", "run", "run.name", "run.out_dir"}


words = st.text(string.ascii_letters, min_size=1, max_size=10)  # never an int; never a finite float
fractions = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
junk = st.one_of(st.booleans(), st.lists(st.integers(), max_size=3),
                 st.dictionaries(words, st.integers(), min_size=1, max_size=2))
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])


def _outside(lo, hi, floats: bool):
    """Numbers below ``lo`` or above ``hi`` (floats or ints)."""
    if floats:
        below = st.floats(max_value=lo, allow_nan=False).filter(lambda x: x < lo)  # -0.0 is not below 0.0
        above = st.floats(min_value=hi, allow_nan=False).filter(lambda x: x > hi) if hi is not None else st.nothing()
    else:
        below = st.integers(max_value=math.ceil(lo) - 1)
        above = st.integers(min_value=math.floor(hi) + 1) if hi is not None else st.nothing()
    return below | above


def bad_value(key: str):
    """Values that the field at ``key`` must refuse."""
    if key in INT_RANGES:
        return st.one_of(words, fractions, junk, st.none(), non_finite, _outside(*INT_RANGES[key], floats=False))
    if key in FLOAT_RANGES:
        lo, hi = FLOAT_RANGES[key]
        return st.one_of(words, junk, st.none(), non_finite, _outside(lo, hi, True), _outside(lo, hi, False))
    if key == "split":
        return st.one_of(st.text(max_size=8).filter(lambda s: s not in SPLITS), st.integers(), junk, st.none())
    if key == "run":  # a section: anything but a mapping
        return st.one_of(words, st.integers(), st.lists(st.integers(), max_size=2), st.none(), st.booleans())
    if key == "run.name":  # str | None
        return st.one_of(st.integers(), st.floats(allow_nan=False), junk)
    raise AssertionError(key)


@st.composite
def wrong_value_file(draw) -> str:
    # run.out_dir is left out: the safety-net override below sets it (and may not hide a bad section)
    key = draw(st.sampled_from(sorted(KEYS - {"run.out_dir"})))
    data = {k: v for k, v in VALID.items() if draw(st.booleans())}
    if key.startswith("run."):
        data["run"] = {**VALID["run"], key.split(".")[1]: draw(bad_value(key))}
    else:
        data[key] = draw(bad_value(key))
    return yaml.safe_dump(data, sort_keys=draw(st.booleans()), default_flow_style=draw(st.sampled_from([None, True])))


identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
unknown_keys = st.lists(identifiers, min_size=1, max_size=3).map(".".join).filter(lambda k: k not in KEYS)


@st.composite
def unknown_key_file(draw) -> str:
    data = {k: v for k, v in VALID.items() if draw(st.booleans())}
    key = draw(unknown_keys)
    if draw(st.booleans()):  # nested in the run section
        data["run"] = {**data.get("run", {}), key.replace(".", "_"): draw(st.integers())}
        if set(data["run"]) <= {"seed", "name", "out_dir"}:
            data["run"]["sed"] = 1
    else:
        data[key] = draw(st.integers() | words)
    return yaml.safe_dump(data, sort_keys=draw(st.booleans()))


@st.composite
def duplicate_key_file(draw) -> str:
    lines = [f"{k}: {json.dumps(v)}" for k, v in VALID.items()]
    if draw(st.booleans()):
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(draw(st.integers(0, len(lines))), lines[i])
    else:
        lines[0] = 'run:\n  seed: 1\n  name: "x"\n  seed: 2'
    return "\n".join(lines) + "\n"


FRAGMENTS = ["n: ", "run:", "\n", "  ", "\t", "[", "]", "{", "}", ": ", "- ", ",", "&a ", "*a", "*b", "&b [*b]",
             "!!python/object:os.system ", "!!python/object/apply:os.system ['true']", "!!python/name:os.getcwd ",
             "'", '"', "# c", "? ", "<<: ", "60", ".nan", "1e400", "---\n", "...\n", "%YAML 1.1\n", "!!binary ",
             "!!int ", "2020-13-45", "\x00", "é", "\u2028", "\x85", "split: tset", "run: 3", "n: 60\nn: 61\n"]
random_text = st.one_of(
    st.text(max_size=120).map(str.encode),
    st.binary(max_size=120),
    st.binary(max_size=60).map(lambda b: b"n: 60\n" + b + b"\xff\xfe"),  # never valid UTF-8
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10).map(lambda xs: "".join(xs).encode()),
)


def bad_override_value(key: str):
    """Override texts that the field at ``key`` must refuse (string fields take any text verbatim)."""
    common = ["", "[1", "{a: ", "!!python/object/apply:os.system ['true']", "&a [*a]", "[1, 2]", "{a: 1}", "true",
              "null", "nan", ".inf", "-.inf", "1e400", "1" + "0" * 5000, "2020-13-45", "'x", "a: b"]
    if key == "split":
        return st.text(max_size=8).filter(lambda s: s not in SPLITS)
    lo, hi = INT_RANGES.get(key) or FLOAT_RANGES[key]
    is_int = key in INT_RANGES
    return st.one_of(st.sampled_from(common), words, _outside(lo, hi, floats=not is_int).map(str),
                     fractions.map(repr) if is_int else st.nothing())


no_equals = st.text(string.printable.replace("=", ""), min_size=1, max_size=12).filter(lambda s: s[0] != "-")


@st.composite
def bad_override(draw) -> str:
    kind = draw(st.sampled_from(["no_equals", "empty_key", "unknown", "shape", "section", "value"]))
    if kind == "no_equals":
        return draw(no_equals)
    if kind == "empty_key":
        return draw(st.sampled_from(["", " ", "  "])) + "=" + draw(st.text(max_size=5))
    if kind == "unknown":
        return draw(unknown_keys) + "=" + draw(st.sampled_from(["1", "x", "[1]", ""]))
    if kind == "shape":
        return draw(st.sampled_from(["a..b=1", ".n=1", "n.=1", "run..seed=1", "n m=1", "1n=2", "run.seed.x=1",
                                     "n-1=3", "run.name.x=y", "n[0]=1"]))
    if kind == "section":
        return "run=" + draw(st.sampled_from(["3", "{seed: 1}", "", "null", "x"]))
    key = draw(st.sampled_from(sorted({*INT_RANGES, *FLOAT_RANGES, "split"})))
    return f"{key}={draw(bad_override_value(key))}"


@st.composite
def malformed_case(draw) -> tuple[bytes, list[str]]:
    """(file contents, overrides), with at least one element that must be refused."""
    kind = draw(st.sampled_from(["text", "wrong_value", "unknown_key", "duplicate", "override"]))
    if kind == "text":  # random text may happen to be a valid config: a bad override makes sure it is not
        return draw(random_text), [draw(bad_override())]
    if kind == "override":
        base = draw(st.sampled_from(["", "# only a comment\n", WORLD_YAML.read_text(), yaml.safe_dump(VALID)]))
        bad = draw(st.lists(bad_override(), min_size=1, max_size=2))
        # a later override of the same key would replace a bad value before it is checked
        bad_keys = {b.split("=", 1)[0].strip() for b in bad}
        good = draw(st.lists(st.sampled_from([g for g in VALID_OVERRIDES if g.split("=")[0] not in bad_keys]),
                             max_size=3))
        return base.encode(), draw(st.permutations(good + bad))
    text = draw({"wrong_value": wrong_value_file(), "unknown_key": unknown_key_file(),
                 "duplicate": duplicate_key_file()}[kind])
    return text.encode(), []


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=malformed_case())
def test_malformed_configs_fail_in_one_line_before_any_work(tmp_path_factory, case):
    data, overrides = case
    base = tmp_path_factory.mktemp("malformed", numbered=True)
    path = base / "config.yaml"
    path.write_bytes(data)
    out_dir = base / "runs"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["bench", "world", str(path), f"run.out_dir={out_dir}", *overrides])
    assert rc == 2, (rc, err.getvalue(), out.getvalue())
    one_line_error(err.getvalue())
    assert out.getvalue() == ""
    assert not out_dir.exists(), "a run directory was created"
