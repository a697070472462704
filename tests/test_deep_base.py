"""The committed VARiant bases, built by tools/build_var_tiny.py --tokenizer: assets/var-deep-shapes
(16 blocks) and assets/var-d30-shapes (30 blocks, the paper's VAR-d30 depth)."""

import json
from pathlib import Path

import pytest
import torch

from vgen.cli import main
from vgen.engine.scalewise import sample
from vgen.models.load import load
from vgen.models.var import switch_plan

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# folder, blocks, the subnet depths its VARiant config trains, that config
BASES = [("var-deep-shapes", 16, (8, 4, 2), "configs/variant/deep.yaml"),
         ("var-d30-shapes", 30, (16, 8, 2), "configs/variant/d30.yaml")]


@pytest.fixture(scope="module", params=BASES, ids=[b[0] for b in BASES])
def base(request):
    name, depth, depths, config = request.param
    return ASSETS / name, depth, depths, config, load(ASSETS / name)


def test_the_base_is_deep_small_safe_and_documented(base):
    folder, depth, _, _, m = base
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25e6
    assert not [f for f in files if f.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert m.var.depth >= 12 and m.var.depth == depth
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
    _, depth, depths, _, m = base
    for d in depths:
        plan = switch_plan(depth, 6, 3, d)
        kw = dict(cfg=m.sampling["cfg"], top_k=m.sampling["top_k"], decode_images=False, depth_plan=plan)
        a = sample(m.var, m.vqvae, [0, 11, 30], [3, 4, 5], **kw)
        b = sample(m.var, m.vqvae, [0, 11, 30], [3, 4, 5], use_cache=False, **kw)
        assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens)), f"depth {d}"


def test_the_variant_recipe_plans_on_it(base, capsys):
    _, depth, _, config, _ = base
    assert main(["train", config, "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"recipe variant: VAR depth {depth}, width 64")
