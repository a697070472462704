"""FLUX.1 and SANA transformers behind the engine, against their own diffusers pipelines.

Tiny random configs of the real diffusers classes; the pipelines get the same prompt
embeddings and initial noise, so their ``__call__`` is an independent reference.
"""

import pytest
import torch

from vgen.engine import rollout
from vgen.engine.seeds import initial_noise
from vgen.models.flux import FluxPolicy
from vgen.models.sana import SanaPolicy

PROMPTS = ["", "a photo of a red circle", "a photo of two squares"]


def _table(dim_seq: int, dim: int, extra: dict[str, tuple[int, ...]], seed: int = 0):
    """Fixed random embeddings per prompt, standing in for the text encoders."""
    g = torch.Generator().manual_seed(seed)
    rows = {k: torch.randn(len(PROMPTS), *shape, generator=g) for k, shape in extra.items()}
    rows["ctx"] = torch.randn(len(PROMPTS), dim_seq, dim, generator=g)

    def encode(prompts):
        idx = torch.tensor([PROMPTS.index(p) for p in prompts])
        return {k: v[idx] for k, v in rows.items()}

    return encode


@pytest.fixture(scope="module")
def flux():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, shift_factor=0.1, scaling_factor=0.5,
                        use_quant_conv=False, use_post_quant_conv=False).eval()
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    encode = _table(8, 32, {"pooled": (16,)})
    return pipe, FluxPolicy(tr, sched, vae, encode, distilled_guidance=3.5, vae_scale_factor=pipe.vae_scale_factor)


@pytest.mark.parametrize("true_cfg", [1.0, 2.5])
def test_flux_policy_equals_flux_pipeline(flux, true_cfg):
    from diffusers import FluxPipeline

    pipe, policy = flux
    prompts, seeds = PROMPTS[1:], [11, 12]
    out = rollout(policy, prompts, seeds, steps=4, guidance=true_cfg, height=32, width=32)
    emb, neg = policy.encode(prompts), policy.encode(["", ""])
    noise = initial_noise(seeds, policy.latent_shape(32, 32))
    packed = FluxPipeline._pack_latents(noise, 2, *noise.shape[1:])
    extra = {}
    if true_cfg > 1:
        extra = {"negative_prompt_embeds": neg["ctx"], "negative_pooled_prompt_embeds": neg["pooled"],
                 "true_cfg_scale": true_cfg}
    ref = pipe(prompt_embeds=emb["ctx"], pooled_prompt_embeds=emb["pooled"], latents=packed, num_inference_steps=4,
               guidance_scale=3.5, height=32, width=32, output_type="pt", **extra).images
    assert (out.images - ref).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def sana():
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    tr = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                cross_attention_dim=16, caption_channels=12, mlp_ratio=2.0, sample_size=8,
                                patch_size=1).eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=tr, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    encode = _table(6, 12, {"mask": (6,)})

    def with_mask(prompts):
        e = encode(prompts)
        e["mask"] = torch.ones_like(e["mask"])
        return e

    return pipe, SanaPolicy(tr, sched, None, with_mask, vae_scale_factor=32)


def test_sana_policy_equals_sana_pipeline(sana):
    pipe, policy = sana
    prompts, seeds = PROMPTS[1:], [5, 6]
    out = rollout(policy, prompts, seeds, steps=4, guidance=4.5, height=256, width=256, decode=False)
    emb, neg = policy.encode(prompts), policy.encode(["", ""])
    noise = initial_noise(seeds, policy.latent_shape(256, 256))
    ref = pipe(prompt_embeds=emb["ctx"], prompt_attention_mask=emb["mask"], negative_prompt=None,
               negative_prompt_embeds=neg["ctx"], negative_prompt_attention_mask=neg["mask"], latents=noise,
               num_inference_steps=4, guidance_scale=4.5, height=256, width=256, output_type="latent",
               use_resolution_binning=False).images
    assert (out.latents - ref).abs().max() <= 1e-4


def test_sde_rollouts_run_for_every_family(flux, sana):
    for policy, size in ((flux[1], 32), (sana[1], 256)):
        out = rollout(policy, PROMPTS[1:], [1, 2], steps=3, guidance=1.0, height=size, width=size, sde=True,
                      record=True, decode=False)
        assert torch.isfinite(out.log_probs).all() and out.trajectory.shape[1] == 4
