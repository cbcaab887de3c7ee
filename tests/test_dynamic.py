"""compile(..., dynamic=...): one capture serves a range of sizes (issue #18's done-when).

Tolerances: fp32 targets against eager at rtol 1e-4 / atol 1e-5; int8 against a static
compile of the same model with the same calibration data, exactly (the scales do not depend on
the batch, so the dynamic graph specialized at a size is the static graph at that size).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fxforge
from fxforge import zoo
from fxforge.errors import InputError, OptionError

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 7, 13, 32, 128)


@pytest.fixture(scope="module")
def digits():
    model, _ = zoo.build("digits", 1)
    data = zoo.digits_data()
    return model, data


@pytest.mark.parametrize("target", ["cpu", "reference", "ort"])
def test_cnn_compiled_once_runs_every_batch_in_range(digits, target):
    model, data = digits
    x32 = data.x_train[:32]
    fast = fxforge.compile(model, target, example_inputs=(x32,), dynamic=True)
    for batch in BATCHES:
        x = data.x_train[:batch]
        torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 1
    text = str(fast.report)
    assert "dynamic dims: B: 1..4096" in text and "B=7" in text and "B=128" in text


@pytest.mark.parametrize("target", ["cpu-int8", "reference-int8", "ort-int8"])
def test_int8_calibrated_at_one_batch_is_the_static_int8_at_every_other(digits, target):
    model, data = digits
    calibration = zoo.calibration_data("digits", 32)
    fast = fxforge.compile(model, target, example_inputs=(data.x_train[:32],),
                           calibration=calibration, dynamic=True)
    for batch in (1, 13, 128):
        x = data.x_test[:batch]
        static = fxforge.compile(model, target, example_inputs=(x,), calibration=calibration)
        torch.testing.assert_close(fast(x), static(x), rtol=0, atol=0)
    assert fast.report.captures == 1
    accuracy = (fast(data.x_test).argmax(1) == data.y_test).float().mean().item()
    eager = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy >= eager - 0.01


def test_without_example_inputs_the_first_call_captures_the_dynamic_graph(digits):
    model, data = digits
    fast = fxforge.compile(model, "cpu", dynamic={"x": {0: (1, 64)}})
    for batch in (5, 64, 1):
        x = data.x_test[:batch]
        torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 1
    with pytest.raises(InputError, match=r"outside the range of B: 1\.\.64"):
        fast(data.x_test[:65])


def test_a_batch_1_example_still_gives_a_dynamic_batch_and_the_ir_prints_it(digits):
    # torch.export specializes size 1: the capture repeats the example to 2 (fxforge.dynamic)
    model, data = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fxforge.compile(model, "cpu", example_inputs=(data.x_train[:1],), dynamic=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    symbolic = fast._symbolic[0].graph
    text = str(symbolic)
    assert "dims(B: 1..4096)" in text and "f32[B,1,8,8]" in text
    assert fxforge.parse_ir(text, constants={n.attrs["value"].digest: n.attrs["value"].array
                                             for n in symbolic.nodes if n.op == "const"}) \
        == symbolic


def test_a_batch_outside_the_range_is_an_input_error_naming_it(digits):
    model, data = digits
    fast = fxforge.compile(model, "cpu", example_inputs=(data.x_train[:8],),
                           dynamic={"x": {0: (2, 16)}})
    fast(data.x_train[:16])
    with pytest.raises(InputError, match=r"dim 0 is 17, outside the range of B: 2\.\.16"):
        fast(data.x_train[:17])
    with pytest.raises(InputError, match=r"outside the range of B: 2\.\.16"):
        fast(data.x_train[:1])
    with pytest.raises(InputError, match="must be 8"):  # a static dim still is one
        fast(torch.zeros(4, 1, 8, 9))
    assert fast.report.captures == 1


def test_bad_dynamic_options_are_option_errors(digits):
    model, data = digits
    x = data.x_train[:4]
    for bad, pattern in [("yes", "expected True"), ({"y": {0: (1, 8)}}, "no tensor input named"),
                         ({"x": {5: (1, 8)}}, "rank 4"), ({"x": {0: (9, 4)}}, "min 9"),
                         ({"x": {0: (8, 16)}}, "outside")]:
        with pytest.raises(OptionError, match=pattern):
            fxforge.compile(model, "cpu", example_inputs=(x,), dynamic=bad)


def _hf(name):
    pytest.importorskip("transformers")
    from fxforge import zoo_hf

    return zoo_hf.build(name, 2)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_transformers_run_sequence_lengths_8_to_64_with_one_capture(name):
    model, inputs = _hf(name)
    seq = {k: {1: (8, 64)} for k, v in inputs.items() if v.ndim == 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fxforge.compile(model, "cpu", example_inputs=inputs, dynamic=seq)
    for length in (8, 17, 64):
        call = {k: v[:, :1].repeat(1, length) if v.ndim == 2 else v for k, v in inputs.items()}
        if "input_ids" in call:
            call["input_ids"] = torch.randint(0, 50, (2, length), generator=torch.Generator()
                                              .manual_seed(length))
        want = model(**call)
        got = fast(**call)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state,
                                   rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 1
    assert "S: 8..64" in str(fast.report)


def test_a_range_the_model_cannot_take_names_the_range_it_can():
    from fxforge.errors import CaptureError

    model, inputs = _hf("bert")  # 64 position embeddings: S cannot pass 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaptureError, match=r"(?s)8 <= S <= 128.*min\(64, .*narrow the "
                                               r"range"):
            fxforge.compile(model, "cpu", example_inputs=inputs,
                            dynamic={k: {1: (8, 128)} for k in inputs})


class _BranchOnOne(torch.nn.Module):
    def forward(self, x):  # centering needs two rows: the model says so on its sizes
        return x - x.mean(0, keepdim=True) if x.shape[0] > 1 else x


def test_a_model_that_branches_on_size_1_gets_a_range_without_it():
    # torch.export traces dynamic sizes as >= 2; the guard it keeps narrows B to 2..
    model = _BranchOnOne()
    fast = fxforge.compile(model, "cpu", example_inputs=(torch.randn(4, 3),), dynamic=True)
    x = torch.randn(5, 3)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert "B: 2..4096" in str(fast.report)
    with pytest.raises(InputError, match=r"outside the range of B: 2\.\.4096"):
        fast(torch.randn(1, 3))


class _SizeOut(torch.nn.Module):
    def forward(self, x):
        return x * 2, x.shape[0]


def test_a_size_returned_as_a_number_is_the_call_s():
    fast = fxforge.compile(_SizeOut(), "cpu", example_inputs=(torch.ones(4, 3),), dynamic=True)
    out, n = fast(torch.ones(5, 3))
    assert n == 5 and type(n) is int and out.shape == (5, 3)


class _VarArgs(torch.nn.Module):
    def forward(self, x, *rest):
        return x + sum(rest)


def test_options_dynamic_cannot_serve_are_refused_up_front(digits):
    model, data = digits
    with pytest.raises(OptionError, match="int8_layers='measured'"):
        fxforge.compile(model, "cpu-int8", dynamic=True, int8_layers="measured")
    fast = fxforge.compile(_VarArgs(), "cpu", dynamic=True)
    with pytest.raises(OptionError, match=r"through \*args or \*\*kwargs"):
        fast(torch.ones(2, 3), torch.ones(2, 3))
    for bad in [{"x": {0: (0, 8)}}, {"x": {0: (1.5, 8)}}, {"x": {"0": (1, 8)}}]:
        with pytest.raises(OptionError):
            fxforge.compile(model, "cpu", example_inputs=(data.x_train[:4],), dynamic=bad)


def test_without_example_inputs_a_new_static_size_is_a_new_capture(digits):
    model, _ = digits
    fast = fxforge.compile(model, "cpu", dynamic=True)
    fast(torch.randn(4, 1, 8, 8))
    fast(torch.randn(6, 1, 8, 8))
    assert fast.report.captures == 1
    x = torch.randn(3, 1, 9, 9)  # another spatial size: the dynamic graph fixes 8x8
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 2


def test_concurrent_first_calls_capture_once_and_share_the_weights(digits):
    import threading

    model, _ = digits
    fast = fxforge.compile(model, "cpu", dynamic=True)
    xs = [torch.randn(b, 1, 8, 8) for b in range(2, 8)]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(xs))

    def call(x):
        barrier.wait()
        results[x.shape[0]] = fast(x)

    threads = [threading.Thread(target=call, args=(x,)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x in xs:
        torch.testing.assert_close(results[x.shape[0]], model(x), rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 1
    programs = [p for e in fast._entries.values() for p in e.programs.values()]
    weights = {id(t) for p in programs for t in p.constants.values() if t.numel() > 100}
    assert len(programs) == len(xs) and len(weights) == len(
        {id(t) for t in programs[0].constants.values() if t.numel() > 100})
