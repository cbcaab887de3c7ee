"""Per-call overhead on the CPU: what fxforge adds around the ops, before and after the lean path.

Cases: an almost empty model (one ReLU on a [1, 8] tensor: the time is overhead), the zoo's
3-layer MLP at batch 1 and the digits CNN at batch 1 (where overhead decides the ratio). Systems,
timed interleaved in one process, each sample the mean of a block of back-to-back calls, medians
over rounds: eager PyTorch; fxforge `cpu`, `cpu-int8` and `cpu-int8` with
`int8_layers="measured"` (int8 only for layers where it is faster here); and fxforge `cpu` with
the lean path switched off (the node-by-node loop and the full signature match of every call:
what a call cost before it existed). At 1 and 2 intra-op threads.

Prints a table and writes bench/results/overhead-cpu-<date>.json and .md.

    .venv/bin/python -m fxforge.bench.overhead [--rounds 15] [--block 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

from fxforge import compile, zoo
from fxforge.bench.timing import interleaved_blocks, machine
from fxforge.execute import TorchProgram


def _cases() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.ReLU()).eval()
    mlp, (x_mlp,) = zoo.build("mlp", 1)
    digits, (x_digits,) = zoo.build("digits", 1)
    return [("relu [1,8] (overhead)", relu, torch.randn(1, 8)), ("mlp batch 1", mlp, x_mlp),
            ("digits batch 1", digits, x_digits)]


def _loop_only(model: torch.nn.Module, x: torch.Tensor):
    """fxforge cpu without the lean path: every call matched in full, every graph looped."""
    compiled = compile(model, "cpu")
    compiled._remember_fast = lambda args, entry: None
    compiled(x)
    for program in compiled._latest.programs.values():
        program.straight_line = False
        program._fast = None
    return compiled


def measure(rounds: int, block: int) -> list[dict]:
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, model, x in _cases():
            systems = {"eager": model, "fxforge cpu": compile(model, "cpu"),
                       "fxforge cpu-int8": compile(model, "cpu-int8"),
                       "fxforge cpu-int8 measured": compile(model, "cpu-int8",
                                                            int8_layers="measured"),
                       "fxforge cpu, no lean path": _loop_only(model, x)}
            for fn in systems.values():
                fn(x)
            calls = {k: block for k in systems}
            samples = interleaved_blocks({k: (lambda f=f, x=x: f(x)) for k, f in systems.items()},
                                         calls, repeats=rounds, warmup=2)
            medians = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
            rows.append({"case": name, "threads": threads, "us_per_call": medians,
                         "vs_eager": {k: medians["eager"] / v for k, v in medians.items()}})
            print(_line(rows[-1]), flush=True)
    return rows


def resnet18_int8(rounds: int) -> dict:
    """Where int8 does pay: the bench's ResNet-18 (112 px) at batch 8, calibrated, one thread,
    to check that `int8_layers="measured"` keeps int8 where it wins (one call per sample)."""
    from fxforge.bench.models import full_models

    torch.set_num_threads(1)
    spec = full_models()["resnet18"]
    model, (x,) = spec.build(8)
    calibration = spec.calibration((x,))
    systems = {"eager": model, "fxforge cpu": compile(model, "cpu"),
               "fxforge cpu-int8": compile(model, "cpu-int8", calibration=calibration),
               "fxforge cpu-int8 measured": compile(model, "cpu-int8", calibration=calibration,
                                                    int8_layers="measured")}
    for fn in systems.values():
        fn(x)
    samples = interleaved_blocks({k: (lambda f=f: f(x)) for k, f in systems.items()},
                                 {k: 1 for k in systems}, repeats=rounds, warmup=1)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    kept = sum(line.split(": ")[1].startswith("float")
               for line in systems["fxforge cpu-int8 measured"].report.int8_choices)
    return {"case": "resnet18 112px batch 8, 1 thread", "ms_per_call": ms,
            "vs_eager": {k: ms["eager"] / v for k, v in ms.items()},
            "measured_kept_float": kept,
            "measured_layers": len(systems["fxforge cpu-int8 measured"].report.int8_choices)}


def _line(row: dict) -> str:
    m, r = row["us_per_call"], row["vs_eager"]
    cells = " | ".join(f"{m[k]:.1f} us ({r[k]:.2f}x)" for k in m)
    return f"| {row['case']} | {row['threads']} | {cells} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=400, help="calls per timed sample")
    parser.add_argument("--resnet18", action="store_true",
                        help="also time the bench's ResNet-18 at batch 8, where int8 pays")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    assert TorchProgram.straight_line  # the lean path is what is measured against the loop
    rows = measure(args.rounds, args.block)
    info = machine()
    head = ("| case | threads | eager | fxforge cpu | fxforge cpu-int8 | fxforge cpu-int8, "
            "int8_layers='measured' | fxforge cpu, no lean path |\n|---|---:|---:|---:|---:|---:|"
            "---:|")
    table = head + "\n" + "\n".join(_line(r) for r in rows)
    text = (f"# Per-call overhead on the CPU\n\n{info['date']}, {info['cpu']}, torch "
            f"{info['torch']}, commit {info['commit']}. Median time per call (each sample the "
            f"mean of {args.block} back-to-back calls, {args.rounds} interleaved rounds) and, in "
            f"brackets, eager's time over it (above 1: faster than eager).\n\n{table}\n")
    extra = resnet18_int8(8) if args.resnet18 else None
    if extra is not None:
        cells = ", ".join(f"{k} {v:.1f} ms ({extra['vs_eager'][k]:.2f}x)"
                          for k, v in extra["ms_per_call"].items())
        text += (f"\n{extra['case']}, median of 8 interleaved rounds: {cells}; "
                 f"`int8_layers='measured'` kept {extra['measured_kept_float']} of "
                 f"{extra['measured_layers']} layers float.\n")
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"overhead-cpu-{info['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps({"benchmark": "overhead", "machine": info,
                                                     "options": vars(args), "rows": rows,
                                                     "resnet18": extra},
                                                    indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
