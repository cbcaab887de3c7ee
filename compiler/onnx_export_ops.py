"""One ONNX converter per IR op (`CONVERTERS`), for `fxforge.onnx_export`.

A converter takes the emitter, its inputs as `Arg`s (ONNX name, IR type, array if constant),
the node's attributes and its output types, and returns one ONNX name per output. It must
compute what the op's numpy reference computes: torch's type promotion becomes explicit Casts
(ONNX ops take one dtype), torch's clamping of slice bounds and pooling's ceil mode become
explicit bounds and pads, fused ops expand step by step through the same table.

`_GAPS` lists the dtypes onnxruntime's CPU kernels lack for an ONNX op (measured with 1.32):
those compute in a wider dtype and cast back, which gives the same values (float64 Erf and
HardSigmoid, which it has no kernel for, compute in float32).

Known differences from the reference: onnxruntime's ReduceMax / ReduceMin / ArgMax / ArgMin
do not let a NaN win as torch does (amax of [1, nan] is 1 there), and TopK orders NaN its own
way; finite inputs agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fxforge import dtypes, ops
from fxforge.ir import Attrs, Graph, Node, TensorType
from fxforge.kernels import reference as ref
from fxforge.onnx_export import ONNX_DTYPES, Arg, Emitter
from fxforge.shapes import broadcast

Converter = Callable[[Emitter, list[Arg], Attrs, list[TensorType]], list[str]]

_GAPS: dict[str, dict[str, str]] = {  # ONNX op -> {dtype onnxruntime lacks: dtype to use}
    "Max": {"i16": "i32"}, "Min": {"i16": "i32"},
    "Pow": {"u8": "i32", "i8": "i32", "i16": "i32"},
    "Neg": {"u8": "i32"},
    "ArgMax": {"i16": "i32", "bool": "u8"}, "ArgMin": {"i16": "i32", "bool": "u8"},
    "ReduceMax": {"i16": "i32", "bool": "u8"}, "ReduceMin": {"i16": "i32", "bool": "u8"},
    "Erf": {"f64": "f32"}, "HardSigmoid": {"f64": "f32"},
    "Less": {"bool": "u8"}, "LessOrEqual": {"bool": "u8"},
    "Greater": {"bool": "u8"}, "GreaterOrEqual": {"bool": "u8"},
    "TopK": {"bool": "i32", "u8": "i32", "i8": "i32", "i16": "i32"},
    "Where": {"i8": "i32", "i16": "i32"},
    "Clip": {"i16": "i32", "bool": "u8"}, "Abs": {"bool": "u8"}, "Pad": {"i16": "i32"},
    "MaxPool": {"i16": "f32", "i32": "f64", "i64": "f64"},  # exact below 2**53
}


def run(ctx: Emitter, op_type: str, names: list[str], dtype: str, same_out: bool = True,
        extra: tuple[str, ...] = (), **attrs: Any) -> str:
    """`op_type` on data inputs `names` of `dtype` (then `extra` inputs: axes, k), widened
    where onnxruntime has no kernel; `same_out`: the result has that dtype too (cast back)."""
    wide = _GAPS.get(op_type, {}).get(dtype)
    if wide is None:
        return ctx.op(op_type, [*names, *extra], **attrs)
    out = ctx.op(op_type, [*(ctx.cast(n, dtype, wide) if n else n for n in names), *extra],
                 **attrs)
    return ctx.cast(out, wide, dtype) if same_out else out


def _x(ctx: Emitter, a: Arg, dtype: str) -> str:
    """`a` in `dtype`: a constant is converted here (numpy's conversion is torch's), else Cast.
    (onnxruntime drops a float32 -> float16 -> float32 pair of Casts, the rounding with it.)"""
    if a.type.dtype == dtype:
        return a.name
    if a.const is not None:
        return ctx.const(a.const.astype(dtypes.to_numpy(dtype)))
    return ctx.cast(a.name, a.type.dtype, dtype)


def _shape_of(ctx: Emitter, name: str, have: TensorType, want: tuple[int, ...]) -> str:
    return name if have.shape == want else ctx.op("Reshape", [name, ctx.i64(want)],
                                                  allowzero=1 if 0 in want else None)


# --- elementwise --------------------------------------------------------------------------------


def _same(ctx, ins, attrs, outs):
    return [ins[0].name]


def _unary(op_type: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        d = outs[0].dtype
        return [run(ctx, op_type, [_x(ctx, ins[0], d)], d)]
    return convert


def _relu(ctx, ins, attrs, outs):
    d = outs[0].dtype
    if dtypes.is_float(d):
        return [ctx.op("Relu", [ins[0].name])]
    if d == "bool":  # max(x, false)
        return [ins[0].name]
    return [run(ctx, "Max", [ins[0].name, ctx.scalar(0, d)], d)]


def _clamp(ctx, ins, attrs, outs):
    d = outs[0].dtype
    bounds = [b if b is None or dtypes.is_float(d) else int(b) for b in (attrs["min"],
                                                                          attrs["max"])]
    names = [_x(ctx, ins[0], d)] + ["" if b is None else ctx.scalar(b, d) for b in bounds]
    return [run(ctx, "Clip", names, d)] if any(b is not None for b in bounds) else [names[0]]


def _gelu(ctx, ins, attrs, outs):
    """Gelu from opset 20 (float32 / float16: onnxruntime runs its float64 body through Erf,
    which it has no float64 kernel for), else its formula, which the importer recognizes."""
    d, x = outs[0].dtype, ins[0].name
    if ctx.opset >= 20 and d in ("f16", "f32"):
        return [ctx.op("Gelu", [x], approximate=attrs["approximate"])]

    def c(v):
        return ctx.scalar(v, d)

    if attrs["approximate"] == "tanh":
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, c(0.044715)])])
        t = ctx.op("Tanh", [ctx.op("Mul", [inner, c(math.sqrt(2.0 / math.pi))])])
    else:
        t = run(ctx, "Erf", [ctx.op("Div", [x, c(math.sqrt(2.0))])], d)
    return [ctx.op("Mul", [ctx.op("Mul", [x, c(0.5)]), ctx.op("Add", [t, c(1.0)])])]


def _silu(ctx, ins, attrs, outs):
    return [ctx.op("Mul", [ins[0].name, ctx.op("Sigmoid", [ins[0].name])])]


def _hardsigmoid_of(ctx: Emitter, x: str, d: str) -> str:
    return run(ctx, "HardSigmoid", [x], d, alpha=1.0 / 6.0, beta=0.5)


def _hardsigmoid(ctx, ins, attrs, outs):
    return [_hardsigmoid_of(ctx, ins[0].name, outs[0].dtype)]


def _hardswish(ctx, ins, attrs, outs):
    x = ins[0].name
    return [ctx.op("Mul", [x, _hardsigmoid_of(ctx, x, outs[0].dtype)])]


def _rsqrt(ctx, ins, attrs, outs):
    return [ctx.op("Reciprocal", [ctx.op("Sqrt", [_x(ctx, ins[0], outs[0].dtype)])])]


def _bitwise_not(ctx, ins, attrs, outs):
    return [ctx.op("Not" if outs[0].dtype == "bool" else "BitwiseNot", [ins[0].name])]


def _cast(ctx, ins, attrs, outs):
    return [_x(ctx, ins[0], attrs["dtype"])]


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
          "maximum": "Max", "minimum": "Min"}
_BOOL_ARITH = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And"}


def _arith(name: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        d = outs[0].dtype
        if name == "pow" and _integer_exponent(ins, d):  # Pow takes it as it is (T2)
            return [ctx.op("Pow", [ins[0].name, ins[1].name])]
        a, b = (_x(ctx, i, d) for i in ins)
        if d == "bool" and name in _BOOL_ARITH:
            return [ctx.op(_BOOL_ARITH[name], [a, b])]
        if d == "bool":  # pow, sub: as numbers, nonzero is true
            got = run(ctx, _ARITH[name], [ctx.cast(n, d, "u8") for n in (a, b)], "u8")
            return [ctx.cast(got, "u8", d)]
        return [run(ctx, _ARITH[name], [a, b], d)]
    return convert


def _integer_exponent(ins, d: str) -> bool:
    """pow of a float base in the result's dtype by an int32 / int64 exponent: ONNX's Pow
    takes the exponent in its own type, so x ** 2 keeps its integer 2 through a round trip."""
    base, exponent = ins
    return (dtypes.is_float(d) and base.type.dtype == d
            and exponent.type.dtype in ("i32", "i64"))


_COMPARE = {"eq": ("Equal", False), "ne": ("Equal", True), "lt": ("Less", False),
            "le": ("LessOrEqual", False), "gt": ("Greater", False),
            "ge": ("GreaterOrEqual", False)}


def _compare(name: str) -> Converter:
    op_type, negate = _COMPARE[name]

    def convert(ctx, ins, attrs, outs):
        d = dtypes.promote([(i.type.dtype, i.type.ndim) for i in ins])
        r = run(ctx, op_type, [_x(ctx, i, d) for i in ins], d, same_out=False)
        return [ctx.op("Not", [r]) if negate else r]
    return convert


def _bitwise(name: str) -> Converter:
    logical, bitwise = {"bitwise_and": ("And", "BitwiseAnd"), "bitwise_or": ("Or", "BitwiseOr"),
                        "bitwise_xor": ("Xor", "BitwiseXor")}[name]

    def convert(ctx, ins, attrs, outs):
        d = outs[0].dtype
        return [ctx.op(logical if d == "bool" else bitwise, [_x(ctx, i, d) for i in ins])]
    return convert


def _where(ctx, ins, attrs, outs):
    d = outs[0].dtype
    wide = _GAPS["Where"].get(d, d)
    a, b = (ctx.cast(_x(ctx, i, d), d, wide) for i in ins[1:])
    return [ctx.cast(ctx.op("Where", [ins[0].name, a, b]), wide, d)]


# --- reductions and normalizations --------------------------------------------------------------


def _axes(t: TensorType, dims) -> list[int]:
    return sorted({d % t.ndim for d in dims}) if t.ndim else []


def _reduce(op_type: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        d, x = outs[0].dtype, ins[0]
        name, axes = _x(ctx, x, d), _axes(x.type, attrs["dims"])
        if not axes:
            return [name]
        return [run(ctx, op_type, [name], d, extra=(ctx.i64(axes),),
                    keepdims=int(attrs["keepdim"]))]
    return convert


def _arg_extreme(op_type: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        x, out, dim = ins[0], outs[0], attrs["dim"]
        if x.type.ndim == 0:
            return [ctx.const(np.zeros(out.shape, np.int64))]
        name, keep = x.name, int(attrs["keepdim"])
        if dim is None:
            name, dim, keep = ctx.op("Reshape", [name, ctx.i64([-1])]), 0, 0
        r = run(ctx, op_type, [name], x.type.dtype, same_out=False, axis=dim % x.type.ndim,
                keepdims=keep)
        return [r if attrs["dim"] is not None or not out.shape
                else ctx.op("Reshape", [r, ctx.i64(out.shape)])]
    return convert


def _topk(ctx, ins, attrs, outs):
    x = ins[0]
    if x.type.ndim == 0:
        return [x.name, ctx.const(np.zeros((), np.int64))]
    d = x.type.dtype
    wide = _GAPS["TopK"].get(d, d)
    values, index = ctx.op("TopK", [ctx.cast(x.name, d, wide), ctx.i64([attrs["k"]])], 2,
                           axis=attrs["dim"] % x.type.ndim, largest=int(attrs["largest"]),
                           sorted=1)
    return [ctx.cast(values, wide, d), index]


def _cumsum(ctx, ins, attrs, outs):
    x, out = ins[0], outs[0]
    name = _x(ctx, x, out.dtype)
    if x.type.ndim == 0:
        flat = ctx.op("CumSum", [ctx.op("Reshape", [name, ctx.i64([1])]), ctx.i64(0)])
        return [ctx.op("Reshape", [flat, ctx.i64([])])]
    return [ctx.op("CumSum", [name, ctx.i64(attrs["dim"] % x.type.ndim)])]


def _softmax(op_type: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        x = ins[0]
        if x.type.ndim == 0:
            flat = ctx.op(op_type, [ctx.op("Reshape", [x.name, ctx.i64([1])])], axis=0)
            return [ctx.op("Reshape", [flat, ctx.i64([])])]
        return [ctx.op(op_type, [x.name], axis=attrs["dim"] % x.type.ndim)]
    return convert


def _batch_norm(ctx, ins, attrs, outs):
    d = outs[0].dtype
    return [ctx.op("BatchNormalization", [_x(ctx, a, d) for a in ins], epsilon=attrs["eps"])]


def _layer_norm(ctx, ins, attrs, outs):
    d = outs[0].dtype
    return [ctx.op("LayerNormalization", [_x(ctx, a, d) for a in ins], axis=-ins[1].type.ndim,
                   epsilon=attrs["eps"])]


# --- compute ------------------------------------------------------------------------------------


def conv_attrs(attrs: Mapping[str, Any], weight: TensorType) -> dict[str, Any]:
    p = list(attrs["padding"])
    return {"strides": list(attrs["stride"]), "pads": p + p, "dilations": list(attrs["dilation"]),
            "group": attrs["groups"], "kernel_shape": list(weight.shape[2:])}


def _conv2d(ctx, ins, attrs, outs):
    d = outs[0].dtype
    return [ctx.op("Conv", [_x(ctx, a, d) for a in ins[:3]], **conv_attrs(attrs, ins[1].type))]


def gemm(ctx: Emitter, x: str, x_ndim: int, w: str, wt: Callable[[], str],
         bias: str | None) -> str:
    """x @ w.T + bias: Gemm for a 2-D x, else MatMul by `wt()` (w transposed) and Add."""
    if x_ndim == 2:
        return ctx.op("Gemm", [x, w] + ([bias] if bias else []), transB=1)
    y = ctx.op("MatMul", [x, wt()])
    return ctx.op("Add", [y, bias]) if bias else y


def _linear(ctx, ins, attrs, outs):
    d = outs[0].dtype
    x, w = ins[0], ins[1]
    wname = _x(ctx, w, d)

    def wt() -> str:
        if w.const is not None:
            array = np.ascontiguousarray(w.const.astype(dtypes.to_numpy(d)).T)
            return ctx.const(array, f"{w.name}_t")
        return ctx.op("Transpose", [wname], perm=[1, 0])

    bias = _x(ctx, ins[2], d) if len(ins) == 3 else None
    return [gemm(ctx, _x(ctx, x, d), x.type.ndim, wname, wt, bias)]


def _matmul(ctx, ins, attrs, outs):
    return [ctx.op("MatMul", [_x(ctx, a, outs[0].dtype) for a in ins])]


def _sdpa(ctx, ins, attrs, outs):
    """softmax(q @ k^T * scale + mask) @ v, decomposed; a row whose every key is masked gives
    zeros, as torch's (and the reference's) safe softmax does. The default scale is a division
    by sqrt(E), an explicit one a product, so the importer tells them apart again."""
    q, k, v = ins[:3]
    d, n = outs[0].dtype, q.type.ndim
    kt = ctx.op("Transpose", [k.name], perm=[*range(n - 2), n - 1, n - 2])
    s = ctx.op("MatMul", [q.name, kt])
    if attrs["scale"] is None:
        s = ctx.op("Div", [s, ctx.scalar(math.sqrt(q.type.shape[-1]), d)])
    else:
        s = ctx.op("Mul", [s, ctx.scalar(attrs["scale"], d)])
    ninf = ctx.scalar(-np.inf, d)
    if attrs["is_causal"]:
        keep = np.tril(np.ones((q.type.shape[-2], k.type.shape[-2]), dtype=bool))
        s = ctx.op("Where", [ctx.const(keep), s, ninf])
    if len(ins) == 4:
        mask = ins[3]
        s = (ctx.op("Where", [mask.name, s, ninf]) if mask.type.dtype == "bool"
             else ctx.op("Add", [s, _x(ctx, mask, d)]))
    p = ctx.op("Softmax", [s], axis=-1)
    if len(ins) == 4:
        row_max = ctx.op("ReduceMax", [s, ctx.i64([-1])], keepdims=1)
        p = ctx.op("Where", [ctx.op("Equal", [row_max, ninf]), ctx.scalar(0, d), p])
    return [ctx.op("MatMul", [p, v.name])]


def _embedding(ctx, ins, attrs, outs):
    return [ctx.op("Gather", [ins[0].name, ins[1].name], axis=0)]


def _index_name(ctx: Emitter, a: Arg) -> str:
    return a.name if a.type.dtype in ("i32", "i64") else _x(ctx, a, "i64")


def _gather(ctx, ins, attrs, outs):
    x, index = ins
    if x.type.ndim == 0:
        flat = [ctx.op("Reshape", [a.name, ctx.i64([1])]) for a in (x, index)]
        got = ctx.op("GatherElements", [flat[0], _x(ctx, Arg(flat[1], TensorType(
            (1,), index.type.dtype)), "i64")], axis=0)
        return [ctx.op("Reshape", [got, ctx.i64([])])]
    dim = attrs["dim"] % x.type.ndim
    name = x.name
    ends = [x.type.shape[i] if i == dim else n for i, n in enumerate(index.type.shape)]
    if tuple(ends) != x.type.shape:  # torch gathers from the corner the index spans
        n = x.type.ndim
        name = ctx.op("Slice", [name, ctx.i64([0] * n), ctx.i64(ends), ctx.i64(range(n))])
    return [ctx.op("GatherElements", [name, _index_name(ctx, index)], axis=dim)]


def _index(ctx, ins, attrs, outs):
    """One index: Gather. Several (adjacent dims from `dim`): their dims go first, the
    broadcast indices are stacked for GatherND, and the leading dims move back in front."""
    x, idx = ins[0], ins[1:]
    n, dim, k = x.type.ndim, attrs["dim"] % x.type.ndim, len(ins) - 1
    if k == 1:
        return [ctx.op("Gather", [x.name, idx[0].name], axis=dim)]
    bshape = broadcast(*(i.type.shape for i in idx))
    perm = [*range(dim, dim + k), *range(dim), *range(dim + k, n)]
    xt = x.name if perm == list(range(n)) else ctx.op("Transpose", [x.name], perm=perm)
    cols = [ctx.op("Unsqueeze", [ctx.op("Expand", [_x(ctx, i, "i64"), ctx.i64(bshape)]),
                                 ctx.i64([-1])]) for i in idx]
    got = ctx.op("GatherND", [xt, ctx.op("Concat", cols, axis=-1)])
    nb = len(bshape)
    back = [*range(nb, nb + dim), *range(nb), *range(nb + dim, nb + n - k)]
    return [got if back == list(range(len(back))) else ctx.op("Transpose", [got], perm=back)]


def _embedding_bag(ctx, ins, attrs, outs):
    """Static bags: each index's bag is (number of bag starts <= its position) - 1; a bag x
    index membership matrix then sums (MatMul), averages or takes the max (masked ReduceMax)
    of the weight rows. Empty bags give 0, padding_idx rows count for nothing."""
    weight, indices, offsets = ins[:3]
    out, n = outs[0], indices.type.shape[0]
    d, bags = out.dtype, out.shape[0]
    if n == 0 or bags == 0:
        return [ctx.const(np.zeros(out.shape, dtypes.to_numpy(d)))]
    ids, offs = _x(ctx, indices, "i64"), _x(ctx, offsets, "i64")
    starts = offs if not attrs["include_last_offset"] else ctx.op(
        "Slice", [offs, ctx.i64([0]), ctx.i64([bags])])
    pos = ctx.const(np.arange(n, dtype=np.int64).reshape(n, 1))
    started = ctx.op("Cast", [ctx.op("LessOrEqual", [starts, pos])], to=ONNX_DTYPES["i64"])
    bag_of = ctx.op("Sub", [ctx.op("ReduceSum", [started, ctx.i64([1])], keepdims=0),
                            ctx.i64(1)])
    member = ctx.op("Equal", [ctx.const(np.arange(bags, dtype=np.int64).reshape(bags, 1)),
                              bag_of])  # [bags, n]
    keep = []
    if attrs["include_last_offset"]:  # indices past the last offset belong to no bag
        last = ctx.op("Slice", [offs, ctx.i64([bags]), ctx.i64([bags + 1])])
        keep.append(ctx.op("Less", [ctx.const(np.arange(n, dtype=np.int64)), last]))
    if attrs["padding_idx"] is not None:
        keep.append(ctx.op("Not", [ctx.op("Equal", [ids, ctx.i64(attrs["padding_idx"])])]))
    for k in keep:
        member = ctx.op("And", [member, k])
    rows = ctx.op("Gather", [weight.name, ids], axis=0)  # [n, D]
    if len(ins) == 4:
        rows = ctx.op("Mul", [rows, ctx.op("Unsqueeze", [ins[3].name, ctx.i64([1])])])
    weights = ctx.op("Cast", [member], to=ONNX_DTYPES[d])
    count = ctx.op("ReduceSum", [weights, ctx.i64([1])], keepdims=1)  # [bags, 1]
    if attrs["mode"] == "max":
        masked = ctx.op("Where", [ctx.op("Unsqueeze", [member, ctx.i64([2])]), rows,
                                  ctx.scalar(-np.inf, d)])
        top = ctx.op("ReduceMax", [masked, ctx.i64([1])], keepdims=0)
        empty = ctx.op("Equal", [count, ctx.scalar(0, d)])
        return [ctx.op("Where", [empty, ctx.scalar(0, d), top])]
    total = ctx.op("MatMul", [weights, rows])
    if attrs["mode"] == "sum":
        return [total]
    return [ctx.op("Div", [total, ctx.op("Max", [count, ctx.scalar(1, d)])])]


# --- pooling ------------------------------------------------------------------------------------


def _pool_pads(x: TensorType, out: TensorType, attrs: Attrs, dilation=(1, 1)) -> list[int]:
    """Explicit pads (begin h, w, end h, w) that give `out`'s size without ceil_mode: torch's
    ceil mode is a larger end pad (that its last window never starts in)."""
    p, extra = list(attrs["padding"]), []
    for i in range(2):
        need = (out.shape[2 + i] - 1) * attrs["stride"][i] \
            + dilation[i] * (attrs["kernel"][i] - 1) + 1
        extra.append(max(0, need - x.shape[2 + i] - 2 * p[i]))
    return [p[0], p[1], p[0] + extra[0], p[1] + extra[1]]


def _max_pool2d(ctx, ins, attrs, outs):
    x = ins[0]
    return [run(ctx, "MaxPool", [x.name], x.type.dtype, kernel_shape=list(attrs["kernel"]),
                strides=list(attrs["stride"]), dilations=list(attrs["dilation"]),
                pads=_pool_pads(x.type, outs[0], attrs, attrs["dilation"]))]


def _avg_pool2d(ctx, ins, attrs, outs):
    """AveragePool where ONNX's divisor is torch's; with ceil-mode overhang or a divisor
    override, the window sums (AveragePool of the padded input times the window size) are
    divided by torch's divisors, computed here with the reference."""
    x, out = ins[0], outs[0]
    pads = _pool_pads(x.type, out, attrs)
    kernel, stride = list(attrs["kernel"]), list(attrs["stride"])
    if pads[2:] == pads[:2] and attrs["divisor_override"] is None:
        return [ctx.op("AveragePool", [x.name], kernel_shape=kernel, strides=stride, pads=pads,
                       count_include_pad=int(attrs["count_include_pad"]))]
    padded = ctx.op("Pad", [x.name, ctx.i64([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])])
    mean = ctx.op("AveragePool", [padded], kernel_shape=kernel, strides=stride)
    area = kernel[0] * kernel[1]
    if attrs["divisor_override"] is not None:
        factor = np.asarray(area / attrs["divisor_override"])
    else:
        ones = np.ones((1, 1, *x.type.shape[2:]))
        geometry = {k: attrs[k] for k in ("kernel", "stride", "padding", "ceil_mode",
                                          "count_include_pad")}
        cells = ref.avg_pool2d(ones, **geometry, divisor_override=1)  # real cells per window
        average = ref.avg_pool2d(ones, **geometry, divisor_override=None)
        factor = np.where(cells > 0, area * average / np.where(cells > 0, cells, 1), 0.0)
    return [ctx.op("Mul", [mean, ctx.scalar(factor, out.dtype)])]


def _adaptive_avg_pool2d(ctx, ins, attrs, outs):
    """Global or even bins: pooling ops; otherwise torch's bins as two averaging matrices."""
    x = ins[0]
    (h, w), (oh, ow) = x.type.shape[2:], attrs["output_size"]
    d = outs[0].dtype
    if (oh, ow) == (1, 1):
        return [ctx.op("GlobalAveragePool", [x.name])]
    if oh and ow and h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return [ctx.op("AveragePool", [x.name], kernel_shape=k, strides=k)]

    def bins(size: int, n: int) -> np.ndarray:
        m = np.zeros((n, size))
        for i in range(n):
            lo, hi = (i * size) // n, -((-(i + 1) * size) // n)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m.astype(dtypes.to_numpy(d))

    rows = ctx.op("MatMul", [ctx.const(bins(h, oh)), x.name])
    return [ctx.op("MatMul", [rows, ctx.const(np.ascontiguousarray(bins(w, ow).T))])]


# --- layout -------------------------------------------------------------------------------------


def _reshape(ctx, ins, attrs, outs):
    return [_shape_of(ctx, ins[0].name, ins[0].type, outs[0].shape)]


def _permute(ctx, ins, attrs, outs):
    n = ins[0].type.ndim
    perm = [d % n for d in attrs["dims"]]
    return [ins[0].name if perm == list(range(n)) else ctx.op("Transpose", [ins[0].name],
                                                              perm=perm)]


def _cat(ctx, ins, attrs, outs):
    d = outs[0].dtype
    if len(ins) == 1:
        return [_x(ctx, ins[0], d)]
    return [ctx.op("Concat", [_x(ctx, a, d) for a in ins], axis=attrs["dim"] % outs[0].ndim)]


def _split(ctx, ins, attrs, outs):
    if len(outs) == 1:
        return [ins[0].name]
    got = ctx.op("Split", [ins[0].name, ctx.i64(attrs["sizes"])], len(outs), axis=attrs["dim"])
    return list(got)


def _slice(ctx, ins, attrs, outs):
    x = ins[0]
    dim = attrs["dim"] % x.type.ndim
    r = ops.slice_bounds(x.type.shape[dim], attrs["start"], attrs["end"], attrs["step"])
    if outs[0].shape == x.type.shape and attrs["step"] == 1:
        return [x.name]
    start, end = (r.start, r.stop) if len(r) else (0, 0)  # torch's clamped bounds, as ONNX's
    return [ctx.op("Slice", [x.name, ctx.i64([start]), ctx.i64([end]), ctx.i64([dim]),
                             ctx.i64([attrs["step"]])])]


def _select(ctx, ins, attrs, outs):
    index = ctx.const(np.asarray(attrs["index"], dtype=np.int64))  # Gather counts negative
    return [ctx.op("Gather", [ins[0].name, index], axis=attrs["dim"])]  # ones from the end


def _unsqueeze(ctx, ins, attrs, outs):
    return [ctx.op("Unsqueeze", [ins[0].name, ctx.i64([attrs["dim"]])])]


def _squeeze(ctx, ins, attrs, outs):
    """The named dims of size 1, once each, as the IR writes them (ONNX refuses the others)."""
    x, seen, named = ins[0], set(), []
    for d in attrs["dims"] if x.type.ndim else ():
        if d % x.type.ndim not in seen and x.type.shape[d % x.type.ndim] == 1:
            seen.add(d % x.type.ndim)
            named.append(d)
    return [ctx.op("Squeeze", [x.name, ctx.i64(named)]) if named else x.name]


def _expand(ctx, ins, attrs, outs):
    x = ins[0]
    if x.type.shape == outs[0].shape:
        return [x.name]
    return [ctx.op("Expand", [x.name, ctx.i64(outs[0].shape)])]


def _fill(dtype: str, value: float) -> Any:
    """The pad value in the tensor's dtype, as torch converts it (integers truncate)."""
    if dtype == "bool":
        return bool(value)
    return value if dtypes.is_float(dtype) else int(value)


def _pad(ctx, ins, attrs, outs):
    x, pads = ins[0], attrs["pads"]
    if not any(pads):
        return [x.name]
    n = x.type.ndim
    begin, end = [0] * n, [0] * n
    for i in range(len(pads) // 2):
        begin[n - 1 - i], end[n - 1 - i] = pads[2 * i], pads[2 * i + 1]
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[attrs["mode"]]
    d = x.type.dtype
    wide = _GAPS["Pad"].get(d, d)
    names = [ctx.cast(x.name, d, wide), ctx.i64(begin + end)]
    if mode == "constant":
        names.append(ctx.scalar(_fill(d, attrs["value"]), wide))
    return [ctx.cast(ctx.op("Pad", names, mode=mode), wide, d)]


# --- sources ------------------------------------------------------------------------------------


def _arange(ctx, ins, attrs, outs):
    """Integers: Range over the truncated start and step (torch's rule, as the reference);
    floats: start + i * step in float64, rounded once, as the reference computes it."""
    n, d = outs[0].shape[0], outs[0].dtype
    if not dtypes.is_float(d):
        first, stride = int(attrs["start"]), int(attrs["step"])
        r = ctx.op("Range", [ctx.i64(first), ctx.i64(first + n * stride), ctx.i64(stride)])
        return [ctx.cast(r, "i64", d)]
    i = ctx.op("Cast", [ctx.op("Range", [ctx.i64(0), ctx.i64(n), ctx.i64(1)])],
               to=ONNX_DTYPES["f64"])
    r = ctx.op("Add", [ctx.op("Mul", [i, ctx.scalar(attrs["step"], "f64")]),
                       ctx.scalar(attrs["start"], "f64")])
    return [ctx.cast(r, "f64", d)]


def _full(ctx, ins, attrs, outs):
    from onnx import numpy_helper

    d = outs[0].dtype
    value = numpy_helper.from_array(np.asarray([attrs["value"]]).astype(dtypes.to_numpy(d)))
    return [ctx.op("ConstantOfShape", [ctx.i64(outs[0].shape)], value=value)]


# --- fused --------------------------------------------------------------------------------------


def epilogue(ctx: Emitter, acc: str, stages: list[TensorType], ins: list[Arg],
             steps: tuple) -> str:
    """Run epilogue `steps` on `acc` (of type stages[0]); stages[k + 1] is step k's type and
    a step's operand is one of the node's inputs `ins`."""
    for step, have, want in zip(steps, stages, stages[1:]):
        args = [Arg(acc, have)]
        if "operand" in step:
            other = ins[step["operand"]]
            args = args + [other] if step["side"] == "right" else [other] + args
        acc = CONVERTERS[step["op"]](ctx, args, Attrs(step.get("attrs", {})), [want])[0]
    return acc


def _fused(base: Converter, op: str) -> Converter:
    def convert(ctx, ins, attrs, outs):
        stages = ops.stage_types(op, [a.type for a in ins], attrs)
        n = 3 if attrs["has_bias"] else 2
        acc = base(ctx, ins[:n], attrs, stages[:1])[0]
        return [epilogue(ctx, acc, stages, ins, attrs["epilogue"])]
    return convert


def _fused_elementwise(ctx, ins, attrs, outs):
    values = list(ins)
    stages = ops.stage_types("fused_elementwise", [a.type for a in ins], attrs)
    for step, t in zip(attrs["steps"], stages):
        args = [values[i] for i in step["args"]]
        got = CONVERTERS[step["op"]](ctx, args, Attrs(step.get("attrs", {})), [t])[0]
        values.append(Arg(got, t))
    return [values[-1].name]


# --- the table ----------------------------------------------------------------------------------


CONVERTERS: dict[str, Converter] = {
    "identity": _same,  # no node: the value itself
    "dropout": _same,  # inference dropout is the identity
    "memory_format": _same,  # storage order only; ONNX tensors have none
    "relu": _relu,  # Relu; integers: Max(x, 0)
    "clamp": _clamp,  # Clip with bounds in the result's dtype
    "sigmoid": _unary("Sigmoid"),  # Sigmoid (integers cast to the float result first)
    "tanh": _unary("Tanh"),  # Tanh
    "gelu": _gelu,  # Gelu (opset 20); before, 0.5x(1 + erf(x / sqrt 2)) or the tanh formula
    "silu": _silu,  # x * Sigmoid(x)
    "hardswish": _hardswish,  # x * HardSigmoid(x; 1/6, 1/2)
    "hardsigmoid": _hardsigmoid,  # HardSigmoid(alpha 1/6, beta 1/2) = relu6(x + 3) / 6
    "sqrt": _unary("Sqrt"),  # Sqrt
    "rsqrt": _rsqrt,  # Reciprocal(Sqrt)
    "exp": _unary("Exp"),  # Exp
    "log": _unary("Log"),  # Log
    "erf": _unary("Erf"),  # Erf
    "sin": _unary("Sin"),  # Sin
    "cos": _unary("Cos"),  # Cos
    "bitwise_not": _bitwise_not,  # Not (bool) / BitwiseNot
    "neg": _unary("Neg"),  # Neg
    "abs": _unary("Abs"),  # Abs
    "cast": _cast,  # Cast
    "add": _arith("add"),  # Add after casting to torch's result dtype (bool: Or)
    "sub": _arith("sub"),  # Sub
    "mul": _arith("mul"),  # Mul (bool: And)
    "div": _arith("div"),  # Div in the float result dtype
    "pow": _arith("pow"),  # Pow
    "maximum": _arith("maximum"),  # Max (bool: Or)
    "minimum": _arith("minimum"),  # Min (bool: And)
    "eq": _compare("eq"),  # Equal in the promoted dtype
    "ne": _compare("ne"),  # Not(Equal)
    "lt": _compare("lt"),  # Less
    "le": _compare("le"),  # LessOrEqual
    "gt": _compare("gt"),  # Greater
    "ge": _compare("ge"),  # GreaterOrEqual
    "bitwise_and": _bitwise("bitwise_and"),  # And (bool) / BitwiseAnd
    "bitwise_or": _bitwise("bitwise_or"),  # Or / BitwiseOr
    "bitwise_xor": _bitwise("bitwise_xor"),  # Xor / BitwiseXor
    "where": _where,  # Where with both branches in the result dtype
    "sum": _reduce("ReduceSum"),  # ReduceSum (integers and bool in int64)
    "mean": _reduce("ReduceMean"),  # ReduceMean
    "amax": _reduce("ReduceMax"),  # ReduceMax
    "amin": _reduce("ReduceMin"),  # ReduceMin
    "argmax": _arg_extreme("ArgMax"),  # ArgMax (dim none: of the flattened tensor)
    "argmin": _arg_extreme("ArgMin"),  # ArgMin
    "topk": _topk,  # TopK, sorted (ties: lower index first, as the IR's stable sort)
    "cumsum": _cumsum,  # CumSum after the dtype conversion
    "softmax": _softmax("Softmax"),  # Softmax along dim
    "log_softmax": _softmax("LogSoftmax"),  # LogSoftmax along dim
    "batch_norm": _batch_norm,  # BatchNormalization (inference)
    "layer_norm": _layer_norm,  # LayerNormalization over the weight's trailing dims
    "conv2d": _conv2d,  # Conv
    "linear": _linear,  # Gemm(transB) for 2-D x, else MatMul by the transposed weight + Add
    "matmul": _matmul,  # MatMul (numpy's rules, as torch.matmul)
    "scaled_dot_product_attention": _sdpa,  # MatMul, Mul, Where/Add, Softmax, MatMul
    "embedding": _embedding,  # Gather along axis 0
    "embedding_bag": _embedding_bag,  # Gather, bag membership, MatMul / masked ReduceMax
    "gather": _gather,  # GatherElements (Slice first where the index is smaller)
    "index": _index,  # Gather, or GatherND over the indexed dims moved first
    "max_pool2d": _max_pool2d,  # MaxPool with ceil mode as explicit end pads
    "avg_pool2d": _avg_pool2d,  # AveragePool, or window sums divided by torch's divisors
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,  # GlobalAveragePool / AveragePool / MatMuls
    "reshape": _reshape,  # Reshape to the static result shape
    "permute": _permute,  # Transpose
    "cat": _cat,  # Concat in the promoted dtype
    "split": _split,  # Split by sizes
    "slice": _slice,  # Slice with torch's clamped bounds
    "select": _select,  # Gather of a scalar index
    "unsqueeze": _unsqueeze,  # Unsqueeze
    "squeeze": _squeeze,  # Squeeze of the named size-1 dims
    "expand": _expand,  # Expand to the static result shape
    "pad": _pad,  # Pad (constant / reflect / edge)
    "arange": _arange,  # Range (floats: start + Range(n) * step in float64)
    "full": _full,  # ConstantOfShape
    "fused_conv2d": _fused(_conv2d, "fused_conv2d"),  # Conv, then the epilogue's ops
    "fused_linear": _fused(_linear, "fused_linear"),  # Gemm / MatMul, then the epilogue's ops
    "fused_elementwise": _fused_elementwise,  # each step's own converter
}


def _register_quant() -> None:
    from fxforge import onnx_qdq

    CONVERTERS.update(onnx_qdq.CONVERTERS)


_register_quant()


def why_not(graph: Graph, node: Node) -> str | None:
    """Why `node` cannot be exported although its op has a converter (None: it can)."""
    from fxforge import onnx_qdq

    if node.op == "const" and node.attrs["value"].array is None:
        return "constant data was elided (parse the IR with its constants)"
    if any(v.type.dtype == "bf16" for v in node.outputs) and node.op in ("const", "full"):
        return "bf16 constants have no numpy form here"
    return onnx_qdq.why_not(graph, node)


def convert_node(ctx: Emitter, node: Node, ins: list[Arg]) -> list[str]:
    """The ONNX names of `node`'s results. An op that only moves int8 elements (reshape,
    max_pool2d, cat, ...) runs on the dequantized values and quantizes again, as QDQ graphs
    spell it (exact: the same scale and zero point both ways)."""
    from fxforge import onnx_qdq

    outs = [v.type for v in node.outputs]
    convert = CONVERTERS[node.op]
    if node.op in ops.QUANT_TRANSPARENT and any(onnx_qdq.is_quantized(a) for a in ins):
        return onnx_qdq.through_float(ctx, convert, ins, node.attrs, outs)
    return convert(ctx, ins, node.attrs, outs)
