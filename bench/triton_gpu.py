"""GPU benchmark of the Triton backend: kernels against cuBLAS / cuDNN, models against eager fp16
and torch.compile. Every kernel result is checked before it is timed.

    python -m fxforge.bench.triton_gpu [--only gemm,epilogue,conv,e2e] [--repeats 50]
                                       [--no-autotune]
    python -m fxforge.bench.triton_gpu --smoke   # tiny shapes on the CPU interpreter (plumbing)

Sections (times: CUDA events around each call, medians over interleaved rounds after warm-up):
- gemm: int8 GEMM (ours, raw int32 out) in TOPS against `torch._int_mm` and fp16 `torch.matmul`
  for M in {1, 16, 128, 4096, 8192}, N = K = 8192; `_int_mm` needs M > 16, so for small M it
  runs with M padded to 32 (marked). Check: our int32 equals `_int_mm` exactly. M <= 16 is tuned
  over the split-K configs (SMALL_M_CONFIGS), as the lowering does, larger M over CONFIGS.
- epilogue: int8 GEMM with bias + relu + requantize to int8 fused, against `_int_mm` followed by
  the same epilogue as separate torch ops. Check: int8 outputs within 1 LSB.
- conv: int8 implicit-GEMM conv (bias + relu + requantize fused, NHWC) against cuDNN fp16
  channels-last conv + relu, on ResNet-50 layer shapes at batch 64. Check: accumulators
  bit-exact against a float64 conv of the same integers.
- e2e: ResNet-50 (batch 64) and BERT-base (batch 128, sequence 128) in every cuda target against
  eager fp16 (channels-last for image models) and torch.compile (default, max-autotune); error
  against eager float32.
Results: bench/results/triton-gpu-<device>-<date>.json and .md. `python -m fxforge.bench.gpu_check`
runs these sections (and more) as one time-boxed check with goals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import fxforge
from fxforge.bench.harness import DEFAULT_OUT
from fxforge.bench.metrics import first_tensor, output_error
from fxforge.bench.timing import interleaved_samples, machine
from fxforge.ir import TensorType
from fxforge.kernels.triton import conv, gemm
from fxforge.kernels.triton.codegen import Epilogue

SECTIONS = ("gemm", "epilogue", "conv", "e2e")
# ResNet-50 3x3 and 1x1 layers: (Cin, Cout, H, kernel, stride)
RESNET_LAYERS = [(64, 64, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 14, 3, 1),
                 (512, 512, 7, 3, 1), (64, 256, 56, 1, 1), (1024, 256, 14, 1, 1),
                 (256, 512, 56, 1, 2)]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.smoke = args.smoke
        self.cuda = torch.cuda.is_available() and not self.smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.repeats = 3 if self.smoke else args.repeats
        self.autotune = not args.no_autotune and self.cuda
        self.rows: list[dict[str, Any]] = []

    def time(self, systems: dict[str, Callable[[], object]]) -> dict[str, float]:
        samples = interleaved_samples(systems, self.repeats, warmup=1 if self.smoke else 5,
                                      cuda=self.cuda)
        return {name: statistics.median(s) for name, s in samples.items()}

    def config(self, module, key: str, run: Callable[[dict], object],
               configs: list[dict] | None = None) -> dict | None:
        """The tuned config of a kernel module for one problem (None: the default one), picked
        among `configs` (default: the module's CONFIGS)."""
        if not self.autotune:
            return None
        from fxforge.kernels.triton.autotune import default_tuner

        return default_tuner().pick(f"bench:{module.__name__}:{key}", (key,),
                                    list(module.CONFIGS if configs is None else configs), run)

    def allow(self, what: str, need_s: float) -> bool:
        """Whether a step that takes about `need_s` seconds may start (a time-boxed run says no
        when too little time is left; see gpu_check)."""
        return True

    def add(self, section: str, **row: Any) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


# --- int8 GEMM --------------------------------------------------------------------------------


def _int8(shape, device) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def bench_gemm(b: Bench) -> None:
    nk = 64 if b.smoke else 8192
    for m in ((1, 16, 40) if b.smoke else (1, 16, 128, 4096, 8192)):
        _gemm_case(b, m, nk)


def _int_mm_ok(b: Bench) -> bool:
    """torch._int_mm runs here: on CUDA, and on the CPU (smoke runs) where this torch has it."""
    if b.cuda:
        return True
    try:
        one = torch.ones((1, 32), dtype=torch.int8)
        return bool(torch._int_mm(one, one.t()).item() == 32)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _gemm_case(b: Bench, m: int, nk: int) -> None:
    x, w = _int8((m, nk), b.device), _int8((nk, nk), b.device)
    ones = torch.ones(nk, device=b.device)
    xp = torch.cat([x, x.new_zeros(32 - m, nk)]) if m <= 16 else x
    int_mm = _int_mm_ok(b)
    ref = torch._int_mm(xp, w.t())[:m] if int_mm else (x.double() @ w.double().t()).int()
    configs = gemm.SMALL_M_CONFIGS if m <= gemm.SMALL_M else gemm.CONFIGS  # as the lowering
    cfg = b.config(gemm, f"i32:{m}x{nk}x{nk}", lambda c: gemm.qlinear(
        x, w, ones, x_scale=1.0, out_dtype="i32", config=c), configs)
    ours = gemm.qlinear(x, w, ones, x_scale=1.0, out_dtype="i32", config=cfg)
    exact = bool(torch.equal(ours, ref))
    xh, wh = x.half(), w.half()
    systems = {"fxforge int8": lambda: gemm.qlinear(x, w, ones, x_scale=1.0, out_dtype="i32",
                                                    config=cfg),
               "fp16 matmul": lambda: xh @ wh.t()}
    if int_mm:
        systems["torch._int_mm" + (" (M padded to 32)" if m <= 16 else "")] = \
            lambda: torch._int_mm(xp, w.t())
    times = b.time(systems)
    ops = 2 * m * nk * nk
    b.add("gemm", m=m, n=nk, k=nk, exact_vs_int_mm=exact, config=cfg,
          tops={k: ops / t / 1e12 for k, t in times.items()},
          ms={k: t * 1e3 for k, t in times.items()})


def bench_epilogue(b: Bench) -> None:
    for m, nk in (((40, 64),) if b.smoke else ((4096, 4096), (8192, 8192))):
        _epilogue_case(b, m, nk)


def _epilogue_case(b: Bench, m: int, nk: int) -> None:
    x, w = _int8((m, nk), b.device), _int8((nk, nk), b.device)
    w_scale = torch.rand(nk, device=b.device) * 1e-3 + 1e-4
    bias = torch.randn(nk, device=b.device)
    x_scale, out_scale = 0.02, 0.5
    t = TensorType((m, nk), "f32")
    relu = Epilogue(({"op": "relu"},), (t, t), ())

    def ours(c=None):
        return gemm.qlinear(x, w, w_scale, x_scale=x_scale, bias=bias, epilogue=relu,
                            out_dtype="i8", out_scale=out_scale, config=c)

    def separate():
        acc = torch._int_mm(x, w.t()) if b.cuda else (x.double() @ w.double().t()).int()
        y = torch.relu(acc.float() * (torch.tensor(x_scale, dtype=torch.float32) * w_scale)
                       + bias)
        return torch.clamp(torch.round(y / out_scale), -128, 127).to(torch.int8)

    cfg = b.config(gemm, f"i8-relu:{m}x{nk}", ours)
    diff = (ours(cfg).int() - separate().int()).abs().max().item()
    times = b.time({"fxforge fused": lambda: ours(cfg), "_int_mm + torch epilogue": separate})
    b.add("epilogue", m=m, n=nk, k=nk, max_lsb_diff=diff,
          ms={k: v * 1e3 for k, v in times.items()},
          speedup=times["_int_mm + torch epilogue"] / times["fxforge fused"])


# --- int8 conv --------------------------------------------------------------------------------


def bench_conv(b: Bench) -> None:
    batch = 2 if b.smoke else 64
    layers = [(8, 16, 6, 3, 1), (16, 8, 5, 1, 2)] if b.smoke else RESNET_LAYERS
    for layer in layers:
        _conv_case(b, batch, *layer)


def _conv_case(b: Bench, batch, cin, cout, h, k, s) -> None:
    pad = k // 2
    x = _int8((batch, cin, h, h), b.device).contiguous(memory_format=torch.channels_last)
    w = _int8((cout, cin, k, k), b.device)
    w_scale = torch.rand(cout, device=b.device) * 1e-3 + 1e-4
    bias = torch.randn(cout, device=b.device)
    prepared = conv.prepare_weight(w)
    ho = (h + 2 * pad - k) // s + 1
    t = TensorType((batch, cout, ho, ho), "f32")
    relu = Epilogue(({"op": "relu"},), (t, t), ())
    geometry = dict(kernel_size=(k, k), stride=(s, s), padding=(pad, pad), dilation=(1, 1))

    def ours(c=None, out="i8"):
        return conv.qconv2d(x, prepared, w_scale, x_scale=0.02, bias=bias, epilogue=relu,
                            out_dtype=out, out_scale=0.5, config=c, **geometry)

    cfg = b.config(conv, f"{cin}-{cout}-{h}-{k}-{s}-{batch}", ours)
    acc = conv.qconv2d(x, prepared, w_scale, x_scale=0.02, out_dtype="i32", config=cfg,
                       **geometry)
    ref = F.conv2d(x.double(), w.double(), None, s, pad).round().int()
    exact = bool(torch.equal(acc, ref))
    xh = x.half().contiguous(memory_format=torch.channels_last)
    wh = w.half().contiguous(memory_format=torch.channels_last)
    bh = bias.half()
    times = b.time({"fxforge int8": lambda: ours(cfg),
                    "cudnn fp16": lambda: torch.relu(F.conv2d(xh, wh, bh, s, pad))})
    flops = 2 * batch * cout * ho * ho * cin * k * k
    b.add("conv", shape=f"{cin}->{cout} {h}x{h} k{k} s{s} batch {batch}", exact=exact,
          ms={k_: v * 1e3 for k_, v in times.items()},
          tops={k_: flops / v / 1e12 for k_, v in times.items()},
          speedup=times["cudnn fp16"] / times["fxforge int8"])


# --- end to end -------------------------------------------------------------------------------


E2E_MODELS = (("resnet50", 64), ("bert-base", 128))  # the batch sizes of the goals
# Systems of an end-to-end row, compiled in this order: fxforge targets, and torch.compile modes
# of the fp16 model. Eager fp16 always runs on CUDA (it is the row's baseline).
E2E_SYSTEMS = ("torch.compile default", "torch.compile max-autotune", "cuda", "cuda-fp16",
               "cuda-int8", "cuda-int4")


def _models(b: Bench) -> list[tuple[str, Any, tuple]]:
    from fxforge.bench.models import get_models

    specs = get_models(b.smoke)
    out = []
    for name, batch in ((("mlp", 4),) if b.smoke else E2E_MODELS):
        model, inputs = specs[name].build(batch)
        out.append((name, model, inputs))
    return out


def bench_e2e(b: Bench) -> None:
    systems = ("cuda-int8",) if b.smoke else E2E_SYSTEMS
    for name, model, inputs in _models(b):
        _e2e_case(b, name, model, inputs, systems)


def _e2e_case(b: Bench, name: str, model, inputs: tuple, systems=E2E_SYSTEMS,
              need_s: dict[str, float] | None = None, **extra: Any) -> None:
    """One row: `model` on `inputs` in eager fp16 (CUDA only; channels-last for image inputs)
    and each of `systems`, compiled in that order ("torch.compile <mode>" needs CUDA). A system
    that `b.allow` refuses (given need_s[system] seconds) is listed as skipped; one that fails
    to compile is listed with its error. Times are interleaved medians; errors are against eager
    float32."""
    import copy

    need_s = need_s or {}
    model = model.to(b.device).eval()
    inputs = tuple(x.to(b.device) for x in inputs)
    with torch.no_grad():
        expected = first_tensor(model(*inputs)).float()
    timed: dict[str, Callable[[], object]] = {}
    errors, compile_s, failed, skipped = {}, {}, {}, {}
    image = inputs[0].dim() == 4 and inputs[0].is_floating_point()
    half, hin = None, ()
    if b.cuda:
        fmt = torch.channels_last if image else torch.preserve_format
        half = copy.deepcopy(model).half().to(memory_format=fmt)
        hin = tuple((x.half().contiguous(memory_format=fmt) if x.dim() == 4 else x.half())
                    if x.is_floating_point() else x for x in inputs)
        timed["eager fp16"] = lambda: half(*hin)
    for label in systems:
        torch_compile = label.startswith("torch.compile ")
        if torch_compile and half is None:
            continue
        if not b.allow(f"e2e {name} {label}", need_s.get(label, 0.0)):
            skipped[label] = "budget"
            continue
        start = time.perf_counter()
        try:
            with torch.no_grad():
                if torch_compile:
                    mode = label.split(" ", 1)[1]
                    fn = torch.compile(half, mode=mode)
                    fn(*hin)
                    timed[f"torch.compile fp16 {mode}"] = lambda fn=fn: fn(*hin)
                else:
                    calib = [tuple(torch.randn_like(x) if x.is_floating_point() else x
                                   for x in inputs)] if label == "cuda-int8" else None
                    fast = fxforge.compile(model, label, example_inputs=inputs,
                                           calibration=calib, autotune=b.autotune)
                    got = first_tensor(fast(*inputs)).float()
                    errors[label] = output_error(expected, got)
                    timed[f"fxforge {label}"] = lambda fast=fast: fast(*inputs)
        except Exception as e:  # a failing system is reported, never fatal
            failed[label] = f"{type(e).__name__}: {e}"[:300]
            traceback.print_exc()
            if b.cuda:
                torch.cuda.empty_cache()
        key = f"torch.compile fp16 {label.split(' ', 1)[1]}" if torch_compile else label
        compile_s[key] = time.perf_counter() - start
    times = b.time(timed) if timed else {}
    base = times.get("eager fp16")
    b.add("e2e", model=name, batch=inputs[0].shape[0], **extra,
          eager_layout="channels_last" if image else "default",
          ms={k: v * 1e3 for k, v in times.items()},
          speedup_vs_eager_fp16={k: base / v for k, v in times.items()} if base else None,
          compile_s=compile_s, error_vs_eager_fp32=errors, failed=failed, skipped=skipped)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fxforge.bench.triton_gpu",
                                description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--no-autotune", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("bench.triton_gpu: no CUDA device here; run it on a GPU machine (or --smoke to "
              "check the script on the CPU interpreter)", file=sys.stderr)
        return 2
    b = Bench(args)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    runners = {"gemm": bench_gemm, "epilogue": bench_epilogue, "conv": bench_conv,
               "e2e": bench_e2e}
    for section in sections:
        runners[section](b)
    device = torch.cuda.get_device_name() if b.cuda else "cpu-interpreter"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": "fxforge-triton-gpu/1", "device": device, "machine": machine(),
           "smoke": b.smoke, "autotune": b.autotune, "repeats": b.repeats, "rows": b.rows}
    path = out / f"triton-gpu-{slug}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    path.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


def _fmt(d: dict | None, digits: int = 3) -> str:
    return "; ".join(f"{k} {v:.{digits}g}" for k, v in (d or {}).items()) or "–"


def peer_ms(ms: dict | None, prefix: str) -> float | None:
    """The time of the first system whose name starts with `prefix` (None: not timed)."""
    return next((v for k, v in (ms or {}).items() if k.startswith(prefix)), None)


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "–"


def markdown(doc: dict) -> str:
    """The run as tables, one per section (ratios > 1: fxforge faster)."""
    lines = [f"# fxforge Triton benchmark ({doc['device']})", "",
             f"{doc['machine']['date']}; torch {doc['machine']['torch']}; commit "
             f"{doc['machine']['commit']}; autotune {doc['autotune']}; medians of "
             f"{doc['repeats']} interleaved rounds" + ("; SMOKE RUN (CPU interpreter, tiny "
                                                      "shapes: times mean nothing)"
                                                      if doc["smoke"] else ""), ""]
    return "\n".join(lines + section_tables(doc["rows"]))


def section_tables(rows: list[dict]) -> list[str]:
    """Markdown tables of the gemm, epilogue, conv and e2e rows (ratios > 1: fxforge faster).
    Rows with a "status" (skipped or failed cases of a time-boxed run) are not measurements and
    are left out."""
    rows = [r for r in rows if "status" not in r]
    lines: list[str] = []
    gemm = [r for r in rows if r["section"] == "gemm"]
    if gemm:
        lines += ["## int8 GEMM", "", "ms: fxforge int8 (int32 out); `torch._int_mm` (M <= 16: "
                  "padded to 32); fp16 `torch.matmul`.", "",
                  "| M | N = K | exact | ms | vs _int_mm | vs fp16 | TOPS (fxforge) |",
                  "|--:|--:|--|--|--:|--:|--:|"]
        for r in gemm:
            ours = r["ms"].get("fxforge int8")
            lines.append(f"| {r['m']} | {r['n']} | {r['exact_vs_int_mm']} | {_fmt(r['ms'])} | "
                         f"{_ratio(peer_ms(r['ms'], 'torch._int_mm'), ours)} | "
                         f"{_ratio(r['ms'].get('fp16 matmul'), ours)} | "
                         f"{r.get('tops', {}).get('fxforge int8', 0):.3g} |")
        lines.append("")
    epi = [r for r in rows if r["section"] == "epilogue"]
    if epi:
        lines += ["## Fused epilogue (bias + relu + requantize)", "",
                  "| M | N = K | max LSB diff | ms | speedup |", "|--:|--:|--:|--|--:|"]
        lines += [f"| {r['m']} | {r['n']} | {r['max_lsb_diff']} | {_fmt(r['ms'])} | "
                  f"{r['speedup']:.2f}x |" for r in epi]
        lines.append("")
    conv_rows = [r for r in rows if r["section"] == "conv"]
    if conv_rows:
        lines += ["## int8 conv vs cuDNN fp16 channels-last", "",
                  "| layer | exact | ms | speedup |", "|--|--|--|--:|"]
        lines += [f"| {r['shape']} | {r['exact']} | {_fmt(r['ms'])} | {r['speedup']:.2f}x |"
                  for r in conv_rows]
        lines.append("")
    e2e = [r for r in rows if r["section"] == "e2e"]
    if e2e:
        lines += ["## End to end", "", "| model | batch | ms | vs eager fp16 | compile s | "
                  "failed / skipped |", "|--|--:|--|--|--|--|"]
        for r in e2e:
            notes = [f"{k}: {v}" for k, v in {**r.get("failed", {}),
                                               **r.get("skipped", {})}.items()]
            lines.append(f"| {r['model']} | {r['batch']} | {_fmt(r['ms'])} | "
                         f"{_fmt(r['speedup_vs_eager_fp16'])} | {_fmt(r.get('compile_s'))} | "
                         f"{'; '.join(notes).replace('|', '/') or '–'} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
