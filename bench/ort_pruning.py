"""Pruned channels through ONNX Runtime: does fxforge's `ort` target cash in the FLOPs?

A ResNet-18-style CNN and the same CNN after `fxforge.prune_channels(amount)`. Timed interleaved
in one process at one batch size:

- `onnxruntime unpruned`: ONNX Runtime (all graph optimizations, torch's thread count) on the
  unpruned model exported by `torch.onnx.export`; what a user deploying with ORT runs today;
- `fxforge ort unpruned`: fxforge's passes (batch norms folded, fusions) on the unpruned model,
  exported and run by ONNX Runtime;
- `fxforge ort pruned`: the same on the pruned model, whose zeroed channels
  `remove-pruned-channels` takes out before export.

The issue's bar: the pruned model through `ort` beats ONNX Runtime on the unpruned model by about
its FLOP ratio (unpruned / pruned FLOPs of the compiled graphs). Speedups are medians of
per-round ratios. Writes bench/results/ort-pruning-cpu-<date>.{json,md}.

    .venv/bin/python bench/ort_pruning.py [--batch 32] [--repeats 30] [--width 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fxforge import compile, prune_channels
from fxforge.bench.pruning import _with_width
from fxforge.bench.timing import interleaved_samples, machine, summarize
from fxforge.kernels.ort_backend import session_options

SYSTEMS = ("onnxruntime unpruned", "fxforge ort unpruned", "fxforge ort pruned")


def _ort_session(model: torch.nn.Module, x: torch.Tensor, folder: Path):
    import onnxruntime as ort

    path = folder / "unpruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), session_options(),
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x.numpy()})[0]


def run_case(amount: float, width: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    model = _with_width("resnet18", width).eval()
    pruned = prune_channels(model, amount, x[:2])
    fast_unpruned = compile(model, "ort", example_inputs=x)
    fast = compile(pruned, "ort", example_inputs=x)
    with torch.no_grad():
        err = float((fast(x) - pruned(x)).abs().max())
    with tempfile.TemporaryDirectory() as tmp:
        ort_unpruned = _ort_session(model, x, Path(tmp))
        ort_err = float(np.abs(ort_unpruned() - fast_unpruned(x).numpy()).max())
        samples = interleaved_samples(dict(zip(SYSTEMS, (
            ort_unpruned, lambda: fast_unpruned(x), lambda: fast(x)))), repeats=repeats)
    before, after = fast_unpruned.report.latest, fast.report.latest
    speedup = statistics.median(a / b for a, b in zip(samples[SYSTEMS[0]], samples[SYSTEMS[2]]))
    flop_ratio = before.flops_after / after.flops_after
    return {"case": f"resnet18 width {width}, prune_channels({amount})", "batch": batch,
            "max_abs_error_pruned_vs_eager": err, "max_abs_error_ort_vs_fxforge_ort": ort_err,
            "flops_unpruned": before.flops_after, "flops_pruned": after.flops_after,
            "flop_ratio": flop_ratio, "params_unpruned": before.params_after,
            "params_pruned": after.params_after,
            "times": {k: summarize(v) for k, v in samples.items()}, "samples_s": samples,
            "speedup_vs_onnxruntime_unpruned": speedup,
            "speedup_over_flop_ratio": speedup / flop_ratio}


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"ort pruning benchmark, {m['date']}, {m['cpu']}, {m['threads']} threads, "
             f"{report['options']['repeats']} interleaved rounds (times: medians; speedup: "
             "median of per-round ratios)", "",
             "| case | batch | FLOP ratio | " + " | ".join(f"{s} ms" for s in SYSTEMS)
             + " | pruned ort vs ORT unpruned | of FLOP ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        t = r["times"]
        lines.append(f"| {r['case']} | {r['batch']} | {r['flop_ratio']:.2f}x | "
                     + " | ".join(f"{t[s]['median_s'] * 1e3:.2f}" for s in SYSTEMS)
                     + f" | {r['speedup_vs_onnxruntime_unpruned']:.2f}x | "
                     f"{r['speedup_over_flop_ratio']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--amounts", type=float, nargs="*", default=[0.5])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    results = [run_case(a, args.width, args.batch, args.repeats) for a in args.amounts]
    report = {"benchmark": "ort-pruning", "device": "cpu", "machine": machine(),
              "options": vars(args), "results": results}
    text = table(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ort-pruning-cpu-{report['machine']['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
