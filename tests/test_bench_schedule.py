"""bench.schedule: the timing phase visits every case in every pass, pairs ratios within a
round, and drops a system that fails while timing without losing the others; bench.allocator
keeps freed memory in the process while timing."""

import resource
import time
from types import SimpleNamespace

import pytest
import torch

from bench import allocator
from bench.cases import PreparedCase, new_row
from bench.schedule import block_calls, time_cases
from bench.systems import BASELINE, Case


class _Steps:
    def __init__(self):
        self.steps = 0

    def step(self, label, n=1):
        self.steps += n

    def label(self, text):
        pass


def _opts(**kw):
    base = dict(passes=3, repeats=None, min_repeats=3, max_repeats=9, warmup=1,
                block_seconds=0.0, max_block=1)
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


def test_the_time_budget_is_shared_by_the_slices(clock):
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1e-3)
    b = _case("b", {BASELINE: clock.system(4e-3)}, [], single_s=4e-3)
    time_cases([a, b], _opts(passes=2, min_repeats=2, max_repeats=1000), seconds=0.8,
               progress=_Steps(), errors=[])
    # 0.8 s of timed rounds in 4 slices of 0.2 s: each case gets 0.4 s of rounds, whatever its
    # round costs; the untimed warm-up calls come on top (3 per system in pass 1, 1 after)
    ra, rb = (c.rows[BASELINE]["latency_ms"]["repeats"] for c in (a, b))
    assert 395 <= ra <= 405 and 98 <= rb <= 102, (ra, rb)
    assert clock.now == pytest.approx(0.8 + 4 * (1e-3 + 4e-3), abs=1e-2)


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


def test_slices_continue_the_rotation_of_the_rounds():
    from bench.timing import interleaved_blocks

    order: list[str] = []
    systems = {n: (lambda n=n: order.append(n)) for n in ("x", "y", "z")}
    interleaved_blocks(systems, {}, repeats=2, warmup=0, first_round=1)
    assert order == ["y", "z", "x", "z", "x", "y"]



def test_blocks_are_sized_from_the_fastest_warm_up_call(clock):
    # the one call measured after preparation was 1 s (a hiccup); the system takes 1 ms
    a = _case("a", {BASELINE: clock.system(1e-3)}, [], single_s=1.0)
    time_cases([a], _opts(passes=2, block_seconds=0.01, max_block=200), seconds=0.1,
               progress=_Steps(), errors=[])
    lat = a.rows[BASELINE]["latency_ms"]
    assert lat["calls_per_sample"] == 10  # 10 ms blocks of 1 ms calls, not 1 call a sample
    assert lat["median"] == pytest.approx(1.0)
