"""The op registry: one declaration per IR op.

Each `OpDef` holds everything the compiler knows about an op in one place: its inputs, typed
attributes with defaults, shape/dtype inference, FLOP count, its kind (what passes may assume
about it) and a pointer to its numpy reference in `kernels/reference.py`, which is the executable
specification. Backends (the torch backend, later Triton) claim ops by name; anything the torch
backend runs is also the fallback for every other backend.

`build_node` is the only way passes and capture should make nodes: it fills attribute defaults,
validates them, and infers output types, so no node is ever created with a stale type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fxforge import dtypes, symdims
from fxforge.ir import Attrs, ConstData, Node, Provenance, TensorType, Value
from fxforge.kernels import reference as ref
from fxforge.shapes import (
    MAX_NUMEL,
    OpTypeError,
    broadcast,
    check_shape,
    clip,
    is_int,
    matmul_shape,
    norm_dim,
    norm_dims,
    reshape_target,
    window_out,
)

REQUIRED = object()
Types = Sequence[TensorType]


@dataclass(frozen=True)
class AttrSpec:
    """kind: int, float, bool, str, dtype, ints (tuple of int), any; `optional` admits None;
    `symbolic` admits symbolic sizes (`fxforge.symdims`) where an int (or float) goes: a
    reshape target, slice bounds, split sizes, pads, arange bounds."""

    kind: str
    default: Any = REQUIRED
    optional: bool = False
    symbolic: bool = False


@dataclass(frozen=True)
class OpDef:
    name: str
    min_inputs: int
    max_inputs: int | None  # None: variadic
    attrs: Mapping[str, AttrSpec]
    infer: Callable[[Types, Attrs], tuple[TensorType, ...]] | None  # None: types are given
    reference: Callable[..., Any] | None
    kind: str  # elementwise | reduction | layout | compute | source | quant | opaque
    flops: Callable[[Types, tuple[TensorType, ...], Attrs], int] = field(default=None)  # type: ignore[assignment]
    doc: str = ""

    def count_flops(self, ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
        if self.flops is not None:
            return self.flops(ins, outs, attrs)
        return sum(t.numel for t in outs) if self.kind == "elementwise" else 0


class OpRegistryError(KeyError):
    """An op name the registry does not know."""


def _check_attr(op: str, name: str, spec: AttrSpec, value: Any) -> None:
    if value is None and spec.optional:
        return
    if spec.symbolic and _symbolic_attr_ok(spec.kind, value):
        return
    ok = {
        "int": is_int,
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "dtype": lambda v: isinstance(v, str) and v in dtypes.DTYPES,
        "ints": lambda v: isinstance(v, tuple) and all(is_int(x) for x in v),
        "any": lambda v: True,
    }[spec.kind](value)
    if not ok:
        what = "an int64" if spec.kind == "int" else f"a valid {spec.kind}"
        raise OpTypeError(f"{op}: attribute {name}={clip(value, use_repr=True)} is not {what}")


def _symbolic_attr_ok(kind: str, value: Any) -> bool:
    if kind in ("int", "float"):
        return symdims.is_sym(value)
    if kind == "ints" and isinstance(value, tuple):
        return all(is_int(x) or symdims.is_sym(x) for x in value)
    return False


def complete_attrs(opdef: OpDef, attrs: Mapping[str, Any]) -> Attrs:
    """Fill defaults, reject unknown or missing attributes, check kinds."""
    unknown = set(attrs) - set(opdef.attrs)
    if unknown:
        raise OpTypeError(f"{opdef.name}: unknown attribute(s) {sorted(unknown)}")
    result = {}
    for name, spec in opdef.attrs.items():
        value = attrs.get(name, spec.default)
        if value is REQUIRED:
            raise OpTypeError(f"{opdef.name}: missing attribute {name!r}")
        value = Attrs({name: value})[name]  # canonical form (tuples, python scalars)
        if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = _int_to_float(opdef.name, name, value)
        _check_attr(opdef.name, name, spec, value)
        result[name] = value
    return Attrs(result)


def _int_to_float(op: str, name: str, value: int) -> float:
    """A float attribute written as an integer; one past float64's range is refused, by name."""
    try:
        return float(value)
    except OverflowError:
        raise OpTypeError(f"{op}: attribute {name}={clip(value)} is out of float64's range"
                          ) from None


def infer_types(opdef: OpDef, ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    n = len(ins)
    if n < opdef.min_inputs or (opdef.max_inputs is not None and n > opdef.max_inputs):
        want = opdef.min_inputs if opdef.min_inputs == opdef.max_inputs else (
            f"{opdef.min_inputs} to {opdef.max_inputs if opdef.max_inputs is not None else 'any'}")
        raise OpTypeError(f"{opdef.name} takes {want} inputs, got {n}")
    if opdef.infer is None:
        raise OpTypeError(f"{opdef.name} has no type inference; its types must be given")
    try:
        types = tuple(opdef.infer(ins, attrs))
    except TypeError as e:  # a rule comparing symbolic sizes that it cannot decide
        if isinstance(e, OpTypeError) or not _any_symbolic(ins, attrs):
            raise
        raise OpTypeError(f"{opdef.name} needs static sizes here ({clip(e, 120)})") from None
    for k, t in enumerate(types):  # attributes can ask for absurd sizes (arange, full, padding)
        try:
            check_shape(t.shape)
        except OpTypeError as e:
            raise OpTypeError(f"{opdef.name}: result {k}: {e}") from None
    if opdef.name in QUANT_TRANSPARENT:
        types = _pass_quant(opdef.name, ins, types)
    return types


def _any_symbolic(ins: Types, attrs: Attrs) -> bool:
    return any(not t.is_static for t in ins) or bool(symdims.symbols_of(attrs))


# Ops that only move or select elements run on int8 values unchanged and keep their input's
# quantization (docs/quantized-ir.md); max_pool2d commutes with monotonic quantization.
QUANT_TRANSPARENT = frozenset({"reshape", "permute", "slice", "select", "squeeze", "unsqueeze",
                               "expand", "split", "cat", "max_pool2d", "identity",
                               "memory_format"})


def _pass_quant(op: str, ins: Types, types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    quants = {t.quant for t in ins}
    if len(quants) > 1:
        raise OpTypeError(f"{op}: inputs are quantized differently "
                          f"({', '.join(str(t) for t in ins)}); they must share one scale and "
                          "zero point")
    quant = ins[0].quant if ins else None
    if quant is None:
        return types
    if quant.axis is not None:
        raise OpTypeError(f"{op}: a per-axis quantized input (axis {quant.axis}) cannot pass "
                          "through a layout op")
    return tuple(TensorType(t.shape, t.dtype, quant) for t in types)


def build_node(op: str, inputs: Sequence[Value], attrs: Mapping[str, Any], names: Sequence[str],
               provenance: Provenance = Provenance()) -> Node:
    """Make a node with completed attributes and inferred output types."""
    opdef = get(op)
    full = complete_attrs(opdef, attrs)
    types = infer_types(opdef, [v.type for v in inputs], full)
    if len(names) != len(types):
        raise OpTypeError(f"{op} produces {len(types)} values, {len(names)} names given")
    outs = tuple(Value(n, t) for n, t in zip(names, types))
    return Node(op, tuple(inputs), outs, full, provenance)


# ---------------------------------------------------------------------------------------------
# Inference rules


def _same(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    return (TensorType(ins[0].shape, ins[0].dtype),)


def _memory_format(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    if attrs["layout"] not in ("nhwc", "nchw"):
        raise OpTypeError("memory_format: layout must be 'nhwc' or 'nchw', got "
                          f"{attrs['layout']!r}")
    if len(ins[0].shape) != 4:
        raise OpTypeError(f"memory_format: needs a 4-D (NCHW) value, got {ins[0]}")
    return _same(ins, attrs)


def _float_result(dtype: str) -> str:
    return dtype if dtypes.is_float(dtype) else "f32"


def _to_float(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """Transcendental ops: int inputs give float32, like torch."""
    return (TensorType(ins[0].shape, _float_result(ins[0].dtype)),)


def _clamp(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """A fractional bound makes torch clamp an integer tensor in float32; integral ones keep it
    integer (the float attributes cannot tell 0 from 0.0: torch's clamp(x, 0.0) is float)."""
    if any(b is not None and not float(b).is_integer() for b in (attrs["min"], attrs["max"])):
        return _to_float(ins, attrs)
    return _same(ins, attrs)


def _float_only(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    if not dtypes.is_float(ins[0].dtype):
        raise OpTypeError(f"needs a floating-point input, got {ins[0].dtype}")
    return _same(ins, attrs)


def _gelu(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    if attrs["approximate"] not in ("none", "tanh"):
        raise OpTypeError(f"gelu approximate must be 'none' or 'tanh', got "
                          f"{attrs['approximate']!r}")
    return _float_only(ins, attrs)


def _promoted(ins: Types) -> str:
    return dtypes.promote([(t.dtype, t.ndim) for t in ins])


def _one_dtype(op: str, ins: Types) -> str:
    """The common dtype of a compute op's data and weight. torch refuses mixed ones (a float64
    input into a float32 Linear), and so does the IR: no target may quietly convert. (A bias
    may be wider: fp16 layers keep an f32 bias for their f32 accumulator.)"""
    found = {t.dtype for t in ins}
    if len(found) != 1:
        raise OpTypeError(f"{op}: operands must share one dtype, got "
                          f"{', '.join(t.dtype for t in ins)} (torch refuses this too)")
    return ins[0].dtype


def _binary(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    return (TensorType(broadcast(*(t.shape for t in ins)), _promoted(ins)),)


def _true_div(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    (t,) = _binary(ins, attrs)
    return (TensorType(t.shape, _float_result(t.dtype)),)


def _compare(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    return (TensorType(broadcast(*(t.shape for t in ins)), "bool"),)


def _no_float(op: str, ins: Types) -> None:
    """Bitwise ops exist for bool and integers only: torch has no float kernel for them."""
    floats = [t.dtype for t in ins if dtypes.is_float(t.dtype)]
    if floats:
        raise OpTypeError(f"{op} needs bool or integer operands, got {floats[0]} (torch refuses "
                          "floats too)")


def _bitwise(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _no_float("bitwise op", ins)
    return _binary(ins, attrs)


def _bitwise_not(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _no_float("bitwise_not", ins)
    return _same(ins, attrs)


def _where(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    cond, a, b = ins
    if cond.dtype != "bool":
        raise OpTypeError(f"where's condition must be bool, got {cond.dtype}")
    return (TensorType(broadcast(cond.shape, a.shape, b.shape), _promoted([a, b])),)


def _cast(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    return (TensorType(ins[0].shape, attrs["dtype"]),)


def _reduce_shape(t: TensorType, attrs: Attrs) -> tuple[int, ...]:
    dims = norm_dims(attrs["dims"], t.ndim)
    if attrs["keepdim"]:
        return tuple(1 if i in dims else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in dims)


def _sum(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    dtype = ins[0].dtype if dtypes.is_float(ins[0].dtype) else "i64"
    return (TensorType(_reduce_shape(ins[0], attrs), dtype),)


def _mean(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _float_only(ins, attrs)
    return (TensorType(_reduce_shape(ins[0], attrs), ins[0].dtype),)


def _extreme(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """amax/amin: the input's dtype, bool included."""
    return (TensorType(_reduce_shape(ins[0], attrs), ins[0].dtype),)


def _arg_extreme(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """argmax/argmin give i64 positions; dim none searches the flattened tensor (keepdim then
    keeps every dim as 1). torch refuses bool inputs and an empty search, and so does the IR:
    there is no position to return."""
    x, dim, keepdim = ins[0], attrs["dim"], attrs["keepdim"]
    if x.dtype == "bool":
        raise OpTypeError("argmax/argmin have no bool kernel in torch; cast to u8 first")
    if dim is None:
        if x.numel == 0:
            raise OpTypeError(f"argmax/argmin of an empty tensor {list(x.shape)}")
        return (TensorType((1,) * x.ndim if keepdim else (), "i64"),)
    d = norm_dim(dim, x.ndim)
    if x.ndim and x.shape[d] == 0:
        raise OpTypeError(f"argmax/argmin along dim {d} of size 0 in {list(x.shape)}")
    return (TensorType(_reduce_shape(x, attrs.replace(dims=(d,))), "i64"),)


def _topk(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """The k largest (or smallest) along dim, sorted, and their i64 positions; a 0-d tensor is
    one element along dim 0 or -1 (torch's rule), so it takes k=1."""
    x, k = ins[0], attrs["k"]
    d = norm_dim(attrs["dim"], x.ndim)
    size = x.shape[d] if x.ndim else 1
    if type(size) is not int:  # k is static; the dim must provably hold k elements
        fits = k >= 0 and symdims.known_ge(size, k)
        if fits is None:
            raise OpTypeError(f"topk needs a static size for dim {d} "
                              f"({symdims.format_dim(size)} may be less than k={k})")
        size = k if fits else -1
    if not (0 <= k <= size) or (x.ndim == 0 and k != 1):
        raise OpTypeError(f"topk: k={k} is out of range for dim {d} of {list(x.shape)}")
    shape = x.shape[:d] + (k,) + x.shape[d + 1:] if x.ndim else ()
    return (TensorType(shape, x.dtype), TensorType(shape, "i64"))


EMBEDDING_BAG_MODES = ("sum", "mean", "max")


def _embedding_bag(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """One row per bag b: weight rows indices[offsets[b]:offsets[b+1]] reduced by mode. The
    last bag ends at the end of indices, or, with include_last_offset, offsets holds the end of
    every bag (one more offset than bags). torch's dtype rules: float weight, i32/i64 indices
    and offsets, per-sample weights (mode sum only) of the weight's dtype."""
    weight, indices, offsets = ins[:3]
    mode, last, padding = attrs["mode"], attrs["include_last_offset"], attrs["padding_idx"]
    if mode not in EMBEDDING_BAG_MODES:
        raise OpTypeError(f"embedding_bag mode must be one of {EMBEDDING_BAG_MODES}, got {mode!r}")
    _need_rank(weight, 2, "embedding_bag weight")
    if not dtypes.is_float(weight.dtype):
        raise OpTypeError(f"embedding_bag weight must be floating-point, got {weight.dtype}")
    for name, t in (("indices", indices), ("offsets", offsets)):
        _need_rank(t, 1, f"embedding_bag {name}")
        if t.dtype not in ("i64", "i32"):
            raise OpTypeError(f"embedding_bag {name} must be i64 or i32, got {t.dtype}")
    if last and offsets.shape[0] == 0:
        raise OpTypeError("embedding_bag with include_last_offset needs at least one offset")
    if padding is not None and not 0 <= padding < weight.shape[0]:
        raise OpTypeError(f"embedding_bag padding_idx {padding} is not a row of the "
                          f"{weight.shape[0]}-row weight")
    if len(ins) == 4:
        psw = ins[3]
        if mode != "sum":
            raise OpTypeError(f"embedding_bag per-sample weights need mode 'sum', got {mode!r}")
        if psw.shape != indices.shape or psw.dtype != weight.dtype:
            raise OpTypeError(f"embedding_bag per-sample weights {psw} must match the indices' "
                              f"shape {list(indices.shape)} and the weight's dtype {weight.dtype}")
    return (TensorType((offsets.shape[0] - last, weight.shape[1]), weight.dtype),)


def _embedding_bag_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return ins[1].numel * ins[0].shape[1] * (2 if len(ins) == 4 else 1)


def _cumsum(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """torch's dtype= converts the input first; without it bool and integers sum in (and give)
    int64, as in torch.cumsum (a position id from a mask is an i64)."""
    x = ins[0]
    norm_dim(attrs["dim"], x.ndim)
    dtype = attrs["dtype"] or (x.dtype if dtypes.is_float(x.dtype) else "i64")
    return (TensorType(x.shape, dtype),)


def _softmax(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    norm_dim(attrs["dim"], ins[0].ndim)
    return _float_only(ins, attrs)


def _dim_of(x: TensorType, dim: int, what: str) -> int:
    """A dim of an op that needs rank >= 1 (norm_dim admits 0 and -1 for a 0-d tensor)."""
    if x.ndim == 0:
        raise OpTypeError(f"{what} needs a tensor of rank >= 1, got a 0-d one")
    return norm_dim(dim, x.ndim)


def _need_rank(t: TensorType, rank: int, what: str) -> None:
    if t.ndim != rank:
        raise OpTypeError(f"{what} must have rank {rank}, got {t.dtype}{list(t.shape)}")


def _pair(attrs: Attrs, *names: str) -> None:
    for name in names:
        if len(attrs[name]) != 2:
            raise OpTypeError(f"{name} must have 2 values, got {attrs[name]}")


def _conv2d(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, w = ins[0], ins[1]
    _need_rank(x, 4, "conv2d input")
    _need_rank(w, 4, "conv2d weight")
    _pair(attrs, "stride", "padding", "dilation")
    g = attrs["groups"]
    n, c, h, wd = x.shape
    c = symdims.static(c, "conv2d", "the input channels (dim 1)")
    cout, cin_g, kh, kw = (symdims.static(d, "conv2d", f"weight dim {i}")
                           for i, d in enumerate(w.shape))
    if g < 1 or c % g or cout % g or c // g != cin_g:
        raise OpTypeError(f"conv2d: input channels {c}, groups {g} and weight {list(w.shape)} "
                          "do not agree")
    if len(ins) == 3 and ins[2].shape != (cout,):
        raise OpTypeError(f"conv2d bias must have shape [{cout}], got {list(ins[2].shape)}")
    (s0, s1), (p0, p1), (d0, d1) = attrs["stride"], attrs["padding"], attrs["dilation"]
    ho = window_out(h, kh, s0, p0, d0, False)
    wo = window_out(wd, kw, s1, p1, d1, False)
    _one_dtype("conv2d", ins[:2])
    return (TensorType((n, cout, ho, wo), _promoted(ins)),)


def _conv2d_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    w = ins[1]
    return 2 * outs[0].numel * w.shape[1] * w.shape[2] * w.shape[3]


def _linear(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, w = ins[0], ins[1]
    _need_rank(w, 2, "linear weight")
    if x.ndim < 1 or not symdims.equal(x.shape[-1], w.shape[1]):
        raise OpTypeError(f"linear: input {symdims.show(list(x.shape))} does not match weight "
                          f"{symdims.show(list(w.shape))}")
    if len(ins) == 3 and ins[2].shape != (w.shape[0],):
        raise OpTypeError(f"linear bias must have shape [{w.shape[0]}], got {list(ins[2].shape)}")
    _one_dtype("linear", ins[:2])
    return (TensorType((*x.shape[:-1], w.shape[0]), _promoted(ins)),)


def _linear_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return 2 * outs[0].numel * ins[1].shape[1]


def _matmul(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    a, b = ins
    return (TensorType(matmul_shape(a.shape, b.shape), _one_dtype("matmul", ins)),)


def _matmul_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return 2 * outs[0].numel * ins[0].shape[-1]


def _batch_norm(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    if x.ndim < 2:
        raise OpTypeError(f"batch_norm needs rank >= 2, got {list(x.shape)}")
    for t in ins[1:]:
        if t.shape != (x.shape[1],):
            raise OpTypeError(f"batch_norm parameters must have shape [{x.shape[1]}], "
                              f"got {list(t.shape)}")
    return _float_only(ins, attrs)


def _layer_norm(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, w, b = ins
    k = w.ndim
    if w.shape != b.shape or k == 0 or not symdims.same_shape(x.shape[x.ndim - k:], w.shape):
        raise OpTypeError(f"layer_norm: weight {list(w.shape)} / bias {list(b.shape)} do not "
                          f"match the trailing dims of {list(x.shape)}")
    return _float_only(ins, attrs)


def _max_pool2d(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    _need_rank(x, 4, "max_pool2d input")
    _pair(attrs, "kernel", "stride", "padding", "dilation")
    (k0, k1), (s0, s1), (p0, p1), (d0, d1) = (attrs[k] for k in ("kernel", "stride", "padding",
                                                                   "dilation"))
    if p0 * 2 > k0 or p1 * 2 > k1:
        raise OpTypeError("pooling padding must be at most half the kernel size")
    ceil = attrs["ceil_mode"]
    ho = window_out(x.shape[2], k0, s0, p0, d0, ceil)
    wo = window_out(x.shape[3], k1, s1, p1, d1, ceil)
    return (TensorType((*x.shape[:2], ho, wo), x.dtype),)


def _avg_pool2d(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    _float_only(ins, attrs)
    if attrs["divisor_override"] == 0:
        raise OpTypeError("avg_pool2d divisor_override must not be 0")
    return _max_pool2d(ins, attrs.replace(dilation=(1, 1)))


def _adaptive_avg_pool2d(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    _need_rank(x, 4, "adaptive_avg_pool2d input")
    _pair(attrs, "output_size")
    _float_only(ins, attrs)
    if any(d < 0 for d in attrs["output_size"]):
        raise OpTypeError(f"adaptive_avg_pool2d output_size {attrs['output_size']} is negative")
    return (TensorType((*x.shape[:2], *attrs["output_size"]), x.dtype),)


def _reshape(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    return (TensorType(reshape_target(ins[0].numel, attrs["shape"]), ins[0].dtype),)


def _permute(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dims = norm_dims(attrs["dims"], x.ndim)
    if len(dims) != x.ndim:
        raise OpTypeError(f"permute dims {attrs['dims']} must name each of {x.ndim} dims once")
    return (TensorType(tuple(x.shape[d] for d in dims), x.dtype),)


def _cat(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    first = ins[0]
    dim = _dim_of(first, attrs["dim"], "cat")
    for t in ins[1:]:
        if t.ndim != first.ndim or any(not symdims.equal(a, b) for i, (a, b)
                                       in enumerate(zip(t.shape, first.shape)) if i != dim):
            raise OpTypeError(f"cat along dim {dim}: shapes "
                              f"{symdims.show([list(t.shape) for t in ins])} differ")
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in ins)
    dtype = dtypes.promote([(t.dtype, max(t.ndim, 1)) for t in ins])
    return (TensorType(tuple(shape), dtype),)


def _split(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dim = _dim_of(x, attrs["dim"], "split")
    sizes = attrs["sizes"]
    if any(type(s) is int and s < 0 or symdims.is_sym(s) and s.is_negative for s in sizes) \
            or not symdims.equal(sum(sizes), x.shape[dim]):
        raise OpTypeError(f"split sizes {symdims.show(sizes)} do not sum to "
                          f"{symdims.show(x.shape[dim])}")
    return tuple(TensorType(x.shape[:dim] + (s,) + x.shape[dim + 1:], x.dtype)
                 for s in attrs["sizes"])


def slice_bounds(size: int, start: int, end: int, step: int) -> range:
    """torch's clamping of slice bounds (negative indices, ends beyond the size)."""
    if step < 1:
        raise OpTypeError(f"slice step must be positive, got {step}")
    return range(size)[slice(start, end, step)]


def slice_length_symbolic(size: Any, start: Any, end: Any, step: int) -> Any:
    """The length of x[start:end:step] along a dim when the size or a bound is symbolic:
    torch's clamping (negative bounds count from the end, bounds past the size stop there),
    each decided for every value of the symbols, else the slice needs a static size."""
    if step < 1:
        raise OpTypeError(f"slice step must be positive, got {step}")

    def clamp(bound: Any, what: str) -> Any:
        if type(bound) is int and abs(bound) >= MAX_NUMEL:  # past any dim the IR can hold
            return size if bound > 0 else 0
        if type(bound) is int and bound < 0:
            bound = size + bound
            if symdims.known_ge(bound, 0) is not True:
                if symdims.known_ge(bound, 0) is False:
                    return 0
                raise OpTypeError(f"slice needs a static size: {what} "
                                  f"{symdims.format_dim(bound)} may be negative")
        elif type(bound) is not int and symdims.known_ge(bound, 0) is not True:
            raise OpTypeError(f"slice needs a static size: {what} {symdims.format_dim(bound)} "
                              "may be negative (counting from the end)")
        fits = symdims.known_ge(size, bound)
        if fits is None:
            raise OpTypeError(f"slice needs a static size for the sliced dim: {what} "
                              f"{symdims.format_dim(bound)} may be past its size "
                              f"{symdims.format_dim(size)}")
        return bound if fits else size

    lo, hi = clamp(start, "start"), clamp(end, "end")
    order = symdims.known_ge(hi, lo)
    if order is None:
        raise OpTypeError(f"slice needs a static size: end {symdims.format_dim(hi)} may be "
                          f"before start {symdims.format_dim(lo)}")
    return symdims.normalize(symdims.ceildiv(hi - lo, step)) if order else 0


def _slice(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dim = _dim_of(x, attrs["dim"], "slice")
    size, start, end, step = x.shape[dim], attrs["start"], attrs["end"], attrs["step"]
    if type(size) is int and type(start) is int and type(end) is int:
        n = len(slice_bounds(size, start, end, step))
    else:
        n = slice_length_symbolic(size, start, end, step)
    return (TensorType(x.shape[:dim] + (n,) + x.shape[dim + 1:], x.dtype),)


def _select(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dim = _dim_of(x, attrs["dim"], "select")
    size, index = x.shape[dim], attrs["index"]
    if type(size) is not int:
        inside = symdims.known_ge(size, index + 1 if index >= 0 else -index)
        if inside is None:
            raise OpTypeError(f"select needs a static size for dim {dim}: index {index} may "
                              f"be out of range for {symdims.format_dim(size)}")
        if inside:
            return (TensorType(x.shape[:dim] + x.shape[dim + 1:], x.dtype),)
    if not -x.shape[dim] <= attrs["index"] < x.shape[dim]:
        raise OpTypeError(f"select index {attrs['index']} out of range for size {x.shape[dim]}")
    return (TensorType(x.shape[:dim] + x.shape[dim + 1:], x.dtype),)


def _unsqueeze(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dim = norm_dim(attrs["dim"], x.ndim + 1)
    return (TensorType(x.shape[:dim] + (1,) + x.shape[dim:], x.dtype),)


def _squeeze(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x = ins[0]
    dims = norm_dims(attrs["dims"], x.ndim)
    for i in dims:  # a symbolic dim may be 1 for some sizes: the result's rank would vary
        if i < x.ndim:
            symdims.static(x.shape[i], "squeeze", f"dim {i}")
    return (TensorType(tuple(d for i, d in enumerate(x.shape) if not (i in dims and d == 1)),
                       x.dtype),)


def _expand(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, shape = ins[0], attrs["shape"]
    if len(shape) < x.ndim:
        raise OpTypeError(f"cannot expand {list(x.shape)} to fewer dims {list(shape)}")
    lead = len(shape) - x.ndim
    out = list(shape)
    for i, d in enumerate(x.shape):
        want = shape[lead + i]
        if type(want) is int and want == -1:
            out[lead + i] = d
        elif d != 1 and not symdims.equal(d, want):
            raise OpTypeError(f"cannot expand {symdims.show(list(x.shape))} to "
                              f"{symdims.show(list(shape))}")
    if any(type(d) is int and d < 0 for d in out):
        raise OpTypeError(f"expand target {list(shape)} has -1 in a new dimension")
    return (TensorType(tuple(out), x.dtype),)


def _embedding(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    weight, indices = ins
    _need_rank(weight, 2, "embedding weight")
    if dtypes.category(indices.dtype) != 1:
        raise OpTypeError(f"embedding indices must be integers, got {indices.dtype}")
    return (TensorType((*indices.shape, weight.shape[1]), weight.dtype),)


def _gather(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    x, index = ins
    dim = norm_dim(attrs["dim"], x.ndim)
    if index.ndim != x.ndim or dtypes.category(index.dtype) != 1:
        raise OpTypeError("gather index must be an integer tensor of the input's rank")
    if any(i != dim and symdims.known_ge(m, n) is not True
           for i, (n, m) in enumerate(zip(index.shape, x.shape))):
        raise OpTypeError(f"gather index {list(index.shape)} is larger than the input "
                          f"{list(x.shape)} in a dim other than {dim}")
    return (TensorType(index.shape, x.dtype),)


def _index_take(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """x[:, ..., i0, i1, ...] with k index tensors on the adjacent dims from dim on: their
    broadcast shape replaces those k dims. torch indexes with int64 or int32 only; a bool or u8
    index is a mask, with another meaning."""
    x, indices = ins[0], ins[1:]
    dim = _dim_of(x, attrs["dim"], "index")
    k = len(indices)
    if dim + k > x.ndim:
        raise OpTypeError(f"index: {k} index tensors from dim {dim} of a rank-{x.ndim} input")
    for t in indices:
        if t.dtype not in ("i64", "i32"):
            raise OpTypeError(f"index: indices must be i64 or i32, got {t.dtype} (bool and u8 "
                              "index tensors are masks)")
    shape = broadcast(*(t.shape for t in indices))
    return (TensorType(x.shape[:dim] + shape + x.shape[dim + k:], x.dtype),)


PAD_MODES = ("constant", "reflect", "replicate")


def _pad(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    """torch's F.pad: `pads` lists (before, after) pairs from the last dim backwards."""
    x, pads, mode = ins[0], attrs["pads"], attrs["mode"]
    if mode not in PAD_MODES:
        raise OpTypeError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    k = len(pads) // 2
    if len(pads) % 2 or k > x.ndim:
        raise OpTypeError(f"pad: {len(pads)} pads for a rank-{x.ndim} input; it takes one "
                          "(before, after) pair per padded dim")
    if any(type(p) is int and p < 0 or symdims.is_sym(p) and p.is_negative for p in pads):
        raise OpTypeError(f"pad: negative pads {symdims.show(pads)} (cropping) are not "
                          "supported")
    shape = list(x.shape)
    for i in range(k):
        shape[x.ndim - 1 - i] += pads[2 * i] + pads[2 * i + 1]
    if mode == "constant":
        _check_fill(x.dtype, attrs["value"])
    else:
        _check_edge_pad(x, pads, mode)
    return (TensorType(tuple(shape), x.dtype),)


def _check_fill(dtype: str, value: float) -> None:
    """torch refuses a fill value that its dtype cannot hold (-1 in u8, 1e6 in f16, NaN in an
    integer tensor); bool takes any value (nonzero is true), and bf16 is left to torch."""
    if dtype in ("bool", "bf16"):
        return
    if dtypes.is_float(dtype):
        fits = not math.isfinite(value) or abs(value) <= float(np.finfo(dtypes.to_numpy(dtype)).max)
    else:  # python compares the int bounds and the float exactly
        info = np.iinfo(dtypes.to_numpy(dtype))
        fits = math.isfinite(value) and info.min <= value <= info.max
    if not fits:
        raise OpTypeError(f"pad value {clip(value)} does not fit in {dtype}")


def _check_edge_pad(x: TensorType, pads: tuple[int, ...], mode: str) -> None:
    """torch's reflect and replicate pad 1, 2 or 3 trailing dims of a non-bool input with one or
    two leading (batch, channel) dims, all but the batch dim nonempty; reflect repeats no edge,
    so each pad must be smaller than its dim."""
    k = len(pads) // 2
    for p in pads:
        symdims.static(p, f"pad mode {mode!r}", "its pads")
    if k not in (1, 2, 3) or x.ndim not in (k + 1, k + 2):
        raise OpTypeError(f"pad mode {mode!r} pads 1 to 3 trailing dims of an input with 1 or 2 "
                          f"more dims, got {k} padded dims of a rank-{x.ndim} input")
    if any(d == 0 for d in x.shape[x.ndim - k - 1:]):
        raise OpTypeError(f"pad mode {mode!r} needs nonempty dims, got {list(x.shape)}")
    if x.dtype == "bool":
        raise OpTypeError(f"pad mode {mode!r} has no bool kernel in torch")
    for i in range(k):
        size = x.shape[x.ndim - 1 - i]
        if type(size) is not int and mode == "reflect":
            fits = symdims.known_ge(size, max(pads[2 * i], pads[2 * i + 1]) + 1)
            if fits is None:
                raise OpTypeError(f"pad mode 'reflect' needs a static size for dim "
                                  f"{x.ndim - 1 - i} ({symdims.format_dim(size)} may be no "
                                  f"larger than its pads)")
            size = max(pads[2 * i], pads[2 * i + 1]) + (1 if fits else 0)
        if mode == "reflect" and max(pads[2 * i], pads[2 * i + 1]) >= size:
            raise OpTypeError(f"reflect pads {pads[2 * i:2 * i + 2]} must be smaller than the "
                              f"dim of size {size}")


def _sdpa(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    q, k, v = ins[:3]
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise OpTypeError("scaled_dot_product_attention needs q, k, v of the same rank >= 2")
    if not symdims.equal(q.shape[-1], k.shape[-1]) or not symdims.equal(k.shape[-2],
                                                                          v.shape[-2]):
        raise OpTypeError(f"attention shapes q{symdims.show(list(q.shape))} "
                          f"k{symdims.show(list(k.shape))} v{symdims.show(list(v.shape))} "
                          "do not agree")
    batch = broadcast(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if len(ins) == 4:
        broadcast(ins[3].shape, (*batch, q.shape[-2], k.shape[-2]))
        if attrs["is_causal"]:
            raise OpTypeError("scaled_dot_product_attention: is_causal with a mask is not allowed")
    _float_only(ins, attrs)
    return (TensorType((*batch, q.shape[-2], v.shape[-1]), q.dtype),)


def _sdpa_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    q, k = ins[0], ins[1]
    return 2 * math.prod(outs[0].shape[:-1]) * k.shape[-2] * (q.shape[-1] + outs[0].shape[-1])


def _arange(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    start, end, step, dtype = (attrs[k] for k in ("start", "end", "step", "dtype"))
    if symdims.is_sym(start) or symdims.is_sym(end):
        return (TensorType((_arange_length_symbolic(start, end, step),), dtype),)
    if not all(math.isfinite(v) for v in (start, end, step)):
        raise OpTypeError(f"arange bounds must be finite, got {start}, {end}, {step}")
    if not dtypes.is_float(dtype):
        # torch truncates start, end and step for integer dtypes; only int64 also takes its
        # length from the truncated values (the other integer types use the float ones)
        if int(step) == 0:
            raise OpTypeError(f"arange step {step} truncates to 0 for {dtype}")
        if dtype == "i64":
            start, end, step = int(start), int(end), int(step)
    if step == 0:
        raise OpTypeError("arange step must be nonzero")
    return (TensorType((_arange_length(start, end, step),), dtype),)


def _arange_length_symbolic(start: Any, end: Any, step: Any) -> Any:
    """ceil((end - start) / step) with a symbolic bound: the static bound and the step must be
    whole numbers (as a size computed from a shape is), and end >= start for every size."""
    parts = []
    for name, v in (("start", start), ("end", end), ("step", step)):
        if not symdims.is_sym(v):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and float(v).is_integer()):
                raise OpTypeError(f"arange with a symbolic bound needs a whole {name}, got {v}")
            v = int(v)
        parts.append(v)
    start, end, step = parts
    if type(step) is not int or step < 1:
        raise OpTypeError(f"arange with a symbolic bound needs a static step >= 1, got {step}")
    order = symdims.known_ge(end, start)
    if order is None:
        raise OpTypeError(f"arange needs a static size: end {symdims.format_dim(end)} may be "
                          f"below start {symdims.format_dim(start)}")
    return symdims.normalize(symdims.ceildiv(end - start, step)) if order else 0


def _arange_length(start: float, end: float, step: float) -> int:
    """ceil((end - start) / step), at least 0; a length past MAX_NUMEL (or past float64, as
    with end 1e308 and step 1e-308) is refused before it becomes an int or an allocation."""
    try:
        n = (end - start) / step
    except OverflowError:  # integer bounds (i64) whose quotient no float holds
        n = math.inf
    if not n <= MAX_NUMEL:
        raise OpTypeError(f"arange from {clip(start)} to {clip(end)} by {clip(step)} has more "
                          "than the IR's limit of 2**40 elements")
    return math.ceil(n) if n > 0 else 0  # -inf too: end far below start


def _full(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    if any(type(d) is int and d < 0 or symdims.is_sym(d) and d.is_negative
           for d in attrs["shape"]):
        raise OpTypeError(f"full shape {symdims.show(attrs['shape'])} has a negative dimension")
    return (TensorType(attrs["shape"], attrs["dtype"]),)


def _const(ins: Types, attrs: Attrs) -> tuple[TensorType, ...]:
    data: ConstData = attrs["value"]
    if data.array is None:
        raise OpTypeError("const with elided data has no inferable type")
    return (TensorType(data.array.shape, dtypes.from_numpy(data.array.dtype)),)


def _reduction_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return ins[0].numel


def _norm_flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
    return 5 * ins[0].numel


# ---------------------------------------------------------------------------------------------
# Fused ops (made by the `fuse` pass). Each step of an epilogue or of a fused elementwise chain
# is a registry op and is typed by that op's own inference, so no rule is written twice.


def _step(step: Any, keys: frozenset[str], where: str) -> tuple[OpDef, Attrs]:
    """The op and the full attributes of one step; attributes must be spelled out in canonical
    form (as node attributes must), so that a step prints and compares one way."""
    if not isinstance(step, Mapping) or not set(step) <= keys or "op" not in step:
        raise OpTypeError(f"{where} must be a map with keys from {sorted(keys)} including 'op', "
                          f"got {step!r}")
    name = step["op"]
    opdef = OPS.get(name) if isinstance(name, str) else None
    if opdef is None or opdef.kind != "elementwise" or name.startswith("fused_"):
        raise OpTypeError(f"{where}: {name!r} is not an elementwise op of the registry")
    given = step.get("attrs", {})
    if not isinstance(given, Mapping):
        raise OpTypeError(f"{where}: attrs must be a map, got {given!r}")
    full = complete_attrs(opdef, given)
    if full != Attrs(given):
        raise OpTypeError(f"{where}: attributes of {name} must all be given, canonical: "
                          f"{dict(full)}")
    return opdef, full


def _index(i: Any, bound: int, where: str) -> int:
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < bound:
        raise OpTypeError(f"{where}: operand index {i!r} is not in [0, {bound})")
    return i


def epilogue_types(base: TensorType, ins: Types, epilogue: Any) -> list[TensorType]:
    """The accumulator's type after the base op and after each epilogue step. A step is
    {"op": unary op, "attrs"?: {...}} or {"op": binary op, "attrs"?: {...}, "operand": i,
    "side": "right" | "left"}: op(acc, ins[i]) or op(ins[i], acc). Steps keep the shape."""
    if not isinstance(epilogue, tuple):
        raise OpTypeError(f"epilogue must be a list of steps, got {epilogue!r}")
    types = [base]
    keys = frozenset(("op", "attrs", "operand", "side"))
    for k, step in enumerate(epilogue):
        where = f"epilogue step {k}"
        opdef, attrs = _step(step, keys, where)
        acc = types[-1]
        if opdef.min_inputs == opdef.max_inputs == 1:
            if "operand" in step or "side" in step:
                raise OpTypeError(f"{where}: unary {opdef.name} takes no operand")
            args = [acc]
        elif opdef.min_inputs == opdef.max_inputs == 2:
            other = ins[_index(step.get("operand"), len(ins), where)]
            side = step.get("side")
            if side not in ("left", "right"):
                raise OpTypeError(f"{where}: side must be 'left' or 'right', got {side!r}")
            args = [acc, other] if side == "right" else [other, acc]
        else:
            raise OpTypeError(f"{where}: {opdef.name} takes {opdef.min_inputs} inputs; an "
                              "epilogue step takes the accumulator and at most one operand")
        (out,) = infer_types(opdef, args, attrs)
        if not symdims.same_shape(out.shape, base.shape):
            raise OpTypeError(f"{where}: {opdef.name} gives shape {list(out.shape)}; an epilogue "
                              f"must keep the shape {list(base.shape)}")
        types.append(out)
    return types


def _split_bias(ins: Types, attrs: Attrs, what: str) -> int:
    """How many inputs the base op takes: x, weight and, with has_bias, the bias."""
    n = 3 if attrs["has_bias"] else 2
    if len(ins) < n:
        raise OpTypeError(f"{what} with has_bias={attrs['has_bias']} needs at least {n} inputs")
    return n


def _fused_conv2d_types(ins: Types, attrs: Attrs) -> list[TensorType]:
    (base,) = _conv2d(ins[:_split_bias(ins, attrs, "fused_conv2d")], attrs)
    return epilogue_types(base, ins, attrs["epilogue"])


def _fused_linear_types(ins: Types, attrs: Attrs) -> list[TensorType]:
    (base,) = _linear(ins[:_split_bias(ins, attrs, "fused_linear")], attrs)
    return epilogue_types(base, ins, attrs["epilogue"])


def _fused_elementwise_types(ins: Types, attrs: Attrs) -> list[TensorType]:
    """Steps {"op", "args": [i, ...], "attrs"?}: arg i < n is input i, i >= n the result of
    step i - n. The node's result is the last step's."""
    steps = attrs["steps"]
    if not isinstance(steps, tuple) or not steps:
        raise OpTypeError(f"fused_elementwise needs a non-empty list of steps, got {steps!r}")
    values = list(ins)
    keys = frozenset(("op", "args", "attrs"))
    for k, step in enumerate(steps):
        where = f"fused_elementwise step {k}"
        opdef, step_attrs = _step(step, keys, where)
        args = step.get("args")
        if not isinstance(args, tuple):
            raise OpTypeError(f"{where}: args must be a list of indices, got {args!r}")
        types = [values[_index(i, len(values), where)] for i in args]
        values.extend(infer_types(opdef, types, step_attrs))
    return values[len(ins):]


def stage_types(op: str, ins: Types, attrs: Mapping[str, Any]) -> list[TensorType]:
    """For a fused op, the type of each intermediate result (base op, then each step): what the
    unfused graph holds there. The reference rounds to these types (torch's own promotion gives
    them), so a fused node computes exactly what its unfused nodes did."""
    return _STAGES[op](ins, Attrs(attrs))


_STAGES = {"fused_conv2d": _fused_conv2d_types, "fused_linear": _fused_linear_types,
           "fused_elementwise": _fused_elementwise_types}


def _last_stage(op: str):
    return lambda ins, attrs: (_STAGES[op](ins, attrs)[-1],)


def _fused_flops(op: str, base_flops):
    """The base op's FLOPs (none for an elementwise chain) plus one per element per step."""

    def flops(ins: Types, outs: tuple[TensorType, ...], attrs: Attrs) -> int:
        stages = _STAGES[op](ins, attrs)
        if base_flops is None:
            return sum(t.numel for t in stages)
        n = 3 if attrs["has_bias"] else 2
        return base_flops(ins[:n], stages[:1], attrs) + sum(t.numel for t in stages[1:])

    return flops


# ---------------------------------------------------------------------------------------------
# Declarations

_DIMS = {"dims": AttrSpec("ints"), "keepdim": AttrSpec("bool", False)}
_POOL = {"kernel": AttrSpec("ints"), "stride": AttrSpec("ints"),
         "padding": AttrSpec("ints", (0, 0)), "ceil_mode": AttrSpec("bool", False)}


def _op(name: str, n: int | tuple[int, int | None], infer, reference, kind: str, doc: str,
        flops=None, **attrs: AttrSpec) -> OpDef:
    lo, hi = (n, n) if isinstance(n, int) else n
    return OpDef(name, lo, hi, attrs, infer, reference, kind, flops, doc)


def _unary(name: str, infer, doc: str, **attrs: AttrSpec) -> OpDef:
    return _op(name, 1, infer, getattr(ref, name), "elementwise", doc, **attrs)


def _bin(name: str, infer, doc: str) -> OpDef:
    return _op(name, 2, infer, getattr(ref, name), "elementwise", doc)


_DECLS: list[OpDef] = [
    _op("const", 0, _const, None, "source", "A constant tensor (weights, buffers, scalars).",
        value=AttrSpec("any")),
    # elementwise, one input
    _unary("identity", _same, "Returns its input (clone, contiguous, detach, alias)."),
    _unary("dropout", _same, "Dropout in inference: the identity.", p=AttrSpec("float", 0.5)),
    _unary("relu", _same, "max(x, 0)."),
    _unary("clamp", _clamp, "Clamp to [min, max]; either bound may be none (relu6, hardtanh).",
           min=AttrSpec("float", None, optional=True), max=AttrSpec("float", None, optional=True)),
    _unary("sigmoid", _to_float, "1 / (1 + exp(-x))."),
    _unary("tanh", _to_float, "Hyperbolic tangent."),
    _unary("gelu", _gelu, "GELU, exact (erf) or the tanh approximation.",
           approximate=AttrSpec("str", "none")),
    _unary("silu", _float_only, "x * sigmoid(x)."),
    _unary("hardswish", _float_only, "x * relu6(x + 3) / 6."),
    _unary("hardsigmoid", _float_only, "relu6(x + 3) / 6."),
    _unary("sqrt", _to_float, "Square root."),
    _unary("rsqrt", _to_float, "1 / sqrt(x)."),
    _unary("exp", _to_float, "e ** x."),
    _unary("log", _to_float, "Natural logarithm."),
    _unary("erf", _to_float, "The error function."),
    _unary("sin", _to_float, "Sine (rotary position embeddings)."),
    _unary("cos", _to_float, "Cosine (rotary position embeddings)."),
    _unary("bitwise_not", _bitwise_not, "~x: logical not of bool, two's complement of integers "
           "(logical_not on bool masks)."),
    _unary("neg", _same, "-x."),
    _unary("abs", _same, "|x|."),
    _unary("cast", _cast, "Convert to another dtype (torch's .to(dtype)).",
           dtype=AttrSpec("dtype")),
    # elementwise, broadcasting
    _bin("add", _binary, "a + b with broadcasting and torch's type promotion."),
    _bin("sub", _binary, "a - b."),
    _bin("mul", _binary, "a * b."),
    _bin("div", _true_div, "True division a / b (integers give float32)."),
    _bin("pow", _binary, "a ** b."),
    _bin("maximum", _binary, "Elementwise max."),
    _bin("minimum", _binary, "Elementwise min."),
    _bin("eq", _compare, "a == b (bool)."),
    _bin("ne", _compare, "a != b (bool)."),
    _bin("lt", _compare, "a < b (bool)."),
    _bin("le", _compare, "a <= b (bool)."),
    _bin("gt", _compare, "a > b (bool)."),
    _bin("ge", _compare, "a >= b (bool)."),
    _bin("bitwise_and", _bitwise, "a & b on bool or integers (attention-mask logic)."),
    _bin("bitwise_or", _bitwise, "a | b on bool or integers."),
    _bin("bitwise_xor", _bitwise, "a ^ b on bool or integers."),
    _op("where", 3, _where, ref.where, "elementwise", "cond ? a : b, broadcasting all three."),
    # reductions and normalizations
    _op("sum", 1, _sum, ref.sum, "reduction", "Sum over dims.", _reduction_flops, **_DIMS),
    _op("mean", 1, _mean, ref.mean, "reduction", "Mean over dims.", _reduction_flops, **_DIMS),
    _op("amax", 1, _extreme, ref.amax, "reduction", "Max over dims.", _reduction_flops, **_DIMS),
    _op("amin", 1, _extreme, ref.amin, "reduction", "Min over dims.", _reduction_flops, **_DIMS),
    _op("argmax", 1, _arg_extreme, ref.argmax, "reduction",
        "i64 position of the max along dim (none: of the flattened tensor); the first one on "
        "ties, a NaN counts as the max.", _reduction_flops,
        dim=AttrSpec("int", None, optional=True), keepdim=AttrSpec("bool", False)),
    _op("argmin", 1, _arg_extreme, ref.argmin, "reduction",
        "i64 position of the min along dim (none: of the flattened tensor); the first one on "
        "ties, a NaN counts as the min.", _reduction_flops,
        dim=AttrSpec("int", None, optional=True), keepdim=AttrSpec("bool", False)),
    _op("topk", 1, _topk, ref.topk, "reduction",
        "The k largest (largest=false: smallest) along dim in sorted order, and their i64 "
        "positions: a stable sort's first k, so equal values keep their order (lower index "
        "first) and NaN sorts above every number. Also sort (k = the dim's size).",
        _reduction_flops, k=AttrSpec("int"), dim=AttrSpec("int", -1),
        largest=AttrSpec("bool", True)),
    _op("cumsum", 1, _cumsum, ref.cumsum, "reduction",
        "Running sum along dim (position ids from a mask); dtype converts the input first.",
        _reduction_flops, dim=AttrSpec("int"), dtype=AttrSpec("dtype", None, optional=True)),
    _op("softmax", 1, _softmax, ref.softmax, "reduction", "Softmax along dim.", _norm_flops,
        dim=AttrSpec("int")),
    _op("log_softmax", 1, _softmax, ref.log_softmax, "reduction", "Log-softmax along dim.",
        _norm_flops, dim=AttrSpec("int")),
    _op("batch_norm", 5, _batch_norm, ref.batch_norm, "reduction",
        "Inference batch norm over dim 1. Inputs: x, weight, bias, running_mean, running_var.",
        _norm_flops, eps=AttrSpec("float", 1e-5)),
    _op("layer_norm", 3, _layer_norm, ref.layer_norm, "reduction",
        "Layer norm over the trailing dims that the weight spans. Inputs: x, weight, bias.",
        _norm_flops, eps=AttrSpec("float", 1e-5)),
    # compute
    _op("conv2d", (2, 3), _conv2d, ref.conv2d, "compute",
        "2-D convolution, NCHW. Inputs: x, weight [Cout, Cin/groups, kh, kw], bias?.",
        _conv2d_flops, stride=AttrSpec("ints", (1, 1)), padding=AttrSpec("ints", (0, 0)),
        dilation=AttrSpec("ints", (1, 1)), groups=AttrSpec("int", 1)),
    _op("linear", (2, 3), _linear, ref.linear, "compute", "x @ weight.T + bias. Weight [N, K].",
        _linear_flops),
    _op("matmul", 2, _matmul, ref.matmul, "compute",
        "torch.matmul: batched, broadcasting, with 1-D promotion (mm, bmm).", _matmul_flops),
    _op("scaled_dot_product_attention", (3, 4), _sdpa, ref.scaled_dot_product_attention,
        "compute", "softmax(q @ k.T * scale + mask) @ v. Inputs: q, k, v, mask? (bool or float).",
        _sdpa_flops, is_causal=AttrSpec("bool", False),
        scale=AttrSpec("float", None, optional=True)),
    _op("embedding", 2, _embedding, ref.embedding, "layout", "weight[indices]. Inputs: weight, "
        "indices."),
    _op("embedding_bag", (3, 4), _embedding_bag, ref.embedding_bag, "reduction",
        "Bags of weight rows reduced by mode sum/mean/max (nn.EmbeddingBag). Inputs: weight, "
        "indices (1-D), offsets (each bag's start; include_last_offset: and the last's end), "
        "per-sample weights? (sum only). padding_idx rows count for nothing; an empty bag is 0.",
        _embedding_bag_flops, mode=AttrSpec("str"), include_last_offset=AttrSpec("bool", False),
        padding_idx=AttrSpec("int", None, optional=True)),
    _op("gather", 2, _gather, ref.gather, "layout", "torch.gather along dim.",
        dim=AttrSpec("int")),
    _op("index", (2, None), _index_take, ref.index, "layout",
        "x[:, ..., i0, i1, ...] (aten.index) with integer index tensors on the adjacent dims "
        "from dim on: their broadcast shape replaces those dims; negative indices count from "
        "the end. Inputs: x, then one index per indexed dim.", dim=AttrSpec("int")),
    # pooling
    _op("memory_format", 1, _memory_format, ref.memory_format, "layout",
        "The same NCHW tensor stored another way: nhwc (torch.channels_last) or nchw "
        "(contiguous). Made by layout-nhwc at the graph's edges; values are unchanged.",
        layout=AttrSpec("str")),
    _op("max_pool2d", 1, _max_pool2d, ref.max_pool2d, "reduction", "2-D max pooling, NCHW.",
        _reduction_flops, **_POOL, dilation=AttrSpec("ints", (1, 1))),
    _op("avg_pool2d", 1, _avg_pool2d, ref.avg_pool2d, "reduction", "2-D average pooling, NCHW.",
        _reduction_flops, count_include_pad=AttrSpec("bool", True),
        divisor_override=AttrSpec("int", None, optional=True), **_POOL),
    _op("adaptive_avg_pool2d", 1, _adaptive_avg_pool2d, ref.adaptive_avg_pool2d, "reduction",
        "Adaptive average pooling to output_size (torch's bin boundaries).", _reduction_flops,
        output_size=AttrSpec("ints")),
    # layout
    _op("reshape", 1, _reshape, ref.reshape, "layout", "Reshape (view, flatten, _unsafe_view).",
        shape=AttrSpec("ints", symbolic=True)),
    _op("permute", 1, _permute, ref.permute, "layout", "Permute dims (transpose, t, mT).",
        dims=AttrSpec("ints")),
    _op("cat", (1, None), _cat, ref.cat, "layout", "Concatenate along dim.", dim=AttrSpec("int")),
    _op("split", 1, _split, ref.split, "layout", "Split into pieces of `sizes` along dim (chunk).",
        sizes=AttrSpec("ints", symbolic=True), dim=AttrSpec("int")),
    _op("slice", 1, _slice, ref.slice, "layout", "x[start:end:step] along dim, torch's clamping.",
        dim=AttrSpec("int"), start=AttrSpec("int", symbolic=True),
        end=AttrSpec("int", symbolic=True), step=AttrSpec("int", 1)),
    _op("select", 1, _select, ref.select, "layout", "x[index] along dim, removing it.",
        dim=AttrSpec("int"), index=AttrSpec("int")),
    _op("unsqueeze", 1, _unsqueeze, ref.unsqueeze, "layout", "Insert a size-1 dim.",
        dim=AttrSpec("int")),
    _op("squeeze", 1, _squeeze, ref.squeeze, "layout", "Drop the named dims that have size 1.",
        dims=AttrSpec("ints")),
    _op("expand", 1, _expand, ref.expand, "layout", "Broadcast to shape (-1 keeps a dim).",
        shape=AttrSpec("ints", symbolic=True)),
    _op("pad", 1, _pad, ref.pad, "layout",
        "F.pad: pads lists (before, after) pairs from the last dim backwards; mode constant "
        "(fills value), reflect (mirrors without the edge) or replicate (repeats the edge).",
        pads=AttrSpec("ints", symbolic=True), mode=AttrSpec("str", "constant"),
        value=AttrSpec("float", 0.0)),
    # sources
    _op("arange", 0, _arange, ref.arange, "source", "[start, end) by step.",
        start=AttrSpec("float", symbolic=True), end=AttrSpec("float", symbolic=True),
        step=AttrSpec("float", 1.0),
        dtype=AttrSpec("dtype")),
    _op("full", 0, _full, ref.full, "source", "A tensor of shape filled with value (zeros, ones).",
        shape=AttrSpec("ints", symbolic=True), value=AttrSpec("float"), dtype=AttrSpec("dtype")),
    # fused (made by the fuse pass; see `epilogue_types` and `_fused_elementwise_types`)
    _op("fused_conv2d", (2, None), _last_stage("fused_conv2d"), ref.fused_conv2d, "compute",
        "conv2d, then an epilogue of elementwise steps. Inputs: x, weight, bias (if has_bias), "
        "then the operands the steps name by input index.",
        _fused_flops("fused_conv2d", _conv2d_flops), stride=AttrSpec("ints", (1, 1)),
        padding=AttrSpec("ints", (0, 0)), dilation=AttrSpec("ints", (1, 1)),
        groups=AttrSpec("int", 1), has_bias=AttrSpec("bool"), epilogue=AttrSpec("any", ())),
    _op("fused_linear", (2, None), _last_stage("fused_linear"), ref.fused_linear, "compute",
        "linear, then an epilogue of elementwise steps. Inputs: x, weight, bias (if has_bias), "
        "then the operands the steps name by input index.",
        _fused_flops("fused_linear", _linear_flops), has_bias=AttrSpec("bool"),
        epilogue=AttrSpec("any", ())),
    _op("fused_elementwise", (1, None), _last_stage("fused_elementwise"),
        ref.fused_elementwise, "elementwise",
        "A chain of elementwise ops as one node; each step names its arguments by index "
        "(inputs, then earlier steps' results); the result is the last step's.",
        _fused_flops("fused_elementwise", None), steps=AttrSpec("any")),
    # anything else
    _op("torch_op", (0, None), None, ref.torch_op, "opaque",
        "An aten op with no IR op, run by torch (also under the reference, converting arrays). "
        "`target` is `aten.name.overload`; `args`/`kwargs` hold its non-tensor arguments with "
        '{"$input": i} marking the i-th input.',
        target=AttrSpec("str"), args=AttrSpec("any", ()), kwargs=AttrSpec("any", {})),
]

OPS: dict[str, OpDef] = {d.name: d for d in _DECLS}

# The quantized ops (docs/quantized-ir.md) are declared in compiler/quant_ops.py from this
# module's pieces, so they are imported here, at the end, once those pieces exist.
from fxforge import quant_ops  # noqa: E402

OPS.update({d.name: d for d in quant_ops.declarations()})


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise OpRegistryError(f"unknown op {name!r}") from None
