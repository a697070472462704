"""The committed VARiant base (assets/var-deep-shapes: 16 blocks, built by tools/build_var_tiny.py --tokenizer)."""

import json
from pathlib import Path

import pytest
import torch

from vgen.cli import main
from vgen.engine.scalewise import sample
from vgen.models.load import load
from vgen.models.var import switch_plan

BASE = Path(__file__).resolve().parents[1] / "assets" / "var-deep-shapes"


@pytest.fixture(scope="module")
def base():
    return load(BASE)


def test_the_base_is_deep_small_safe_and_documented(base):
    files = [f for f in BASE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25e6
    assert not [f for f in files if f.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert base.var.depth >= 12 and base.var.depth == 16
    # the tokenizer is the tiny base's, reused unchanged
    tiny = load(BASE.parent / "var-tiny-shapes", tokenizer_only=True).vqvae.state_dict()
    assert all(torch.equal(v, tiny[k]) for k, v in base.vqvae.state_dict().items())
    build = json.loads((BASE / "config.json").read_text())["build"]
    assert build["minutes"] <= 120
    report = json.loads((BASE / "eval" / "test" / "report.json").read_text())
    assert report["geneval_shapes"]["overall"]["strict"]["mean"] == pytest.approx(build["test"]["strict"])
    assert f"{build['test']['strict']:.1%}" in (BASE / "README.md").read_text()


@pytest.mark.parametrize("depth", [8, 4, 2])
def test_cached_sampling_equals_recompute_at_every_trained_depth(base, depth):
    plan = switch_plan(16, 6, 3, depth)
    kw = dict(cfg=base.sampling["cfg"], top_k=base.sampling["top_k"], decode_images=False, depth_plan=plan)
    a = sample(base.var, base.vqvae, [0, 11, 30], [3, 4, 5], **kw)
    b = sample(base.var, base.vqvae, [0, 11, 30], [3, 4, 5], use_cache=False, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))


def test_the_variant_recipe_plans_on_it(capsys):
    assert main(["train", "configs/variant/deep.yaml", "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe variant: VAR depth 16, width 64")
