"""ONNX converters: Resize.

Resize is separable and, along each axis, reads fixed input positions with fixed weights: the
positions and weights depend only on the sizes, the scales and the attributes, so they are
computed here with numpy (following ONNX's reference: each coordinate transformation mode,
nearest's rounding modes, linear and cubic kernels with exclude_outside and antialias) and the
graph holds one `index` by constant positions per tap, times constant weights, summed. Nearest
is a single `index` per resized axis and works for any dtype.
"""

from __future__ import annotations

import math

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import ints, is_float, unsupported


def _source(mode: str, y: np.ndarray, scale: float, size_in: int, size_out: int,
            roi: tuple[float, float] | None):
    """Output positions -> input coordinates; and which positions extrapolate
    (tf_crop_and_resize only)."""
    out_float = scale * size_in
    if mode == "align_corners":
        x = np.zeros(size_out) if out_float == 1 else y * (size_in - 1) / (out_float - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif mode == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        if out_float == 1:
            x = np.full(size_out, (hi - lo) * (size_in - 1) / 2)
        else:
            x = y * (hi - lo) * (size_in - 1) / (out_float - 1)
        x = x + lo * (size_in - 1)
        return x, (x < 0) | (x > size_in - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(size_out, -0.5) if out_float == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        adjustment = size_out / out_float
        x = size_in / 2 * (1 - adjustment) + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"coordinate_transformation_mode {mode!r}")
    return x, None


def _nearest(ratio: float, mode: str) -> list[float]:
    if float(ratio).is_integer():
        return [0, 1]
    return {"round_prefer_floor": [ratio <= 0.5, ratio > 0.5],
            "round_prefer_ceil": [ratio < 0.5, ratio >= 0.5],
            "floor": [1, 0], "ceil": [0, 1]}[mode]


def _linear(ratio: float, scale: float, antialias: bool) -> list[float]:
    if not antialias:
        return [1 - ratio, ratio]
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    coeffs = np.clip(1 - np.abs(args), 0, 1)
    return list(coeffs / coeffs.sum())


def _cubic(ratio: float, scale: float, a: float, antialias: bool) -> list[float]:
    if not antialias:
        r = ratio
        return [((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                ((a + 2) * r - (a + 3)) * r * r + 1,
                ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a]
    scale = min(scale, 1.0)

    def weight(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    start = int(np.floor(-2 / scale) + 1)
    coeffs = [weight(scale * (i - ratio)) for i in range(start, 2 - start)]
    return [c / sum(coeffs) for c in coeffs]


def axis_taps(attrs: dict, size_in: int, size_out: int, scale: float,
              roi: tuple[float, float] | None):
    """(positions [out, n], weights [out, n], extrapolated [out] or None) of one axis, as
    ONNX's reference computes them (vectorized `_interpolate_1d_along_axis`)."""
    y = np.arange(size_out, dtype=np.float64)
    x, extrapolated = _source(attrs["coordinate_transformation_mode"], y, scale, size_in,
                              size_out, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)
    mode = attrs["mode"]
    if mode == "nearest":
        coeffs = [_nearest(r, attrs["nearest_mode"]) for r in ratios]
    elif mode == "linear":
        coeffs = [_linear(r, scale, attrs["antialias"]) for r in ratios]
    else:
        coeffs = [_cubic(r, scale, attrs["cubic_coeff_a"], attrs["antialias"]) for r in ratios]
    coeffs = np.asarray(coeffs, dtype=np.float64).reshape(size_out, -1)
    n = coeffs.shape[1]
    pad = int(math.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        offset = np.where(frac <= 0.5, base, base + 1)
    idx = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if attrs["exclude_outside"]:
        coeffs = np.where((idx < 0) | (idx >= size_in), 0.0, coeffs)
        total = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, size_in - 1), coeffs, extrapolated


def _sizes_and_scales(ctx, node, x, axes):
    """Per axis of `axes`: (output size, scale factor), from the scales or the sizes input."""
    shape = x.type.shape
    scales = ctx.const_input(node, 2) if node.has(2) else None
    sizes = ctx.const_input(node, 3) if node.has(3) else None
    if node.has(2) and scales is None:
        scales = ctx.need_const(node, 2, "scales")
    if node.has(3) and sizes is None:
        sizes = ctx.need_const(node, 3, "sizes")
    if scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
        if len(factors) != len(axes) or any(f <= 0 for f in factors):
            raise unsupported(node, f"scales {factors} for axes {list(axes)}")
        return [(int(f * shape[a]), f) for f, a in zip(factors, axes)]
    if sizes is None or not sizes.size:
        raise unsupported(node, "Resize without scales or sizes")
    out = list(ints(sizes, node, "sizes"))
    if len(out) != len(axes):
        raise unsupported(node, f"sizes {out} for axes {list(axes)}")
    factors = [o / shape[a] if shape[a] else 1.0 for o, a in zip(out, axes)]
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        pick = {"not_larger": min, "not_smaller": max}.get(policy)
        if pick is None:
            raise unsupported(node, f"keep_aspect_ratio_policy {policy!r}")
        f = pick(factors)
        factors = [f] * len(axes)
        out = [int(f * shape[a] + 0.5) for a in axes]
    return list(zip(out, factors))


def _resize(ctx, node):
    x = ctx.input(node, 0)
    rank = x.type.ndim
    axes = node.attr("axes")
    axes = tuple(a % rank for a in axes) if axes else tuple(range(rank))
    attrs = {
        "mode": node.attr("mode", "nearest"),
        "coordinate_transformation_mode": node.attr("coordinate_transformation_mode",
                                                    "half_pixel"),
        "nearest_mode": node.attr("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": node.attr("cubic_coeff_a", -0.75),
        "exclude_outside": node.attr("exclude_outside", 0),
        "antialias": bool(node.attr("antialias", 0)),
    }
    if attrs["mode"] not in ("nearest", "linear", "cubic"):
        raise unsupported(node, f"mode {attrs['mode']!r}")
    if attrs["mode"] == "nearest" and attrs["antialias"]:
        raise unsupported(node, "antialias with mode nearest")
    if attrs["mode"] != "nearest" and not is_float(x):
        raise unsupported(node, f"{attrs['mode']} resize of {x.type.dtype}")
    roi = None
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        r = ctx.need_const(node, 1, "roi").reshape(-1).astype(np.float64)
        if r.size != 2 * len(axes):
            raise unsupported(node, f"roi of {r.size} values for {len(axes)} axes")
        roi = {a: (r[i], r[i + len(axes)]) for i, a in enumerate(axes)}
    out = x
    extrapolation = float(node.attr("extrapolation_value", 0.0))
    np_dtype = dtypes.to_numpy(x.type.dtype)
    for a, (size_out, scale) in zip(axes, _sizes_and_scales(ctx, node, x, axes)):
        size_in = x.type.shape[a]
        axis_roi = roi.get(a) if roi else None
        if math.isclose(scale, 1.0) and size_out == size_in and (
                axis_roi is None or (math.isclose(axis_roi[0], 0) and
                                     math.isclose(axis_roi[1], 1))):
            continue
        if size_in == 0 or size_out == 0:
            raise unsupported(node, "resizing an empty axis")
        try:
            idx, coeffs, extrapolated = axis_taps(attrs, size_in, size_out, scale, axis_roi)
        except (ValueError, KeyError) as e:
            raise unsupported(node, str(e)) from None
        shape = (size_out,) + (1,) * (rank - a - 1)
        out = _apply_taps(ctx, out, a, idx, coeffs, shape, np_dtype)
        if extrapolated is not None and extrapolated.any():
            mask = ctx.const(extrapolated.reshape(shape))
            fill = ctx.const(np.array(extrapolation, dtype=np_dtype))
            out = ctx.emit("where", [mask, fill, out])
    return [out if out is not x else ctx.emit("identity", [x])]


def _apply_taps(ctx, x, axis: int, idx: np.ndarray, coeffs: np.ndarray, shape, np_dtype):
    """sum over taps k of x[..., idx[:, k], ...] * coeffs[:, k]; a single tap of weight one
    (nearest) is a plain `index`."""
    merged: list[dict[int, float]] = []
    for row_idx, row_w in zip(idx, coeffs):
        row: dict[int, float] = {}
        for i, w in zip(row_idx, row_w):
            if w != 0:
                row[int(i)] = row.get(int(i), 0.0) + float(w)
        merged.append(row)
    if all(len(r) == 1 and next(iter(r.values())) == 1.0 for r in merged):
        positions = np.array([next(iter(r)) for r in merged], dtype=np.int64)
        return ctx.emit("index", [x, ctx.const(positions)], dim=axis)
    n = max((len(r) for r in merged), default=0)
    total = None
    for k in range(max(n, 1)):
        positions = np.array([sorted(r)[k] if k < len(r) else 0 for r in merged],
                             dtype=np.int64)
        weights = np.array([r[sorted(r)[k]] if k < len(r) else 0.0 for r in merged])
        tap = ctx.emit("mul", [ctx.emit("index", [x, ctx.const(positions)], dim=axis),
                               ctx.const(weights.astype(np_dtype).reshape(shape))])
        total = tap if total is None else ctx.emit("add", [total, tap])
    return total


TABLE = [
    ("Resize", (11, 13, 18, 19), _resize),
]
