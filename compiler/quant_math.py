"""Quantization arithmetic a pass needs at compile time: weights to int8 / int4 and calibrated
activation ranges to int8 parameters (docs/quantized-ir.md, "Weight quantization").

Scales are returned as float32 values (python floats that are exactly a float32), because every
op computes with `f32(scale)`: the attribute, the printed IR and the arithmetic then agree, and
the error bound |w - s * q| <= s / 2 holds for the scale the ops really use.
"""

from __future__ import annotations

import math

import numpy as np

from fxforge.kernels.reference_quant import dequantize_int4, unpack_int4

__all__ = ["dequantize_int4", "pack_int4", "qparams_from_range", "quantize_int4_groupwise",
           "quantize_int8_per_channel", "unpack_int4"]


def _check_finite(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what} has non-finite values; it cannot be quantized")
    return w


def _symmetric_scale(amax: np.ndarray, qmax: int) -> np.ndarray:
    """amax / qmax rounded to float32; a zero (or underflowing) amax gets scale 1."""
    s = (amax / qmax).astype(np.float32)
    return np.where(s > 0, s, np.float32(1)).astype(np.float32)


WEIGHT_BITS = (7, 8)  # 7: what oneDNN's 16-bit pair sums (CPUs without VNNI) take exactly


def quantize_int8_per_channel(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 0) int8 with `bits` bits: qmax = 2**(bits-1) - 1 (127
    or 63), s[c] = max|w[c]| / qmax (zero channel: 1), q = clip(rint(w / s[c]), -qmax, qmax).
    Returns (q int8 of w's shape, s float32 [Cout])."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be one of {WEIGHT_BITS}, got {bits!r}")
    w = _check_finite(w, "weight")
    if w.ndim < 1:
        raise ValueError("a per-channel weight needs rank >= 1")
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1, initial=0.0)
    s = _symmetric_scale(amax, qmax)
    s_b = s.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    q = np.clip(np.rint(w / s_b), -qmax, qmax).astype(np.int8)
    return q, s


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int [N, K] in [-8, 7], K even -> u8 [N, K/2]: column 2j in the low nibble of byte j and
    column 2j + 1 in the high one, each stored as value + 8. Inverse of `unpack_int4`."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4 needs a [N, K] array with K even, got {list(q.shape)}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    biased = (q.astype(np.int16) + 8).astype(np.uint8)
    return (biased[:, 0::2] | (biased[:, 1::2] << 4)).astype(np.uint8)


def quantize_int4_groupwise(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric group-wise int4 of a [N, K] weight: s[n, g] = max|w[n, group g]| / 7 (zero
    group: 1), q = clip(rint(w / s), -8, 7). Returns (packed u8 [N, K/2], s f32 [N, K/g])."""
    w = _check_finite(w, "weight")
    if w.ndim != 2:
        raise ValueError(f"int4 weights must be [N, K], got {list(w.shape)}")
    n, k = w.shape
    if group_size < 2 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size {group_size} must be even and divide K = {k}")
    groups = w.reshape(n, k // group_size, group_size)
    s = _symmetric_scale(np.abs(groups).max(axis=2, initial=0.0), 7)
    q = np.clip(np.rint(groups / s.astype(np.float64)[..., None]), -8, 7).reshape(n, k)
    return pack_int4(q.astype(np.int8)), s


def qparams_from_range(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 parameters for a calibrated range, widened to include 0 so that 0 is
    exactly representable (as q = zero_point): scale = (hi - lo) / 255 (as a float32 value),
    zero_point = clip(rint(-128 - lo / scale), -128, 127). An empty range gets (1.0, 0)."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"range [{lo}, {hi}] is not a finite interval")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / 255))
    if not math.isfinite(scale):
        raise ValueError(f"range [{lo}, {hi}] is too wide for a float32 scale")
    if scale == 0:  # empty, or narrower than the smallest float32: every value quantizes to 0
        return 1.0, 0
    zero_point = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return scale, zero_point
