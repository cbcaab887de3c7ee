"""The optimization workflow end to end on the digits CNN (`fxforge demo --workflow`): the
issue's done-when, checked on held-out accuracy measured here.

prune 50% -> accuracy drops; distill -> at least 99% of the trained model's accuracy; int8 of
the distilled student keeps it; the archive loads in a fresh process with bit-identical outputs
(`workflow.run` raises if they differ, and the test checks the loaded accuracy too).
"""

import pytest

from fxforge import workflow
from fxforge.__main__ import main


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    lines = []
    result = workflow.run(out=tmp_path_factory.mktemp("workflow"), repeats=3, progress=False,
                          log=lines.append)
    return {s.name.split(" ")[0]: s for s in result}, "\n".join(lines)


def test_pruning_costs_accuracy_and_distillation_wins_it_back(steps):
    by_name, _ = steps
    trained, pruned, distilled = by_name["trained"], by_name["pruned"], by_name["distilled"]
    assert trained.accuracy > 0.95
    assert pruned.accuracy < trained.accuracy - 0.05
    assert pruned.params < 0.5 * trained.params  # channels physically removed by compile
    assert distilled.params == pruned.params
    assert distilled.accuracy >= 0.99 * trained.accuracy


def test_int8_keeps_the_accuracy_and_the_archive_reloads_exactly(steps):
    by_name, log = steps
    trained, int8, loaded = by_name["trained"], by_name["int8"], by_name["saved,"]
    assert int8.accuracy >= 0.99 * trained.accuracy
    assert int8.weight_bytes < 0.5 * by_name["distilled"].weight_bytes
    assert loaded.accuracy == int8.accuracy
    assert "bit-identical" in loaded.note and "bit-identical to the compiled model" in log
    assert all(s.speed > 0 for s in by_name.values())
    assert "| int8 (cpu-int8) |" in workflow.table(list(by_name.values()))


def test_cli_flag_is_wired(monkeypatch):
    seen = {}
    monkeypatch.setattr(workflow, "run", lambda **kw: seen.update(kw))
    assert main(["demo", "--workflow", "--prune", "0.25", "--epochs", "2"]) == 0
    assert seen["amount"] == 0.25 and seen["epochs"] == 2
