"""Time-to-target (tools/compare_runs.py) and the seed-pair reports built on it
(tools/solrl_time_to_target.py, tools/solrl_var_compare.py's re-scored curves), on hand-made runs
whose answers are worked out by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import compare_runs as C  # noqa: E402
import solrl_time_to_target as T  # noqa: E402
import solrl_var_compare as V  # noqa: E402


def _write_run(run: Path, step_seconds: list[dict]) -> None:
    """metrics.jsonl as the Sol-RL recipe writes it: a step-0 evaluation row, then one row per iteration."""
    run.mkdir(parents=True)
    lines = [{"step": 0, "eval_strict": 0.3}]
    lines += [{"step": i + 1, "loss": 0.1, **{f"time_{k}": v for k, v in t.items()}}
              for i, t in enumerate(step_seconds)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _report(d: Path, strict: float) -> None:
    """A `vgen eval` report.json with its GenEval-Shapes means alone."""
    d.mkdir(parents=True)
    g = {"overall": {"strict": {"mean": strict, "ci95": [strict, strict]}, "score": {"mean": strict + 0.1}},
         "per_category": {"counting": {"strict": {"mean": strict}}}}
    (d / "report.json").write_text(json.dumps({"geneval_shapes": g}))


def test_wall_time_sums_every_phase_and_nothing_else(tmp_path):
    _write_run(tmp_path / "r", [{"explore": 2.0, "regenerate": 1.0, "update": 3.0, "refresh": None},
                                {"explore": 1.5, "score": 0.5, "update": 2.0}])
    assert C.wall_times(tmp_path / "r") == {0: 0.0, 1: 6.0, 2: 10.0}
    ph = C.phases(tmp_path / "r")
    assert ph["explore"] == pytest.approx(1.75) and ph["update"] == pytest.approx(2.5) and ph["select"] == 0.0


def test_speed_is_the_baselines_first_time_over_sol_rls_first_time():
    base = [(0, 0.30), (100, 0.50), (200, 0.45)]  # final 0.45, first reached at 100; best 0.50, also at 100
    sol = [(0, 0.30), (40, 0.46), (80, 0.52)]
    sp = C.speed(sol, base)
    assert sp["final"]["target"] == 0.45 and sp["final"]["t_baseline"] == 100 and sp["final"]["t_sol"] == 40
    assert sp["final"]["ratio"] == pytest.approx(2.5)
    assert sp["best"]["ratio"] == pytest.approx(100 / 80)
    slow = C.speed([(0, 0.30), (50, 0.40), (150, 0.44)], base)  # never reaches 0.45
    assert slow["final"]["ratio"] is None and slow["final"]["ratio_bound"] == pytest.approx(100 / 150)
    assert C.fmt_ratio(slow["final"]) == "not reached (<= 0.67x)"
    assert C.time_to([(0, 0.9), (10, 0.1)], 0.5) is None  # the start does not count


def test_summary_mean_and_bootstrap_interval_over_pairs():
    pairs = {s: C.speed([(0, 0.3), (t, 0.6)], [(0, 0.3), (100, 0.6)]) for s, t in ((0, 50), (1, 100), (2, 200))}
    sm = C.summarise(pairs)["final"]
    assert sm["ratios"] == pytest.approx([2.0, 1.0, 0.5]) and sm["mean"] == pytest.approx(3.5 / 3)
    lo, hi = sm["ci95"]
    assert 0.5 <= lo < sm["mean"] < hi <= 2.0 and sm["all_reached"]
    assert C.bootstrap([1.5, 1.5, 1.5]) == (1.5, 1.5)


def test_eval_steps_keep_the_last_iteration():
    assert T.eval_steps(130, 20) == [20, 40, 60, 80, 100, 120, 130]
    assert T.eval_steps(70, 10) == [10, 20, 30, 40, 50, 60, 70]


def test_pair_report_from_test_evaluations_of_checkpoints(tmp_path, monkeypatch):
    """The whole report, with the runs and their test evaluations already on disk (nothing is trained or
    evaluated): curves start at the base, use each checkpoint's test score at its training wall time."""
    out = tmp_path / "ttt"
    sol_cfg = tmp_path / "learn.yaml"
    sol_cfg.write_text("recipe: solrl\nmodel: base-folder\nfamily: sol_rl\niterations: 20\n")

    _report(out / "test" / "base", 0.30)
    for s, (sol_scores, base_scores) in {0: ((0.40, 0.50), (0.35, 0.45)), 1: ((0.32, 0.34), (0.40, 0.42))}.items():
        _write_run(out / f"sol_rl-s{s}", [{"explore": 5.0, "update": 5.0}] * 20)       # 10 s an iteration
        _write_run(out / f"diffusionnft-s{s}", [{"explore": 2.0, "update": 3.0}] * 40)  # 5 s an iteration
        for step, v in zip((10, 20), sol_scores):
            _report(out / "test" / f"sol_rl-s{s}" / f"step-{step:06d}", v)
        for step, v in zip((20, 40), base_scores):
            _report(out / "test" / f"diffusionnft-s{s}" / f"step-{step:06d}", v)
    monkeypatch.setattr(sys, "argv", ["x", "--sol", str(sol_cfg), "--baseline", "family=diffusionnft", "iterations=40",
                                      "--seeds", "0", "1", "--eval-every", "10", "20", "--out", str(out), "--no-train"])
    T.main()
    rep = json.loads((out / "report.json").read_text())
    # pair 0: the baseline ends at 0.45 (first at 200 s), Sol-RL passes it at 200 s -> 1.0x; its best too
    p0 = rep["speed"]["strict"]["0"]
    assert p0["sol_curve"] == [[0.0, 0.3], [100.0, 0.4], [200.0, 0.5]]
    assert p0["baseline_curve"] == [[0.0, 0.3], [100.0, 0.35], [200.0, 0.45]]
    assert p0["final"]["ratio"] == pytest.approx(1.0)
    # pair 1: Sol-RL never reaches 0.42; bound = 200 s / 200 s
    p1 = rep["speed"]["strict"]["1"]
    assert p1["final"]["ratio"] is None and p1["final"]["ratio_bound"] == pytest.approx(1.0)
    assert rep["summary"]["strict"]["final"]["all_reached"] is False
    assert rep["finals"]["sol_rl-s0"]["strict"] == 0.5 and rep["finals"]["diffusionnft-s1"]["train_s"] == 200.0
    md = (out / "report.md").read_text()
    assert "| strict | baseline final | 1.00x | not reached (<= 1.00x) |" in md
    assert (out / "curves_strict.png").is_file() and (out / "curves_score.png").is_file()


def test_var_rescored_curve_is_the_base_then_every_kept_checkpoint(tmp_path):
    """A VAR comparison's re-scored curve: the base at 0 s, then each checkpoint the run kept, scored at
    its iteration's training wall time; reports already on disk are reused (nothing is evaluated)."""
    out = tmp_path / "cmp"
    _write_run(out / "sol_rl-s0", [{"explore": 4.0, "update": 6.0}] * 30)  # 10 s an iteration
    for step, v in ((15, 0.5), (30, 0.6)):
        (out / "sol_rl-s0" / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        _report(out / "curve-sol_rl-s0" / f"step-{step:06d}", v)
    (out / "sol_rl-s0" / "checkpoints" / "latest").write_text("step-000030\n")
    _report(out / "curve-base", 0.4)
    curves = V.rescored_curves(out, ["sol_rl-s0"], "base-folder", [V.CURVE_SEED])
    assert curves == {"sol_rl-s0": [(0.0, 0.4), (150.0, 0.5), (300.0, 0.6)]}


def test_solrl_var_compare_refuses_runs_without_held_out_curves(tmp_path, monkeypatch):
    argv = ["solrl_var_compare.py", "--out", str(tmp_path / "c"), "--sol-set", "eval_seeds=0"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="eval_seeds=0 turns off the held-out curves"):
        V.main()
    assert not (tmp_path / "c").exists()  # refused before anything is made
