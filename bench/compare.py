"""Compare the speedup ratios of two `fxforge bench` JSON files (ratio stability check).

    python -m fxforge.bench.compare RUN_A.json RUN_B.json [--tolerance 0.10]

For every (model, batch, system) that ran in both, prints speedup A, speedup B and their relative
difference |B - A| / A; exits 1 when any difference exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def differences(a: dict, b: dict) -> list[tuple[str, float, float, float]]:
    def speedups(doc: dict) -> dict[tuple, float]:
        return {(r["model"], r["batch"], r["system"]): r["speedup_vs_eager"]
                for r in doc["results"]
                if r["status"] == "ok" and r["speedup_vs_eager"] and r["system"] != "eager-fp32"}

    sa, sb = speedups(a), speedups(b)
    rows = []
    for key in sa:
        if key in sb:
            rows.append((f"{key[0]}@{key[1]} {key[2]}", sa[key], sb[key],
                         abs(sb[key] - sa[key]) / sa[key]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args(argv)
    rows = differences(json.loads(args.a.read_text()), json.loads(args.b.read_text()))
    if not rows:
        print("no (model, batch, system) ran in both files")
        return 1
    print("| case | speedup A | speedup B | difference |\n|---|--:|--:|--:|")
    for name, x, y, d in rows:
        flag = " **" if d > args.tolerance else ""
        print(f"| {name} | {x:.2f}x | {y:.2f}x | {d:.1%}{flag} |")
    diffs = [d for *_, d in rows]
    over = sum(d > args.tolerance for d in diffs)
    print(f"\n{len(rows)} ratios: median difference {statistics.median(diffs):.1%}, max "
          f"{max(diffs):.1%}; {over} above {args.tolerance:.0%}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
