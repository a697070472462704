"""VARiant's Pareto table over several test seed sets: one comparison, scored on each set, averaged per model.

    python tools/variant_seedsets.py runs/variant-d30-loss-rev-private runs/variant-d30-loss-rev-private-confirm \
                                     runs/variant-d30-loss-rev-private-s500 [--out docs/figures/NAME]

A FID-shapes over 700 images moves one model by up to ~1 between two sets of sample seeds, about as much
as the arms of a comparison differ. ``tools/variant_compare.py`` scores one set per folder
(``--eval-seeds``); this reads folders holding the same comparison (config, overrides, training seeds
and depths) scored on disjoint seed sets, averages each model's FID and strict accuracy over the sets,
and then gives the mean +- std over training seeds, as ``variant_compare.py``'s table does. Progressive
is "better" for a training seed when its set-averaged FID is below fixed's. Prints the table and,
with ``--out``, writes ``OUT.md``.

``--against DIR ...``: the same comparison with one setting changed (other overrides, the same config,
training seeds, depths, sampling and seed sets, in the same order), e.g. without a mechanism the first
one adds. A second table then gives, per arm and depth, the first minus the second, paired by training
seed (the two runs of a seed share the base and every batch), as mean +- std of the differences.
``--arms fixed`` pairs that arm only: for two comparisons whose other arm runs different schedules (a
progressive minus another progressive schedule is not the effect of the changed setting).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from variant_compare import ms  # noqa: E402

from vgen.sample import parse_seeds  # noqa: E402

ARMS = ("fixed", "progressive")
SAME = ("config", "seeds", "depths", "sampling")  # what every folder must share (and the overrides, in any order)


def pooled(folders: list[Path]) -> dict:
    """Each model's scores averaged over the folders' seed sets: {"base": {depth: scores}, arm: {depth: [scores
    per training seed]}, ...}."""
    return average(read(folders))


def read(folders: list[Path]) -> list[dict]:
    """The folders' reports, checked to be one comparison on disjoint seed sets."""
    reports = []
    for f in folders:
        if not (f / "report.json").is_file():
            sys.exit(f"{f}: no report.json (run tools/variant_compare.py there first)")
        reports.append(json.loads((f / "report.json").read_text()))
    first = reports[0]
    for f, r in zip(folders[1:], reports[1:]):
        refuse_other(f, r, folders[0], first)
        if sorted(r["overrides"]) != sorted(first["overrides"]):
            sys.exit(f"{f}: its overrides {r['overrides']} differ from {folders[0]}'s {first['overrides']}")
    sets = [set(parse_seeds(r["eval_seeds"].split())) for r in reports]
    if len(set().union(*sets)) != sum(len(x) for x in sets):
        sys.exit(f"the folders' seed sets {[r['eval_seeds'] for r in reports]} overlap: they must be disjoint")
    return reports


def refuse_other(f: Path, r: dict, ref_folder: Path, ref: dict) -> None:
    """Stop unless report ``r`` (of folder ``f``) shares ``ref``'s config, seeds, depths and sampling."""
    for k in SAME:
        if r.get(k) != ref.get(k):  # older reports lack "sampling": two such still match
            sys.exit(f"{f}: its {k} {r.get(k)} differs from {ref_folder}'s {ref.get(k)}: not the same comparison")


def average(reports: list[dict]) -> dict:
    """:func:`pooled` of reports already read."""
    first = reports[0]

    def mean(rows: list[dict]) -> dict:
        return {k: float(np.mean([r[k] for r in rows])) for k in ("fid", "strict")}

    out = {"base": {d: mean([r["table"]["base"][d] for r in reports]) for d in first["table"]["base"]}}
    for arm in ARMS:
        out[arm] = {d: [mean([r["table"][arm][d][i] for r in reports]) for i in range(len(first["seeds"]))]
                    for d in first["table"][arm]}
    return out


def paired(t: dict, u: dict) -> dict:
    """Per arm and depth, the per-training-seed differences t - u of two :func:`average` tables."""
    return {arm: {d: [{k: x[k] - y[k] for k in ("fid", "strict")} for x, y in zip(t[arm][d], u[arm][d])]
                  for d in t[arm]} for arm in ARMS}


def check_against(reports: list[dict], other: list[dict], folders: list[Path], against: list[Path]) -> None:
    """``--against`` must be the same comparison on the same seed sets, one setting apart in the arms paired
    (config, seeds, depths and sampling checked here; the overrides are the user's to choose)."""
    if len(other) != len(reports):
        sys.exit(f"--against gives {len(other)} folders for {len(reports)}: one per seed set, in the same order")
    for f, g, r, o in zip(folders, against, reports, other):
        if r["eval_seeds"] != o["eval_seeds"]:
            sys.exit(f"{g} scored seeds {o['eval_seeds']}, {f} {r['eval_seeds']}: pair the folders set by set")
    refuse_other(against[0], other[0], folders[0], reports[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+", help="tools/variant_compare.py folders of one comparison")
    ap.add_argument("--against", type=Path, nargs="+", default=[],
                    help="the same comparison with one setting changed, one folder per seed set in the same order")
    ap.add_argument("--arms", nargs="+", choices=ARMS,
                    help="--against: the arms to pair (default both; name one when the other arm's schedule "
                    "differs between the two comparisons)")
    ap.add_argument("--out", type=Path, help="write OUT.md")
    a = ap.parse_args()
    if len(a.folders) < 2:
        sys.exit("give two or more folders: one comparison scored on different seed sets")
    if a.arms and not a.against:
        sys.exit("--arms names the arms that --against pairs: give --against too")
    reports = read(a.folders)
    t = average(reports)
    other = read(a.against) if a.against else None
    if other is not None:
        check_against(reports, other, a.folders, a.against)
    r0 = reports[0]
    D = max(r0["depths"])
    n = len(r0["seeds"])

    def row(d: str) -> str:  # a table row's first cell
        return f"| {d}{' (full)' if int(d) == D else ''} | "

    sets = ", ".join(r["eval_seeds"] for r in reports)
    lines = [f"# VARiant Pareto table over test seed sets {sets}: `{r0['config']}` {' '.join(r0['overrides'])}", "",
             f"Each model's FID-shapes and GenEval-Shapes strict averaged over the {len(a.folders)} seed sets "
             f"(one evaluation each), then mean +- std over training seeds {r0['seeds']}. Folders: "
             f"{', '.join(f'`{f}`' for f in a.folders)}.", "",
             "| depth | base FID | fixed FID | progressive FID | progressive < fixed (FID) | base strict | "
             "fixed strict | progressive strict |", "|---|---|---|---|---|---|---|---|"]
    for d in map(str, r0["depths"]):
        b, f, p = t["base"][d], t["fixed"][d], t["progressive"][d]
        wins = sum(x["fid"] < y["fid"] for x, y in zip(p, f))
        lines.append(f"{row(d)}{b['fid']:.2f} | {ms(f, 'fid')} | {ms(p, 'fid')} | "
                     f"{wins} of {n} | {b['strict']:.1%} | {ms(f, 'strict', True)} | {ms(p, 'strict', True)} |")
    if other is not None:
        diff = paired(t, average(other))
        o0 = other[0]
        arms = [arm for arm in ARMS if arm in (a.arms or ARMS)]
        lines += ["", f"Against {', '.join(f'`{f}`' for f in a.against)} ({' '.join(o0['overrides'])}): this "
                  "comparison's model minus that one's of the same training seed, set-averaged, mean +- std over "
                  "the seeds; 'lower' counts the seeds whose FID this comparison lowers.", "",
                  "| depth | " + " | ".join(f"{arm}: FID change | lower | {arm}: strict change" for arm in arms) + " |",
                  "|---|" + "---|---|---|" * len(arms)]
        for d in map(str, r0["depths"]):
            cells = [f"{ms(x, 'fid')} | {sum(y['fid'] < 0 for y in x)} of {n} | {ms(x, 'strict', True)}"
                     for x in (diff[arm][d] for arm in arms)]
            lines.append(row(d) + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        a.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
