"""Preparing one case (a model at one batch size) for every system: compile, check, measure.

Everything but latency is measured here, right after each system is prepared: compile time
cold and warm, memory (with the allocator's defaults, outside the timed slices), size on disk,
error against eager float32, digits accuracy. The prepared systems are kept in a
`PreparedCase` for `bench.schedule`, which times it in slices over the rest of the run.
A system that is missing or fails gets a row with the reason; the other systems go on.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from fxforge.bench.metrics import MB, PeakMemory, first_tensor, output_error
from fxforge.bench.models import BenchModel
from fxforge.bench.systems import Case, Prepared, System, TorchCompile, Unavailable


class Steps(Protocol):
    """What a case reports its progress to (bench.progress.Progress)."""

    def step(self, label: str, n: int = 1) -> None: ...

    def label(self, text: str) -> None: ...


@dataclass
class PreparedCase:
    """A case whose systems are ready to time; `rows` are its result rows, one per system."""

    case: Case
    rows: dict[str, dict]
    runs: dict[str, Any] = field(default_factory=dict)  # system -> one inference, no arguments
    single_s: dict[str, float] = field(default_factory=dict)  # one untimed call each

    @property
    def key(self) -> str:
        return self.case.key


def new_row(model: str, batch: int, system: str, status: str, reason: str | None = None) -> dict:
    return {"model": model, "batch": batch, "system": system, "status": status,
            "reason": reason, "latency_ms": None, "throughput_per_s": None,
            "speedup_vs_eager": None,
            "compile_s": {"cold": None, "warm": None, "first_batch": False, "note": None},
            "memory_mb": None, "size_mb": None, "size_what": None, "error": None,
            "accuracy": None, "notes": []}


def reason_of(e: BaseException) -> str:
    """The exception's type and first line: what a table cell can hold."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}"[:300]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Prep:
    ready: Prepared
    seconds: float
    peak: int | None  # high-water mark above the level before, during the preparation
    held: int | None  # resident memory kept after the preparation (weights copy, code)
    method: str


def _prepare(system: System, case: Case) -> _Prep:
    memory = PeakMemory(case.device)
    gc.collect(1)  # young generations only: a full collection costs ~0.4 s with torch loaded
    before = memory.level()
    with memory.measure():
        start = time.perf_counter()
        ready = system.prepare(case)
        sync(case.device)
        seconds = time.perf_counter() - start + ready.extra_compile_s
    gc.collect(1)
    held = None if before is None else max(0, memory.level() - before)
    return _Prep(ready, seconds, memory.peak_bytes, held, memory.method)


def prepare_case(spec: BenchModel, batch: int, first_batch: bool, systems: list[System],
                 opts: Any, device: torch.device, workdir: Path, progress: Steps,
                 errors: list[str], model_info: dict | None = None,
                 later: list[tuple[dict, Callable[[], None]]] | None = None) -> PreparedCase:
    """Prepare and check every system on one model at one batch size. Fills `model_info`
    (params, inputs) when given; tracebacks of failures go to `errors`. `later`: where the
    warm compiles that would drop other cases' compiled code (torch.compile's) are queued,
    to run after the timing; None: run them now."""
    model, inputs = spec.build(batch)
    model = model.to(device).eval()
    inputs = tuple(x.to(device) for x in inputs)
    if model_info is not None:
        model_info["params"] = sum(p.numel() for p in model.parameters())
        model_info["inputs"] = [f"{str(x.dtype).replace('torch.', '')}"
                                f"[{','.join(map(str, x.shape[1:]))}]" for x in inputs]
    case = Case(spec, batch, model, inputs, device, workdir)
    with torch.no_grad():
        expected = first_tensor(model(*inputs)).float()
    out = PreparedCase(case, {})
    for system in systems:
        progress.label(f"{case.key} {system.name}")
        row = out.rows[system.name] = new_row(spec.name, batch, system.name, "ok")
        why = system.skip(case)
        if why:
            row.update(status="skipped", reason=why)
            progress.step(f"{case.key} {system.name}")
            continue
        try:
            ready = _prepare_one(system, case, row, first_batch, opts, later)
            row["error"] = output_error(expected, ready.call(*inputs))
            if spec.accuracy:
                from fxforge import zoo

                row["accuracy"] = zoo.digits_accuracy(ready.call, batch)
            out.single_s[system.name] = _run_peak(ready.run, case.device, row)
            out.runs[system.name] = ready.run
        except Unavailable as e:
            row.update(status="unavailable", reason=str(e))
        except Exception as e:  # a failing peer is reported, never fatal
            row.update(status="failed", reason=reason_of(e))
            errors.append(f"--- {case.key} {system.name}\n{traceback.format_exc()}")
        progress.step(f"{case.key} {system.name}")
    return out


def _prepare_one(system: System, case: Case, row: dict, first_batch: bool,
                 opts: Any, later: list[tuple[dict, Callable[[], None]]] | None) -> Prepared:
    prep = _prepare(system, case)
    if system.kind == "eager":  # nothing to compile
        ready = prep.ready
    else:
        row["compile_s"].update(cold=prep.seconds, first_batch=first_batch)
        if first_batch:
            row["notes"] += [f"cold compile: {n}" for n in prep.ready.notes]
            ready = _warm_compile(system, case, prep, row, opts, later)
        else:
            ready = prep.ready
            row["compile_s"]["note"] = ("compile for this batch size, after the model's first "
                                        "batch size")
    row["memory_mb"] = {"prepare_peak": _mb(prep.peak), "held": _mb(prep.held),
                        "run_peak": None, "method": prep.method}
    if ready.size_bytes is not None:
        row["size_mb"] = ready.size_bytes() / MB
        row["size_what"] = ready.size_what
    row["notes"] += [n for n in ready.notes if f"cold compile: {n}" not in row["notes"]]
    return ready


def _run_peak(run, device: torch.device, row: dict) -> float:
    """One more inference with its peak memory above what is resident; returns its seconds
    (which size the timing blocks)."""
    memory = PeakMemory(device)
    gc.collect(1)
    with torch.no_grad(), memory.measure():
        start = time.perf_counter()
        run()
        sync(device)
        seconds = time.perf_counter() - start
    if row["memory_mb"] is not None and memory.peak_bytes is not None:
        row["memory_mb"]["run_peak"] = memory.peak_bytes / MB
    return seconds


def _mb(n: int | None) -> float | None:
    return None if n is None else n / MB


def _warm_compile(system: System, case: Case, cold: _Prep, row: dict, opts: Any,
                  later: list[tuple[dict, Callable[[], None]]] | None) -> Prepared:
    """Compile the same model again in the same process: the warm compile time. torch.compile's
    needs torch._dynamo.reset(), which drops the compiled code of every case prepared so far:
    with `later`, it is queued to run after the timing instead (the cold compile is timed)."""
    if not system.has_compile_cache and cold.seconds > opts.warm_compile_limit:
        row["compile_s"]["note"] = (f"warm compile not measured: cold took {cold.seconds:.0f} s "
                                    f"(> --warm-compile-limit {opts.warm_compile_limit:.0f} s) "
                                    "and this system keeps no compile cache, so it would redo "
                                    "the same work")
        return cold.ready
    if isinstance(system, TorchCompile):
        if later is not None:
            later.append((row, lambda: _warm_after_reset(system, case, row)))
            return cold.ready
        TorchCompile.reset()  # drop dynamo's in-memory code cache; inductor's caches remain
    system.release(case.spec.name)  # nothing reused: the second compile redoes the export
    cold.ready = None  # type: ignore[assignment]
    gc.collect(1)
    again = _prepare(system, case)
    row["compile_s"]["warm"] = again.seconds
    return again.ready


def _warm_after_reset(system: System, case: Case, row: dict) -> None:
    """torch.compile's warm compile, after the timing: reset dynamo, compile again, keep only
    the time (the cold compile's code was the one timed)."""
    TorchCompile.reset()
    gc.collect(1)
    row["compile_s"]["warm"] = _prepare(system, case).seconds
