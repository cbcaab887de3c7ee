"""ONNX models through `fxforge.compile`, and the `ort` / `ort-int8` targets.

The references are independent of fxforge's code under test: ONNX Runtime on the same file for
imported models, eager PyTorch for the ort targets, and the numpy reference interpreter
(`compiled.check`) for what ONNX Runtime computes from fxforge's export. Tolerances: fp32 rtol
1e-4 / atol 1e-5; int8 outputs within 1 LSB of the last int8 layer's output scale where the
graph ends in one, else (float epilogue after the last int8 layer) within 1% of the output range.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxforge
from fxforge import InputError, zoo
from fxforge.__main__ import main

ort = pytest.importorskip("onnxruntime")
RTOL, ATOL = 1e-4, 1e-5


def _export(model: nn.Module, example: tuple, path, names=("x",), outputs=None) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=False, input_names=list(names),
                          output_names=outputs)
    return str(path)


def _ort_run(path: str, *xs: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs)})


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, a, b):
        h = self.fc(a) + b
        return h.relu(), h.sum(dim=1)


@pytest.mark.parametrize("name", ["mlp", "digits", "resnet18"])
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_onnx_file_matches_onnx_runtime(tmp_path, name, target):
    model, example = zoo.build(name, 2)
    path = _export(model, example, tmp_path / f"{name}.onnx")
    fast = fxforge.compile(path, target)
    got = fast(*example)
    expected = torch.from_numpy(_ort_run(path, *example)[0])
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    assert torch.equal(fast(x=example[0]), got)  # by ONNX input name
    assert fast.report.captures == 1 and not fast.report.fallbacks


def test_inputs_by_name_and_outputs_in_onnx_order(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    a, b = torch.randn(3, 6), torch.randn(4)
    path = _export(model, (a, b), tmp_path / "two.onnx", names=("input.a", "bias"),
                   outputs=["relu_out", "sum_out"])
    fast = fxforge.compile(path, "cpu")
    first, second = fast(a, b)
    expected = _ort_run(path, a, b)
    torch.testing.assert_close(first, torch.from_numpy(expected[0]), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(second, torch.from_numpy(expected[1]), rtol=RTOL, atol=ATOL)
    by_name = fast(**{"bias": b, "input.a": a})  # a name that is no Python identifier
    assert torch.equal(by_name[0], first) and torch.equal(by_name[1], second)
    with pytest.raises(InputError, match="no input named 'c'"):
        fast(a, c=b)
    with pytest.raises(InputError, match="missing input.*'bias'"):
        fast(a)
    with pytest.raises(InputError, match="declares shape \\[3,6\\], got \\[3,5\\]"):
        fast(torch.randn(3, 5), b)


def test_model_proto_and_calibrated_int8(tmp_path):
    import onnx

    model, example = zoo.build("digits", 8)
    path = _export(model, example, tmp_path / "digits.onnx")
    calibration = zoo.calibration_data("digits", 8)
    fast = fxforge.compile(onnx.load(path), "cpu-int8", calibration=calibration)
    got = fast(*example)
    reference = torch.from_numpy(_ort_run(path, *example)[0])
    assert (got - reference).abs().max() <= 0.05 * reference.abs().max()
    assert fast.report.latest.quantization is not None  # the SQNR table of calibration
    assert any(n.op == "qconv2d" for n in fast.graph.nodes)


def test_onnx_compiled_model_saves_and_loads(tmp_path):
    model, example = zoo.build("mlp", 2)
    fast = fxforge.compile(_export(model, example, tmp_path / "mlp.onnx"), "cpu")
    expected = fast(*example)
    loaded = fxforge.load(fast.save(tmp_path / "mlp.fxf"))
    assert torch.equal(loaded(*example), expected)
    assert torch.equal(loaded(x=example[0]), expected)


def test_bad_model_arguments_are_typed_errors(tmp_path):
    from fxforge.onnx_safety import OnnxImportError

    with pytest.raises(TypeError, match="torch.nn.Module, an .onnx path or an onnx.ModelProto"):
        fxforge.compile(42, "cpu")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(OnnxImportError, match="junk.onnx"):
        fxforge.compile(str(tmp_path / "junk.onnx"), "cpu")


# --- the ort targets -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "digits", "resnet18", "transformer", "bert"])
def test_ort_target_matches_eager_and_the_reference(name):
    model, example = zoo.build(name, 2)
    fast = fxforge.compile(model, "ort", example_inputs=example)
    got, expected = fast(*example), model(*example)
    for a, b in zip(torch.utils._pytree.tree_leaves(got),
                    torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    assert max(fast.check(*example).values()) <= 1e-4


def _last_int8_scale(graph) -> float | None:
    """The output scale of the int8 layer that makes the graph's output, if it is requantized."""
    producers = graph.producers
    node = producers.get(graph.outputs[0].name)
    while node is not None and node.op not in ("qlinear", "qconv2d"):
        if node.op != "dequantize":
            return None
        node = producers.get(node.inputs[0].name)
    if node is None or node.attrs["out_dtype"] != "i8":
        return None
    return float(node.attrs["out_scale"])


@pytest.mark.parametrize("name", ["mlp", "digits", "resnet18", "bert"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_ort_int8_agrees_with_the_int8_reference(name, calibrated):
    model, example = zoo.build(name, 2)
    options = {"calibration": zoo.calibration_data(name, 2)} if calibrated else {}
    fast = fxforge.compile(model, "ort-int8", example_inputs=example, **options)
    assert any(n.op in ("qlinear", "qconv2d") for n in fast.graph.nodes)
    errors = fast.check(*example)  # ONNX Runtime on the QDQ export vs the numpy int8 reference
    outputs = torch.utils._pytree.tree_leaves(fast(*example))
    scale = _last_int8_scale(fast.graph)
    for (where, err), out in zip(errors.items(), outputs):
        bound = 1.0001 * scale if scale is not None else 0.01 * float(out.abs().max())
        assert err <= bound, (where, err, bound)


def test_ort_int8_refuses_measured_layer_choice():
    with pytest.raises(fxforge.OptionError, match="int8_layers='measured'"):
        fxforge.compile(nn.Linear(2, 2), "ort-int8", int8_layers="measured")


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_compiles_an_onnx_file_and_exports(tmp_path, capsys):
    model, example = zoo.build("mlp", 1)
    path = _export(model, example, tmp_path / "mlp.onnx")
    assert main(["compile", path, "--target", "cpu", "--repeats", "0"]) == 0
    out = capsys.readouterr().out
    assert "match against ONNX Runtime on the same file" in out and "ok" in out
    target = tmp_path / "exported.onnx"
    assert main(["export", "zoo:digits", "--target", "cpu-int8", "--batch", "4", "-o",
                 str(target), "--calibrate", "2"]) == 0
    out = capsys.readouterr().out
    assert "int8 layers" in out and target.is_file()
    import onnx

    onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    ops = {n.op_type for n in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
