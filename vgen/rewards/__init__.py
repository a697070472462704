"""Rewards: ``reward(images, prompts) -> float32 (B,)``, by name, weighted sums of them, and background scoring.

See ``registry.py`` for the contract, ``builtin.py`` for the weight-free rewards and ``models.py`` for the learned ones.
"""

from vgen.rewards.registry import (
    ENTRY_POINT_GROUP,
    AsyncReward,
    Reward,
    WeightedSum,
    as_images,
    available,
    build,
    get_reward,
    register,
)

__all__ = ["ENTRY_POINT_GROUP", "AsyncReward", "Reward", "WeightedSum", "as_images", "available", "build",
           "get_reward", "register"]
