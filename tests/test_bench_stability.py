"""bench.stability: replaying a record as pretend runs shows what the timing layout buys, and a
short real record of a small model can be taken and replayed."""

import math

import pytest

from fxforge.bench import stability
from fxforge.bench.systems import BASELINE


def _record(ratio_at, seconds=200.0, per_second=20):
    """Rounds where eager takes 1 ms and `other` takes 1 ms / ratio_at(t)."""
    rounds = []
    for i in range(int(seconds * per_second)):
        t = i / per_second
        rounds.append({"t": t, BASELINE: 1e-3, "other": 1e-3 / ratio_at(t)})
    return {"model": "m", "batch": 1, "systems": [BASELINE, "other"], "rounds": rounds}


def _by(rows, slices, statistic):
    (row,) = [r for r in rows if r["slices"] == slices and r["statistic"] == statistic
              and r["seconds"] == 8.0]
    return row


def test_a_constant_ratio_never_differs():
    rows = stability.simulate(_record(lambda t: 2.0), trials=20)
    assert all(r["p_over_10pct"] == 0 and r["p95"] == pytest.approx(0, abs=1e-12) for r in rows)


def test_slices_spread_over_the_record_average_out_a_drifting_ratio():
    # the ratio swings between 1.7x and 2.3x with a 40 s period, as host load would
    rows = stability.simulate(_record(lambda t: 2.0 + 0.3 * math.sin(2 * math.pi * t / 40)),
                              trials=100)
    one = _by(rows, 1, "median of paired ratios")
    spread = _by(rows, 8, "median of paired ratios")
    # same 8 s of rounds: in 8 slices spread over the record, not in one stretch
    assert one["p_over_10pct"] > 0.3
    assert spread["p_over_10pct"] < 0.7 * one["p_over_10pct"]
    assert spread["p95"] < 0.7 * one["p95"]


def test_a_record_too_short_for_the_slices_is_refused():
    with pytest.raises(ValueError, match="too short"):
        stability.simulate(_record(lambda t: 2.0, seconds=4.0), trials=1)


def test_record_and_simulate_a_small_model(tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert stability.main(["record", "mlp", "--batch", "1", "--systems",
                           f"{BASELINE},fxforge-cpu", "--seconds", "0.5", "--out",
                           str(out)]) == 0
    assert "fxforge-cpu" in capsys.readouterr().out
    import json

    data = json.loads(out.read_text())
    assert data["systems"] == [BASELINE, "fxforge-cpu"] and len(data["rounds"]) >= 4
    assert all(r[BASELINE] > 0 and r["fxforge-cpu"] > 0 for r in data["rounds"])
