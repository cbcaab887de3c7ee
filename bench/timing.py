"""Timing that survives a shared, noisy machine: warm up, interleave the systems so each
repeat sees the same load, report medians and ratios (never absolute times across runs)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch


def interleaved(systems: dict[str, Callable[[], object]], repeats: int = 30,
                warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / p10 / p90 seconds per system; round r runs every system once, in a rotated
    order, so drift in machine load hits all of them alike."""
    samples = interleaved_samples(systems, repeats, warmup)
    return {name: summarize(times) for name, times in samples.items()}


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on Linux), and its int8-relevant
    ISA extensions where /proc/cpuinfo lists them."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({' '.join(isa)})" if isa else model


def machine() -> dict[str, object]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit}



def interleaved_samples(systems: dict[str, Callable[[], object]], repeats: int = 30,
                        warmup: int = 3, cuda: bool = False) -> dict[str, list[float]]:
    """Like `interleaved`, but returns every timed sample (seconds) per system. cuda=True times
    each call with CUDA events on the current stream."""
    return interleaved_blocks(systems, {}, repeats, warmup, cuda)


def summarize(times: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of samples; percentiles interpolate between samples (never outside
    their range, even for a handful of repeats)."""
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else (
        [times[0]] * 9)
    return {"median_s": statistics.median(times), "p10_s": deciles[0], "p90_s": deciles[-1],
            "repeats": len(times)}


def interleaved_blocks(systems: dict[str, Callable[[], object]], calls: dict[str, int],
                       repeats: int = 30, warmup: int = 3, cuda: bool = False,
                       first_round: int = 0) -> dict[str, list[float]]:
    """Interleaved timing where each sample is the mean time of `calls[name]` back-to-back
    calls: for sub-millisecond systems, the cost of switching from another runtime (its thread
    pool waking up, cold caches) is spread over the block instead of landing on every call,
    while rounds still rotate so that drift in machine load hits every system alike.
    first_round: where the rotation starts (a caller timing in slices continues it)."""
    names = list(systems)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                systems[name]()
        if cuda:
            torch.cuda.synchronize()
        for r in range(first_round, first_round + repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, k = systems[name], max(1, calls.get(name, 1))
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(k):
                        fn()
                    end.record()
                    end.synchronize()
                    samples[name].append(start.elapsed_time(end) / 1e3 / k)
                else:
                    start_s = time.perf_counter()
                    for _ in range(k):
                        fn()
                    samples[name].append((time.perf_counter() - start_s) / k)
    return samples
