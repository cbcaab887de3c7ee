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
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fxforge.bench import triton_gpu
from fxforge.bench.harness import DEFAULT_OUT
from fxforge.bench.metrics import first_tensor
from fxforge.bench.timing import machine

SECTIONS = ("verify", "gemm", "epilogue", "attention", "graphs", "e2e", "conv", "autotune")
SCHEMA = "fxforge-gpu-check/1"
# Least time a section needs to be worth starting, on a GPU (smoke runs start any section).
SECTION_NEED_S = {"verify": 20, "gemm": 20, "epilogue": 10, "attention": 15, "graphs": 15,
                  "e2e": 60, "conv": 10, "autotune": 10}
# Estimated seconds of each end-to-end step (compile with autotuning, first call); a step starts
# only when this much is left. Guesses for a fresh H100 (no caches): the JSON records the real
# compile times (e2e rows, compile_s) to correct them.
E2E_NEED_S = {"resnet50": {"cuda-int8": 75, "torch.compile max-autotune": 150, "cuda-fp16": 75},
              "bert-base": {"cuda-int8": 45, "torch.compile max-autotune": 90, "cuda-fp16": 45}}
E2E_ORDER = ("cuda-int8", "torch.compile max-autotune", "cuda-fp16")
E2E_GOAL_SYSTEMS = ("cuda-int8", "torch.compile max-autotune")
ATTENTION_CLOSE = 1e-2  # |ours - SDPA| in f16: two f16 results, each ~1e-3 from the exact one


class BudgetExceeded(BaseException):
    """The run's time is up (its budget, or SIGTERM). A BaseException, so that the `except
    Exception` of a step (or of the autotuner skipping a failing config) does not swallow it."""


# --- sizes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    gemm_big: int                      # M = N = K of the goal GEMM
    gemm_small_nk: int                 # N = K at M <= 16
    gemm_small_ms: tuple[int, ...]
    gemm_extra: tuple[tuple[int, int], ...]   # (M, N = K) when time allows
    epilogue: tuple[tuple[int, int], ...]     # (M, N = K), the first is the goal's
    attention: tuple[tuple[int, int, int, int], ...]  # (B, H, L, D)
    conv_batch: int
    conv_layers: tuple[tuple[int, int, int, int, int], ...]
    e2e: tuple[tuple[str, int], ...]   # (model, batch)
    graphs: tuple[str, ...]            # quick-zoo models, batch 1
    configs: int | None                # autotuner / every-config checks: all, or the first n


FULL = Sizes(4096, 8192, (1, 16), ((8192, 8192),), ((4096, 4096), (8192, 8192)),
             ((32, 12, 128, 64), (32, 12, 512, 64)), 64, tuple(triton_gpu.RESNET_LAYERS),
             (("resnet50", 64), ("bert-base", 128)), ("resnet18", "mlp", "bert-base"), None)
SMOKE = Sizes(64, 64, (1, 16), (), ((40, 64),), ((1, 2, 16, 16), (1, 2, 40, 16)), 2,
              ((8, 16, 6, 3, 1), (16, 8, 5, 1, 2)), (("mlp", 4),), ("mlp",), 2)


# --- the run --------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """JSON for what json cannot write itself (numpy scalars, dtypes, ...)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Size, tuple, set)):
        return list(obj)
    return str(obj)


def _tb_head(e: BaseException) -> list[str]:
    """The exception and the last frames of its traceback, short."""
    frames = traceback.extract_tb(e.__traceback__)[-4:]
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames] + [
        f"{type(e).__name__}: {str(e)[:400]}"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _versions(cuda: bool) -> dict[str, str]:
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda),
           "python": sys.version.split()[0]}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "not installed"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, " \
                     f"{props.multi_processor_count} SMs, sm_{props.major}{props.minor}"
    return out


class Check(triton_gpu.Bench):
    """triton_gpu's Bench with a deadline: rows are written out as they come, steps ask
    `allow` before they start, and the deadline (or SIGTERM) interrupts the step in flight."""

    def __init__(self, args: argparse.Namespace, out: Path):
        super().__init__(args)
        self.sizes = SMOKE if self.smoke else FULL
        self.budget_s = float(args.budget_s)
        self.started = time.monotonic()
        self.deadline = self.started + self.budget_s
        self.sections: dict[str, dict[str, Any]] = {}
        self.stopped: str | None = None
        self.finished = False
        self._writing = False
        self._pending: str | None = None
        self._saved: dict[int, Any] = {}
        self.device_name = torch.cuda.get_device_name() if self.cuda else "cpu-interpreter"
        self.versions = _versions(self.cuda)
        self.machine = machine()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"gpu-check-{slug}-{stamp}.json"
        self.md_path = self.json_path.with_suffix(".md")

    # -- time --

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, what: str, need_s: float) -> bool:
        return self.stopped is None and self.left() >= need_s

    def _interrupt(self, why: str) -> None:
        if self.stopped is not None:
            return  # already stopping: a second signal changes nothing
        self.stopped = why
        if self._writing:
            self._pending = why  # raised when the write is done: files stay whole
        else:
            raise BudgetExceeded(why)

    def arm(self) -> None:
        """SIGALRM at the deadline and SIGTERM raise BudgetExceeded in the main thread."""
        if threading.current_thread() is not threading.main_thread() \
                or not hasattr(signal, "setitimer"):
            return
        for sig, why in ((signal.SIGALRM, "budget"), (signal.SIGTERM, "SIGTERM")):
            self._saved[sig] = signal.signal(sig, lambda *_, why=why: self._interrupt(why))
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))

    def disarm(self) -> None:
        if not self._saved:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    # -- rows --

    def add(self, section: str, **row: Any) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        print(json.dumps(row, default=_plain), flush=True)
        self.write()

    def skip_status(self) -> str:
        return "skipped: budget" if self.stopped in (None, "budget") else \
            f"skipped: {self.stopped}"

    def skip(self, section: str, case: str | None, need_s: float) -> None:
        self.add(section, **({"case": case} if case else {}), status=self.skip_status(),
                 need_s=need_s, left_s=round(max(self.left(), 0.0), 1))

    def error(self, section: str, case: str, e: BaseException) -> None:
        self.add(section, case=case, status="error", error=f"{type(e).__name__}: {e}"[:500],
                 traceback=_tb_head(e))
        self.recover()

    def recover(self) -> None:
        """After a failed step: wait for the device and give memory back (OOM); a sticky CUDA
        error stays, and every later step reports it."""
        if self.cuda:
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:  # the error was recorded with its step
                pass

    def case(self, section: str, label: str, need_s: float, fn: Callable[[], object]) -> None:
        """Run one step of a section unless too little time is left; an exception is recorded
        as the step's error row and the section goes on."""
        if not self.allow(label, need_s):
            self.skip(section, label, need_s)
            return
        try:
            fn()
        except Exception as e:  # a failing step is reported, never fatal
            self.error(section, label, e)

    # -- output --

    def document(self) -> dict[str, Any]:
        verify = [r for r in self.rows if r["section"] == "verify" and "status" not in r]
        return {"schema": SCHEMA, "device": self.device_name, "versions": self.versions,
                "machine": self.machine, "smoke": self.smoke, "autotune": self.autotune,
                "repeats": self.repeats, "budget_s": self.budget_s,
                "elapsed_s": round(time.monotonic() - self.started, 1),
                "finished": self.finished, "stopped": self.stopped, "sections": self.sections,
                "verify": {"passed": sum(bool(r["ok"]) for r in verify),
                           "failed": sum(not r["ok"] for r in verify)},
                "goals": goals(self.rows, self.sizes), "rows": self.rows}

    def write(self) -> None:
        self._writing = True
        try:
            doc = self.document()
            _write_atomic(self.json_path, json.dumps(doc, indent=1, default=_plain))
            try:
                text = markdown(doc)
            except Exception as e:  # the JSON has it all; say why, go on
                text = f"# fxforge GPU check: {self.device_name}\n\nThe markdown could not " \
                       f"be made ({type(e).__name__}: {e}); see {self.json_path.name}.\n"
            _write_atomic(self.md_path, text)
        finally:
            self._writing = False
        if self._pending is not None:
            why, self._pending = self._pending, None
            raise BudgetExceeded(why)


# --- verify: every kernel against the numpy reference ----------------------------------------

F32_TOL = dict(rtol=1e-4, atol=1e-5)
F16_TOL = dict(rtol=2e-3, atol=2e-3)
F16_GEMM_TOL = dict(rtol=4e-3, atol=4e-3)  # f16 inputs and output of a long dot product
POOL_TOL = dict(rtol=1e-5, atol=1e-6)
RELU = {"op": "relu"}
GELU = {"op": "gelu", "attrs": {"approximate": "none"}}


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _result(ok: bool, max_err: float | None, tol: str, **extra: Any) -> dict[str, Any]:
    return {"ok": bool(ok), "max_err": max_err, "tol": tol, **extra}


def close(got: torch.Tensor, want: np.ndarray, rtol: float, atol: float,
          scale_atol: bool = False) -> dict[str, Any]:
    """|got - want| <= atol + rtol * |want| everywhere (NaN where the reference has NaN);
    scale_atol: atol is relative to max |want|."""
    g = _host(got).astype(np.float64)
    w = np.asarray(want).astype(np.float64)
    if g.shape != w.shape:
        return _result(False, None, "shape", error=f"shape {list(g.shape)} != {list(w.shape)}")
    finite = np.abs(w[np.isfinite(w)])
    if scale_atol and finite.size:
        atol *= float(finite.max())
    ok = bool(np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True).all())
    with np.errstate(invalid="ignore"):
        err = np.abs(g - w)
    err = err[np.isfinite(err)]
    return _result(ok, float(err.max()) if err.size else 0.0, f"rtol {rtol:g}, atol {atol:.2g}")


def exact(got: torch.Tensor, want: np.ndarray) -> dict[str, Any]:
    g, w = _host(got), np.asarray(want)
    if g.shape != w.shape:
        return _result(False, None, "exact", error=f"shape {list(g.shape)} != {list(w.shape)}")
    diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
    ok = bool(np.array_equal(g, w, equal_nan=np.issubdtype(w.dtype, np.floating)))
    diff = diff[np.isfinite(diff)]
    return _result(ok, float(diff.max()) if diff.size else 0.0, "exact")


def lsb(got: torch.Tensor, want: np.ndarray, min_exact: float) -> dict[str, Any]:
    """int8 outputs: within 1 LSB everywhere, and at least `min_exact` of them equal."""
    g, w = _host(got), np.asarray(want)
    if g.shape != w.shape or g.dtype != np.int8:
        return _result(False, None, "1 LSB", error=f"{g.dtype}{list(g.shape)} != "
                       f"{w.dtype}{list(w.shape)}")
    diff = np.abs(g.astype(np.int32) - w.astype(np.int32))
    same = float(np.mean(diff == 0)) if diff.size else 1.0
    return _result(diff.max(initial=0) <= 1 and same >= min_exact, float(diff.max(initial=0)),
                   f"1 LSB, >= {min_exact:.0%} exact", exact_fraction=round(same, 5))


def combine(*results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    errs = [r["max_err"] for r in results if r["max_err"] is not None]
    out = _result(all(r["ok"] for r in results), max(errs) if errs else None,
                  "; ".join(dict.fromkeys(r["tol"] for r in results)), **extra)
    problems = [r["error"] for r in results if "error" in r]
    if problems:
        out["error"] = "; ".join(problems)
    return out


class Verify:
    """Inputs made with numpy, run on the device, compared on the host with the reference."""

    def __init__(self, device: torch.device, smoke: bool, configs: int | None):
        self.device, self.smoke, self.configs = device, smoke, configs
        self.big = not smoke

    def rng(self, *key: object) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(repr(key).encode()))

    def t(self, a: np.ndarray, channels_last: bool = False) -> torch.Tensor:
        a = np.ascontiguousarray(a).reshape(np.shape(a))  # (ascontiguousarray makes 0-d 1-d)
        t = torch.from_numpy(a).to(self.device)
        return t.contiguous(memory_format=torch.channels_last) \
            if channels_last and t.dim() == 4 else t

    def some(self, configs: list[dict]) -> list[dict]:
        return list(configs) if self.configs is None else list(configs)[:self.configs]


def _types(arrays) -> list:
    from fxforge import dtypes
    from fxforge.ir import TensorType

    return [TensorType(np.shape(a), dtypes.from_numpy(np.asarray(a).dtype)) for a in arrays]


def _float_epilogue(op: str, inputs: list, attrs: dict):
    """(Epilogue, completed attrs, stage types) of a fused_linear / fused_conv2d node."""
    from fxforge import ops
    from fxforge.kernels.triton.codegen import Epilogue

    attrs = ops.complete_attrs(ops.get(op), attrs)
    types = _types(inputs)
    stages = ops.stage_types(op, types, attrs)
    return Epilogue(attrs["epilogue"], tuple(stages), tuple(types)), attrs, stages


def _quant_epilogue(op: str, inputs: list, attrs: dict, reference: Callable):
    """(Epilogue, reference output) of a qlinear / qconv2d node."""
    from fxforge import ops
    from fxforge.ir import TensorType
    from fxforge.kernels.triton.codegen import Epilogue

    attrs = ops.complete_attrs(ops.get(op), attrs)
    want = reference(*inputs, **attrs)
    types = _types(inputs)
    stages = ops.epilogue_types(TensorType(want.shape, "f32"), types, attrs["epilogue"])
    return Epilogue(attrs["epilogue"], tuple(stages), tuple(types)), attrs, want


def _int8(rng, shape, lo=-128) -> np.ndarray:
    return rng.integers(lo, 128, size=shape).astype(np.int8)


# GEMM shapes (M, N, K): partial tiles at every edge, a big-M and a split-K (M <= 16) one.
def _gemm_shapes(v: Verify) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((300, 200, 520), (5, 200, 520)) if v.big else ((40, 33, 70), (3, 33, 65))


def v_linear_f32(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("linear", m, n, k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        out.append(close(gemm.linear(v.t(x), v.t(w), bias=v.t(b)), ref.linear(x, w, b),
                         **F32_TOL))
    return combine(*out)


def v_linear_f16_epilogue(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("linear16", m, n, k)
        x = rng.standard_normal((m, k)).astype(np.float16)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)
        # a small bias keeps |x @ w.T + b| ~ 1, where one f16 ulp is within the tolerance
        inputs = [x, w, (rng.standard_normal(n) * 0.1).astype(np.float32),
                  rng.standard_normal((m, n)).astype(np.float32)]
        steps = [GELU, {"op": "add", "operand": 3, "side": "right"}]
        epi, attrs, stages = _float_epilogue("fused_linear", inputs,
                                             {"has_bias": True, "epilogue": steps})
        got = gemm.linear(v.t(x), v.t(w), bias=v.t(inputs[2]), epilogue=epi,
                          operands={3: v.t(inputs[3])}, out_dtype=stages[-1].dtype)
        out.append(close(got, ref.fused_linear(*inputs, **attrs), **F16_GEMM_TOL))
    return combine(*out)


def v_qlinear_acc(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("qacc", m, n, k)
        x, w = _int8(rng, (m, k)), _int8(rng, (n, k))
        acc = gemm.qlinear(v.t(x), v.t(w), v.t(np.ones(n, np.float32)), x_scale=0.1,
                           x_zero_point=-3, out_dtype="i32")
        out.append(exact(acc, rq.qlinear_acc(x, w, -3)))
    return combine(*out)


def _qlinear(v: Verify, shape, dynamic: bool, steps: list, out_dtype: str, residual: bool):
    """Run qlinear with bias (and a residual operand) on random int8 inputs; (got, want)."""
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    m, n, k = shape
    rng = v.rng("qlinear", shape, dynamic, out_dtype)
    x, w = _int8(rng, (m, k)), _int8(rng, (n, k), lo=-127)
    inputs = [x, w, rng.uniform(1e-3, 1e-2, n).astype(np.float32),
              rng.standard_normal(n).astype(np.float32)]
    x_scale = rng.uniform(0.01, 0.1, (m, 1)).astype(np.float32) if dynamic else 0.037
    if dynamic:
        inputs.append(x_scale)
    steps = list(steps)
    if residual:
        inputs.append(rng.standard_normal((m, n)).astype(np.float32))
        steps.append({"op": "add", "operand": len(inputs) - 1, "side": "right"})
    i8 = out_dtype == "i8"
    epi, attrs, want = _quant_epilogue("qlinear", inputs, dict(
        has_bias=True, dynamic=dynamic, x_scale=None if dynamic else x_scale,
        x_zero_point=0 if dynamic else -3, out_dtype="i8" if i8 else "f32",
        out_scale=0.05 if i8 else None, out_zero_point=-7 if i8 else 0, epilogue=steps),
        rq.qlinear)
    got = gemm.qlinear(v.t(x), v.t(w), v.t(inputs[2]),
                       x_scale=v.t(x_scale) if dynamic else x_scale,
                       x_zero_point=attrs["x_zero_point"], bias=v.t(inputs[3]), epilogue=epi,
                       operands={len(inputs) - 1: v.t(inputs[-1])} if residual else None,
                       out_dtype=out_dtype, out_scale=attrs["out_scale"],
                       out_zero_point=attrs["out_zero_point"])
    return got, want


def v_qlinear_static_i8(v: Verify):
    got, want = _qlinear(v, _gemm_shapes(v)[0], False, [RELU], "i8", True)
    small, want_small = _qlinear(v, _gemm_shapes(v)[1], False, [RELU], "i8", False)
    return combine(lsb(got, want, 0.95), lsb(small, want_small, 0.95))


def v_qlinear_dynamic_f32(v: Verify):
    out = []
    for shape in _gemm_shapes(v):
        got, want = _qlinear(v, shape, True, [GELU], "f32", True)
        out.append(close(got, want, rtol=1e-5, atol=1e-6, scale_atol=True))
    return combine(*out)


def v_qlinear_f16(v: Verify):
    got, want = _qlinear(v, _gemm_shapes(v)[1], False, [], "f16", False)
    return close(got, want.astype(np.float16), rtol=1e-3, atol=1e-3, scale_atol=True)


def v_gemm_configs(v: Verify):
    """int32 accumulators exact with every autotuner config (aligned shapes, zero point 0: the
    kernels the GEMM benchmark tunes over, so they are compiled once)."""
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    n, k = (256, 512) if v.big else (64, 128)
    out, bad = [], []
    for m, configs in ((n, gemm.CONFIGS), (16, gemm.SMALL_M_CONFIGS)):
        rng = v.rng("qcfg", m, n, k)
        x, w = _int8(rng, (m, k)), _int8(rng, (n, k))
        want = rq.qlinear_acc(x, w, 0)
        for cfg in v.some(configs):
            try:
                r = exact(gemm.qlinear(v.t(x), v.t(w), v.t(np.ones(n, np.float32)), x_scale=1.0,
                                       out_dtype="i32", config=cfg), want)
            except Exception as e:  # a config that does not run is a failure of the check
                r = _result(False, None, "exact", error=f"{cfg}: {type(e).__name__}: {e}"[:300])
            out.append(r)
            if not r["ok"]:
                bad.append(cfg)
    return combine(*out, configs=len(out), failed_configs=bad)


def v_int4(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import int4_gemm

    cases = ([((300, 200, 512), 32, 32, np.float32), ((5, 200, 516), 6, None, np.float16)]
             if v.big else [((17, 40, 64), 32, 32, np.float32), ((5, 9, 96), 6, None,
                                                                  np.float16)])
    out = []
    for (m, n, k), g, block_k, dtype in cases:
        rng = v.rng("int4", m, n, k, g)
        x = rng.standard_normal((m, k)).astype(dtype)
        packed = rng.integers(0, 256, size=(n, k // 2)).astype(np.uint8)
        scales = rng.uniform(0.01, 0.2, (n, k // g)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        want = rq.linear_int4(x, packed, scales, bias, group_size=g, has_bias=True)
        config = None if block_k is None else dict(int4_gemm.DEFAULT_CONFIG, BLOCK_K=block_k)
        got = int4_gemm.linear_int4(v.t(x), v.t(packed), v.t(scales), group_size=g,
                                    bias=v.t(bias), config=config)
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=4e-3, atol=4e-3)
        out.append(close(got, want, **tol, scale_atol=True))
    return combine(*out)


# conv: (x shape, Cout, kernel, stride, padding, groups)
def _conv_case(v: Verify, grouped: bool):
    if grouped:
        return ((2, 32, 13, 13), 48, 3, 2, 1, 4) if v.big else ((1, 16, 7, 7), 20, 3, 2, 1, 4)
    return ((2, 37, 15, 15), 40, 3, 1, 1, 1) if v.big else ((2, 5, 9, 9), 24, 3, 1, 1, 1)


def _geom(k, s, p, groups):
    return dict(stride=(s, s), padding=(p, p), dilation=(1, 1), groups=groups), (k, k)


def _float_conv(v: Verify, grouped: bool, dtype, stride: int | None, steps: list):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import conv

    x_shape, cout, k, s, p, groups = _conv_case(v, grouped)
    s = stride or s
    rng = v.rng("fconv", grouped, np.dtype(dtype).name, s)
    cin_g = x_shape[1] // groups
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((cout, cin_g, k, k)) / np.sqrt(cin_g * k * k)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    geom, kernel = _geom(k, s, p, groups)
    epi, attrs, _ = _float_epilogue("fused_conv2d", [x, w, bias],
                                    dict(geom, has_bias=True, epilogue=steps))
    got = conv.conv2d(v.t(x, True), conv.prepare_weight(v.t(w)), kernel_size=kernel,
                      bias=v.t(bias), epilogue=epi, **geom)
    want = ref.fused_conv2d(x, w, bias, **attrs)
    return close(got, want, **(F32_TOL if dtype == np.float32 else F16_TOL))


def v_conv_f32(v: Verify):
    return _float_conv(v, False, np.float32, None, [RELU])


def v_conv_f16(v: Verify):
    return _float_conv(v, False, np.float16, 2, [])


def v_conv_grouped_f32(v: Verify):
    return _float_conv(v, True, np.float32, None, [RELU])


def _qconv(v: Verify, grouped: bool, out_dtype: str, zp: int):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import conv

    x_shape, cout, k, s, p, groups = _conv_case(v, grouped)
    rng = v.rng("qconv", grouped, out_dtype, zp)
    x, w = _int8(rng, x_shape), _int8(rng, (cout, x_shape[1] // groups, k, k), lo=-127)
    geom, kernel = _geom(k, s, p, groups)
    if out_dtype == "i32":
        got = conv.qconv2d(v.t(x, True), conv.prepare_weight(v.t(w)),
                           v.t(np.ones(cout, np.float32)), kernel_size=kernel, x_scale=0.5,
                           x_zero_point=zp, out_dtype="i32", **geom)
        return exact(got, rq.qconv2d_acc(x, w, zp, geom["stride"], geom["padding"],
                                         geom["dilation"], groups))
    inputs = [x, w, rng.uniform(1e-3, 1e-2, cout).astype(np.float32),
              rng.standard_normal(cout).astype(np.float32)]
    epi, attrs, want = _quant_epilogue("qconv2d", inputs, dict(
        geom, has_bias=True, dynamic=False, x_scale=0.021, x_zero_point=zp, out_dtype="i8",
        out_scale=0.03, out_zero_point=2, epilogue=[RELU]), rq.qconv2d)
    got = conv.qconv2d(v.t(x, True), conv.prepare_weight(v.t(w)), v.t(inputs[2]),
                       kernel_size=kernel, x_scale=0.021, x_zero_point=zp, bias=v.t(inputs[3]),
                       epilogue=epi, out_dtype="i8", out_scale=0.03, out_zero_point=2, **geom)
    return lsb(got, want, 0.99)


def v_qconv_acc(v: Verify):
    return _qconv(v, False, "i32", 7)


def v_qconv_grouped_acc(v: Verify):
    return _qconv(v, True, "i32", 13)


def v_qconv_i8(v: Verify):
    return _qconv(v, False, "i8", 5)


def v_qconv_grouped_i8(v: Verify):
    return _qconv(v, True, "i8", -9)


def v_conv_configs(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import conv

    x_shape, cout = ((2, 64, 14, 14), 64) if v.big else ((1, 16, 6, 6), 16)
    rng = v.rng("qconv-cfg")
    x, w = _int8(rng, x_shape), _int8(rng, (cout, x_shape[1], 3, 3))
    want = rq.qconv2d_acc(x, w, 0, (1, 1), (1, 1), (1, 1), 1)
    prepared, ones = conv.prepare_weight(v.t(w)), v.t(np.ones(cout, np.float32))
    out, bad = [], []
    for cfg in v.some(conv.CONFIGS):
        try:
            r = exact(conv.qconv2d(v.t(x, True), prepared, ones, kernel_size=(3, 3), x_scale=1.0,
                                   padding=(1, 1), out_dtype="i32", config=cfg), want)
        except Exception as e:
            r = _result(False, None, "exact", error=f"{cfg}: {type(e).__name__}: {e}"[:300])
        out.append(r)
        if not r["ok"]:
            bad.append(cfg)
    return combine(*out, configs=len(out), failed_configs=bad)


def _dw_shape(v: Verify):
    return (2, 48, 15, 15) if v.big else (2, 16, 8, 8)


def _depthwise_float(v: Verify, dtype, stride: int):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import depthwise

    x_shape = _dw_shape(v)
    c = x_shape[1]
    rng = v.rng("dw", np.dtype(dtype).name, stride)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((c, 1, 3, 3)) / 3).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    geom, kernel = _geom(3, stride, 1, c)
    epi, attrs, _ = _float_epilogue("fused_conv2d", [x, w, bias],
                                    dict(geom, has_bias=True, epilogue=[RELU]))
    got = depthwise.depthwise_conv2d(v.t(x, True), depthwise.prepare_depthwise_weight(v.t(w)),
                                     kernel_size=kernel, bias=v.t(bias), epilogue=epi,
                                     stride=geom["stride"], padding=geom["padding"])
    return close(got, ref.fused_conv2d(x, w, bias, **attrs),
                 **(F32_TOL if dtype == np.float32 else F16_TOL))


def v_depthwise_f32(v: Verify):
    return _depthwise_float(v, np.float32, 1)


def v_depthwise_f16(v: Verify):
    return _depthwise_float(v, np.float16, 2)


def v_depthwise_int8(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import depthwise

    x_shape = _dw_shape(v)
    c = x_shape[1]
    rng = v.rng("dwq")
    x, w = _int8(rng, x_shape), _int8(rng, (c, 1, 3, 3), lo=-127)
    geom, kernel = _geom(3, 1, 1, c)
    prepared = depthwise.prepare_depthwise_weight(v.t(w))
    acc = depthwise.depthwise_qconv2d(v.t(x, True), prepared, v.t(np.ones(c, np.float32)),
                                      kernel_size=kernel, x_scale=0.1, x_zero_point=-17,
                                      stride=(1, 1), padding=(1, 1), out_dtype="i32")
    acc_r = exact(acc, rq.qconv2d_acc(x, w, -17, (1, 1), (1, 1), (1, 1), c))
    inputs = [x, w, rng.uniform(1e-3, 1e-2, c).astype(np.float32),
              rng.standard_normal(c).astype(np.float32)]
    epi, attrs, want = _quant_epilogue("qconv2d", inputs, dict(
        geom, has_bias=True, dynamic=False, x_scale=0.021, x_zero_point=5, out_dtype="i8",
        out_scale=0.02, out_zero_point=-1, epilogue=[RELU]), rq.qconv2d)
    got = depthwise.depthwise_qconv2d(v.t(x, True), prepared, v.t(inputs[2]),
                                      kernel_size=kernel, x_scale=0.021, x_zero_point=5,
                                      bias=v.t(inputs[3]), stride=(1, 1), padding=(1, 1),
                                      epilogue=epi, out_dtype="i8", out_scale=0.02,
                                      out_zero_point=-1)
    return combine(acc_r, lsb(got, want, 0.99))


def _chain(v: Verify, arrays: list[np.ndarray], steps) -> dict[str, Any]:
    from fxforge import dtypes, ops
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import elementwise

    in_types = _types(arrays)
    stages = ops.stage_types("fused_elementwise", in_types, {"steps": steps})
    why = elementwise.supports(in_types, steps, stages)
    if why is not None:
        return _result(False, None, "-", error=f"not supported: {why}")
    got = elementwise.fused_elementwise([v.t(a) for a in arrays], in_types, steps, stages)
    want = ref.fused_elementwise(*arrays, steps=steps)
    if stages[-1].dtype == "f16":
        return close(got, want.astype(np.float16), rtol=2e-3, atol=1e-3)
    return close(got, want.astype(dtypes.to_numpy(stages[-1].dtype)), **F32_TOL)


def v_elementwise_f32(v: Verify):
    rng = v.rng("chain32")
    shape, channel = ((8, 64, 14, 14), (1, 64, 1, 1)) if v.big else ((2, 3, 5, 7), (1, 3, 1, 1))
    arrays = [(rng.standard_normal(shape) * 2).astype(np.float32),
              rng.standard_normal(channel).astype(np.float32),
              np.asarray(rng.standard_normal(()), dtype=np.float32)]
    steps = ({"op": "mul", "args": (0, 1)}, {"op": "add", "args": (3, 2)},
             {"op": "gelu", "args": (4,), "attrs": {"approximate": "none"}})
    return _chain(v, arrays, steps)


def v_elementwise_f16(v: Verify):
    rng = v.rng("chain16")
    # |x| stays well below 11, where exp overflows f16
    x = (rng.standard_normal((64, 33, 129) if v.big else (3, 5, 11)) * (1 if v.big else 2)) \
        .astype(np.float16)
    steps = ({"op": "exp", "args": (0,)}, {"op": "add", "args": (1, 0)},
             {"op": "div", "args": (2, 1)}, {"op": "sigmoid", "args": (3,)})
    return _chain(v, [x], steps)


def v_softmax(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    rng = v.rng("softmax")
    x = (rng.standard_normal((64, 3000) if v.big else (3, 1000)) * 8).astype(np.float32)
    x[0, :7] = -np.inf
    h = (rng.standard_normal((64, 777) if v.big else (6, 33)) * 2).astype(np.float16)
    return combine(
        close(reduce.softmax(v.t(x), -1), ref.softmax(x, dim=-1).astype(np.float32), **F32_TOL),
        close(reduce.log_softmax(v.t(x), -1), ref.log_softmax(x, dim=-1).astype(np.float32),
              **F32_TOL),
        close(reduce.softmax(v.t(h), 1), ref.softmax(h, dim=1).astype(np.float16), rtol=2e-3,
              atol=1e-3))


def v_layer_norm(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    out = []
    for shape, dtype in ((((8, 16, 1000) if v.big else (2, 3, 40)), np.float32),
                         (((64, 768) if v.big else (5, 33)), np.float16)):
        rng = v.rng("ln", shape)
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        w = rng.standard_normal(shape[-1:]).astype(np.float32)
        b = rng.standard_normal(shape[-1:]).astype(np.float32)
        got = reduce.layer_norm(v.t(x), v.t(w), v.t(b), 1e-5)
        want = ref.layer_norm(x, w, b, eps=1e-5).astype(dtype)
        out.append(close(got, want, **(F32_TOL if dtype == np.float32 else
                                      dict(rtol=2e-3, atol=1e-3))))
    return combine(*out)


def v_reduce(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    out = []
    for shape, dims in ((((16, 33, 700) if v.big else (3, 5, 6)), (0, 2)),
                        (((64, 3000) if v.big else (3, 700)), (1,))):
        x = (v.rng("reduce", shape).standard_normal(shape) * 2).astype(np.float32)
        for op in ("sum", "mean", "amax"):
            want = getattr(ref, op)(x, dims=dims, keepdim=False).astype(np.float32)
            out.append(close(reduce.reduce(v.t(x), op, dims, False), want, **F32_TOL))
    return combine(*out)


def v_quant(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import quant

    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 127.5, -128.5, 3.5, 1e30,
                     -1e30, 0.0, -0.0, 300.0], dtype=np.float32)
    out = []
    for scale, zp in ((1.0, 0), (0.037, 127), (0.25, -128)):
        rng = v.rng("quant", scale)
        x = np.concatenate([ties * np.float32(scale),
                            (rng.standard_normal(4096 if v.big else 96) * 2).astype(np.float32)])
        x = x.reshape(-1, 8)
        q = quant.quantize(v.t(x), scale, zp)
        want = rq.quantize(x, scale=scale, zero_point=zp)
        out += [exact(q, want), exact(quant.dequantize(q, scale, zp),
                                      rq.dequantize(want, scale=scale, zero_point=zp))]
    return combine(*out)


def v_dynamic_quant(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import quant

    x = (v.rng("dynq").standard_normal((64, 1000) if v.big else (5, 33)) * 3).astype(np.float32)
    x[1] = 0.0  # an all-zero row: scale 1
    x[2, :3] = [0.5, -2.5, 127.0]
    out = []
    for mode in ("row", "tensor"):
        q, s = quant.dynamic_quantize(v.t(x), mode)
        want_q, want_s = rq.dynamic_quantize(x, mode=mode)
        out += [exact(q, want_q), exact(s, want_s)]
    return combine(*out)


def _attention(v: Verify, batch, lq, lk, d, dtype, causal=False, mask=None, config=None):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import attention as att

    rng = v.rng("att", batch, lq, lk, d, np.dtype(dtype).name, causal)
    q, k, val = (rng.standard_normal((*batch, n, d)).astype(dtype) for n in (lq, lk, lk))
    got = att.attention(v.t(q), v.t(k), v.t(val), None if mask is None else v.t(mask),
                        is_causal=causal, config=config)
    want = ref.scaled_dot_product_attention(q, k, val, mask, is_causal=causal, scale=None)
    return close(got, want, **(F16_TOL if dtype == np.float16 else F32_TOL))


def v_attention_f32(v: Verify):
    b, lq, lk = ((2, 3), 150, 170) if v.big else ((2, 2), 37, 29)
    return _attention(v, b, lq, lk, 32, np.float32)


def v_attention_f16_causal(v: Verify):
    b, lq = ((2, 3), 200) if v.big else ((1, 2), 40)
    return combine(_attention(v, b, lq, lq, 64, np.float16, causal=True),
                   _attention(v, b, lq - 3, lq, 64, np.float16, causal=True))


def v_attention_bool_mask(v: Verify):
    (bsz, h), lq, lk = ((2, 2), 150, 170) if v.big else ((2, 2), 23, 35)
    mask = np.arange(lk)[None, None, None, :] < np.array([lk - 5, lk // 3])[:, None, None, None]
    return _attention(v, (bsz, h), lq, lk, 128, np.float16, mask=mask)


def v_attention_float_mask(v: Verify):
    (bsz, h), lq, lk = ((2, 2), 150, 170) if v.big else ((1, 2), 26, 33)
    rng = v.rng("float-mask")
    mask = rng.standard_normal((bsz, h, lq, lk)).astype(np.float32)
    mask[rng.random(mask.shape) < 0.2] = -np.inf
    mask[rng.random(mask.shape) < 0.1] = -1e9
    f16 = (rng.standard_normal((lq, lk)) * 3).astype(np.float16)
    f16[:, ::4] = np.finfo(np.float16).min
    return combine(_attention(v, (bsz, h), lq, lk, 64, np.float32, mask=mask),
                   _attention(v, (bsz, h), lq, lk, 32, np.float16, causal=True, mask=f16))


def v_attention_configs(v: Verify):
    from fxforge.kernels.triton import attention as att

    b, length, d = ((2, 3), 128, 64) if v.big else ((1, 1), 40, 16)
    out, bad = [], []
    for cfg in v.some(att.configs(d)):
        try:
            r = _attention(v, b, length, length, d, np.float16, config=cfg)
        except Exception as e:
            r = _result(False, None, "f16", error=f"{cfg}: {type(e).__name__}: {e}"[:300])
        out.append(r)
        if not r["ok"]:
            bad.append(cfg)
    return combine(*out, configs=len(out), failed_configs=bad)


def _pool_input(v: Verify, dtype: str, key: str) -> np.ndarray:
    shape = (4, 64, 56, 56) if v.big else (2, 5, 9, 8)
    rng = v.rng("pool", dtype, key)
    if dtype == "i8":
        return _int8(rng, shape)
    return rng.standard_normal(shape).astype(np.float16 if dtype == "f16" else np.float32)


def v_max_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    out = []
    for dtype, cl in (("f32", True), ("f32", False), ("i8", True)):
        a = _pool_input(v, dtype, "max")
        got = pool.max_pool2d(v.t(a, cl), kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                              dilation=(1, 1), ceil_mode=False)
        out.append(exact(got, ref.max_pool2d(a, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                                             dilation=(1, 1), ceil_mode=False)))
    return combine(*out)


def v_avg_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    out = []
    for dtype in ("f32", "f16"):
        a = _pool_input(v, dtype, "avg")
        kw = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
                  count_include_pad=False, divisor_override=None)
        want = ref.avg_pool2d(a, **kw).astype(a.dtype)
        out.append(close(pool.avg_pool2d(v.t(a, True), **kw), want,
                         **(POOL_TOL if dtype == "f32" else F16_TOL)))
    return combine(*out)


def v_adaptive_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    rng = v.rng("adaptive")
    out = []
    for shape, size in (((2, 64, 7, 7) if v.big else (2, 5, 7, 7), (1, 1)),
                        ((2, 32, 13, 10) if v.big else (1, 5, 13, 10), (5, 3))):
        a = rng.standard_normal(shape).astype(np.float32)
        want = ref.adaptive_avg_pool2d(a, output_size=size).astype(np.float32)
        out.append(close(pool.adaptive_avg_pool2d(v.t(a, True), output_size=size), want,
                         **POOL_TOL))
    return combine(*out)


def v_layout_copy(v: Verify):
    from fxforge.kernels.triton import layout

    a = v.rng("copy").standard_normal((8, 64, 28, 28) if v.big else (2, 3, 5, 7)) \
        .astype(np.float32)
    x = v.t(a)
    moved = layout.contiguous(x.permute(0, 2, 3, 1))
    nhwc = layout.memory_format(x, "nhwc")
    layout_ok = bool(nhwc.is_contiguous(memory_format=torch.channels_last))
    return combine(exact(moved, np.transpose(a, (0, 2, 3, 1))), exact(nhwc, a),
                   _result(layout_ok, None, "channels-last"))


def v_layout_cat_pad(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import layout

    rng = v.rng("cat")
    n = 16 if v.big else 2
    parts = [rng.standard_normal((n, c, 9, 11)).astype(np.float16) for c in (3, 5, 2)]
    out = [exact(layout.cat([v.t(p) for p in parts], 1), np.concatenate(parts, axis=1))]
    a = rng.standard_normal((n, 3, 9, 11)).astype(np.float32)
    for mode in ("constant", "reflect", "replicate"):
        pads = (1, 2, 0, 3)
        got = layout.pad(v.t(a), pads, mode, 0.5)
        out.append(exact(got, ref.pad(a, pads=pads, mode=mode, value=0.5).astype(np.float32)))
    return combine(*out)


def v_layout_take(v: Verify):
    from fxforge.kernels.triton import layout

    rng = v.rng("take")
    a = rng.standard_normal((4, 50, 6) if v.big else (3, 7, 4)).astype(np.float32)
    size = a.shape[1]
    positions = rng.integers(-size, size, size=(2, 5)).astype(np.int64)
    taken = layout.take(v.t(a), 1, v.t(positions))
    index = rng.integers(0, size, size=(a.shape[0], 3, a.shape[2])).astype(np.int64)
    gathered = layout.gather(v.t(a), 1, v.t(index))
    return combine(exact(taken, np.take(a, positions, axis=1)),
                   exact(gathered, np.take_along_axis(a, index, axis=1)))


VERIFY: tuple[tuple[str, str, Callable[[Verify], dict]], ...] = (
    ("gemm", "linear f32 + bias: big M and split-K small M", v_linear_f32),
    ("gemm", "linear f16 + bias + gelu + residual (fused epilogue)", v_linear_f16_epilogue),
    ("gemm", "qlinear int32 accumulator, zero point -3, both paths", v_qlinear_acc),
    ("gemm", "qlinear static + bias + relu (+ residual) -> int8, both paths",
     v_qlinear_static_i8),
    ("gemm", "qlinear dynamic per-row scale + bias + gelu + residual -> f32",
     v_qlinear_dynamic_f32),
    ("gemm", "qlinear split-K + bias -> f16", v_qlinear_f16),
    ("int4_gemm", "linear_int4 f32 group 32 (one-group path), f16 group 6 (gather path)",
     v_int4),
    ("conv", "conv2d f32 3x3 + bias + relu", v_conv_f32),
    ("conv", "conv2d f16 3x3 stride 2 + bias", v_conv_f16),
    ("conv", "grouped conv2d f32 (groups 4) + bias + relu", v_conv_grouped_f32),
    ("conv", "qconv2d int32 accumulator, zero point 7, padding", v_qconv_acc),
    ("conv", "grouped qconv2d int32 accumulator (groups 4)", v_qconv_grouped_acc),
    ("conv", "qconv2d + bias + relu -> int8", v_qconv_i8),
    ("conv", "grouped qconv2d + bias + relu -> int8", v_qconv_grouped_i8),
    ("depthwise", "depthwise f32 3x3 + bias + relu", v_depthwise_f32),
    ("depthwise", "depthwise f16 3x3 stride 2 + bias + relu", v_depthwise_f16),
    ("depthwise", "depthwise int8: int32 accumulator exact, -> int8", v_depthwise_int8),
    ("elementwise", "fused chain mul + add + gelu, broadcast operands (f32)", v_elementwise_f32),
    ("elementwise", "fused chain exp + add + div + sigmoid (f16)", v_elementwise_f16),
    ("reduce", "softmax / log_softmax f32 (long rows, -inf), softmax f16", v_softmax),
    ("reduce", "layer_norm f32 and f16", v_layer_norm),
    ("reduce", "sum / mean / amax f32", v_reduce),
    ("quant", "quantize / dequantize (exact, ties to even)", v_quant),
    ("quant", "dynamic_quantize row and tensor (exact)", v_dynamic_quant),
    ("attention", "f32, head dim 32", v_attention_f32),
    ("attention", "f16, head dim 64, causal", v_attention_f16_causal),
    ("attention", "f16, head dim 128, bool padding mask", v_attention_bool_mask),
    ("attention", "float masks: f32 d64 with -inf; f16 d32 causal + mask",
     v_attention_float_mask),
    ("pool", "max_pool2d 3x3 s2 p1: f32 NHWC / NCHW, int8", v_max_pool),
    ("pool", "avg_pool2d 3x3 s2 p1 ceil, no pad count: f32, f16", v_avg_pool),
    ("pool", "adaptive_avg_pool2d: global 1x1, 5x3 from 13x10", v_adaptive_pool),
    ("layout", "contiguous copy of a permuted view; to channels-last", v_layout_copy),
    ("layout", "cat (f16); pad constant / reflect / replicate", v_layout_cat_pad),
    ("layout", "take (negative positions) and gather", v_layout_take),
    ("gemm", "qlinear int32 with every autotuner config", v_gemm_configs),
    ("attention", "f16 head dim 64 with every autotuner config", v_attention_configs),
    ("conv", "qconv2d int32 with every autotuner config", v_conv_configs),
)


def run_verify(b: Check) -> None:
    v = Verify(b.device, b.smoke, b.sizes.configs)
    for kernel, case, fn in VERIFY:
        if not b.allow(case, 2.0):
            b.skip("verify", f"{kernel}: {case}", 2.0)
            continue
        start = time.perf_counter()
        try:
            result = fn(v)
            if b.cuda:
                torch.cuda.synchronize()
        except Exception as e:  # a kernel that raises fails its check; the run goes on
            result = _result(False, None, "-", error=f"{type(e).__name__}: {e}"[:500],
                             traceback=_tb_head(e))
            b.recover()
        b.add("verify", kernel=kernel, case=case, **result,
              s=round(time.perf_counter() - start, 3))


# --- benchmarks ------------------------------------------------------------------------------


def run_gemm(b: Check) -> None:
    z = b.sizes
    cases = [(z.gemm_big, z.gemm_big)] + [(m, z.gemm_small_nk) for m in z.gemm_small_ms] + \
        list(z.gemm_extra)
    for m, nk in cases:
        b.case("gemm", f"M {m}, N = K {nk}", 5.0, lambda m=m, nk=nk: triton_gpu._gemm_case(
            b, m, nk))


def run_epilogue(b: Check) -> None:
    for m, nk in b.sizes.epilogue:
        b.case("epilogue", f"M {m}, N = K {nk}", 5.0,
               lambda m=m, nk=nk: triton_gpu._epilogue_case(b, m, nk))


def _attention_case(b: Check, batch: int, heads: int, length: int, dim: int,
                    causal: bool) -> None:
    from fxforge.kernels.triton import attention as att

    dtype = torch.float16 if b.cuda else torch.float32  # CPU SDPA: f32 in smoke runs
    q, k, v = (torch.randn(batch, heads, length, dim, device=b.device, dtype=dtype)
               for _ in range(3))

    def ours(config=None):
        return att.attention(q, k, v, is_causal=causal, config=config)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    shape = f"{batch}x{heads}x{length}x{dim}"
    cfg = b.config(att, f"{str(dtype)[6:]}:{shape}:{'causal' if causal else 'full'}", ours,
                   att.configs(dim))
    diff = (ours(cfg).float() - sdpa().float()).abs().max().item()
    times = b.time({"fxforge attention": lambda: ours(cfg), "torch sdpa": sdpa})
    flops = 4 * batch * heads * length * length * dim * (0.5 if causal else 1.0)
    b.add("attention", shape=shape, causal=causal, dtype=str(dtype)[6:], config=cfg,
          max_abs_diff_vs_sdpa=diff, close=diff <= ATTENTION_CLOSE,
          ms={n: t * 1e3 for n, t in times.items()},
          tflops={n: flops / t / 1e12 for n, t in times.items()},
          speedup=times["torch sdpa"] / times["fxforge attention"])


def run_attention(b: Check) -> None:
    for batch, heads, length, dim in b.sizes.attention:
        for causal in (False, True):
            b.case("attention", f"{batch}x{heads}x{length}x{dim} causal={causal}", 5.0,
                   lambda a=(batch, heads, length, dim, causal): _attention_case(b, *a))


def _graph_status(compiled) -> str:
    """The CUDA-graph status of the latest compiled program (live: a failed capture shows)."""
    try:
        program = compiled._latest.programs[str(compiled._device)]
        return program.cuda_graph_status
    except (AttributeError, KeyError, TypeError):
        return compiled.report.records[-1].cuda_graphs or "unknown"


def _graphs_case(b: Check, name: str, target: str) -> None:
    import fxforge
    from fxforge.bench.models import quick_models

    model, inputs = quick_models()[name].build(1)
    model = model.to(b.device).eval()
    inputs = tuple(x.to(b.device) for x in inputs)
    calib = [tuple(torch.randn_like(x) if x.is_floating_point() else x for x in inputs)] \
        if target == "cuda-int8" else None
    start = time.perf_counter()
    with torch.no_grad():
        # default configs: the comparison is of launches, and tuning would cost minutes
        on, off = (fxforge.compile(model, target, example_inputs=inputs, calibration=calib,
                                   autotune=False, cuda_graphs=graphs)
                   for graphs in (True, False))
        for _ in range(3):  # plain warm-up run, capture, replay
            y_on = first_tensor(on(*inputs)).float()
        y_off = first_tensor(off(*inputs)).float()
    compile_s = time.perf_counter() - start
    diff = (y_on - y_off).abs().max().item()
    times = b.time({"cuda graph": lambda: on(*inputs), "plain launches": lambda: off(*inputs)})
    kernels = sum(1 for a in on.report.records[-1].kernels if a.kernel)
    b.add("graphs", model=name, target=target, batch=1, autotune=False, graph=_graph_status(on),
          kernels=kernels, max_abs_diff=diff, compile_s=compile_s,
          ms={n: t * 1e3 for n, t in times.items()},
          speedup=times["plain launches"] / times["cuda graph"])


def run_graphs(b: Check) -> None:
    for name in b.sizes.graphs:
        for target in ("cuda-int8", "cuda"):
            b.case("graphs", f"{name} {target}", 10.0,
                   lambda name=name, target=target: _graphs_case(b, name, target))


def _e2e_models(b: Check) -> list[tuple[str, int, Callable[[int], tuple], str]]:
    from fxforge.bench import models

    if b.smoke:
        quick = models.quick_models()
        return [(name, batch, quick[name].build, "quick zoo") for name, batch in b.sizes.e2e]
    full = models.full_models()
    builds = {"resnet50": (models._seeded(models._hf_resnet([3, 4, 6, 3], "bottleneck", 224)),
                           "224x224"),
              "bert-base": (full["bert-base"].build, "sequence 128")}
    return [(name, batch, *builds[name]) for name, batch in b.sizes.e2e]


def run_e2e(b: Check) -> None:
    """Each model's goal systems (cuda-int8, torch.compile max-autotune) come first; its
    cuda-fp16 starts only when the goal systems of the models after it still fit."""
    systems = E2E_ORDER if b.cuda else ("cuda-int8", "cuda-fp16")
    todo = _e2e_models(b)
    for i, (name, batch, build, note) in enumerate(todo):
        later = sum(E2E_NEED_S.get(m, {}).get(s, 0.0) + 10.0 for m, *_ in todo[i + 1:]
                    for s in E2E_GOAL_SYSTEMS)
        need = {s: t + (0.0 if s in E2E_GOAL_SYSTEMS else later)
                for s, t in E2E_NEED_S.get(name, {}).items()}

        def one(name=name, batch=batch, build=build, note=note, need=need):
            model, inputs = build(batch)
            triton_gpu._e2e_case(b, name, model, inputs, systems, need_s=need, input=note)

        b.case("e2e", f"{name} batch {batch}", 20.0 if b.cuda else 0.0, one)
        if b.cuda:
            torch._dynamo.reset()  # compiled graphs and their CUDA-graph pools go
            gc.collect()
            torch.cuda.empty_cache()


def run_conv(b: Check) -> None:
    for layer in b.sizes.conv_layers:
        cin, cout, h, k, s = layer
        b.case("conv", f"{cin}->{cout} {h}x{h} k{k} s{s}", 5.0,
               lambda layer=layer: triton_gpu._conv_case(b, b.sizes.conv_batch, *layer))


def _tune_problems(b: Check) -> list[tuple[str, str, list[dict], Callable]]:
    """(kernel, problem, configs, run(config)) for a cold tune."""
    from fxforge.ir import TensorType
    from fxforge.kernels.triton import attention as att
    from fxforge.kernels.triton import conv, gemm
    from fxforge.kernels.triton.codegen import Epilogue

    z, dev = b.sizes, b.device
    big, small_nk = z.gemm_big, z.gemm_small_nk
    x, w = triton_gpu._int8((big, big), dev), triton_gpu._int8((big, big), dev)
    xs, ws = triton_gpu._int8((16, small_nk), dev), triton_gpu._int8((small_nk, small_nk), dev)
    ones, ones_s = torch.ones(big, device=dev), torch.ones(small_nk, device=dev)
    t = TensorType((big, big), "f32")
    relu = Epilogue(({"op": "relu"},), (t, t), ())
    cin, cout, h, k, s = z.conv_layers[0]
    cx = triton_gpu._int8((z.conv_batch, cin, h, h), dev).contiguous(
        memory_format=torch.channels_last)
    cw = conv.prepare_weight(triton_gpu._int8((cout, cin, k, k), dev))
    ones_c = torch.ones(cout, device=dev)
    bsz, heads, length, dim = z.attention[-1]
    dtype = torch.float16 if b.cuda else torch.float32
    q = torch.randn(bsz, heads, length, dim, device=dev, dtype=dtype)
    return [
        ("gemm", f"int8 {big}^3 -> int32", gemm.CONFIGS,
         lambda c: gemm.qlinear(x, w, ones, x_scale=1.0, out_dtype="i32", config=c)),
        ("gemm", f"int8 16x{small_nk}x{small_nk} -> int32 (split-K)", gemm.SMALL_M_CONFIGS,
         lambda c: gemm.qlinear(xs, ws, ones_s, x_scale=1.0, out_dtype="i32", config=c)),
        ("gemm", f"int8 {big}^3 + relu -> int8", gemm.CONFIGS,
         lambda c: gemm.qlinear(x, w, ones, x_scale=0.02, epilogue=relu, out_dtype="i8",
                                out_scale=0.5, config=c)),
        ("conv", f"int8 {cin}->{cout} {h}x{h} k{k} s{s} batch {z.conv_batch}", conv.CONFIGS,
         lambda c: conv.qconv2d(cx, cw, ones_c, kernel_size=(k, k), x_scale=0.02,
                                stride=(s, s), padding=(k // 2, k // 2), out_dtype="i32",
                                config=c)),
        ("attention", f"{str(dtype)[6:]} {bsz}x{heads}x{length}x{dim}", att.configs(dim),
         lambda c: att.attention(q, q, q, config=c)),
    ]


def run_autotune(b: Check) -> None:
    from fxforge.kernels.triton import autotune

    shared = autotune.default_tuner()
    b.add("autotune", kernel="shared tuner", problem="during this run",
          timed=len(shared.log), hits=shared.hits, enabled=shared.enabled and b.autotune,
          tune_ms=sum(r.ms for r in shared.log))
    cache = tempfile.mkdtemp(prefix="fxforge-gpu-check-tune-")
    try:
        tuner = autotune.Tuner(cache_dir=cache)  # cold: nothing remembered, on disk or in memory
        for kernel, problem, configs, run in _tune_problems(b):
            offered = list(configs) if b.sizes.configs is None else list(configs)[
                :b.sizes.configs]

            def one(kernel=kernel, problem=problem, offered=offered, run=run):
                before = len(tuner.log)
                start = time.perf_counter()
                picked = tuner.pick(f"gpu-check:{kernel}:{problem}", (problem,), offered, run)
                spent = time.perf_counter() - start
                timed = tuner.log[before:]
                best = min(r.ms for r in timed) if timed else None
                default = autotune.time_ms(run, None)
                b.add("autotune", kernel=kernel, problem=problem, offered=len(offered),
                      timed=len(timed), failed=len(offered) - len(timed), picked=picked,
                      best_ms=best, default_ms=default,
                      gain_vs_default=default / best if best else None, tune_s=spent)

            b.case("autotune", f"{kernel} {problem}", 5.0, one)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


RUNNERS: dict[str, Callable[[Check], None]] = {
    "verify": run_verify, "gemm": run_gemm, "epilogue": run_epilogue,
    "attention": run_attention, "graphs": run_graphs, "e2e": run_e2e, "conv": run_conv,
    "autotune": run_autotune}


# --- goals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    key: str
    what: str
    target: float


GOALS = (
    Goal("gemm-4096", "int8 GEMM at 4096^3 vs `torch._int_mm`", 1.05),
    Goal("fused-epilogue", "fused-epilogue GEMM (4096^3) vs `_int_mm` + torch epilogue", 1.3),
    Goal("small-m", "int8 GEMM at M <= 16 vs the best of `_int_mm` and fp16 matmul", 1.3),
    Goal("resnet50", "ResNet-50 `cuda-int8` batch 64 vs torch.compile fp16 max-autotune", 1.8),
    Goal("bert-base", "BERT-base `cuda-int8` batch 128 vs torch.compile fp16 max-autotune",
         1.6),
)


def _measured(rows: list[dict], section: str) -> list[dict]:
    return [r for r in rows if r["section"] == section and "status" not in r]


def _goal_ratio(goal: Goal, rows: list[dict], z: Sizes) -> tuple[float | None, str]:
    """(measured ratio, what it was measured on / why not)."""
    peer = triton_gpu.peer_ms
    if goal.key == "gemm-4096":
        for r in _measured(rows, "gemm"):
            if r["m"] == r["n"] == z.gemm_big:
                base = peer(r["ms"], "torch._int_mm")
                if not r["exact_vs_int_mm"]:
                    return 0.0, "result not exact: fails"
                return (base / r["ms"]["fxforge int8"] if base else None,
                        f"M = N = K = {z.gemm_big}")
    elif goal.key == "fused-epilogue":
        m, nk = z.epilogue[0]
        for r in _measured(rows, "epilogue"):
            if (r["m"], r["n"]) == (m, nk):
                if r["max_lsb_diff"] > 1:
                    return 0.0, "int8 output off by more than 1 LSB: fails"
                return r["speedup"], f"M {m}, N = K = {nk}"
    elif goal.key == "small-m":
        found = [r for r in _measured(rows, "gemm")
                 if r["m"] <= 16 and r["n"] == z.gemm_small_nk]
        if found:
            if not all(r["exact_vs_int_mm"] for r in found):
                return 0.0, "result not exact: fails"
            parts = {}
            for r in found:
                peers = [v for v in (peer(r["ms"], "torch._int_mm"), r["ms"].get("fp16 matmul"))
                         if v]
                parts[r["m"]] = min(peers) / r["ms"]["fxforge int8"] if peers else None
            if all(v is not None for v in parts.values()):
                worst = min(parts.values())
                return worst, "worst of " + ", ".join(
                    f"M {m}: {v:.2f}x" for m, v in sorted(parts.items())) + \
                    f" (N = K = {z.gemm_small_nk})"
    else:
        for r in _measured(rows, "e2e"):
            if r["model"] == goal.key:
                ours = r["ms"].get("fxforge cuda-int8")
                base = r["ms"].get("torch.compile fp16 max-autotune")
                if ours and base:
                    return base / ours, f"batch {r['batch']}"
                why = {**r.get("failed", {}), **r.get("skipped", {})}
                missing = [s for s in ("cuda-int8", "torch.compile max-autotune")
                           if s in why]
                return None, "; ".join(f"{s}: {why[s]}" for s in missing)[:200] or \
                    "torch.compile is not run in smoke runs"
    return None, "not run"


def goals(rows: list[dict], z: Sizes) -> list[dict[str, Any]]:
    out = []
    for goal in GOALS:
        try:
            ratio, detail = _goal_ratio(goal, rows, z)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # an odd row
            ratio, detail = None, f"could not compute: {type(e).__name__}: {e}"[:200]
        status = "not measured" if ratio is None else \
            "PASS" if ratio >= goal.target else "FAIL"
        out.append({"goal": goal.key, "what": goal.what, "target": goal.target,
                    "measured": None if ratio is None else round(ratio, 3), "status": status,
                    "detail": detail})
    return out


# --- markdown --------------------------------------------------------------------------------


def _fmt(d: dict | None, digits: int = 3) -> str:
    return "; ".join(f"{k} {v:.{digits}g}" for k, v in (d or {}).items()
                     if isinstance(v, (int, float))) or "–"


def _cell(value: Any) -> str:
    text = "–" if value is None else str(value)
    return text.replace("|", "/").replace("\n", " ")


def markdown(doc: dict) -> str:
    v, m = doc["versions"], doc["machine"]
    lines = [f"# fxforge GPU check: {doc['device']}", "",
             f"{m['date']}; torch {v['torch']}; Triton {v['triton']}; CUDA {v['cuda']}; "
             f"commit {m['commit'] or '?'}; autotune {doc['autotune']}; medians of "
             f"{doc['repeats']} interleaved rounds; budget {doc['budget_s']:g} s, elapsed "
             f"{doc['elapsed_s']:g} s" + (f"; {v['gpu']}" if "gpu" in v else ""), ""]
    if doc["smoke"]:
        lines += ["**SMOKE RUN**: Triton's CPU interpreter at tiny sizes; times mean nothing, "
                  "goals are computed from stand-in rows.", ""]
    if not doc["finished"]:
        lines += ["**Run in progress or killed**: this file is rewritten after every row.", ""]
    if doc["stopped"]:
        lines += [f"**Stopped early ({doc['stopped']})**: later work was skipped.", ""]
    lines += ["## Goals", "", "| goal | target | measured | status | measured on |",
              "|--|--:|--:|--|--|"]
    lines += [f"| {g['what']} | {g['target']:g}x | "
              f"{'–' if g['measured'] is None else format(g['measured'], '.2f') + 'x'} | "
              f"**{g['status']}** | {_cell(g['detail'])} |" for g in doc["goals"]]
    lines += ["", "## Sections", "", "| section | status | seconds |", "|--|--|--:|"]
    lines += [f"| {name} | {s['status']} | "
              f"{format(s['seconds'], '.1f') if 'seconds' in s else '–'} |"
              for name, s in doc["sections"].items()]
    lines.append("")
    rows = doc["rows"]
    verify = _measured(rows, "verify")
    if verify:
        lines += ["## Verify: kernels on the device vs the numpy reference", "",
                  f"{doc['verify']['passed']} passed, {doc['verify']['failed']} failed.", "",
                  "| kernel | case | result | max error | tolerance | s |",
                  "|--|--|--|--:|--|--:|"]
        for r in verify:
            err = "–" if r["max_err"] is None else f"{r['max_err']:.3g}"
            result = "pass" if r["ok"] else f"**FAIL** {_cell(r.get('error', ''))}"[:300]
            lines.append(f"| {r['kernel']} | {r['case']} | {result} | {err} | {r['tol']} | "
                         f"{r['s']:.2f} |")
        lines.append("")
    lines += triton_gpu.section_tables([r for r in rows if r["section"] in (
        "gemm", "epilogue")])
    att = _measured(rows, "attention")
    if att:
        lines += ["## Fused attention vs `F.scaled_dot_product_attention`", "",
                  "| B x H x L x D | causal | dtype | max diff vs SDPA | ms | TFLOPS | speedup |",
                  "|--|--|--|--:|--|--|--:|"]
        lines += [f"| {r['shape']} | {r['causal']} | {r['dtype']} | "
                  f"{r['max_abs_diff_vs_sdpa']:.2g} | {_fmt(r['ms'])} | {_fmt(r['tflops'])} | "
                  f"{r['speedup']:.2f}x |" for r in att]
        lines.append("")
    graphs = _measured(rows, "graphs")
    if graphs:
        lines += ["## CUDA graphs vs plain launches (batch 1)", "",
                  "| model | target | graph status | kernels | ms | speedup | max diff |",
                  "|--|--|--|--:|--|--:|--:|"]
        lines += [f"| {r['model']} | {r['target']} | {_cell(r['graph'])} | {r['kernels']} | "
                  f"{_fmt(r['ms'])} | {r['speedup']:.2f}x | {r['max_abs_diff']:.2g} |"
                  for r in graphs]
        lines.append("")
    lines += triton_gpu.section_tables([r for r in rows if r["section"] in ("e2e", "conv")])
    tune = _measured(rows, "autotune")
    if tune:
        lines += ["## Autotune (cold cache)", "",
                  "| kernel | problem | timed / offered | picked | best ms | default ms | "
                  "gain | tune s |", "|--|--|--|--|--:|--:|--:|--:|"]
        for r in tune:
            if r["kernel"] == "shared tuner":
                continue
            gain = "–" if r["gain_vs_default"] is None else f"{r['gain_vs_default']:.2f}x"
            best = "–" if r["best_ms"] is None else f"{r['best_ms']:.3g}"
            lines.append(f"| {r['kernel']} | {r['problem']} | {r['timed']} / {r['offered']} | "
                         f"{_cell(json.dumps(r['picked'], sort_keys=True))} | {best} | "
                         f"{r['default_ms']:.3g} | {gain} | {r['tune_s']:.1f} |")
        shared = [r for r in tune if r["kernel"] == "shared tuner"]
        if shared:
            s = shared[-1]
            lines += ["", f"Shared tuner before this section: {s['timed']} configs timed, "
                          f"{s['hits']} picks from cache (enabled: {s['enabled']})."]
        lines.append("")
    other = [r for r in rows if "status" in r]
    if other:
        lines += ["## Skipped, stopped and failed steps", ""]
        for r in other:
            what = f"{r['section']}" + (f" / {r['case']}" if r.get("case") else "")
            extra = f": {_cell(r['error'])}" if r.get("error") else ""
            lines.append(f"- {what}: {r['status']}{extra}")
        lines.append("")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


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
