"""SmoothQuant smoothing: what `compile(..., smooth=alpha)` gains on the transformers zoo.

For each transformer of `fxforge.zoo_hf`, twice: as built (random init: no outlier channels),
and with outlier channels injected the way trained models have them (`zoo_hf.with_outliers`:
4 channels of every norm's gain x30). Each variant is compiled for calibrated `cpu-int8`
without smoothing and with each alpha, calibrated on `--calibration` batches and measured on
`--eval` other batches against eager:

- output SQNR in dB (10 log10 of signal over error power, all float outputs, all batches);
- relative error (the largest |error| over the largest |output|, as in the zoo's table), beside
  the model's int8 noise floor (`fxforge.sensitivity`).

Prints a markdown table and writes bench/results/smoothing-cpu-<date>.json and .md.

    .venv/bin/python -m fxforge.bench.smoothing [--models bert,llama] [--alphas 0.5,0.75]
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from fxforge import compile, zoo_hf
from fxforge.bench.timing import machine
from fxforge.sensitivity import noise_floor, relative_error

TRANSFORMERS = [name for name, entry in zoo_hf.HF_ZOO.items()
                if entry.kind in ("text-encoder", "text-decoder", "vision-transformer", "audio")
                and name not in ("swin", "segformer", "mobilevit", "wav2vec2")]  # conv-heavy ones


def _positional(inputs):
    return tuple(inputs.values()) if isinstance(inputs, dict) else inputs


def sqnr_db(got: list, want: list) -> float:
    """10 log10(sum want^2 / sum (got - want)^2) over the float leaves of all outputs."""
    signal = noise = 0.0
    for g, w in zip(pytree.tree_flatten(got)[0], pytree.tree_flatten(want)[0]):
        if isinstance(w, torch.Tensor) and w.is_floating_point():
            w64, g64 = w.double(), g.double()
            signal += float((w64 * w64).sum())
            noise += float(((g64 - w64) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _key(alpha) -> str:
    return "none" if alpha is None else alpha if isinstance(alpha, str) else f"{alpha:g}"


def measure(name: str, outliers: bool, alphas: list, n_cal: int, n_eval: int,
            batch: int) -> dict:
    model, _ = zoo_hf.build(name, batch)
    if outliers:
        zoo_hf.with_outliers(model)
    calibration = [_positional(zoo_hf.sample_inputs(name, batch, seed=100 + i))
                   for i in range(n_cal)]
    held_out = [zoo_hf.sample_inputs(name, batch, seed=200 + i) for i in range(n_eval)]
    with torch.no_grad():
        wants = [zoo_hf.call(model, x) for x in held_out]
    row = {"model": name, "outliers": outliers,
           "noise_floor": max(noise_floor(model, x, zoo_hf.call) for x in held_out)}
    for alpha in alphas:
        compiled = compile(model, "cpu-int8", calibration=calibration, smooth=alpha)
        gots = [zoo_hf.call(compiled, x) for x in held_out]
        key = _key(alpha)
        row[key] = {"sqnr_db": sqnr_db(gots, wants),
                    "relative_error": max(relative_error(g, w) for g, w in zip(gots, wants))}
    return row


def markdown(rows: list[dict], alphas: list) -> str:
    keys = [_key(a) for a in alphas]
    head = " | ".join({"none": "no smoothing", "auto": "smooth='auto'"}.get(k, f"alpha {k}")
                      for k in keys)
    lines = [f"| model | outliers | noise floor | {head} |",
             "|---|---|---:|" + "---:|" * len(keys)]
    for r in rows:
        cells = " | ".join(f"{r[k]['sqnr_db']:.1f} dB, {r[k]['relative_error']:.1e}" for k in keys)
        lines.append(f"| {r['model']} | {'x30' if r['outliers'] else 'no'} | "
                     f"{r['noise_floor']:.1e} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TRANSFORMERS))
    parser.add_argument("--alphas", default="0.5,auto")
    parser.add_argument("--calibration", type=int, default=8, help="calibration batches")
    parser.add_argument("--eval", type=int, default=4, help="held-out batches")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    alphas: list = [None, *(a if a == "auto" else float(a) for a in args.alphas.split(",") if a)]
    rows = []
    for name in args.models.split(","):
        for outliers in (False, True):
            rows.append(measure(name, outliers, alphas, args.calibration, args.eval, args.batch))
            print(markdown(rows[-1:], alphas).splitlines()[-1], flush=True)
    info = machine()
    table = markdown(rows, alphas)
    print(f"\nsmoothing, {info['date']}, {info['cpu']}, torch {info['torch']}: calibrated cpu-int8 "
          f"on {args.calibration} batches of {args.batch}, measured on {args.eval} others "
          "(output SQNR, relative error)\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"smoothing-cpu-{info['date'][:10]}"
    report = {"benchmark": "smoothing", "machine": info, "options": vars(args), "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(
        f"# SmoothQuant smoothing, calibrated cpu-int8\n\n{info['date']}, {info['cpu']}, "
        f"{info['threads']} threads, torch {info['torch']}, commit {info['commit']}. Calibrated on "
        f"{args.calibration} batches of {args.batch}, measured on {args.eval} other batches: "
        "output SQNR against eager (higher is better) and relative error (largest |error| over "
        "the largest |output|; the noise floor is that of int8-sized noise on every layer, "
        "`fxforge.sensitivity`). `x30`: `zoo_hf.with_outliers` (4 channels of every norm's "
        f"gain x30).\n\n{table}\n")


if __name__ == "__main__":
    main()
