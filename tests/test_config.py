"""Typed configs: YAML files, dotted overrides, strict checking and one-line error messages."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vgen import config as C
from vgen.bench.world import RECIPE, WorldBenchConfig
from vgen.config import ConfigError, param
from vgen.run import RunConfig, create_run_dir


@dataclass
class Section:
    seed: int = param(0, ge=0, help="a seed")
    name: str | None = param(None, help="an optional name")


@dataclass
class Cfg:
    run: Section = field(default_factory=Section)
    size: int = param(64, ge=48, le=1024)
    lr: float = param(1e-3, gt=0.0)
    flag: bool = param(False)
    title: str = param("plain")
    split: Literal["train", "val", "test"] = param("test")
    steps: list[int] = param(default_factory=lambda: [1, 2])
    scales: tuple[float, ...] = param(default_factory=lambda: (1.0,))
    weights: dict[str, float] = param(default_factory=dict)


def write(tmp_path: Path, text: str | bytes, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load(tmp_path: Path, text: str | bytes | None, *overrides: str, cls: type = Cfg, recipe: str | None = None):
    path = None if text is None else write(tmp_path, text)
    return C.load(cls, path, list(overrides), recipe=recipe)


def error(tmp_path: Path, text: str | bytes | None, *overrides: str, cls: type = Cfg, recipe: str | None = None) -> str:
    """The message of the ConfigError that loading raises; every message must be one line."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, *overrides, cls=cls, recipe=recipe)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# ---------------------------------------------------------------- values


def test_defaults_without_a_file():
    assert C.load(Cfg) == Cfg()
    world = C.load(WorldBenchConfig)
    assert world == WorldBenchConfig()
    assert (world.n, world.split, world.run.seed, world.run.name) == (2000, "test", 0, None)


def test_values_from_a_yaml_file(tmp_path):
    cfg = load(tmp_path, "run: {seed: 7, name: exp}\nsize: 128\nlr: 0.5\nflag: true\ntitle: hello\nsplit: val\n"
                         "steps: [3, 4]\nscales: [0.5, 1]\nweights: {a: 1, b: 0.25}\n")
    assert cfg == Cfg(run=Section(seed=7, name="exp"), size=128, lr=0.5, flag=True, title="hello", split="val",
                      steps=[3, 4], scales=(0.5, 1.0), weights={"a": 1.0, "b": 0.25})
    assert isinstance(cfg.scales, tuple) and isinstance(cfg.lr, float) and isinstance(cfg.weights["a"], float)


def test_empty_file_and_comment_only_file_give_defaults(tmp_path):
    assert load(tmp_path, "") == Cfg()
    assert load(tmp_path, "# nothing here\n") == Cfg()


def test_overrides_win_over_the_file_and_reach_nested_keys(tmp_path):
    cfg = load(tmp_path, "size: 128\nrun: {seed: 7, name: exp}\n", "size=256", "run.seed=3")
    assert (cfg.size, cfg.run.seed, cfg.run.name) == (256, 3, "exp")
    world = load(tmp_path, "n: 100\nrun: {seed: 1}\n", "n=60", "run.seed=3", cls=WorldBenchConfig)
    assert (world.n, world.run.seed) == (60, 3)


def test_a_later_override_wins_over_an_earlier_one(tmp_path):
    assert load(tmp_path, None, "size=100", "size=200").size == 200


def test_string_overrides_are_kept_verbatim(tmp_path):
    cfg = load(tmp_path, None, "run.name=123", "title=true")
    assert cfg.run.name == "123" and cfg.title == "true"
    assert load(tmp_path, None, "title=a=b: [c]").title == "a=b: [c]"  # split at the first '=' only
    assert load(tmp_path, None, "run.name=007", cls=WorldBenchConfig).run.name == "007"


def test_optional_field_set_to_null_by_an_override(tmp_path):
    for text in ("null", "None", "~"):
        assert load(tmp_path, "run: {name: exp}\n", f"run.name={text}").run.name is None


@pytest.mark.parametrize("text, value", [("true", True), ("yes", True), ("false", False), ("no", False)])
def test_bool_overrides(tmp_path, text, value):
    assert load(tmp_path, f"flag: {not value}\n", f"flag={text}").flag is value


def test_bool_override_rejects_other_words(tmp_path):
    assert error(tmp_path, None, "flag=maybe") == "'flag' must be true or false, got 'maybe'"


def test_exponent_floats_in_yaml_and_overrides(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; float fields accept it anyway.
    assert load(tmp_path, "lr: 1e-4\n").lr == pytest.approx(1e-4)
    assert load(tmp_path, None, "lr=1e-4").lr == pytest.approx(1e-4)
    assert load(tmp_path, None, "scales=[1e-4, 2]").scales == (1e-4, 2.0)
    assert load(tmp_path, None, "blur_sigma=5e-1", cls=WorldBenchConfig).blur_sigma == 0.5


def test_list_tuple_and_mapping_overrides(tmp_path):
    cfg = load(tmp_path, "steps: [9]\n", "steps=[1, 2]", "scales=[0.5]", "weights={a: 2}")
    assert (cfg.steps, cfg.scales, cfg.weights) == ([1, 2], (0.5,), {"a": 2.0})


def test_integral_float_is_accepted_for_an_int_field(tmp_path):
    assert load(tmp_path, "size: 64.0\n").size == 64
    assert type(load(tmp_path, "size: 64.0\n").size) is int
    assert error(tmp_path, "size: 64.5\n") == "'size' must be an integer, got 64.5"


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_suggests_and_lists(tmp_path):
    message = error(tmp_path, "sise: 64\n")
    assert message.startswith("unknown key 'sise' (did you mean 'size'?)")
    assert message.endswith("valid keys at the top level: run, size, lr, flag, title, split, steps, scales, weights")
    assert error(tmp_path, None, "sise=64") == message


def test_unknown_nested_key_names_the_dotted_key(tmp_path):
    expected = "unknown key 'run.sed' (did you mean 'run.seed'?); valid keys in 'run': seed, name"
    assert error(tmp_path, "run: {sed: 1}\n") == expected
    assert error(tmp_path, None, "run.sed=1") == expected


def test_unknown_key_in_the_world_benchmark_config(tmp_path):
    message = error(tmp_path, None, "run.sed=3", cls=WorldBenchConfig)
    assert "unknown key 'run.sed'" in message and "did you mean 'run.seed'" in message
    assert "valid keys in 'run': name, out_dir, seed" in message
    message = error(tmp_path, "throughput_bach: 10\n", cls=WorldBenchConfig)
    assert "did you mean 'throughput_batch'" in message and "min_throughput" in message


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path):
    assert "did you mean" not in error(tmp_path, "zzzzzz: 1\n")


def test_override_key_shapes(tmp_path):
    assert "must look like key=value" in error(tmp_path, None, "size")
    assert "is not a dotted key" in error(tmp_path, None, "=3")
    assert "'a..b' is not a dotted key" in error(tmp_path, None, "a..b=1")
    assert error(tmp_path, None, "run.seed.x=1") == "'run.seed' is not a section; cannot set 'run.seed.x'"
    assert error(tmp_path, None, "run=3") == "'run' is a section; set its keys one by one, e.g. run.seed=..."


# ---------------------------------------------------------------- types and ranges


def test_wrong_types_name_the_key_and_the_expected_kind(tmp_path):
    assert error(tmp_path, "size: big\n") == "'size' must be an integer, got 'big'"
    assert error(tmp_path, None, "size=oops") == "'size' must be an integer, got 'oops'"
    assert error(tmp_path, "lr: [1]\n") == "'lr' must be a number, got [1]"
    assert error(tmp_path, "flag: 1\n") == "'flag' must be true or false, got 1"
    assert error(tmp_path, "title: 3\n") == "'title' must be a string, got 3"
    assert error(tmp_path, "run: {name: [1]}\n") == "'run.name' must be a string or null, got [1]"
    assert error(tmp_path, "steps: [1, x]\n") == "'steps[1]' must be an integer, got 'x'"
    assert error(tmp_path, "steps: 3\n") == "'steps' must be a list of an integer, got 3"
    assert error(tmp_path, "weights: {a: x}\n") == "'weights.a' must be a number, got 'x'"
    assert error(tmp_path, "weights: [1]\n") == "'weights' must be a mapping of names to a number, got [1]"
    assert error(tmp_path, "size: null\n") == "'size' must be an integer, got None"


def test_bool_is_not_an_int_nor_a_float(tmp_path):
    assert error(tmp_path, "size: true\n") == "'size' must be an integer, got True"
    assert error(tmp_path, None, "lr=false") == "'lr' must be a number, got False"
    assert error(tmp_path, None, "n=true", cls=WorldBenchConfig) == "'n' must be an integer, got True"


def test_out_of_range_names_the_bounds(tmp_path):
    assert error(tmp_path, "size: 47\n") == "'size' = 47 is out of range: must be >= 48 and <= 1024"
    assert error(tmp_path, None, "size=2000") == "'size' = 2000 is out of range: must be >= 48 and <= 1024"
    assert error(tmp_path, "lr: 0\n") == "'lr' = 0.0 is out of range: must be > 0.0"
    assert error(tmp_path, None, "run.seed=-1") == "'run.seed' = -1 is out of range: must be >= 0"
    assert ">= 48" in error(tmp_path, None, "resolution=47", cls=WorldBenchConfig)
    assert "<= 1.0" in error(tmp_path, "min_accept: 1.5\n", cls=WorldBenchConfig)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan", "inf", "-Infinity"])
def test_non_finite_floats_are_rejected(tmp_path, text):
    message = error(tmp_path, f"lr: {text}\n")
    assert message.startswith("'lr' must be a finite number, got ")
    assert error(tmp_path, None, f"blur_sigma={text}", cls=WorldBenchConfig).startswith("'blur_sigma' must be a finite")


def test_an_int_too_large_for_a_float_is_a_config_error(tmp_path):
    assert error(tmp_path, "lr: 1" + "0" * 400 + "\n").startswith("'lr' must be a finite number, got 1000")
    assert "finite" in error(tmp_path, None, "lr=1e400")


def test_literal_mismatch_lists_the_choices_and_suggests(tmp_path):
    expected = "'split' = 'tset' is not allowed: choose one of train, val, test (did you mean 'test'?)"
    assert error(tmp_path, "split: tset\n") == expected
    assert error(tmp_path, None, "split=tset") == expected
    assert error(tmp_path, None, "split=tset", cls=WorldBenchConfig) == expected
    assert error(tmp_path, "split: 3\n") == "'split' = 3 is not allowed: choose one of train, val, test"


def test_a_section_given_a_scalar(tmp_path):
    assert error(tmp_path, "run: 3\n") == "'run' is a section: give a mapping of its keys, got 3"
    # an override into the section must not hide the malformed section
    assert error(tmp_path, "run: 3\n", "run.seed=1") == "'run' is a section: give a mapping of its keys, got 3"
    assert "'run' is a section" in error(tmp_path, "run: [1]\n", "run.out_dir=x", cls=WorldBenchConfig)


def test_missing_required_key_and_cross_field_check(tmp_path):
    @dataclass
    class Needs:
        lo: int = param()
        hi: int = param(10)

        def check(self):
            if self.lo > self.hi:
                raise ConfigError(f"'lo' ({self.lo}) must not exceed 'hi' ({self.hi})")

    assert error(tmp_path, "hi: 3\n", cls=Needs) == "missing required key 'lo'"
    assert error(tmp_path, "lo: 5\nhi: 3\n", cls=Needs) == "'lo' (5) must not exceed 'hi' (3)"
    assert load(tmp_path, "lo: 2\n", cls=Needs) == Needs(lo=2, hi=10)


# ---------------------------------------------------------------- YAML problems


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    message = error(tmp_path, "size: 64\nsteps: [1, 2\n")
    assert re.search(r"cfg\.yaml: invalid YAML at line 3, column 1: expected ',' or ']'", message), message
    message = error(tmp_path, "size: 64\n  bad: 1\n")
    assert "invalid YAML at line 2, column 6: mapping values are not allowed here" in message
    expected = "override steps: invalid YAML at line 1, column 6: expected ',' or ']'"
    assert error(tmp_path, None, "steps=[1, 2").startswith(expected)  # override values are YAML too


def test_duplicate_key_is_rejected_with_its_line(tmp_path):
    assert error(tmp_path, "size: 64\nlr: 0.1\nsize: 65\n").endswith("cfg.yaml: line 3: duplicate key 'size'")
    assert error(tmp_path, "run:\n  seed: 1\n  seed: 2\n").endswith("line 3: duplicate key 'seed'")


def test_top_level_must_be_a_mapping(tmp_path):
    assert error(tmp_path, "- 1\n- 2\n").endswith("cfg.yaml: the top level must be a mapping of keys, got [1, 2]")
    assert error(tmp_path, "just text\n").endswith("the top level must be a mapping of keys, got 'just text'")


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="^config file not found: '.*nope.yaml'$"):
        C.load(Cfg, missing)
    with pytest.raises(ConfigError, match="^config path is a directory, not a file: "):
        C.load(Cfg, tmp_path)


def test_non_utf8_bytes(tmp_path):
    assert error(tmp_path, b"size: \xff\xfe\n").endswith("cfg.yaml: not UTF-8 text (bad byte at offset 6)")


def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error(tmp_path):
    assert error(tmp_path, "[" * 5000).endswith("the YAML is nested too deeply")
    assert error(tmp_path, "size: " + "{a: " * 5000).endswith("the YAML is nested too deeply")


def test_unsafe_tags_are_refused(tmp_path):
    message = error(tmp_path, "size: !!python/object/apply:os.system ['echo hi']\n")
    assert "could not determine a constructor for the tag" in message


def test_scalars_the_yaml_constructor_rejects_are_placed(tmp_path):
    # PyYAML itself raises ValueError / IndexError / KeyError / AttributeError for these
    assert error(tmp_path, "lr: 0.1\nsize: 2020-13-45\n").endswith(
        "invalid YAML at line 2, column 7: cannot read '2020-13-45' as !!timestamp (month must be in 1..12)")
    assert error(tmp_path, "size: !!int\n").endswith("line 1, column 7: cannot read '' as !!int")
    assert error(tmp_path, "flag: !!bool maybe\n").endswith("cannot read 'maybe' as !!bool")
    assert error(tmp_path, "run: !!timestamp x\n").endswith("cannot read 'x' as !!timestamp")
    assert error(tmp_path, "run: !!map [1]\n").endswith("line 1, column 6: expected a mapping, found a sequence")
    assert "as !!int (Exceeds the limit" in error(tmp_path, "size: 1" + "0" * 5000 + "\n")  # int's digit limit
    assert "as !!int (Exceeds the limit" in error(tmp_path, None, "size=1" + "0" * 5000)


def test_non_string_and_unhashable_keys(tmp_path):
    assert error(tmp_path, "1: 2\n") == "config keys must be strings, got 1"
    assert error(tmp_path, "run: {1: 2}\n") == "config keys must be strings, got 1 in 'run'"
    assert error(tmp_path, "{[1]: 2}\n").endswith("line 1: a key must be a plain value")


def test_alias_bombs_give_a_short_message_quickly(tmp_path):
    # each anchor repeats the previous one ten times: the value holds 10**8 'x' but only a few hundred bytes of YAML
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    start = time.perf_counter()
    message = error(tmp_path, f"title: [{', '.join(levels)}]\n")
    assert time.perf_counter() - start < 5
    assert message.startswith("'title' must be a string, got [[") and len(message) < 100


def test_messages_are_collapsed_to_one_line():
    assert str(ConfigError("line one\n  line two\tend")) == "line one line two end"


# ---------------------------------------------------------------- recipe, dump, round trip


def test_dump_then_load_round_trips(tmp_path):
    cfg = Cfg(run=Section(seed=5, name="x y"), size=100, lr=1e-4, flag=True, title="123", split="train",
              steps=[7], scales=(0.25, 4.0), weights={"w": 0.5})
    text = C.dump(cfg, "test.local")
    assert text.startswith("recipe: test.local\n")
    assert load(tmp_path, text, recipe="test.local") == cfg

    world = WorldBenchConfig(run=RunConfig(name="r", out_dir="/tmp/x", seed=9), split="val", n=60, blur_sigma=1.5)
    path = tmp_path / "world.yaml"
    C.save(world, path, recipe=RECIPE)
    assert C.load(WorldBenchConfig, path, recipe=RECIPE) == world
    assert C.load(WorldBenchConfig, path) == world  # without a recipe to check, the key is just dropped


def test_the_shipped_world_config_loads():
    cfg = C.load(WorldBenchConfig, Path(__file__).parents[1] / "configs/bench/world.yaml", recipe=RECIPE)
    assert cfg.n == 2000 and cfg.split == "test" and cfg.run.out_dir == "runs"


def test_a_config_for_another_recipe_is_refused(tmp_path):
    message = error(tmp_path, "recipe: solrl\nn: 60\n", cls=WorldBenchConfig, recipe="bench.world")
    assert message.endswith("cfg.yaml: this config is for recipe 'solrl', not 'bench.world'")
    assert "'recipe'" in error(tmp_path, None, "recipe=bench.world", cls=WorldBenchConfig)  # not an override key


# ---------------------------------------------------------------- run directories


def test_create_run_dir_never_overwrites(tmp_path):
    run = RunConfig(name="exp", out_dir=str(tmp_path / "runs"))
    first = create_run_dir(run, RECIPE)
    assert first == tmp_path / "runs" / "exp" and first.is_dir() and run.name == "exp"
    (first / "keep.txt").write_text("old")

    again = RunConfig(name="exp", out_dir=str(tmp_path / "runs"))
    second = create_run_dir(again, RECIPE)
    assert second == tmp_path / "runs" / "exp-2" and second.is_dir() and again.name == "exp-2"
    assert (first / "keep.txt").read_text() == "old" and not any(second.iterdir())
    assert create_run_dir(RunConfig(name="exp", out_dir=str(tmp_path / "runs")), RECIPE).name == "exp-3"


def test_create_run_dir_default_name_is_recorded(tmp_path):
    run = RunConfig(out_dir=str(tmp_path))
    path = create_run_dir(run, RECIPE)
    assert re.fullmatch(r"bench-world-\d{8}-\d{6}", run.name) and path == tmp_path / run.name and path.is_dir()


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("[!a]*/*.yaml")))
def test_every_shipped_config_loads(path):
    """Every recipe and benchmark config in configs/ is valid for its job (accelerate's own
    configs excepted), so a typo in a shipped file fails here rather than in a user's run."""
    from vgen import recipes

    data = C.read_yaml(path)
    name = data["recipe"]
    table = recipes.TRAIN if name in recipes.TRAIN else recipes.BENCH
    cls, _, recipe = recipes.resolve(table, name.removeprefix("bench."))
    C.load(cls, path, recipe=recipe)
