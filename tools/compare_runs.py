"""Held-out score against training wall time for two Sol-RL runs, and the speed-up.

    python tools/compare_runs.py runs/cmp-solrl runs/cmp-nft [--metric eval_score] [--out curve.png]

Wall time is the sum of each iteration's phase times (explore, score, select, regenerate,
update, refresh) from metrics.jsonl, held-out evaluation excluded. The speed-up is the
baseline's whole training time over the first run's time to reach at least the baseline's
final held-out score (at its evaluation points after the start, which both runs share);
"not reached" when it never does. The curve PNG is written
into the first run's directory unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def curve(run: Path, metric: str | None = None) -> list[tuple[float, float]]:
    """(cumulative training seconds, held-out score) at each evaluation of a run; ``metric`` is a
    metrics.jsonl key (default: the headline, eval_strict or eval_reward)."""
    wall, out = 0.0, []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        wall += sum(v for k, v in m.items() if k.startswith("time_") and v is not None)
        score = m.get(metric) if metric else m.get("eval_strict", m.get("eval_reward"))
        if score is not None:
            out.append((wall, score))
    return out


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """First time after the start at which the score reaches ``target``."""
    return next((t for t, s in points[1:] if s >= target), None)


def plot(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    w, h, pad = 640, 400, 50
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    pts = [p for c in curves.values() for p in c]
    tmax = max(t for t, _ in pts) or 1.0
    lo, hi = min(s for _, s in pts), max(s for _, s in pts)
    lo, hi = (lo - 0.05, hi + 0.05) if hi > lo else (lo - 0.1, hi + 0.1)

    def xy(t, s):
        return pad + (w - 2 * pad) * t / tmax, h - pad - (h - 2 * pad) * (s - lo) / (hi - lo)

    d.line([(pad, pad), (pad, h - pad), (w - pad, h - pad)], fill="black")
    d.text((w // 2 - 60, h - pad + 20), "training wall time (s)", fill="black", font=font)
    d.text((5, 5), "held-out score", fill="black", font=font)
    for frac in (0, 0.5, 1):
        d.text((pad - 45, xy(0, lo + frac * (hi - lo))[1] - 5), f"{lo + frac * (hi - lo):.3f}", fill="black", font=font)
        d.text((xy(frac * tmax, lo)[0] - 10, h - pad + 5), f"{frac * tmax:.0f}", fill="black", font=font)
    for (name, c), colour, k in zip(curves.items(), ("red", "blue"), range(2)):
        d.line([xy(t, s) for t, s in c], fill=colour, width=2)
        for t, s in c:
            x, y = xy(t, s)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((w - pad - 150, pad + 15 * k), name, fill=colour, font=font)
    im.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("baseline")
    ap.add_argument("--metric", default=None, help="metrics.jsonl key, e.g. eval_score (default: eval_strict)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run, base = Path(a.run), Path(a.baseline)
    c_run, c_base = curve(run, a.metric), curve(base, a.metric)
    for name, c in ((run.name, c_run), (base.name, c_base)):
        print(f"{name}: " + ", ".join(f"{s:.3f} at {t:.0f} s" for t, s in c))
    target = c_base[-1][1]
    t_base, t_run = c_base[-1][0], time_to(c_run, target)
    out = Path(a.out) if a.out else run / "curve_vs_baseline.png"
    plot({run.name: c_run, base.name: c_base}, out)
    ratio = f"{t_base / t_run:.2f}x" if t_run is not None else "not reached"
    reached = "never" if t_run is None else f"at {t_run:.0f} s"
    print(f"{a.metric or 'headline'}: baseline final held-out score {target:.3f} after {t_base:.0f} s of training; "
          f"{run.name} reaches it "
          f"{reached}: speed-up {ratio}")
    print(f"curve: {out}")


if __name__ == "__main__":
    main()
