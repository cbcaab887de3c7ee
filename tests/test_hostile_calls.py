"""Threads, failures half-way, bad options and odd inputs: typed errors, nothing lost.

Each test here stands for a class of failure the attack campaign of issue #14 found: a compiled
model called from many threads at once, a calibration that fails, an exception inside a pass or
inside torch.export, options of the wrong type, inputs eager refuses, weights int8 cannot hold,
and IR text that names something other than an operator. Every failure path asserts that the
user's model (its tensors, their identity, its flags) and the results computed before are
untouched.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor
from untouched import assert_untouched, snapshot

import fxforge
from fxforge import CalibrationError, CaptureError, OptionError, PipelineError, compile
from fxforge.execute import run_reference
from fxforge.kernels import opaque
from fxforge.passes import registry as passes

RTOL, ATOL = 1e-4, 1e-5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 8)).eval()


def _in_threads(fn, n: int) -> tuple[list, list]:
    """Run `fn(i)` in n threads released together; (results, exceptions)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "reference", "cpu-int8"])
def test_many_threads_making_the_first_call_capture_once(target):
    model = _model()
    before = snapshot(model)
    x = torch.randn(4, 16)
    fast = compile(model, target, calibration=[x] if target == "cpu-int8" else None)
    results, errors = _in_threads(lambda i: fast(x), 6)
    assert errors == []
    assert fast.report.captures == 1
    assert all(torch.equal(r, results[0]) for r in results)
    assert_untouched(model, before)
    assert not any(isinstance(t, FakeTensor) for t in model.state_dict().values())
    if target != "cpu-int8":
        torch.testing.assert_close(results[0], model(x), rtol=RTOL, atol=ATOL)


def test_threads_with_different_signatures_each_get_their_own_capture():
    model = _model()
    fast = compile(model, "cpu")
    inputs = [torch.randn(b, 16) for b in (1, 2, 3, 5)]
    results, errors = _in_threads(lambda i: fast(inputs[i]), len(inputs))
    assert errors == []
    assert fast.report.captures == len(inputs)
    for x, r in zip(inputs, results):
        torch.testing.assert_close(r, model(x), rtol=RTOL, atol=ATOL)


def test_two_compiled_models_of_one_module_capture_side_by_side():
    model = _model()
    before = snapshot(model)
    x = torch.randn(4, 16)
    compiled = [compile(model, "cpu") for _ in range(4)]
    results, errors = _in_threads(lambda i: compiled[i](x), 4)
    assert errors == []
    assert_untouched(model, before)
    for r in results:
        torch.testing.assert_close(r, model(x), rtol=RTOL, atol=ATOL)


def test_a_forward_calling_another_compiled_model_cannot_deadlock():
    # thread A captures `outer`, whose forward calls `inner`; thread B makes inner's first call
    inner = nn.Sequential(nn.Linear(3, 3)).eval()
    fast_inner = compile(inner, "cpu")
    started = threading.Event()

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            started.set()
            time.sleep(0.5)  # B starts while A is inside the export
            return fast_inner(self.lin(x))

    fast_outer = compile(Outer().eval(), "cpu")
    errors = []

    def call_outer():
        try:
            fast_outer(torch.randn(2, 3))
        except fxforge.FxforgeError as e:  # a nested export may be refused; it must not hang
            errors.append(e)

    a = threading.Thread(target=call_outer, daemon=True)
    b = threading.Thread(target=lambda: fast_inner(torch.randn(5, 3)), daemon=True)
    a.start()
    started.wait(10)
    b.start()
    a.join(60)
    b.join(60)
    assert not a.is_alive() and not b.is_alive(), "deadlocked"


# --- failures half-way -----------------------------------------------------------------------


def _nan_sample() -> torch.Tensor:
    return torch.full((4, 16), float("nan"))


def test_a_failed_calibration_stays_failed():
    model = _model()
    x = torch.randn(4, 16)
    fast = compile(model, "cpu-int8", calibration=[x, _nan_sample()])
    with pytest.raises(CalibrationError, match="sample 1"):
        fast(x)
    with pytest.raises(CalibrationError, match="failed earlier.*sample 1"):
        fast(x)  # used to succeed, silently quantized dynamically
    assert fast.report.captures == 0


def test_a_loader_that_raises_half_way_is_a_calibration_error_every_time():
    model = _model()
    before = snapshot(model)
    x = torch.randn(4, 16)

    def loader():
        yield x
        raise OSError("the disk went away")

    fast = compile(model, "cpu-int8", calibration=loader())
    for _ in range(2):
        with pytest.raises(CalibrationError, match="OSError.*sample 1.*disk went away"):
            fast(x)
    assert_untouched(model, before)


def test_a_failed_calibration_at_compile_time_raises_there():
    with pytest.raises(CalibrationError, match="NaN"):
        compile(_model(), "cpu-int8", calibration=[_nan_sample()],
                example_inputs=torch.randn(4, 16))


def test_an_exception_inside_a_pass_leaves_the_model_and_earlier_results(monkeypatch):
    model = _model()
    before = snapshot(model)
    fast = compile(model, "cpu")
    x = torch.randn(4, 16)
    first = fast(x)

    def broken(graph, **options):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(passes.PASSES, "dce", broken)
    with pytest.raises(PipelineError, match="pass 'dce' failed: RuntimeError: injected"):
        fast(torch.randn(7, 16))  # a new signature runs the pipeline again
    monkeypatch.undo()
    assert torch.equal(fast(x), first)  # the earlier signature still works
    assert fast.report.captures == 1
    assert_untouched(model, before)


def test_a_failed_export_leaves_the_model_and_its_training_flags():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.bn(self.fc(x))
            return y if y.sum() > 0 else -y  # data-dependent: export refuses

    model = Branchy().train()
    before = snapshot(model)
    with pytest.raises(CaptureError, match="in module"):
        compile(model, "cpu", example_inputs=torch.randn(3, 4))
    assert_untouched(model, before)
    assert model.training and model.bn.training
    assert int(model.bn.num_batches_tracked) == 0  # eval during capture: no statistics update


def test_a_data_dependent_size_is_a_capture_error_with_a_hint():
    class Masked(nn.Module):
        def forward(self, x):
            return x[x > 0]

    with pytest.raises(CaptureError, match="(?s)depends on the data.*torch.where"):
        compile(Masked(), "cpu", example_inputs=torch.randn(5))


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["30", [30], float("nan"), float("inf"), True, {"a": 1}])
def test_min_sqnr_of_the_wrong_kind_is_refused_before_calibration(value):
    calls = []

    def loader():
        calls.append(1)
        yield torch.randn(4, 16)

    with pytest.raises(OptionError, match="min_sqnr"):
        compile(_model(), "cpu-int8", calibration=loader(), min_sqnr=value)
    assert calls == []


def test_keep_float_none_means_none():
    x = torch.randn(4, 16)
    fast = compile(_model(), "cpu-int8", calibration=[x], keep_float=None, example_inputs=x)
    assert len(fast.report.latest.quantization.layers) == 2


@pytest.mark.parametrize("value", [[3], 3, [None]])
def test_keep_float_of_the_wrong_kind_is_refused(value):
    with pytest.raises(OptionError, match="keep_float"):
        compile(_model(), "cpu-int8", keep_float=value)


def test_a_keep_float_typo_lists_the_closest_layers():
    x = torch.randn(4, 16)
    with pytest.raises(OptionError) as info:
        compile(_model(), "cpu-int8", calibration=[x], keep_float=["30"], example_inputs=x)
    message = str(info.value)
    assert "'30': closest: 3, 0" in message or "'30': closest: 0, 3" in message
    assert "its quantizable layers: 0, 3\n" in message + "\n"


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 32)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_keep_float_finds_a_layer_run_inside_its_parents_forward():
    # nn.MultiheadAttention calls out_proj's weight from its own forward: only the weight's
    # path says `attn.out_proj`, which used to match nothing and keep nothing
    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(2, 5, 32)
    fast = compile(model, "cpu-int8", calibration=[x], example_inputs=x,
                   keep_float=["attn.out_proj"])
    kept = fast.report.latest.quantization.notes
    assert any("kept float" in n and "keep_float" in n for n in kept), kept
    plain = compile(model, "cpu-int8", calibration=[x], example_inputs=x)
    assert len(fast.report.latest.quantization.layers) == \
        len(plain.report.latest.quantization.layers) - 1


def test_keep_float_takes_a_parent_module():
    x = torch.randn(2, 5, 32)
    fast = compile(_Attention().eval(), "cpu-int8", calibration=[x], example_inputs=x,
                   keep_float=["attn"])
    assert [layer.module for layer in fast.report.latest.quantization.layers] == ["head"]


@pytest.mark.parametrize("bits", [8.0, "8", True, 6])
def test_weight_bits_must_be_7_or_8(bits):
    with pytest.raises(OptionError, match="weight_bits"):
        compile(_model(), "cpu-int8", weight_bits=bits)


# --- inputs eager refuses --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "reference", "cpu-int8", "reference-int8"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_every_target_refuses_what_eager_refuses(target, dtype):
    model = nn.Linear(3, 3)
    x = torch.ones(2, 3, dtype=dtype)
    with pytest.raises(RuntimeError) as eager:
        model(x)
    with pytest.raises(fxforge.ExecutionError, match="same dtype") as ours:
        compile(model, target)(x)
    assert "dtype" in str(eager.value)
    assert isinstance(ours.value, RuntimeError)  # the same family as eager's error


# --- weights int8 cannot hold ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "cpu-int8", "reference-int8"])
def test_batch_norm_with_eps_zero_over_zero_variance_matches_eager(target):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=0.0), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_var[:3] = 0.0
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy warning escapes the passes
        fast = compile(model, target, example_inputs=x,
                       calibration=[x] if "int8" in target else None)
    with torch.no_grad():
        want, got = model(x), fast(x)
    if target == "cpu":  # the batch norm runs as in eager: the same inf / NaN pattern
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
    else:  # (y - mean) / 0 is +-inf or NaN by the sign of y - mean, which int8 may flip
        healthy = want[:, 3:]
        assert torch.isfinite(healthy).all()
        assert float((got[:, 3:] - healthy).abs().max()) <= 0.05 * float(healthy.abs().max())


def test_a_weight_with_inf_stays_float_and_says_why():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    x = torch.randn(2, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast = compile(model, "cpu-int8", calibration=[x], example_inputs=x)
    notes = fast.report.latest.quantization.notes
    assert any("inf/NaN" in n and n.startswith("kept float: 0") for n in notes), notes
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL, equal_nan=True)


# --- IR that names something other than an operator ------------------------------------------


_HOSTILE_TARGETS = ["aten.__dict__.__setitem__", "aten.mm.__call__", "aten.mm.overloads",
                    "aten.mm.__class__", "aten.__getattr__.default", "aten.no_such_op.default",
                    "aten.add.no_such_overload", "builtins.open.default", "aten.mm", "aten..x",
                    "aten.mm.default.extra", "aten.mm.default\n", "aten.from_file.default",
                    "aten.save.default", "aten.fill_.Scalar", "aten.add.out", "aten.copy_.default",
                    "aten.index_put_.default"]


@pytest.mark.parametrize("target", ["aten.__and__.Tensor", "aten.__or__.Tensor", "aten.mm.default",
                                    "aten._native_batch_norm_legit_no_training.default",
                                    "aten.add.Tensor", "aten.sub.Scalar",
                                    "prims.convert_element_type.default"])
def test_every_real_operator_still_resolves(target):
    assert str(opaque.resolve(target)) == target


@pytest.mark.parametrize("target", _HOSTILE_TARGETS)
def test_a_torch_op_target_resolves_to_a_real_overload_or_nothing(target):
    with pytest.raises(opaque.OpaqueOpError):
        opaque.resolve(target)


def test_the_reported_torch_op_dump_cannot_reach_into_torch():
    mm = torch.ops.aten.mm
    text = ('graph(%x: f32[2]) {\n'
            '  %y = torch_op[target="aten.__dict__.__setitem__", args=["mm", "pwned"], '
            'kwargs={}] %x : f32[2]\n'
            '  return %y\n}')
    graph = fxforge.parse_ir(text)
    with pytest.raises(fxforge.IRVerificationError, match="not an operator"):
        fxforge.verify(graph)
    with pytest.raises(fxforge.ExecutionError, match="not an operator"):
        run_reference(graph, [np.ones(2, np.float32)])  # unverified: refused at run time too
    assert torch.ops.aten.mm is mm


@pytest.mark.parametrize("encoded", [{"$input": 5}, {"$input": -1}, {"$input": "0"},
                                     {"$dtype": "bf99"}, {"$memory_format": "x"},
                                     {"$layout": "sparse"}, {"$input": 0, "$dtype": "f32"},
                                     {"$eval": "1"}])
def test_malformed_torch_op_arguments_are_typed_errors(encoded):
    with pytest.raises(opaque.OpaqueOpError):
        opaque.decode((encoded,), [torch.ones(1)], torch.device("cpu"))


def test_keep_float_names_are_matched_on_the_graph_quantize_sees():
    class Siblings(nn.Module):  # two linears of one input are merged into `merged0`
        def __init__(self):
            super().__init__()
            self.wq = nn.Parameter(torch.randn(64, 64) / 8)
            self.wk = nn.Parameter(torch.randn(64, 64) / 8)

        def forward(self, x):
            return F.linear(x, self.wq), F.linear(x, self.wk)

    model, x = Siblings().eval(), torch.randn(4, 64)
    plain = compile(model, "cpu-int8", example_inputs=x, calibration=[x])
    names = [layer.module for layer in plain.report.latest.quantization.layers]
    # a name the report's layer table shows is accepted, and keeps that layer float
    kept = compile(model, "cpu-int8", example_inputs=x, calibration=[x], keep_float=names[:1])
    assert len(kept.report.latest.quantization.layers) == len(names) - 1
    # a value name fusion took away is refused, dynamic or calibrated, not silently ignored
    for calibration in (None, [x]):
        with pytest.raises(OptionError, match="'linear'"):
            compile(nn.Sequential(nn.Linear(64, 64), nn.ReLU()).eval(), "cpu-int8",
                    example_inputs=x, calibration=calibration, keep_float=["linear"])


def test_weight_bits_takes_numpy_integers():
    fast = compile(_model(), "cpu-int8", weight_bits=np.int64(8))
    assert "8-bit" in fast.report.int8
