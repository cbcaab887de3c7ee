"""ONNX converters: pooling (MaxPool, AveragePool, LpPool and their global forms).

ONNX sizes a pooled dim as torch does (ceil_mode's last window must start inside the input or
its leading pad), but allows what the IR's pooling ops do not: pads that differ at the two ends,
pads past half the kernel, dilated average pooling, and 3-D windows. Those run through explicit
padding: MaxPool pads with -inf (or the type's minimum), AveragePool sums windows of the
zero-padded input and divides by a constant that counts, for each output position, the window
elements ONNX counts (the pads with count_include_pad, else only the input). Windows the IR's
pooling ops cannot take at all (3-D, dilated averages) are the maximum or sum of one strided
slice per kernel tap.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import cast, is_float, like, unsupported

MAX_TAPS = 343  # a 7x7x7 window


def spatial_pads(node, sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim from `auto_pad` or `pads` (ONNX's SAME rule: the
    output is ceil(size / stride) and SAME_UPPER puts the odd pad at the end)."""
    nd = len(sizes)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(sizes, kernel, strides, dilations):
            out = -(-n // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * nd
    if auto_pad not in ("NOTSET", ""):
        raise unsupported(node, f"auto_pad {auto_pad!r}")
    flat = tuple(node.attr("pads") or (0,) * (2 * nd))
    if len(flat) != 2 * nd or any(p < 0 for p in flat):
        raise unsupported(node, f"pads {list(flat)} for {nd} spatial dims")
    return [(flat[i], flat[i + nd]) for i in range(nd)]


def _out_len(n: int, k: int, s: int, d: int, b: int, e: int, ceil: bool) -> int:
    """ONNX's (and torch's) output length; in ceil mode a window may be larger than the padded
    input (`nn.AvgPool2d(7, ceil_mode=True)` on a 1x1 map): one window, over what is there."""
    span = n + b + e - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + b:
        out -= 1
    if out < 1:
        raise ValueError(f"a window of {k} (dilation {d}) is larger than the padded size "
                         f"{n} + {b} + {e}")
    return out


def _counts(sizes, kernel, strides, dilations, pads, outs, include_pad: bool) -> np.ndarray:
    """How many elements of each window ONNX averages over: its taps inside the input (and its
    pads, with count_include_pad), never the ceil_mode overhang."""
    per_dim = []
    for n, k, s, d, (b, e), out in zip(sizes, kernel, strides, dilations, pads, outs):
        lo, hi = (0, n + b + e) if include_pad else (b, b + n)
        pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d
        per_dim.append(((pos >= lo) & (pos < hi)).sum(axis=1))
    total = per_dim[0]
    for c in per_dim[1:]:
        total = np.multiply.outer(total, c)
    return total


def _fill(x) -> float:
    if is_float(x):
        return -math.inf
    return float(np.iinfo(dtypes.to_numpy(x.type.dtype)).min)


def _pad_spatial(ctx, x, pads, value: float):
    flat = tuple(p for b, e in reversed(pads) for p in (b, e))
    if not any(flat):
        return x
    return ctx.emit("pad", [x], pads=flat, mode="constant", value=value)


def _taps(ctx, x, kernel, strides, dilations, outs, combine: str):
    """The combination (maximum or add) over kernel taps of one strided slice each."""
    total = None
    for tap in product(*(range(k) for k in kernel)):
        part = x
        for i, (t, s, d, out) in enumerate(zip(tap, strides, dilations, outs)):
            start = t * d
            part = ctx.emit("slice", [part], dim=i + 2, start=start, end=start + s * (out - 1) + 1,
                            step=s)
        total = part if total is None else ctx.emit(combine, [total, part])
    return total


def _pool(kind: str):
    """MaxPool ("max"), AveragePool ("avg") and LpPool ("lp")."""

    def convert(ctx, node):
        if len(node.outputs) > 1 and node.outputs[1]:
            raise unsupported(node, "MaxPool's Indices output")
        x = ctx.input(node, 0)
        nd = x.type.ndim - 2
        kernel = tuple(node.attr("kernel_shape") or ())
        if nd < 1 or len(kernel) != nd:
            raise unsupported(node, f"kernel_shape {list(kernel)} for {x.type}")
        strides = tuple(node.attr("strides") or (1,) * nd)
        dilations = tuple(node.attr("dilations") or (1,) * nd)
        ceil = bool(node.attr("ceil_mode", 0))
        sizes = x.type.shape[2:]
        pads = spatial_pads(node, sizes, kernel, strides, dilations)
        outs = [_out_len(n, k, s, d, b, e, ceil)
                for n, k, s, d, (b, e) in zip(sizes, kernel, strides, dilations, pads)]
        if kind == "lp":
            return [_lp(ctx, node, x, kernel, strides, dilations, pads, outs)]
        if _whole(sizes, kernel, dilations, pads, outs) and (kind == "max" or is_float(x)):
            return [_global_pool(ctx, kind, x)]
        native = _native(ctx, kind, node, x, kernel, strides, dilations, pads, outs, ceil)
        if native is not None:
            return [native]
        extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + b + e))
                 for o, s, d, k, n, (b, e) in zip(outs, strides, dilations, kernel, sizes, pads)]
        padded_pads = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
        if kind == "max":
            xp = _pad_spatial(ctx, x, padded_pads, _fill(x))
            if nd == 2:
                return [ctx.emit("max_pool2d", [xp], kernel=kernel, stride=strides,
                                 padding=(0, 0), dilation=dilations, ceil_mode=False)]
            _check_taps(node, kernel)
            return [_taps(ctx, xp, kernel, strides, dilations, outs, "maximum")]
        if not is_float(x):
            raise unsupported(node, f"AveragePool of {x.type.dtype}")
        xp = _pad_spatial(ctx, x, padded_pads, 0.0)
        if nd == 2 and dilations == (1, 1):
            sums = ctx.emit("avg_pool2d", [xp], kernel=kernel, stride=strides, padding=(0, 0),
                            ceil_mode=False, count_include_pad=True, divisor_override=1)
        else:
            _check_taps(node, kernel)
            sums = _taps(ctx, xp, kernel, strides, dilations, outs, "add")
        counts = _counts(sizes, kernel, strides, dilations, pads, outs,
                         bool(node.attr("count_include_pad", 0)))
        return [ctx.emit("div", [sums, ctx.const(counts.astype(dtypes.to_numpy(x.type.dtype)))])]

    return convert


def _whole(sizes, kernel, dilations, pads, outs) -> bool:
    """One window, unpadded and undilated, larger than the input in some dim (ceil mode lets
    it be): it covers the whole input, and ONNX averages only what is there."""
    return (all(o == 1 for o in outs) and all(p == (0, 0) for p in pads)
            and all(d == 1 for d in dilations) and all(k >= n for k, n in zip(kernel, sizes))
            and any(k > n for k, n in zip(kernel, sizes)))


def _global_pool(ctx, kind: str, x):
    """The average or maximum over every spatial position, keeping the dims (4-D average:
    adaptive_avg_pool2d to 1x1, the IR's global pooling)."""
    dims = tuple(range(2, x.type.ndim))
    if kind == "avg" and x.type.ndim == 4:
        return ctx.emit("adaptive_avg_pool2d", [x], output_size=(1, 1))
    return ctx.emit("mean" if kind == "avg" else "amax", [x], dims=dims, keepdim=True)


def _check_taps(node, kernel) -> None:
    if math.prod(kernel) > MAX_TAPS:
        raise unsupported(node, f"a {list(kernel)} window the IR's pooling ops cannot take")


def _native(ctx, kind, node, x, kernel, strides, dilations, pads, outs, ceil):
    """The IR's own max_pool2d / avg_pool2d where they compute exactly ONNX's result: 1-D or
    2-D, the same pad at both ends of a dim, at most half the kernel."""
    nd = len(kernel)
    if nd > 2 or any(b != e or 2 * b > k for (b, e), k in zip(pads, kernel)):
        return None
    if kind == "avg" and (any(d != 1 for d in dilations) or not is_float(x)):
        return None
    if nd == 1:
        x = ctx.emit("unsqueeze", [x], dim=2)
        kernel, strides, dilations = (1, *kernel), (1, *strides), (1, *dilations)
        pads = [(0, 0), *pads]
    padding = tuple(b for b, _ in pads)
    if kind == "max":
        y = ctx.emit("max_pool2d", [x], kernel=kernel, stride=strides, padding=padding,
                     dilation=dilations, ceil_mode=ceil)
    else:
        y = ctx.emit("avg_pool2d", [x], kernel=kernel, stride=strides, padding=padding,
                     ceil_mode=ceil, count_include_pad=bool(node.attr("count_include_pad", 0)),
                     divisor_override=None)
    if y.type.shape[-len(outs):] != tuple(outs):
        raise unsupported(node, f"pooling sizes {list(y.type.shape)} differ from ONNX's {outs}")
    return ctx.emit("squeeze", [y], dims=(2,)) if nd == 1 else y


def _power_sum(ctx, node, x, p: int):
    if p == 2:
        return ctx.emit("mul", [x, x])
    return ctx.emit("pow", [ctx.emit("abs", [x]), like(ctx, p, x)])


def _root(ctx, total, p: int):
    if p == 2:
        return ctx.emit("sqrt", [total])
    return ctx.emit("pow", [total, like(ctx, 1.0 / p, total)])


def _lp(ctx, node, x, kernel, strides, dilations, pads, outs):
    """(sum over the window of |x|^p)^(1/p); the pads are zeros."""
    p = node.attr("p", 2)
    if not is_float(x) or p <= 0:
        raise unsupported(node, f"LpPool with p={p} of {x.type.dtype}")
    powered = _power_sum(ctx, node, x, p)
    sizes = x.type.shape[2:]
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + b + e))
             for o, s, d, k, n, (b, e) in zip(outs, strides, dilations, kernel, sizes, pads)]
    xp = _pad_spatial(ctx, powered, [(b, e + x_) for (b, e), x_ in zip(pads, extra)], 0.0)
    _check_taps(node, kernel)
    return _root(ctx, _taps(ctx, xp, kernel, strides, dilations, outs, "add"), p)


def _global(kind: str):
    def convert(ctx, node):
        x = ctx.input(node, 0)
        dims = tuple(range(2, x.type.ndim))
        if kind == "avg" and not is_float(x):
            return [ctx.emit("mean", [x], dims=dims, keepdim=True)]
        if kind in ("avg", "max"):
            return [_global_pool(ctx, kind, x)]
        p = node.attr("p", 2)
        total = ctx.emit("sum", [_power_sum(ctx, node, x, p)], dims=dims, keepdim=True)
        return [cast(ctx, _root(ctx, total, p), x.type.dtype)]

    return convert


TABLE = [
    ("MaxPool", (11, 12, 22), _pool("max")),
    ("AveragePool", (11, 19, 22), _pool("avg")),
    ("LpPool", (11, 18, 22), _pool("lp")),
    ("GlobalAveragePool", (1, 22), _global("avg")),
    ("GlobalMaxPool", (1, 22), _global("max")),
    ("GlobalLpPool", (2, 22), _global("lp")),
]
