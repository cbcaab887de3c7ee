"""The timing phase of `fxforge bench`: every prepared case, timed in passes over the run.

Why passes: on a shared VM the ratio between two systems drifts with the host's load, over
seconds to minutes, and not alike for every system (eager MobileNetV2 next to ONNX Runtime
fp32: per-second paired speedups from 3.4x to 6.0x within one process). A case timed in one
3 s stretch caught whatever the host did in those seconds, and two runs differed by up to 32%.
Timing each case in short slices spread over the whole phase samples many host states; on
recorded samples (150 s of MobileNetV2, 90 s of the digits CNN, all systems, 2026-11-22),
eight 1 s slices against one 3 s stretch took the chance that a ratio differs by more than 10%
between two runs from 17% to 1.3% (MobileNetV2) and from 13% to 0.7% (digits). The median of
paired ratios beat ratios of medians, p10s or minimums on the same data.

Within a slice, rounds run every system once in a rotated order (`timing.interleaved_blocks`).
Slices share the time left equally, so a large model gets as much wall time as a small one.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback

import torch

from bench.cases import PreparedCase, Steps, reason_of, sync
from bench.systems import BASELINE
from bench.timing import interleaved_blocks, summarize

LIGHT_WARMUP_S = 0.05  # later passes warm up (one untimed block) systems faster than this


def block_calls(single_s: float, block_seconds: float, max_block: int) -> int:
    """Back-to-back calls per sample: enough to fill block_seconds, at least one."""
    return max(1, min(max_block, int(block_seconds / max(single_s, 1e-7))))


class CaseTimer:
    """Samples of one case, accumulated over the passes: rounds[i] maps each system timed in
    round i to its sample (seconds per call), so ratios pair systems of the same round."""

    def __init__(self, prepared: PreparedCase, opts, errors: list[str]):
        self.prepared, self.opts, self.errors = prepared, opts, errors
        self.runs = dict(prepared.runs)
        self.single_s = dict(prepared.single_s)  # one call's seconds, for sizing blocks
        self.calls = {n: block_calls(self.single_s[n], opts.block_seconds, opts.max_block)
                      for n in self.runs}
        self.round_s = sum(self.single_s[n] * self.calls[n] for n in self.runs)
        self.rounds: list[dict[str, float]] = []
        self.passes = 0

    def slice(self, rounds: int, full_warmup: bool) -> float:
        """Warm up, then time `rounds` interleaved rounds; returns the seconds the timed rounds
        took. A system that fails is dropped with its reason (its earlier samples stay, the
        rounds of this slice are discarded)."""
        self._warm(self.opts.warmup if full_warmup else 0)
        if not self.runs:
            return 0.0
        start = time.perf_counter()
        try:
            samples = interleaved_blocks(self.runs, self.calls, repeats=rounds, warmup=0,
                                         cuda=self.prepared.case.device.type == "cuda",
                                         first_round=len(self.rounds))
        except Exception:  # find which system failed; keep the others
            self._warm(1)
            return 0.0
        self.rounds += [{n: s[r] for n, s in samples.items()} for r in range(rounds)]
        self.passes += 1
        timed = time.perf_counter() - start
        self.round_s = max(timed / rounds, 1e-6)  # measured, for the next slice's size
        return timed

    def _warm(self, full_rounds: int) -> None:
        """Untimed calls of each system. A full warm-up (pass 1; it also recompiles what
        torch._dynamo.reset dropped) calls each system at least 3 times, once per block call
        and round, and sizes its blocks again from its fastest call: the single call measured
        after preparation can be 100x slow (a 0.1 ms torch.compile call once took 10 ms there,
        got one call per sample, and paid the previous runtime's thread wake-up on every
        sample: 0.19x instead of 0.7x). A light warm-up calls only the fast systems, whose
        first calls after another case pay for its cold caches."""
        device = self.prepared.case.device
        with torch.no_grad():
            for name in list(self.runs):
                if not full_rounds and self.single_s[name] > LIGHT_WARMUP_S:
                    continue
                calls = max(1, full_rounds) * self.calls[name]
                fastest = float("inf")
                try:
                    for _ in range(max(3, calls) if full_rounds else calls):
                        start = time.perf_counter()
                        self.runs[name]()
                        sync(device)
                        fastest = min(fastest, time.perf_counter() - start)
                except Exception as e:
                    self._drop(name, e)
                    continue
                if full_rounds:
                    self.single_s[name] = fastest
                    self.calls[name] = block_calls(fastest, self.opts.block_seconds,
                                                   self.opts.max_block)
        if full_rounds:  # the first slice's size; later ones use the measured rounds
            self.round_s = sum(self.single_s[n] * self.calls[n] for n in self.runs)

    def _drop(self, name: str, e: Exception) -> None:
        del self.runs[name]
        self.prepared.rows[name].update(status="failed", reason=f"while timing: {reason_of(e)}")
        self.errors.append(f"--- {self.prepared.key} {name} (timing)\n{traceback.format_exc()}")

    def fill_rows(self) -> None:
        """Latency, throughput and paired speedup of every system that was timed."""
        cuda = self.prepared.case.device.type == "cuda"
        for name, row in self.prepared.rows.items():
            samples = [r[name] for r in self.rounds if name in r]
            if row["status"] != "ok" or not samples:
                continue
            t = summarize(samples)
            row["latency_ms"] = {"median": t["median_s"] * 1e3, "p10": t["p10_s"] * 1e3,
                                 "p90": t["p90_s"] * 1e3, "repeats": len(samples),
                                 "passes": self.passes, "calls_per_sample": self.calls[name],
                                 "samples": [x * 1e3 for x in samples],
                                 "timer": "cuda_events" if cuda else "perf_counter"}
            row["throughput_per_s"] = self.prepared.case.batch / t["median_s"]
            paired = [r[BASELINE] / r[name] for r in self.rounds if BASELINE in r and name in r]
            if paired:  # eager and this system in the same round
                row["speedup_vs_eager"] = statistics.median(paired)


def time_cases(cases: list[PreparedCase], opts, seconds: float, progress: Steps,
               errors: list[str]) -> None:
    """Time every case in opts.passes passes, about `seconds` of timed rounds in all (at least
    the minimum rounds per slice; warm-ups come on top), then fill their rows."""
    timers = [CaseTimer(c, opts, errors) for c in cases]
    passes = max(1, opts.passes)
    if opts.repeats:
        lo = hi = math.ceil(opts.repeats / passes)
    else:
        lo, hi = math.ceil(opts.min_repeats / passes), math.ceil(opts.max_repeats / passes)
    slots = passes * sum(bool(t.runs) for t in timers)
    for p in range(passes):
        for timer in timers:
            if timer.runs:
                progress.label(f"timing {timer.prepared.key}, pass {p + 1}/{passes}")
                share = max(0.0, seconds) / max(1, slots)
                seconds -= timer.slice(max(lo, min(hi, int(share / timer.round_s))),
                                       full_warmup=p == 0)
                slots -= 1
            progress.step(f"{timer.prepared.key} pass {p + 1}")
    for timer in timers:
        timer.fill_rows()
