"""How each aten op of an exported graph becomes IR: one converter per aten overload.

A converter receives a `Lowering` context (see `compiler/capture.py`) and the fx node, and emits
IR nodes through `ctx.emit`. Anything raising `OpTypeError`/`Unconvertible` here, or producing a
type that disagrees with torch's, is not an error: the capture falls back to an opaque
`torch_op` node and the report says why. So a converter only has to be right, not complete.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

import torch

from fxforge import symdims
from fxforge.shapes import norm_dim, norm_dims

aten = torch.ops.aten


class Unconvertible(Exception):
    """This use of the aten op has no exact IR equivalent (the op falls back to torch)."""


Converter = Callable[[Any, torch.fx.Node], Any]
CONVERTERS: dict[Any, Converter] = {}


def _pair(v: Any) -> tuple[int, int]:
    v = [v] if isinstance(v, int) else list(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# --- elementwise --------------------------------------------------------------------------------

_UNARY = {
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu",
    "hardswish": "hardswish", "hardsigmoid": "hardsigmoid", "sqrt": "sqrt", "rsqrt": "rsqrt",
    "exp": "exp", "log": "log", "neg": "neg", "abs": "abs", "erf": "erf",
    "sin": "sin", "cos": "cos", "bitwise_not": "bitwise_not",
    "clone": "identity", "contiguous": "identity", "alias": "identity", "detach": "identity",
    "lift_fresh_copy": "identity",
}
for _name, _op in _UNARY.items():
    CONVERTERS[getattr(aten, _name).default] = (
        lambda op: lambda ctx, n: ctx.emit(op, [ctx.value(n.args[0])]))(_op)


def _clamp_to(lo: Any, hi: Any) -> Converter:
    return lambda ctx, n: ctx.emit("clamp", [ctx.value(n.args[0])], min=lo, max=hi)


CONVERTERS[aten.relu6.default] = _clamp_to(0.0, 6.0)


def _hardtanh(ctx, n):
    return _clamp_to(_arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0))(ctx, n)


def _clamp(ctx, n):
    return _clamp_to(_arg(n, 1, "min"), _arg(n, 2, "max"))(ctx, n)


CONVERTERS[aten.hardtanh.default] = _hardtanh
CONVERTERS[aten.clamp.default] = _clamp
CONVERTERS[aten.clamp_min.default] = lambda ctx, n: _clamp_to(n.args[1], None)(ctx, n)
CONVERTERS[aten.clamp_max.default] = lambda ctx, n: _clamp_to(None, n.args[1])(ctx, n)
CONVERTERS[aten.gelu.default] = lambda ctx, n: ctx.emit(
    "gelu", [ctx.value(n.args[0])], approximate=n.kwargs.get("approximate", "none"))
CONVERTERS[aten.dropout.default] = lambda ctx, n: ctx.emit(
    "dropout", [ctx.value(n.args[0])], p=float(_arg(n, 1, "p", 0.5)))


def _to_dtype(ctx, n):
    dtype = n.meta["val"].dtype
    x = ctx.value(n.args[0])
    return ctx.emit("cast", [x], dtype=ctx.dtype_name(dtype))


for _target in (aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
                aten.type_as.default):
    CONVERTERS[_target] = _to_dtype


def _binary(op: str, alpha_on_b: bool = False) -> Converter:
    def convert(ctx, n):
        a, b = ctx.operands(n.args[0], n.args[1])
        alpha = n.kwargs.get("alpha", 1)
        if alpha != 1:
            if not alpha_on_b:
                raise Unconvertible("alpha")
            b = ctx.emit("mul", [b, ctx.scalar(alpha, b)])
        return ctx.emit(op, [a, b])

    return convert


for _op, _overloads in {
    "add": ("Tensor", "Scalar"), "sub": ("Tensor", "Scalar"), "mul": ("Tensor", "Scalar"),
    "div": ("Tensor", "Scalar"), "pow": ("Tensor_Tensor", "Tensor_Scalar"),
    "maximum": ("default",), "minimum": ("default",),
    "eq": ("Tensor", "Scalar"), "ne": ("Tensor", "Scalar"), "lt": ("Tensor", "Scalar"),
    "le": ("Tensor", "Scalar"), "gt": ("Tensor", "Scalar"), "ge": ("Tensor", "Scalar"),
}.items():
    for _overload in _overloads:
        CONVERTERS[getattr(getattr(aten, _op), _overload)] = _binary(_op, _op in ("add", "sub"))


CONVERTERS[aten.min.other] = _binary("minimum")
CONVERTERS[aten.max.other] = _binary("maximum")
for _name in ("and", "or", "xor"):  # `a & b` is aten.__and__; torch.bitwise_and also takes 2 & b
    _dunder, _bitwise = getattr(aten, f"__{_name}__"), getattr(aten, f"bitwise_{_name}")
    for _target in (_dunder.Tensor, _dunder.Scalar, _bitwise.Tensor, _bitwise.Scalar,
                    _bitwise.Scalar_Tensor):
        CONVERTERS[_target] = _binary(f"bitwise_{_name}")


def _as_bool(ctx, v):
    """logical_* read any dtype as truth values: nonzero (and NaN) is true, as a cast to bool."""
    return v if v.type.dtype == "bool" else ctx.emit("cast", [v], dtype="bool")


def _logical(op: str) -> Converter:
    return lambda ctx, n: ctx.emit(op, [_as_bool(ctx, ctx.value(a)) for a in n.args[:2]])


CONVERTERS[aten.logical_and.default] = _logical("bitwise_and")
CONVERTERS[aten.logical_or.default] = _logical("bitwise_or")
CONVERTERS[aten.logical_xor.default] = _logical("bitwise_xor")
CONVERTERS[aten.logical_not.default] = _logical("bitwise_not")


def _rsub(ctx, n):
    a, b = ctx.operands(n.args[0], n.args[1])
    alpha = n.kwargs.get("alpha", 1)
    if alpha != 1:
        a = ctx.emit("mul", [a, ctx.scalar(alpha, a)])
    return ctx.emit("sub", [b, a])


CONVERTERS[aten.rsub.Scalar] = _rsub
CONVERTERS[aten.rsub.Tensor] = _rsub
CONVERTERS[aten.pow.Scalar] = lambda ctx, n: ctx.emit("pow", list(ctx.operands(*n.args[:2])))


def _div_mode(ctx, n):
    if n.kwargs.get("rounding_mode") is not None:
        raise Unconvertible("rounding_mode")
    return ctx.emit("div", list(ctx.operands(n.args[0], n.args[1])))


CONVERTERS[aten.div.Tensor_mode] = _div_mode
CONVERTERS[aten.div.Scalar_mode] = _div_mode


def _where(ctx, n):
    cond = ctx.value(n.args[0])
    a, b = ctx.operands(n.args[1], n.args[2])
    return ctx.emit("where", [cond, a, b])


for _overload in ("self", "ScalarSelf", "ScalarOther", "Scalar"):
    CONVERTERS[getattr(aten.where, _overload)] = _where


def _masked_fill(ctx, n):
    x, mask = ctx.value(n.args[0]), ctx.value(n.args[1])
    fill = n.args[2]
    fill = ctx.value(fill) if isinstance(fill, torch.fx.Node) else ctx.scalar(fill, x, x.type.dtype)
    if fill.type.dtype != x.type.dtype:
        fill = ctx.emit("cast", [fill], dtype=x.type.dtype)
    return ctx.emit("where", [mask, fill, x])


CONVERTERS[aten.masked_fill.Scalar] = _masked_fill
CONVERTERS[aten.masked_fill.Tensor] = _masked_fill


# --- reductions and normalizations --------------------------------------------------------------


def _reduction(op: str) -> Converter:
    def convert(ctx, n):
        x = ctx.value(n.args[0])
        dims = _arg(n, 1, "dim", None) if len(n.args) > 1 or "dim" in n.kwargs else None
        keepdim = _arg(n, 2, "keepdim", False)
        if n.target in (aten.sum.default, aten.mean.default):
            dims, keepdim = None, False
        if isinstance(dims, int):
            dims = [dims]
        dims = tuple(range(x.type.ndim)) if not dims else norm_dims(dims, x.type.ndim)
        if n.kwargs.get("dtype") is not None:
            x = ctx.emit("cast", [x], dtype=ctx.dtype_name(n.kwargs["dtype"]))
        return ctx.emit(op, [x], dims=dims, keepdim=bool(keepdim))

    return convert


for _target, _op in ((aten.sum.default, "sum"), (aten.sum.dim_IntList, "sum"),
                     (aten.mean.default, "mean"), (aten.mean.dim, "mean"),
                     (aten.amax.default, "amax"), (aten.amin.default, "amin")):
    CONVERTERS[_target] = _reduction(_op)


def _arg_extreme(op: str) -> Converter:
    def convert(ctx, n):
        x = ctx.value(n.args[0])
        dim = _arg(n, 1, "dim")
        return ctx.emit(op, [x], dim=norm_dim(dim, x.type.ndim) if dim is not None else None,
                        keepdim=bool(_arg(n, 2, "keepdim", False)))

    return convert


CONVERTERS[aten.argmax.default] = _arg_extreme("argmax")
CONVERTERS[aten.argmin.default] = _arg_extreme("argmin")


def _topk(ctx, n):
    """sorted=False lets torch return the k in any order (its CPU kernel's order depends on k and
    the size); the IR's sorted order is one of those orders, so it is accepted as it is."""
    x = ctx.value(n.args[0])
    return ctx.emit("topk", [x], n_outputs=2, k=_arg(n, 1, "k"),
                    dim=norm_dim(_arg(n, 2, "dim", -1), x.type.ndim),
                    largest=bool(_arg(n, 3, "largest", True)))


CONVERTERS[aten.topk.default] = _topk


def _cumsum(ctx, n):
    x = ctx.value(n.args[0])
    dtype = n.kwargs.get("dtype")
    return ctx.emit("cumsum", [x], dim=norm_dim(_arg(n, 1, "dim"), x.type.ndim),
                    dtype=ctx.dtype_name(dtype) if dtype is not None else None)


CONVERTERS[aten.cumsum.default] = _cumsum


def _softmax(op: str) -> Converter:
    def convert(ctx, n):
        x = ctx.value(n.args[0])
        if n.target in (aten._softmax.default, aten._log_softmax.default) and n.args[2]:
            raise Unconvertible("half_to_float")
        if n.kwargs.get("dtype") is not None:
            x = ctx.emit("cast", [x], dtype=ctx.dtype_name(n.kwargs["dtype"]))
        return ctx.emit(op, [x], dim=norm_dim(n.args[1], x.type.ndim))

    return convert


for _target, _op in ((aten.softmax.int, "softmax"), (aten._softmax.default, "softmax"),
                     (aten.log_softmax.int, "log_softmax"),
                     (aten._log_softmax.default, "log_softmax")):
    CONVERTERS[_target] = _softmax(_op)


def _bn_inputs(ctx, x, weight, bias, mean, var):
    channels = x.type.shape[1]
    weight = ctx.value(weight) if weight is not None else ctx.filled(1.0, (channels,), x)
    bias = ctx.value(bias) if bias is not None else ctx.filled(0.0, (channels,), x)
    if mean is None or var is None:
        raise Unconvertible("batch norm without running statistics")
    return [x, weight, bias, ctx.value(mean), ctx.value(var)]


def _batch_norm(ctx, n):
    x = ctx.value(n.args[0])
    if _arg(n, 5, "training", False):
        raise Unconvertible("batch norm in training mode")
    inputs = _bn_inputs(ctx, x, n.args[1], n.args[2], n.args[3], n.args[4])
    return ctx.emit("batch_norm", inputs, eps=float(_arg(n, 7, "eps", 1e-5)))


def _bn_no_training(ctx, n):
    x = ctx.value(n.args[0])
    inputs = _bn_inputs(ctx, x, n.args[1], n.args[2], n.args[3], n.args[4])
    out = ctx.emit("batch_norm", inputs, eps=float(n.args[6]))
    return (out, None, None)  # only the normalized output exists in inference


CONVERTERS[aten.batch_norm.default] = _batch_norm
CONVERTERS[aten._native_batch_norm_legit_no_training.default] = _bn_no_training


def _layer_norm(ctx, n):
    x = ctx.value(n.args[0])
    shape = tuple(n.args[1])
    weight, bias = _arg(n, 2, "weight"), _arg(n, 3, "bias")
    weight = ctx.value(weight) if weight is not None else ctx.filled(1.0, shape, x)
    bias = ctx.value(bias) if bias is not None else ctx.filled(0.0, shape, x)
    out = ctx.emit("layer_norm", [x, weight, bias], eps=float(_arg(n, 4, "eps", 1e-5)))
    return out if n.target == aten.layer_norm.default else (out, None, None)


CONVERTERS[aten.layer_norm.default] = _layer_norm
CONVERTERS[aten.native_layer_norm.default] = _layer_norm


# --- compute ------------------------------------------------------------------------------------


def _conv_padding(padding: Any, weight_shape: tuple[int, ...], dilation) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
        if any(t % 2 for t in totals):
            raise Unconvertible("asymmetric 'same' padding")
        return (totals[0] // 2, totals[1] // 2)
    return _pair(padding)


def _conv2d(ctx, n):
    x, w = ctx.value(n.args[0]), ctx.value(n.args[1])
    bias = _arg(n, 2, "bias")
    if x.type.ndim != 4:
        raise Unconvertible("conv2d on unbatched input")
    dilation = _pair(_arg(n, 5, "dilation", 1))
    inputs = [x, w] + ([ctx.value(bias)] if bias is not None else [])
    return ctx.emit("conv2d", inputs, stride=_pair(_arg(n, 3, "stride", 1)),
                    padding=_conv_padding(_arg(n, 4, "padding", 0), w.type.shape, dilation),
                    dilation=dilation, groups=_arg(n, 6, "groups", 1))


def _convolution(ctx, n):
    x, w, bias, stride, padding, dilation, transposed, _, groups = n.args[:9]
    if transposed or len(stride) != 2:
        raise Unconvertible("only non-transposed 2-D convolution")
    x, w = ctx.value(x), ctx.value(w)
    inputs = [x, w] + ([ctx.value(bias)] if bias is not None else [])
    return ctx.emit("conv2d", inputs, stride=_pair(stride), padding=_pair(padding),
                    dilation=_pair(dilation), groups=groups)


CONVERTERS[aten.conv2d.default] = _conv2d
CONVERTERS[aten.conv2d.padding] = _conv2d
CONVERTERS[aten.convolution.default] = _convolution
CONVERTERS[aten.linear.default] = lambda ctx, n: ctx.emit(
    "linear", [ctx.value(a) for a in n.args[:3] if a is not None])
for _target in (aten.matmul.default, aten.mm.default, aten.bmm.default):
    CONVERTERS[_target] = lambda ctx, n: ctx.emit("matmul", [ctx.value(a) for a in n.args[:2]])


def _addmm(ctx, n):
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        raise Unconvertible("addmm with beta/alpha")
    product = ctx.emit("matmul", [ctx.value(n.args[1]), ctx.value(n.args[2])])
    return ctx.emit("add", [product, ctx.value(n.args[0])])


CONVERTERS[aten.addmm.default] = _addmm


def _sdpa(ctx, n):
    q, k, v = (ctx.value(a) for a in n.args[:3])
    mask = _arg(n, 3, "attn_mask")
    if _arg(n, 7, "enable_gqa", False):
        raise Unconvertible("grouped-query attention")
    inputs = [q, k, v] + ([ctx.value(mask)] if mask is not None else [])
    if _arg(n, 4, "dropout_p", 0.0):
        ctx.warn("attention dropout_p > 0 ignored: compiled graphs run in inference")
    return ctx.emit("scaled_dot_product_attention", inputs,
                    is_causal=bool(_arg(n, 5, "is_causal", False)), scale=_arg(n, 6, "scale"))


CONVERTERS[aten.scaled_dot_product_attention.default] = _sdpa
CONVERTERS[aten.embedding.default] = lambda ctx, n: ctx.emit(
    "embedding", [ctx.value(n.args[0]), ctx.value(n.args[1])])


_BAG_MODES = {0: "sum", 1: "mean", 2: "max"}  # aten's mode numbers


def _embedding_bag(ctx, n):
    """aten.embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode, sparse,
    per_sample_weights, include_last_offset[, padding_idx]); F.embedding_bag has already made a
    2-D input 1-D with offsets. Only the bag results have an IR op: a graph that reads the other
    outputs (offset2bag, bag_size, max_indices) keeps the op on torch, which computes them."""
    if any(u.target is not operator.getitem or (u.args[1] != 0 and u.users) for u in n.users):
        raise Unconvertible("the graph reads embedding_bag's offset2bag / bag_size / max_indices "
                            "outputs, which have no IR op")
    weight, indices, offsets = (ctx.value(a) for a in n.args[:3])
    psw = _arg(n, 6, "per_sample_weights")
    padding = _arg(n, 8, "padding_idx")
    if n.target == aten._embedding_bag.default and padding == -1:
        padding = None  # _embedding_bag's "no padding"
    if padding is not None and padding < 0:
        raise Unconvertible(f"negative padding_idx {padding}")
    mode = _BAG_MODES.get(_arg(n, 4, "mode", 0))
    if mode is None or indices.type.ndim != 1:
        raise Unconvertible("embedding_bag needs a 1-D input with offsets and mode 0, 1 or 2")
    out = ctx.emit("embedding_bag", [weight, indices, offsets] + (
        [ctx.value(psw)] if psw is not None else []), mode=mode, padding_idx=padding,
        include_last_offset=bool(_arg(n, 7, "include_last_offset", False)))
    return (out, None, None, None)


for _target in (aten.embedding_bag.default, aten.embedding_bag.padding_idx,
                aten._embedding_bag.default):
    CONVERTERS[_target] = _embedding_bag


CONVERTERS[aten.gather.default] = lambda ctx, n: ctx.emit(
    "gather", [ctx.value(n.args[0]), ctx.value(n.args[2])],
    dim=norm_dim(n.args[1], len(n.args[0].meta["val"].shape)))


def _index(ctx, n):
    """x[:, ..., i0, i1, ...]: index tensors on adjacent dims after leading full slices (None),
    as in `x[:, :, idx]` and transformers' `padding_mask[batch_idx, kv_idx]`. Index tensors
    with a full slice between them (torch moves their dims to the front) and masks stay with
    torch."""
    x = ctx.value(n.args[0])
    dims = [d for d, i in enumerate(n.args[1]) if i is not None]
    if not dims or dims != list(range(dims[0], dims[0] + len(dims))):
        raise Unconvertible(f"index tensors at dims {dims} are not adjacent")
    indices = [ctx.value(n.args[1][d]) for d in dims]
    if any(i.type.dtype in ("bool", "u8") for i in indices):
        raise Unconvertible("indexing with a boolean mask")
    return ctx.emit("index", [x, *indices], dim=dims[0])


CONVERTERS[aten.index.Tensor] = _index
CONVERTERS[aten._unsafe_index.Tensor] = _index  # no bounds check: the same on valid indices


# --- pooling ------------------------------------------------------------------------------------


def _max_pool(ctx, n):
    x = ctx.value(n.args[0])
    kernel = _pair(n.args[1])
    stride = _arg(n, 2, "stride", [])
    out = ctx.emit("max_pool2d", [x], kernel=kernel, stride=_pair(stride) if stride else kernel,
                   padding=_pair(_arg(n, 3, "padding", 0)),
                   dilation=_pair(_arg(n, 4, "dilation", 1)),
                   ceil_mode=bool(_arg(n, 5, "ceil_mode", False)))
    if n.target == aten.max_pool2d_with_indices.default:
        return (out, None)
    return out


def _avg_pool(ctx, n):
    x = ctx.value(n.args[0])
    kernel = _pair(n.args[1])
    stride = _arg(n, 2, "stride", [])
    return ctx.emit("avg_pool2d", [x], kernel=kernel, stride=_pair(stride) if stride else kernel,
                    padding=_pair(_arg(n, 3, "padding", 0)),
                    ceil_mode=bool(_arg(n, 4, "ceil_mode", False)),
                    count_include_pad=bool(_arg(n, 5, "count_include_pad", True)),
                    divisor_override=_arg(n, 6, "divisor_override"))


CONVERTERS[aten.max_pool2d.default] = _max_pool
CONVERTERS[aten.max_pool2d_with_indices.default] = _max_pool
CONVERTERS[aten.avg_pool2d.default] = _avg_pool
for _target in (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default):
    CONVERTERS[_target] = lambda ctx, n: ctx.emit(
        "adaptive_avg_pool2d", [ctx.value(n.args[0])],
        output_size=ctx.sizes(n.meta["val"].shape[2:]))


# --- layout -------------------------------------------------------------------------------------


def _reshape_like_meta(ctx, n):
    """Every view/reshape/flatten becomes a reshape to the shape torch computed."""
    return ctx.emit("reshape", [ctx.value(n.args[0])], shape=ctx.sizes(n.meta["val"].shape))


for _target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                aten.flatten.using_ints, aten.unflatten.int):
    CONVERTERS[_target] = _reshape_like_meta


def _permute(ctx, n):
    x = ctx.value(n.args[0])
    return ctx.emit("permute", [x], dims=norm_dims(n.args[1], x.type.ndim))


def _transpose(ctx, n):
    x = ctx.value(n.args[0])
    dims = list(range(x.type.ndim))
    a, b = (norm_dim(d, x.type.ndim) for d in n.args[1:3])
    dims[a], dims[b] = dims[b], dims[a]
    return ctx.emit("permute", [x], dims=tuple(dims))


def _t(ctx, n):
    x = ctx.value(n.args[0])
    return ctx.emit("permute", [x], dims=tuple(reversed(range(x.type.ndim))))


CONVERTERS[aten.permute.default] = _permute
CONVERTERS[aten.transpose.int] = _transpose
CONVERTERS[aten.t.default] = _t


def _cat(ctx, n):
    tensors = [ctx.value(a) for a in n.args[0]]
    if any(t.type.shape == (0,) for t in tensors):
        raise Unconvertible("legacy empty tensor in cat")
    return ctx.emit("cat", tensors, dim=norm_dim(_arg(n, 1, "dim", 0), tensors[0].type.ndim))


CONVERTERS[aten.cat.default] = _cat


def _split_like_meta(ctx, n):
    x = ctx.value(n.args[0])
    dim = norm_dim(_arg(n, 2, "dim", 0), x.type.ndim)
    sizes = ctx.sizes([t.shape[dim] for t in n.meta["val"]])
    pieces = ctx.emit("split", [x], n_outputs=len(sizes), sizes=sizes, dim=dim)
    return pieces if isinstance(pieces, tuple) else (pieces,)


def _unbind(ctx, n):
    x = ctx.value(n.args[0])
    dim = norm_dim(_arg(n, 1, "dim", 0), x.type.ndim)
    pieces = ctx.emit("split", [x], n_outputs=x.type.shape[dim], sizes=(1,) * x.type.shape[dim],
                      dim=dim)
    if not isinstance(pieces, tuple):
        pieces = (pieces,)
    return tuple(ctx.emit("squeeze", [p], dims=(dim,)) for p in pieces)


for _target in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
    CONVERTERS[_target] = _split_like_meta
CONVERTERS[aten.unbind.int] = _unbind


def _slice(ctx, n):
    x = ctx.value(n.args[0])
    dim = norm_dim(_arg(n, 1, "dim", 0), x.type.ndim)
    start, end, step = (ctx.size_arg(_arg(n, i, name, d)) for i, name, d in
                        ((2, "start", None), (3, "end", None), (4, "step", 1)))
    size = x.type.shape[dim]
    if symdims.is_sym(size) or symdims.is_sym(start) or symdims.is_sym(end):
        return _symbolic_slice(ctx, x, dim, size, start, end, step)
    span = range(size)[slice(start, end if end != sys.maxsize else None, step)]
    return ctx.emit("slice", [x], dim=dim, start=span.start, end=span.stop, step=span.step)


def _symbolic_slice(ctx, x, dim: int, size: Any, start: Any, end: Any, step: int):
    """A slice where the size or a bound is symbolic (a dynamic capture), with bounds >= 0
    (`x[:, :seq_len]`, `x[1:]`). Its length is checked against the one torch derived for every
    size in range (Lowering's type check), so a bound torch would clamp is refused there."""
    start = 0 if start is None else start
    end = size if end is None or end == sys.maxsize else end
    if type(start) is int and start < 0 or type(end) is int and end < 0:
        raise Unconvertible("negative slice bounds over a symbolic size")
    return ctx.emit("slice", [x], dim=dim, start=start, end=end, step=step)


CONVERTERS[aten.slice.Tensor] = _slice
def _select(ctx, n):
    x = ctx.value(n.args[0])
    dim, index = norm_dim(n.args[1], x.type.ndim), n.args[2]
    size = x.type.shape[dim]
    if symdims.is_sym(size) and index < 0:
        raise Unconvertible("a negative index into a symbolic dim")
    return ctx.emit("select", [x], dim=dim, index=index if symdims.is_sym(size) else index % size)


CONVERTERS[aten.select.int] = _select
CONVERTERS[aten.unsqueeze.default] = lambda ctx, n: ctx.emit(
    "unsqueeze", [ctx.value(n.args[0])], dim=norm_dim(n.args[1], len(n.meta["val"].shape)))


def _squeeze(ctx, n):
    x = ctx.value(n.args[0])
    dims = n.args[1] if len(n.args) > 1 else range(x.type.ndim)
    dims = [dims] if isinstance(dims, int) else list(dims)
    return ctx.emit("squeeze", [x], dims=norm_dims(dims, x.type.ndim))


for _target in (aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims):
    CONVERTERS[_target] = _squeeze
CONVERTERS[aten.expand.default] = lambda ctx, n: ctx.emit(
    "expand", [ctx.value(n.args[0])], shape=ctx.sizes(n.meta["val"].shape))


def _pad_to(ctx, n, mode: str, value: Any = 0.0):
    pads = tuple(n.args[1])
    if any(p < 0 for p in pads):
        raise Unconvertible("negative pads (cropping)")
    if isinstance(value, int) and not isinstance(value, bool) and float(value) != value:
        raise Unconvertible(f"pad value {value} is not exact as a float")
    return ctx.emit("pad", [ctx.value(n.args[0])], pads=pads, mode=mode, value=float(value))


def _pad(ctx, n):
    mode = _arg(n, 2, "mode", "constant")
    value = _arg(n, 3, "value") if mode == "constant" else None
    return _pad_to(ctx, n, mode, 0.0 if value is None else value)


CONVERTERS[aten.pad.default] = _pad
CONVERTERS[aten.constant_pad_nd.default] = lambda ctx, n: _pad_to(
    ctx, n, "constant", _arg(n, 2, "value", 0))
for _k in (1, 2, 3):
    CONVERTERS[getattr(aten, f"reflection_pad{_k}d").default] = lambda ctx, n: _pad_to(
        ctx, n, "reflect")
    CONVERTERS[getattr(aten, f"replication_pad{_k}d").default] = lambda ctx, n: _pad_to(
        ctx, n, "replicate")


# --- sources ------------------------------------------------------------------------------------


def _arange(ctx, n):
    numbers = [ctx.size_arg(a) for a in n.args]
    start, end, step = {1: lambda: (0, numbers[0], 1), 2: lambda: (*numbers, 1),
                        3: lambda: tuple(numbers)}[len(numbers)]()
    def number(v):  # a symbolic bound stays a dim (fxforge.symdims)
        return v if symdims.is_sym(v) else float(v)

    return ctx.emit("arange", [], start=number(start), end=number(end), step=number(step),
                    dtype=ctx.dtype_name(n.meta["val"].dtype))


for _target in (aten.arange.default, aten.arange.start, aten.arange.start_step):
    CONVERTERS[_target] = _arange


def _filled(value_of: Callable[[torch.fx.Node], Any]) -> Converter:
    def convert(ctx, n):
        val = n.meta["val"]
        return ctx.emit("full", [], shape=ctx.sizes(val.shape), value=float(value_of(n)),
                        dtype=ctx.dtype_name(val.dtype))

    return convert


CONVERTERS[aten.full.default] = _filled(lambda n: n.args[1])
CONVERTERS[aten.full_like.default] = _filled(lambda n: n.args[1])
CONVERTERS[aten.new_full.default] = _filled(lambda n: n.args[2])
CONVERTERS[aten.scalar_tensor.default] = _filled(lambda n: n.args[0])
for _name in ("zeros", "zeros_like", "new_zeros", "empty_like", "new_empty"):
    CONVERTERS[getattr(aten, _name).default] = _filled(lambda n: 0.0)
CONVERTERS[aten.empty.memory_format] = _filled(lambda n: 0.0)
for _name in ("ones", "ones_like", "new_ones"):
    CONVERTERS[getattr(aten, _name).default] = _filled(lambda n: 1.0)

# Ops that only check things at trace time; they produce nothing the graph needs.
IGNORED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default,
           aten.sym_constrain_range_for_size.default}


from fxforge import aten_decompose  # noqa: E402, F401 - registers its converters
