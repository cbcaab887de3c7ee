"""ONNX converters: matrix products, convolutions and normalizations.

MatMul and Gemm with a constant 2-D weight become `linear` (the weight transposed once at
import), so they meet the same fusion, quantization and kernels as a captured nn.Linear.
Conv and ConvTranspose are 2-D (1-D runs as 2-D over a unit height, as `aten_decompose` does
for conv1d); ConvTranspose is a conv2d over the input with zeros inserted between its
elements, with the kernel flipped and its channel roles swapped.
"""

from __future__ import annotations

import numpy as np

from fxforge.onnx_converters import axis_of, cast, is_float, like, unsupported
from fxforge.onnx_converters_pool import spatial_pads

# --- matrix products ----------------------------------------------------------------------------


def _matmul(ctx, node):
    a = ctx.input(node, 0)
    w = ctx.const_input(node, 1)
    if w is not None and w.ndim == 2 and is_float(a) and a.type.ndim >= 1:
        return [ctx.emit("linear", [a, ctx.const(np.ascontiguousarray(w.T), "weight")])]
    return [ctx.emit("matmul", [a, ctx.input(node, 1)])]


def _gemm(ctx, node):
    """alpha * A' @ B' + beta * C. A constant B becomes a linear weight (alpha folded into it in
    float64), and a constant C that is one value per column its bias (beta folded in)."""
    a = ctx.input(node, 0)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transA", 0):
        a = ctx.emit("permute", [a], dims=(1, 0))
    b = ctx.const_input(node, 1)
    c = ctx.const_input(node, 2) if node.has(2) else None
    trans_b = node.attr("transB", 0)
    if b is not None and b.ndim == 2 and is_float(a):
        w = b if trans_b else b.T
        if alpha != 1.0:
            w = (w.astype(np.float64) * alpha).astype(b.dtype)
        n = w.shape[0]
        inputs = [a, ctx.const(np.ascontiguousarray(w), "weight")]
        if c is not None and c.size in (1, n) and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1):
            bias = np.broadcast_to(c.reshape(-1), (n,)).astype(np.float64) * beta
            inputs.append(ctx.const(bias.astype(c.dtype), "bias"))
            return [ctx.emit("linear", inputs)]
        y = ctx.emit("linear", inputs)
    else:
        bv = ctx.input(node, 1)
        if trans_b:
            bv = ctx.emit("permute", [bv], dims=(1, 0))
        y = ctx.emit("matmul", [a, bv])
        if alpha != 1.0:
            y = ctx.emit("mul", [y, like(ctx, alpha, y)])
    if node.has(2):
        cv = ctx.input(node, 2)
        if beta != 1.0:
            cv = ctx.emit("mul", [cv, like(ctx, beta, cv)])
        y = ctx.emit("add", [y, cv])
    return [y]


# --- convolutions -------------------------------------------------------------------------------


def _conv_attrs(node, nd: int, kernel: tuple[int, ...]):
    strides = tuple(node.attr("strides") or (1,) * nd)
    dilations = tuple(node.attr("dilations") or (1,) * nd)
    given = node.attr("kernel_shape")
    if given is not None and tuple(given) != kernel:
        raise unsupported(node, f"kernel_shape {list(given)} differs from the weight's {kernel}")
    if len(strides) != nd or len(dilations) != nd:
        raise unsupported(node, "strides or dilations of the wrong length")
    return strides, dilations


def _as_2d(ctx, x, nd: int):
    return ctx.emit("unsqueeze", [x], dim=2) if nd == 1 else x


def _conv(ctx, node):
    x, w = ctx.input(node, 0), ctx.input(node, 1)
    nd = x.type.ndim - 2
    if nd not in (1, 2) or w.type.ndim != nd + 2:
        raise unsupported(node, f"{nd}-D convolution (the IR has 2-D; 1-D runs as 2-D)")
    kernel = w.type.shape[2:]
    strides, dilations = _conv_attrs(node, nd, kernel)
    pads = spatial_pads(node, x.type.shape[2:], kernel, strides, dilations)
    if nd == 1:
        x, w = _as_2d(ctx, x, 1), _as_2d(ctx, w, 1)
        strides, dilations, pads = (1, *strides), (1, *dilations), [(0, 0), *pads]
    padding = tuple(p[0] for p in pads)
    if any(b != e for b, e in pads):
        flat = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
        x = ctx.emit("pad", [x], pads=flat, mode="constant", value=0.0)
        padding = (0, 0)
    inputs = [x, w] + ([ctx.input(node, 2)] if node.has(2) else [])
    y = ctx.emit("conv2d", inputs, stride=strides, padding=padding, dilation=dilations,
                 groups=node.attr("group", 1))
    return [ctx.emit("squeeze", [y], dims=(2,)) if nd == 1 else y]


def _transposed_weight(ctx, node, groups: int):
    """(Cin, Cout/g, kh, kw) -> (Cout, Cin/g, kh, kw), flipped in kh and kw: ConvTranspose's
    weight as a conv2d's. Computed with numpy for a constant weight."""
    w_const = ctx.const_input(node, 1)
    w = ctx.input(node, 1) if w_const is None else None
    shape = w_const.shape if w_const is not None else w.type.shape
    if len(shape) == 3:
        shape = (shape[0], shape[1], 1, shape[2])
        if w_const is not None:
            w_const = w_const.reshape(shape)
        else:
            w = ctx.emit("unsqueeze", [w], dim=2)
    cin, cout_g, kh, kw = shape
    if cin % groups:
        raise unsupported(node, f"{cin} input channels in {groups} groups")
    grouped = (groups, cin // groups, cout_g, kh, kw)
    final = (groups * cout_g, cin // groups, kh, kw)
    if w_const is not None:
        t = w_const.reshape(grouped).transpose(0, 2, 1, 3, 4).reshape(final)
        return ctx.const(np.ascontiguousarray(t[:, :, ::-1, ::-1]), "weight")
    t = ctx.emit("reshape", [ctx.emit("permute", [ctx.emit("reshape", [w], shape=grouped)],
                                      dims=(0, 2, 1, 3, 4))], shape=final)
    for dim, size in ((2, kh), (3, kw)):
        if size > 1:
            t = ctx.emit("index", [t, ctx.const(np.arange(size - 1, -1, -1))], dim=dim)
    return t


def _conv_transpose(ctx, node):
    x = ctx.input(node, 0)
    nd = x.type.ndim - 2
    if nd not in (1, 2):
        raise unsupported(node, f"{nd}-D transposed convolution")
    groups = node.attr("group", 1)
    w = _transposed_weight(ctx, node, groups)
    kernel = w.type.shape[2:][-nd:]
    strides, dilations = _conv_attrs(node, nd, kernel)
    sizes = x.type.shape[2:]
    out_pad = tuple(node.attr("output_padding") or (0,) * nd)
    pads = node.attr("pads")
    full = [s * (n - 1) + op + (k - 1) * d + 1
            for s, n, op, k, d in zip(strides, sizes, out_pad, kernel, dilations)]
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape is not None or (pads is None and auto_pad in ("SAME_UPPER", "SAME_LOWER")):
        target = list(output_shape)[-nd:] if output_shape is not None else \
            [n * s for n, s in zip(sizes, strides)]
        totals = [f - t for f, t in zip(full, target)]
        upper = auto_pad == "SAME_UPPER"
        pads2 = [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in totals]
    else:
        pads = tuple(pads or (0,) * (2 * nd))
        pads2 = [(pads[i], pads[i + nd]) for i in range(nd)]
    if nd == 1:
        x = _as_2d(ctx, x, 1)
        strides, dilations, kernel = (1, *strides), (1, *dilations), (1, *kernel)
        pads2, out_pad = [(0, 0), *pads2], (0, *out_pad)
    n, c, h, wd = x.type.shape
    sh, sw = strides
    if sh > 1 or sw > 1:  # zeros between the elements: (N,C,H,1,W,1) padded, then merged
        z = ctx.emit("reshape", [x], shape=(n, c, h, 1, wd, 1))
        z = ctx.emit("pad", [z], pads=(0, sw - 1, 0, 0, 0, sh - 1), mode="constant", value=0.0)
        z = ctx.emit("reshape", [z], shape=(n, c, h * sh, wd * sw))
        x = ctx.emit("slice", [ctx.emit("slice", [z], dim=2, start=0, end=(h - 1) * sh + 1,
                                         step=1)], dim=3, start=0, end=(wd - 1) * sw + 1, step=1)
    edges = []
    for (b, e), k, d, op in zip(pads2, kernel, dilations, out_pad):
        edges.append(((k - 1) * d - b, (k - 1) * d - e + op))
    for dim, (lo, hi) in zip((2, 3), edges):  # negative edges crop
        size = x.type.shape[dim]
        if lo < 0 or hi < 0:
            x = ctx.emit("slice", [x], dim=dim, start=max(-lo, 0), end=size - max(-hi, 0),
                         step=1)
    flat = (max(edges[1][0], 0), max(edges[1][1], 0), max(edges[0][0], 0), max(edges[0][1], 0))
    if any(flat):
        x = ctx.emit("pad", [x], pads=flat, mode="constant", value=0.0)
    inputs = [x, w] + ([ctx.input(node, 2)] if node.has(2) else [])
    y = ctx.emit("conv2d", inputs, stride=(1, 1), padding=(0, 0), dilation=dilations,
                 groups=groups)
    return [ctx.emit("squeeze", [y], dims=(2,)) if nd == 1 else y]


# --- normalizations -----------------------------------------------------------------------------


def _batch_norm(ctx, node):
    x = ctx.input(node, 0)
    params = [cast(ctx, ctx.input(node, i), x.type.dtype) for i in range(1, 5)]
    eps = node.attr("epsilon", 1e-5)
    if not node.attr("training_mode", 0):
        return [ctx.emit("batch_norm", [x, *params], eps=eps)]
    # training: the batch's statistics normalize; the running ones are updated by momentum
    scale, bias, running_mean, running_var = params
    dims = (0, *range(2, x.type.ndim))
    mean = ctx.emit("mean", [x], dims=dims, keepdim=False)
    centered = ctx.emit("sub", [x, _channel_view(ctx, mean, x.type.ndim)])
    var = ctx.emit("mean", [ctx.emit("mul", [centered, centered])], dims=dims, keepdim=False)
    y = ctx.emit("batch_norm", [x, scale, bias, mean, var], eps=eps)
    momentum = node.attr("momentum", 0.9)
    keep, new = like(ctx, momentum, mean), like(ctx, 1.0 - momentum, mean)
    new_mean = ctx.emit("add", [ctx.emit("mul", [running_mean, keep]),
                                ctx.emit("mul", [mean, new])])
    new_var = ctx.emit("add", [ctx.emit("mul", [running_var, keep]),
                               ctx.emit("mul", [var, new])])
    return [y, new_mean, new_var]


def _channel_view(ctx, v, ndim: int):
    return ctx.emit("reshape", [v], shape=(v.type.shape[0],) + (1,) * (ndim - 2))


def _group_norm_core(ctx, x, groups: int, eps: float):
    """Normalize each group of channels over its channels and positions (no affine)."""
    shape = x.type.shape
    size = x.type.numel // (shape[0] * groups) if shape[0] and groups else 0
    grouped = ctx.emit("reshape", [x], shape=(shape[0], groups, size))
    ones = ctx.const(np.ones(size, dtype=np.dtype(_np(x))))
    zeros = ctx.const(np.zeros(size, dtype=np.dtype(_np(x))))
    normed = ctx.emit("layer_norm", [grouped, ones, zeros], eps=eps)
    return ctx.emit("reshape", [normed], shape=shape)


def _np(v):
    from fxforge import dtypes

    return dtypes.to_numpy(v.type.dtype)


def _affine(ctx, y, scale, bias):
    y = ctx.emit("mul", [y, _channel_view(ctx, scale, y.type.ndim)])
    return ctx.emit("add", [y, _channel_view(ctx, bias, y.type.ndim)])


def _instance_norm(ctx, node):
    x = ctx.input(node, 0)
    if x.type.ndim < 3:
        raise unsupported(node, "InstanceNormalization of rank < 3")
    y = _group_norm_core(ctx, x, x.type.shape[1], node.attr("epsilon", 1e-5))
    return [_affine(ctx, y, ctx.input(node, 1), ctx.input(node, 2))]


def _group_norm(ctx, node):
    x = ctx.input(node, 0)
    groups = node.attr("num_groups")
    channels = x.type.shape[1] if x.type.ndim >= 2 else 0
    if x.type.ndim < 3 or not groups or channels % groups:
        raise unsupported(node, f"{channels} channels in {groups} groups of {x.type}")
    work = cast(ctx, x, "f32") if node.attr("stash_type", 1) == 1 and x.type.dtype == "f16" else x
    y = cast(ctx, _group_norm_core(ctx, work, groups, node.attr("epsilon", 1e-5)), x.type.dtype)
    scale, bias = ctx.input(node, 1), ctx.input(node, 2)
    if scale.type.shape == (groups,) and groups != channels:  # opset 18: one per group
        per = ctx.const(np.arange(channels) // (channels // groups))
        scale = ctx.emit("index", [scale, per], dim=0)
        bias = ctx.emit("index", [bias, per], dim=0)
    return [_affine(ctx, y, scale, bias)]


def _normalized(ctx, node, x, axis: int, v, what: str):
    """A scale or bias broadcast to the normalized shape x.shape[axis:]."""
    shape = x.type.shape[axis:]
    if v.type.shape == shape:
        return v
    if v.type.ndim > len(shape):
        lead = v.type.shape[:v.type.ndim - len(shape)]
        if any(d != 1 for d in lead):
            raise unsupported(node, f"{what} {v.type} for normalized shape {list(shape)}")
        v = ctx.emit("reshape", [v], shape=v.type.shape[len(lead):])
    return ctx.emit("expand", [v], shape=shape)


def _layer_norm(ctx, node):
    x = ctx.input(node, 0)
    axis = axis_of(node, node.attr("axis", -1), x.type.ndim)
    eps = node.attr("epsilon", 1e-5)
    scale = _normalized(ctx, node, x, axis, ctx.input(node, 1), "scale")
    bias = _normalized(ctx, node, x, axis, ctx.input(node, 2), "bias") if node.has(2) else \
        ctx.const(np.zeros(x.type.shape[axis:], dtype=_np(x)))
    wanted = [bool(o) for o in node.outputs[1:]]
    if not any(wanted):
        return [ctx.emit("layer_norm", [x, cast(ctx, scale, x.type.dtype),
                                        cast(ctx, bias, x.type.dtype)], eps=eps)]
    stash = "f32" if node.attr("stash_type", 1) == 1 else x.type.dtype
    work = cast(ctx, x, stash)
    dims = tuple(range(axis, x.type.ndim))
    mean = ctx.emit("mean", [work], dims=dims, keepdim=True)
    centered = ctx.emit("sub", [work, mean])
    var = ctx.emit("mean", [ctx.emit("mul", [centered, centered])], dims=dims, keepdim=True)
    inv = ctx.emit("rsqrt", [ctx.emit("add", [var, like(ctx, eps, var)])])
    y = cast(ctx, ctx.emit("mul", [centered, inv]), x.type.dtype)
    y = ctx.emit("add", [ctx.emit("mul", [y, cast(ctx, scale, x.type.dtype)]),
                         cast(ctx, bias, x.type.dtype)])
    return [y, mean, inv]


def _rms_norm(ctx, node):
    x = ctx.input(node, 0)
    axis = axis_of(node, node.attr("axis", -1), x.type.ndim)
    eps = node.attr("epsilon", 1e-5)
    stash = "f32" if node.attr("stash_type", 1) == 1 and x.type.dtype in ("f16",) else \
        x.type.dtype
    work = cast(ctx, x, stash)
    dims = tuple(range(axis, x.type.ndim))
    ms = ctx.emit("mean", [ctx.emit("mul", [work, work])], dims=dims, keepdim=True)
    inv = ctx.emit("rsqrt", [ctx.emit("add", [ms, like(ctx, eps, ms)])])
    y = cast(ctx, ctx.emit("mul", [work, inv]), x.type.dtype)
    return [ctx.emit("mul", [y, ctx.input(node, 1)])]


def _lp_norm(ctx, node):
    x = ctx.input(node, 0)
    axis = axis_of(node, node.attr("axis", -1), x.type.ndim)
    p = node.attr("p", 2)
    if p == 1:
        norm = ctx.emit("sum", [ctx.emit("abs", [x])], dims=(axis,), keepdim=True)
    elif p == 2:
        norm = ctx.emit("sqrt", [ctx.emit("sum", [ctx.emit("mul", [x, x])], dims=(axis,),
                                          keepdim=True)])
    else:
        raise unsupported(node, f"p={p}")
    norm = cast(ctx, norm, x.type.dtype)
    zero = ctx.emit("eq", [norm, like(ctx, 0, norm)])
    safe = ctx.emit("where", [zero, like(ctx, 1, norm), norm])
    return [ctx.emit("where", [zero, like(ctx, 0, x), ctx.emit("div", [x, safe])])]


def _mvn(ctx, node):
    """ONNX's function body: (X - E[X]) / (sqrt(E[X^2] - E[X]^2) + 1e-9)."""
    x = ctx.input(node, 0)
    axes = tuple(axis_of(node, a, x.type.ndim) for a in node.attr("axes", (0, 2, 3)))
    mean = ctx.emit("mean", [x], dims=axes, keepdim=True)
    mean_sq = ctx.emit("mean", [ctx.emit("mul", [x, x])], dims=axes, keepdim=True)
    var = ctx.emit("sub", [mean_sq, ctx.emit("mul", [mean, mean])])
    std = ctx.emit("add", [ctx.emit("sqrt", [var]), like(ctx, 1e-9, var)])
    return [ctx.emit("div", [ctx.emit("sub", [x, mean]), std])]


def _lrn(ctx, node):
    """x / (bias + alpha / size * sum of squares over a window of channels) ** beta."""
    x = ctx.input(node, 0)
    size = node.attr("size")
    if x.type.ndim < 3 or not size or size > 64:
        raise unsupported(node, f"LRN of size {size} on {x.type}")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    sq = ctx.emit("mul", [x, x])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    pads = (0, 0) * (x.type.ndim - 2) + (lo, hi)
    padded = ctx.emit("pad", [sq], pads=pads, mode="constant", value=0.0)
    channels = x.type.shape[1]
    total = None
    for i in range(size):
        part = ctx.emit("slice", [padded], dim=1, start=i, end=i + channels, step=1)
        total = part if total is None else ctx.emit("add", [total, part])
    scaled = ctx.emit("add", [ctx.emit("mul", [total, like(ctx, alpha / size, x)]),
                              like(ctx, bias, x)])
    return [ctx.emit("div", [x, ctx.emit("pow", [scaled, like(ctx, beta, x)])])]


# --- softmax family -----------------------------------------------------------------------------


def _softmax(op: str):
    def convert(ctx, node):
        x = ctx.input(node, 0)
        return [ctx.emit(op, [x], dim=axis_of(node, node.attr("axis", -1), x.type.ndim))]

    return convert


def _hardmax(ctx, node):
    x = ctx.input(node, 0)
    axis = axis_of(node, node.attr("axis", -1), x.type.ndim)
    top = ctx.emit("argmax", [x], dim=axis, keepdim=True)
    shape = [1] * x.type.ndim
    shape[axis] = x.type.shape[axis]
    positions = ctx.const(np.arange(x.type.shape[axis], dtype=np.int64).reshape(shape))
    return [cast(ctx, ctx.emit("eq", [top, positions]), x.type.dtype)]


TABLE = [
    ("MatMul", (9, 13), _matmul),
    ("Gemm", (9, 11, 13), _gemm),
    ("Conv", (11, 22), _conv),
    ("ConvTranspose", (11, 22), _conv_transpose),
    ("BatchNormalization", (9, 14, 15), _batch_norm),
    ("InstanceNormalization", (6, 22), _instance_norm),
    ("GroupNormalization", (18, 21), _group_norm),
    ("LayerNormalization", (17,), _layer_norm),
    ("RMSNormalization", (23,), _rms_norm),
    ("LpNormalization", (1, 22), _lp_norm),
    ("MeanVarianceNormalization", (9, 13), _mvn),
    ("LRN", (1, 13), _lrn),
    ("Softmax", (13,), _softmax("softmax")),
    ("LogSoftmax", (13,), _softmax("log_softmax")),
    ("Hardmax", (13,), _hardmax),
]
