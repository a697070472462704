"""VARiant: one VAR network that switches depth at run time, and its (progressive) supernet training."""

from vgen.variant.losses import VariantLoss, variant_loss
from vgen.variant.schedule import Schedule, path_at, plan_for

__all__ = ["Schedule", "VariantLoss", "path_at", "plan_for", "variant_loss"]
