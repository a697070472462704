"""tools/var_sample_split.py: the sampler's phases timed, and everything it patched put back."""

import sys
from collections import defaultdict
from pathlib import Path

import torch

import vgen.engine.scalewise as sw
from vgen.sample import load_var

TOOLS = str(Path(__file__).resolve().parents[1] / "tools")


def test_timed_counts_every_phase_and_puts_the_sampler_back(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)
    from var_sample_split import PHASES, timed

    m = load_var("assets/var-tiny-shapes")
    functions = {n: getattr(sw, n) for n in ("cfg_mix", "filter_logits", "draw", "decode")}
    into, per_scale = defaultdict(float), defaultdict(float)
    with timed(m.var, m.vqvae, into, per_scale), torch.inference_mode():
        sw.sample(m.var, m.vqvae, [0, 1], [0, 1], cfg=1.5, top_k=10)
    assert all(into[p] > 0 for p in PHASES), dict(into)
    assert sorted(per_scale) == sorted(pn * pn for pn in m.var.check_patch_nums(None))
    assert {n: getattr(sw, n) for n in functions} == functions
    assert not {"step", "logits"} & set(m.var.__dict__) and "next_input" not in m.vqvae.quantize.__dict__


def test_split_table_has_both_plans(monkeypatch, capsys):
    monkeypatch.syspath_prepend(TOOLS)
    import var_sample_split

    monkeypatch.setattr(sys, "argv", ["split", "assets/var-tiny-shapes", "--depth", "2", "--batch", "3",
                                      "--repeats", "1", "--threads", "1"])
    var_sample_split.main()
    out = capsys.readouterr().out
    rows = {r.split(" | ")[0][2:]: [float(v.strip(" |*")) for v in r.split(" | ")[1:]]
            for r in out.splitlines() if r.startswith("| ") and not r.startswith("| phase")}
    assert set(var_sample_split.PHASES) <= set(rows)
    full, sub = rows["blocks"]
    assert full > sub > 0  # 6 blocks on every scale against 2 after the switch
    assert "GFLOP per image" in out and "makes" in out
