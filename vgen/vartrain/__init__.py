"""Recipe ``var``: class-conditional VAR / FlexVAR teacher-forcing training (recipe.py), with the
token losses (losses.py) and data (data.py) every VAR-family recipe shares."""

from vgen.vartrain.data import Data, batch_indices, flex_scale_list, label_drops, open_data, tokenize_dataset
from vgen.vartrain.losses import TFLoss, tf_loss, tf_loss_from_tokens, token_ce, token_weights, tokenize
from vgen.vartrain.recipe import VARTrainConfig, held_out, make_optimizer, run, sample_grid

__all__ = ["Data", "TFLoss", "VARTrainConfig", "batch_indices", "flex_scale_list", "held_out", "label_drops",
           "make_optimizer", "open_data", "run", "sample_grid", "tf_loss", "tf_loss_from_tokens", "token_ce",
           "token_weights", "tokenize", "tokenize_dataset"]
