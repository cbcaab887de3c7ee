"""ONNX converters: shared helpers, and the elementwise ops (math, comparisons, logic;
the activations are `onnx_converters_activation.py`).

A converter is `fn(ctx, node) -> [result per ONNX output]`, where a result is an IR `Value`,
a numpy array (a value known at import time, such as a `Shape`), or None for an optional output
that is not produced. `ctx` is `onnx_import.ImportContext`; `node` is `onnx_import.OnnxNode`.
Converters only emit IR ops that exist (`compiler/ops.py`): an ONNX op the IR lacks is built from
several (Floor from casts, Elu from where/exp), the way `aten_decompose.py` does for aten ops.

ONNX types results by its operands (`Div` of two int32s is an int32, `Pow` keeps the base's
type), where the IR follows torch's promotion; converters cast back where the two differ, and
the importer checks every result's dtype against the op's ONNX signature.

Each `TABLE` row is (op_type, the ONNX versions of the op the converter implements, converter);
`onnx_import` assembles the rows of every converter module into one lookup table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fxforge import dtypes
from fxforge.ir import Value
from fxforge.onnx_safety import UnsupportedOnnxError

if TYPE_CHECKING:
    from fxforge.onnx_import import ImportContext, OnnxNode


# ---------------------------------------------------------------------------------------------
# Helpers shared by the converter modules


def unsupported(node: OnnxNode, reason: str) -> UnsupportedOnnxError:
    """The error of a converter that cannot express this use of its op (names the node)."""
    return UnsupportedOnnxError(f"{node.describe()}: {reason}",
                                ops={node.op_type: [node.name or f"#{node.index}"]})


def is_float(v: Value) -> bool:
    return dtypes.is_float(v.type.dtype)


def cast(ctx: ImportContext, v: Value, dtype: str) -> Value:
    return v if v.type.dtype == dtype else ctx.emit("cast", [v], dtype=dtype)


def like(ctx: ImportContext, x: Any, v: Value) -> Value:
    """A 0-d constant of v's dtype (ONNX operands share one type; a python float against an
    f16 tensor must be an f16 too)."""
    return ctx.scalar(x, v.type.dtype)


def ints(array: np.ndarray | Sequence[int], node: OnnxNode, what: str) -> tuple[int, ...]:
    """An integer list from a constant input or attribute."""
    a = np.asarray(array)
    if a.dtype.kind not in "iu":
        raise unsupported(node, f"the {what} must be integers, got {a.dtype}")
    return tuple(int(x) for x in a.reshape(-1))


def axis_of(node: OnnxNode, axis: int, ndim: int, what: str = "axis") -> int:
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise unsupported(node, f"{what} {axis} is out of range for rank {ndim}")
    return axis % max(ndim, 1)


def trunc(ctx: ImportContext, x: Value) -> Value:
    """Round toward zero, exactly: through int64 and back where |x| is small enough to have a
    fraction (larger floats, infinities and NaN are their own truncation)."""
    big = {"f16": 2.0**10, "f32": 2.0**23}.get(x.type.dtype, 2.0**52)
    t = cast(ctx, ctx.emit("cast", [x], dtype="i64"), x.type.dtype)
    small = ctx.emit("lt", [ctx.emit("abs", [x]), like(ctx, big, x)])
    return ctx.emit("where", [small, t, x])


def floor(ctx: ImportContext, x: Value) -> Value:
    t = trunc(ctx, x)
    return ctx.emit("sub", [t, cast(ctx, ctx.emit("lt", [x, t]), x.type.dtype)])


def ceil(ctx: ImportContext, x: Value) -> Value:
    t = trunc(ctx, x)
    return ctx.emit("add", [t, cast(ctx, ctx.emit("gt", [x, t]), x.type.dtype)])


def softplus(ctx: ImportContext, x: Value) -> Value:
    """log(1 + exp(x)) as relu(x) + log(1 + exp(-|x|)): no overflow for large x."""
    tail = ctx.emit("exp", [ctx.emit("neg", [ctx.emit("abs", [x])])])
    tail = ctx.emit("log", [ctx.emit("add", [tail, like(ctx, 1.0, x)])])
    return ctx.emit("add", [ctx.emit("relu", [x]), tail])


# ---------------------------------------------------------------------------------------------
# Elementwise, one input


def unary(op: str):
    def convert(ctx, node):
        return [ctx.emit(op, [ctx.input(node, 0)])]

    return convert


def float_unary(build):
    """An op ONNX defines on floats only, built from IR ops by `build(ctx, x, node)`."""

    def convert(ctx, node):
        x = ctx.input(node, 0)
        if not is_float(x):
            raise unsupported(node, f"{node.op_type} of {x.type.dtype}")
        return [build(ctx, x, node)]

    return convert


def _reciprocal(ctx, x, node):
    return ctx.emit("div", [like(ctx, 1.0, x), x])


def round_half_even(ctx: ImportContext, x: Value) -> Value:
    """Round half to even: r = floor(x + 0.5), minus one where x was a tie and r is odd."""
    r = floor(ctx, ctx.emit("add", [x, like(ctx, 0.5, x)]))
    tie = ctx.emit("eq", [ctx.emit("sub", [r, x]), like(ctx, 0.5, x)])
    half = floor(ctx, ctx.emit("mul", [r, like(ctx, 0.5, x)]))
    odd = ctx.emit("ne", [ctx.emit("mul", [half, like(ctx, 2.0, x)]), r])
    fix = ctx.emit("bitwise_and", [tie, odd])
    r = ctx.emit("where", [fix, ctx.emit("sub", [r, like(ctx, 1.0, x)]), r])
    big = {"f16": 2.0**10, "f32": 2.0**23}.get(x.type.dtype, 2.0**52)
    small = ctx.emit("lt", [ctx.emit("abs", [x]), like(ctx, big, x)])
    return ctx.emit("where", [small, r, x])


def _sign(ctx, node):
    x = ctx.input(node, 0)
    zero, one = like(ctx, 0, x), like(ctx, 1, x)
    if x.type.dtype in ("u8", "bool"):
        return [ctx.emit("where", [ctx.emit("gt", [x, zero]), one, zero])]
    minus = like(ctx, -1, x)
    inner = ctx.emit("where", [ctx.emit("lt", [x, zero]), minus, zero])
    return [ctx.emit("where", [ctx.emit("gt", [x, zero]), one, inner])]


def _exps(ctx, x):
    return ctx.emit("exp", [x]), ctx.emit("exp", [ctx.emit("neg", [x])])


def _sinh(ctx, x, node):
    a, b = _exps(ctx, x)
    return ctx.emit("mul", [ctx.emit("sub", [a, b]), like(ctx, 0.5, x)])


def _cosh(ctx, x, node):
    a, b = _exps(ctx, x)
    return ctx.emit("mul", [ctx.emit("add", [a, b]), like(ctx, 0.5, x)])


def _asinh(ctx, x, node):
    root = ctx.emit("sqrt", [ctx.emit("add", [ctx.emit("mul", [x, x]), like(ctx, 1.0, x)])])
    return ctx.emit("log", [ctx.emit("add", [x, root])])


def _acosh(ctx, x, node):
    root = ctx.emit("sqrt", [ctx.emit("sub", [ctx.emit("mul", [x, x]), like(ctx, 1.0, x)])])
    return ctx.emit("log", [ctx.emit("add", [x, root])])


def _atanh(ctx, x, node):
    one = like(ctx, 1.0, x)
    ratio = ctx.emit("div", [ctx.emit("add", [one, x]), ctx.emit("sub", [one, x])])
    return ctx.emit("mul", [ctx.emit("log", [ratio]), like(ctx, 0.5, x)])


def _tan(ctx, x, node):
    return ctx.emit("div", [ctx.emit("sin", [x]), ctx.emit("cos", [x])])


def _isnan(ctx, node):
    x = ctx.input(node, 0)
    return [ctx.emit("ne", [x, x])]


def _isinf(ctx, node):
    x = ctx.input(node, 0)
    pos = ctx.emit("eq", [x, like(ctx, math.inf, x)])
    neg = ctx.emit("eq", [x, like(ctx, -math.inf, x)])
    want_pos, want_neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    if want_pos and want_neg:
        return [ctx.emit("bitwise_or", [pos, neg])]
    if want_pos:
        return [pos]
    if want_neg:
        return [neg]
    return [ctx.emit("bitwise_and", [pos, neg])]  # never both: all false


# ---------------------------------------------------------------------------------------------
# Elementwise, broadcasting


def _binary(op: str):
    def convert(ctx, node):
        return [ctx.emit(op, [ctx.input(node, 0), ctx.input(node, 1)])]

    return convert


def int_divide(ctx: ImportContext, a: Value, b: Value) -> Value:
    """Integer division truncating toward zero (C's), through float64: exact while the
    operands fit its 53-bit mantissa."""
    q = ctx.emit("div", [cast(ctx, a, "f64"), cast(ctx, b, "f64")])
    return ctx.emit("cast", [q], dtype=a.type.dtype)


def _div(ctx, node):
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    if is_float(a):
        return [ctx.emit("div", [a, b])]
    return [int_divide(ctx, a, b)]


def _pow(ctx, node):
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    return [cast(ctx, ctx.emit("pow", [a, b]), a.type.dtype)]


def _mod(ctx, node):
    """fmod=1: a - trunc(a / b) * b (C's fmod); fmod=0: a - floor(a / b) * b (python's %,
    the sign of b). Integers go through `int_divide` and exact integer products; floats
    compute in float64."""
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    fmod = node.attr("fmod", 0)
    if fmod not in (0, 1):
        raise unsupported(node, f"fmod={fmod}")
    dtype = a.type.dtype
    if not is_float(a):
        r = ctx.emit("sub", [a, ctx.emit("mul", [int_divide(ctx, a, b), b])])
        if fmod == 1:
            return [r]
        zero = like(ctx, 0, r)
        differ = ctx.emit("ne", [ctx.emit("lt", [r, zero]), ctx.emit("lt", [b, zero])])
        fix = ctx.emit("bitwise_and", [ctx.emit("ne", [r, zero]), differ])
        return [ctx.emit("where", [fix, ctx.emit("add", [r, b]), r])]
    if fmod == 0 and ctx.opset < 28:
        raise unsupported(node, "Mod with fmod=0 of floats (ONNX allows it from opset 28)")
    a64, b64 = cast(ctx, a, "f64"), cast(ctx, b, "f64")
    q = ctx.emit("div", [a64, b64])
    q = trunc(ctx, q) if fmod == 1 else floor(ctx, q)
    r = ctx.emit("sub", [a64, ctx.emit("mul", [q, b64])])
    b_inf = ctx.emit("eq", [ctx.emit("abs", [b64]), like(ctx, math.inf, b64)])
    a_finite = ctx.emit("lt", [ctx.emit("abs", [a64]), like(ctx, math.inf, a64)])
    if fmod == 1:  # fmod(x, +-inf) is x
        r = ctx.emit("where", [ctx.emit("bitwise_and", [b_inf, a_finite]), a64, r])
        return [cast(ctx, r, dtype)]
    # python's %: x % +-inf is x when the signs agree, else the infinity; a zero result takes
    # the divisor's sign (-0.0 counts as negative, through 1 / b)
    zero = like(ctx, 0.0, a64)
    b_negative = ctx.emit("bitwise_or", [ctx.emit("lt", [b64, zero]), ctx.emit(
        "lt", [ctx.emit("div", [like(ctx, 1.0, b64), b64]), zero])])
    agree = ctx.emit("eq", [ctx.emit("lt", [a64, zero]), b_negative])
    finite_case = ctx.emit("bitwise_and", [ctx.emit("bitwise_and", [b_inf, a_finite]),
                                           ctx.emit("ne", [a64, zero])])
    r = ctx.emit("where", [finite_case, ctx.emit("where", [agree, a64, b64]), r])
    signed_zero = ctx.emit("where", [b_negative, like(ctx, -0.0, a64), zero])
    r = ctx.emit("where", [ctx.emit("eq", [r, zero]), signed_zero, r])
    return [cast(ctx, r, dtype)]


def _variadic(op: str, mean: bool = False):
    """Max, Min, Sum, Mean over any number of broadcasting inputs."""

    def convert(ctx, node):
        values = [ctx.input(node, i) for i in range(len(node.inputs)) if node.has(i)]
        if not values:
            raise unsupported(node, "no inputs")
        out = values[0]
        for v in values[1:]:
            out = ctx.emit(op, [out, v])
        if mean:
            out = ctx.emit("div", [out, like(ctx, len(values), out)])
        return [out if out is not values[0] else ctx.emit("identity", [out])]

    return convert


def _where(ctx, node):
    return [ctx.emit("where", [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)])]


def _clip(ctx, node):
    """Constant bounds become one clamp (bounds an integer type cannot exceed are dropped);
    bounds computed at run time a maximum and a minimum."""
    x = ctx.input(node, 0)
    bounds: list[float | None] = [None, None]
    out = x
    for k, (i, op) in enumerate(((1, "maximum"), (2, "minimum"))):
        if not node.has(i):
            continue
        array = ctx.const_input(node, i)
        if array is None:
            out = ctx.emit(op, [out, ctx.input(node, i)])
            continue
        if array.size != 1:
            raise unsupported(node, f"a {array.size}-element bound")
        value = array.reshape(()).item()
        if not is_float(x):
            info = np.iinfo(dtypes.to_numpy(x.type.dtype)) if x.type.dtype != "bool" else None
            if info is not None and (value <= info.min if k == 0 else value >= info.max):
                continue
        bounds[k] = float(value)
    if bounds != [None, None]:
        out = ctx.emit("clamp", [out], min=bounds[0], max=bounds[1])
    return [out if out is not x else ctx.emit("identity", [x])]


TABLE = [
    ("Abs", (6, 13), unary("abs")),
    ("Neg", (6, 13), unary("neg")),
    ("Relu", (6, 13, 14), unary("relu")),
    ("Sigmoid", (6, 13), unary("sigmoid")),
    ("Tanh", (6, 13), unary("tanh")),
    ("Exp", (6, 13), unary("exp")),
    ("Log", (6, 13), unary("log")),
    ("Sqrt", (6, 13), unary("sqrt")),
    ("Erf", (9, 13), unary("erf")),
    ("Sin", (7, 22), unary("sin")),
    ("Cos", (7, 22), unary("cos")),
    ("Not", (1,), unary("bitwise_not")),
    ("BitwiseNot", (18,), unary("bitwise_not")),
    ("Reciprocal", (6, 13), float_unary(_reciprocal)),
    ("Floor", (6, 13), float_unary(lambda ctx, x, node: floor(ctx, x))),
    ("Ceil", (6, 13), float_unary(lambda ctx, x, node: ceil(ctx, x))),
    ("Round", (11, 22), float_unary(lambda ctx, x, node: round_half_even(ctx, x))),
    ("Sign", (9, 13), _sign),
    ("Tan", (7, 22), float_unary(_tan)),
    ("Sinh", (9, 22), float_unary(_sinh)),
    ("Cosh", (9, 22), float_unary(_cosh)),
    ("Asinh", (9, 22), float_unary(_asinh)),
    ("Acosh", (9, 22), float_unary(_acosh)),
    ("Atanh", (9, 22), float_unary(_atanh)),
    ("IsNaN", (9, 13, 20), _isnan),
    ("IsInf", (10, 20), _isinf),
    ("Add", (7, 13, 14), _binary("add")),
    ("Sub", (7, 13, 14), _binary("sub")),
    ("Mul", (7, 13, 14), _binary("mul")),
    ("Div", (7, 13, 14), _div),
    ("Pow", (7, 12, 13, 15), _pow),
    ("Mod", (10, 13, 28), _mod),
    ("Max", (8, 12, 13), _variadic("maximum")),
    ("Min", (8, 12, 13), _variadic("minimum")),
    ("Sum", (8, 13), _variadic("add")),
    ("Mean", (8, 13), _variadic("add", mean=True)),
    ("Equal", (11, 13, 19), _binary("eq")),
    ("Greater", (9, 13), _binary("gt")),
    ("Less", (9, 13), _binary("lt")),
    ("GreaterOrEqual", (12, 16), _binary("ge")),
    ("LessOrEqual", (12, 16), _binary("le")),
    ("And", (7,), _binary("bitwise_and")),
    ("Or", (7,), _binary("bitwise_or")),
    ("Xor", (7,), _binary("bitwise_xor")),
    ("BitwiseAnd", (18,), _binary("bitwise_and")),
    ("BitwiseOr", (18,), _binary("bitwise_or")),
    ("BitwiseXor", (18,), _binary("bitwise_xor")),
    ("Where", (9, 16), _where),
    ("Clip", (11, 12, 13), _clip),
]
