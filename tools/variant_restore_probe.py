"""Where weight sharing costs a VARiant supernet's full network: put groups of its weights back to the base's.

    python tools/variant_restore_probe.py RUN/model [--base assets/var-deep-shapes] [--depths 2]
        [--eval-seeds 200-209] [--parallel 2] [--out runs/variant-restore]

Subnet steps update only the blocks of their subnets (and the embeddings and head that every path
uses); the full network shares all of them. For each group below this writes a copy of the trained
model folder with that group's tensors taken from the base, then scores it with ``vgen eval`` at
the full depth and at each of ``--depths`` (FID-shapes, GenEval-Shapes strict, every class x
``--eval-seeds``). A group whose restore brings the full network back towards the base holds the
damage; what the same restore costs the subnets shows how much of their gain it holds.

Groups, for D blocks and the trained subnets' blocks S (union of ``I_d`` over the run's depths):
``end blocks`` (0 and D-1, in every subnet), ``other subnet blocks`` (S without those two),
``full-only blocks`` (not in S: only full steps train them), ``embeddings and head``, ``all``.
Finished evaluations are reused. Writes ``report.md`` and ``report.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sar_compare import scores  # noqa: E402
from solrl_learning import run_all  # noqa: E402


def groups(D: int, subnet_blocks: set[int]) -> dict[str, set[int] | str]:
    """Group name -> the block indices it restores, or 'rest' (every tensor outside the blocks)."""
    ends = {0, D - 1}
    return {"none": set(), "end blocks": ends, "other subnet blocks": subnet_blocks - ends,
            "full-only blocks": set(range(D)) - subnet_blocks, "embeddings and head": "rest",
            "all": "all"}


def restored(trained: dict, base: dict, group: set[int] | str) -> dict:
    """``trained`` with the tensors of ``group`` taken from ``base``."""
    def block(name: str) -> int | None:
        return int(name.split(".")[1]) if name.startswith("blocks.") else None

    def take(name: str) -> bool:
        if group == "all":
            return True
        if group == "rest":
            return block(name) is None
        return block(name) in group

    return {k: (base[k] if take(k) else v) for k, v in trained.items()}


def main() -> None:
    import yaml
    from safetensors.torch import load_file, save_file

    from vgen.models.var import subnet_indices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained VARiant model folder (RUN/model)")
    ap.add_argument("--base", default="assets/var-deep-shapes")
    ap.add_argument("--depths", type=int, nargs="+", default=[2], help="subnet depths scored besides the full one")
    ap.add_argument("--eval-seeds", default="200-209")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--out", default="runs/variant-restore")
    a = ap.parse_args()
    model, out = Path(a.model), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = model.parent / "config.yaml"  # the run's config, when the folder is a run's model
    trained_depths = (yaml.safe_load(run_cfg.read_text()) if run_cfg.is_file() else {}).get("depths", a.depths)
    trained, base = load_file(model / "var.safetensors"), load_file(Path(a.base) / "var.safetensors")
    if trained.keys() != base.keys():
        sys.exit(f"{model} and {a.base} hold different tensors: not the same architecture")
    D = 1 + max(int(k.split(".")[1]) for k in trained if k.startswith("blocks."))
    subnet = set().union(*(subnet_indices(D, d) for d in trained_depths))
    jobs, table = [], {}
    for name, group in groups(D, subnet).items():
        folder = out / name.replace(" ", "-")
        if not (folder / "var.safetensors").is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(model, tmp)
            save_file(restored(trained, base, group), str(tmp / "var.safetensors"))
            tmp.rename(folder)
        for d in [D, *a.depths]:
            rep = out / f"{folder.name}-eval-d{d}"
            if not (rep / "report.json").is_file():
                jobs.append((["eval", "--model", str(folder), "--seeds", a.eval_seeds, "--metrics", "geneval", "fid",
                              "--out", str(rep), "--force", *([] if d == D else ["--depth", str(d)])],
                             out / f"{rep.name}.log"))
    run_all(jobs, list(range(a.parallel)))
    lines = [f"# Restoring groups of `{model}` to `{a.base}`", "",
             f"Subnet blocks trained (depths {trained_depths}): {sorted(subnet)} of {D}. Sample seeds "
             f"{a.eval_seeds} x every class. Each cell: FID-shapes / strict.", "",
             "| weights from the base | " + " | ".join(f"depth {d}" for d in [D, *a.depths]) + " |",
             "|---|" + "---|" * (1 + len(a.depths))]
    for name, group in groups(D, subnet).items():
        folder = name.replace(" ", "-")
        table[name] = {str(d): scores(out / f"{folder}-eval-d{d}") for d in [D, *a.depths]}
        what = f" {sorted(group)}" if isinstance(group, set) and group else ""
        lines.append(f"| {name}{what} | " + " | ".join(f"{r['fid']:.2f} / {r['strict']:.1%}"
                                                    for r in table[name].values()) + " |")
    (out / "report.json").write_text(json.dumps({"model": str(model), "base": a.base, "eval_seeds": a.eval_seeds,
                                                 "subnet_blocks": sorted(subnet), "table": table}, indent=1))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
