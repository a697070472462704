"""The shared rollout engine: seeded noise, flow-matching steps with log-probs, batched rollouts."""

from vgen.engine.flow import gaussian_log_prob, ode_step, sde_std, sde_step
from vgen.engine.rollout import Rollout, conditioning, rollout, step_log_prob

__all__ = ["Rollout", "conditioning", "gaussian_log_prob", "ode_step", "rollout", "sde_std", "sde_step",
           "step_log_prob"]
