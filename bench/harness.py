"""`fxforge bench`: models x systems x batch sizes, interleaved, into JSON + markdown + plots.

For each model and batch size, in one process:
  1. build the model (float32, eval) and its inputs; eager float32's output is the reference;
  2. prepare every system (compile / export / quantize), timed: the first batch size of a model
     gives the cold compile time, then a second compile of the same model the warm one;
     peak memory of the preparation; size on disk; error against eager; digits accuracy;
  3. time all prepared systems interleaved (every repeat runs each system once, in a rotated
     order) after warm-up: median, p10, p90; then one more run each for its peak memory.
A system that is missing or fails is recorded with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench import report
from bench.metrics import MB, LoadMeter, PeakMemory, first_tensor, output_error
from bench.models import DEFAULT_MODELS, QUICK_MODELS, BenchModel, get_models
from bench.systems import BASELINE, Case, Prepared, System, TorchCompile, Unavailable, all_systems
from bench.timing import interleaved_blocks, summarize

ROOT = Path(__file__).resolve().parent.parent
# inside a checkout: bench/results/ of the repository; an installed package: ./bench-results
DEFAULT_OUT = ROOT / "bench" / "results" if (ROOT / ".git").exists() else Path("bench-results")
LIBRARIES = ("torch", "onnxruntime", "onnx", "onnxscript", "transformers", "numpy",
             "scikit-learn", "matplotlib", "fxforge")


# --- options -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model configs, one batch size, few repeats "
                        f"(default models then: {','.join(QUICK_MODELS)})")
    p.add_argument("--models", help="comma-separated models (default: all: "
                                    f"{','.join(DEFAULT_MODELS)})")
    p.add_argument("--systems", help="comma-separated systems (default: all; `fxforge bench "
                                     "--list` shows them)")
    p.add_argument("--batch", help="comma-separated batch sizes for every model (default: "
                                   "per model, see bench/README.md)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for JSON, markdown, plots")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default: as many as fit "
                                               "--case-seconds, between --min/--max-repeats)")
    p.add_argument("--min-repeats", type=int, help="at least this many timed rounds")
    p.add_argument("--max-repeats", type=int, help="at most this many timed rounds")
    p.add_argument("--case-seconds", type=float,
                   help="time budget for the timed rounds of one model and batch size")
    p.add_argument("--warmup", type=int, help="untimed rounds before timing")
    p.add_argument("--block-ms", type=float,
                   help="each timed sample is the mean of back-to-back calls filling about this "
                        "many ms (default 10; 0: one call per sample)")
    p.add_argument("--warm-compile-limit", type=float,
                   help="measure the warm (second) compile of a system without a compile cache "
                        "only when its cold compile took at most this many seconds")
    p.add_argument("--time-limit", type=float,
                   help="seconds; once a run has taken this long, the remaining cases are "
                        "reported as skipped (default: 540 for the full run, none for --quick)")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads "
                                               "(default: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list models and systems, then exit")


def build_namespace(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse bench options alone (what `fxforge bench` parses)."""
    parser = argparse.ArgumentParser(prog="fxforge bench")
    add_arguments(parser)
    return parser.parse_args(argv)


@contextlib.contextmanager
def scratch_dir():
    """A temporary folder for exported files and this run's compiler caches."""
    with tempfile.TemporaryDirectory(prefix="fxforge-bench-") as tmp:
        yield Path(tmp)


@dataclass
class Options:
    quick: bool
    models: list[str]
    systems: list[str]
    batches: list[int] | None
    device: str
    out: str
    repeats: int | None
    min_repeats: int
    max_repeats: int
    case_seconds: float
    warmup: int
    block_seconds: float
    max_block: int
    warm_compile_limit: float
    time_limit: float | None
    threads: int
    progress: bool
    plots: bool


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def resolve(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    available = get_models(quick)
    models = _split(args.models) or list(QUICK_MODELS if quick else DEFAULT_MODELS)
    unknown = [m for m in models if m not in available]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; available: {', '.join(available)}")
    names = [s.name for s in all_systems()]
    systems = _split(args.systems) or names
    unknown = [s for s in systems if s not in names]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; available: {', '.join(names)}")
    batches = [int(b) for b in _split(args.batch)] if args.batch else None
    if batches and min(batches) < 1:
        raise ValueError("--batch sizes must be >= 1")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    def pick(value, quick_default, default):
        return value if value is not None else (quick_default if quick else default)

    return Options(
        quick=quick, models=models, systems=systems, batches=batches, device=device,
        out=args.out, repeats=args.repeats, min_repeats=pick(args.min_repeats, 3, 10),
        max_repeats=pick(args.max_repeats, 5, 40), case_seconds=pick(args.case_seconds, 0.5, 3.0),
        warmup=pick(args.warmup, 1, 1),
        block_seconds=(10.0 if args.block_ms is None else args.block_ms) / 1e3, max_block=200,
        warm_compile_limit=pick(args.warm_compile_limit, 60.0, 5.0),
        time_limit=pick(args.time_limit, None, 540.0) or None,
        threads=args.threads or torch.get_num_threads(), progress=not args.no_progress,
        plots=not args.no_plots)


# --- environment -------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device) -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    commit = _git("rev-parse", "--short", "HEAD")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type, "cpu": _cpu_name(), "cpu_count": os.cpu_count() or 0,
        "threads": torch.get_num_threads(), "gpu": gpu,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "libraries": versions, "commit": commit,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


# --- progress ----------------------------------------------------------------------------------


class Progress:
    """tqdm on stderr when installed, else a one-line bar; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self._bar = total, 0, enabled, None
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<"
                                            "{remaining}]")
            except ImportError:
                self._bar = None

    def step(self, label: str, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label[:48])
            self._bar.update(n)
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.0f}s {label[:48]:48}")
        sys.stderr.flush()

    def label(self, text: str) -> None:
        if self.enabled and self._bar is not None:
            self._bar.set_description_str(text[:48])

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")


# --- one case ----------------------------------------------------------------------------------


def _row(model: str, batch: int, system: str, status: str, reason: str | None = None) -> dict:
    return {"model": model, "batch": batch, "system": system, "status": status,
            "reason": reason, "latency_ms": None, "throughput_per_s": None,
            "speedup_vs_eager": None,
            "compile_s": {"cold": None, "warm": None, "first_batch": False, "note": None},
            "memory_mb": None, "size_mb": None, "size_what": None, "error": None,
            "accuracy": None, "notes": []}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}"[:300]


def _sync(device: torch.device) -> None:
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
        _sync(case.device)
        seconds = time.perf_counter() - start + ready.extra_compile_s
    gc.collect(1)
    held = None if before is None else max(0, memory.level() - before)
    return _Prep(ready, seconds, memory.peak_bytes, held, memory.method)


def run_case(spec: BenchModel, batch: int, first_batch: bool, systems: list[System],
             opts: Options, device: torch.device, workdir: Path, progress: Progress,
             errors: list[str], model_info: dict | None = None) -> list[dict]:
    """Prepare and check every system on one model at one batch size, then time them
    interleaved. Returns one result row per system; fills `model_info` (params, inputs)."""
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
    rows: dict[str, dict] = {}
    prepared: dict[str, Prepared] = {}
    for system in systems:
        progress.label(f"{case.key} {system.name}")
        row = rows[system.name] = _row(spec.name, batch, system.name, "ok")
        why = system.skip(case)
        if why:
            row.update(status="skipped", reason=why)
            progress.step(f"{case.key} {system.name}")
            continue
        try:
            prep = _prepare(system, case)
            if system.kind == "eager":  # nothing to compile
                ready = prep.ready
            else:
                row["compile_s"].update(cold=prep.seconds, first_batch=first_batch)
                if first_batch:
                    row["notes"] += [f"cold compile: {n}" for n in prep.ready.notes]
                    ready = _warm_compile(system, case, prep, row, opts)
                else:
                    ready = prep.ready
                    row["compile_s"]["note"] = ("compile for this batch size, after the "
                                                "model's first batch size")
            row["memory_mb"] = {"prepare_peak": _mb(prep.peak), "held": _mb(prep.held),
                                "run_peak": None, "method": prep.method}
            if ready.size_bytes is not None:
                row["size_mb"] = ready.size_bytes() / MB
                row["size_what"] = ready.size_what
            row["notes"] += [n for n in ready.notes if f"cold compile: {n}" not in row["notes"]]
            row["error"] = output_error(expected, ready.call(*inputs))
            if spec.accuracy:
                from compiler import zoo

                row["accuracy"] = zoo.digits_accuracy(ready.call, batch)
            prepared[system.name] = ready
        except Unavailable as e:
            row.update(status="unavailable", reason=str(e))
        except Exception as e:  # a failing peer is reported, never fatal
            row.update(status="failed", reason=_reason(e))
            errors.append(f"--- {case.key} {system.name}\n{traceback.format_exc()}")
        progress.step(f"{case.key} {system.name}")
    if prepared:
        progress.label(f"{case.key} timing {len(prepared)} systems")
        _time(case, prepared, rows, opts)
    progress.step(f"{case.key} timed")
    return list(rows.values())


def _mb(n: int | None) -> float | None:
    return None if n is None else n / MB


def _warm_compile(system: System, case: Case, cold: _Prep, row: dict,
                  opts: Options) -> Prepared:
    """Compile the same model again in the same process: the warm compile time."""
    if not system.has_compile_cache and cold.seconds > opts.warm_compile_limit:
        row["compile_s"]["note"] = (f"warm compile not measured: cold took {cold.seconds:.0f} s "
                                    f"(> --warm-compile-limit {opts.warm_compile_limit:.0f} s) "
                                    "and this system keeps no compile cache, so it would redo "
                                    "the same work")
        return cold.ready
    if isinstance(system, TorchCompile):
        TorchCompile.reset()  # drop dynamo's in-memory code cache; inductor's caches remain
    system.release(case.spec.name)  # nothing reused: the second compile redoes the export
    cold.ready = None  # type: ignore[assignment]
    gc.collect(1)
    again = _prepare(system, case)
    row["compile_s"]["warm"] = again.seconds
    return again.ready


def _time(case: Case, prepared: dict[str, Prepared], rows: dict[str, dict],
          opts: Options) -> None:
    runs = {name: p.run for name, p in prepared.items()}
    # one untimed round, each call timed: sizes the blocks and the number of rounds
    single: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            _sync(case.device)
            single[name] = time.perf_counter() - t0
    calls = {name: max(1, min(opts.max_block, int(opts.block_seconds / max(t, 1e-7))))
             for name, t in single.items()}
    round_s = sum(single[n] * calls[n] for n in runs)
    repeats = opts.repeats or max(opts.min_repeats,
                                  min(opts.max_repeats, int(opts.case_seconds / max(round_s,
                                                                                    1e-6))))
    samples = interleaved_blocks(runs, calls, repeats=repeats, warmup=opts.warmup,
                                 cuda=case.device.type == "cuda")
    times = {name: summarize(s) for name, s in samples.items()}
    base = samples.get(BASELINE)
    for name, t in times.items():
        row = rows[name]
        row["latency_ms"] = {"median": t["median_s"] * 1e3, "p10": t["p10_s"] * 1e3,
                             "p90": t["p90_s"] * 1e3, "repeats": repeats,
                             "calls_per_sample": calls[name],
                             "samples": [x * 1e3 for x in samples[name]],
                             "timer": "cuda_events" if case.device.type == "cuda"
                             else "perf_counter"}
        row["throughput_per_s"] = case.batch / t["median_s"]
        if base is not None:  # paired: eager and this system in the same round
            row["speedup_vs_eager"] = statistics.median(
                b / x for b, x in zip(base, samples[name]))
    for name, fn in runs.items():
        memory = PeakMemory(case.device)
        gc.collect(1)
        with torch.no_grad(), memory.measure():
            fn()
            _sync(case.device)
        if rows[name]["memory_mb"] is not None and memory.peak_bytes is not None:
            rows[name]["memory_mb"]["run_peak"] = memory.peak_bytes / MB


# --- the run -----------------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    """Run the benchmark; write JSON, markdown and plots under opts.out; return the report."""
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    with _blas_one_thread():
        return _run(opts, start)


@contextlib.contextmanager
def _blas_one_thread():
    """numpy's BLAS (OpenBLAS) on one thread for the whole run: only the numpy reference
    interpreter uses it, and a multi-threaded OpenBLAS pool keeps spinning after each call,
    which slowed the next system in the interleaved rounds 2-3x on a 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _run(opts: Options, start: float) -> dict[str, Any]:
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = get_models(opts.quick)
    systems_all = [s for s in all_systems() if s.name in opts.systems]
    system_info = []
    runnable: list[System] = []
    for s in systems_all:
        reason = s.check(device)
        system_info.append({**s.describe(), "available": reason is None, "reason": reason})
        if reason is None:
            runnable.append(s)
    plan = []
    for name in opts.models:
        spec = specs[name]
        batches = opts.batches or list(spec.gpu_batches if device.type == "cuda"
                                       else spec.batches)
        plan += [(spec, b, i == 0) for i, b in enumerate(batches)]
    # every model's first batch size first, later batch sizes after: a --time-limit cuts the
    # extra batch sizes before it cuts a model
    rank = {name: i for i, name in enumerate(opts.models)}
    plan.sort(key=lambda p: (not p[2], rank[p[0].name]))
    progress = Progress(sum(len(runnable) + 1 for _ in plan), opts.progress)
    env = environment(device)
    load = LoadMeter()
    results: list[dict] = []
    errors: list[str] = []
    model_info = []
    # a fresh inductor cache per run (cold means cold), removed at the end
    with scratch_dir() as scratch:
        saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(scratch, "triton")
        try:
            last_case = {spec.name: i for i, (spec, _, _) in enumerate(plan)}
            for i, (spec, batch, first) in enumerate(plan):
                if first:
                    model_info.append(_describe_model(spec, opts, device))
                elapsed = time.perf_counter() - start
                if opts.time_limit and elapsed > opts.time_limit:
                    why = (f"the run's --time-limit of {opts.time_limit:.0f} s was "
                           f"reached after {elapsed:.0f} s")
                    results += [_row(spec.name, batch, s.name, "skipped", why) for s in runnable]
                    progress.step(f"{spec.name}@{batch} skipped", len(runnable) + 1)
                    continue
                try:
                    results += run_case(spec, batch, first, runnable, opts, device, scratch,
                                        progress, errors, model_info[-1] if first else None)
                except Exception as e:  # a model that cannot be built or run in eager
                    errors.append(f"--- {spec.name}@{batch}\n{traceback.format_exc()}")
                    results += [_row(spec.name, batch, s.name, "failed",
                                     f"model: {_reason(e)}") for s in runnable]
                    progress.step(f"{spec.name}@{batch} failed", len(runnable) + 1)
                if last_case[spec.name] == i:
                    for s in runnable:
                        s.release(spec.name)
                TorchCompile.reset()
                gc.collect()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            progress.close()
    for s in systems_all:  # systems that cannot run here get one row per case, with the reason
        if s not in runnable:
            reason = next(i["reason"] for i in system_info if i["name"] == s.name)
            results += [_row(spec.name, b, s.name, "unavailable", reason) for spec, b, _ in plan]
    order = {s.name: i for i, s in enumerate(systems_all)}
    model_order = {n: i for i, n in enumerate(opts.models)}
    results.sort(key=lambda r: (model_order[r["model"]], r["batch"], order[r["system"]]))
    env["load"] = load.result()
    doc = {
        "schema": report.SCHEMA_NAME, "schema_version": report.SCHEMA_VERSION,
        "machine": env, "options": {k: v for k, v in vars(opts).items()},
        "models": model_info, "systems": system_info, "results": results,
        "duration_s": time.perf_counter() - start,
    }
    paths = report.write(doc, out, plots=opts.plots)
    if errors:
        log = paths["json"].with_suffix(".errors.log")
        log.write_text("\n".join(errors))
        paths["errors"] = log
    doc["duration_s"] = time.perf_counter() - start
    report.write_json(doc, paths["json"])
    doc["_paths"] = {k: str(v) for k, v in paths.items()}
    return doc


def _describe_model(spec: BenchModel, opts: Options, device: torch.device) -> dict[str, Any]:
    batches = opts.batches or list(spec.gpu_batches if device.type == "cuda" else spec.batches)
    return {"name": spec.name, "description": spec.description, "source": spec.source,
            "batches": batches, "params": None, "inputs": None}


def main(args: argparse.Namespace) -> int:
    if args.list:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        specs = get_models(args.quick)
        print("models:")
        for spec in specs.values():
            print(f"  {spec.name:12} batches {','.join(map(str, spec.batches)):8} "
                  f"{spec.source}: {spec.description}")
        print("systems:")
        for s in all_systems():
            reason = s.check(device)
            print(f"  {s.name:26} {'ready' if reason is None else reason}")
        return 0
    opts = resolve(args)
    doc = run(opts)
    print(report.summary(doc))
    for kind, path in doc["_paths"].items():
        print(f"wrote {kind}: {path}")
    return 0
