"""How stable is a speedup ratio on this machine, and which way of timing makes it stable?

    python -m fxforge.bench.stability record mobilenetv2 --seconds 150 --out rec.json [--batch 1]
                                     [--systems eager-fp32,onnxruntime-fp32,...]
    python -m fxforge.bench.stability simulate rec.json [--trials 300]

`record` prepares one case for the chosen systems and times interleaved rounds for a long
stretch, keeping every sample with its time (glibc malloc keeping freed memory, as in the
timing phase of `fxforge bench`). `simulate` replays that record as many pairs of pretend runs:
each run takes either one contiguous stretch of rounds or several short slices spread over the
record (the timing phase's passes), computes each system's speedup with several statistics
(median of paired ratios, ratio of medians, of p10s, of minimums) and prints how often two runs
differ by more than 10%, and the 95th percentile of the difference. This is how the bench's
slices and statistic (the median of paired ratios) were chosen, and a 420 s record of the mlp
is why a case's slices are now spread over the whole run; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fxforge.bench.allocator import keep_freed_memory
from fxforge.bench.schedule import block_calls
from fxforge.bench.systems import BASELINE, Case, all_systems
from fxforge.bench.timing import interleaved_blocks

DEFAULT_SYSTEMS = f"{BASELINE},torch-compile,onnxruntime-fp32,onnxruntime-int8,fxforge-cpu"
# (slices, seconds of timed rounds per run): one 3 s stretch (the bench before passes), one 8 s
# stretch, and 8 s in 4 or 8 slices
LAYOUTS = ((1, 3.0), (1, 8.0), (4, 8.0), (8, 8.0))


def record(model: str, batch: int | None, systems: list[str], seconds: float) -> dict:
    from fxforge.bench.models import get_models

    spec = get_models(False)[model]
    batch = batch or spec.batches[0]
    module, inputs = spec.build(batch)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fxforge-stability-") as tmp:
        case = Case(spec, batch, module.eval(), inputs, torch.device("cpu"), Path(tmp))
        for system in all_systems():
            if system.name in systems:
                runs[system.name] = system.prepare(case).run
        calls = {}
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            calls[name] = block_calls(time.perf_counter() - start, 0.01, 200)
        rounds: list[dict] = []
        with keep_freed_memory():
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                got = interleaved_blocks(runs, calls, repeats=4, warmup=0,
                                         first_round=len(rounds))
                rounds += [{"t": t, **{n: got[n][i] for n in runs}} for i in range(4)]
    return {"model": model, "batch": batch, "systems": list(runs), "rounds": rounds}


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[int(q * (len(xs) - 1))]


STATISTICS: dict[str, Callable[[list[float], list[float]], float]] = {
    "median of paired ratios": lambda b, x: statistics.median(p / q for p, q in zip(b, x)),
    "ratio of medians": lambda b, x: statistics.median(b) / statistics.median(x),
    "ratio of p10s": lambda b, x: _quantile(b, 0.1) / _quantile(x, 0.1),
    "ratio of minimums": lambda b, x: min(b) / min(x),
}


def _pretend_run(rounds: list[dict], rng: random.Random, slices: int, seconds: float) -> list:
    """Rounds of one pretend run: `slices` stretches, the i-th inside the i-th part of the
    record (like passes spread over a timing phase), `seconds` of rounds in all."""
    per_second = len(rounds) / max(1e-9, rounds[-1]["t"] - rounds[0]["t"])
    size = max(1, int(seconds * per_second / slices))
    part = len(rounds) // slices
    if part <= size:
        raise ValueError(f"the record is too short for {slices} slices of {size} rounds")
    picked: list[dict] = []
    for i in range(slices):
        start = rng.randrange(i * part, (i + 1) * part - size)
        picked += rounds[start:start + size]
    return picked


def simulate(rec: dict, trials: int = 300, seed: int = 0) -> list[dict]:
    """For each layout and statistic: P(two runs differ by > 10%) and the 95th percentile of
    the difference, over all systems' ratios."""
    rng = random.Random(seed)
    rounds = rec["rounds"]
    others = [s for s in rec["systems"] if s != BASELINE]
    rows = []
    for slices, seconds in LAYOUTS:
        diffs: dict[str, list[float]] = {name: [] for name in STATISTICS}
        for _ in range(trials):
            a = _pretend_run(rounds, rng, slices, seconds)
            b = _pretend_run(rounds, rng, slices, seconds)
            for name, stat in STATISTICS.items():
                for s in others:
                    ra = stat([r[BASELINE] for r in a], [r[s] for r in a])
                    rb = stat([r[BASELINE] for r in b], [r[s] for r in b])
                    diffs[name].append(abs(rb - ra) / ra)
        for name, d in diffs.items():
            rows.append({"slices": slices, "seconds": seconds, "statistic": name,
                         "p_over_10pct": sum(x > 0.10 for x in d) / len(d),
                         "p95": _quantile(d, 0.95)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="time one case for a long stretch")
    rec.add_argument("model")
    rec.add_argument("--batch", type=int)
    rec.add_argument("--systems", default=DEFAULT_SYSTEMS)
    rec.add_argument("--seconds", type=float, default=150.0)
    rec.add_argument("--out", type=Path, required=True)
    sim = sub.add_parser("simulate", help="replay a record as pairs of pretend runs")
    sim.add_argument("record", type=Path)
    sim.add_argument("--trials", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "record":
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if BASELINE not in systems:
            parser.error(f"--systems must include {BASELINE} (the ratios' baseline)")
        data = record(args.model, args.batch, systems, args.seconds)
        args.out.write_text(json.dumps(data))
        print(f"{len(data['rounds'])} rounds of {', '.join(data['systems'])} -> {args.out}")
        return 0
    data = json.loads(args.record.read_text())
    print(f"{data['model']}@{data['batch']}, {len(data['rounds'])} rounds over "
          f"{data['rounds'][-1]['t'] - data['rounds'][0]['t']:.0f} s\n")
    print("| slices x seconds | statistic | P(two runs differ > 10%) | p95 difference |\n"
          "|---|---|--:|--:|")
    for r in simulate(data, args.trials):
        print(f"| {r['slices']} x {r['seconds'] / r['slices']:.1f} s | {r['statistic']} | "
              f"{r['p_over_10pct']:.1%} | {r['p95']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
