"""int8_layers="measured": each layer quantize would make int8 is timed alone, float against
int8, and kept float where int8 is slower. The decision logic is tested with a fake timer (speed
is for benchmarks, not unit tests); a real run checks that every layer gets a timed choice and
that the compiled model follows it."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import int8_choice, zoo
from fxforge.errors import OptionError


def _is_int8(program) -> bool:
    return any(n.op in ("qlinear", "qconv2d") for n in program.graph.nodes)


def _fake(int8_faster: set[str]):
    """A timer under which int8 wins exactly for the layers of the named modules."""

    def timer(program, inputs) -> float:
        node = next(n for n in program.graph.nodes if n.op != "const" and n.op != "quantize"
                    and n.op != "dynamic_quantize")
        wins = node.provenance.module in int8_faster
        return (1e-6 if wins else 3e-6) if _is_int8(program) else 2e-6

    return timer


def _layer_ops(compiled) -> dict[str, str]:
    return {n.provenance.module: n.op for n in compiled.graph.nodes
            if n.op in ("linear", "fused_linear", "qlinear")}


def test_layers_where_int8_loses_stay_float(monkeypatch):
    monkeypatch.setattr(int8_choice, "seconds_per_call", _fake({"fc2"}))
    model, (x,) = zoo.build("mlp", 4)
    compiled = fxforge.compile(model, "cpu-int8", int8_layers="measured")
    y = compiled(x)
    assert _layer_ops(compiled) == {"fc1": "fused_linear", "fc2": "qlinear",
                                    "head": "linear"}
    choices = compiled.report.int8_choices
    assert choices == ["fc1: float (int8 3.0 us, float 2.0 us)",
                       "fc2: int8 (int8 1.0 us, float 2.0 us)",
                       "head: float (int8 3.0 us, float 2.0 us)"]
    assert "int8 only where it pays" in str(compiled.report)
    with torch.no_grad():
        want = model(x)
    assert float((y - want).abs().max() / want.abs().max()) < 0.05


def test_with_calibration_the_accuracy_table_follows_the_choice(monkeypatch):
    monkeypatch.setattr(int8_choice, "seconds_per_call", _fake({"fc1", "head"}))
    model, (x,) = zoo.build("mlp", 4)
    compiled = fxforge.compile(model, "cpu-int8", calibration=[x], int8_layers="measured")
    compiled(x)
    analysis = compiled.report.latest.quantization
    assert sorted(layer.module for layer in analysis.layers) == ["fc1", "head"]
    assert _layer_ops(compiled)["fc2"] in ("linear", "fused_linear")


def test_every_layer_is_timed_and_the_graph_follows_the_times():
    model, (x,) = zoo.build("digits", 2)
    compiled = fxforge.compile(model, "cpu-int8", int8_layers="measured")
    compiled(x)
    everything = fxforge.compile(model, "cpu-int8")
    everything(x)
    quantized = {n.provenance.module for n in everything.graph.nodes
                 if n.op in ("qlinear", "qconv2d")}
    choices = compiled.report.int8_choices
    assert len(choices) == len(quantized) and choices
    kept_int8 = {n.provenance.module for n in compiled.graph.nodes
                 if n.op in ("qlinear", "qconv2d")}
    for line in choices:
        module, verdict = line.split(": ")[0], line.split(": ")[1].split(" ")[0]
        assert (module in kept_int8) == (verdict == "int8"), line
        int8_us, float_us = (float(part.split()[1]) for part in line.split("(")[1].split(", "))
        assert (verdict == "int8") == (int8_us < float_us)


def test_options():
    with pytest.raises(OptionError, match="int8_layers='fast'"):
        fxforge.compile(torch.nn.Linear(32, 8), "cpu-int8", int8_layers="fast")
    with pytest.raises(OptionError, match="torch backend"):
        fxforge.compile(torch.nn.Linear(32, 8), "reference-int8", int8_layers="measured")
