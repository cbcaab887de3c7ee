"""bench.schedule: the timing phase visits every case in every pass, pairs ratios within a
round, and drops a system that fails while timing without losing the others; bench.allocator
keeps freed memory in the process while timing."""

import resource
import time
from types import SimpleNamespace

import pytest
import torch

from fxforge.bench import allocator
from fxforge.bench.cases import PreparedCase, new_row
from fxforge.bench.schedule import (
    CaseTimer,
    block_calls,
    case_budget,
    fit_budgets,
    time_cases,
    visit_all,
)
from fxforge.bench.systems import BASELINE, Case


class _Steps:
    def __init__(self):
        self.steps = 0

    def step(self, label, n=1):
        self.steps += n

    def label(self, text):
        pass


def _opts(**kw):
    base = dict(passes=3, repeats=None, min_repeats=3, max_repeats=9, warmup=1,
                block_seconds=0.0, max_block=1, case_seconds=0.0)
    return SimpleNamespace(**{**base, **kw})


def _case(name: str, runs: dict, log: list, single_s: float = 1e-4) -> PreparedCase:
    case = Case(SimpleNamespace(name=name), 1, None, (), torch.device("cpu"), None)

    def logged(system, fn):
        def run():
            log.append((name, system))
            return fn()
        return run

    prepared = PreparedCase(case, {s: new_row(name, 1, s, "ok") for s in runs})
    prepared.runs = {s: logged(s, fn) for s, fn in runs.items()}
    prepared.single_s = {s: single_s for s in runs}  # what bench.cases measures
    return prepared


class _Clock:
    """A fake time.perf_counter that advances only when a fake system runs: timings, budgets and
    ratios become exact, whatever the load of the machine running the tests."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def system(self, seconds):
        def run():
            self.now += seconds
        return run


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def test_every_case_is_timed_in_every_pass_interleaved_with_the_others(clock):
    log: list = []
    a = _case("a", {BASELINE: clock.system(2e-3), "fast": clock.system(1e-3)}, log)
    b = _case("b", {BASELINE: clock.system(2e-3), "slow": clock.system(4e-3)}, log)
    steps = _Steps()
    time_cases([a, b], _opts(), seconds=0.0, progress=steps, errors=[])
    assert steps.steps == 2 * 3
    # the call log alternates between the cases once per pass (3 passes -> 6 runs of calls)
    switches = [log[0][0]] + [c for (c, _), (p, _) in zip(log[1:], log) if c != p]
    assert switches == ["a", "b"] * 3
    for prepared, other, ms in ((a, "fast", 1.0), (b, "slow", 4.0)):
        lat = prepared.rows[other]["latency_ms"]
        assert lat["passes"] == 3 and lat["repeats"] == 3  # min 3 rounds -> 1 per pass
        assert lat["samples"] == pytest.approx([ms] * 3)
        assert lat["median"] == pytest.approx(ms)
        assert prepared.rows[other]["throughput_per_s"] == pytest.approx(1e3 / ms)
    assert a.rows["fast"]["speedup_vs_eager"] == pytest.approx(2.0)
    assert b.rows["slow"]["speedup_vs_eager"] == pytest.approx(0.5)
    assert a.rows[BASELINE]["speedup_vs_eager"] == 1.0


def test_a_case_budget_grows_with_the_square_root_of_its_round():
    assert case_budget(8.0, 0.25) == pytest.approx(8.0)
    assert case_budget(8.0, 1.0) == pytest.approx(16.0)  # BERT-base: ~1 s a round
    assert case_budget(8.0, 0.5) == pytest.approx(8.0 * 2 ** 0.5)
    assert case_budget(8.0, 1e-3) == pytest.approx(0.6 * 8.0)  # floor
    assert case_budget(8.0, 100.0) == pytest.approx(2.0 * 8.0)  # ceiling


def test_the_budget_is_shared_by_the_slices_and_set_by_the_round(clock):
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    b = _case("b", {BASELINE: clock.system(1.0)}, [], single_s=1.0)
    time_cases([a, b], _opts(passes=2, min_repeats=2, max_repeats=1000, case_seconds=0.5),
               seconds=None, progress=_Steps(), errors=[])
    # a: 1 ms rounds -> 0.6 x 0.5 s of rounds (300); b: 1 s rounds -> 2 x 0.5 s (1 per slice);
    # the untimed warm-up calls come on top (3 per system at the first visit, 1 block after
    # for systems faster than 50 ms)
    ra, rb = (c.rows[BASELINE]["latency_ms"]["repeats"] for c in (a, b))
    assert 295 <= ra <= 305 and rb == 2, (ra, rb)
    assert a.rows[BASELINE]["latency_ms"]["passes"] == 2
    assert clock.now == pytest.approx(0.3 + 3 * 1e-3 + 1e-3 + 2 * 1.0 + 3 * 1.0, abs=1e-2)


def test_a_time_limit_shrinks_every_budget_alike(clock):
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    b = _case("b", {BASELINE: clock.system(2e-3)}, [], single_s=2e-3)
    time_cases([a, b], _opts(passes=2, min_repeats=1, max_repeats=10_000, case_seconds=1.0),
               seconds=0.5, progress=_Steps(), errors=[])
    # budgets 0.6 s each, asked for 1.0 s each before the rounds were known: both scaled by
    # 0.5 / 2.0 -> 0.15 s of rounds each
    ra, rb = (c.rows[BASELINE]["latency_ms"]["repeats"] for c in (a, b))
    assert 145 <= ra <= 155 and 72 <= rb <= 78, (ra, rb)


def test_a_run_already_past_its_time_limit_with_no_budget_left_does_not_fail(clock):
    """The preparations took the whole time limit (a loaded machine): nothing is left to share
    (this divided by zero in a 2026-12-07 run)."""
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    timer = CaseTimer(a, _opts(passes=2, min_repeats=1, max_repeats=10, case_seconds=1.0), [])
    timer.shrink(0.0)
    assert timer.budget_left_s == 0.0
    fit_budgets([timer], -3.0)
    assert timer.budget_left_s == 0.0


def test_visits_between_preparations_spread_a_case_and_share_its_budget(clock):
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    b = _case("b", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    opts = _opts(passes=2, min_repeats=1, max_repeats=10_000, case_seconds=1.0)
    ta = CaseTimer(a, opts, [])
    times = []
    for slices_left in (4, 3):  # two visits of a alone: b is being prepared
        visit_all([ta], slices_left, _Steps(), "between")
        times.append(clock.now)
    tb = CaseTimer(b, opts, [])
    for slices_left in (2, 1):
        visit_all([ta, tb], slices_left, _Steps(), "pass")
    ta.fill_rows()
    tb.fill_rows()
    la, lb = a.rows[BASELINE]["latency_ms"], b.rows[BASELINE]["latency_ms"]
    assert la["passes"] == 4 and lb["passes"] == 2
    # the same budget (0.6 s: 1 ms rounds), a's in 4 slices of ~150 rounds, b's in 2 of ~300
    assert 595 <= la["repeats"] <= 605 and 595 <= lb["repeats"] <= 605
    assert times[0] == pytest.approx(0.15 + 4e-3, abs=2e-3)


def test_a_system_failing_while_timing_is_dropped_and_the_others_go_on():
    log: list = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("device lost\ndetails")

    a = _case("a", {BASELINE: lambda: None, "flaky": flaky}, log)
    errors: list[str] = []
    time_cases([a], _opts(), seconds=0.0, progress=_Steps(), errors=errors)
    row = a.rows["flaky"]
    assert row["status"] == "failed"
    assert row["reason"] == "while timing: RuntimeError: device lost"
    assert errors and "device lost" in errors[0]
    base = a.rows[BASELINE]["latency_ms"]
    assert base is not None and base["passes"] >= 2  # eager kept its slices


@pytest.mark.parametrize("single, block, expected", [(1e-3, 0.01, 10), (1.0, 0.01, 1),
                                                     (1e-9, 0.01, 200), (1e-3, 0.0, 1)])
def test_block_calls(single, block, expected):
    assert block_calls(single, block, 200) == expected


def _faults_per_call(n=20, mb=16, warmup=40):
    def once():
        torch.empty(mb * 1024 * 1024 // 4).fill_(1.0)  # touches every page of a fresh block

    for _ in range(warmup):  # the heap grows until freed blocks coalesce into a reusable one
        once()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        once()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def test_freed_memory_is_kept_while_timing():
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    pages = 16 * 1024 * 1024 // 4096
    with allocator.keep_freed_memory() as what:
        kept = _faults_per_call()
    assert "keeps freed memory" in what
    # once warm, a 16 MiB block freed and allocated again is reused: no page is faulted in again
    # (with glibc's defaults, eager MobileNetV2 faulted ~2400 pages in on every call)
    assert kept < 0.05 * pages, kept
    with allocator.keep_freed_memory(enabled=False) as what:
        assert "default settings" in what


def test_outside_the_slices_freed_blocks_go_back_to_the_kernel():
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    assert allocator.fix_defaults()
    pages = 16 * 1024 * 1024 // 4096
    # glibc's dynamic threshold would rise to 16 MiB after the first free and keep the block;
    # held at 128 KiB, every 16 MiB block is mapped fresh: memory figures see live memory only
    assert _faults_per_call(warmup=2) > 0.9 * pages
    assert not allocator.fix_defaults(enabled=False)


def test_slices_continue_the_rotation_of_the_rounds():
    from fxforge.bench.timing import interleaved_blocks

    order: list[str] = []
    systems = {n: (lambda n=n: order.append(n)) for n in ("x", "y", "z")}
    interleaved_blocks(systems, {}, repeats=2, warmup=0, first_round=1)
    assert order == ["y", "z", "x", "z", "x", "y"]



def test_blocks_are_sized_from_the_fastest_warm_up_call(clock):
    # the one call measured after preparation was 1 s (a hiccup); the system takes 1 ms
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1.0)
    time_cases([a], _opts(passes=2, block_seconds=0.01, max_block=200, case_seconds=0.1),
               seconds=None,
               progress=_Steps(), errors=[])
    lat = a.rows[BASELINE]["latency_ms"]
    assert lat["calls_per_sample"] == 10  # 10 ms blocks of 1 ms calls, not 1 call a sample
    assert lat["median"] == pytest.approx(1.0)
