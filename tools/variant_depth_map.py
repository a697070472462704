"""VARiant's motivating observation on a vgen base: how much quality a subnet costs when it runs from scale k on.

    python tools/variant_depth_map.py [--model assets/var-deep-shapes] [--depths 8 4 2] [--seeds 100-109]
                                      [--val-size 700] [--out runs/variant-map]

For every subnet depth d and every switch scale k (scales >= k run the equidistant subnet of d
blocks, ``switch_plan``; earlier scales all D blocks), with no training at all:

* FID-shapes and GenEval-Shapes strict of every class x ``--seeds`` sample seeds (vgen's VAR
  evaluator, the model's own CFG / top-k), against the full network on the same seeds;
* the held-out teacher-forcing CE per scale (``--val-size`` held-out scenes, data seed 1, the
  ``var`` recipe's held-out set): which scales the subnet hurts.

Writes ``report.json``, ``report.md`` (tables) and ``heatmap.png`` (FID-shapes and strict accuracy
over d x k) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def held_out_ce(var, vqvae, data, plan, batch: int = 100) -> list[float]:
    """Mean teacher-forcing CE of each scale over the held-out items, along ``plan``."""
    from vgen.vartrain.losses import tf_loss_from_tokens

    sums, n = torch.zeros(len(var.patch_nums)), 0
    with torch.no_grad():
        for lo in range(0, len(data), batch):
            idx = list(range(lo, min(lo + batch, len(data))))
            tokens, labels = data.get(idx, torch.device("cpu"))
            sums += tf_loss_from_tokens(var, vqvae, tokens, labels, depth_plan=plan).ce_per_scale * len(idx)
            n += len(idx)
    return (sums / n).tolist()


def main() -> None:
    from vgen.data import open_class_dataset
    from vgen.eval.harness import evaluate_var
    from vgen.models.load import load
    from vgen.models.var import subnet_indices, switch_plan
    from vgen.sample import parse_seeds, var_settings
    from vgen.vartrain.data import Data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="assets/var-deep-shapes")
    ap.add_argument("--depths", type=int, nargs="+", default=None, help="default: D/2, D/4 and 2")
    ap.add_argument("--seeds", default="100-109")
    ap.add_argument("--val-size", type=int, default=700)
    ap.add_argument("--out", default="runs/variant-map")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = load(a.model)
    var, vqvae = m.var.eval(), m.vqvae.eval()
    D, K = var.depth, len(var.patch_nums)
    depths = a.depths or sorted({D // 2, D // 4, 2} - {0, 1}, reverse=True)
    seeds = parse_seeds([a.seeds])
    classes = list(range(var.num_classes))
    settings = var_settings(m.sampling)
    data = Data(vqvae, open_class_dataset("shapes", m.resolution, a.val_size, 1), cache=True)

    def score(plan) -> dict:
        t = time.perf_counter()
        s, _, _ = evaluate_var(var, vqvae, m.classes, classes, seeds, {**settings, "depth_plan": plan},
                               ("geneval", "fid"), m.resolution)
        return {"fid": s["fid_shapes"]["fid_shapes"], "strict": s["geneval_shapes"]["overall"]["strict"]["mean"],
                "ce": held_out_ce(var, vqvae, data, plan), "seconds": time.perf_counter() - t}

    done = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    rows = done.get("rows", {})
    if "full" not in rows:
        rows["full"] = score(None)
    for d in depths:
        for k in range(K):
            key = f"d{d}_k{k}"
            if key not in rows:
                rows[key] = score(switch_plan(D, K, k, d))
                print(f"depth {d} from scale {k}: FID-shapes {rows[key]['fid']:.2f}, strict {rows[key]['strict']:.1%}",
                      flush=True)
                report = {"model": a.model, "depth": D, "patch_nums": list(var.patch_nums), "depths": depths,
                          "subnets": {str(d): subnet_indices(D, d) for d in depths}, "seeds": seeds,
                          "n_images": len(seeds) * len(classes), **settings, "val_size": a.val_size, "rows": rows}
                (out / "report.json").write_text(json.dumps(report, indent=1))  # resumable

    full = rows["full"]
    lines = [f"# Subnet from scale k on, no training: {a.model} (depth {D}, scales {list(var.patch_nums)})", "",
             f"{len(classes)} classes x {len(seeds)} seeds ({a.seeds}), CFG {settings['cfg']}, "
             f"top-k {settings['top_k']}; full network: FID-shapes {full['fid']:.2f}, strict {full['strict']:.1%}. "
             f"Column k: scales >= k (sizes {list(var.patch_nums)}) run the subnet.", ""]
    for what, fmt in (("fid", "{:.2f}"), ("strict", "{:.1%}")):
        lines += [f"## {'FID-shapes' if what == 'fid' else 'GenEval-Shapes strict'}", "",
                  "| depth | " + " | ".join(f"k={k} (pn {p})" for k, p in enumerate(var.patch_nums)) + " |",
                  "|---" * (K + 1) + "|"]
        for d in depths:
            lines.append(f"| {d} | " + " | ".join(fmt.format(rows[f"d{d}_k{k}"][what]) for k in range(K)) + " |")
        lines.append("")
    lines += ["## Held-out teacher-forcing CE per scale (nats), full network and each depth switched at k", "",
              "| run | " + " | ".join(f"pn {p}" for p in var.patch_nums) + " |", "|---" * (K + 1) + "|",
              "| full | " + " | ".join(f"{x:.3f}" for x in full["ce"]) + " |"]
    for d in depths:
        for k in range(K):
            lines.append(f"| d{d} from k={k} | " + " | ".join(f"{x:.3f}" for x in rows[f"d{d}_k{k}"]["ce"]) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 * len(depths) + 2.2))
    for ax, (what, title, cmap) in zip(axes, (("fid", "FID-shapes (lower is better)", "viridis_r"),
                                               ("strict", "GenEval-Shapes strict", "viridis"))):
        grid = np.array([[rows[f"d{d}_k{k}"][what] for k in range(K)] for d in depths])
        im = ax.imshow(grid, cmap=cmap, aspect="auto")
        for i in range(len(depths)):
            for k in range(K):
                v = grid[i, k]
                r, g, b, _ = im.cmap(im.norm(v))
                ax.text(k, i, f"{v:.1f}" if what == "fid" else f"{v:.0%}", ha="center", va="center", fontsize=8,
                        color="k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w")
        ax.set(xticks=range(K), xticklabels=[f"{k}\n(pn {p})" for k, p in enumerate(var.patch_nums)],
               yticks=range(len(depths)), yticklabels=[f"d={d}" for d in depths],
               xlabel="subnet from scale k on", title=f"{title}; full net {full[what]:.3g}")
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{Path(a.model).name}: a subnet of depth d (of {D}) from scale k on, no training")
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=100)


if __name__ == "__main__":
    main()
