"""SmoothQuant smoothing: the `smooth` pass keeps the function (numpy reference, fp32 rtol 1e-4),
its scales follow the formula, calibration measures what it needs, and compile(..., smooth=)
gains accuracy on a transformer with outlier channels, refuses bad options, and never touches
the user's model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from graph_builder import GraphBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import random_graphs
from random_graphs import random_inputs as graph_random_inputs
from untouched import assert_untouched, snapshot

import fxforge
from fxforge import zoo_hf
from fxforge.calibration import ChannelStats
from fxforge.errors import OptionError
from fxforge.execute import run_reference
from fxforge.ir import Graph, Value
from fxforge.passes.smooth import candidates, check_alpha, smooth, smoothing_scales
from fxforge.verify import verify

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _block(residual: bool) -> tuple[Graph, Value]:
    """x -> layer_norm -> two linears (q, k style); with `residual` the norm's output is also
    added to the first linear's result, so it cannot absorb the scaling."""
    b = GraphBuilder()
    x = Value("x", fxforge.ir.TensorType((3, 5, 16), "f32"))
    ln = b("layer_norm", [x, b.const(_w(16) * 4), b.const(_w(16))], eps=1e-5)
    y1 = b("linear", [ln, b.const(_w(24, 16)), b.const(_w(24))])
    y2 = b("linear", [ln, b.const(_w(24, 16))])
    outs = [y1, y2]
    if residual:
        w3 = b.const(_w(16, 16))
        outs = [b("add", [b("linear", [ln, w3]), ln]), y2]
    graph = Graph((x,), tuple(b.nodes), tuple(outs))
    verify(graph)
    return graph, ln


def _same_function(before: Graph, after: Graph, seeds: int = 3) -> None:
    verify(after)
    for seed in range(seeds):
        inputs = [np.random.default_rng(seed).standard_normal(v.type.shape).astype(np.float32)
                  for v in before.inputs]
        for want, got in zip(run_reference(before, inputs), run_reference(after, inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _scales_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random positive scales, log-uniform over 1/30..30, for every smoothable value."""
    rng = np.random.default_rng(seed)
    found = candidates(graph)
    return {name: np.exp(rng.uniform(-3.4, 3.4, layers[0].inputs[1].type.shape[1])
                         ).astype(np.float32) for name, layers in found.items()}


# --- the pass ---


def test_no_scales_is_the_identity():
    graph, _ = _block(residual=False)
    assert smooth(graph)[0] is graph
    assert smooth(graph, {})[0] is graph


def test_folds_into_the_layer_norm_when_only_the_linears_read_it():
    graph, ln = _block(residual=False)
    scales = _scales_for(graph)
    assert list(scales) == [ln.name]
    after, stats = smooth(graph, scales)
    _same_function(graph, after)
    assert stats["smoothed"] == 1 and stats["folded_into_norm"] == 1
    assert [n.op for n in after.nodes if n.op != "const"] == ["layer_norm", "linear", "linear"]
    norm = next(n for n in after.nodes if n.op == "layer_norm")
    np.testing.assert_allclose(after.constant(norm.inputs[1]),
                               graph.constant(graph.producers[ln.name].inputs[1]) / scales[ln.name],
                               rtol=1e-6)
    linear = next(n for n in after.nodes if n.op == "linear")
    original = next(n for n in graph.nodes if n.op == "linear")
    np.testing.assert_allclose(after.constant(linear.inputs[1]),
                               graph.constant(original.inputs[1]) * scales[ln.name][None, :],
                               rtol=1e-6)


def test_inserts_a_mul_when_another_node_reads_the_value():
    graph, ln = _block(residual=True)
    scales = _scales_for(graph)
    after, stats = smooth(graph, scales)
    _same_function(graph, after)
    assert stats["folded_into_norm"] == 0
    muls = [n for n in after.nodes if n.op == "mul"]
    assert len(muls) == 1 and muls[0].inputs[0].name == ln.name
    np.testing.assert_allclose(after.constant(muls[0].inputs[1]), 1 / scales[ln.name], rtol=1e-6)
    add = next(n for n in after.nodes if n.op == "add")
    assert ln.name in [v.name for v in add.inputs]  # the residual still reads the norm itself
    assert all(n.inputs[0].name == muls[0].output.name for n in after.nodes if n.op == "linear")


def test_unknown_names_and_wrong_shapes_are_ignored():
    graph, ln = _block(residual=False)
    after, stats = smooth(graph, {"nope": np.ones(16, np.float32),
                                  ln.name: np.ones(7, np.float32)})
    assert stats["smoothed"] == 0
    _same_function(graph, after, seeds=1)


def test_fused_linear_readers_and_graph_inputs():
    b = GraphBuilder()
    x = Value("x", fxforge.ir.TensorType((4, 32), "f32"))
    y = b("fused_linear", [x, b.const(_w(8, 32)), b.const(_w(8))], has_bias=True,
          epilogue=({"op": "relu"},))
    graph = Graph((x,), tuple(b.nodes), (y,))
    verify(graph)
    scales = _scales_for(graph)
    assert list(scales) == ["x"]
    after, _ = smooth(graph, scales)
    _same_function(graph, after)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), seed=st.integers(0, 2**16))
def test_random_graphs_keep_their_function(graph, seed):
    scales = _scales_for(graph, seed)
    after, stats = smooth(graph, scales)
    assert stats["smoothed"] == len(scales)
    verify(after)
    inputs = graph_random_inputs(graph, seed)
    for want, got in zip(run_reference(graph, inputs), run_reference(after, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- scales ---


class _Stats:
    """ChannelStats' interface with given extremes and rows."""

    def __init__(self, lo, hi, rows=None):
        self.lo, self.hi, self.rows = np.asarray(lo, float), np.asarray(hi, float), rows

    def range(self, name):
        return self.lo, self.hi

    def folds(self, name):
        return [(self.lo, self.hi, self.rows)]


def _linear_of_16(first_columns: list[float]) -> Graph:
    """x [2, 16] -> linear with a [4, 16] weight: row 0 starts with `first_columns`, the rest is
    zero (16 inputs: quantize leaves layers with fewer products per output in float)."""
    weight = np.zeros((4, 16), np.float32)
    weight[0, :len(first_columns)] = first_columns
    b = GraphBuilder()
    x = Value("x", fxforge.ir.TensorType((2, 16), "f32"))
    y = b("linear", [x, b.const(weight)])
    return Graph((x,), tuple(b.nodes), (y,))


def _pad16(values: list[float]) -> list[float]:
    return values + [0.0] * (16 - len(values))


def test_scales_follow_the_formula():
    # max|x| = [4, 1], max|W[:, j]| = [1, 4]: s = sqrt(4 / 1), sqrt(1 / 4) = [2, 0.5] at 0.5;
    # the other channels are all zero, so they keep 1
    graph = _linear_of_16([1, -4])
    stats = _Stats(_pad16([-4, 0]), _pad16([3, 1]))
    scales, chosen = smoothing_scales(graph, stats, 0.5)
    np.testing.assert_allclose(scales["x"], _pad16([2.0, 0.5])[:2] + [1.0] * 14, rtol=1e-6)
    assert chosen == {"x": 0.5}
    # alpha 1: s = max|x| (all range to the weights)
    scales, _ = smoothing_scales(graph, stats, 1.0)
    np.testing.assert_allclose(scales["x"], [4.0, 1.0] + [1.0] * 14, rtol=1e-6)


def test_degenerate_channels_keep_scale_one():
    graph = _linear_of_16([1, 0])  # channel 1's weight column is all zero
    scales, _ = smoothing_scales(graph, _Stats(_pad16([0, -9]), _pad16([0, 9])), 0.5)
    assert "x" not in scales  # channel 0 was never nonzero: every s is 1, nothing to do


def test_auto_leaves_outlier_free_values_alone_and_smooths_outliers():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    b = GraphBuilder()
    x = Value("x", fxforge.ir.TensorType((8, 32), "f32"))
    b("linear", [x, b.const(weight)])
    graph = Graph((x,), tuple(b.nodes), (b.nodes[-1].output,))

    def stats_for(data: np.ndarray) -> ChannelStats:
        stats = ChannelStats(["x"])
        for part in np.split(data, 8):
            stats("x", torch.from_numpy(part))
        return stats

    plain = rng.standard_normal((512, 32)).astype(np.float32)
    _, chosen = smoothing_scales(graph, stats_for(plain), "auto")
    assert chosen == {"x": None}
    outliers = plain.copy()
    outliers[:, [3, 17]] *= 60
    scales, chosen = smoothing_scales(graph, stats_for(outliers), "auto")
    assert chosen["x"] is not None and scales["x"][3] > 5 * np.median(scales["x"])


def test_channel_stats_extremes_folds_and_row_budget():
    stats = ChannelStats(["a"], rows=64)
    data = [torch.randn(3, 10, 6) for _ in range(5)]
    for t in data:
        stats("a", t)
        stats("b", t)  # not watched
    lo, hi = stats.range("a")
    everything = torch.cat([t.reshape(-1, 6) for t in data])
    np.testing.assert_array_equal(lo, everything.amin(0).double().numpy())
    np.testing.assert_array_equal(hi, everything.amax(0).double().numpy())
    folds = stats.folds("a")
    assert len(folds) == 2 and stats.range("b") is None
    assert all(len(rows) <= 32 for _, _, rows in folds)
    even = torch.cat([t.reshape(-1, 6) for t in data[0::2]])
    np.testing.assert_array_equal(folds[0][1], even.amax(0).double().numpy())


@pytest.mark.parametrize("value, expected", [(None, None), (False, None), (True, 0.5),
                                             (0.75, 0.75), (1, 1.0), ("auto", "auto")])
def test_alpha_values(value, expected):
    assert check_alpha(value) == expected


@pytest.mark.parametrize("value", [0, -0.5, 1.5, math.nan, "0.5", "AUTO", [0.5]])
def test_bad_alpha_is_an_option_error(value):
    with pytest.raises(OptionError, match="smooth="):
        check_alpha(value)


# --- compile ---


def _outlier_llama():
    model, inputs = zoo_hf.build("llama", 2)
    zoo_hf.with_outliers(model)
    calibration = [tuple(zoo_hf.sample_inputs("llama", 2, seed=100 + i).values())
                   for i in range(8)]
    held_out = [zoo_hf.sample_inputs("llama", 2, seed=200 + i) for i in range(4)]
    return model, calibration, held_out


def _sqnr_db(compiled, model, held_out) -> float:
    signal = noise = 0.0
    for x in held_out:
        with torch.no_grad():
            want = model(**x).last_hidden_state.double()
        got = compiled(**x).last_hidden_state.double()
        signal += float((want * want).sum())
        noise += float(((got - want) ** 2).sum())
    return 10 * math.log10(signal / noise)


@pytest.mark.slow
def test_smoothing_gains_on_a_transformer_with_outlier_channels():
    """Measured 2026-12-07 (AMD EPYC Zen 4): no smoothing 18.3 dB, alpha 0.5 24.4 dB, auto
    21.9 dB output SQNR on held-out batches. The bars leave room for other CPUs' schemes."""
    pytest.importorskip("transformers")
    model, calibration, held_out = _outlier_llama()
    before = snapshot(model)
    results = {}
    for alpha in (None, 0.5, "auto"):
        compiled = fxforge.compile(model, "cpu-int8", calibration=calibration, smooth=alpha)
        results[alpha] = _sqnr_db(compiled, model, held_out)
        if alpha is not None:
            passes = {r.name: r for r in compiled.report.latest.passes}
            assert passes["smooth"].stats["smoothed"] >= 4
            notes = compiled.report.latest.quantization.notes
            assert any(n.startswith("smoothing %") for n in notes)
            assert "smooth" in str(compiled.report)
    assert_untouched(model, before)
    assert results[0.5] >= results[None] + 4.0, results
    assert results["auto"] >= results[None] + 2.0, results


@pytest.mark.slow
def test_smoothed_int8_graph_runs_the_same_on_the_reference():
    """The smoothed, quantized IR is ordinary int8 IR: reference-int8 and cpu-int8 agree (int8
    accumulators are exact on both; float epilogues to fp32 rounding)."""
    pytest.importorskip("transformers")
    model, calibration, held_out = _outlier_llama()
    ref = fxforge.compile(model, "reference-int8", calibration=calibration, smooth=0.5,
                          weight_bits=7)
    cpu = fxforge.compile(model, "cpu-int8", calibration=calibration, smooth=0.5, weight_bits=7)
    x = held_out[0]
    got, want = cpu(**x).last_hidden_state, ref(**x).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_smooth_needs_calibration_data():
    with pytest.raises(OptionError, match="needs calibration"):
        fxforge.compile(torch.nn.Linear(32, 8), "cpu-int8", smooth=0.5)


def test_smooth_refuses_one_shot_calibration_data():
    model = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
    data = (torch.randn(4, 32) for _ in range(3))
    compiled = fxforge.compile(model, "cpu-int8", calibration=data, smooth=0.5)
    with pytest.raises(OptionError, match="read only once: pass a list"):
        compiled(torch.randn(4, 32))


def test_smooth_needs_its_pass_in_the_pipeline():
    with pytest.raises(OptionError, match="'smooth' pass before 'quantize'"):
        fxforge.compile(torch.nn.Linear(32, 8), "cpu-int8", calibration=[torch.randn(2, 32)],
                        smooth=0.5, passes="canonicalize,quantize,dce")


def test_float_targets_warn_that_they_ignore_smooth():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fxforge.compile(torch.nn.Linear(4, 4), "cpu", smooth=0.5)
    assert any("smooth" in str(w.message) for w in caught)


def test_small_model_smoothed_matches_eager_and_is_untouched():
    """A norm + MLP with outlier gains, on data it was calibrated on: int8 within 3% of the
    output range with smoothing (the float graph it quantizes computes the same function)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 128),
                                torch.nn.GELU(), torch.nn.Linear(128, 64)).eval()
    with torch.no_grad():
        model[0].weight[:3] *= 40
    data = [torch.randn(8, 64) for _ in range(6)]
    before = snapshot(model)
    compiled = fxforge.compile(model, "cpu-int8", calibration=data, smooth=0.5)
    plain = fxforge.compile(model, "cpu-int8", calibration=data)
    x = data[0]
    with torch.no_grad():
        want = model(x)
    err = float((compiled(x) - want).abs().max() / want.abs().max())
    err_plain = float((plain(x) - want).abs().max() / want.abs().max())
    assert err < 0.03 and err < err_plain, (err, err_plain)
    assert_untouched(model, before)
    stats = {r.name: r.stats for r in compiled.report.latest.passes}["smooth"]
    assert stats["folded_into_norm"] == 1  # the norm's gain took 1/s; no mul was added
