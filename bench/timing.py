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
    names = list(systems)
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                systems[name]()
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                start = time.perf_counter()
                systems[name]()
                samples[name].append(time.perf_counter() - start)
    result = {}
    for name, times in samples.items():
        deciles = statistics.quantiles(times, n=10)
        result[name] = {"median_s": statistics.median(times), "p10_s": deciles[0],
                        "p90_s": deciles[-1], "repeats": repeats}
    return result


def machine() -> dict[str, object]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit}
