"""The Sol-RL trainer end to end on a tiny random SD3 pipeline: logs, checkpoints, exact resume,
bad rewards, refused resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import vgen_train

from vgen.cli import main
from vgen.rewards import registry

TINY = ["candidates=6", "k=4", "prompts_per_step=2", "preview_steps=2", "steps=3", "guidance=3.0", "resolution=32",
        "lora_rank=2", "eval_every=0", "eval_prompts=2", "sample_every=0", "checkpoint_every=1", "progress=false"]
VOLATILE = ("time_", "images_per_s", "eval_")


def _train(tmp_path, model_dir, name, *extra):
    return main(["train", "configs/solrl/tiny.yaml", f"model={model_dir}", *TINY, f"run.out_dir={tmp_path}",
                 f"run.name={name}", *extra])


def _metrics(run, volatile=VOLATILE):
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(volatile)} for r in rows}


@pytest.fixture(autouse=True)
def _test_rewards():
    def nan_half(images, prompts):
        r = np.linspace(0, 1, len(images), dtype=np.float32)
        r[::2] = np.nan
        return r

    extra = {"test_nan": lambda: nan_half, "test_const": lambda: (lambda images, prompts: np.ones(len(images))),
             "test_brightness": lambda: (lambda images, prompts: images.reshape(len(images), -1).mean(1) / 255.0)}
    for k, v in extra.items():
        registry._BUILTIN[k] = v
    yield
    for k in extra:
        registry._BUILTIN.pop(k, None)


def test_a_run_logs_every_phase_and_checkpoints(tmp_path, model_dir, capsys):
    assert _train(tmp_path, model_dir, "a", "iterations=2") == 0
    run = tmp_path / "a"
    m = _metrics(run, volatile=())
    assert sorted(m) == [0, 1, 2] and "eval_strict" in m[0] and "eval_strict" in m[2]
    for key in ("reward_explore_mean", "reward_mean", "rank_tau", "rank_topk_overlap", "time_explore", "time_score",
                "time_select", "time_regenerate", "time_update", "images_per_s", "loss", "degenerate_groups"):
        assert key in m[1], key
    assert m[1]["trained_samples"] == 4 * (2 - m[1]["degenerate_groups"])
    assert (run / "checkpoints" / "step-000002" / "state.pt").is_file()
    assert (run / "eval" / "step-000002" / "report.json").is_file() and list((run / "tb").iterdir())
    assert "held-out GenEval-Shapes strict accuracy" in capsys.readouterr().out


def test_resume_continues_exactly_and_a_changed_config_is_refused(tmp_path, model_dir, capsys):
    assert _train(tmp_path, model_dir, "full", "iterations=3") == 0
    assert _train(tmp_path, model_dir, "cut", "iterations=1") == 0
    assert _train(tmp_path, model_dir, "cut", "iterations=3") == 0  # resumes at iteration 1
    assert "resuming" in capsys.readouterr().out
    full, cut = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert full == cut  # bitwise: the same floats in the JSON
    assert _train(tmp_path, model_dir, "cut", "iterations=4", "lr=0.1") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "differs in: lr" in err and err.count("\n") == 1


@pytest.mark.parametrize("family", ["sol_rl", "diffusionnft"])
def test_flow_grpo_trains_on_policy_sde_rollouts_and_resumes_exactly(tmp_path, model_dir, family):
    grpo = ["loss=flow_grpo", f"family={family}", "kl_beta=0.01", "reward={test_brightness: 1.0}"]
    assert _train(tmp_path, model_dir, "full", "iterations=2", *grpo) == 0
    assert _train(tmp_path, model_dir, "cut", "iterations=1", *grpo) == 0
    assert _train(tmp_path, model_dir, "cut", "iterations=2", *grpo) == 0
    full = _metrics(tmp_path / "full")
    assert full == _metrics(tmp_path / "cut")
    # the update recomputes the recorded SDE log-probs with the rollout's own weights: ratio 1, nothing clipped
    assert full[1]["approx_kl"] < 1e-10 and full[1]["clip_frac"] == 0.0 and full[1]["trained_samples"] > 0
    assert full[2]["kl"] > 0  # after one step the policy's step means differ from the base's
    from safetensors.torch import load_file

    lora = load_file(tmp_path / "full" / "checkpoints" / "step-000002" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())


def _first_checkpoint(run):
    return (run / "checkpoints" / "latest").is_file()


def _writing_a_checkpoint(run):  # the second one: a run killed before its first restarts in NAME-2
    return _first_checkpoint(run) and any((run / "checkpoints").glob(".step-*"))


def _mid_iteration(run):  # iteration 1 logged and checkpointed: iteration 2 is generating
    log = run / "metrics.jsonl"
    return _first_checkpoint(run) and log.is_file() and len(log.read_text().splitlines()) >= 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, model_dir):
    """The metrics of the run that every killed one must reproduce (trained once for the three)."""
    out = tmp_path_factory.mktemp("ref")
    assert _train(out, model_dir, "ref", "iterations=3") == 0
    return _metrics(out / "ref")


@pytest.mark.parametrize("when", [_first_checkpoint, _writing_a_checkpoint, _mid_iteration])
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches(tmp_path, model_dir, uninterrupted, when):
    """A real SIGKILL at three points (just after a checkpoint, in the middle of writing one, in
    the middle of an iteration); every checkpoint left is complete and the resumed run reports
    what the uninterrupted one did."""
    cmd = [sys.executable, "-m", "vgen.cli", "train", "configs/solrl/tiny.yaml", f"model={model_dir}", *TINY,
           f"run.out_dir={tmp_path}", "run.name=k", "iterations=3"]
    env = {**os.environ, "VGEN_CHECKPOINT_DELAY": "0.5" if when is _writing_a_checkpoint else "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    run, deadline = tmp_path / "k", time.time() + 300
    while not when(run) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished
    for ckpt in (run / "checkpoints").glob("step-*"):
        assert (ckpt / "meta.json").is_file() and (ckpt / "state.pt").is_file()
    assert _train(tmp_path, model_dir, "k", "iterations=3") == 0
    assert _metrics(run) == uninterrupted
    assert not list((run / "checkpoints").glob(".step-*"))  # what the killed writer left is cleared


def test_nan_rewards_are_dropped_and_flat_groups_give_no_gradient(tmp_path, model_dir):
    with pytest.warns(UserWarning, match="non-finite rewards dropped"):
        assert _train(tmp_path, model_dir, "nan", "iterations=1", "reward={test_nan: 1.0}",
                      "family=diffusionnft") == 0
    m = _metrics(tmp_path / "nan")[1]
    assert m["nonfinite_rewards"] > 0 and m["trained_samples"] < 8 and np.isfinite(m["loss"])
    from safetensors.torch import load_file

    from vgen.train.checkpoint import latest_checkpoint

    weights = load_file(str(latest_checkpoint(tmp_path / "nan") / "adapter_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    assert _train(tmp_path, model_dir, "flat", "iterations=1", "reward={test_const: 1.0}") == 0
    m = _metrics(tmp_path / "flat")[1]
    assert m["degenerate_groups"] == 2 and m["trained_samples"] == 0 and m["loss"] == 0.0


def _launch(common: list[str], name: str, processes: int, *extra: str, **launch) -> None:
    vgen_train([*common, f"run.name={name}", *extra], processes, **launch)


def _assert_same_metrics(a: dict, b: dict, steps: list[int]) -> None:
    assert sorted(a) == sorted(b) == steps
    for step in a:
        assert a[step].keys() == b[step].keys()
        for key, v in a[step].items():
            if not key.startswith(("time_", "images_per_s")):
                assert v == pytest.approx(b[step][key], rel=1e-5, abs=1e-7), (step, key)


@pytest.mark.parametrize("extra", [[], ["family=naive_quant", "explore_prompts=4"]], ids=["sol_rl", "filtered"])
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, model_dir, extra):
    """Data parallelism (torchrun / accelerate launch, 2 CPU processes on gloo), the denoiser
    replicated: the same global batch gives the same metrics as one process, within float tolerance.
    With dynamic sampling the kept prompts are chosen over every process's explored ones and dealt
    out again, their explored samples (which naive_quant trains on) moving with them."""
    common = ["configs/solrl/tiny.yaml", f"model={model_dir}", *TINY, "reward={jpeg_compressibility: 1.0}",
              "lr=0.01", f"iterations={2 if extra else 3}", f"run.out_dir={tmp_path}", *extra]
    _launch(common, "one", 1)
    _launch(common, "two", 2)
    one = _metrics(tmp_path / "one")
    assert one[2]["trained_samples"] == 8
    _assert_same_metrics(_metrics(tmp_path / "two"), one, sorted(one))
    if extra:
        assert "explore_flat_prompts" in one[1]


def test_explore_prompts_trains_on_the_prompts_with_explore_spread(tmp_path, model_dir):
    """Dynamic sampling: of 4 explored prompts, the reward is flat on the first two, so the 2
    trained on are the other two and no group is degenerate; without it, the 2 prompts drawn are
    those first two (the same draw, shorter) and nothing trains."""
    from vgen.world.grammar import sample_prompts

    explored = sample_prompts("train", 4, seed=1)  # run.seed 0, iteration 1
    flat = set(explored[:2])
    assert not flat & set(explored[2:])
    registry._BUILTIN["test_flat_first"] = lambda: lambda images, prompts: np.array(
        [1.0 if p in flat else im.mean() / 255.0 for im, p in zip(images, prompts)])
    try:
        common = ["iterations=1", "reward={test_flat_first: 1.0}"]
        assert _train(tmp_path, model_dir, "plain", *common) == 0
        assert _train(tmp_path, model_dir, "filtered", *common, "explore_prompts=4") == 0
    finally:
        registry._BUILTIN.pop("test_flat_first")
    plain, filtered = _metrics(tmp_path / "plain")[1], _metrics(tmp_path / "filtered")[1]
    assert plain["degenerate_groups"] == 2 and plain["trained_samples"] == 0
    assert filtered["explore_flat_prompts"] == 2
    assert filtered["degenerate_groups"] == 0 and filtered["trained_samples"] == 8
    assert _train(tmp_path, model_dir, "bad", "explore_prompts=1") == 2  # fewer than prompts_per_step


@pytest.mark.slow
def test_fsdp2_sharded_run_matches_one_process_and_resumes_unsharded(tmp_path):
    """FSDP2 over 2 gloo processes trains exactly as one process, and its checkpoint (full weights,
    optimizer moments and EMA) resumes in one process. Two sharded iterations on the committed base
    with a reward that is flat on chosen prompts (tests/vgen_test_rewards.py), so the groups trained
    are set by construction, not by float rounding: in the first, 3 of the 4 prompt groups have no
    reward spread, so one process has no sample at all and pads its micro-batches at zero weight to
    keep the collectives in step; in the second, at most one group is flat, so both processes train
    samples and the gradient sum over processes must not depend on the split (``exact_grad_sum``:
    with it off, this test fails). Compared: every logged metric, and the adapter weights bit for bit
    at every checkpoint, the unsharded third iteration included."""
    from pathlib import Path
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from vgen.solrl.recipe import _prompts

    seed = 3
    cfg = SimpleNamespace(run=SimpleNamespace(seed=seed), prompts="shapes")
    drawn = {s: _prompts(cfg, s, 4) for s in (1, 2, 3)}  # the recipe's own draw
    flat = drawn[1][:3]  # a process holds groups (0, 2) or (1, 3): at iteration 1 only group 3 trains
    expected = [sum(p in flat for p in drawn[s]) for s in (1, 2, 3)]
    assert drawn[1][3] not in flat and expected[0] == 3 and expected[1] <= 1
    launch = dict(env={"VGEN_TEST_FLAT_PROMPTS": json.dumps(flat)},
                  script=str(Path(__file__).with_name("vgen_test_rewards.py")))
    common = ["configs/solrl/tiny.yaml", "model=assets/sd3-tiny-shapes", "candidates=6", "k=4", "prompts_per_step=4",
              "preview_steps=2", "steps=4", "lora_rank=2", "eval_every=0", "eval_prompts=2", "sample_every=0",
              "checkpoint_every=1", "progress=false", "reward={flat_prompts: 1.0}", "lr=0.01", "train_batch=1",
              f"run.seed={seed}", f"run.out_dir={tmp_path}", "exact_grad_sum=true"]
    _launch(common, "one", 1, "iterations=3", **launch)
    _launch(common, "fsdp", 2, "iterations=2", "fsdp=true", **launch)
    _launch(common, "fsdp", 1, "iterations=3", **launch)  # resumed at 2 without sharding
    one = _metrics(tmp_path / "one")
    assert [one[s]["degenerate_groups"] for s in (1, 2, 3)] == expected
    _assert_same_metrics(_metrics(tmp_path / "fsdp"), one, [0, 1, 2, 3])
    for step in (1, 2, 3):
        a, b = (load_file(tmp_path / run / "checkpoints" / f"step-{step:06d}" / "adapter_model.safetensors")
                for run in ("one", "fsdp"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step


def test_accelerate_fsdp2_config_turns_sharding_on(monkeypatch):
    """configs/accelerate/fsdp2.yaml, read by accelerate's own launcher, sets the environment that
    makes the trainer shard; an FSDP1 config is refused by name. The block classes it lists are
    diffusers' (vgen wraps the same blocks itself)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    from diffusers.models.transformers import sana_transformer, transformer_flux, transformer_sd3

    from vgen.errors import UserError
    from vgen.train.fsdp import requested

    args = launch_command_parser().parse_args(["--config_file", "configs/accelerate/fsdp2.yaml", "-m", "vgen.cli",
                                               "train", "configs/solrl/sd35_large.yaml"])
    args = _validate_launch_command(args)[0]
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if "FSDP" in k}
    assert not requested(False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert requested(False)
    for name in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
        assert any(hasattr(m, name) for m in (transformer_sd3, transformer_flux, sana_transformer)), name
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="fsdp_version 1"):
        requested(False)


def test_dry_run_counts_parameters_on_the_meta_device(model_dir, capsys):
    from peft import LoraConfig

    from vgen.models.load import load_policy
    from vgen.solrl.dryrun import LORA_TARGETS

    assert main(["train", "configs/solrl/tiny.yaml", f"model={model_dir}", "lora_rank=2", "--dry-run",
                 "--processes", "4"]) == 0
    out = capsys.readouterr().out
    tr = load_policy(model_dir).transformer  # the real model, for an independent count
    n = sum(p.numel() for p in tr.parameters())
    assert f"| transformer | {n / 1e6:,.1f} M |" in out
    tr.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=list(LORA_TARGETS)))
    lora = sum(p.numel() for name, p in tr.named_parameters() if "lora_" in name)
    assert f"| trainable (LoRA r=2) | {lora / 1e6:,.2f} M |" in out and "nvfp4 explore copy" in out
    assert "Per iteration: 2 prompts x 8 candidates explored (4 steps), 2 x 4 regenerated" in out
    assert main(["train", "configs/solrl/tiny.yaml", f"model={model_dir}", "family=diffusionnft", "explore_prompts=6",
                 "--dry-run"]) == 0
    assert ("6 prompts x 4 samples generated at the full step count, the 2 with the most reward spread kept, "
            "2 x 4 trained on") in capsys.readouterr().out


def test_prompt_file_training_holds_out_its_last_lines(tmp_path, model_dir, capsys):
    lines = [f"a photo of a {c} circle" for c in ("red", "green", "blue", "yellow", "purple")]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    assert _train(tmp_path, model_dir, "file", "iterations=1", f"prompts={tmp_path / 'p.txt'}",
                  "reward={jpeg_compressibility: 1.0}") == 0
    m = _metrics(tmp_path / "file", volatile=())
    assert "eval_reward" in m[0] and "eval_reward" in m[1]
    report = json.loads((tmp_path / "file" / "eval" / "step-000001" / "report.json").read_text())
    assert report["n_prompts"] == 2 and "reward" in report["rewards"]
    assert "held-out mean reward" in capsys.readouterr().out


def test_inner_epochs_take_several_steps_against_one_fixed_old_policy(tmp_path, model_dir):
    """inner_epochs=E: E optimizer steps per iteration (Adam's step count), each on fresh noise
    levels; the EMA old policy moves once per iteration, so the first epoch of a run equals a
    one-epoch run's only step, and the run still resumes exactly."""
    from vgen.train.checkpoint import latest_checkpoint, load_state

    bright = ["reward={test_brightness: 1.0}"]  # a spread in every group: every iteration steps

    assert _train(tmp_path, model_dir, "one", "iterations=2", *bright) == 0
    assert _train(tmp_path, model_dir, "three", "iterations=2", "inner_epochs=3", *bright) == 0
    st = load_state(latest_checkpoint(tmp_path / "three"))
    assert {int(s["step"]) for s in st["optimizer"]["state"].values()} == {6}
    one, three = _metrics(tmp_path / "one"), _metrics(tmp_path / "three")
    assert one[1]["reward_mean"] == three[1]["reward_mean"]  # the same samples before any update
    assert one[1]["loss"] != three[1]["loss"] and np.isfinite(three[2]["loss"])
    assert _train(tmp_path, model_dir, "cut", "iterations=1", "inner_epochs=3", *bright) == 0
    assert _train(tmp_path, model_dir, "cut", "iterations=2", "inner_epochs=3", *bright) == 0
    assert _metrics(tmp_path / "cut") == three
