"""Declarations of the quantized ops: quantize, dequantize, dynamic_quantize, qlinear, qconv2d,
linear_int4. Their semantics are docs/quantized-ir.md; their numpy reference is
`kernels/reference_quant.py`.

The declarations live apart from `compiler/ops.py` only to keep that file's size in check; they
are built from its pieces (`OpDef`, `AttrSpec`, `epilogue_types`, the conv2d shape rule and the
FLOP functions), and `fxforge.ops` adds `declarations()` to its registry `OPS` at the end of
its module. The two modules import each other, so this one reads `fxforge.ops` only inside
functions: either may then be imported first.

Inference is strict on purpose: the attributes are the source of truth for execution, so every
quantization parameter is checked where it is given (finite scales > 0, also as float32; zero
points in int8's range), and an int8 input's type `quant`, where present, must agree with the
attributes that read it. Epilogues must stay float32 from end to end, since the requantization
and the bit-exactness contract are written for float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fxforge.ir import Attrs, QuantParams, TensorType
from fxforge.kernels import reference_quant as rq
from fxforge.shapes import OpTypeError
from fxforge.symdims import static

if TYPE_CHECKING:
    from fxforge.ops import OpDef

Types = Sequence[TensorType]


def per_tensor(scale: float, zero_point: int) -> QuantParams:
    """The `quant` of a per-tensor int8 value (what quantize and requantizing ops give)."""
    return QuantParams((scale,), (zero_point,), None)


# ---------------------------------------------------------------------------------------------
# Checks shared by the rules; each message names the op and the attribute or input at fault


def _fmt(t: TensorType) -> str:
    from fxforge.printer import format_type

    return format_type(TensorType(t.shape, t.dtype))


def _input(op: str, name: str, t: TensorType, dtype: str, shape: tuple[int, ...] | None = None,
           ) -> None:
    if t.dtype != dtype or (shape is not None and t.shape != tuple(shape)):
        want = dtype if shape is None else _fmt(TensorType(tuple(shape), dtype))
        raise OpTypeError(f"{op}: input {name} must be {want}, got {_fmt(t)}")


def _scale(op: str, name: str, value: Any) -> float:
    ok = isinstance(value, float) and math.isfinite(value) and value > 0
    if ok:
        with np.errstate(over="ignore", under="ignore"):
            f = np.float32(value)
        ok = bool(np.isfinite(f) and f > 0)
    if not ok:
        raise OpTypeError(f"{op}: attribute {name} must be a finite float > 0 (also as a "
                          f"float32), got {value!r}")
    return value


def _zero_point(op: str, name: str, value: int) -> int:
    if not -128 <= value <= 127:
        raise OpTypeError(f"{op}: attribute {name}={value} is not in the int8 range [-128, 127]")
    return value


def _agrees(op: str, name: str, t: TensorType, scale: float | None, zero_point: int) -> None:
    """An int8 input's `quant`, where present, must say what the attributes say."""
    if t.quant is None:
        return
    if scale is None:
        raise OpTypeError(f"{op}: input {name} has static quantization {t.quant} but the op is "
                          "dynamic (its scale is an input)")
    if t.quant != per_tensor(scale, zero_point):
        raise OpTypeError(f"{op}: input {name} has quantization scale={list(t.quant.scale)}, "
                          f"zero_point={list(t.quant.zero_point)}, axis={t.quant.axis}, but the "
                          f"attributes say scale={scale}, zero_point={zero_point}")


def _reduction_fits(op: str, k: int, x_zero_point: int) -> None:
    bound = rq.acc_bound(x_zero_point, k)
    if bound > rq.INT32_MAX:
        raise OpTypeError(f"{op}: a reduction over {k} products can reach {bound}, past the int32 "
                          "accumulator's range")


# ---------------------------------------------------------------------------------------------
# quantize, dequantize, dynamic_quantize


def _quantize(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _input("quantize", "x", ins[0], "f32")
    scale = _scale("quantize", "scale", attrs["scale"])
    zp = _zero_point("quantize", "zero_point", attrs["zero_point"])
    return (TensorType(ins[0].shape, "i8", per_tensor(scale, zp)),)


def _dequantize(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _input("dequantize", "q", ins[0], "i8")
    scale = _scale("dequantize", "scale", attrs["scale"])
    zp = _zero_point("dequantize", "zero_point", attrs["zero_point"])
    _agrees("dequantize", "q", ins[0], scale, zp)
    return (TensorType(ins[0].shape, "f32"),)


def dynamic_scale_shape(shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """The shape of dynamic_quantize's scale output: keepdims over the last dim or all dims."""
    return (*shape[:-1], 1) if mode == "row" else (1,) * len(shape)


def _dynamic_quantize(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, mode = ins[0], attrs["mode"]
    _input("dynamic_quantize", "x", x, "f32")
    if mode not in ("row", "tensor"):
        raise OpTypeError(f"dynamic_quantize: attribute mode must be 'row' or 'tensor', got "
                          f"{mode!r}")
    if mode == "row" and x.ndim == 0:
        raise OpTypeError("dynamic_quantize: mode 'row' needs an input of rank >= 1")
    return TensorType(x.shape, "i8"), TensorType(dynamic_scale_shape(x.shape, mode), "f32")


def _elementwise_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return ins[0].numel


# ---------------------------------------------------------------------------------------------
# qlinear, qconv2d: shared quantization attributes and the float epilogue


def base_inputs(attrs: Attrs) -> int:
    """How many inputs come before the epilogue operands: x, weight, w_scale, then bias (if
    has_bias), then x_scale (if dynamic)."""
    return 3 + attrs["has_bias"] + attrs["dynamic"]


def _q_attrs(op: str, ins: Types, attrs: Attrs) -> QuantParams | None:
    """Check the quantization attributes and x, weight, w_scale; the output's quant."""
    n = base_inputs(attrs)
    if len(ins) < n:
        raise OpTypeError(f"{op} with has_bias={attrs['has_bias']}, dynamic={attrs['dynamic']} "
                          f"needs at least {n} inputs, got {len(ins)}")
    _input(op, "x", ins[0], "i8")
    _input(op, "weight", ins[1], "i8")
    if attrs["w_bits"] not in (7, 8):
        raise OpTypeError(f"{op}: attribute w_bits must be 7 or 8, got {attrs['w_bits']!r}")
    x_zp = _zero_point(op, "x_zero_point", attrs["x_zero_point"])
    if attrs["dynamic"]:
        if attrs["x_scale"] is not None:
            raise OpTypeError(f"{op}: attribute x_scale must be none when dynamic (the scale is "
                              f"input {n - 1})")
        if x_zp != 0:
            raise OpTypeError(f"{op}: attribute x_zero_point must be 0 when dynamic (dynamic "
                              f"quantization is symmetric), got {x_zp}")
        _agrees(op, "x", ins[0], None, 0)
    else:
        if attrs["x_scale"] is None:
            raise OpTypeError(f"{op}: attribute x_scale is required unless dynamic")
        _agrees(op, "x", ins[0], _scale(op, "x_scale", attrs["x_scale"]), x_zp)
    out_dtype = attrs["out_dtype"]
    if out_dtype == "f32":
        if attrs["out_scale"] is not None or attrs["out_zero_point"] != 0:
            raise OpTypeError(f"{op}: attributes out_scale / out_zero_point are only for "
                              "out_dtype i8")
        return None
    if out_dtype != "i8":
        raise OpTypeError(f"{op}: attribute out_dtype must be f32 or i8, got {out_dtype}")
    if attrs["out_scale"] is None:
        raise OpTypeError(f"{op}: attribute out_scale is required with out_dtype i8")
    return per_tensor(_scale(op, "out_scale", attrs["out_scale"]),
                      _zero_point(op, "out_zero_point", attrs["out_zero_point"]))


def _channel_inputs(op: str, ins: Types, attrs: Attrs, channels: int) -> None:
    _input(op, "w_scale", ins[2], "f32", (channels,))
    if attrs["has_bias"]:
        _input(op, "bias", ins[3], "f32", (channels,))


def _epilogue_stages(op: str, base: TensorType, ins: Types, attrs: Attrs) -> list[TensorType]:
    """The float32 value after the bias and after each epilogue step (`ops.epilogue_types`).
    Steps may only read the epilogue operands (f32 inputs after the base inputs)."""
    from fxforge.ops import epilogue_types  # see the module docstring

    n = base_inputs(attrs)
    for i, t in enumerate(ins[n:], n):
        _input(op, f"{i} (an epilogue operand)", t, "f32")
    epilogue = attrs["epilogue"]
    for k, step in enumerate(epilogue if isinstance(epilogue, tuple) else ()):
        operand = step.get("operand") if isinstance(step, Mapping) else None
        if isinstance(operand, int) and operand < n:
            raise OpTypeError(f"{op}: epilogue step {k} reads input {operand}, which is not an "
                              f"epilogue operand (those start at input {n})")
    stages = epilogue_types(base, ins, epilogue)
    for k, (step, t) in enumerate(zip(epilogue, stages[1:])):
        if t.dtype != "f32":
            raise OpTypeError(f"{op}: epilogue step {k} ({step['op']}) gives {t.dtype}; the "
                              "epilogue must stay f32")
    return stages


def _out(op: str, base: TensorType, ins: Types, attrs: Attrs, quant: QuantParams | None):
    _epilogue_stages(op, base, ins, attrs)
    return (TensorType(base.shape, attrs["out_dtype"], quant),)


def _qlinear(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    quant = _q_attrs("qlinear", ins, attrs)
    x, w = ins[0], ins[1]
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise OpTypeError(f"qlinear: input x {_fmt(x)} does not match weight {_fmt(w)} "
                          "(x [..., K], weight [N, K])")
    _reduction_fits("qlinear", static(w.shape[1], "qlinear", "the weight's K"),
                    attrs["x_zero_point"])
    n_out = w.shape[0]
    _channel_inputs("qlinear", ins, attrs, n_out)
    if attrs["dynamic"]:
        _input("qlinear", "x_scale", ins[3 + attrs["has_bias"]], "f32", (*x.shape[:-1], 1))
    base = TensorType((*x.shape[:-1], n_out), "f32")
    return _out("qlinear", base, ins, attrs, quant)


def _qconv2d(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    from fxforge.ops import _conv2d  # the float op's shape rule; see the module docstring

    quant = _q_attrs("qconv2d", ins, attrs)
    try:
        (conv,) = _conv2d(ins[:2], attrs)
    except OpTypeError as e:
        raise OpTypeError(f"qconv2d: {e}") from None
    w = ins[1]
    _reduction_fits("qconv2d", w.shape[1] * w.shape[2] * w.shape[3], attrs["x_zero_point"])
    _channel_inputs("qconv2d", ins, attrs, w.shape[0])
    if attrs["dynamic"]:
        _input("qconv2d", "x_scale", ins[3 + attrs["has_bias"]], "f32", (1, 1, 1, 1))
    return _out("qconv2d", TensorType(conv.shape, "f32"), ins, attrs, quant)


def _q_flops(base: str):
    """The float op's FLOPs plus one per element per epilogue step (as the fused ops count)."""

    def flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
        from fxforge import ops  # see the module docstring

        base_flops = {"linear": ops._linear_flops, "conv2d": ops._conv2d_flops}[base]
        return base_flops(ins[:2], outs, attrs) + outs[0].numel * len(attrs["epilogue"])

    return flops


# ---------------------------------------------------------------------------------------------
# linear_int4


def _linear_int4(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    op, gs = "linear_int4", attrs["group_size"]
    if len(ins) != 3 + attrs["has_bias"]:
        raise OpTypeError(f"{op} with has_bias={attrs['has_bias']} takes "
                          f"{3 + attrs['has_bias']} inputs, got {len(ins)}")
    x, packed = ins[0], ins[1]
    _input(op, "x", x, "f32")
    _input(op, "packed", packed, "u8")
    if x.ndim < 1 or packed.ndim != 2:
        raise OpTypeError(f"{op}: input x must be [..., K] and packed [N, K/2], got {_fmt(x)} "
                          f"and {_fmt(packed)}")
    k = static(x.shape[-1], op, "the input features (last dim of x)")
    n = static(packed.shape[0], op, "the output features")
    if gs < 2 or gs % 2 or k % gs:
        raise OpTypeError(f"{op}: attribute group_size={gs} must be even and divide K = {k}")
    _input(op, "packed", packed, "u8", (n, k // 2))
    _input(op, "scales", ins[2], "f32", (n, k // gs))
    if attrs["has_bias"]:
        _input(op, "bias", ins[3], "f32", (n,))
    return (TensorType((*x.shape[:-1], n), "f32"),)


def _linear_int4_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    from fxforge.ops import _linear_flops  # see the module docstring

    x, packed = ins[0], ins[1]
    return _linear_flops([x, TensorType((packed.shape[0], x.shape[-1]), "f32")], outs, attrs)


# ---------------------------------------------------------------------------------------------
# Declarations

def declarations() -> list[OpDef]:
    """The OpDefs of the quantized ops, for `fxforge.ops.OPS`."""
    from fxforge.ops import AttrSpec, OpDef  # see the module docstring

    q_attrs = {
        "has_bias": AttrSpec("bool"),
        "dynamic": AttrSpec("bool", False),
        "x_scale": AttrSpec("float", None, optional=True),
        "x_zero_point": AttrSpec("int", 0),
        "out_dtype": AttrSpec("dtype", "f32"),
        "out_scale": AttrSpec("float", None, optional=True),
        "out_zero_point": AttrSpec("int", 0),
        "epilogue": AttrSpec("any", ()),
        "w_bits": AttrSpec("int", 8),
    }
    conv_attrs = {
        "stride": AttrSpec("ints", (1, 1)),
        "padding": AttrSpec("ints", (0, 0)),
        "dilation": AttrSpec("ints", (1, 1)),
        "groups": AttrSpec("int", 1),
    }

    return [
        OpDef("quantize", 1, 1, {"scale": AttrSpec("float"), "zero_point": AttrSpec("int")},
              _quantize, rq.quantize, "quant", _elementwise_flops,
              "f32 -> i8: clip(rint(x / scale) + zero_point, -128, 127), float32, half to even."),
        OpDef("dequantize", 1, 1, {"scale": AttrSpec("float"), "zero_point": AttrSpec("int")},
              _dequantize, rq.dequantize, "quant", _elementwise_flops,
              "i8 -> f32: f32(int32(q) - zero_point) * scale."),
        OpDef("dynamic_quantize", 1, 1, {"mode": AttrSpec("str")}, _dynamic_quantize,
              rq.dynamic_quantize, "quant", _elementwise_flops,
              "f32 -> (i8, f32 scale): symmetric, scale = max|x| / 127 per row (last dim) or per "
              "tensor, kept dims; an all-zero row gets scale 1."),
        OpDef("qlinear", 3, None, q_attrs, _qlinear, rq.qlinear, "compute", _q_flops("linear"),
              "int8 linear, exact int32 accumulator, float32 epilogue. Inputs: x i8 [..., K], "
              "weight i8 [N, K], w_scale f32 [N], bias (if has_bias), x_scale f32 [..., 1] (if "
              "dynamic), then epilogue operands. out_dtype i8 requantizes with out_scale."),
        OpDef("qconv2d", 3, None, {**conv_attrs, **q_attrs}, _qconv2d, rq.qconv2d, "compute",
              _q_flops("conv2d"),
              "int8 conv2d (NCHW), x padded with its zero point; then as qlinear on channel "
              "axis 1. Inputs: x, weight i8 [Cout, Cin/groups, kh, kw], w_scale f32 [Cout], bias?, "
              "x_scale f32 [1, 1, 1, 1] (if dynamic), then epilogue operands."),
        OpDef("linear_int4", 3, 4, {"group_size": AttrSpec("int"), "has_bias": AttrSpec("bool")},
              _linear_int4, rq.linear_int4, "compute", _linear_int4_flops,
              "Weight-only int4 linear. Inputs: x f32 [..., K], packed u8 [N, K/2] (two int4 + 8 "
              "per byte, low nibble first), scales f32 [N, K/group_size], bias?."),
    ]
