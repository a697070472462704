"""tools/variant_restore_probe.py: which tensors each group takes from the base."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_restore_probe as R  # noqa: E402

from vgen.models.var import subnet_indices  # noqa: E402


def test_groups_split_the_blocks_by_who_trains_them():
    D = 16
    subnet = set().union(*(subnet_indices(D, d) for d in (8, 4, 2)))
    g = R.groups(D, subnet)
    assert g["end blocks"] == {0, 15} and g["none"] == set()
    assert g["other subnet blocks"] == {2, 4, 5, 6, 8, 10, 12}
    assert g["full-only blocks"] == {1, 3, 7, 9, 11, 13, 14}
    blocks = [g[k] for k in ("end blocks", "other subnet blocks", "full-only blocks")]
    assert set().union(*blocks) == set(range(D)) and sum(map(len, blocks)) == D  # a partition


def test_restored_takes_exactly_the_groups_tensors_from_the_base():
    names = ["blocks.0.ffn.fc1.weight", "blocks.1.attn.proj.weight", "blocks.12.ada_lin.1.bias", "head.weight",
             "class_emb.weight"]
    trained = {k: torch.ones(2) for k in names}
    base = {k: torch.zeros(2) for k in names}

    def from_base(group):
        return {k for k, v in R.restored(trained, base, group).items() if v.sum() == 0}

    assert from_base({0, 12}) == {"blocks.0.ffn.fc1.weight", "blocks.12.ada_lin.1.bias"}  # not blocks.1
    assert from_base({1}) == {"blocks.1.attn.proj.weight"}
    assert from_base("rest") == {"head.weight", "class_emb.weight"}
    assert from_base("all") == set(names) and from_base(set()) == set()
