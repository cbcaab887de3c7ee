"""Converters that decompose an aten op into IR ops that already exist (conv1d as conv2d over
a unit height, group norm as layer norm over groups, ...), so the op needs no IR op, reference
or kernel of its own and every pass and backend sees through it. Registered into
`fxforge.aten.CONVERTERS` when `fxforge.aten` is imported.

Each decomposition follows the order of operations of torch's own kernel where that matters for
rounding (weight norm divides g by the norm before scaling v), and refuses (Unconvertible: the op
falls back to torch) the uses it cannot reproduce exactly.
"""

from __future__ import annotations

import math
from typing import Any

from fxforge.aten import CONVERTERS, Unconvertible, _arg, aten
from fxforge.shapes import norm_dim

# --- conv1d as conv2d ---------------------------------------------------------------------------


def _single(v: Any) -> int:
    """conv1d's stride/padding/dilation: an int or a one-element list."""
    v = [v] if isinstance(v, int) else list(v)
    if len(v) != 1:
        raise Unconvertible(f"expected one value for a 1-D convolution, got {v}")
    return int(v[0])


def _conv1d_padding(padding: Any, kernel: int, dilation: int) -> int:
    """torch's "same" pads d*(k-1) in total, the odd one on the right: only the symmetric case is
    a conv2d padding."""
    if padding == "valid":
        return 0
    if padding == "same":
        total = dilation * (kernel - 1)
        if total % 2:
            raise Unconvertible("asymmetric 'same' padding")
        return total // 2
    return _single(padding)


def _emit_conv1d(ctx, x, w, bias, stride: int, padding: int, dilation: int, groups: int):
    """(N, C, L) as (N, C, 1, L) through conv2d with a (Cout, Cin/g, 1, K) weight, so conv1d
    layers get conv2d's kernels, fusion and int8 quantization. A constant weight's unsqueeze is
    folded by fold-constants; an unbatched (C, L) input gets a batch of one and loses it again."""
    if x.type.ndim not in (2, 3):
        raise Unconvertible(f"conv1d needs a 2-D or 3-D input, got rank {x.type.ndim}")
    unbatched = x.type.ndim == 2
    if unbatched:
        x = ctx.emit("unsqueeze", [x], dim=0)
    x = ctx.emit("unsqueeze", [x], dim=2)
    w = ctx.emit("unsqueeze", [w], dim=2)
    inputs = [x, w] + ([bias] if bias is not None else [])
    out = ctx.emit("conv2d", inputs, stride=(1, stride), padding=(0, padding),
                   dilation=(1, dilation), groups=groups)
    out = ctx.emit("squeeze", [out], dims=(2,))
    return ctx.emit("squeeze", [out], dims=(0,)) if unbatched else out


def _conv1d(ctx, n):
    x, w = ctx.value(n.args[0]), ctx.value(n.args[1])
    if w.type.ndim != 3:
        raise Unconvertible(f"conv1d weight must be 3-D, got {w.type}")
    bias = _arg(n, 2, "bias")
    dilation = _single(_arg(n, 5, "dilation", 1))
    padding = _conv1d_padding(_arg(n, 4, "padding", 0), w.type.shape[2], dilation)
    return _emit_conv1d(ctx, x, w, ctx.value(bias) if bias is not None else None,
                        _single(_arg(n, 3, "stride", 1)), padding, dilation,
                        int(_arg(n, 6, "groups", 1)))


CONVERTERS[aten.conv1d.default] = _conv1d
CONVERTERS[aten.conv1d.padding] = _conv1d

_convolution_2d = CONVERTERS[aten.convolution.default]


def _convolution(ctx, n):
    """aten.convolution covers every rank: 1-D goes through conv2d here, the rest as before."""
    x, w, bias, stride, padding, dilation, transposed, _, groups = n.args[:9]
    if len(stride) != 1:
        return _convolution_2d(ctx, n)
    if transposed:
        raise Unconvertible("transposed 1-D convolution")
    return _emit_conv1d(ctx, ctx.value(x), ctx.value(w),
                        ctx.value(bias) if bias is not None else None, _single(stride),
                        _single(padding), _single(dilation), int(groups))


CONVERTERS[aten.convolution.default] = _convolution


# --- group norm ---------------------------------------------------------------------------------


def _channel_view(ctx, t, ndim: int):
    """A per-channel (C,) weight shaped (C, 1, ...) to broadcast over an (N, C, *S) input."""
    return ctx.emit("reshape", [t], shape=(t.type.shape[0],) + (1,) * (ndim - 2))


def _emit_group_norm(ctx, x, weight, bias, groups: int, eps: float):
    """Group norm is layer norm (without affine) over each group's channels and positions, then
    torch's per-channel affine: (N, C, *S) -> (N, G, C/G * prod(S)) -> layer_norm -> back."""
    if x.type.ndim < 2:
        raise Unconvertible("group norm needs an (N, C, ...) input")
    shape = x.type.shape
    batch, channels = shape[0], shape[1]
    if groups <= 0 or channels % groups:
        raise Unconvertible(f"{channels} channels do not split into {groups} groups")
    group_size = channels // groups * math.prod(shape[2:])
    if group_size == 0:
        raise Unconvertible("group norm over empty groups")
    grouped = ctx.emit("reshape", [x], shape=(batch, groups, group_size))
    normed = ctx.emit("layer_norm", [grouped, ctx.filled(1.0, (group_size,), x),
                                     ctx.filled(0.0, (group_size,), x)], eps=eps)
    out = ctx.emit("reshape", [normed], shape=shape)
    if weight is not None:
        out = ctx.emit("mul", [out, _channel_view(ctx, weight, x.type.ndim)])
    if bias is not None:
        out = ctx.emit("add", [out, _channel_view(ctx, bias, x.type.ndim)])
    return out


def _optional_value(ctx, arg: Any):
    return ctx.value(arg) if arg is not None else None


def _group_norm(ctx, n):
    x = ctx.value(n.args[0])
    return _emit_group_norm(ctx, x, _optional_value(ctx, _arg(n, 2, "weight")),
                            _optional_value(ctx, _arg(n, 3, "bias")), int(n.args[1]),
                            float(_arg(n, 4, "eps", 1e-5)))


def _native_group_norm(ctx, n):
    """The (out, mean, rstd) form: only the normalized output exists in inference."""
    x, weight, bias, _, _, _, groups, eps = n.args[:8]
    out = _emit_group_norm(ctx, ctx.value(x), _optional_value(ctx, weight),
                           _optional_value(ctx, bias), int(groups), float(eps))
    return (out, None, None)


CONVERTERS[aten.group_norm.default] = _group_norm
CONVERTERS[aten.native_group_norm.default] = _native_group_norm


# --- weight norm --------------------------------------------------------------------------------


def _weight_norm(ctx, n):
    """w = v * (g / ||v||), the 2-norm over every dim but `dim` (kept, to broadcast against g).
    dim=-1 is torch's "no dim" (weight_norm(dim=None)): one norm over the whole of v, not the last
    dim. With v and g constants (the usual case), fold-constants turns it all into the weight."""
    v, g = ctx.value(n.args[0]), ctx.value(n.args[1])
    dim = int(_arg(n, 2, "dim", 0))
    if v.type.dtype != g.type.dtype:
        raise Unconvertible("weight norm with v and g of different dtypes")
    if dim == -1:
        dims, keepdim = tuple(range(v.type.ndim)), False
    else:
        kept = norm_dim(dim, v.type.ndim)
        dims, keepdim = tuple(d for d in range(v.type.ndim) if d != kept), True
    squares = ctx.emit("sum", [ctx.emit("mul", [v, v])], dims=dims, keepdim=keepdim)
    scale = ctx.emit("div", [g, ctx.emit("sqrt", [squares])])
    return ctx.emit("mul", [v, scale])


CONVERTERS[aten._weight_norm.default] = _weight_norm


# --- diff ---------------------------------------------------------------------------------------


def _diff_once(ctx, x, dim: int):
    """x[1:] - x[:-1] along dim; on bool, torch takes logical xor, which is `ne`."""
    size = x.type.shape[dim]
    later = ctx.emit("slice", [x], dim=dim, start=1, end=size, step=1)
    earlier = ctx.emit("slice", [x], dim=dim, start=0, end=max(size - 1, 0), step=1)
    return ctx.emit("ne" if x.type.dtype == "bool" else "sub", [later, earlier])


def _diff(ctx, n):
    """torch.diff: prepend/append concatenated along dim (the mask code of GPT-2 / Llama uses
    prepend), then n rounds of differences, n clamped to the length as torch does."""
    x = ctx.value(n.args[0])
    times = int(_arg(n, 1, "n", 1))
    if x.type.ndim == 0 or times < 0:
        raise Unconvertible("diff needs a tensor of rank >= 1 and n >= 0")
    dim = norm_dim(_arg(n, 2, "dim", -1), x.type.ndim)
    prepend, append = _arg(n, 3, "prepend"), _arg(n, 4, "append")
    parts = [ctx.value(t) for t in (prepend, n.args[0], append) if t is not None]
    if any(p.type.ndim != x.type.ndim for p in parts):
        raise Unconvertible("diff's prepend/append must have the input's rank")
    if len(parts) > 1:
        x = ctx.emit("cat", parts, dim=dim)
    rounds = min(times, x.type.shape[dim])
    if rounds == 0:
        return ctx.emit("identity", [x])
    for _ in range(rounds):
        x = _diff_once(ctx, x, dim)
    return x


CONVERTERS[aten.diff.default] = _diff
