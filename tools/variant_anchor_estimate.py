"""How well VARiant's anchor estimates what supernet training did to the full path.

    python tools/variant_anchor_estimate.py MODEL [MODEL ...] [key=value ...] [--config configs/variant/d30.yaml]

The anchor (``anchor=A``) stands for the full path's loss increase over the base by the quadratic
1/2 sum_i F_i (theta_i - theta*_i)^2, F the base full path's diagonal empirical Fisher. For each trained
model folder this prints that estimate, with F computed exactly as a run of ``--config`` computes it
(its base, training items, seed, ``anchor_samples``, label smoothing), and the rise it stands for: the
full path's held-out CE on the run's validation images, the folder's minus the base's. Their ratio is
the factor by which the estimate falls short, which sets the scale of A.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="trained model folders (e.g. runs/NAME/model), then any key=value "
                    "overrides of the config")
    ap.add_argument("--config", default="configs/variant/d30.yaml")
    a = ap.parse_args()
    import torch

    from vgen import config
    from vgen.models.load import load
    from vgen.variant.recipe import VariantConfig, base_anchor
    from vgen.vartrain.data import open_data
    from vgen.vartrain.recipe import held_out

    overrides = [m for m in a.models if "=" in m]
    cfg = config.load(VariantConfig, a.config, overrides, recipe="variant")
    cfg.check()
    cfg.progress = False
    base = load(cfg.init)
    train, val, _ = open_data(cfg, base.vqvae, True)
    anchor = base_anchor(cfg, base.var, base.vqvae, train)
    cpu = torch.device("cpu")
    base_ce = held_out(base.var, base.vqvae, val, cpu)["val_loss"]
    print(f"base {cfg.init}: held-out CE {base_ce:.4f} (Fisher over {cfg.anchor_samples} training items)")
    print("| model | anchor's estimate (nats) | held-out CE | rise over the base | rise / estimate |")
    print("|---|---|---|---|---|")
    for m in (m for m in a.models if "=" not in m):
        var = load(m).var
        with torch.no_grad():
            est = anchor.penalty(var).item()
        ce = held_out(var, base.vqvae, val, cpu)["val_loss"]
        ratio = f"{(ce - base_ce) / est:.0f}" if est > 0 else "-"
        print(f"| {m} | {est:.5f} | {ce:.4f} | {ce - base_ce:+.4f} | {ratio} |")


if __name__ == "__main__":
    main()
