"""Converters that decompose an aten op into IR ops that already exist (conv1d as conv2d over
a unit height, group norm as layer norm over groups, roll as slices and a cat, bilinear and
nearest upsampling as `index` ops by constant positions and constant weights, ...), so the op
needs no IR op, reference or kernel of its own and every pass and backend sees through it.
Registered into `fxforge.aten.CONVERTERS` when `fxforge.aten` is imported.

Each decomposition follows the order of operations of torch's own kernel where that matters for
rounding (weight norm divides g by the norm before scaling v), and refuses (Unconvertible: the op
falls back to torch) the uses it cannot reproduce exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fxforge.aten import CONVERTERS, Unconvertible, _arg, aten
from fxforge.shapes import norm_dim, norm_dims

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
    x, unbatched = _as_image(ctx, x, "conv1d")
    w = ctx.emit("unsqueeze", [w], dim=2)
    inputs = [x, w] + ([bias] if bias is not None else [])
    out = ctx.emit("conv2d", inputs, stride=(1, stride), padding=(0, padding),
                   dilation=(1, dilation), groups=groups)
    return _as_sequence(ctx, out, unbatched)


def _as_image(ctx, x, what: str):
    """(N, C, L) or unbatched (C, L) as (N, C, 1, L), and whether a batch was added: 1-D ops
    run as their 2-D kind over a height of one."""
    if x.type.ndim not in (2, 3):
        raise Unconvertible(f"{what} needs a 2-D or 3-D input, got rank {x.type.ndim}")
    unbatched = x.type.ndim == 2
    if unbatched:
        x = ctx.emit("unsqueeze", [x], dim=0)
    return ctx.emit("unsqueeze", [x], dim=2), unbatched


def _as_sequence(ctx, y, unbatched: bool):
    """Undo `_as_image` on a result (N, C, 1, L')."""
    y = ctx.emit("squeeze", [y], dims=(2,))
    return ctx.emit("squeeze", [y], dims=(0,)) if unbatched else y


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


# --- adaptive average pooling in 1-D ------------------------------------------------------------


def _adaptive_avg_pool1d(ctx, n):
    """(N, C, L) as (N, C, 1, L) through adaptive_avg_pool2d to (1, out): torch's own kernel
    does the same, so the bins are its bins. An unbatched (C, L) input gets a batch of one."""
    x = ctx.value(n.args[0])
    sizes = n.args[1]
    out = _single(sizes)
    x, unbatched = _as_image(ctx, x, "adaptive_avg_pool1d")
    pooled = ctx.emit("adaptive_avg_pool2d", [x], output_size=(1, out))
    return _as_sequence(ctx, pooled, unbatched)


CONVERTERS[aten.adaptive_avg_pool1d.default] = _adaptive_avg_pool1d


# --- roll ---------------------------------------------------------------------------------------


def _roll_dim(ctx, x, shift: int, dim: int):
    """torch.roll along one dim: the last `shift` elements, then the rest."""
    size = x.type.shape[dim]
    shift = shift % size if size else 0
    if shift == 0:
        return x
    tail = ctx.emit("slice", [x], dim=dim, start=size - shift, end=size, step=1)
    head = ctx.emit("slice", [x], dim=dim, start=0, end=size - shift, step=1)
    return ctx.emit("cat", [tail, head], dim=dim)


def _roll(ctx, n):
    """torch.roll as slices and a cat per rolled dim (Swin's shifted windows); with no dims,
    torch rolls the flattened tensor and restores the shape."""
    x = ctx.value(n.args[0])
    shifts = _arg(n, 1, "shifts")
    dims = _arg(n, 2, "dims", [])
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        if len(shifts) != 1:
            raise Unconvertible("roll without dims takes one shift")
        flat = ctx.emit("reshape", [x], shape=(x.type.numel,))
        rolled = _roll_dim(ctx, flat, int(shifts[0]), 0)
        return ctx.emit("reshape", [rolled], shape=x.type.shape)
    if len(shifts) != len(dims) or x.type.ndim == 0:
        raise Unconvertible("roll needs one shift per dim of a tensor of rank >= 1")
    out = x
    for shift, dim in zip(shifts, dims):
        out = _roll_dim(ctx, out, int(shift), norm_dim(dim, x.type.ndim))
    return out if out is not x else ctx.emit("identity", [x])


CONVERTERS[aten.roll.default] = _roll


# --- upsampling ---------------------------------------------------------------------------------
#
# Interpolation reads fixed input positions with fixed weights: an `index` by a constant index
# tensor along W, then along H, weighted by constant per-position weights. The positions and
# weights follow ATen's UpSample.h (area_pixel_compute_scale/source_index, nearest_idx) in the
# precision its CPU kernels use: float for f32 (and for nearest's index in every dtype), double
# for f64.


def _source_scale(size_in: int, size_out: int, align_corners: bool, scale: float | None, real):
    """ATen's area_pixel_compute_scale: input pixels per output pixel. A scale factor the caller
    gave (scale_factor= without recompute) is used as 1/scale, not in/out."""
    if align_corners:
        return real(size_in - 1) / real(size_out - 1) if size_out > 1 else real(0)
    if scale is not None and scale > 0:
        return real(1.0 / scale)
    return real(size_in) / real(size_out)


def _linear_taps(size_in: int, size_out: int, align_corners: bool, scale: float | None, real):
    """For each output position: the two input positions and their weights (bilinear)."""
    ratio = _source_scale(size_in, size_out, align_corners, scale, real)
    dst = np.arange(size_out).astype(real)
    if align_corners:
        src = ratio * dst
    else:
        src = np.maximum(ratio * (dst + real(0.5)) - real(0.5), real(0))
    first = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    weight = np.clip(src - first.astype(real), real(0), real(1)).astype(real)
    second = first + (first < size_in - 1)
    return first, second, (real(1) - weight).astype(real), weight


def _nearest_taps(size_in: int, size_out: int, scale: float | None, exact: bool):
    """ATen's nearest_idx (floor of dst * scale, in float) and nearest_exact_idx (of the pixel
    centre, dst + 0.5); same size copies, and nearest's double size halves exactly."""
    dst = np.arange(size_out)
    if not exact and size_out == size_in:
        return dst
    if not exact and size_out == 2 * size_in:
        return dst >> 1
    ratio = _source_scale(size_in, size_out, False, scale, np.float32)
    src = (dst.astype(np.float32) + np.float32(0.5)) * ratio if exact else \
        dst.astype(np.float32) * ratio
    return np.minimum(np.floor(src).astype(np.int64), size_in - 1)


def _upsample_geometry(ctx, n, scales_at: int):
    """The input, its (H, W) and the output's, and the (h, w) scale factors the kernel sees: the
    .vec overloads (F.interpolate's) pass scale_factors, or none with output_size, the others
    scales_h and scales_w. (torch.export decomposes bilinear's other overload itself.)"""
    x = ctx.value(n.args[0])
    if x.type.ndim != 4:
        raise Unconvertible(f"2-D upsampling needs an (N, C, H, W) input, got rank {x.type.ndim}")
    out_hw = tuple(n.meta["val"].shape[2:])
    if n.target._overloadname == "vec":
        factors = _arg(n, scales_at, "scale_factors")
        scales = tuple(factors) if factors is not None else (None, None)
    else:
        scales = (_arg(n, scales_at, "scales_h"), _arg(n, scales_at + 1, "scales_w"))
    if len(scales) != 2:
        raise Unconvertible(f"expected two scale factors, got {scales}")
    return x, tuple(x.type.shape[2:]), out_hw, scales


def _constant(ctx, array):
    return ctx.const(np.ascontiguousarray(array), ctx.names.fresh("c"), ctx.provenance)


def _take(ctx, x, positions, dim: int):
    return ctx.emit("index", [x, _constant(ctx, positions)], dim=dim)


def _upsample_bilinear2d(ctx, n):
    """W first, then H, each the weighted sum of two taps. A dim whose size does not change is
    copied, as ATen does whatever the scale factor says. f32 and f64 only: ATen computes half
    precision in float and rounds once, which per-step ops in half would not."""
    x, in_hw, out_hw, scales = _upsample_geometry(ctx, n, 3)
    align_corners = bool(_arg(n, 2, "align_corners"))
    real = {"f32": np.float32, "f64": np.float64}.get(x.type.dtype)
    if real is None:
        raise Unconvertible(f"bilinear upsampling of {x.type.dtype}")
    out = x
    for dim in (3, 2):
        size_in, size_out = in_hw[dim - 2], out_hw[dim - 2]
        if size_in == size_out:
            continue
        first, second, w_first, w_second = _linear_taps(size_in, size_out, align_corners,
                                                         scales[dim - 2], real)
        shape = (size_out,) if dim == 3 else (size_out, 1)
        a = ctx.emit("mul", [_take(ctx, out, first, dim), _constant(ctx, w_first.reshape(shape))])
        b = ctx.emit("mul", [_take(ctx, out, second, dim),
                             _constant(ctx, w_second.reshape(shape))])
        out = ctx.emit("add", [a, b])
    return out if out is not x else ctx.emit("identity", [x])


def _upsample_nearest2d(exact: bool):
    def convert(ctx, n):
        x, in_hw, out_hw, scales = _upsample_geometry(ctx, n, 2)
        out = x
        for dim in (3, 2):
            size_in, size_out = in_hw[dim - 2], out_hw[dim - 2]
            positions = _nearest_taps(size_in, size_out, scales[dim - 2], exact)
            if size_in != size_out or not np.array_equal(positions, np.arange(size_out)):
                out = _take(ctx, out, positions, dim)
        return out if out is not x else ctx.emit("identity", [x])

    return convert


CONVERTERS[aten.upsample_bilinear2d.vec] = _upsample_bilinear2d
CONVERTERS[aten.upsample_bilinear2d.default] = _upsample_bilinear2d
CONVERTERS[aten.upsample_nearest2d.vec] = _upsample_nearest2d(False)
CONVERTERS[aten.upsample_nearest2d.default] = _upsample_nearest2d(False)
CONVERTERS[aten._upsample_nearest_exact2d.vec] = _upsample_nearest2d(True)
CONVERTERS[aten._upsample_nearest_exact2d.default] = _upsample_nearest2d(True)


# --- triangular masks ---------------------------------------------------------------------------


def _triangle(upper: bool):
    """triu/tril: keep the entries on the right side of `diagonal` of the last two dims, zero the
    rest, through a constant mask."""

    def convert(ctx, n):
        x = ctx.value(n.args[0])
        if x.type.ndim < 2:
            raise Unconvertible("triu/tril need a tensor of rank >= 2")
        diagonal = int(_arg(n, 1, "diagonal", 0))
        rows, cols = x.type.shape[-2:]
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        keep = offset >= diagonal if upper else offset <= diagonal
        zero = ctx.scalar(0, x, x.type.dtype)
        return ctx.emit("where", [_constant(ctx, keep), x, zero])

    return convert


CONVERTERS[aten.triu.default] = _triangle(True)
CONVERTERS[aten.tril.default] = _triangle(False)


# --- pixel shuffle ------------------------------------------------------------------------------


def _pixel_shuffle(unshuffle: bool):
    """(*, C*r*r, H, W) <-> (*, C, H*r, W*r) as a reshape, a permute and a reshape, torch's own
    decomposition."""

    def convert(ctx, n):
        x = ctx.value(n.args[0])
        r = int(n.args[1])
        if x.type.ndim < 3 or r <= 0:
            raise Unconvertible("pixel (un)shuffle needs rank >= 3 and a positive factor")
        *batch, c, h, w = x.type.shape
        k = len(batch)
        if unshuffle:
            if h % r or w % r:
                raise Unconvertible(f"{h}x{w} does not divide by {r}")
            split = ctx.emit("reshape", [x], shape=(*batch, c, h // r, r, w // r, r))
            dims = (*range(k), k, k + 2, k + 4, k + 1, k + 3)
            moved = ctx.emit("permute", [split], dims=dims)
            return ctx.emit("reshape", [moved], shape=(*batch, c * r * r, h // r, w // r))
        if c % (r * r):
            raise Unconvertible(f"{c} channels do not divide by {r * r}")
        split = ctx.emit("reshape", [x], shape=(*batch, c // (r * r), r, r, h, w))
        moved = ctx.emit("permute", [split], dims=(*range(k), k, k + 3, k + 1, k + 4, k + 2))
        return ctx.emit("reshape", [moved], shape=(*batch, c // (r * r), h * r, w * r))

    return convert


CONVERTERS[aten.pixel_shuffle.default] = _pixel_shuffle(False)
CONVERTERS[aten.pixel_unshuffle.default] = _pixel_shuffle(True)


# --- logsumexp ----------------------------------------------------------------------------------


def _logsumexp(ctx, n):
    """ATen's: m = amax (an infinite max taken as 0), log(sum(exp(x - m))) + m. Floats only:
    integers go to the default dtype first in torch."""
    x = ctx.value(n.args[0])
    if x.type.dtype not in ("f32", "f64", "f16", "bf16"):
        raise Unconvertible(f"logsumexp of {x.type.dtype}")
    dims = _arg(n, 1, "dim")
    keepdim = bool(_arg(n, 2, "keepdim", False))
    dims = [dims] if isinstance(dims, int) else list(dims)
    if x.type.ndim == 0 or not dims:
        raise Unconvertible("logsumexp over all dims of a 0-d tensor or with no dims")
    dims = norm_dims(dims, x.type.ndim)
    top = ctx.emit("amax", [x], dims=dims, keepdim=True)
    infinite = ctx.emit("eq", [ctx.emit("abs", [top]), ctx.scalar(math.inf, top)])
    top = ctx.emit("where", [infinite, ctx.scalar(0.0, top, top.type.dtype), top])
    total = ctx.emit("sum", [ctx.emit("exp", [ctx.emit("sub", [x, top])])], dims=dims,
                     keepdim=keepdim)
    shift = top if keepdim else ctx.emit("squeeze", [top], dims=dims)
    return ctx.emit("add", [ctx.emit("log", [total]), shift])


CONVERTERS[aten.logsumexp.default] = _logsumexp


# --- instance norm ------------------------------------------------------------------------------


def _instance_norm(ctx, n):
    """With the input's statistics (the default, and eval without running stats): group norm with
    a group per channel. With running statistics it is batch norm."""
    x, weight, bias, mean, var, use_input_stats, _, eps = n.args[:8]
    x = ctx.value(x)
    weight, bias = _optional_value(ctx, weight), _optional_value(ctx, bias)
    if x.type.ndim < 3:
        raise Unconvertible("instance norm needs an (N, C, ...) input")
    if use_input_stats:
        return _emit_group_norm(ctx, x, weight, bias, x.type.shape[1], float(eps))
    if mean is None or var is None:
        raise Unconvertible("instance norm without input or running statistics")
    channels = x.type.shape[1]
    weight = weight if weight is not None else ctx.filled(1.0, (channels,), x)
    bias = bias if bias is not None else ctx.filled(0.0, (channels,), x)
    return ctx.emit("batch_norm", [x, weight, bias, ctx.value(mean), ctx.value(var)],
                    eps=float(eps))


CONVERTERS[aten.instance_norm.default] = _instance_norm


# --- max/min along a dim, sort ------------------------------------------------------------------


def _extreme_along(value_op: str, index_op: str):
    """torch.max(x, dim) / torch.min(x, dim): (amax, argmax) over the one dim. Both take the
    first position on ties and let a NaN win, as torch's kernel does; a bool input is searched
    as u8 (argmax has no bool kernel; the positions are the same)."""

    def convert(ctx, n):
        x = ctx.value(n.args[0])
        dim = norm_dim(_arg(n, 1, "dim"), x.type.ndim)
        keepdim = bool(_arg(n, 2, "keepdim", False))
        values = ctx.emit(value_op, [x], dims=(dim,), keepdim=keepdim)
        searched = ctx.emit("cast", [x], dtype="u8") if x.type.dtype == "bool" else x
        return values, ctx.emit(index_op, [searched], dim=dim, keepdim=keepdim)

    return convert


def _extreme_of_all(op: str):
    """torch.max(x) / torch.min(x): the reduction over every dim."""

    def convert(ctx, n):
        x = ctx.value(n.args[0])
        return ctx.emit(op, [x], dims=tuple(range(x.type.ndim)), keepdim=False)

    return convert


CONVERTERS[aten.max.dim] = _extreme_along("amax", "argmax")
CONVERTERS[aten.min.dim] = _extreme_along("amin", "argmin")
CONVERTERS[aten.max.default] = _extreme_of_all("amax")
CONVERTERS[aten.min.default] = _extreme_of_all("amin")


def _sorted(ctx, n):
    """sort is topk of the whole dim. The IR's topk is a stable sort, so stable=True is exact
    even on ties; stable=False lets torch order ties as it likes (its CPU kernel keeps them in
    index order too)."""
    x = ctx.value(n.args[0])  # the .stable overloads take dim and descending by keyword only
    dim = norm_dim(_arg(n, 1, "dim", -1), x.type.ndim)
    descending = _arg(n, 2, "descending", False)
    size = x.type.shape[dim] if x.type.ndim else 1
    return ctx.emit("topk", [x], n_outputs=2, k=size, dim=dim, largest=bool(descending))


def _argsort(ctx, n):
    return _sorted(ctx, n)[1]


for _overload in ("default", "stable"):
    CONVERTERS[getattr(aten.sort, _overload)] = _sorted
    CONVERTERS[getattr(aten.argsort, _overload)] = _argsort
