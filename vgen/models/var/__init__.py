"""VAR-family models: the multi-scale VQ-VAE, the VAR / FlexVAR transformer, official checkpoint loading."""

from vgen.models.var.official import load_official
from vgen.models.var.var import VAR, block_causal_bias, subnet_indices, switch_plan
from vgen.models.var.vqvae import OFFICIAL_PATCH_NUMS, VQVAE

__all__ = ["OFFICIAL_PATCH_NUMS", "VAR", "VQVAE", "block_causal_bias", "load_official", "subnet_indices",
           "switch_plan"]
