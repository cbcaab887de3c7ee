"""`fxforge bench`: models x systems x batch sizes, interleaved, into JSON + markdown + plots.

One process; for each model and batch size in turn:
  1. prepare (bench.cases): build the model (float32, eval) and its inputs, eager float32's
     output being the reference; prepare every system (compile / export / quantize), timed: the
     first batch size of a model gives the cold compile time, then a second compile of the same
     model the warm one (torch.compile's waits until after the timing: its dynamo reset would
     drop every compiled case); peak memory of the preparation and of one more run; size on
     disk; error against eager; digits accuracy;
  2. visit (bench.schedule): time a short slice of every case prepared so far.
After the last preparation, --passes more visits of every case, then the queued warm compiles.
Each case's timing is thus spread over the rest of the run (bench.schedule says why); within a
slice, rounds run every system once, in a rotated order; median, p10, p90; speedup = median of
the paired ratios against eager float32 in the same round.
A system that is missing or fails is recorded with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fxforge.bench import report
from fxforge.bench.allocator import fix_defaults, keep_freed_memory
from fxforge.bench.cases import new_row, prepare_case, reason_of
from fxforge.bench.metrics import LoadMeter
from fxforge.bench.models import DEFAULT_MODELS, QUICK_MODELS, BenchModel, get_models
from fxforge.bench.progress import Progress
from fxforge.bench.schedule import CaseTimer, fit_budgets, time_cases, visit_all
from fxforge.bench.systems import System, TorchCompile, all_systems

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
    p.add_argument("--min-repeats", type=int, help="at least this many timed rounds per case")
    p.add_argument("--max-repeats", type=int, help="at most this many timed rounds per case")
    p.add_argument("--case-seconds", type=float,
                   help="time budget for the timed rounds of one model and batch size whose "
                        "round takes 0.25 s; a case gets this x sqrt(its round / 0.25 s), "
                        "0.6x-2x (default 12; --quick 0.5)")
    p.add_argument("--passes", type=int,
                   help="after the last preparation, every case is timed in this many more "
                        "slices (it also got one after each later preparation), so that each "
                        "case samples the machine's changing state (default 8; --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed rounds before a case's first slice")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="time with glibc malloc's default settings (by default freed memory is "
                        "kept in the process while timing, see bench/allocator.py)")
    p.add_argument("--block-ms", type=float,
                   help="each timed sample is the mean of back-to-back calls filling about this "
                        "many ms (default 10; 0: one call per sample)")
    p.add_argument("--warm-compile-limit", type=float,
                   help="measure the warm (second) compile of a system without a compile cache "
                        "only when its cold compile took at most this many seconds")
    p.add_argument("--time-limit", type=float,
                   help="seconds for the whole run: a case is prepared only while its timing "
                        "still fits, later cases are reported as skipped, and the final passes "
                        "shrink every case's timing to what is left (default: 550 for the full "
                        "run, none for --quick)")
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
    passes: int
    warmup: int
    malloc_tuning: bool
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
        out=args.out, repeats=args.repeats, min_repeats=pick(args.min_repeats, 3, 8),
        max_repeats=pick(args.max_repeats, 5, 160), case_seconds=pick(args.case_seconds, 0.5, 12.0),
        passes=max(1, pick(args.passes, 2, 8)), warmup=pick(args.warmup, 1, 1),
        malloc_tuning=not args.no_malloc_tuning,
        block_seconds=(10.0 if args.block_ms is None else args.block_ms) / 1e3, max_block=200,
        warm_compile_limit=pick(args.warm_compile_limit, 60.0, 5.0),
        time_limit=pick(args.time_limit, None, 550.0) or None,
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


# --- the run -----------------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    """Run the benchmark; write JSON, markdown and plots under opts.out; return the report."""
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    fix_defaults(opts.malloc_tuning)  # memory figures: every case measured alike
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


TIMING_RESERVE = 1.25  # a case's timing costs about this times its timed seconds (warm-ups)
REPORT_RESERVE_S = 10.0  # writing the report and plots, at the end of a --time-limit
WARM_AFTER_TIMING = 0.2  # a queued warm compile (torch.compile's) takes at most ~this x its cold


def _run(opts: Options, start: float) -> dict[str, Any]:
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    systems_all = [s for s in all_systems() if s.name in opts.systems]
    system_info = []
    runnable: list[System] = []
    for s in systems_all:
        reason = s.check(device)
        system_info.append({**s.describe(), "available": reason is None, "reason": reason})
        if reason is None:
            runnable.append(s)
    plan = _plan(opts, device)
    passes = max(1, opts.passes)
    visits = len(plan) * (len(plan) - 1) // 2 + len(plan) * passes
    progress = Progress(len(plan) * len(runnable) + visits, opts.progress)
    env = environment(device)
    load = LoadMeter()
    results: list[dict] = []
    errors: list[str] = []
    model_info: list[dict] = []
    # a fresh inductor cache per run (cold means cold), removed at the end
    with scratch_dir() as scratch, _compiler_caches(scratch):
        try:
            timeline = _Timeline(opts, start, progress, errors)
            _prepare_all(plan, runnable, opts, device, scratch, timeline, errors, results,
                         model_info)
            timeline.finish()
            env["allocator"] = timeline.allocator
            results += [row for t in timeline.timers for row in t.prepared.rows.values()]
        finally:
            progress.close()
    for s in systems_all:  # systems that cannot run here get one row per case, with the reason
        if s not in runnable:
            reason = next(i["reason"] for i in system_info if i["name"] == s.name)
            results += [new_row(spec.name, b, s.name, "unavailable", reason)
                        for spec, b, _ in plan]
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


class _Timeline:
    """The timing side of a run: a visit of every prepared case after each preparation, the
    final passes, then the warm compiles that had to wait for the timing (bench.schedule says
    why the timing is spread over the run), all within the --time-limit."""

    def __init__(self, opts: Options, start: float, progress: Progress, errors: list[str]):
        self.opts, self.start, self.progress, self.errors = opts, start, progress, errors
        self.timers: list[CaseTimer] = []
        self.later: list[tuple[dict, Callable[[], None]]] = []  # (row, warm compile)
        self.allocator = "not timed"

    def seconds_left(self) -> float:
        """Of the --time-limit, what is left after the report and the queued warm compiles."""
        if not self.opts.time_limit:
            return float("inf")
        queued = sum(WARM_AFTER_TIMING * (row["compile_s"]["cold"] or 0.0)
                     for row, _ in self.later)
        return (self.opts.time_limit - (time.perf_counter() - self.start) - REPORT_RESERVE_S
                - queued)

    def fits(self, case_seconds: float) -> tuple[bool, str]:
        """Whether a case of `case_seconds` can still be prepared and timed; if not, why."""
        timing = (sum(t.budget_left_s for t in self.timers if t.runs)
                  + case_seconds) * TIMING_RESERVE
        left = self.seconds_left()
        if left >= timing:
            return True, ""
        elapsed = time.perf_counter() - self.start
        return False, (f"the run's --time-limit of {self.opts.time_limit:.0f} s: {elapsed:.0f} s "
                       f"had passed, and timing the cases prepared so far and this one needs "
                       f"about {timing:.0f} s")

    def visit(self, slices_left: int, what: str) -> None:
        """One slice of every prepared case (the allocator keeps freed memory meanwhile)."""
        if not self.timers:
            return
        with keep_freed_memory(self.opts.malloc_tuning) as allocator:
            visit_all(self.timers, slices_left, self.progress, what)
        self.allocator = allocator

    def finish(self) -> None:
        """The final passes, the queued warm compiles, then every case's rows."""
        passes = max(1, self.opts.passes)
        for p in range(passes):
            fit_budgets(self.timers, self.seconds_left() / TIMING_RESERVE)
            self.visit(passes - p, f"pass {p + 1}/{passes}")
        while self.later:
            row, warm_compile = self.later.pop(0)
            self.progress.label(f"warm compile {row['model']} {row['system']}")
            if self.seconds_left() < WARM_AFTER_TIMING * (row["compile_s"]["cold"] or 0.0):
                row["compile_s"]["note"] = (f"warm compile not measured: the run's "
                                            f"--time-limit of {self.opts.time_limit:.0f} s")
                continue
            try:
                warm_compile()
            except Exception as e:  # the cold compile and its timings stand
                row["compile_s"]["note"] = f"warm compile failed: {reason_of(e)}"
                self.errors.append(f"--- {row['model']}@{row['batch']} {row['system']} (warm "
                                   f"compile)\n{traceback.format_exc()}")
        for timer in self.timers:
            timer.fill_rows()


def _plan(opts: Options, device: torch.device) -> list[tuple[BenchModel, int, bool]]:
    """(model, batch, first batch size of the model?) in run order: every model's first batch
    size first, later batch sizes after, so that a --time-limit cuts the extra batch sizes
    before it cuts a model."""
    specs = get_models(opts.quick)
    plan = []
    for name in opts.models:
        spec = specs[name]
        batches = opts.batches or list(spec.gpu_batches if device.type == "cuda"
                                       else spec.batches)
        plan += [(spec, b, i == 0) for i, b in enumerate(batches)]
    rank = {name: i for i, name in enumerate(opts.models)}
    plan.sort(key=lambda p: (not p[2], rank[p[0].name]))
    return plan


@contextlib.contextmanager
def _compiler_caches(scratch: Path):
    """Inductor's and Triton's caches in the run's scratch folder (a fresh, empty cache per
    run: cold means cold), and room in dynamo's cache for every case of the run: all cases stay
    compiled while they are timed, and transformers models share one forward (the output
    unwrapper), which dynamo's default limit of 8 compiles per function would otherwise turn
    back into eager without an error."""
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(scratch, "triton")
    import torch._dynamo.config as dynamo_config

    # names of torch 2.6+; an older torch (a GPU machine's own) keeps its defaults
    wanted = {"recompile_limit": 256, "fail_on_recompile_limit_hit": True}
    try:
        with dynamo_config.patch({k: v for k, v in wanted.items() if hasattr(dynamo_config, k)}):
            yield
    finally:
        TorchCompile.reset()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_all(plan, runnable: list[System], opts: Options, device: torch.device,
                 scratch: Path, timeline: _Timeline, errors: list[str], results: list[dict],
                 model_info: list[dict]) -> None:
    """Prepare every case of the plan while its timing still fits the time limit, visiting the
    cases prepared so far after each one. Rows of cases skipped or failed as a whole go to
    `results`."""
    progress = timeline.progress
    last_case = {spec.name: i for i, (spec, _, _) in enumerate(plan)}
    for i, (spec, batch, first) in enumerate(plan):
        if first:
            model_info.append(_describe_model(spec, opts, device))
        fits, why = timeline.fits(opts.case_seconds)
        if not fits:
            results += [new_row(spec.name, batch, s.name, "skipped", why) for s in runnable]
            progress.step(f"{spec.name}@{batch} skipped", len(runnable))
        else:
            try:
                prepared = prepare_case(spec, batch, first, runnable, opts, device, scratch,
                                        progress, errors, model_info[-1] if first else None,
                                        timeline.later)
                timeline.timers.append(CaseTimer(prepared, opts, errors))
            except Exception as e:  # a model that cannot be built or run in eager
                errors.append(f"--- {spec.name}@{batch}\n{traceback.format_exc()}")
                results += [new_row(spec.name, batch, s.name, "failed",
                                    f"model: {reason_of(e)}") for s in runnable]
                progress.step(f"{spec.name}@{batch} failed", len(runnable))
        if last_case[spec.name] == i:
            for s in runnable:
                s.release(spec.name)
        gc.collect()
        if i < len(plan) - 1:  # the last preparation is followed by the final passes
            timeline.visit(len(plan) - 1 - i + max(1, opts.passes),
                           f"after {spec.name}@{batch}")


def run_case(spec: BenchModel, batch: int, first_batch: bool, systems: list[System],
             opts: Options, device: torch.device, workdir: Path, progress: Progress,
             errors: list[str]) -> list[dict]:
    """Prepare and time a single case (both phases for one model at one batch size): its
    result rows, one per system."""
    prepared = prepare_case(spec, batch, first_batch, systems, opts, device, workdir, progress,
                            errors)
    with keep_freed_memory(opts.malloc_tuning):
        time_cases([prepared], opts, None, progress, errors)
    return list(prepared.rows.values())


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
