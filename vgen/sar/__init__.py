"""SAR (stagger-scale rollout + contrastive student-forcing loss) post-training of VAR / FlexVAR."""

from vgen.sar.losses import SARLoss, SARSettings, predicted_tokens, sar_loss, sar_ramp

__all__ = ["SARLoss", "SARSettings", "predicted_tokens", "sar_loss", "sar_ramp"]
