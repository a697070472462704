"""The committed VARiant bases, built by tools/build_var_tiny.py --tokenizer: assets/var-deep-shapes
(16 blocks), assets/var-deep-w128-shapes (the same at twice the width), assets/var-d30-shapes (30 blocks, the
paper's VAR-d30 depth) and assets/var-d30-dp-shapes (the same, trained with stochastic depth as VAR-d30 was)."""

import json
from pathlib import Path

import pytest
import torch

from vgen.cli import main
from vgen.engine.scalewise import sample
from vgen.models.load import load
from vgen.models.var import switch_plan

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# folder, blocks, width, the subnet depths its VARiant config trains, that config
BASES = [("var-deep-shapes", 16, 64, (8, 4, 2), "configs/variant/deep.yaml"),
         ("var-deep-w128-shapes", 16, 128, (8, 4, 2), "configs/variant/deep-w128.yaml"),
         ("var-d30-shapes", 30, 64, (16, 8, 2), "configs/variant/d30.yaml"),
         ("var-d30-dp-shapes", 30, 64, (16, 8, 2), "configs/variant/d30-dp.yaml")]


@pytest.fixture(scope="module", params=BASES, ids=[b[0] for b in BASES])
def base(request):
    name, depth, width, depths, config = request.param
    return ASSETS / name, depth, width, depths, config, load(ASSETS / name)


def test_the_base_is_deep_small_safe_and_documented(base):
    folder, depth, width, _, _, m = base
    files = [f for f in folder.rglob("*") if f.is_file()]
    # the 25 MB for a VARiant base; the width probe (4.9M parameters) is 25.3 MB, held to 25 MiB
    assert sum(f.stat().st_size for f in files) <= (25 * 2**20 if width == 128 else 25e6)
    assert not [f for f in files if f.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert m.var.depth >= 12 and m.var.depth == depth and m.var.arch["embed_dim"] == width
    # the tokenizer is the tiny base's, reused unchanged
    tiny = load(ASSETS / "var-tiny-shapes", tokenizer_only=True).vqvae.state_dict()
    assert all(torch.equal(v, tiny[k]) for k, v in m.vqvae.state_dict().items())
    build = json.loads((folder / "config.json").read_text())["build"]
    assert build["minutes"] <= 120
    report = json.loads((folder / "eval" / "test" / "report.json").read_text())
    assert report["geneval_shapes"]["overall"]["strict"]["mean"] == pytest.approx(build["test"]["strict"])
    card = (folder / "README.md").read_text()
    assert f"{build['test']['strict']:.1%}" in card
    assert f"--var-config {build['var_config']}" in card  # the card's build command is the one that ran
    assert all(f" {o}" in card for o in build["var_overrides"])


def test_cached_sampling_equals_recompute_at_every_trained_depth(base):
    _, depth, _, depths, _, m = base
    for d in depths:
        plan = switch_plan(depth, 6, 3, d)
        kw = dict(cfg=m.sampling["cfg"], top_k=m.sampling["top_k"], decode_images=False, depth_plan=plan,
                  return_logits=True)
        a = sample(m.var, m.vqvae, [0, 11, 30], [3, 4, 5], **kw)
        b = sample(m.var, m.vqvae, [0, 11, 30], [3, 4, 5], use_cache=False, **kw)
        # The cache changes only float rounding (logits about 4e-6 apart), so a draw that lands within that
        # of a token boundary may differ (one token of 192 on the stochastic-depth base at depth 16, last
        # scale). Equal logits at every scale need equal tokens at every earlier scale.
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a.logits, b.logits)), f"depth {d}"
        assert all(torch.equal(x, y) for x, y in zip(a.tokens[:-1], b.tokens[:-1])), f"depth {d}"


def test_the_variant_recipe_plans_on_it(base, capsys):
    _, depth, width, _, config, _ = base
    assert main(["train", config, "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"recipe variant: VAR depth {depth}, width {width}")


def test_the_stochastic_depth_base_records_vars_own_rate():
    """VAR's rule, 0.1 x depth / 24 on the last block and linear from 0 on the first, kept by the folder so
    that supernet training on it keeps stochastic depth; the plain 30-block base has none."""
    m = load(ASSETS / "var-d30-dp-shapes")
    assert m.var.arch["drop_path_rate"] == pytest.approx(0.1 * 30 / 24)
    rates = [b.drop_path for b in m.var.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.125) and rates == sorted(rates)
    assert all(b.drop_path == 0 for b in load(ASSETS / "var-d30-shapes").var.blocks)
