"""ONNX converters: integer and quantization ops (BitShift, QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul).

The IR's own quantized ops (`quantize`, `qlinear`, ...) are int8 with static float attributes;
ONNX's take their scales and zero points as tensors, per tensor, per axis or per block, and
also uint8 and int16. So these are written with float ops, as ONNX's reference computes them:
round half to even (`rint`), add the zero point, saturate, cast; products of quantized integers
run in float64, exact for any int8 or uint8 matmul of realistic size.
"""

from __future__ import annotations

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import axis_of, cast, int_divide, like, round_half_even, unsupported
from fxforge.onnx_safety import ir_dtype

_RANGES = {"u8": (0, 255), "i8": (-128, 127), "i16": (-32768, 32767)}


def _bits(dtype: str) -> int:
    return np.dtype(dtypes.to_numpy(dtype)).itemsize * 8


def _bitshift(ctx, node):
    """x << y as x * 2**y (wrapping), x >> y as the floor of x / 2**y; a shift by a negative
    count or by the type's width or more gives the sign extension alone (-1 or 0)."""
    x, y = ctx.input(node, 0), ctx.input(node, 1)
    direction = node.attr("direction", "")
    if direction not in ("LEFT", "RIGHT") or dtypes.is_float(x.type.dtype):
        raise unsupported(node, f"direction {direction!r} on {x.type.dtype}")
    bits = _bits(x.type.dtype)
    out_of_range = ctx.emit("ge", [y, like(ctx, bits, y)])
    if x.type.dtype != "u8":
        out_of_range = ctx.emit("bitwise_or", [out_of_range, ctx.emit("lt", [y, like(ctx, 0, y)])])
    safe = ctx.emit("where", [out_of_range, like(ctx, 0, y), y])
    power = ctx.emit("pow", [like(ctx, 2, x), safe])
    if direction == "LEFT":
        shifted = ctx.emit("mul", [x, power])
        fill = like(ctx, 0, x)
    else:
        shifted = int_divide(ctx, x, power)
        negative = ctx.emit("lt", [x, like(ctx, 0, x)])
        inexact = ctx.emit("ne", [ctx.emit("mul", [shifted, power]), x])
        floor = ctx.emit("bitwise_and", [negative, inexact])  # arithmetic shift floors
        shifted = ctx.emit("where", [floor, ctx.emit("sub", [shifted, like(ctx, 1, x)]), shifted])
        fill = ctx.emit("where", [negative, like(ctx, -1, x), like(ctx, 0, x)]) \
            if x.type.dtype not in ("u8",) else like(ctx, 0, x)
    return [ctx.emit("where", [out_of_range, fill, shifted])]


def _spread(ctx, node, v, shape, axis: int, block: int):
    """A scale or zero point (scalar, per axis or per block) broadcastable against `shape`."""
    if v.type.numel == 1:
        return ctx.emit("reshape", [v], shape=())
    axis = axis_of(node, axis, len(shape))
    if block:
        if v.type.ndim != len(shape):
            raise unsupported(node, f"a blocked scale {v.type} for {list(shape)}")
        positions = np.arange(shape[axis]) // block
        return ctx.emit("index", [v, ctx.const(positions.astype(np.int64))], dim=axis)
    if v.type.ndim != 1 or v.type.shape[0] != shape[axis]:
        raise unsupported(node, f"a scale {v.type} along axis {axis} of {list(shape)}")
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return ctx.emit("reshape", [v], shape=tuple(view))


def _saturate(ctx, q, dtype: str):
    lo, hi = _RANGES[dtype]
    return ctx.emit("cast", [ctx.emit("clamp", [q], min=float(lo), max=float(hi))], dtype=dtype)


def _quantize(ctx, node):
    x, scale = ctx.input(node, 0), ctx.input(node, 1)
    zp = ctx.input(node, 2) if node.has(2) else None
    target = zp.type.dtype if zp is not None else (ir_dtype(node.attr("output_dtype", 0) or 2)
                                                    or "?")
    if target not in _RANGES:
        raise unsupported(node, f"quantizing to {target}")
    axis, block = node.attr("axis", 1), node.attr("block_size", 0)
    shape = x.type.shape
    precision = node.attr("precision")
    work = ir_dtype(precision) if precision else None
    xs = cast(ctx, x, work) if work else x
    s = _spread(ctx, node, scale, shape, axis, block)
    q = round_half_even(ctx, ctx.emit("div", [xs, cast(ctx, s, xs.type.dtype)]))
    if zp is not None:
        q = ctx.emit("add", [q, cast(ctx, _spread(ctx, node, zp, shape, axis, block),
                                     q.type.dtype)])
    return [_saturate(ctx, q, target)]


def _dequantize(ctx, node):
    x, scale = ctx.input(node, 0), ctx.input(node, 1)
    axis, block = node.attr("axis", 1), node.attr("block_size", 0)
    out = ir_dtype(node.attr("output_dtype", 0) or 0) or scale.type.dtype
    dx = cast(ctx, x, "f32")
    if node.has(2):
        zp = _spread(ctx, node, ctx.input(node, 2), x.type.shape, axis, block)
        dx = ctx.emit("sub", [dx, cast(ctx, zp, "f32")])
    s = _spread(ctx, node, scale, x.type.shape, axis, block)
    y = ctx.emit("mul", [dx, s])
    return [cast(ctx, y, out)]


def _dynamic_quantize(ctx, node):
    x = ctx.input(node, 0)
    if x.type.dtype != "f32":
        raise unsupported(node, f"DynamicQuantizeLinear of {x.type.dtype}")
    dims = tuple(range(x.type.ndim))
    top = ctx.emit("clamp", [ctx.emit("amax", [x], dims=dims, keepdim=False)], min=0.0, max=None)
    low = ctx.emit("clamp", [ctx.emit("amin", [x], dims=dims, keepdim=False)], min=None, max=0.0)
    span = ctx.emit("sub", [top, low])
    span = ctx.emit("where", [ctx.emit("eq", [span, like(ctx, 0.0, span)]),
                              like(ctx, 1.0, span), span])
    scale = ctx.emit("div", [span, like(ctx, 255.0, span)])
    zp = round_half_even(ctx, ctx.emit("clamp", [ctx.emit("neg", [ctx.emit("div", [low, scale])])],
                                       min=0.0, max=255.0))
    q = ctx.emit("add", [round_half_even(ctx, ctx.emit("div", [x, scale])), zp])
    return [_saturate(ctx, q, "u8"), scale, cast(ctx, zp, "u8")]


def _qlinear_matmul(ctx, node):
    """(a - a_zp) @ (b - b_zp) * (a_scale * b_scale / y_scale) + y_zp, rounded and saturated."""
    a, b = ctx.input(node, 0), ctx.input(node, 3)
    target = ctx.input(node, 7).type.dtype if node.has(7) else a.type.dtype
    if target not in _RANGES or a.type.ndim < 2 or b.type.ndim < 2:
        raise unsupported(node, f"QLinearMatMul to {target} of {a.type} and {b.type}")

    def centered(v, zp_index: int, axis: int):
        wide = cast(ctx, v, "f64")
        if not node.has(zp_index):
            return wide
        zp = ctx.input(node, zp_index)
        if zp.type.numel > 1:
            shape = [1] * v.type.ndim
            shape[axis] = zp.type.numel
            zp = ctx.emit("reshape", [zp], shape=tuple(shape))
        return ctx.emit("sub", [wide, cast(ctx, zp, "f64")])

    product = ctx.emit("matmul", [centered(a, 2, a.type.ndim - 2), centered(b, 5, b.type.ndim - 1)])
    scale = ctx.emit("div", [ctx.emit("mul", [cast(ctx, ctx.input(node, 1), "f64"),
                                              cast(ctx, ctx.input(node, 4), "f64")]),
                             cast(ctx, ctx.input(node, 6), "f64")])
    if scale.type.numel > 1:
        scale = ctx.emit("reshape", [scale], shape=(scale.type.numel,)) \
            if scale.type.ndim != 1 else scale
    y = round_half_even(ctx, ctx.emit("mul", [product, scale]))
    if node.has(7):
        y = ctx.emit("add", [y, cast(ctx, ctx.input(node, 7), "f64")])
    return [_saturate(ctx, y, target)]



TABLE = [
    ("BitShift", (11, 28), _bitshift),
    ("QuantizeLinear", (10, 13, 19, 21, 23, 24, 25, 28), _quantize),
    ("DequantizeLinear", (10, 13, 19, 21, 23, 24, 25, 28), _dequantize),
    ("DynamicQuantizeLinear", (11,), _dynamic_quantize),
    ("QLinearMatMul", (10, 21), _qlinear_matmul),
]
