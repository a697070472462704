"""tools/variant_compare.py: a run or evaluation, in the folder or another comparison's, counts only if it
trained / scored what this comparison asks for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import variant_compare as C  # noqa: E402

from vgen.config import load, save  # noqa: E402
from vgen.variant.recipe import VariantConfig  # noqa: E402

CONFIG = ROOT / "configs" / "variant" / "d30.yaml"
ASKED = {"cfg": 3.0, "top_k": 40, "top_p": 0.0, "seeds": list(range(100, 110))}


def report(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({**ASKED, **values}))
    return folder


def trained_run(folder: Path, overrides: list[str]) -> Path:
    """A run folder as `vgen train` leaves it: the resolved config and a model file."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "var.safetensors").write_bytes(b"")
    cfg = load(VariantConfig, CONFIG, [*overrides, f"run.out_dir={folder.parent}", f"run.name={folder.name}",
                                       "progress=false"], recipe="variant")
    cfg.check()
    save(cfg, folder / "config.yaml", recipe="variant")
    return folder


def test_an_evaluation_on_other_seeds_settings_model_or_depth_plan_is_not_reused(tmp_path):
    model = tmp_path / "a" / "model"
    model.mkdir(parents=True)
    (tmp_path / "b").symlink_to("a")  # a run linked in from another comparison is the same model
    rep = report(tmp_path / "eval", model=str(model), depth_plan=[[0, 1], [0]])
    want = {**ASKED, "model": str(tmp_path / "b" / "model"), "depth_plan": [[0, 1], [0]]}
    assert C.same_evaluation(rep, want)
    assert not C.same_evaluation(rep, {**want, "seeds": list(range(500, 510))})  # fresh test seeds
    assert not C.same_evaluation(rep, {**want, "cfg": 4.5})
    assert not C.same_evaluation(rep, {**want, "depth_plan": [[0, 1], [1]]})  # another switch or depth
    (tmp_path / "c" / "model").mkdir(parents=True)
    assert not C.same_evaluation(rep, {**want, "model": str(tmp_path / "c" / "model")})


def test_a_run_counts_only_if_it_trained_the_same_settings_and_path_schedule(tmp_path):
    arm = ["mix=loss", "stage_ratios=[[0,10],[1,9],[2,8]]", "stage_ends=[0.25,0.5,1.0]"]
    fixed = trained_run(tmp_path / "fixed-s0", ["run.seed=0", *arm, "schedule=fixed"])
    # a fixed run never reads stage_ratios: the same run serves a comparison of another progressive schedule
    assert C.same_training(fixed, C.training(CONFIG, ["run.seed=0", "mix=loss", "stage_ratios=[[0,10],[2,8],[3,7]]",
                                                      "stage_ends=[0.25,0.5,1.0]", "schedule=fixed"]))
    assert not C.same_training(fixed, C.training(CONFIG, ["run.seed=1", *arm, "schedule=fixed"]))
    assert not C.same_training(fixed, C.training(CONFIG, ["run.seed=0", *arm, "schedule=fixed", "ratio=[1,9]"]))
    assert not C.same_training(fixed, C.training(CONFIG, ["run.seed=0", *arm, "schedule=fixed", "lr=1e-4"]))
    prog = trained_run(tmp_path / "progressive-s0", ["run.seed=0", *arm])
    assert C.same_training(prog, C.training(CONFIG, ["run.seed=0", *arm]))
    assert not C.same_training(prog, C.training(CONFIG, ["run.seed=0", "mix=loss", "stage_ends=[0.25,0.5,1.0]",
                                                         "stage_ratios=[[0,10],[1,9],[3,7]]"]))
    assert not C.same_training(tmp_path / "untrained", C.training(CONFIG, ["run.seed=0", *arm]))
    (prog / "config.yaml").write_text("recipe: variant\nlr: fast\n")  # unreadable: not the same run
    assert not C.same_training(prog, C.training(CONFIG, ["run.seed=0", *arm]))


def test_reuse_links_the_first_matching_source_and_never_replaces_what_is_there(tmp_path):
    out, old, older = tmp_path / "out", tmp_path / "old", tmp_path / "older"
    out.mkdir()
    report(old / "base-eval-d8", cfg=4.5)
    report(older / "base-eval-d8")
    C.reuse(out, [old, older], "base-eval-d8", C.same_evaluation, ASKED)
    link = out / "base-eval-d8"
    assert link.is_symlink() and link.resolve() == (older / "base-eval-d8").resolve()
    assert not Path(link.readlink()).is_absolute()  # the comparisons move together
    report(old / "base-eval-d2")
    report(out / "base-eval-d2", cfg=4.5)
    C.reuse(out, [old], "base-eval-d2", lambda p, w: True, ASKED)
    assert not (out / "base-eval-d2").is_symlink()
    C.reuse(out, [old], "fixed-s0", lambda p, w: True, ASKED)  # nothing of that name to link
    assert not (out / "fixed-s0").exists()


def test_a_folder_holding_a_run_of_other_settings_stops_the_comparison(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    trained_run(out / "progressive-s0", ["run.seed=0", "lr=1e-4"])
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["variant_compare.py", "--config", str(CONFIG), "--seeds", "0",
                                      "--out", str(out)])
    monkeypatch.setattr(C, "run_all", lambda jobs, cores: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="progressive-s0 trained other settings"):
        C.main()


def test_reuse_links_the_matching_fixed_runs_and_trains_only_the_new_schedule(tmp_path, monkeypatch):
    old, out = tmp_path / "old", tmp_path / "new"
    arm = ["mix=loss", "stage_ends=[0.25,0.5,1.0]"]
    for s in (0, 1):
        run = trained_run(old / f"fixed-s{s}", [f"run.seed={s}", *arm, "stage_ratios=[[0,10],[1,9],[2,8]]",
                                                "schedule=fixed"])
        (run / "model" / "config.json").write_bytes((ROOT / "assets" / "var-d30-shapes" / "config.json").read_bytes())
    trained_run(old / "progressive-s0", ["run.seed=0", *arm, "stage_ratios=[[0,10],[1,9],[2,8]]"])
    monkeypatch.chdir(ROOT)
    # the overrides follow --reuse on the command line and must stay overrides, not more folders to reuse
    monkeypatch.setattr(sys, "argv", ["variant_compare.py", "--config", str(CONFIG), "--seeds", "0", "1",
                                      "--out", str(out), "--reuse", str(old), *arm,
                                      "stage_ratios=[[0,10],[2,8],[3,7]]"])
    started = []

    def run_all(jobs, cores):
        started.append(jobs)
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(C, "run_all", run_all)
    with pytest.raises(KeyboardInterrupt):
        C.main()
    assert [(out / f"fixed-s{s}").resolve() for s in (0, 1)] == [(old / f"fixed-s{s}").resolve() for s in (0, 1)]
    assert not (out / "progressive-s0").exists()  # another schedule: trained again
    trains = started[0]
    assert [args[args.index(f"run.out_dir={out}") + 1] for args, _ in trains] == ["run.name=progressive-s0",
                                                                                 "run.name=progressive-s1"]
    assert all("stage_ratios=[[0,10],[2,8],[3,7]]" in args for args, _ in trains)


def test_a_missing_reuse_folder_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["variant_compare.py", "--config", str(CONFIG), "--out", str(tmp_path / "o"),
                                      "--reuse", str(tmp_path / "typo")])
    with pytest.raises(SystemExit, match="--reuse: no folder .*typo"):
        C.main()


def test_a_bad_override_is_a_one_line_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["variant_compare.py", "--config", str(CONFIG), "--seeds", "0",
                                      "--out", str(tmp_path / "o"), "stage_ratios=[[0,10],[1,9]]"])
    monkeypatch.setattr(C, "run_all", lambda jobs, cores: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="one ratio per stage"):
        C.main()


def test_surgery_summarises_a_projected_runs_log_by_depth(tmp_path):
    """Share projected and mean cosine over every step and per depth, by hand; a run without the log's
    fields (project=false) or without a log has none."""
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": 1, "path_depth": 16.0, "guard_cos": 0.3, "projected": 0.0},
            {"step": 2, "path_depth": 2.0, "guard_cos": -0.1, "projected": 1.0},
            {"step": 3, "path_depth": 16.0, "guard_cos": -0.2, "projected": 1.0},
            {"step": 4, "path_depth": 2.0, "guard_cos": -0.4, "projected": 1.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = C.surgery(run)
    assert list(got) == ["all", "16", "2"]
    assert got["all"] == {"steps": 4, "projected": 0.75, "cos": pytest.approx(-0.1)}
    assert got["16"] == {"steps": 2, "projected": 0.5, "cos": pytest.approx(0.05)}
    assert got["2"] == {"steps": 2, "projected": 1.0, "cos": pytest.approx(-0.25)}
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "path_depth": 2.0}) + "\n")
    assert C.surgery(run) is None and C.surgery(tmp_path / "none") is None
