"""Would an int8 explore copy give Sol-RL on a VAR a cheap explore pass on a CPU?

    OMP_NUM_THREADS=1 taskset -c 0 python tools/solrl_var_int8_probe.py [assets/var-tiny-shapes]
        [--classes 24] [--candidates 16] [--k 4] [--repeats 2] [--seed 3000000]

On a CPU without native bf16 (AVX2, no AVX512-BF16 / AMX) ``auto`` explores in fp32, so the explore
pass costs what the policy's own sampling does. fbgemm's dynamic int8 linears (W8A8, one activation
scale per tensor) are any x86 CPU's cheap matmul. This runs the explore pass of
`configs/solrl_var/learn.yaml` (Gumbel draw, seeds from ``--seed``, never the test seeds) with the
fp32 copy, the bf16 one where the CPU has native bf16, and int8 copies of the module policy's
linears (weights per tensor or per output channel; all targets or the MLP's only), and ranks them
as ``tools/solrl_var_preview_probe.py`` does against the fp32 policy's samples of the same seeds:
Kendall tau, top overlap, the contrast the pick keeps. A probe, not a backend: it uses
``torch.ao.quantization.quantize_dynamic``, which torch deprecates in favour of torchao, whose int8
linears ran slower than fp32 on these CPUs.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from solrl_var_preview_probe import contrast, explore_pass, pass_arguments

    a = pass_arguments(__doc__.split("\n\n")[0]).parse_args()
    import torch

    from vgen.bench.timing import best_times, where
    from vgen.errors import UserError
    from vgen.eval.ranking import agreement, tau_text
    from vgen.models.load import load
    from vgen.quant.backends import cpu_bf16_native
    from vgen.quant.policy import plan
    from vgen.sample import var_settings
    from vgen.solrl.recipe import build_reward, score_groups
    from vgen.solrl.var_recipe import Policy, _explore_copy, _generate

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao's notices, once per call
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
    try:
        m = load(a.model)
    except UserError as e:  # a bad model folder: one line
        sys.exit(f"solrl_var_int8_probe: {e}")
    pol = Policy(m.var, m.vqvae, list(m.classes), m.resolution, var_settings(m.sampling), [], False)
    targets = [d.name for d in plan(m.var, min_features=64) if d.quantize]
    qc = torch.ao.quantization

    def int8(names, qconfig):  # (transformer, VQ-VAE): the VQ-VAE stays fp32
        return qc.quantize_dynamic(copy.deepcopy(m.var), {n: qconfig for n in names}, dtype=torch.qint8), m.vqvae

    mlp = [t for t in targets if ".ffn." in t]
    copies = {"fp32": (m.var, m.vqvae)}
    if cpu_bf16_native():
        copies["bf16 (transformer and VQ-VAE)"] = _explore_copy(pol, "bf16")
    copies |= {"int8, per tensor, all targets": int8(targets, qc.default_dynamic_qconfig),
               "int8, per channel, all targets": int8(targets, qc.per_channel_dynamic_qconfig),
               "int8, per channel, MLP only": int8(mlp, qc.per_channel_dynamic_qconfig)}
    classes, seeds, names, h = explore_pass(a, m)
    reward = build_reward({"shapes": 1.0}, {})

    def explore(pair):
        return lambda: _generate(*pair, classes, seeds, pol.sampling, logprobs=False, draw_rule="gumbel").images

    t = best_times({b: explore(v) for b, v in copies.items()}, a.repeats)
    full = score_groups(reward, explore(copies["fp32"])(), names)
    oracle = contrast(full, full, h).mean()
    print(f"{a.model}: Gumbel explore pass of {a.classes} classes x {a.candidates} candidates (seeds {a.seed}+), "
          f"{where('cpu')}, {len(targets)} linears in the module policy ({len(mlp)} in MLPs); against the fp32 "
          f"policy's samples, top / bottom {h} of each class")
    print("| explore copy | explore s | faster than fp32 | tau | top overlap | contrast kept |")
    print("|---|---|---|---|---|---|")
    for b, pair in copies.items():
        r = score_groups(reward, explore(pair)(), names)
        ag = agreement(r, full, h)
        print(f"| {b} | {t[b]:.2f} | {t['fp32'] / t[b]:.2f}x | {tau_text(ag)} | "
              f"{ag[f'top{h}_overlap_mean']:.2f} | {contrast(r, full, h).mean() / max(oracle, 1e-9):.0%} |")


if __name__ == "__main__":
    main()
