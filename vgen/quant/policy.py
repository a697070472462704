"""Which linear layers of a denoiser run in low precision (the module policy).

Quantized: attention projections and MLP linears inside transformer blocks. Kept in high
precision: everything outside the blocks (patch / time / text / pooled embedders, the final
norm and output projection), adaLN modulation and norm linears inside the blocks, every
convolution, layers too small to gain (either side < ``min_features``) and layers whose
input width is not a multiple of 16 (NVFP4's block). VAEs and text encoders are never
handed to the policy. Name patterns (fnmatch, on the module's qualified name) override:
``include`` forces a linear in, ``exclude`` keeps it out, exclude winning.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

from torch import nn

BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.", "blocks.", "layers.")
HIGH_PRECISION = ("*norm*", "*emb*", "*adaln*", "*modulation*", "*time*", "*guidance*")


@dataclass(frozen=True)
class Decision:
    name: str
    params: int
    quantize: bool
    reason: str


def decide(name: str, module: nn.Linear, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
           min_features: int = 64) -> Decision:
    n = module.weight.numel()
    low = name.lower()
    if any(fnmatch(name, p) for p in exclude):
        return Decision(name, n, False, "excluded by pattern")
    if module.in_features % 16:
        return Decision(name, n, False, f"in_features {module.in_features} not a multiple of 16")
    if any(fnmatch(name, p) for p in include):
        return Decision(name, n, True, "included by pattern")
    if not any(p in f".{name}" for p in (f".{b}" for b in BLOCK_PREFIXES)):
        return Decision(name, n, False, "outside the transformer blocks")
    if any(fnmatch(low, p) for p in HIGH_PRECISION):
        return Decision(name, n, False, "norm / embedding / modulation")
    if min(module.in_features, module.out_features) < min_features:
        return Decision(name, n, False, f"smaller than {min_features} features")
    return Decision(name, n, True, "attention or MLP linear in a block")


def plan(model: nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
         min_features: int = 64) -> list[Decision]:
    """A decision for every nn.Linear of ``model`` (other modules always stay as they are)."""
    return [decide(name, m, include, exclude, min_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear)]


def summary(decisions: list[Decision], total_params: int) -> str:
    q = sum(d.params for d in decisions if d.quantize)
    lines = [f"{'Q' if d.quantize else '-'} {d.name:60s} {d.params:>10,d}  {d.reason}" for d in decisions]
    lines.append(f"{sum(d.quantize for d in decisions)} of {len(decisions)} linears quantized; "
                 f"{q:,d} of {total_params:,d} parameters ({q / max(total_params, 1):.1%})")
    return "\n".join(lines)
