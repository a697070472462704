"""Shared fixtures: tiny random-weight diffusers pipelines built locally (no downloads)."""

import os
import subprocess
import sys

import pytest
import torch


def gpu_marks(capability: tuple[int, int] = (0, 0), reason: str = "needs a CUDA GPU") -> list:
    """Marks of a test (or a parameter) that runs only on a CUDA GPU of at least ``capability``: marked
    ``gpu`` (``pytest -m gpu`` runs them, tools/device_check.py does so on a lent GPU), skipped elsewhere."""
    ok = torch.cuda.is_available() and torch.cuda.get_device_capability() >= capability
    return [pytest.mark.gpu, pytest.mark.skipif(not ok, reason=reason)]


def gpu_only(capability: tuple[int, int] = (0, 0), reason: str = "needs a CUDA GPU"):
    """``gpu_marks`` as a decorator."""
    def mark(test):
        for m in gpu_marks(capability, reason):
            test = m(test)
        return test
    return mark


@pytest.fixture(scope="session", autouse=True)
def _one_thread_session():
    """Every test runs on one torch thread, like the `vgen` subprocesses the tests compare with
    (OMP_NUM_THREADS=1) and faster for the tiny models than two contended threads. Stated once
    here, so no result depends on which test file happened to set it first."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_sd3_pipeline(seed: int = 0, with_t5: bool = False):
    """A genuine StableDiffusion3Pipeline with random weights, small enough for CPU tests."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from vgen.models.sd3 import null_t5
    from vgen.models.tokenizer import build_clip_tokenizer
    from vgen.world.grammar import _KNOWN

    torch.manual_seed(seed)
    tok = build_clip_tokenizer(sorted(_KNOWN), 16)

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=16, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32, shift_factor=0.1, scaling_factor=1.3,
                        use_quant_conv=False, use_post_quant_conv=False).eval()
    tr = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                               pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
                               qk_norm="rms_norm").eval()
    t5, t5_tok = null_t5(sorted(_KNOWN), 32, seed) if with_t5 else (None, None)
    return StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
                                    text_encoder=clip(), tokenizer=tok, text_encoder_2=clip(), tokenizer_2=tok,
                                    text_encoder_3=t5, tokenizer_3=t5_tok)


def transformer_forward(tr) -> torch.Tensor:
    """One fixed-input forward of an SD3 transformer: compares weights through what they compute."""
    c = tr.config
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return tr(hidden_states=torch.randn(2, c.in_channels, 8, 8, generator=g),
                  encoder_hidden_states=torch.randn(2, 5, c.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(2, c.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([500.0, 100.0]), return_dict=False)[0]


def launch_failure(stderr: str) -> str:
    """What a failed torchrun launch says about itself: the ranks' own last words (an abort's
    ``what():``, a Python traceback or the fault handler's stacks), which torchrun's long report
    would push out of a plain tail."""
    cut = stderr.find("failed (exitcode")
    return stderr[-4000:] if cut < 0 else stderr[max(0, cut - 4000):cut + 300]


def vgen_train(args: list[str], processes: int = 1, env: dict | None = None, script: str | None = None) -> None:
    """`vgen train` in ``processes`` CPU processes (torchrun on gloo beyond one), one thread each.
    Python's fault handler is on, so a rank that aborts (a rare SIGABRT at gloo teardown, seen in
    CI) prints every thread's stack: where it happened, not only that it did. ``script``: a file that
    runs `vgen` in place of ``-m vgen.cli`` (tests/vgen_test_rewards.py); ``env``: extra variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    entry = [script] if script else ["-m", "vgen.cli"]
    cmd = [sys.executable, *entry] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *entry]
    done = subprocess.run([*cmd, "train", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, launch_failure(done.stderr)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random SD3 pipeline saved as a local folder, as a user's model would be."""
    path = tmp_path_factory.mktemp("model")
    tiny_sd3_pipeline(with_t5=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd3_pipe():
    pipe = tiny_sd3_pipeline(with_t5=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_VAR_PN = (1, 2, 4)


def tiny_var_models(seed: int = 0, flex: bool = False, patch_nums=TINY_VAR_PN, depth: int = 2):
    """A random multi-scale VQ-VAE for 16x16 images (4x4 latent) and a ``depth``-block VAR over the
    world's 70 class prompts, both built by folder.build_* so they can be saved."""
    from vgen.models.var.folder import build_var, build_vqvae
    from vgen.world.datasets import CLASS_PROMPTS

    torch.manual_seed(seed)
    vae = build_vqvae(dict(vocab_size=32, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                           patch_nums=list(patch_nums), residual=not flex, using_sa=False, using_mid_sa=False,
                           norm_groups=8)).eval()
    var = build_var(dict(vocab_size=32, Cvae=8, num_classes=len(CLASS_PROMPTS), depth=depth, embed_dim=32, num_heads=2,
                         patch_nums=list(patch_nums), flex=flex)).eval()
    var.init_weights()
    return vae, var


@pytest.fixture(scope="session")
def var_model_dir(tmp_path_factory):
    """A tiny random VAR model folder (tokenizer + transformer, 16x16 images), as `vgen sample` loads."""
    from vgen.models.var.folder import save_var_model
    from vgen.world.datasets import CLASS_PROMPTS

    vae, var = tiny_var_models()
    return save_var_model(tmp_path_factory.mktemp("var") / "model", vae, var, CLASS_PROMPTS, 16,
                          {"cfg": 1.5, "top_k": 0, "top_p": 0.0})


@pytest.fixture(scope="session")
def var_tokenizer_dir(tmp_path_factory):
    """The same tiny tokenizer alone (a tokenizer-only folder, as the var recipe's ``tokenizer``)."""
    from vgen.models.var.folder import save_var_model
    from vgen.world.datasets import CLASS_PROMPTS

    vae, _ = tiny_var_models()
    return save_var_model(tmp_path_factory.mktemp("vartok") / "tokenizer", vae, None, CLASS_PROMPTS, 16)
