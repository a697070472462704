"""The rollout engine against diffusers itself and against closed-form densities."""

import math

import pytest
import torch

from vgen.engine import rollout, step_log_prob
from vgen.engine.flow import sde_step
from vgen.engine.seeds import generator_seed, initial_noise
from vgen.models.sd3 import SD3Policy
from vgen.world.grammar import sample_prompts

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a circle left of a diamond"]


@pytest.fixture(scope="module")
def policy(sd3_pipe):
    return SD3Policy(sd3_pipe)


def test_initial_noise_is_what_diffusers_draws_for_the_same_seeds(sd3_pipe):
    from diffusers.utils.torch_utils import randn_tensor

    seeds = [3, 99, 12345]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(initial_noise(seeds, (4, 8, 8)), randn_tensor((3, 4, 8, 8), generator=gens))


def test_seeds_2_pow_32_apart_draw_different_noise():
    """torch's CPU generator keeps 32 bits of its seed: item_seed(1, i) = 2**32 + i must not
    replay seed i (it did: every eval seed drew the same noise)."""
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(2**32 + 5)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))  # the pitfall itself
    seeds = [5, 2**32 + 5, 2 * 2**32 + 5, 2**62 + 5]
    noise = initial_noise(seeds, (4, 2, 2))
    assert all(not torch.equal(noise[i], noise[j]) for i in range(4) for j in range(i))
    assert generator_seed(2**32 - 1) == 2**32 - 1 and all(0 <= generator_seed(s) < 2**32 for s in seeds)


@pytest.mark.parametrize("fold, shift, guidance", [(True, None, 4.5), (False, 3.0, 4.5), (True, 2.0, 1.0)])
def test_ode_rollout_equals_the_pipeline_call(sd3_pipe, fold, shift, guidance):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pol = SD3Policy(sd3_pipe, fold_zero_tokens=fold)
    seeds = [1, 2, 3]
    out = rollout(pol, PROMPTS, seeds, steps=6, guidance=guidance, shift=shift, height=32, width=32)
    original = sd3_pipe.scheduler
    try:
        if shift is not None:
            sd3_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(original.config, shift=shift)
        ref = sd3_pipe(PROMPTS, latents=initial_noise(seeds, pol.latent_shape(32, 32)), num_inference_steps=6,
                       guidance_scale=guidance, height=32, width=32, output_type="pt").images
    finally:
        sd3_pipe.scheduler = original
    assert (out.images - ref).abs().max() <= 1e-4


def test_a_sample_is_bit_identical_alone_in_a_batch_and_in_chunks(policy):
    prompts = sample_prompts("train", 64, seed=4)
    seeds = list(range(500, 564))
    batch = rollout(policy, prompts, seeds, steps=3, guidance=3.0, height=32, width=32)
    chunks = rollout(policy, prompts, seeds, steps=3, guidance=3.0, height=32, width=32, chunk_size=7)
    assert torch.equal(batch.latents, chunks.latents) and torch.equal(batch.images, chunks.images)
    for i in (0, 17, 63):
        alone = rollout(policy, [prompts[i]], [seeds[i]], steps=3, guidance=3.0, height=32, width=32)
        assert torch.equal(alone.latents[0], batch.latents[i]) and torch.equal(alone.images[0], batch.images[i])


def test_sde_log_prob_is_the_gaussian_density(policy):
    """The step's log-prob against torch.distributions in float64, from the recorded latents."""
    out = rollout(policy, PROMPTS, [7, 8, 9], steps=4, guidance=1.0, height=32, width=32, sde=True,
                  noise_level=0.7, record=True)
    assert out.log_probs.shape == (3, 4) and out.trajectory.shape == (3, 5, *policy.latent_shape(32, 32))
    s = out.sigmas.double()
    for k in range(4):
        x, x_next = out.trajectory[:, k].double(), out.trajectory[:, k + 1].double()
        v = policy.velocity(x.float(), out.timesteps[k].expand(3), policy.encode(PROMPTS)).double()
        sk = s[k] if s[k] < 1 else s[1]  # the documented cap at s = 1
        sig = 0.7 * math.sqrt(s[k] / (1 - sk))
        dt = s[k + 1] - s[k]
        mean = x * (1 + sig**2 * dt / (2 * s[k])) + v * (1 + sig**2 * (1 - s[k]) / (2 * s[k])) * dt
        std = sig * math.sqrt(-dt)
        ref = torch.distributions.Normal(mean, std).log_prob(x_next).flatten(1).mean(1)
        assert (out.log_probs[:, k].double() - ref).abs().max() <= 1e-5


def test_on_policy_ratio_is_one(policy):
    out = rollout(policy, PROMPTS, [4, 5, 6], steps=4, guidance=3.0, height=32, width=32, sde=True, record=True)
    for k in range(4):
        new = step_log_prob(policy, out.trajectory[:, k], out.trajectory[:, k + 1], k, out.sigmas, out.timesteps,
                            PROMPTS, 3.0, 0.7)
        assert (torch.exp(new - out.log_probs[:, k]) - 1).abs().max() <= 1e-6


def test_sde_step_with_zero_noise_is_its_mean_and_odes_are_deterministic(policy):
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x1, lp = sde_step(x, v, torch.tensor(0.6), torch.tensor(0.4), torch.zeros_like(x), 0.7, 0.9)
    std = 0.7 * math.sqrt(0.6 / 0.4) * math.sqrt(0.2)
    assert torch.allclose(lp, torch.full((2,), -math.log(std) - 0.5 * math.log(2 * math.pi)), atol=1e-6)
    a = rollout(policy, PROMPTS[:1], [1], steps=2, guidance=2.0, height=32, width=32)
    b = rollout(policy, PROMPTS[:1], [1], steps=2, guidance=2.0, height=32, width=32)
    assert torch.equal(a.images, b.images) and a.log_probs is None and a.trajectory is None


def test_bad_arguments(policy):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        rollout(policy, PROMPTS[:2], [1], steps=2)
    with pytest.raises(Exception, match="multiples of 4"):
        rollout(policy, PROMPTS[:1], [1], steps=2, height=34, width=32)


def test_a_memory_budget_only_changes_chunking(policy):
    from vgen.engine.rollout import chunk_for_budget

    shape = policy.latent_shape(32, 32)
    small = chunk_for_budget(policy, shape, steps=3, cfg=True, record=True, budget_mb=1)
    large = chunk_for_budget(policy, shape, steps=3, cfg=True, record=True, budget_mb=1024)
    assert 1 <= small < large
    prompts, seeds = PROMPTS * 4, list(range(12))
    a = rollout(policy, prompts, seeds, steps=3, guidance=2.0, height=32, width=32, memory_budget_mb=1)
    b = rollout(policy, prompts, seeds, steps=3, guidance=2.0, height=32, width=32)
    assert torch.equal(a.images, b.images)
