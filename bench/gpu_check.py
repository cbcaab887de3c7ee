"""One GPU check of the Triton backend, time-boxed: verify every kernel on the device, benchmark
against cuBLAS / cuDNN / SDPA / torch.compile, run the autotuner, report the goals.

Usage, on a machine with one CUDA GPU (written for an H100; the default budget fits 8 minutes):

    timeout -k 15 480 python -m fxforge.bench.gpu_check            # everything, <= 8 min
    python -m fxforge.bench.gpu_check --only verify,gemm --budget-s 120
    python -m fxforge.bench.gpu_check --only e2e                    # the end-to-end goals alone
    python -m fxforge.bench.gpu_check --smoke --out /tmp/check      # CPU interpreter, tiny sizes

fxforge must be importable (`pip install -e .`); from a bare checkout, without installing:
`mkdir -p /tmp/fx && ln -sfn "$PWD/compiler" /tmp/fx/fxforge && export PYTHONPATH=/tmp/fx`.
On a machine that starts cold (no Triton, autotune or Inductor caches) compiling is most of the
time: the end-to-end section may not finish both models within the default budget; a second
run (`--only e2e`) on the same machine reuses the caches.

Options: --budget-s (default 460: the run stops starting work once it is spent, and at the
deadline it interrupts the step in flight, so with start-up it ends within 8 minutes), --only
SECTION,... (of SECTIONS), --repeats (timed rounds, default 30), --no-autotune, --out DIR,
--smoke. Without a CUDA device (and without --smoke) it exits with code 2; it exits 1 when a
kernel check failed, else 0 (also when sections were skipped for time).

Results: bench/results/gpu-check-<device>-<date>.json and .md (or under --out), rewritten after
every row, so a run killed from outside still leaves everything measured so far. The markdown
opens with the goals table (measured ratio against target: PASS / FAIL / not measured), then
one table per section. SIGTERM (e.g. from `timeout`) stops the run like the budget does.

Sections, in the order they run (the most valuable results first; each is skipped with a
"skipped: budget" row when too little time is left, and each case inside checks again):
- verify: every kernel module of kernels/triton on the device against the numpy reference
  (kernels/reference*.py, computed on the CPU from the same inputs): gemm (float; int8 static,
  dynamic, fused epilogues; every autotuner config), int4_gemm, conv (groups 1 and grouped,
  float and int8), depthwise, elementwise (fused chains), reduce (softmax, layer_norm, sums),
  quant, attention (f16 / f32, causal, bool and float masks, head dims 32 / 64 / 128, every
  config), pool (max / avg / adaptive), layout (copy / cat / pad / take / gather). Tolerances as
  in the test suite: f32 rtol 1e-4, f16 2e-3 (GEMMs 4e-3), int32 accumulators exact, int8
  outputs within 1 LSB. A failing check is recorded (max error or the exception) and the run
  goes on.
- gemm: int8 GEMM at 4096^3 against `torch._int_mm` and fp16 matmul, and at M = 1 and 16
  (N = K = 8192, split-K configs) against both; 8192^3 when time allows (bench/triton_gpu.py).
- epilogue: int8 GEMM + bias + relu + requantize fused, against `_int_mm` + torch epilogue.
- attention: fused attention f16 against `F.scaled_dot_product_attention` f16 at BERT-base-like
  shapes (B 32, H 12, L 128 / 512, D 64), causal and not.
- graphs: small models of the quick zoo (ResNet-18 width 16, the MLP, tiny BERT) compiled
  `cuda-int8` and `cuda` at batch 1 with cuda_graphs=True against cuda_graphs=False (the same
  kernels, default configs: no tuning), interleaved medians; the live graph status (BERT's says
  why it is off) and the outputs' difference.
- e2e: ResNet-50 (batch 64, 224x224) and BERT-base (batch 128, sequence 128): `cuda-int8`,
  torch.compile fp16 max-autotune, `cuda-fp16`, compiled in that order, each only when its
  estimated time is left (E2E_NEED_S; a cuda-fp16 also leaves time for the next model's goal
  systems), against eager fp16 (channels-last for ResNet); error against eager float32.
- conv: int8 conv (bias + relu + requantize fused) against cuDNN fp16 channels-last on ResNet-50
  layers at batch 64.
- autotune: a cold tune (fresh cache) of GEMM, split-K GEMM, conv and attention problems:
  picked config, time spent, best against the default config; and what the shared tuner timed
  during the run.

--smoke runs every section through Triton's interpreter on the CPU at tiny sizes (no
torch.compile, no CUDA graphs; times mean nothing): it checks the script, in the test suite.

The code, one file per part: this file is the command (options, section order, exit code);
gpu_run.py the run's state (deadline, rows, files), gpu_sizes.py the full and smoke sizes,
gpu_report.py the goals and the markdown, gpu_verify.py the verify section (its checks in
gpu_verify_matmul.py and gpu_verify_ops.py, built from gpu_verify_tools.py), gpu_sections.py the
benchmark sections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fxforge.bench.gpu_report import GOALS, goals, markdown
from fxforge.bench.gpu_run import SCHEMA, BudgetExceeded, Check
from fxforge.bench.gpu_sections import (
    run_attention,
    run_autotune,
    run_conv,
    run_e2e,
    run_epilogue,
    run_gemm,
    run_graphs,
)
from fxforge.bench.gpu_sizes import FULL
from fxforge.bench.gpu_verify import VERIFY, run_verify
from fxforge.bench.harness import DEFAULT_OUT

# The names the tests read here, wherever they live.
__all__ = ["FULL", "GOALS", "RUNNERS", "SCHEMA", "SECTIONS", "VERIFY", "goals", "main", "markdown"]

SECTIONS = ("verify", "gemm", "epilogue", "attention", "graphs", "e2e", "conv", "autotune")
# Least time a section needs to be worth starting, on a GPU (smoke runs start any section).
SECTION_NEED_S = {"verify": 20, "gemm": 20, "epilogue": 10, "attention": 15, "graphs": 15,
                  "e2e": 60, "conv": 10, "autotune": 10}

RUNNERS: dict[str, Callable[[Check], None]] = {
    "verify": run_verify, "gemm": run_gemm, "epilogue": run_epilogue,
    "attention": run_attention, "graphs": run_graphs, "e2e": run_e2e, "conv": run_conv,
    "autotune": run_autotune}


def _run_sections(b: Check, sections: list[str]) -> None:
    for name in sections:
        if name in b.sections:
            continue
        start = time.monotonic()
        try:
            need = 0.0 if b.smoke else float(SECTION_NEED_S[name])
            if not b.allow(name, need):
                b.sections[name] = {"status": b.skip_status()}
                b.skip(name, None, need)
                continue
            print(f"== {name} ({b.left():.0f} s left)", flush=True)
            b.sections[name] = {"status": "running"}
            RUNNERS[name](b)
            b.sections[name] = {"status": "done", "seconds": time.monotonic() - start}
        except BudgetExceeded as e:
            status = b.sections.get(name, {}).get("status", "")
            if status.startswith("skipped"):  # the deadline came as it was being skipped
                if not any(r["section"] == name and r.get("status") == status for r in b.rows):
                    b.rows.append({"section": name, "status": status})
                continue
            b.sections[name] = {"status": f"stopped: {e}", "seconds": time.monotonic() - start}
            b.add(name, status=f"stopped: {e}")
        except Exception as e:  # a bug of the section itself: recorded, the next one runs
            b.sections[name] = {"status": "error", "seconds": time.monotonic() - start}
            b.error(name, "section", e)
        b.write()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fxforge.bench.gpu_check",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"sections to run, in this order: {','.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=460.0,
                   help="seconds for the whole run (default 460: fits 8 minutes with start-up)")
    p.add_argument("--repeats", type=int, default=30, help="timed interleaved rounds")
    p.add_argument("--no-autotune", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on Triton's CPU interpreter (checks the script)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and markdown")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in sections]
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is made (kernels/triton/jit)
    elif not torch.cuda.is_available():
        print("bench.gpu_check: no CUDA device here (torch.cuda.is_available() is False); run "
              "it on a GPU machine, or add --smoke to check the script on Triton's CPU "
              "interpreter", file=sys.stderr)
        return 2
    else:
        from fxforge.kernels.triton.jit import interpreting

        if interpreting():
            print("bench.gpu_check: TRITON_INTERPRET is set, so kernels would run on the CPU "
                  "interpreter; unset it for a GPU run (or use --smoke)", file=sys.stderr)
            return 2
    b = Check(args, Path(args.out))
    print(f"gpu_check: {b.device_name}; budget {b.budget_s:g} s; writing {b.json_path}",
          flush=True)
    b.write()
    try:
        b.arm()
        _run_sections(b, sections)
    except BudgetExceeded:  # between sections: the rest is marked below
        pass
    finally:
        b.disarm()
    for name in sections:
        if name not in b.sections:
            b.sections[name] = {"status": b.skip_status()}
            b.rows.append({"section": name, "status": b.skip_status()})
    b.finished = True
    b.write()
    print(f"wrote {b.json_path} and {b.md_path.name}")
    for g in goals(b.rows, b.sizes):
        shown = "–" if g["measured"] is None else f"{g['measured']:.2f}x"
        print(f"goal {g['goal']}: {shown} (target {g['target']:g}x) {g['status']}")
    failed = [r for r in b.rows if r["section"] == "verify" and "status" not in r
              and not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
