"""The timing of `fxforge bench`: every prepared case, timed in short slices spread over the run.

Why slices: on a shared VM the ratio between two systems drifts with the host's state, over
seconds to minutes, and not alike for every system (eager MobileNetV2 next to ONNX Runtime
fp32: per-second paired speedups from 3.4x to 6.0x within one process). A case timed in one
3 s stretch caught whatever the host did in those seconds, and two runs differed by up to 32%.
Timing each case in short slices spread over time samples many host states; on recorded
samples (150 s of MobileNetV2, 90 s of the digits CNN, all systems, 2026-11-22), eight 1 s
slices against one 3 s stretch took the chance that a ratio differs by more than 10% between
two runs from 17% to 1.3% (MobileNetV2) and from 13% to 0.7% (digits). The median of paired
ratios beat ratios of medians, p10s or minimums on the same data, and on 9 real runs.

Why over the whole run: the host's state lasts 10-60 s (a 420 s record of the MLP: every
system 1.5x slower for stretches of that length, the reference interpreter's speedup 0.18x
there and 0.20x otherwise), so 8 slices within a 100 s timing phase at the end of the run saw
only a few states. The harness therefore visits every prepared case after each preparation
(`visit`), then for `--passes` passes; a case's budget is spread over the visits it has left.
On the same record, 16 slices over 400 s instead of 8 over 100 s cut the run-to-run sd of the
reference's and fxforge-cpu's speedups from 2.2% / 1.4% to 1.3% / 0.9%.

Why budgets grow with a case's round: a slow case (BERT-base, ~1 s a round) got 8 rounds in
8 s, and the median of 8 paired ratios moved by up to 13% between runs, while a sub-millisecond
case got 90 rounds. A case's timed seconds are --case-seconds x sqrt(round / 0.25 s), within
0.6x-2x: more rounds where they are few, fewer where they are many.

Within a slice, rounds run every system once in a rotated order (`timing.interleaved_blocks`).
"""

from __future__ import annotations

import math
import statistics
import time
import traceback

import torch

from fxforge.bench.cases import PreparedCase, Steps, reason_of, sync
from fxforge.bench.systems import BASELINE
from fxforge.bench.timing import interleaved_blocks, summarize

LIGHT_WARMUP_S = 0.05  # later visits warm up (one untimed block) systems faster than this
REFERENCE_ROUND_S = 0.25  # a case whose round takes this long gets --case-seconds
BUDGET_SCALE = (0.6, 2.0)  # the least and most a case's budget is scaled by its round


def block_calls(single_s: float, block_seconds: float, max_block: int) -> int:
    """Back-to-back calls per sample: enough to fill block_seconds, at least one."""
    return max(1, min(max_block, int(block_seconds / max(single_s, 1e-7))))


def case_budget(case_seconds: float, round_s: float) -> float:
    """Timed seconds for a case whose round takes round_s: --case-seconds x sqrt(round_s /
    0.25 s), within 0.6x-2x (see the module docstring)."""
    lo, hi = BUDGET_SCALE
    return case_seconds * min(hi, max(lo, math.sqrt(round_s / REFERENCE_ROUND_S)))


class CaseTimer:
    """Samples of one case, accumulated over its visits: rounds[i] maps each system timed in
    round i to its sample (seconds per call), so ratios pair systems of the same round."""

    def __init__(self, prepared: PreparedCase, opts, errors: list[str]):
        self.prepared, self.opts, self.errors = prepared, opts, errors
        self.runs = dict(prepared.runs)
        self.single_s = dict(prepared.single_s)  # one call's seconds, for sizing blocks
        self.calls = {n: block_calls(self.single_s[n], opts.block_seconds, opts.max_block)
                      for n in self.runs}
        self.round_s = sum(self.single_s[n] * self.calls[n] for n in self.runs)
        self.rounds: list[dict[str, float]] = []
        self.passes = 0  # slices timed (the schema's latency_ms.passes)
        self.budget_s: float | None = None  # set at the first visit, from the measured round
        self.spent_s = 0.0
        self.factor = 1.0  # budgets shrunk to fit a --time-limit

    @property
    def budget_left_s(self) -> float:
        """Timed seconds this case still wants (its whole budget before its first visit)."""
        if self.budget_s is None:
            return self.opts.case_seconds * self.factor
        return max(0.0, self.budget_s - self.spent_s)

    def shrink(self, factor: float) -> None:
        """Scale the budget left by factor (the run's --time-limit is near)."""
        if self.budget_s is None:
            self.factor *= factor
        else:
            self.budget_s = self.spent_s + self.budget_left_s * factor

    def visit(self, slices_left: int) -> None:
        """Time one slice of this case: warm up (fully at the first visit, which also sets the
        budget from the measured round), then as many rounds as the budget left shared by the
        `slices_left` visits left (this one included)."""
        first = self.budget_s is None
        self._warm(self.opts.warmup if first else 0)
        if first:
            self.budget_s = case_budget(self.opts.case_seconds, self.round_s) * self.factor
        rounds = self._rounds(max(1, slices_left))
        if self.runs and rounds > 0:
            self.spent_s += self.slice(rounds)

    def _rounds(self, slices_left: int) -> int:
        """Rounds for this visit: an equal share of the budget left, at least one round and an
        equal share of the minimum still missing, at most an equal share of the maximum still
        allowed (so that a case's rounds are spread over all its visits, even when the first
        ones overspent); --repeats: its share of the fixed count."""
        done = len(self.rounds)
        if self.opts.repeats:
            return math.ceil(max(0, self.opts.repeats - done) / slices_left)
        share = round(self.budget_left_s / slices_left / max(self.round_s, 1e-9))
        floor = math.ceil(max(0, self.opts.min_repeats - done) / slices_left)
        cap = math.ceil(max(0, self.opts.max_repeats - done) / slices_left)
        return max(0, min(cap, max(share, floor, 1)))

    def slice(self, rounds: int) -> float:
        """Time `rounds` interleaved rounds; returns the seconds they took. A system that fails
        is dropped with its reason (its earlier samples stay, the rounds of this slice are
        discarded)."""
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
        """Untimed calls of each system. A full warm-up (a case's first visit) calls each system
        at least 3 times, once per block call and round, and sizes its blocks again from its
        fastest call: the single call measured after preparation can be 100x slow (a 0.1 ms
        torch.compile call once took 10 ms there, got one call per sample, and paid the
        previous runtime's thread wake-up on every sample: 0.19x instead of 0.7x). A light
        warm-up calls only the fast systems, whose first calls after another case pay for its
        cold caches."""
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


def visit_all(timers: list[CaseTimer], slices_left: int, progress: Steps,
              what: str) -> None:
    """One slice of every timer that still has systems (a pass, or a visit between two
    preparations); `slices_left` counts this visit."""
    for timer in timers:
        if timer.runs:
            progress.label(f"timing {timer.prepared.key} ({what})")
            timer.visit(slices_left)
        progress.step(f"{timer.prepared.key} {what}")


def time_cases(cases: list[PreparedCase], opts, seconds: float | None, progress: Steps,
               errors: list[str]) -> None:
    """Time prepared cases in opts.passes passes (nothing interleaved with preparations) and
    fill their rows; `seconds`: the timed seconds of all cases together, when less than their
    budgets (a --time-limit)."""
    timers = [CaseTimer(c, opts, errors) for c in cases]
    if seconds is not None:
        fit_budgets(timers, seconds)
    passes = max(1, opts.passes)
    for p in range(passes):
        visit_all(timers, passes - p, progress, f"pass {p + 1}/{passes}")
    for timer in timers:
        timer.fill_rows()


def fit_budgets(timers: list[CaseTimer], seconds: float) -> None:
    """Shrink every timer's budget left alike so that together they fit `seconds`."""
    left = sum(t.budget_left_s for t in timers if t.runs)
    seconds = max(0.0, seconds)
    if left > seconds:  # so left > 0: a run past its time limit left nothing to share
        for t in timers:
            t.shrink(seconds / left)
