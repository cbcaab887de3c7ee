"""ONNX's node conformance tests (`bench/onnx_conformance.py`) on a bounded, deterministic
sample: the first claimed case of every op type, plus a seeded sample of the other claimed
cases, through `import_onnx` and the numpy reference (and a smaller sample on the torch CPU
backend). The full run, with every failure and its reason, is `docs/onnx-coverage.md`.
"""

from __future__ import annotations

import random

import pytest

from fxforge.bench import onnx_conformance as conformance

SAMPLE = 150
PASS_RATE = 0.95  # the goal on claimed cases
CLAIMED_SHARE = 0.70  # the goal: claimed cases among all node tests


@pytest.fixture(scope="module")
def cases():
    return conformance.collect()


@pytest.fixture(scope="module")
def claimed(cases):
    return [c for c in cases if not conformance.claim(c)]


def _sample(claimed, size: int, seed: int):
    first: dict[str, conformance.Case] = {}
    for c in claimed:
        first.setdefault(c.op_type, c)
    rest = [c for c in claimed if first[c.op_type] is not c]
    extra = random.Random(seed).sample(rest, max(0, min(len(rest), size - len(first))))
    return list(first.values()) + extra


def test_claimed_share(cases, claimed):
    share = len(claimed) / len(cases)
    assert len(cases) > 1000  # the installed onnx's node tests were all generated
    assert share >= CLAIMED_SHARE, f"{len(claimed)} of {len(cases)} claimed ({share:.1%})"


def test_sample_passes_on_the_reference(claimed):
    sample = _sample(claimed, SAMPLE, seed=0)
    results = [conformance.run_case(c) for c in sample]
    failed = [f"{r.case.name}: {r.status}: {r.detail}" for r in results if r.status != "pass"]
    rate = 1 - len(failed) / len(results)
    assert rate >= PASS_RATE, "\n".join(failed)


def test_sample_passes_on_the_torch_backend(claimed):
    sample = _sample(claimed, 60, seed=1)
    results = [conformance.run_case(c, target="cpu") for c in sample]
    failed = [f"{r.case.name}: {r.status}: {r.detail}" for r in results if r.status != "pass"]
    assert 1 - len(failed) / len(results) >= PASS_RATE, "\n".join(failed)


def test_unclaimed_cases_say_why(cases):
    reasons = {conformance.claim(c).split(" ")[0] for c in cases}
    assert reasons <= {"", "op", "dtype"}


def test_report_lists_totals_and_failures(cases):
    sample = [c for c in cases if c.op_type in ("Relu", "Dropout", "Unique")]
    results = [conformance.run_case(c) for c in sample]
    text = conformance.report(results, "reference", 1.0)
    assert "| Relu |" in text and "| Unique |" in text
    assert "claimed" in text and "% of claimed" in text
    failures = [r for r in results if r.status not in ("pass", "unclaimed")]
    for r in failures:  # Dropout in training mode is random: listed with its reason
        assert r.case.name in text
