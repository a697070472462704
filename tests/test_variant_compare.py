"""tools/variant_compare.py: an evaluation already in the folder is reused only if it sampled as asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import variant_compare as C  # noqa: E402


def test_an_evaluation_on_other_seeds_or_settings_is_not_reused(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"cfg": 3.0, "top_k": 40, "top_p": 0.0,
                                                      "seeds": list(range(100, 110))}))
    asked = {"cfg": 3.0, "top_k": 40, "top_p": 0.0, "seeds": list(range(100, 110))}
    assert C.same_sampling(tmp_path, asked)
    assert not C.same_sampling(tmp_path, {**asked, "seeds": list(range(500, 510))})  # fresh test seeds
    assert not C.same_sampling(tmp_path, {**asked, "cfg": 4.5})
