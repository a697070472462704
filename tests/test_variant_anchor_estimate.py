"""tools/variant_anchor_estimate.py: the anchor's estimate of a folder against its held-out CE rise."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_anchor_estimate as A  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_base_estimates_zero_and_a_moved_copy_its_penalty_and_ce_rise(tmp_path, monkeypatch, capsys):
    from vgen.models.load import load
    from vgen.models.var.folder import save_var_model
    from vgen.variant.anchor import full_path_fisher
    from vgen.vartrain.data import Data, batch_indices
    from vgen.vartrain.recipe import held_out
    from vgen.world.datasets import ShapesClassDataset

    base = load("assets/var-tiny-shapes")
    moved = load("assets/var-tiny-shapes")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.var.parameters():
            p.add_(0.003 * torch.randn(p.shape, generator=g))
    folder = save_var_model(tmp_path / "moved", moved.vqvae, moved.var, moved.classes, moved.resolution,
                            moved.sampling)
    monkeypatch.setattr(sys, "argv", ["a", "assets/var-tiny-shapes", str(folder), "data_size=32", "val_size=6",
                                      "anchor_samples=3", "--config", str(ROOT / "configs/variant/tiny.yaml")])
    A.main()
    rows = [r.split(" | ") for r in capsys.readouterr().out.splitlines()[3:]]
    assert rows[0][1:] == ["0.00000", rows[0][2], "+0.0000", "- |"]
    # independently: the recipe's training items (data seed 0) from (seed 0, step 0), its validation items (seed 1)
    train = Data(base.vqvae, ShapesClassDataset(32, base.resolution, 0), False)
    anchor = full_path_fisher(base.var, base.vqvae, train, batch_indices(0, 0, 3, 32))
    assert float(rows[1][1]) == round(anchor.penalty(moved.var).item(), 5) > 0
    val = Data(base.vqvae, ShapesClassDataset(6, base.resolution, 1), False)
    ce = held_out(moved.var, moved.vqvae, val, torch.device("cpu"))["val_loss"]
    base_ce = held_out(base.var, base.vqvae, val, torch.device("cpu"))["val_loss"]
    assert float(rows[1][2]) == round(ce, 4) and float(rows[1][3]) == round(ce - base_ce, 4)
