"""Quantized IR -> ONNX QDQ (QuantizeLinear / DequantizeLinear around float ops).

The design, S8S8 throughout (signed int8 activations and weights):

- An int8 IR value with a per-tensor `quant` is the int8 output of a QuantizeLinear in ONNX;
  every reader that computes dequantizes it first (one DequantizeLinear per value and
  parameters), with the IR's scale and zero point as scalar initializers.
- `qlinear` / `qconv2d`: DequantizeLinear(x) and DequantizeLinear(weight, w_scale, zero points
  0, axis 0 = the output channel), then Gemm (`transB`, x's int8 codes reshaped to [rows, K]
  first) or Conv, with the float bias, then the float epilogue through the float converters,
  then QuantizeLinear(out_scale, out_zero_point) when out_dtype is i8. This is the
  explicit-quantization form TensorRT and onnxruntime's QDQ fusions take; w_bits=7 weights are
  int8 tensors like any other. onnxruntime fuses these groups into its int8 kernels (QGemm,
  QLinearConv), which requantize with their own rounding: within 1 LSB of the reference.
- Ops that only move elements (reshape, max_pool2d, cat, ...) on int8 values become
  DequantizeLinear -> op -> QuantizeLinear with the same parameters: exact, and the form in
  which TensorRT accepts them.
- `dynamic_quantize` computes its scale in the graph exactly as the reference does, in float32
  (scale = ReduceMax(Abs(x)) / 127, 1 where that is 0) and quantizes with QuantizeLinear taking
  that run-time scale: per tensor, or per row as a per-axis scale over x reshaped to
  [rows, K]. QuantizeLinear's round-half-to-even of x / scale and saturation give the
  reference's clip(rint(x / s), -127, 127) (|x / s| <= 127 by construction). ONNX's
  DynamicQuantizeLinear is not used: it is uint8 and asymmetric, a different quantization. A
  run-time scale is an onnxruntime graph; TensorRT's explicit quantization wants constant
  scales, so only calibrated (static) graphs are TensorRT QDQ.
- `linear_int4`: from opset 21 an INT4 initializer with blocked DequantizeLinear (block_size =
  group_size along K), before that its float32 dequantized weight (the same values).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from fxforge import ops, quant_ops
from fxforge.ir import Attrs, Graph, Node, QuantParams, TensorType
from fxforge.kernels.reference_quant import dequantize_int4, unpack_int4
from fxforge.onnx_export import Arg, Emitter
from fxforge.onnx_export_ops import Converter, epilogue, gemm
from fxforge.onnx_export_ops import conv_attrs as _conv_attrs


def is_quantized(a: Arg) -> bool:
    q = a.type.quant
    return a.type.dtype == "i8" and q is not None and q.axis is None


def _params(ctx: Emitter, scale: float, zero_point: int) -> list[str]:
    return [ctx.const(np.float32(scale)), ctx.const(np.int8(zero_point))]


def dequantized(ctx: Emitter, name: str, scale: float, zero_point: int) -> str:
    """DequantizeLinear of int8 `name`, made once per value and parameters."""
    key = ("dq", name, float(np.float32(scale)), int(zero_point))
    if key not in ctx.cache:
        ctx.cache[key] = ctx.op("DequantizeLinear", [name, *_params(ctx, scale, zero_point)])
    return ctx.cache[key]


def quantized(ctx: Emitter, name: str, quant: QuantParams) -> str:
    return ctx.op("QuantizeLinear", [name, *_params(ctx, quant.scale[0], quant.zero_point[0])])


def through_float(ctx: Emitter, convert: Converter, ins: list[Arg], attrs: Attrs,
                  outs: list[TensorType]) -> list[str]:
    """An element-moving op on int8 values: dequantize, the float op, quantize again."""
    float_ins = [Arg(dequantized(ctx, a.name, a.type.quant.scale[0], a.type.quant.zero_point[0]),
                     TensorType(a.type.shape, "f32")) if is_quantized(a) else a for a in ins]
    results = convert(ctx, float_ins, attrs, [TensorType(t.shape, "f32") for t in outs])
    return [quantized(ctx, r, t.quant) if t.quant is not None else r
            for r, t in zip(results, outs)]


# --- quantize, dequantize, dynamic_quantize -----------------------------------------------------


def _quantize(ctx, ins, attrs, outs):
    return [ctx.op("QuantizeLinear", [ins[0].name, *_params(ctx, attrs["scale"],
                                                            attrs["zero_point"])])]


def _dequantize(ctx, ins, attrs, outs):
    return [dequantized(ctx, ins[0].name, attrs["scale"], attrs["zero_point"])]


def _zeros(ctx: Emitter, n: int) -> str:
    return ctx.const(np.zeros(n, dtype=np.int8))


def _per_row(ctx: Emitter, op_type: str, x: Arg, scale: str, flat: bool = False) -> str:
    """Quantize or dequantize x [..., K] with a run-time scale per row [..., 1]: a per-axis
    scale over x viewed as [rows, K] (`flat`: the result stays [rows, K])."""
    shape = x.type.shape
    rows = int(np.prod(shape[:-1]))
    flat_x = x.name if len(shape) == 2 else ctx.op("Reshape", [x.name,
                                                                ctx.i64([rows, shape[-1]])])
    got = ctx.op(op_type, [flat_x, ctx.op("Reshape", [scale, ctx.i64([rows])]),
                           _zeros(ctx, rows)], axis=0)
    return got if flat or len(shape) == 2 else ctx.op("Reshape", [got, ctx.i64(shape)])


def _per_tensor(ctx: Emitter, op_type: str, x: str, scale: str) -> str:
    """With a run-time scale of shape (1,) * rank: as a scalar, zero point 0."""
    scalar = ctx.op("Reshape", [scale, ctx.i64([])])
    return ctx.op(op_type, [x, scalar, ctx.const(np.int8(0))])


def _dynamic_quantize(ctx, ins, attrs, outs):
    x = ins[0]
    n = x.type.ndim
    axes = [n - 1] if attrs["mode"] == "row" else list(range(n))
    amax = ctx.op("Abs", [x.name])
    if axes:
        amax = ctx.op("ReduceMax", [amax, ctx.i64(axes)], keepdims=1)
    s = ctx.op("Div", [amax, ctx.const(np.float32(127))])
    one = ctx.const(np.float32(1))
    s = ctx.op("Where", [ctx.op("Greater", [s, ctx.const(np.float32(0))]), s, one])
    if attrs["mode"] == "row":
        q = _per_row(ctx, "QuantizeLinear", x, s)
    else:
        q = _per_tensor(ctx, "QuantizeLinear", x.name, s)
    return [q, s]


# --- qlinear, qconv2d ---------------------------------------------------------------------------


def _x_float(ctx: Emitter, ins: list[Arg], attrs: Attrs, mode: str) -> str:
    """The float x of a quantized layer; a qlinear's as [rows, K] (see `_qlinear`)."""
    x = ins[0]
    shape = x.type.shape
    if attrs["dynamic"]:
        scale = ins[3 + attrs["has_bias"]].name
        if mode == "row":
            return _per_row(ctx, "DequantizeLinear", x, scale, flat=True)
        return _per_tensor(ctx, "DequantizeLinear", x.name, scale)
    name = x.name
    if mode == "row" and len(shape) != 2:
        name = ctx.op("Reshape", [name, ctx.i64([int(np.prod(shape[:-1])), shape[-1]])])
    return dequantized(ctx, name, attrs["x_scale"], attrs["x_zero_point"])


def _weight(ctx: Emitter, w: Arg, w_scale: Arg) -> str:
    """DequantizeLinear of the int8 weight per output channel (axis 0)."""
    n = w.type.shape[0]
    return ctx.op("DequantizeLinear", [w.name, w_scale.name, _zeros(ctx, n)], axis=0)


def _finish(ctx: Emitter, y: str, ins: list[Arg], attrs: Attrs, out: TensorType) -> str:
    """The float epilogue, then requantization when the output is int8."""
    stages = ops.epilogue_types(TensorType(out.shape, "f32"), [a.type for a in ins],
                                attrs["epilogue"])
    y = epilogue(ctx, y, stages, ins, attrs["epilogue"])
    if attrs["out_dtype"] != "i8":
        return y
    return ctx.op("QuantizeLinear", [y, *_params(ctx, attrs["out_scale"],
                                                 attrs["out_zero_point"])])


def _qlinear(ctx, ins, attrs, outs):
    """Always a Gemm on x as [rows, K] (x's int8 codes reshaped before they are dequantized):
    the QDQ Gemm TensorRT and onnxruntime take, and no MatMul for onnxruntime to rewrite into
    its MatMulNBits, which quantizes activations its own way (blockwise, `accuracy_level`)."""
    x, w, w_scale = ins[:3]
    x_f = _x_float(ctx, ins, attrs, "row")
    bias = [ins[3].name] if attrs["has_bias"] else []
    y = ctx.op("Gemm", [x_f, _weight(ctx, w, w_scale), *bias], transB=1)
    if x.type.ndim != 2:
        y = ctx.op("Reshape", [y, ctx.i64(outs[0].shape)])
    return [_finish(ctx, y, ins, attrs, outs[0])]


def _qconv2d(ctx, ins, attrs, outs):
    x_f = _x_float(ctx, ins, attrs, "tensor")
    w_f = _weight(ctx, ins[1], ins[2])
    names = [x_f, w_f] + ([ins[3].name] if attrs["has_bias"] else [])
    y = ctx.op("Conv", names, **_conv_attrs(attrs, ins[1].type))
    return [_finish(ctx, y, ins, attrs, outs[0])]


# --- linear_int4 --------------------------------------------------------------------------------


def _linear_int4(ctx, ins, attrs, outs):
    x, packed, scales = ins[:3]
    gs = attrs["group_size"]
    bias = ins[3].name if attrs["has_bias"] else None
    if ctx.opset >= 21:
        w_int = unpack_int4(packed.const)
        name = ctx.names.claim(f"{packed.name}_int4")
        ctx.initializers.append(helper.make_tensor(name, TensorProto.INT4, list(w_int.shape),
                                                   w_int.reshape(-1).tolist()))
        w = ctx.op("DequantizeLinear", [name, scales.name], axis=1, block_size=gs)
    else:
        w = ctx.const(dequantize_int4(packed.const, scales.const, gs))

    def wt() -> str:
        return ctx.op("Transpose", [w], perm=[1, 0])

    return [gemm(ctx, x.name, x.type.ndim, w, wt, bias)]


def why_not(graph: Graph, node: Node) -> str | None:
    """linear_int4 needs its packed weight (and, before opset 21, its scales) constant."""
    if node.op == "linear_int4" and (graph.constant(node.inputs[1]) is None
                                     or graph.constant(node.inputs[2]) is None):
        return "linear_int4 with a packed weight or scales computed at run time"
    if node.op in ("qlinear", "qconv2d") and quant_ops.base_inputs(node.attrs) > len(node.inputs):
        return "missing inputs"
    return None


CONVERTERS: dict[str, Converter] = {
    "quantize": _quantize,  # QuantizeLinear, per tensor
    "dequantize": _dequantize,  # DequantizeLinear, per tensor
    "dynamic_quantize": _dynamic_quantize,  # ReduceMax(Abs)/127 scale, QuantizeLinear with it
    "qlinear": _qlinear,  # DQ(x), DQ(w) per channel, Gemm / MatMul, epilogue, Q(out)
    "qconv2d": _qconv2d,  # DQ(x), DQ(w) per channel, Conv, epilogue, Q(out)
    "linear_int4": _linear_int4,  # INT4 blocked DQ (opset >= 21) or f32 weight, Gemm / MatMul
}
