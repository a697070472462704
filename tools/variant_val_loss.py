"""Held-out teacher-forcing CE of VARiant runs at one step, per path, mean +- std over runs: the
``val_loss`` (full network) and ``val_loss_d{d}`` (each subnet) each run's metrics.jsonl logged.

    python tools/variant_val_loss.py runs/variant-d30-private10/fixed-s? --step 300
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def at_step(run: Path, step: int) -> dict[str, float]:
    """The held-out figures ``run`` logged at ``step`` (every key starting with val_loss)."""
    if not (run / "metrics.jsonl").is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (not a training run)")
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == step and "val_loss" in row:
            return {k: v for k, v in row.items() if k.startswith("val_loss")}
    raise SystemExit(f"{run}: no held-out evaluation at step {step}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--step", type=int, required=True)
    a = ap.parse_args()
    rows = [at_step(r, a.step) for r in a.runs]
    keys = sorted(set.intersection(*(set(r) for r in rows)), key=lambda k: (k != "val_loss", -int(k[10:] or 0)))
    for k in keys:
        xs = [r[k] for r in rows]
        spread = f" +- {statistics.stdev(xs):.4f}" if len(xs) > 1 else ""
        print(f"{'full' if k == 'val_loss' else 'depth ' + k[10:]}: {statistics.mean(xs):.4f}{spread} ({len(xs)} runs)")


if __name__ == "__main__":
    main()
