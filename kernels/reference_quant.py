"""The numpy reference of the quantized ops: the executable form of docs/quantized-ir.md.

Unlike the float reference (which computes in float64 and rounds once), these functions follow
the contract's float32 formulas step by step, because backends are judged bit-exactly on int32
accumulators and within one LSB on int8 outputs: only the same float32 operations in the same
order give that. Accumulators are integer-exact (`qlinear_acc`, `qconv2d_acc`), and exposed so
that backends and tests can compare them directly. `linear_int4` is the exception: it is checked
to a tolerance, so it rounds its float64 product once, as the float reference does.
"""

from __future__ import annotations

import numpy as np

from fxforge.kernels import reference as ref

INT32_MAX = 2**31 - 1
F32 = np.float32


# --- building blocks ----------------------------------------------------------------------------


def requantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """clip(rint(y / f32(scale)) + zero_point, -128, 127) as int8, all float32, half to even."""
    q = np.rint(np.asarray(y, dtype=F32) / F32(scale)) + F32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def acc_bound(x_zero_point: int, k: int) -> int:
    """The largest |acc| a reduction over k products can reach: |x - zp| <= 255, |w| <= 128.
    Type inference rejects ops where this passes int32."""
    return k * max(abs(-128 - x_zero_point), abs(127 - x_zero_point)) * 128


def _to_int32(acc: np.ndarray, what: str) -> np.ndarray:
    """Exact float64 integers to int32, refusing what int32 cannot hold."""
    if acc.size and np.max(np.abs(acc)) > INT32_MAX:
        raise ValueError(f"{what}: an int32 accumulator overflows (|acc| = "
                         f"{int(np.max(np.abs(acc)))} > 2**31 - 1)")
    return acc.astype(np.int32)


def _centered(x: np.ndarray, x_zero_point: int) -> np.ndarray:
    if x.dtype != np.int8:
        raise ValueError(f"quantized activations must be int8, got {x.dtype}")
    return x.astype(np.float64) - float(x_zero_point)


def _weight(w: np.ndarray, w_bits: int = 8) -> np.ndarray:
    """The weight as float64; one declared `w_bits=7` must lie in [-63, 63]."""
    if w.dtype != np.int8:
        raise ValueError(f"quantized weights must be int8, got {w.dtype}")
    limit = 2 ** (w_bits - 1) - 1
    if w_bits < 8 and w.size and int(np.max(np.abs(w.astype(np.int16)))) > limit:
        raise ValueError(f"quantized weights declared w_bits={w_bits} exceed +-{limit}")
    return w.astype(np.float64)


def qlinear_acc(x: np.ndarray, w: np.ndarray, x_zero_point: int, w_bits: int = 8) -> np.ndarray:
    """acc[..., n] = sum_k (int32(x[..., k]) - x_zero_point) * int32(w[n, k]), as int32.

    Exact: every product and partial sum is an integer of magnitude below 2**53 (the bound
    K * 255 * 128 is checked), so float64 BLAS adds them without rounding, in any order."""
    k = w.shape[1]
    if acc_bound(x_zero_point, k) >= 2**53:
        raise ValueError(f"qlinear: K = {k} is too large for an exact accumulator")
    return _to_int32(_centered(x, x_zero_point) @ _weight(w, w_bits).T, "qlinear")


def qconv2d_acc(x: np.ndarray, w: np.ndarray, x_zero_point: int, stride, padding, dilation,
                groups: int, w_bits: int = 8) -> np.ndarray:
    """conv2d(int32(x) - x_zero_point, int32(w)) as int32; padding is zero in (x - zp), i.e. x
    padded with its zero point. Exact for the same reason as `qlinear_acc`."""
    k = w.shape[1] * w.shape[2] * w.shape[3]
    if acc_bound(x_zero_point, k) >= 2**53:
        raise ValueError(f"qconv2d: Cin/groups * kh * kw = {k} is too large for an exact "
                         "accumulator")
    acc = ref.conv2d(_centered(x, x_zero_point), _weight(w, w_bits), stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    return _to_int32(acc, "qconv2d")


def _epilogue_f32(y: np.ndarray, inputs, epilogue) -> np.ndarray:
    """The fused ops' epilogue runner (`kernels.reference._epilogue`), each step rounded to the
    float32 that type inference gives it (the quantized ops' inference insists on float32)."""
    if not epilogue:
        return y
    from fxforge import dtypes, ops  # not at the top: compiler imports this module
    from fxforge.ir import TensorType

    types = [TensorType(np.shape(a), dtypes.from_numpy(np.asarray(a).dtype)) for a in inputs]
    stages = ops.epilogue_types(TensorType(y.shape, "f32"), types, epilogue)
    return ref._epilogue(y, inputs, epilogue, [dtypes.to_numpy(t.dtype) for t in stages])


def _finish(acc, m, inputs, has_bias, bias_shape, epilogue, out_dtype, out_scale,
            out_zero_point):
    """y = f32(acc) * m (+ bias), epilogue, then f32 out or requantized int8. The bias is input
    3 (after x, weight, w_scale); epilogue operands index all inputs."""
    y = acc.astype(F32) * m
    if has_bias:
        y = y + inputs[3].astype(F32).reshape(bias_shape)
    y = _epilogue_f32(y, inputs, epilogue)
    if out_dtype == "f32":
        return y
    return requantize(y, out_scale, out_zero_point)


# --- ops ----------------------------------------------------------------------------------------


def quantize(x, *, scale, zero_point):
    return requantize(x, scale, zero_point)


def dequantize(q, *, scale, zero_point):
    return (q.astype(np.int32) - np.int32(zero_point)).astype(F32) * F32(scale)


def dynamic_quantize(x, *, mode):
    x = np.asarray(x, dtype=F32)
    if mode == "row":
        axes = (x.ndim - 1,)
    elif mode == "tensor":
        axes = tuple(range(x.ndim))
    else:
        raise ValueError(f"dynamic_quantize mode must be 'row' or 'tensor', got {mode!r}")
    amax = np.max(np.abs(x), axis=axes, keepdims=True, initial=F32(0))
    s = amax.astype(F32) / F32(127)
    s = np.where(s > 0, s, F32(1)).astype(F32)
    q = np.clip(np.rint(x / s), -127, 127).astype(np.int8)
    return q, s


def qlinear(*inputs, has_bias, dynamic, x_scale, x_zero_point, out_dtype, out_scale,
            out_zero_point, epilogue, w_bits=8):
    x, w, w_scale = inputs[:3]
    acc = qlinear_acc(x, w, x_zero_point, w_bits)
    w_scale = w_scale.astype(F32)
    if dynamic:
        m = inputs[3 + has_bias].astype(F32)[..., 0:1] * w_scale
    else:
        m = F32(x_scale) * w_scale
    return _finish(acc, m, inputs, has_bias, (-1,), epilogue, out_dtype,
                   out_scale, out_zero_point)


def qconv2d(*inputs, stride, padding, dilation, groups, has_bias, dynamic, x_scale,
            x_zero_point, out_dtype, out_scale, out_zero_point, epilogue, w_bits=8):
    x, w, w_scale = inputs[:3]
    acc = qconv2d_acc(x, w, x_zero_point, stride, padding, dilation, groups, w_bits)
    w_scale = w_scale.astype(F32).reshape(1, -1, 1, 1)
    if dynamic:
        m = inputs[3 + has_bias].astype(F32) * w_scale
    else:
        m = F32(x_scale) * w_scale
    return _finish(acc, m, inputs, has_bias, (1, -1, 1, 1), epilogue,
                   out_dtype, out_scale, out_zero_point)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """u8 [N, K/2] -> int8 [N, K] in [-8, 7]: byte j holds column 2j (low nibble) and 2j + 1
    (high nibble), each stored as value + 8."""
    packed = np.asarray(packed, dtype=np.uint8)
    lo = (packed & 0xF).astype(np.int8) - 8
    hi = (packed >> 4).astype(np.int8) - 8
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize_int4(packed: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """w[n, k] = f32(w_int[n, k]) * scales[n, k // group_size], a float32 product."""
    w_int = unpack_int4(packed)
    return w_int.astype(F32) * np.repeat(scales.astype(F32), group_size, axis=1)


def linear_int4(x, packed, scales, bias=None, *, group_size, has_bias):
    w = dequantize_int4(packed, scales, group_size)
    return ref.linear(x.astype(np.float64), w.astype(np.float64), bias).astype(F32)
