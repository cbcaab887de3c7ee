"""Per-call time of a dynamic compile against a static compile at the same shape (`cpu`).

Issue #18's bar: a model compiled once with `dynamic=` runs each size within 10% of a compile
made for that size alone. Cases: the zoo's MLP, the digits CNN and ResNet-18 (zoo) at several
batch sizes, one `dynamic=True` compile per model (captured at batch 32) against one static
compile per batch size; eager for scale. Timed interleaved in one process, each sample the mean
of a block of back-to-back calls, medians over rounds.

Prints a table and writes bench/results/dynamic-cpu-<date>.json and .md.

    .venv/bin/python -m fxforge.bench.dynamic [--rounds 15] [--block-ms 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from fxforge import compile, zoo
from fxforge.bench.timing import interleaved_blocks, machine

MODELS = ("mlp", "digits", "resnet18")
BATCHES = (1, 7, 32, 128)


def _calls_for(fn, block_ms: float) -> int:
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(block_ms / 1e3 / once))


def measure(rounds: int, block_ms: float) -> list[dict]:
    rows = []
    for name in MODELS:
        model, (example,) = zoo.build(name, 32)
        start = time.perf_counter()
        dynamic = compile(model, "cpu", example_inputs=(example,), dynamic=True)
        compile_s = time.perf_counter() - start
        for batch in BATCHES:
            x = zoo.build(name, batch)[1][0]
            static = compile(model, "cpu", example_inputs=(x,))
            systems = {"eager": lambda m=model, x=x: m(x), "static": lambda s=static, x=x: s(x),
                       "dynamic": lambda d=dynamic, x=x: d(x)}
            for fn in systems.values():
                fn()
            torch.testing.assert_close(dynamic(x), static(x), rtol=0, atol=0)
            calls = {k: _calls_for(fn, block_ms) for k, fn in systems.items()}
            samples = interleaved_blocks(systems, calls, repeats=rounds, warmup=2)
            us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
            rows.append({"model": name, "batch": batch, "us_per_call": us,
                         "dynamic_vs_static": us["static"] / us["dynamic"]})
            print(f"{name} batch {batch}: eager {us['eager']:.1f} us, static {us['static']:.1f} "
                  f"us, dynamic {us['dynamic']:.1f} us ({rows[-1]['dynamic_vs_static']:.3f}x "
                  "of static speed)", flush=True)
        rows.append({"model": name, "captures": dynamic.report.captures,
                     "dynamic_compile_s": compile_s})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block-ms", type=float, default=20.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = measure(args.rounds, args.block_ms)
    info = machine()
    lines = ["| model | batch | eager us | static us | dynamic us | dynamic speed / static |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "batch" in r:
            us = r["us_per_call"]
            lines.append(f"| {r['model']} | {r['batch']} | {us['eager']:.1f} | "
                         f"{us['static']:.1f} | {us['dynamic']:.1f} | "
                         f"{r['dynamic_vs_static']:.3f}x |")
    captures = ", ".join(f"{r['model']} {r['captures']}" for r in rows if "captures" in r)
    text = (f"# Dynamic vs static compiles on `cpu`\n\n{info['date']}, {info['cpu']}, torch "
            f"{info['torch']}, {torch.get_num_threads()} thread(s), commit {info['commit']}. "
            f"Median time per call ({args.rounds} interleaved rounds, each sample the mean of "
            f"about {args.block_ms:g} ms of back-to-back calls). One dynamic compile per model "
            f"(captures: {captures}) against one static compile per batch size.\n\n"
            + "\n".join(lines) + "\n")
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"dynamic-cpu-{info['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps({"benchmark": "dynamic", "machine": info,
                                                     "options": vars(args), "rows": rows},
                                                    indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
