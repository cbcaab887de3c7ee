"""The `quantize` pass (passes/quantize.py) on its own: BEFORE/AFTER IR text and properties.

IR-text tests: small float graphs (as the float pipeline leaves them: fused_conv2d, plain conv2d,
linear, cat, max_pool2d, reshape) with given calibration ranges, and the quantized IR the pass
must make: which layers become qconv2d / qlinear with which activation parameters (computed here
with `fxforge.quant_math.qparams_from_range`, never copied from the output), which values flow
as int8, where quantize / dequantize nodes go, and the stats. Constants print as their type only
(their digests say nothing); the int8 weights and their scales are checked as arrays. Values the
float graph had keep their names; values the pass made are renamed %0, %1, ... in order of
definition, so the text does not depend on how the pass names them.

Property tests: random float graphs (tests/random_graphs.py, through the cpu target's float
pipeline, which makes the fused layers the pass sees in practice) quantized with ranges observed
by running the float graph on the very inputs they are then evaluated on; the tolerances are
explained where they are used (`_check_backends`, `_check_close_to_float`).
FXFORGE_PROPERTY_EXAMPLES (default 30) sets the number of graphs per property test.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from passes_util import dedent_ir
from random_graphs import random_graphs, random_inputs

from fxforge import OptionError, parse_ir
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Graph, digest_of
from fxforge.passes import registry as passes
from fxforge.passes.quantize import quantize_graph
from fxforge.pipeline import PassManager
from fxforge.printer import print_graph
from fxforge.quant_math import qparams_from_range, quantize_int8_per_channel
from fxforge.targets import TARGET_INFO
from fxforge.verify import verify

CPU = torch.device("cpu")
CONV3 = "stride=[1, 1], padding=[1, 1], dilation=[1, 1]"
QCONV3 = f"qconv2d[{CONV3}, groups=1"
SMALL = "products per output: too little work to gain from int8"
ON_REQUEST = "kept in float on request (keep_float / min_sqnr)"


# --- helpers ------------------------------------------------------------------------------------


def _float_graph(text: str, constants: dict[str, np.ndarray]) -> Graph:
    """Parse float IR whose constants are written `%name = const T @?`: their data (and so their
    digest) comes from `constants[name]`."""
    text = re.sub(r"%(\w+) = const (\S+) @\?",
                  lambda m: f"%{m[1]} = const {m[2]} @{digest_of(constants[m[1]])}", text)
    graph = parse_ir(text, constants=constants)
    verify(graph)
    return graph


def _ir(after: Graph, before: Graph) -> str:
    """`after` as text after dead-code removal (the pass leaves the float weights for `dce`):
    constants as their type only, the names `before` had kept, new names %0, %1, ..."""
    after, _ = passes.PASSES["dce"](after)
    old = before.value_names()
    names: dict[str, str] = {}
    for node in after.nodes:
        for v in node.outputs:
            if v.name not in old:
                names[v.name] = str(len(names))
    lines = []
    for line in print_graph(after).splitlines():
        line = re.sub(r"= const (\S+) (@\w+|\[.*?\]|\S+)", r"= const \1", line)
        lines.append(re.sub(r"%(\w+)", lambda m: "%" + names.get(m[1], m[1]), line))
    return "\n".join(lines)


def _quantize(graph: Graph, ranges=None, keep_float=()) -> tuple[Graph, dict]:
    """Run the pass; the result verifies and prints and parses back to itself."""
    q, stats = quantize_graph(graph, ranges, keep_float)
    verify(q)
    assert parse_ir(str(q)) == q
    return q, stats


def _weights_of(q: Graph, layer_value: str) -> tuple[np.ndarray, np.ndarray]:
    """The int8 weight and f32 scale constants of the quantized layer producing `layer_value`."""
    node = q.producers[layer_value]
    return q.constant(node.inputs[1]), q.constant(node.inputs[2])


def _check_weights(q: Graph, layer_value: str, float_weight: np.ndarray) -> None:
    w_q, w_scale = _weights_of(q, layer_value)
    want_q, want_scale = quantize_int8_per_channel(float_weight)
    assert w_q.dtype == np.int8 and w_scale.dtype == np.float32
    np.testing.assert_array_equal(w_q, want_q)
    np.testing.assert_array_equal(w_scale, want_scale)


def _observed_ranges(graph: Graph, samples: list[list[np.ndarray]]) -> dict[str, tuple]:
    """(min, max) of every float32 input and node result over the samples, observed on the
    torch backend as calibration observes them."""
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str, t: torch.Tensor) -> None:
        if t.dtype != torch.float32 or t.numel() == 0:
            return
        lo, hi = float(t.min()), float(t.max())
        old = ranges.get(name, (lo, hi))
        ranges[name] = (min(old[0], lo), max(old[1], hi))

    program = TorchProgram(graph, CPU)
    for arrays in samples:
        program([torch.from_numpy(a) for a in arrays], observe=observe)
    return ranges


def _assert_covers(given: dict[str, tuple], observed: dict[str, tuple]) -> None:
    """Hand-written ranges contain the observed ones (where given), so the numeric checks of a
    test see rounding error only, not clipping."""
    for name, (lo, hi) in given.items():
        assert lo <= observed[name][0] <= observed[name][1] <= hi, (name, observed[name])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _run_both(q: Graph, inputs: list[np.ndarray]):
    """The outputs and every int8 value made by a node, on the numpy reference (the int8 values
    as extra graph outputs) and on the torch backend (seen through its `observe` hook)."""
    int8 = tuple(v for n in q.nodes if n.op != "const" for v in n.outputs
                 if v.type.dtype == "i8")
    names = {v.name for v in int8}
    ref = run_reference(Graph(q.inputs, q.nodes, q.outputs + int8), inputs)
    seen: dict[str, np.ndarray] = {}

    def observe(name: str, t: torch.Tensor) -> None:
        if name in names:
            seen[name] = t.numpy().copy()

    got = TorchProgram(q, CPU)([torch.from_numpy(a) for a in inputs], observe=observe)
    n = len(q.outputs)
    return ref[:n], [t.numpy() for t in got], dict(zip((v.name for v in int8), ref[n:])), seen


def _check_backends(q: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference and the torch backend agree on `q` (docs/quantized-ir.md): int32
    accumulators are exact and float epilogues differ by float32 rounding only, so an int8 value
    can differ by 1 LSB where a requantized value lies within float32 rounding of a .5 tie.
    Every int8 value (also those after such a difference) is held to 1 LSB. Float outputs:
    where all int8 values agree exactly, what is left is float32 rounding (rtol 1e-4, atol 1e-5,
    as the float backends are held to); where one differs by an LSB, it moves a later layer's
    output by (its scale) x (a weight's scale) x |weight| <= 127 per differing element -- about
    1/255 of the activation range times a weight of magnitude < 1 -- so float outputs are held
    to 2% of their largest magnitude then. (In 800 random graphs, static and dynamic, no int8
    value differed at all.)"""
    ref, got, ref_int8, torch_int8 = _run_both(q, inputs)
    assert ref_int8.keys() == torch_int8.keys()
    exact = True
    for name, a in ref_int8.items():
        b = torch_int8[name]
        assert a.dtype == b.dtype == np.int8 and a.shape == b.shape, name
        diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
        assert diff.max(initial=0) <= 1, (name, diff.max())
        exact = exact and not diff.any()
    for a, b in zip(ref, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        if exact:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * np.abs(a).max(initial=0))
    return ref


def _check_close_to_float(float_out: list[np.ndarray], quant_out: list[np.ndarray],
                          min_cos: float) -> None:
    """Each quantized output points where the float one does: cosine similarity > min_cos
    (outputs that are all zeros in float are skipped: there is no direction to compare)."""
    for f, q in zip(float_out, quant_out, strict=True):
        assert f.shape == q.shape and q.dtype == f.dtype
        if np.linalg.norm(f.astype(np.float64)) > 0:
            assert _cosine(f, q) > min_cos, _cosine(f, q)


# --- a static CNN: stem -> residual block -> cat -> max_pool -> flatten -> linear ----------------

RNG = np.random.default_rng(1234)


def _normal(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


CNN_CONSTANTS = {"wdw": _normal(3, 1, 3, 3), "w1": _normal(4, 3, 3, 3), "b1": _normal(4),
                 "w2": _normal(4, 4, 3, 3), "b2": _normal(4), "w4": _normal(4, 128, scale=0.1),
                 "b4": _normal(4)}
CNN = f"""
graph(%x: f32[1,3,8,8]) {{
  %wdw = const f32[3,1,3,3] @?
  %dw = conv2d[{CONV3}, groups=3] %x, %wdw : f32[1,3,8,8]  # dw
  %w1 = const f32[4,3,3,3] @?
  %b1 = const f32[4] @?
  %a = fused_conv2d[{CONV3}, groups=1, has_bias=true, epilogue=[{{"op": "relu"}}]] %x, %w1, %b1 : f32[1,4,8,8]  # stem
  %w2 = const f32[4,4,3,3] @?
  %b2 = const f32[4] @?
  %b = fused_conv2d[{CONV3}, groups=1, has_bias=true, epilogue=[{{"op": "add", "operand": 0, "side": "right"}}, {{"op": "relu"}}]] %a, %w2, %b2 : f32[1,4,8,8]  # block.conv
  %c = cat[dim=1] %a, %b : f32[1,8,8,8]  # block
  %p = max_pool2d[kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=false] %c : f32[1,8,4,4]  # pool
  %f = reshape[shape=[1, 128]] %p : f32[1,128]
  %w4 = const f32[4,128] @?
  %b4 = const f32[4] @?
  %y = linear %f, %w4, %b4 : f32[1,4]  # head
  return %y, %dw
}}"""  # noqa: E501
# Calibrated ranges, as round numbers. The cat's range is given to both its inputs (a and b),
# so the stem's own range (0, 9) is not used: a and b are written at the cat's scale and the
# concatenation moves int8 elements unchanged.
CNN_RANGES = {"x": (-3.0, 2.5), "dw": (-5.5, 5.5), "a": (0.0, 9.0), "b": (0.0, 14.0),
              "c": (0.0, 14.0), "p": (0.0, 14.0), "f": (0.0, 14.0), "y": (-1.0, 5.0)}
MAXPOOL_I8 = ("max_pool2d[kernel=[2, 2], stride=[2, 2], padding=[0, 0], ceil_mode=false, "
              "dilation=[1, 1]]")


def _i8(shape: str, scale: float, zp: int) -> str:
    return f"i8[{shape}]{{scale=[{scale!r}], zero_point=[{zp}], axis=none}}"


def _cnn_inputs() -> list[np.ndarray]:
    """Inputs inside the calibrated range of x."""
    return [np.random.default_rng(7).uniform(-3.0, 2.5, (1, 3, 8, 8)).astype(np.float32)]


def test_static_cnn_int8_flows_through_cat_max_pool_and_reshape():
    """x is quantized once, for the stem (the depthwise dw, 9 products per output, stays float
    and reads x itself). The stem and the block conv write int8 at the cat's scale, since all
    their readers read int8 (a conv's x, the cat); the block's residual epilogue operand is
    float, so a is dequantized for it. cat, max_pool2d and reshape run on int8; the head reads
    int8 and writes float, keeping the name y."""
    graph = _float_graph(CNN, CNN_CONSTANTS)
    q, stats = _quantize(graph, CNN_RANGES)
    sx, zx = qparams_from_range(*CNN_RANGES["x"])
    sc, zc = qparams_from_range(*CNN_RANGES["c"])  # the cat's: shared by a, b, c, p and f
    assert (sx, zx) != (sc, zc) and zc == -128  # a relu range [0, hi] puts 0 at -128
    expected = f"""
    graph(%x: f32[1,3,8,8]) {{
      %wdw = const f32[3,1,3,3]
      %dw = conv2d[{CONV3}, groups=3] %x, %wdw : f32[1,3,8,8]  # dw
      %b1 = const f32[4]
      %0 = const i8[4,3,3,3]  # stem
      %1 = const f32[4]  # stem
      %2 = quantize[scale={sx!r}, zero_point={zx}] %x : {_i8("1,3,8,8", sx, zx)}  # stem
      %3 = {QCONV3}, has_bias=true, dynamic=false, x_scale={sx!r}, x_zero_point={zx}, out_dtype="i8", out_scale={sc!r}, out_zero_point={zc}, epilogue=[{{"op": "relu"}}], w_bits=8] %2, %0, %1, %b1 : {_i8("1,4,8,8", sc, zc)}  # stem
      %b2 = const f32[4]
      %4 = const i8[4,4,3,3]  # block.conv
      %5 = const f32[4]  # block.conv
      %6 = dequantize[scale={sc!r}, zero_point={zc}] %3 : f32[1,4,8,8]  # block.conv
      %7 = {QCONV3}, has_bias=true, dynamic=false, x_scale={sc!r}, x_zero_point={zc}, out_dtype="i8", out_scale={sc!r}, out_zero_point={zc}, epilogue=[{{"op": "add", "operand": 4, "side": "right"}}, {{"op": "relu"}}], w_bits=8] %3, %4, %5, %b2, %6 : {_i8("1,4,8,8", sc, zc)}  # block.conv
      %8 = cat[dim=1] %3, %7 : {_i8("1,8,8,8", sc, zc)}  # block
      %9 = {MAXPOOL_I8} %8 : {_i8("1,8,4,4", sc, zc)}  # pool
      %10 = reshape[shape=[1, 128]] %9 : {_i8("1,128", sc, zc)}
      %b4 = const f32[4]
      %11 = const i8[4,128]  # head
      %12 = const f32[4]  # head
      %y = qlinear[has_bias=true, dynamic=false, x_scale={sc!r}, x_zero_point={zc}, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[], w_bits=8] %10, %11, %12, %b4 : f32[1,4]  # head
      return %y, %dw
    }}"""  # noqa: E501
    assert _ir(q, graph) == dedent_ir(expected)
    layers = {layer["float_value"]: layer for layer in stats["layers"]}
    for value, weight in (("a", "w1"), ("b", "w2"), ("y", "w4")):
        _check_weights(q, layers[value]["value"], CNN_CONSTANTS[weight])
    assert stats == {
        "quantized": 3, "static": 3, "dynamic": 0,
        "kept_float": [f"dw: 9 {SMALL}"],  # depthwise 3x3: 9 products per output
        "round_trips": ["quantize %x (from a graph input) for fused_conv2d at stem",
                        "dequantize %a for fused_conv2d at block.conv: epilogue operand"],
        "layers": [
            {"module": "stem", "float_value": "a", "value": layers["a"]["value"],
             "op": "qconv2d", "mode": "static", "out": "i8"},
            {"module": "block.conv", "float_value": "b", "value": layers["b"]["value"],
             "op": "qconv2d", "mode": "static", "out": "i8"},
            {"module": "head", "float_value": "y", "value": "y", "op": "qlinear",
             "mode": "static", "out": "f32"}]}
    inputs = _cnn_inputs()
    got = _check_backends(q, inputs)
    _check_close_to_float(run_reference(graph, inputs), got, 0.99)


def test_static_cnn_ranges_cover_the_float_values():
    """The ranges above are what calibration would give (up to rounding outwards) for the inputs
    the numerics are checked on, so those checks see rounding error, not clipping."""
    graph = _float_graph(CNN, CNN_CONSTANTS)
    observed = _observed_ranges(graph, [_cnn_inputs()])
    assert observed.keys() == CNN_RANGES.keys()
    _assert_covers(CNN_RANGES, observed)


def test_static_cnn_keep_float_by_module_path():
    """The head kept float by its module path: its input f is read in float, so nothing after
    the cat flows as int8 any more, and the two convs write float."""
    graph = _float_graph(CNN, CNN_CONSTANTS)
    q, stats = _quantize(graph, CNN_RANGES, keep_float=["head"])
    sx, zx = qparams_from_range(*CNN_RANGES["x"])
    sc, zc = qparams_from_range(*CNN_RANGES["c"])
    expected = f"""
    graph(%x: f32[1,3,8,8]) {{
      %wdw = const f32[3,1,3,3]
      %dw = conv2d[{CONV3}, groups=3] %x, %wdw : f32[1,3,8,8]  # dw
      %b1 = const f32[4]
      %0 = const i8[4,3,3,3]  # stem
      %1 = const f32[4]  # stem
      %2 = quantize[scale={sx!r}, zero_point={zx}] %x : {_i8("1,3,8,8", sx, zx)}  # stem
      %a = {QCONV3}, has_bias=true, dynamic=false, x_scale={sx!r}, x_zero_point={zx}, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[{{"op": "relu"}}], w_bits=8] %2, %0, %1, %b1 : f32[1,4,8,8]  # stem
      %b2 = const f32[4]
      %3 = const i8[4,4,3,3]  # block.conv
      %4 = const f32[4]  # block.conv
      %5 = quantize[scale={sc!r}, zero_point={zc}] %a : {_i8("1,4,8,8", sc, zc)}  # block.conv
      %b = {QCONV3}, has_bias=true, dynamic=false, x_scale={sc!r}, x_zero_point={zc}, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[{{"op": "add", "operand": 4, "side": "right"}}, {{"op": "relu"}}], w_bits=8] %5, %3, %4, %b2, %a : f32[1,4,8,8]  # block.conv
      %c = cat[dim=1] %a, %b : f32[1,8,8,8]  # block
      %p = max_pool2d[kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=false] %c : f32[1,8,4,4]  # pool
      %f = reshape[shape=[1, 128]] %p : f32[1,128]
      %w4 = const f32[4,128]
      %b4 = const f32[4]
      %y = linear %f, %w4, %b4 : f32[1,4]  # head
      return %y, %dw
    }}"""  # noqa: E501
    assert _ir(q, graph) == dedent_ir(expected)
    assert stats["kept_float"] == [f"dw: 9 {SMALL}", f"head: {ON_REQUEST}"]
    assert (stats["quantized"], stats["static"], stats["dynamic"]) == (2, 2, 0)
    assert [layer["out"] for layer in stats["layers"]] == ["f32", "f32"]
    assert stats["round_trips"] == [
        "quantize %x (from a graph input) for fused_conv2d at stem",
        "quantize %a (from fused_conv2d at stem) for fused_conv2d at block.conv"]
    inputs = _cnn_inputs()
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


def test_static_cnn_keep_float_by_value_name():
    """`b` kept float by its value name (its module path is block.conv): a is read in float by
    b, so the stem writes float; the cat, the max_pool and the reshape run in float, and the
    head quantizes its input f."""
    graph = _float_graph(CNN, CNN_CONSTANTS)
    q, stats = _quantize(graph, CNN_RANGES, keep_float=["b"])
    with pytest.raises(OptionError, match="'no.such.module'"):  # a typo is not ignored
        _quantize(graph, CNN_RANGES, keep_float=["b", "no.such.module"])
    ops = {n.outputs[0].name: n.op for n in q.nodes}
    assert (ops["a"], ops["b"], ops["c"], ops["p"], ops["f"], ops["y"]) == (
        "qconv2d", "fused_conv2d", "cat", "max_pool2d", "reshape", "qlinear")
    assert q.producers["b"] == graph.producers["b"]  # untouched
    assert all(v.type.dtype == "f32" for v in q.producers["c"].inputs)
    sf, zf = qparams_from_range(*CNN_RANGES["f"])
    head = q.producers["y"]
    assert (head.attrs["x_scale"], head.attrs["x_zero_point"]) == (sf, zf)
    assert q.producers[head.inputs[0].name].op == "quantize"
    assert stats["kept_float"] == [f"dw: 9 {SMALL}", f"block.conv: {ON_REQUEST}"]
    assert [layer["float_value"] for layer in stats["layers"]] == ["a", "y"]
    assert stats["round_trips"] == [
        "quantize %x (from a graph input) for fused_conv2d at stem",
        "quantize %f (from reshape at <top>) for linear at head"]
    inputs = _cnn_inputs()
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


def test_a_reader_with_its_own_range_requantizes_an_int8_value():
    """int8 flows through the max_pool at the cat's scale; when the head's input f was
    calibrated to a different range than the cat (a max_pool raises the minimum), the head
    gets f at its own scale: a dequantize and a quantize, both reported ("scales differ")."""
    ranges = dict(CNN_RANGES, c=(-1.0, 14.0), p=(-0.5, 14.0), f=(-0.5, 14.0))
    graph = _float_graph(CNN, CNN_CONSTANTS)
    q, stats = _quantize(graph, ranges)
    sc, zc = qparams_from_range(*ranges["c"])
    sf, zf = qparams_from_range(*ranges["f"])
    assert (sc, zc) != (sf, zf)
    pool = next(n for n in q.nodes if n.op == "max_pool2d")
    assert pool.output.type.dtype == "i8"
    head = q.producers["y"]
    requant = q.producers[head.inputs[0].name]
    dequant = q.producers[requant.inputs[0].name]
    assert (requant.op, dict(requant.attrs)) == ("quantize", {"scale": sf, "zero_point": zf})
    assert (dequant.op, dict(dequant.attrs)) == ("dequantize", {"scale": sc, "zero_point": zc})
    assert q.producers[dequant.inputs[0].name].op == "reshape"
    assert (head.attrs["x_scale"], head.attrs["x_zero_point"]) == (sf, zf)
    assert stats["round_trips"][2:] == ["dequantize %f for linear at head: scales differ",
                                        "quantize %f (from reshape at <top>) for linear at head"]
    inputs = _cnn_inputs()
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


# --- one value, several readers ------------------------------------------------------------------

SHARED_CONSTANTS = {"w1": _normal(4, 2, 3, 3), "w2": _normal(4, 2, 3, 3),
                    "w3": _normal(4, 4, 3, 3)}
SHARED = f"""
graph(%x: f32[2,2,5,5]) {{
  %w1 = const f32[4,2,3,3] @?
  %u = conv2d[{CONV3}, groups=1] %x, %w1 : f32[2,4,5,5]  # u
  %w2 = const f32[4,2,3,3] @?
  %v = conv2d[{CONV3}, groups=1] %x, %w2 : f32[2,4,5,5]  # v
  %w3 = const f32[4,4,3,3] @?
  %z = conv2d[{CONV3}, groups=1] %u, %w3 : f32[2,4,5,5]  # z
  %t = conv2d[{CONV3}, groups=1] %v, %w3 : f32[2,4,5,5]  # t
  %s = sigmoid %v : f32[2,4,5,5]
  return %z, %t, %s
}}"""
SHARED_RANGES = {"x": (-4.0, 4.0), "u": (-9.0, 10.0), "v": (-5.5, 6.0), "z": (-11.0, 10.0),
                 "t": (-11.0, 13.5), "s": (0.0, 1.0)}


def test_readers_share_one_quantize_and_a_float_reader_keeps_a_layer_float():
    """x is quantized once for both convs that read it. u has one reader, a static conv, so u is
    written as int8; v is also read by a sigmoid, so v is written float and quantized (once)
    for its int8 reader t."""
    graph = _float_graph(SHARED, SHARED_CONSTANTS)
    q, stats = _quantize(graph, SHARED_RANGES)
    p = {k: qparams_from_range(*r) for k, r in SHARED_RANGES.items()}
    quantizes = [n for n in q.nodes if n.op == "quantize"]
    assert [n.inputs[0].name for n in quantizes] == ["x", "v"]
    assert [(n.attrs["scale"], n.attrs["zero_point"]) for n in quantizes] == [p["x"], p["v"]]
    x_q = quantizes[0].output
    layers = {layer["float_value"]: q.producers[layer["value"]] for layer in stats["layers"]}
    assert layers["u"].inputs[0] == layers["v"].inputs[0] == x_q
    assert (layers["u"].attrs["out_dtype"], layers["u"].attrs["out_scale"],
            layers["u"].attrs["out_zero_point"]) == ("i8", *p["u"])
    assert layers["z"].inputs[0] == layers["u"].output  # int8 straight from u
    assert layers["v"].attrs["out_dtype"] == "f32" and layers["v"].output.name == "v"
    assert layers["t"].inputs[0] == quantizes[1].output
    assert q.producers["s"].inputs[0].name == "v"
    assert not any(n.op == "dequantize" for n in q.nodes)
    assert (stats["quantized"], stats["static"], stats["dynamic"]) == (4, 4, 0)
    assert stats["round_trips"] == ["quantize %x (from a graph input) for conv2d at u",
                                    "quantize %v (from conv2d at v) for conv2d at t"]
    inputs = [np.random.default_rng(3).uniform(-4, 4, (2, 2, 5, 5)).astype(np.float32)]
    _assert_covers(SHARED_RANGES, _observed_ranges(graph, [inputs]))
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


# --- dynamic quantization ------------------------------------------------------------------------

DYN_CONSTANTS = {"wc": _normal(8, 4, 3, 3), "w1": _normal(6, 16), "b1": _normal(6),
                 "w2": _normal(6, 16), "wt": _normal(3, 6)}
DYN = f"""
graph(%x: f32[2,4,6,6], %h: f32[2,5,16]) {{
  %wc = const f32[8,4,3,3] @?
  %c = conv2d[{CONV3}, groups=1] %x, %wc : f32[2,8,6,6]  # conv
  %w1 = const f32[6,16] @?
  %b1 = const f32[6] @?
  %l1 = linear %h, %w1, %b1 : f32[2,5,6]  # attn.q
  %w2 = const f32[6,16] @?
  %l2 = fused_linear[has_bias=false, epilogue=[{{"op": "gelu", "attrs": {{"approximate": "none"}}}}]] %h, %w2 : f32[2,5,6]  # attn.k
  %wt = const f32[3,6] @?
  %t = linear %l1, %wt : f32[2,5,3]  # tiny
  return %c, %l2, %t
}}"""  # noqa: E501


def _dyn_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.standard_normal((2, 4, 6, 6)).astype(np.float32),
            rng.standard_normal((2, 5, 16)).astype(np.float32)]


def test_dynamic_mode_row_for_linear_tensor_for_conv_one_per_input():
    graph = _float_graph(DYN, DYN_CONSTANTS)
    q, stats = _quantize(graph)
    expected = f"""
    graph(%x: f32[2,4,6,6], %h: f32[2,5,16]) {{
      %0 = const i8[8,4,3,3]  # conv
      %1 = const f32[8]  # conv
      %2, %3 = dynamic_quantize[mode="tensor"] %x : i8[2,4,6,6], f32[1,1,1,1]  # conv
      %c = {QCONV3}, has_bias=false, dynamic=true, x_scale=none, x_zero_point=0, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[], w_bits=8] %2, %0, %1, %3 : f32[2,8,6,6]  # conv
      %b1 = const f32[6]
      %4 = const i8[6,16]  # attn.q
      %5 = const f32[6]  # attn.q
      %6, %7 = dynamic_quantize[mode="row"] %h : i8[2,5,16], f32[2,5,1]  # attn.q
      %l1 = qlinear[has_bias=true, dynamic=true, x_scale=none, x_zero_point=0, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[], w_bits=8] %6, %4, %5, %b1, %7 : f32[2,5,6]  # attn.q
      %8 = const i8[6,16]  # attn.k
      %9 = const f32[6]  # attn.k
      %l2 = qlinear[has_bias=false, dynamic=true, x_scale=none, x_zero_point=0, out_dtype="f32", out_scale=none, out_zero_point=0, epilogue=[{{"op": "gelu", "attrs": {{"approximate": "none"}}}}], w_bits=8] %6, %8, %9, %7 : f32[2,5,6]  # attn.k
      %wt = const f32[3,6]
      %t = linear %l1, %wt : f32[2,5,3]  # tiny
      return %c, %l2, %t
    }}"""  # noqa: E501
    assert _ir(q, graph) == dedent_ir(expected)
    for value, weight in (("c", "wc"), ("l1", "w1"), ("l2", "w2")):
        _check_weights(q, value, DYN_CONSTANTS[weight])
    assert stats == {
        "quantized": 3, "static": 0, "dynamic": 3, "kept_float": [f"tiny: 6 {SMALL}"],
        "round_trips": [],
        "layers": [{"module": "conv", "float_value": "c", "value": "c", "op": "qconv2d",
                    "mode": "dynamic", "out": "f32"},
                   {"module": "attn.q", "float_value": "l1", "value": "l1", "op": "qlinear",
                    "mode": "dynamic", "out": "f32"},
                   {"module": "attn.k", "float_value": "l2", "value": "l2", "op": "qlinear",
                    "mode": "dynamic", "out": "f32"}]}
    inputs = _dyn_inputs()
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


def test_layers_without_a_range_are_quantized_dynamically_beside_static_ones():
    """Calibration gave ranges for x and c only: the conv is static (its output stays float, as
    it is a graph output), the linears reading h, which has no range, are dynamic."""
    graph = _float_graph(DYN, DYN_CONSTANTS)
    ranges = {"x": (-3.0, 3.0), "c": (-5.5, 5.5)}
    _assert_covers(ranges, _observed_ranges(graph, [_dyn_inputs()]))
    q, stats = _quantize(graph, ranges)
    conv = q.producers["c"]
    assert conv.op == "qconv2d" and not conv.attrs["dynamic"]
    assert (conv.attrs["x_scale"], conv.attrs["x_zero_point"]) == qparams_from_range(-3.0, 3.0)
    assert conv.attrs["out_dtype"] == "f32"
    assert [n.attrs["mode"] for n in q.nodes if n.op == "dynamic_quantize"] == ["row"]
    assert [layer["mode"] for layer in stats["layers"]] == ["static", "dynamic", "dynamic"]
    assert (stats["quantized"], stats["static"], stats["dynamic"]) == (3, 1, 2)
    assert stats["round_trips"] == ["quantize %x (from a graph input) for conv2d at conv"]
    inputs = _dyn_inputs()
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


def test_dynamic_keep_float_by_module_and_name():
    graph = _float_graph(DYN, DYN_CONSTANTS)
    q, stats = _quantize(graph, keep_float=["attn.q", "c"])
    ops = {n.outputs[0].name: n.op for n in q.nodes}
    assert (ops["c"], ops["l1"], ops["l2"], ops["t"]) == ("conv2d", "linear", "qlinear", "linear")
    assert stats["kept_float"] == [f"conv: {ON_REQUEST}", f"attn.q: {ON_REQUEST}",
                                   f"tiny: 6 {SMALL}"]
    assert [n.attrs["mode"] for n in q.nodes if n.op == "dynamic_quantize"] == ["row"]
    assert (stats["quantized"], stats["dynamic"]) == (1, 1)


# --- bugs these tests found (fixed; kept as regressions) -----------------------------------------


def test_a_layer_whose_accumulator_could_overflow_stays_float():
    k = 65800  # K * |127 - (-128)| * 128 > 2**31 - 1 once K > 65793
    w = np.full((1, k), 0.01, np.float32)
    graph = _float_graph(f"""
    graph(%x: f32[1,{k}]) {{
      %w = const f32[1,{k}] @?
      %y = linear %x, %w : f32[1,1]  # fc
      return %y
    }}""", {"w": w})
    q, stats = _quantize(graph, {"x": (0.0, 1.0), "y": (0.0, 700.0)})
    assert [n.op for n in q.nodes if n.op != "const"] == ["linear"]
    assert len(stats["kept_float"]) == 1 and stats["kept_float"][0].startswith("fc: ")


@pytest.mark.parametrize("ranges", [None, {"x": (-4.0, 4.0)}], ids=["dynamic", "static"])
@pytest.mark.parametrize("scalar", ["i64[] 3", "f64[] 0.5"])
def test_epilogue_scalar_operands_of_other_dtypes(scalar, ranges):
    w = _normal(8, 32)
    graph = _float_graph(f"""
    graph(%x: f32[2,32]) {{
      %w = const f32[8,32] @?
      %c = const {scalar}
      %y = fused_linear[has_bias=false, epilogue=[{{"op": "add", "operand": 2, "side": "right"}}]] %x, %w, %c : f32[2,8]  # fc
      return %y
    }}""", {"w": w})  # noqa: E501
    q, stats = _quantize(graph, ranges)
    assert q.producers["y"].op == "qlinear"
    inputs = [np.random.default_rng(0).uniform(-4, 4, (2, 32)).astype(np.float32)]
    _check_close_to_float(run_reference(graph, inputs), _check_backends(q, inputs), 0.99)


def test_torch_backend_conv_one_output_column_with_stride():
    w = _normal(4, 4, 3, 3)
    graph = _float_graph("""
    graph(%x: f32[1,4,5,3]) {
      %w = const f32[4,4,3,3] @?
      %y = conv2d[stride=[1, 2], padding=[1, 0], dilation=[1, 1], groups=1] %x, %w : f32[1,4,5,1]  # conv
      return %y
    }""", {"w": w})  # noqa: E501
    q, _ = _quantize(graph, {"x": (-4.0, 4.0), "y": (-4.0, 4.0)})
    assert q.producers["y"].op == "qconv2d"
    inputs = [np.random.default_rng(0).uniform(-4, 4, (1, 4, 5, 3)).astype(np.float32)]
    _check_backends(q, inputs)


# --- properties on random graphs -----------------------------------------------------------------

EXAMPLES = int(os.environ.get("FXFORGE_PROPERTY_EXAMPLES", "30"))
# A fixed seed (@seed(SEED)) and no example database: the same graphs every run, also after
# edits to the test body (derandomize=True would derive its seed from the source instead), so
# whole-run claims hold or fail for good.
SETTINGS = dict(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEED = 0
GRAPHS = {
    # conv chains with heads, pooling, concat, flatten -> linear: int8 links between layers
    "cnn": random_graphs(min_ops=6, max_ops=12, zero_channel_prob=0.1, max_outputs=1,
                         heads=True, ops=("conv2d", "conv2d", "conv2d", "relu", "max_pool2d",
                                          "cat", "flatten", "linear")),
    # everything else too: batch norm, activations, residual adds and muls, splits, several
    # outputs, hostile provenance (as tests/test_pass_properties.py draws them)
    "any": random_graphs(max_ops=14, zero_channel_prob=0.3)
    | random_graphs(zero_channel_prob=0.4, heads=True),
}
# What the int8 targets run before quantize (it makes the fused layers), less channel removal:
# that pass has its own properties (tests/test_pass_properties.py), and without it zeroed weight
# channels (scale 1 in int8) reach the quantize pass as well.
FLOAT_PIPELINE = tuple(p for p in TARGET_INFO["cpu"].pipeline if p != "remove-pruned-channels")
# Quantized outputs stay close to float: with ranges calibrated on the inputs themselves
# nothing clips, and each int8 rounding adds an error of at most half a step, 1/510 of a
# value's range (weights: 1/254 of a channel's largest magnitude). That is an SQNR of roughly
# 30-45 dB per layer for values spread over their range; a dozen layers lose ~11 dB at worst
# (errors add), and cosine similarity 0.95 is an SQNR of only ~10 dB. Dynamic quantization
# uses each row's (linear) or tensor's (conv) own absolute maximum: no clipping either.
# (Measured over 800 random graphs: the lowest cosine was 0.998.)
MIN_COS = 0.95
LAYERS = ("conv2d", "fused_conv2d", "linear", "fused_linear")


def _check_structure(float_graph: Graph, q: Graph, stats: dict) -> None:
    """The stats describe the graph: every quantized layer is in `layers`, every conv / linear
    left in float in `kept_float`, every quantize / dequantize in `round_trips`."""
    layer_ops = [n for n in q.nodes if n.op in ("qconv2d", "qlinear")]
    assert stats["quantized"] == len(layer_ops) == len(stats["layers"])
    assert stats["static"] + stats["dynamic"] == stats["quantized"]
    for layer in stats["layers"]:
        node = q.producers[layer["value"]]
        assert node.op == layer["op"]
        assert node.attrs["dynamic"] == (layer["mode"] == "dynamic")
        assert node.attrs["out_dtype"] == layer["out"]
        if layer["out"] == "f32":  # a float result keeps its float name
            assert layer["value"] == layer["float_value"]
        else:  # an int8 result has int8 readers only (and is no graph output)
            assert layer["value"] not in {v.name for v in q.outputs}
    float_layers = [n for n in q.nodes if n.op in LAYERS]
    assert len(float_layers) == len(stats["kept_float"])
    assert sum(n.op in LAYERS for n in float_graph.nodes) == len(float_layers) + len(layer_ops)
    assert sum(n.op in ("quantize", "dequantize") for n in q.nodes) == len(stats["round_trips"])
    assert [v.type for v in q.outputs] == [v.type for v in float_graph.outputs]
    for node in q.nodes:  # cats run on one shared scale or in float
        if node.op == "cat" and node.output.type.dtype == "i8":
            assert len({v.type.quant for v in node.inputs}) == 1


def _property(kind: str, static: bool) -> Counter:
    """Quantize GRAPHS[kind] (after the float pipeline) and check each result; returns what the
    run saw, for whole-run claims (derandomized, so the same graphs every run)."""
    seen: Counter = Counter()

    @seed(SEED)
    @settings(**SETTINGS)
    @given(graph=GRAPHS[kind])
    def check(graph):
        float_graph, _ = PassManager(FLOAT_PIPELINE).run(graph)
        samples = [random_inputs(float_graph, seed) for seed in (0, 1)]
        ranges = _observed_ranges(float_graph, samples) if static else None
        q, stats = _quantize(float_graph, ranges)
        _check_structure(float_graph, q, stats)
        if static:
            assert stats["dynamic"] == 0  # every value has a range
        else:
            assert stats["static"] == 0 and stats["round_trips"] == []
            assert all(layer["out"] == "f32" for layer in stats["layers"])
        for inputs in samples:
            got = _check_backends(q, inputs)
            _check_close_to_float(run_reference(float_graph, inputs), got, MIN_COS)
        seen["graphs"] += 1
        seen["graphs with a quantized layer"] += stats["quantized"] > 0
        seen["int8 results"] += sum(layer["out"] == "i8" for layer in stats["layers"])
        seen["quantized epilogues"] += sum(n.op in ("qconv2d", "qlinear") and
                                           bool(n.attrs["epilogue"]) for n in q.nodes)

    check()
    return seen


# Whole-run floors, so that a change to the generator or the pipeline cannot leave the
# properties checking float graphs only. With 30 graphs (seed 0): cnn has a quantized layer in
# 26 and 8 int8 results between layers (static); any has a quantized layer in 17 (most of its
# convs are 1x1 or depthwise on a few channels: under 16 products per output). Rare structures
# get no floor: past its first examples Hypothesis's generation depends on the process it runs
# in, not on the seed alone (the same seed drew 0 to 7 quantized epilogues depending on which
# modules were imported before: measured 2026-11-22), so quantized epilogues and int8 layout ops
# are covered by the IR tests above instead. The int8-results floor is 1 for the same reason: the
# full suite drew 8, this file run after a few others drew 2 (2026-12-07).
def _assert_floors(kind: str, seen: Counter, static: bool) -> None:
    if EXAMPLES < 30:
        return
    share = 2 if kind == "cnn" else 5
    assert seen["graphs with a quantized layer"] >= seen["graphs"] // share, seen
    if kind == "cnn":
        assert seen["int8 results"] >= (1 if static else 0), seen


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_static_quantization_of_random_graphs(kind):
    _assert_floors(kind, _property(kind, static=True), static=True)


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_dynamic_quantization_of_random_graphs(kind):
    _assert_floors(kind, _property(kind, static=False), static=False)
