"""vgen starts without library warnings: the commands run as users run them (subprocesses, no
PYTHONWARNINGS) print no warning of torch, torchao, diffusers or transformers on stderr, and the
filters of vgen/_quiet.py drop only the messages they name."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vgen  # noqa: F401  (installs the filters under test)

ROOT = Path(__file__).resolve().parents[1]
VGEN_DIR = str(ROOT / "vgen")

# A line from a library warning: the `warnings` module ("...: DeprecationWarning: ..."), a logger
# that says warn, torch's glog-style log lines ("W1204 01:06:30.406000 5271 torch/...:630] ..."),
# and the torchao messages vgen/_quiet.py silences (matched verbatim, they say neither).
_LIBRARY_WARNING = re.compile(
    r"warn"
    r"|^[WE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"
    r"|is an Enum subclass and is now natively supported"
    r"|Unable to import `torchao`",
    re.IGNORECASE,
)


def _vgen_own(line: str) -> bool:
    """vgen's own messages may say 'warn': its one-line notes and errors ("vgen ...") and its
    ``warnings.warn`` lines, which name a file of the vgen package."""
    return line.startswith("vgen") or VGEN_DIR in line


def _library_warnings(stderr: str) -> list[str]:
    lines = stderr.replace("\r", "\n").splitlines()  # progress bars redraw with \r
    return [s for s in lines if _LIBRARY_WARNING.search(s) and not _vgen_own(s)]


def _commands(tmp: Path) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "sample-var": ["sample", "--model", "assets/var-tiny-shapes", "--classes", "0", "--seeds", "0",
                       "--out", str(tmp / "sample")],
        "train-var": ["train", "configs/var/tiny.yaml", f"run.out_dir={tmp / 'runs'}", "iterations=1",
                      "eval_every=0", "sample_every=0", "checkpoint_every=0", "progress=false",
                      "data_size=16", "val_size=8", "batch=8"],
        # loads the SD3 pipeline's classes: this imports diffusers, transformers and torchao
        "dry-run-solrl": ["train", "configs/solrl/tiny.yaml", f"run.out_dir={tmp / 'runs'}", "iterations=1",
                          "--dry-run"],
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """All commands started at once (the heavy ones are a few seconds of imports each)."""
    tmp = tmp_path_factory.mktemp("quiet")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TORCH_LOGS")}
    env.setdefault("OMP_NUM_THREADS", "1")
    procs = {name: subprocess.Popen([sys.executable, "-m", "vgen.cli", *args], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in _commands(tmp).items()}
    out = {}
    for name, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("name", ["help", "sample-var", "train-var", "dry-run-solrl"])
def test_command_prints_no_library_warning(runs, name):
    r = runs[name]
    assert r.returncode == 0, f"vgen {name} failed:\n{r.stderr[-3000:]}"
    assert _library_warnings(r.stderr) == [], f"vgen {name} printed library warnings:\n{r.stderr[-3000:]}"


def test_detector_catches_the_known_warnings():
    """The check above would see the messages it is meant to keep out (as they printed before)."""
    before = (
        "W1204 01:06:30.406000 5271 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass "
        "and is now natively supported by torch.compile as an opaque value type.\n"
        "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`\n"
        "/x/site-packages/lib/mod.py:3: FutureWarning: `foo` is deprecated\n"
    )
    assert len(_library_warnings(before)) == 3
    own = f"{VGEN_DIR}/rl/trainer.py:638: UserWarning: iteration 3: 1 non-finite rewards dropped\n"
    assert _library_warnings(own + "rollout: 100%|##| 2/2\r\n") == []


def _passes(logger_name: str, msg: str, args: tuple = ()) -> bool:
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger_name, logging.WARNING, __file__, 1, msg, args, None)
    return bool(logger.filter(record))


def test_filters_drop_only_the_named_messages():
    import enum

    template = ("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type. "
                "Calling register_constant() on Enum subclasses is deprecated and will be an error in a future "
                "release.")
    torchao_enum = enum.Enum("KernelPreference", "AUTO")
    torchao_enum.__module__ = "torchao.quantization.quantize_.common.kernel_preference"
    other_enum = enum.Enum("Mine", "A")
    other_enum.__module__ = "somepackage.config"

    assert not _passes("torch.utils._pytree", template, (torchao_enum,))
    assert _passes("torch.utils._pytree", template, (other_enum,))  # the same deprecation elsewhere still prints
    assert _passes("torch.utils._pytree", "some other pytree warning %s", (torchao_enum,))

    diffusers_torchao = "diffusers.quantizers.torchao.torchao_quantizer"
    assert not _passes(diffusers_torchao, "Unable to import `torchao` Tensor objects. This may affect loading "
                                          "checkpoints serialized with `torchao`")
    assert _passes(diffusers_torchao, "another torchao quantizer warning")
    assert _passes("diffusers.models.modeling_utils", "Unable to import `torchao` Tensor objects.")


def test_install_is_idempotent_and_leaves_warnings_alone():
    import warnings

    from vgen import _quiet

    filters_before = list(warnings.filters)
    _quiet.install()
    _quiet.install()
    for name, cls in _quiet._FILTERS:
        assert sum(isinstance(f, cls) for f in logging.getLogger(name).filters) == 1
    assert warnings.filters == filters_before
