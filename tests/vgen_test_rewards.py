"""`vgen` with one test-only reward registered, for tests that launch it in subprocesses (torchrun).

``flat_prompts``: 1.0 for every prompt listed (JSON) in ``VGEN_TEST_FLAT_PROMPTS``, so their groups have no
reward spread by construction, and the image's mean brightness for any other prompt. Which groups a run
trains on then does not hang on float rounding, which differs between CPU kinds (AVX2 / AVX-512)."""

import json
import os
import sys

import numpy as np

from vgen.cli import main
from vgen.rewards import registry


def flat_prompts():
    flat = set(json.loads(os.environ.get("VGEN_TEST_FLAT_PROMPTS", "[]")))

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return np.array([1.0 if p in flat else im.mean() / 255.0 for im, p in zip(images, prompts)], np.float32)
    return reward


if __name__ == "__main__":
    registry.register("flat_prompts", flat_prompts)
    sys.exit(main())
