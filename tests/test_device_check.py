"""tools/device_check.py, the one command a session lent a GPU runs: its CPU-capable parts run here (so its
commands cannot rot before a GPU comes), a failing or overlong part is recorded and the next one runs."""

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "device_check.py"
sys.path.insert(0, str(ROOT / "tools"))

import device_check as dc  # noqa: E402


@pytest.mark.slow
def test_the_quick_check_runs_every_cpu_part_and_reports_it(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path), "--quick"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert [p["name"] for p in rep["parts"]] == ["info", "train-solrl_var", "explore-var", "bench-var"]
    assert all(p["status"] == "passed" and p["exit"] == 0 for p in rep["parts"])
    env = rep["environment"]
    assert env["backends"][0] == "fp32" and env["packages"]["torch"] == metadata.version("torch")
    parts = {p["name"]: p for p in rep["parts"]}
    assert "precision backends:" in parts["info"]["tail"]
    assert "| gumbel | fp32 | 6 of 6 (8x8) |" in parts["explore-var"]["tail"]  # the probe's table row
    assert "## VARiant: run-time depth" in parts["bench-var"]["tail"]
    md, log = (tmp_path / "report.md").read_text(), (tmp_path / "log.txt").read_text()
    assert "| train-solrl_var | passed |" in md and "=== bench-var: " in log
    # the three reports (no temporary left), and the quick run's own scratch folder
    assert sorted(f.name for f in tmp_path.iterdir()) == ["log.txt", "report.json", "report.md", "work"]


def test_a_failing_part_is_recorded_and_a_slow_one_stopped(tmp_path):
    py = sys.executable
    with open(tmp_path / "log.txt", "w") as log:
        failed = dc.run_part(dc.Part("f", [[py, "-c", "print('first')"], [py, "-c", "print('boom'); exit(3)"],
                                           [py, "-c", "print('never')"]], 60), 60, log)
        slow = dc.run_part(dc.Part("s", [[py, "-c", "import time; print('going', flush=True); time.sleep(30)"]], 60),
                           1.5, log)
    assert failed["status"] == "failed (exit 3)" and failed["exit"] == 3
    assert "first" in failed["tail"] and "boom" in failed["tail"] and "never" not in failed["tail"]
    assert slow["status"] == "timed out after 2 s" and slow["seconds"] < 10 and "going" in slow["tail"]


def _main(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["device_check.py", *args])
    return dc.main()


def test_a_spent_budget_skips_the_rest_and_bad_arguments_are_one_line(tmp_path, monkeypatch):
    assert _main(monkeypatch, "--out", str(tmp_path), "--quick", "--budget", "0") == 1
    rep = json.loads((tmp_path / "report.json").read_text())
    assert {p["status"] for p in rep["parts"]} == {"skipped: out of time"} and len(rep["parts"]) == 4
    with pytest.raises(SystemExit) as e:
        _main(monkeypatch, "--out", str(tmp_path), "--quick", "--only", "info", "nope")
    assert e.value.code == "device_check: unknown part(s) nope; parts: info, train-solrl_var, explore-var, bench-var"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device here"):
            _main(monkeypatch, "--out", str(tmp_path))


def test_the_gpu_check_lists_every_recipe_and_the_gpu_test_files(tmp_path):
    """The parts a GPU runs (not run here): every recipe's tiny config, the files holding `gpu` tests, and
    only assets that tools/device_slim.sh keeps in the tree that travels."""
    full = dc.parts(False, "cpu", tmp_path)
    names = [p.name for p in full]
    assert names[:2] == ["info", "gpu-tests"] and names[-4:] == ["explore-var", "bench-quant", "bench-var",
                                                                  "bench-var-paper"]
    assert {n for n in names if n.startswith("train-")} == {f"train-{r}" for r in
                                                             ("solrl", "solrl_var", "var", "sar", "variant",
                                                              "scaleweaver")}
    files = dc.gpu_test_files()
    assert {"tests/test_benches.py", "tests/test_explore.py", "tests/test_solrl_var.py"} <= set(files)
    assert "tests/test_device_check.py" not in files
    kept = re.search(r"KEEP='\^\((.*)\)\$'", (ROOT / "tools" / "device_slim.sh").read_text())[1].split("|")
    used = set()
    for cmd in (c for p in full for c in p.commands):
        used |= {a for w in cmd for a in re.findall(r"assets/[\w-]+", w)}
        if "train" in cmd:  # the config's own folders, unless the command line overrides them
            config = yaml.safe_load((ROOT / cmd[cmd.index("train") + 1]).read_text())
            used |= {config[k] for k in ("init", "model", "tokenizer") if k in config
                     and not any(w.startswith(f"{k}=") for w in cmd)}
    assert "assets/var-tiny-shapes" in used and used <= set(kept), (used, kept)
