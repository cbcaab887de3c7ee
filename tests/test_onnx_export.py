"""IR -> ONNX export (`fxforge.onnx_export`), run in onnxruntime (CPUExecutionProvider).

What is checked, and to what tolerance:

- every row of the op table (tests/test_ops.py), as a one-node graph (0-d inputs as constants,
  as captured graphs hold scalars), exported at the default opset and at MIN_OPSET / MAX_OPSET,
  against the numpy reference: float32 rtol 1e-4 / atol 1e-5, float16 rtol 1e-3 / atol 1e-3,
  float64 rtol 1e-9 / atol 1e-12, integers and bools exactly. Excluded, with the reason: NaN
  rows, where onnxruntime's ReduceMin / ArgMax do not let NaN win as torch does.
- the quantized ops as one-node graphs: int8 results within 1 LSB of the reference (the max
  LSB difference is measured), float results within rtol 1e-5 of the output's largest value.
- the zoo compiled for `cpu`: onnxruntime against `compiled(...)`, rtol 1e-4 / atol 1e-5.
- the zoo compiled for `reference-int8` (calibrated and dynamic): end to end, each float output
  within the tolerance of its last quantized layer (`_last_layer_tolerance`: what moving every
  input of that layer by one LSB can change, s_x * max_c s_w[c] * sum_k |w_q[c, k]|, plus the
  float32 tolerance); and each quantized node on its own, fed the reference's values, within 1
  LSB (int8) or rtol 1e-5 (float). onnxruntime fuses QDQ into its own int8 kernels, which round
  the requantization their own way: the measured max is 1 LSB per layer.
- `onnx.checker.check_model(full_check=True)` on every export; the typed error listing every
  unsupported op before anything is written; hostile names sanitized in node names and escaped
  in doc strings.
"""

from __future__ import annotations

import math
import os
import re
import sys
import zlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from graph_builder import GraphBuilder

import fxforge
from fxforge import ops, zoo
from fxforge.errors import FxforgeError
from fxforge.execute import run_reference
from fxforge.ir import ConstData, Graph, Node, Provenance, TensorType, Value
from fxforge.onnx_export import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    OnnxExportError,
    export_compiled,
    export_onnx,
)
from fxforge.quant_math import quantize_int4_groupwise, quantize_int8_per_channel

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, os.path.dirname(__file__))
import test_ops as op_table  # noqa: E402 - the op table with shapes, reused row by row

ort.set_default_logger_severity(3)
TOL = {np.float16: (1e-3, 1e-3), np.float32: (1e-4, 1e-5), np.float64: (1e-9, 1e-12)}
NAN_ROWS = {"amin-nan-propagates", "argmax-nan-wins", "argmin-nan-wins"}
NODE_NAME = re.compile(r"[A-Za-z0-9_.\-/~]+")


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def _session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, arrays) -> list[np.ndarray]:
    _check(model)
    names = [i.name for i in model.graph.input]
    return _session(model).run(None, dict(zip(names, arrays)))


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    if want.dtype.kind == "f":
        rtol, atol = TOL[want.dtype.type]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# The op table


def _row_graph(row) -> tuple[Graph, list[np.ndarray]]:
    """The row's one-node graph with its 0-d inputs as constants."""
    inputs, _, node, _ = op_table._prepare(row)
    consts, values, arrays = [], [], []
    for v, t in zip(node.inputs, inputs):
        if t.ndim == 0:
            consts.append(Node("const", (), (v,), {"value": ConstData(t.numpy())}))
        else:
            values.append(v)
            arrays.append(t.numpy())
    return Graph(tuple(values), (*consts, node), node.outputs), arrays


ROWS = [r for r in op_table.ROWS if r.id not in NAN_ROWS]


@pytest.mark.parametrize("opset", [DEFAULT_OPSET, MIN_OPSET, MAX_OPSET])
def test_every_op_table_row_matches_the_reference(opset):
    failures = []
    for row in ROWS:
        graph, arrays = _row_graph(row)
        want = run_reference(graph, arrays)
        try:
            got = _run(export_onnx(graph, opset=opset), arrays)
            for g, w in zip(got, want, strict=True):
                _assert_close(g, w)
        except Exception as e:  # noqa: BLE001 - collect every row, report them together
            failures.append(f"{row.id}: {type(e).__name__}: {str(e)[:300]}")
    assert not failures, "\n".join(failures)


def test_every_op_but_torch_op_has_a_converter_and_a_test():
    from fxforge.onnx_export_ops import CONVERTERS

    assert set(ops.OPS) - set(CONVERTERS) == {"const", "torch_op"}
    covered = {r.op for r in ROWS}  # the quantized ops are tested below
    quantized = {"quantize", "dequantize", "dynamic_quantize", "qlinear", "qconv2d",
                 "linear_int4"}
    assert set(ops.OPS) - covered - quantized == {"const", "torch_op"}


def test_integer_exponents_and_clamped_slice_ends_are_written_as_the_ir_has_them():
    # x ** 2 keeps its int64 exponent (ONNX's Pow takes it as is), a stepped slice to the end
    # keeps its end: so importing the file gives the same IR back (tests/test_onnx_models.py)
    graph = fxforge.parse_ir("""
    graph(%x: f32[2,10]) {
      %two = const i64[] [2]
      %p = pow %x, %two : f32[2,10]
      %s = slice[dim=1, start=0, end=10, step=2] %p : f32[2,5]
      return %s
    }""")
    x = np.random.default_rng(3).standard_normal((2, 10)).astype(np.float32)
    model = export_onnx(graph)
    pow_node = next(n for n in model.graph.node if n.op_type == "Pow")
    exponent = next(i for i in model.graph.initializer if i.name == pow_node.input[1])
    assert exponent.data_type == onnx.TensorProto.INT64
    slice_node = next(n for n in model.graph.node if n.op_type == "Slice")
    ends = next(i for i in model.graph.initializer if i.name == slice_node.input[2])
    assert onnx.numpy_helper.to_array(ends).tolist() == [10]
    _assert_close(_run(model, [x])[0], run_reference(graph, [x])[0])


# ---------------------------------------------------------------------------------------------
# Quantized ops


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _lsb(got: np.ndarray, want: np.ndarray) -> int:
    return int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max()) if want.size else 0


def _assert_quant_close(got: np.ndarray, want: np.ndarray) -> int:
    """int8 within 1 LSB (returns the max difference); float within rtol 1e-5 of the max."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == np.int8:
        lsb = _lsb(got, want)
        assert lsb <= 1
        return lsb
    scale = float(np.abs(want).max()) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-7)
    return 0


def _qlayer(op: str, x_shape, cout, dynamic, has_bias, residual, out_dtype, conv=None):
    """A one-layer quantized graph: a float input quantized (static or dynamic), the layer with
    a relu (+ residual) epilogue, int8 or float output."""
    rng = _rng(op, x_shape, cout, dynamic, has_bias, residual, out_dtype)
    b = GraphBuilder()
    x = Value("x", TensorType(x_shape, "f32"))
    k_shape = (x_shape[1] // conv["groups"], *conv.pop("kernel")) if conv else (x_shape[-1],)
    w_q, w_s = quantize_int8_per_channel(rng.standard_normal((cout, *k_shape)))
    mode = "tensor" if op == "qconv2d" else "row"
    if dynamic:
        q, x_scale = b("dynamic_quantize", [x], n_out=2, mode=mode)
        attrs = {"dynamic": True}
    else:
        q = b("quantize", [x], scale=0.021, zero_point=-3)
        attrs = {"x_scale": 0.021, "x_zero_point": -3}
    inputs = [q, b.const(w_q), b.const(w_s)]
    if has_bias:
        inputs.append(b.const(rng.standard_normal(cout).astype(np.float32)))
    if dynamic:
        inputs.append(x_scale)
    epilogue = [{"op": "relu"}]
    probe = ops.build_node(op, inputs, {**attrs, **(conv or {}), "has_bias": has_bias}, ["p"])
    if residual:
        res = rng.standard_normal(probe.output.type.shape).astype(np.float32)
        inputs.append(b.const(res))
        epilogue.append({"op": "add", "operand": len(inputs) - 1, "side": "right"})
    if out_dtype == "i8":
        attrs.update(out_dtype="i8", out_scale=0.05, out_zero_point=-7)
    y = b(op, inputs, **attrs, **(conv or {}), has_bias=has_bias, epilogue=tuple(epilogue))
    data = (rng.standard_normal(x_shape) * 1.5).astype(np.float32)
    return Graph((x,), tuple(b.nodes), (y,)), [data]


Q_VARIANTS = [  # (dynamic, has_bias, with_residual, out_dtype)
    (False, False, False, "f32"), (False, True, True, "f32"), (False, True, False, "i8"),
    (True, False, False, "f32"), (True, True, True, "i8"),
]
LINEAR_SHAPES = [((1, 7), 3), ((5, 13), 9), ((2, 3, 17), 5), ((17,), 4), ((3, 64), 31)]
CONV_CASES = [  # (x shape, Cout, kernel, stride, padding, dilation, groups)
    ((1, 3, 7, 5), 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 3, 9, 9), 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 4, 6, 6), 6, (3, 3), (1, 1), (1, 1), (2, 2), 2),
    ((2, 6, 5, 5), 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),
]


def test_qlinear_and_qconv2d_within_one_lsb():
    worst = 0
    for variant in Q_VARIANTS:
        for x_shape, n in LINEAR_SHAPES:
            graph, arrays = _qlayer("qlinear", x_shape, n, *variant)
            (got,), (want,) = _run(export_onnx(graph), arrays), run_reference(graph, arrays)
            worst = max(worst, _assert_quant_close(got, want))
        for x_shape, cout, kernel, stride, padding, dilation, groups in CONV_CASES:
            conv = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
            graph, arrays = _qlayer("qconv2d", x_shape, cout, *variant, conv=conv)
            (got,), (want,) = _run(export_onnx(graph), arrays), run_reference(graph, arrays)
            worst = max(worst, _assert_quant_close(got, want))
    print(f"qlinear / qconv2d one-node graphs: max int8 difference {worst} LSB")


def test_quantize_rounds_half_to_even_and_saturates_like_the_reference():
    b = GraphBuilder()
    x = Value("x", TensorType((12,), "f32"))
    q = b("quantize", [x], scale=0.5, zero_point=3)
    d = b("dequantize", [q], scale=0.5, zero_point=3)
    graph = Graph((x,), tuple(b.nodes), (q, d))
    data = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1e6, -1e6, 0.0, 62.0, -65.75, 0.5, 3.3],
                    np.float32)
    for got, want in zip(_run(export_onnx(graph), [data]), run_reference(graph, [data])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode, shape", [("row", (3, 5)), ("row", (2, 3, 4)), ("row", (6,)),
                                         ("tensor", (2, 3, 4, 4)), ("tensor", (7,))])
def test_dynamic_quantize_is_exact(mode, shape):
    b = GraphBuilder()
    x = Value("x", TensorType(shape, "f32"))
    q, s = b("dynamic_quantize", [x], n_out=2, mode=mode)
    graph = Graph((x,), tuple(b.nodes), (q, s))
    data = (_rng(mode, shape).standard_normal(shape) * 3).astype(np.float32)
    data.reshape(-1, shape[-1])[0] = 0.0  # an all-zero row: scale 1
    for got, want in zip(_run(export_onnx(graph), [data]), run_reference(graph, [data])):
        np.testing.assert_array_equal(got, want)


def _every_quant_op_graph() -> Graph:
    """int8 through max_pool2d and reshape, a dequantize, dynamic row and tensor modes, a
    7-bit weight, linear_int4 (as tests/test_quant_ops.py's graph of every op)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = Value("x", TensorType((2, 3, 9, 9), "f32"))
    q = b("quantize", [x], scale=0.05, zero_point=3)
    w1, s1 = quantize_int8_per_channel(rng.standard_normal((4, 3, 3, 3)), bits=7)
    c1 = b("qconv2d", [q, b.const(w1), b.const(s1), b.const(rng.standard_normal(4).astype(
        np.float32))], stride=(2, 2), padding=(1, 1), has_bias=True, x_scale=0.05, x_zero_point=3,
        out_dtype="i8", out_scale=0.1, out_zero_point=-5, epilogue=({"op": "relu"},), w_bits=7)
    p = b("max_pool2d", [c1], kernel=(2, 2), stride=(1, 1))
    r8 = b("reshape", [p], shape=(2, -1))
    d = b("dequantize", [r8], scale=0.1, zero_point=-5)
    dq, ds = b("dynamic_quantize", [d], n_out=2, mode="row")
    w2, s2 = quantize_int8_per_channel(rng.standard_normal((8, d.type.shape[1])))
    res = b.const(rng.standard_normal((2, 8)).astype(np.float32))
    lin = b("qlinear", [dq, b.const(w2), b.const(s2), ds, res], has_bias=False, dynamic=True,
            epilogue=({"op": "add", "operand": 4, "side": "right"},
                      {"op": "clamp", "attrs": {"min": -1.0, "max": 1.0}}))
    packed, scales = quantize_int4_groupwise(rng.standard_normal((6, 8)), 4)
    i4 = b("linear_int4", [lin, b.const(packed), b.const(scales),
                           b.const(np.zeros(6, np.float32))], group_size=4, has_bias=True)
    tq, ts = b("dynamic_quantize", [x], n_out=2, mode="tensor")
    w3, s3 = quantize_int8_per_channel(rng.standard_normal((3, 1, 3, 3)))
    c2 = b("qconv2d", [tq, b.const(w3), b.const(s3), ts], padding=(1, 1), dilation=(2, 2),
           groups=3, has_bias=False, dynamic=True)
    return Graph((x,), tuple(b.nodes), (i4, c2, p))


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, MAX_OPSET])
def test_every_quantized_op_in_one_graph(opset):
    graph = _every_quant_op_graph()
    data = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    model = export_onnx(graph, opset=opset)
    types = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MaxPool"} <= types
    assert "DynamicQuantizeLinear" not in types  # uint8: not the IR's symmetric int8
    int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == (1 if opset >= 21 else 0)
    _qdq_is_s8s8(model)
    for got, want in zip(_run(model, [data]), run_reference(graph, [data])):
        _assert_quant_close(got, want)


def _qdq_is_s8s8(model: onnx.ModelProto) -> None:
    """Constant scales are positive, constant zero points int8 and (for weights) zero."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = consts.get(node.input[1])
        if scale is not None:
            assert scale.dtype == np.float32 and np.all(scale > 0)
        if len(node.input) > 2 and node.input[2] in consts:
            zp = consts[node.input[2]]
            assert zp.dtype == np.int8
            if zp.ndim == 1:  # per axis: weights (and dynamic rows) are symmetric
                assert not zp.any()
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            weight = consts[node.input[0]]  # int8 weights (also 7-bit ones); int4 for int4
            assert weight.dtype == np.int8 or str(weight.dtype) == "int4"


# ---------------------------------------------------------------------------------------------
# The zoo, fp32

ZOO = ["mlp", "resnet18", "mobilenetv2", "transformer", "vit", "digits", "bert"]
HF = ["bert", "gpt2", "llama", "vit", "swin", "convnext", "resnet", "whisper-encoder"]


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _check_compiled(compiled, call_inputs, expected_inputs=None) -> float:
    model = export_compiled(compiled)
    arrays = [t.numpy() for t in _leaves(call_inputs)]
    got = _run(model, arrays)
    want = _leaves(compiled(**call_inputs) if isinstance(call_inputs, dict)
                   else compiled(*call_inputs))
    assert len(got) == len(want)
    err = 0.0
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)
        err = max(err, float(np.abs(g - w.numpy()).max()))
    if expected_inputs is not None:
        assert [i.name for i in model.graph.input] == expected_inputs
    return err


@pytest.mark.parametrize("name", ZOO)
def test_zoo_fp32_matches_compiled(name):
    model, x = zoo.build(name, 2)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    err = _check_compiled(compiled, x)
    print(f"{name} fp32: max abs error {err:.3g}")


@pytest.mark.parametrize("name", HF)
def test_hf_zoo_fp32_matches_compiled(name):
    pytest.importorskip("transformers")
    from fxforge import zoo_hf

    model, inputs = zoo_hf.build(name, 1)
    compiled = fxforge.compile(model, "cpu", example_inputs=inputs)
    names = list(inputs) if isinstance(inputs, dict) else None
    err = _check_compiled(compiled, inputs, names)
    print(f"hf {name} fp32: max abs error {err:.3g}")


def test_user_names_and_file(tmp_path):
    model, x = zoo.build("transformer", 1)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    path = tmp_path / "t.onnx"
    proto = export_compiled(compiled, path, metadata={"owner": "tests"})
    loaded = onnx.load(str(path))
    assert loaded == proto
    assert [i.name for i in loaded.graph.input] == ["ids"]
    assert [o.name for o in loaded.graph.output] == ["logits", "hidden"]  # dict output keys
    props = {p.key: p.value for p in loaded.metadata_props}
    assert props["owner"] == "tests" and props["fxforge.target"] == "cpu"
    assert loaded.opset_import[0].version == DEFAULT_OPSET
    assert loaded.producer_name == "fxforge"


# ---------------------------------------------------------------------------------------------
# The zoo, int8


def _ancestors(graph: Graph, value: Value) -> list[Node]:
    seen, todo, found = set(), [value.name], []
    while todo:
        node = graph.producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        todo += [v.name for v in node.inputs]
    return found


def _last_layer_tolerance(graph: Graph, value: Value, observed: dict, want: np.ndarray) -> float:
    """What moving every input of the last quantized layer before `value` by one LSB can
    change: s_x * max_c s_w[c] * sum_k |w_q[c, k]| (s_x the static scale, or the largest
    run-time one), plus the float32 tolerance."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    layers = [n for n in _ancestors(graph, value) if n.op in ("qlinear", "qconv2d")]
    fp32 = 1e-5 + 1e-4 * float(np.abs(want).max())
    if not layers:
        return fp32
    node = max(layers, key=lambda n: order[id(n)])
    w = graph.constant(node.inputs[1]).astype(np.float64)
    w_scale = graph.constant(node.inputs[2]).astype(np.float64)
    if node.attrs["dynamic"]:
        x_scale = float(observed[node.inputs[3 + node.attrs["has_bias"]].name].max())
    else:
        x_scale = float(np.float32(node.attrs["x_scale"]))
    return x_scale * float((w_scale * np.abs(w).reshape(len(w), -1).sum(1)).max()) + fp32


def _isolated(graph: Graph, node: Node) -> Graph:
    """`node` alone, its constants kept, its other inputs graph inputs."""
    consts = [graph.producers[v.name] for v in node.inputs
              if graph.producers.get(v.name) is not None
              and graph.producers[v.name].op == "const"]
    names = {c.output.name for c in consts}
    inputs = []
    for v in node.inputs:
        if v.name not in names and v not in inputs:
            inputs.append(v)
    consts = list({id(c): c for c in consts}.values())
    return Graph(tuple(inputs), (*consts, node), node.outputs)


def _per_layer_lsb(graph: Graph, observed: dict) -> int:
    worst = 0
    for node in graph.nodes:
        if node.op not in ("quantize", "dynamic_quantize", "qlinear", "qconv2d"):
            continue
        sub = _isolated(graph, node)
        got = _run(export_onnx(sub), [observed[v.name] for v in sub.inputs])
        for v, g in zip(node.outputs, got):
            worst = max(worst, _assert_quant_close(g, observed[v.name]))
    return worst


INT8 = [("mlp", True), ("resnet18", True), ("mobilenetv2", True), ("digits", True),
        ("transformer", True), ("vit", True), ("bert", True), ("mlp", False), ("resnet18", False),
        ("mobilenetv2", False), ("transformer", False), ("vit", False), ("bert", False),
        ("digits", False)]


@pytest.mark.parametrize("name, calibrated", INT8,
                         ids=[f"{n}-{'static' if c else 'dynamic'}" for n, c in INT8])
def test_zoo_int8_qdq_matches_the_reference(name, calibrated):
    model, x = zoo.build(name, 2)
    calibration = zoo.calibration_data(name, 2, batches=4) if calibrated else None
    compiled = fxforge.compile(model, "reference-int8", example_inputs=x,
                               calibration=calibration)
    graph = compiled.graph
    assert any(n.op in ("qlinear", "qconv2d") for n in graph.nodes)
    arrays = [t.numpy() for t in x]
    observed: dict[str, np.ndarray] = {}
    want = run_reference(graph, arrays, observe=lambda n, a: observed.__setitem__(n, a))
    onnx_model = export_compiled(compiled)
    _qdq_is_s8s8(onnx_model)
    got = _run(onnx_model, arrays)
    errors = []
    for v, g, w in zip(graph.outputs, got, want):
        if w.dtype == np.int8:
            assert _lsb(g, w) <= 1
            continue
        tol = _last_layer_tolerance(graph, v, observed, w)
        err = float(np.abs(g.astype(np.float64) - w).max())
        assert err <= tol, (v.name, err, tol)
        errors.append(f"{err:.3g} (tolerance {tol:.3g})")
    lsb = _per_layer_lsb(graph, observed)
    mode = "static" if calibrated else "dynamic"
    print(f"{name} int8 {mode}: end to end {', '.join(errors)}; per layer max {lsb} LSB")


def test_cpu_int8_seven_bit_weights_export():
    model, x = zoo.build("mlp", 2)
    compiled = fxforge.compile(model, "cpu-int8", example_inputs=x, weight_bits=7,
                               calibration=zoo.calibration_data("mlp", 2, batches=2))
    assert all(n.attrs["w_bits"] == 7 for n in compiled.graph.nodes if n.op == "qlinear")
    onnx_model = export_compiled(compiled)
    _qdq_is_s8s8(onnx_model)
    arrays = [t.numpy() for t in x]
    observed: dict[str, np.ndarray] = {}
    (want,) = run_reference(compiled.graph, arrays,
                            observe=lambda n, a: observed.__setitem__(n, a))
    (got,) = _run(onnx_model, arrays)
    tol = _last_layer_tolerance(compiled.graph, compiled.graph.outputs[0], observed, want)
    assert float(np.abs(got - want).max()) <= tol


@pytest.mark.parametrize("target", ["cuda-fp16", "cuda-int4"])
def test_fp16_and_int4_pipelines(target):
    """The cuda targets' pipelines run by the reference: f16 compute (tolerance: 2e-3 of the
    output's range, f16 rounding of each intermediate), channels-last markers, int4 weights
    (fp32 tolerance: the int4 weight is dequantized exactly as the reference does)."""
    from fxforge.targets import TARGET_INFO

    model, x = zoo.build("vit", 2)
    compiled = fxforge.compile(model, "reference", example_inputs=x,
                               passes=list(TARGET_INFO[target].pipeline))
    ops_used = {n.op for n in compiled.graph.nodes}
    assert ("linear_int4" if target == "cuda-int4" else "cast") in ops_used
    arrays = [t.numpy() for t in x]
    (want,) = run_reference(compiled.graph, arrays)
    (got,) = _run(export_compiled(compiled), arrays)
    if target == "cuda-fp16":
        assert float(np.abs(got - want).max()) <= 2e-3 * float(np.abs(want).max())
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Errors, names, options

OPAQUE = """\
graph(%x: f32[2,3]) {
  %a = torch_op[target="aten.sinh.default", args=[{"$input": 0}]] %x : f32[2,3]  # blk.0 (s)
  %b = relu %a : f32[2,3]
  %c = torch_op[target="aten.sinh.default", args=[{"$input": 0}]] %b : f32[2,3]  # blk.1
  %d = torch_op[target="aten.cosh.default", args=[{"$input": 0}]] %c : f32[2,3]
  return %d
}"""


def test_unsupported_ops_raise_one_typed_error_before_writing(tmp_path):
    graph = fxforge.parse_ir(OPAQUE)
    path = tmp_path / "never.onnx"
    with pytest.raises(OnnxExportError) as info:
        export_onnx(graph, path)
    assert isinstance(info.value, FxforgeError)
    assert not path.exists()
    message = str(info.value)
    assert "torch_op x3" in message
    assert "aten.sinh.default" in message and "aten.cosh.default" in message
    assert "%a = torch_op at blk.0 (s)" in message and "blk.1" in message
    assert list(info.value.unsupported) == ["torch_op"]
    assert len(info.value.unsupported["torch_op"]) == 3


def test_static_shapes_only_and_opset_range():
    graph = fxforge.parse_ir("graph(%x: f32[2,3]) {\n  %y = relu %x : f32[2,3]\n"
                             "  return %y\n}")
    with pytest.raises(OnnxExportError, match="opset"):
        export_onnx(graph, opset=MIN_OPSET - 1)
    with pytest.raises(OnnxExportError, match="output_names"):
        export_onnx(graph, output_names=["a", "b"])
    symbolic = TensorType((2, 3), "f32")
    object.__setattr__(symbolic, "shape", ("batch", 3))  # what a symbolic dim may look like
    x = Value("x", symbolic)
    node = Node("relu", (x,), (Value("y", symbolic),))
    with pytest.raises(OnnxExportError, match="not static"):
        export_onnx(Graph((x,), (node,), node.outputs))


HOSTILE = ['x"); import os #', "line\nbreak\r\u2028", "unicodé_名前_🙂", "bidi\u202eevil",
           "nul\x00byte", "slash/dot.dot", "a" * 3000, "lone\ud800surrogate"]


def test_hostile_provenance_is_sanitized_in_names_and_escaped_in_docs():
    x = Value("x", TensorType((2, 4), "f32"))
    nodes, v = [], x
    for i, module in enumerate(HOSTILE):
        y = Value(f"v{i}", TensorType((2, 4), "f32"))
        nodes.append(Node("relu" if i % 2 else "neg", (v,), (y,),
                          provenance=Provenance(module, f"aten.{module[:5]}")))
        v = y
    graph = Graph((x,), tuple(nodes), (v,))
    model = export_onnx(graph, input_names=['in"put\n'], output_names=["out 🙂"])
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert all(NODE_NAME.fullmatch(n) and len(n) < 200 for n in names), names
    assert [i.name for i in model.graph.input] == ["in_put_"]
    assert [o.name for o in model.graph.output] == ["out__"]
    for node, module in zip(model.graph.node, HOSTILE):
        props = {p.key: p.value for p in node.metadata_props}
        assert "\n" not in node.doc_string and "\n" not in props["fxforge.module"]
        assert props["fxforge.module"] == fxforge.ir.printable(module)
    data = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    (got,) = _run(model, [data])
    np.testing.assert_array_equal(got, run_reference(graph, [data])[0])


class _Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict({name: nn.Linear(8, 8) for name in HOSTILE[:5]})

    def forward(self, x):
        for layer in self.layers.values():
            x = torch.relu(layer(x))
        return x


def test_hostile_module_names_through_compile_and_export():
    torch.manual_seed(0)
    model, x = _Hostile().eval(), torch.randn(3, 8)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    onnx_model = export_compiled(compiled)
    assert all(NODE_NAME.fullmatch(n.name) for n in onnx_model.graph.node)
    modules = {p.value for n in onnx_model.graph.node for p in n.metadata_props
               if p.key == "fxforge.module"}
    assert any("import os" in m for m in modules)
    (got,) = _run(onnx_model, [x.numpy()])
    np.testing.assert_allclose(got, compiled(x).numpy(), rtol=1e-4, atol=1e-5)


def test_past_the_protobuf_limit_weights_go_to_external_data(tmp_path, monkeypatch):
    import fxforge.onnx_export as onnx_export

    model, x = zoo.build("mlp", 1)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    monkeypatch.setattr(onnx_export, "PROTO_LIMIT", 10_000)  # as if the model had 2 GiB
    with pytest.raises(OnnxExportError, match="give a path"):
        export_compiled(compiled)
    path = tmp_path / "big.onnx"
    export_compiled(compiled, path)
    assert (tmp_path / "big.onnx.data").stat().st_size > 10_000
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x[0].numpy()})
    np.testing.assert_allclose(got, compiled(*x).numpy(), rtol=1e-4, atol=1e-5)


def test_provenance_in_node_names():
    model, x = zoo.build("mlp", 1)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    names = [n.name for n in export_compiled(compiled).graph.node]
    assert any(n.startswith("fc1/") for n in names) and any(n.startswith("head/") for n in names)


def test_max_opset_runs_a_fused_float_graph():
    model, x = zoo.build("digits", 1)
    compiled = fxforge.compile(model, "cpu", example_inputs=x)
    assert any(n.op.startswith("fused_") for n in compiled.graph.nodes)
    for opset in (MIN_OPSET, MAX_OPSET):
        (got,) = _run(export_onnx(compiled.graph, opset=opset), [x[0].numpy()])
        np.testing.assert_allclose(got, compiled(*x).numpy(), rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(got.sum()))
