"""vgen: post-training for visual generative models (diffusion and scale-wise AR)."""

from vgen import _quiet  # noqa: F401  (first: known harmless library start-up messages; see vgen/_quiet.py)

__version__ = "0.1.0"
