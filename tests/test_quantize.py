"""End-to-end int8: the quantize pass, calibration through `compile`, accuracy tooling.

Accuracy criteria are the issue's: the digits CNN keeps >= 99% of its float held-out accuracy
under static int8 with every calibration method, on cpu-int8 and reference-int8; BERT-style
encoders under dynamic cpu-int8 keep output cosine similarity >= 0.99 with float.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import fxforge
from fxforge import zoo
from fxforge.errors import CalibrationError
from fxforge.execute import TorchProgram, run_reference
from fxforge.kernels import int8_scheme
from fxforge.verify import verify

METHODS = ("minmax", "percentile", "entropy", "mse")


@pytest.fixture(scope="module")
def digits():
    model, _ = zoo.build("digits")
    data = zoo.digits_data()
    calibration = [data.x_train[i:i + 64] for i in range(0, 512, 64)]  # 8 batches
    return model, calibration, zoo.digits_accuracy(model)


def _ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize("target", ["cpu-int8", "reference-int8"])
@pytest.mark.parametrize("method", METHODS)
def test_digits_static_int8_keeps_99_percent_of_float_accuracy(digits, method, target):
    model, calibration, float_acc = digits
    fast = fxforge.compile(model, target, calibration=calibration, calibration_method=method)
    acc = zoo.digits_accuracy(fast)
    ops = _ops(fast.graph)
    assert ops.count("qconv2d") == 4 and "qlinear" in ops, ops  # stem and depthwise: K=9
    verify(fast.graph)
    assert acc >= 0.99 * float_acc, (method, acc, float_acc)
    analysis = fast.report.latest.quantization
    assert analysis is not None and analysis.method == method
    assert all(layer.sqnr_local_db > 15 for layer in analysis.layers), analysis.layers


def test_digits_reference_int8_agrees_with_cpu_int8(digits):
    model, calibration, float_acc = digits
    x = zoo.digits_data().x_test[:64]
    fast = fxforge.compile(model, "cpu-int8", calibration=calibration, example_inputs=(x,))
    # cpu-int8's weight bits are this CPU's (7 where oneDNN sums pairs in 16 bits)
    bits = int8_scheme.detect().weight_bits
    ref = fxforge.compile(model, "reference-int8", calibration=calibration,
                           example_inputs=(x,), weight_bits=bits)
    assert str(fast.graph) == str(ref.graph)  # the same quantized IR
    a, b = fast(x), ref(x)
    # int8 outputs may differ by 1 LSB between backends; logits agree to a few LSB of the
    # last layer's input scale, far below the margin between classes.
    assert torch.allclose(a, b, atol=0.05, rtol=0), (a - b).abs().max()
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98
    assert zoo.digits_accuracy(ref) >= 0.99 * float_acc


def test_static_int8_flows_between_layers_and_round_trips_are_reported(digits):
    model, calibration, _ = digits
    fast = fxforge.compile(model, "cpu-int8", calibration=calibration,
                            example_inputs=(calibration[0],))
    graph = fast.graph
    int8_links = [n for n in graph.nodes if n.op in ("qconv2d", "qlinear")
                  and n.attrs["out_dtype"] == "i8"]
    assert int8_links, "no layer writes int8 for the next one"
    for node in graph.nodes:
        if node.op == "cat":  # the concat runs in int8 on one shared scale
            assert node.output.type.dtype == "i8"
            assert len({v.type.quant for v in node.inputs}) == 1
    quantize_stats = next(p.stats for p in fast.report.latest.passes if p.name == "quantize")
    assert quantize_stats["round_trips"], "the report lists where float round trips remain"
    assert any("products per output" in k for k in quantize_stats["kept_float"])  # depthwise
    text = str(fast.report)
    assert "int8 accuracy on" in text and "stem" in text


def test_min_sqnr_keeps_worst_layers_float_and_lists_them(digits):
    model, calibration, _ = digits
    base = fxforge.compile(model, "cpu-int8", calibration=calibration,
                            example_inputs=(calibration[0],))
    layers = base.report.latest.quantization.layers
    worst = min(layers, key=lambda lay: lay.sqnr_local_db)
    threshold = worst.sqnr_local_db + 0.01
    kept = fxforge.compile(model, "cpu-int8", calibration=calibration, min_sqnr=threshold,
                            example_inputs=(calibration[0],))
    analysis = kept.report.latest.quantization
    assert any(worst.module in line for line in analysis.kept_by_min_sqnr)
    assert worst.module not in {lay.module for lay in analysis.layers}
    assert len(analysis.layers) == len(layers) - len(analysis.kept_by_min_sqnr)
    assert "kept in float by min_sqnr" in str(kept.report)


def test_keep_float_by_module_path(digits):
    model, calibration, _ = digits
    fast = fxforge.compile(model, "cpu-int8", calibration=calibration, keep_float=["head"],
                            example_inputs=(calibration[0],))
    assert "qlinear" not in _ops(fast.graph)
    assert any(n.op in ("linear", "fused_linear") for n in fast.graph.nodes)


def test_compile_does_not_modify_the_model(digits):
    model, calibration, _ = digits
    before = copy.deepcopy(model.state_dict())
    fxforge.compile(model, "cpu-int8", calibration=calibration, calibration_method="entropy",
                     example_inputs=(calibration[0],))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- dynamic quantization of transformer encoders --------------------------------------------


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _first_tensor(out):
    """The main output: BertModel's last_hidden_state, the first entry of a dict or tuple."""
    out = getattr(out, "last_hidden_state", out)
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("name", ["bert", "transformer"])  # transformers BertModel; our own
def test_dynamic_int8_encoder_cosine(name):
    model, args = zoo.build(name, batch=2)
    with torch.no_grad():
        want = model(*args)
    fast = fxforge.compile(model, "cpu-int8")
    got = fast(*args)
    want, got = _first_tensor(want), _first_tensor(got)
    assert "qlinear" in _ops(fast.graph)
    assert all(n.attrs["dynamic"] for n in fast.graph.nodes if n.op == "qlinear")
    assert _cosine(want, got) >= 0.99


# --- bad calibration input ----------------------------------------------------------------------


def _small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1)).eval()


def test_empty_calibration_is_a_clear_error():
    with pytest.raises(CalibrationError, match="empty"):
        fxforge.compile(_small_cnn(), "cpu-int8", calibration=[],
                         example_inputs=(torch.randn(2, 3, 8, 8),))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_calibration_is_a_clear_error(bad):
    data = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    data[1][0, 1, 2, 3] = bad
    with pytest.raises(CalibrationError, match="sample 1"):
        fxforge.compile(_small_cnn(), "cpu-int8", calibration=data,
                         example_inputs=(torch.randn(2, 3, 8, 8),))


def test_wrong_shape_calibration_is_a_clear_error():
    data = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8)]
    with pytest.raises(CalibrationError, match="sample 1"):
        fxforge.compile(_small_cnn(), "cpu-int8", calibration=data,
                         example_inputs=(torch.randn(2, 3, 8, 8),))


def test_wrong_arity_calibration_is_a_clear_error():
    data = [(torch.randn(2, 3, 8, 8), torch.zeros(2))]  # (inputs, labels) from a loader
    with pytest.raises(CalibrationError, match="sample 0"):
        fxforge.compile(_small_cnn(), "cpu-int8", calibration=data,
                         example_inputs=(torch.randn(2, 3, 8, 8),))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="calibration_method"):
        fxforge.compile(_small_cnn(), "cpu-int8", calibration=[torch.randn(1, 3, 8, 8)],
                         calibration_method="kl")


def test_all_zero_activation_and_single_sample_are_safe():
    """A layer whose input is always zero (scale 0 by minmax) and one calibration sample:
    finite scales, outputs equal to float where float is exactly representable."""

    class Dead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return self.b(torch.relu(-torch.relu(self.a(x))))  # always zero

    torch.manual_seed(0)
    model = Dead().eval()
    x = torch.randn(2, 3, 8, 8)
    for method in METHODS:
        fast = fxforge.compile(model, "cpu-int8", calibration=[x], calibration_method=method,
                                example_inputs=(x,))
        assert _ops(fast.graph).count("qconv2d") == 2
        for node in fast.graph.nodes:
            for key in ("x_scale", "out_scale", "scale"):
                value = node.attrs.get(key)
                assert value is None or (math.isfinite(value) and value > 0), node
        with torch.no_grad():
            want = model(x)
        assert torch.allclose(fast(x), want, atol=1e-6), method


def test_a_dataloader_works_as_calibration():
    data = torch.utils.data.TensorDataset(torch.randn(20, 3, 8, 8))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # last batch is smaller
    fast = fxforge.compile(_small_cnn(), "cpu-int8", calibration=loader,
                            example_inputs=(torch.randn(8, 3, 8, 8),))
    assert fast.report.latest.quantization.samples >= 1
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        want = _small_cnn()(x)
    assert _cosine(fast(x), want) > 0.999


# --- the pass on its own -------------------------------------------------------------------------


def test_quantized_graph_runs_the_same_on_reference_and_torch(digits):
    model, calibration, _ = digits
    fast = fxforge.compile(model, "cpu-int8", calibration=calibration,
                            example_inputs=(calibration[0],))
    x = calibration[1]
    (a,) = TorchProgram(fast.graph, torch.device("cpu"))([x])
    (b,) = run_reference(fast.graph, [x.numpy()])
    np.testing.assert_allclose(a.numpy(), b, atol=0.05, rtol=0)


def test_compile_reuses_the_calibration_capture_of_the_same_signature(digits, monkeypatch):
    """Exporting is the slow part of capture: a compile whose inputs look like a calibration
    sample (shape, dtype, device) exports the model once, not twice; a new signature exports."""
    import fxforge.api

    model, calibration, float_acc = digits
    calls = []
    real = fxforge.api.capture  # calibration captures through the compiled model's _capture

    def counting(*args, **kwargs):
        calls.append(args[1][0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(fxforge.api, "capture", counting)
    fast = fxforge.compile(model, "cpu-int8", calibration=calibration)
    fast(calibration[0])
    assert len(calls) == 1, calls
    assert zoo.digits_accuracy(fast) >= 0.99 * float_acc  # the reused capture is the model
    x = calibration[0][:5]
    fast(x)  # a new batch size: captured for itself
    assert len(calls) == 2 and tuple(calls[-1]) == tuple(x.shape), calls
