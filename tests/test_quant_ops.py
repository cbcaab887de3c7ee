"""The quantized ops (docs/quantized-ir.md): declarations, numpy reference, weight quantization.

What is checked, and to what tolerance:

- int32 accumulators (`qlinear_acc`, `qconv2d_acc`) against a naive int64 loop: bit-exact, over a
  table of shapes (odd sizes, batch 1, stride 2, padding, dilation, groups, depthwise) and zero
  points including the extremes.
- float results against float64 evaluations of the same formula: dequantize within one float32
  rounding (rel 2**-24); qlinear / qconv2d float outputs rtol 1e-5 (a few float32 roundings);
  requantized int8 outputs and quantize within 1 LSB of the float64 formula (the two can only
  part at a float32 rounding that moves a value across a .5 boundary); linear_int4 rtol 1e-6
  (the reference rounds its float64 product once).
- round-half-to-even and saturation exactly; int4 packing exactly; weight quantization error
  |w - s * q| <= s / 2 (plus float64 rounding).
- type inference errors name the attribute or input; quant passes through layout ops.
- a graph using every op prints, parses back equal, verifies and runs.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib

import numpy as np
import pytest
from graph_builder import GraphBuilder

from fxforge import ops, parse_ir, verify
from fxforge.execute import run_reference
from fxforge.ir import Graph, QuantParams, TensorType, Value
from fxforge.kernels import reference_quant as rq
from fxforge.printer import print_graph
from fxforge.quant_math import (
    pack_int4,
    qparams_from_range,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    unpack_int4,
)
from fxforge.quant_ops import per_tensor
from fxforge.shapes import OpTypeError

F32_EPS = 2.0**-24  # relative rounding error of one float32 operation


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded from the test's parameters (stable across runs, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _attrs(op: str, **attrs) -> dict:
    return dict(ops.complete_attrs(ops.get(op), attrs))


# ---------------------------------------------------------------------------------------------
# Naive int64 accumulators (small shapes only)


def naive_linear_acc(x, w, zp):
    xc = x.astype(np.int64) - zp
    out = np.zeros((*x.shape[:-1], w.shape[0]), dtype=np.int64)
    for idx in np.ndindex(*x.shape[:-1]):
        for n in range(w.shape[0]):
            out[idx + (n,)] = sum(int(xc[idx + (k,)]) * int(w[n, k]) for k in range(w.shape[1]))
    return out


def naive_conv_acc(x, w, zp, stride, padding, dilation, groups):
    b, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=zp) - zp
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, cout, ho, wo), dtype=np.int64)
    per_group = cout // groups
    for n, co, i, j in np.ndindex(b, cout, ho, wo):
        g = co // per_group
        total = 0
        for ci, a, c in np.ndindex(cin_g, kh, kw):
            total += int(xp[n, g * cin_g + ci, i * sh + a * dh, j * sw + c * dw]) * int(
                w[co, ci, a, c])
        out[n, co, i, j] = total
    return out


# ---------------------------------------------------------------------------------------------
# quantize / dequantize


def test_quantize_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 2.4999, 2.5001], dtype=np.float32)
    assert rq.quantize(x, scale=1.0, zero_point=0).tolist() == [0, 2, 2, 4, 0, -2, -2, -4, 2, 3]
    # the zero point is added after rounding: rint(2.5) + 1 = 3, not rint(3.5) = 4
    assert rq.quantize(x[:4], scale=1.0, zero_point=1).tolist() == [1, 3, 3, 5]
    # x / scale is a float32 division: 0.25 / 0.5 = 0.5 exactly, which rounds to 0
    assert rq.quantize(np.float32([0.25, 0.75]), scale=0.5, zero_point=0).tolist() == [0, 2]


def test_quantize_saturates():
    x = np.array([1e6, -1e6, 127.4, 127.6, -128.4, -128.6, np.inf, -np.inf], dtype=np.float32)
    assert rq.quantize(x, scale=1.0, zero_point=0).tolist() == [127, -128, 127, 127, -128, -128,
                                                                127, -128]
    assert rq.quantize(np.float32([120, -120]), scale=1.0, zero_point=10).tolist() == [127, -110]
    assert rq.quantize(np.float32([120, -120]), scale=1.0, zero_point=-10).tolist() == [110,
                                                                                        -128]


@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3, 5), (1, 1, 1, 1), (3, 0)])
@pytest.mark.parametrize("scale, zp", [(0.02, 0), (0.5, -128), (1e-3, 127), (3.0, 17)])
def test_quantize_dequantize_vs_float64(shape, scale, zp):
    rng = _rng("qdq", shape, scale, zp)
    x = (rng.standard_normal(shape) * 100 * scale).astype(np.float32)
    q = rq.quantize(x, scale=scale, zero_point=zp)
    assert q.dtype == np.int8 and q.shape == shape
    want = np.clip(np.rint(x.astype(np.float64) / np.float32(scale)) + zp, -128, 127)
    assert np.all(np.abs(q - want) <= 1)  # 1 LSB: a float32 quotient may cross a .5 boundary
    y = rq.dequantize(q, scale=scale, zero_point=zp)
    assert y.dtype == np.float32
    exact = (q.astype(np.float64) - zp) * np.float64(np.float32(scale))
    np.testing.assert_allclose(y, exact, rtol=F32_EPS, atol=0)
    inside = (want > -128) & (want < 127)  # not saturated: the round trip is within half a step
    err = np.abs(y.astype(np.float64) - x)[inside]
    assert np.all(err <= np.float32(scale) * (0.5 + 1e-4))  # plus float32 roundings


# ---------------------------------------------------------------------------------------------
# dynamic_quantize


@pytest.mark.parametrize("shape", [(1, 1), (4, 7), (2, 3, 5), (9,), (1, 16)])
@pytest.mark.parametrize("mode", ["row", "tensor"])
def test_dynamic_quantize_vs_float64(shape, mode):
    x = (_rng("dyn", shape, mode).standard_normal(shape) * 3).astype(np.float32)
    q, s = rq.dynamic_quantize(x, mode=mode)
    axes = (x.ndim - 1,) if mode == "row" else tuple(range(x.ndim))
    keep = (*shape[:-1], 1) if mode == "row" else (1,) * x.ndim
    assert q.dtype == np.int8 and q.shape == shape
    assert s.dtype == np.float32 and s.shape == keep
    amax = np.abs(x.astype(np.float64)).max(axis=axes, keepdims=True)
    np.testing.assert_allclose(s, amax / 127, rtol=F32_EPS, atol=0)
    assert np.all(np.abs(q.astype(np.float64) - x / s.astype(np.float64)) <= 0.5 + 1e-5)
    assert q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q).max(axis=axes) == 127)  # the largest element maps to +-127


def test_dynamic_quantize_zero_rows_get_scale_one():
    x = np.zeros((3, 4), dtype=np.float32)
    x[1] = [0.0, -254.0, 127.0, 65.0]  # scale 2: quotients 63.5 and 32.5 round half to even
    q, s = rq.dynamic_quantize(x, mode="row")
    assert s[:, 0].tolist() == [1.0, 2.0, 1.0]
    assert q[0].tolist() == [0, 0, 0, 0] and q[2].tolist() == [0, 0, 0, 0]
    assert q[1].tolist() == [0, -127, 64, 32]
    q, s = rq.dynamic_quantize(np.zeros((2, 2), np.float32), mode="tensor")
    assert s.tolist() == [[1.0]] and not q.any()


# ---------------------------------------------------------------------------------------------
# Accumulators: bit-exact against int64


LINEAR_SHAPES = [  # (x shape, N)
    ((1, 1), 1), ((1, 7), 3), ((5, 13), 9), ((2, 3, 17), 5), ((17,), 4), ((3, 64), 31),
]


@pytest.mark.parametrize("x_shape, n", LINEAR_SHAPES)
@pytest.mark.parametrize("zp", [0, -128, 37, 127])
def test_qlinear_acc_exact(x_shape, n, zp):
    rng = _rng("lin", x_shape, n, zp)
    x, w = _int8(rng, x_shape), _int8(rng, (n, x_shape[-1]))
    acc = rq.qlinear_acc(x, w, zp)
    assert acc.dtype == np.int32 and acc.shape == (*x_shape[:-1], n)
    np.testing.assert_array_equal(acc, naive_linear_acc(x, w, zp))


def test_qlinear_acc_extremes():
    """The largest magnitudes: (x - zp) = -255 against w = -128 over K terms."""
    k = 4096
    x, w = np.full((2, k), -128, np.int8), np.full((3, k), -128, np.int8)
    acc = rq.qlinear_acc(x, w, 127)
    assert np.all(acc == 255 * 128 * k)
    assert rq.acc_bound(127, 65793) <= rq.INT32_MAX < rq.acc_bound(127, 65794)


CONV_CASES = [  # (x shape, Cout, kernel, stride, padding, dilation, groups)
    ((1, 1, 1, 1), 1, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((1, 3, 7, 5), 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 3, 9, 9), 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 2, 8, 7), 3, (3, 2), (2, 1), (2, 1), (2, 1), 1),
    ((1, 4, 6, 6), 6, (3, 3), (1, 1), (1, 1), (2, 2), 2),
    ((2, 6, 5, 5), 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((1, 4, 7, 7), 8, (5, 5), (2, 2), (2, 2), (1, 1), 4),  # depthwise, multiplier 2
    ((1, 3, 4, 9), 2, (1, 3), (1, 3), (0, 2), (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x{}-k{}-s{}-p{}-d{}-g{}".format(
    *c[:1], *c[2:]))
@pytest.mark.parametrize("zp", [0, -128, 5, 127])
def test_qconv2d_acc_exact(case, zp):
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("conv", case, zp)
    x = _int8(rng, x_shape)
    w = _int8(rng, (cout, x_shape[1] // groups, *kernel))
    acc = rq.qconv2d_acc(x, w, zp, stride, padding, dilation, groups)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, naive_conv_acc(x, w, zp, stride, padding, dilation,
                                                      groups))


def test_qconv2d_pads_with_the_zero_point():
    """A 1x1 input padded by 1: only the centre tap sees x; the padding taps see x - zp = 0."""
    x = np.array([[[[10]]]], np.int8)
    w = np.ones((1, 1, 3, 3), np.int8)
    acc = rq.qconv2d_acc(x, w, 7, (1, 1), (1, 1), (1, 1), 1)
    assert acc.tolist() == [[[[3]]]]


# ---------------------------------------------------------------------------------------------
# qlinear / qconv2d with their float epilogue, against float64


def _f64_epilogue(y, bias, bias_shape, residual):
    if bias is not None:
        y = y + bias.astype(np.float64).reshape(bias_shape)
    y = np.maximum(y, 0.0)  # relu
    if residual is not None:
        y = y + residual.astype(np.float64)
    return y


def _check_out(got, y64, out_dtype, out_scale, out_zp):
    if out_dtype == "f32":
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, y64, rtol=1e-5, atol=1e-6 * np.abs(y64).max())
    else:
        assert got.dtype == np.int8
        want = np.clip(np.rint(y64 / np.float32(out_scale)) + out_zp, -128, 127)
        assert np.all(np.abs(got - want) <= 1)
        assert np.mean(got == want) > 0.95


Q_VARIANTS = [  # (dynamic, has_bias, with_residual, out_dtype)
    (False, False, False, "f32"), (False, True, True, "f32"), (False, True, False, "i8"),
    (True, False, False, "f32"), (True, True, True, "i8"),
]


@pytest.mark.parametrize("x_shape, n", LINEAR_SHAPES)
@pytest.mark.parametrize("dynamic, has_bias, residual, out_dtype", Q_VARIANTS)
def test_qlinear_vs_float64(x_shape, n, dynamic, has_bias, residual, out_dtype):
    rng = _rng("qlin", x_shape, n, dynamic, has_bias, residual, out_dtype)
    x, w = _int8(rng, x_shape), _int8(rng, (n, x_shape[-1]))
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    inputs = [x, w, w_scale]
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    if has_bias:
        inputs.append(bias)
    x_zp = 0 if dynamic else -3
    if dynamic:
        x_scale = rng.uniform(0.01, 0.1, (*x_shape[:-1], 1)).astype(np.float32)
        inputs.append(x_scale)
        scale64 = x_scale.astype(np.float64)
    else:
        x_scale = 0.037
        scale64 = np.float64(np.float32(x_scale))
    epilogue = [{"op": "relu"}]
    res = None
    if residual:
        res = rng.standard_normal((*x_shape[:-1], n)).astype(np.float32)
        epilogue.append({"op": "add", "operand": len(inputs), "side": "right"})
        inputs.append(res)
    attrs = _attrs("qlinear", has_bias=has_bias, dynamic=dynamic,
                   x_scale=None if dynamic else x_scale, x_zero_point=x_zp, out_dtype=out_dtype,
                   out_scale=0.05 if out_dtype == "i8" else None,
                   out_zero_point=-7 if out_dtype == "i8" else 0, epilogue=epilogue)
    got = rq.qlinear(*inputs, **attrs)
    acc64 = naive_linear_acc(x, w, x_zp).astype(np.float64)
    y64 = _f64_epilogue(acc64 * scale64 * w_scale.astype(np.float64), bias, (-1,), res)
    _check_out(got, y64, out_dtype, 0.05, -7)


@pytest.mark.parametrize("case", CONV_CASES[1:6])
@pytest.mark.parametrize("dynamic, has_bias, residual, out_dtype", Q_VARIANTS)
def test_qconv2d_vs_float64(case, dynamic, has_bias, residual, out_dtype):
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("qconv", case, dynamic, has_bias, residual, out_dtype)
    x, w = _int8(rng, x_shape), _int8(rng, (cout, x_shape[1] // groups, *kernel))
    w_scale = rng.uniform(1e-3, 1e-2, cout).astype(np.float32)
    inputs = [x, w, w_scale]
    bias = rng.standard_normal(cout).astype(np.float32) if has_bias else None
    if has_bias:
        inputs.append(bias)
    x_zp = 0 if dynamic else 11
    if dynamic:
        x_scale = np.full((1, 1, 1, 1), 0.021, np.float32)
        inputs.append(x_scale)
        scale64 = x_scale.astype(np.float64)
    else:
        x_scale = 0.021
        scale64 = np.float64(np.float32(x_scale))
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    acc64 = naive_conv_acc(x, w, x_zp, **conv).astype(np.float64)
    epilogue = [{"op": "relu"}]
    res = None
    if residual:
        res = rng.standard_normal(acc64.shape).astype(np.float32)
        epilogue.append({"op": "add", "operand": len(inputs), "side": "left"})
        inputs.append(res)
    attrs = _attrs("qconv2d", **conv, has_bias=has_bias, dynamic=dynamic,
                   x_scale=None if dynamic else x_scale, x_zero_point=x_zp, out_dtype=out_dtype,
                   out_scale=0.05 if out_dtype == "i8" else None, epilogue=epilogue)
    got = rq.qconv2d(*inputs, **attrs)
    y64 = _f64_epilogue(acc64 * scale64 * w_scale.astype(np.float64).reshape(1, -1, 1, 1), bias,
                        (1, -1, 1, 1), res)
    _check_out(got, y64, out_dtype, 0.05, 0)


def test_qlinear_float32_order():
    """The reference is bit-for-bit the contract's float32 sequence: m = f32(x_scale) * w_scale
    first, then f32(acc) * m, then + bias (another association differs somewhere, so the order
    is really pinned)."""
    rng = _rng("order")
    x, w = _int8(rng, (64, 32)), _int8(rng, (48, 32))
    w_scale = rng.uniform(1e-3, 1e-2, 48).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    got = rq.qlinear(x, w, w_scale, bias, **_attrs("qlinear", has_bias=True, x_scale=0.0137,
                                                    x_zero_point=-9))
    acc = naive_linear_acc(x, w, -9).astype(np.float32)
    want = acc * (np.float32(0.0137) * w_scale) + bias
    np.testing.assert_array_equal(got, want)
    other = (acc * np.float32(0.0137)) * w_scale + bias
    assert not np.array_equal(got, other)


# ---------------------------------------------------------------------------------------------
# int4


def test_int4_pack_layout_and_round_trip():
    assert pack_int4(np.array([[-8, 7]])).tolist() == [[0xF0]]
    assert pack_int4(np.array([[7, -8, 0, 1]])).tolist() == [[0x0F, 0x98]]
    values = np.array(list(itertools.product(range(-8, 8), repeat=2))).reshape(16, 32)
    packed = pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (16, 16)
    assert len(np.unique(packed)) == 256  # every byte once: the packing is a bijection
    np.testing.assert_array_equal(unpack_int4(packed), values)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([[8, 0]]))
    with pytest.raises(ValueError, match="K even"):
        pack_int4(np.zeros((2, 3), int))


@pytest.mark.parametrize("x_shape, n, group_size", [((1, 8), 3, 8), ((5, 12), 7, 4),
                                                      ((2, 3, 16), 5, 2), ((9, 64), 33, 32),
                                                      ((6,), 2, 6)])
@pytest.mark.parametrize("has_bias", [False, True])
def test_linear_int4_vs_float64(x_shape, n, group_size, has_bias):
    rng = _rng("int4", x_shape, n, group_size, has_bias)
    k = x_shape[-1]
    w = rng.standard_normal((n, k))
    packed, scales = quantize_int4_groupwise(w, group_size)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    inputs = [x, packed, scales] + ([bias] if has_bias else [])
    got = rq.linear_int4(*inputs, group_size=group_size, has_bias=has_bias)
    assert got.dtype == np.float32 and got.shape == (*x_shape[:-1], n)
    w_int = unpack_int4(packed).astype(np.float64)
    w64 = (w_int * np.repeat(scales.astype(np.float64), group_size, axis=1)).astype(np.float32)
    want = x.astype(np.float64) @ w64.astype(np.float64).T
    if has_bias:
        want = want + bias
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# quant_math


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (8, 3, 3, 3), (4, 1, 5, 5), (3,)])
def test_int8_per_channel_error_bound(shape):
    w = _rng("w8", shape).standard_normal(shape) * 0.1
    w[0] = 0.0  # a zero channel gets scale 1 and q 0
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == np.int8 and q.shape == shape and s.dtype == np.float32
    assert s.shape == (shape[0],) and s[0] == 1.0 and not q[0].any()
    assert q.min() >= -127 and q.max() <= 127
    sb = s.astype(np.float64).reshape((-1,) + (1,) * (len(shape) - 1))
    assert np.all(np.abs(w - sb * q) <= sb / 2 * (1 + 1e-12))
    flat = np.abs(q.reshape(shape[0], -1))
    assert np.all(flat.max(axis=1)[1:] == 127)  # each nonzero channel uses the full range


@pytest.mark.parametrize("n, k, group_size", [(1, 8, 8), (5, 12, 4), (7, 64, 32), (3, 6, 2)])
def test_int4_groupwise_error_bound(n, k, group_size):
    w = _rng("w4", n, k).standard_normal((n, k))
    w[0, :group_size] = 0.0  # a zero group gets scale 1
    packed, s = quantize_int4_groupwise(w, group_size)
    assert packed.shape == (n, k // 2) and s.shape == (n, k // group_size)
    assert s[0, 0] == 1.0
    q = unpack_int4(packed).astype(np.float64)
    assert not q[0, :group_size].any()
    sb = np.repeat(s.astype(np.float64), group_size, axis=1)
    assert np.all(np.abs(w - sb * q) <= sb / 2 * (1 + 1e-12))
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4_groupwise(w, 3)


def test_weight_quantization_rejects_non_finite():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8_per_channel(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 6.0), (-3.0, -1.0), (2.0, 5.0),
                                    (-0.3, 7.9), (-1e-3, 1e5), (-100.0, 0.01)])
def test_qparams_from_range(lo, hi):
    scale, zp = qparams_from_range(lo, hi)
    assert isinstance(scale, float) and isinstance(zp, int)
    assert scale == float(np.float32(scale)) and scale > 0  # exactly a float32
    assert -128 <= zp <= 127
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    assert math.isclose(scale, (hi0 - lo0) / 255, rel_tol=1e-7)
    # 0 is exactly representable: it quantizes to the zero point and comes back as 0
    q0 = rq.quantize(np.float32([0.0]), scale=scale, zero_point=zp)
    assert q0.tolist() == [zp]
    assert rq.dequantize(q0, scale=scale, zero_point=zp).tolist() == [0.0]
    # the ends of the range come back within one step (the zero point is rounded)
    ends = rq.dequantize(rq.quantize(np.float32([lo0, hi0]), scale=scale, zero_point=zp),
                         scale=scale, zero_point=zp)
    np.testing.assert_allclose(ends, [lo0, hi0], atol=scale * 1.0001)


def test_qparams_from_empty_range():
    assert qparams_from_range(0.0, 0.0) == (1.0, 0)
    with pytest.raises(ValueError, match="finite interval"):
        qparams_from_range(1.0, -1.0)
    with pytest.raises(ValueError, match="finite interval"):
        qparams_from_range(0.0, math.inf)


# ---------------------------------------------------------------------------------------------
# Type inference


def T(shape, dtype="f32", quant=None) -> TensorType:  # noqa: N802 - reads like a type
    return TensorType(tuple(shape), dtype, quant)


def infer(op: str, ins, **attrs):
    opdef = ops.get(op)
    return ops.infer_types(opdef, ins, ops.complete_attrs(opdef, attrs))


QL = dict(has_bias=False, x_scale=0.1)  # a valid static qlinear / qconv2d
X8, W8, WS = T((4, 16), "i8"), T((8, 16), "i8"), T((8,))
CX, CW, CS = T((1, 4, 6, 6), "i8"), T((8, 2, 3, 3), "i8"), T((8,))


def test_inference_of_valid_nodes():
    assert infer("quantize", [T((2, 3))], scale=0.5, zero_point=-4) == (
        T((2, 3), "i8", QuantParams((0.5,), (-4,), None)),)
    assert infer("dequantize", [T((2, 3), "i8", per_tensor(0.5, -4))], scale=0.5,
                 zero_point=-4) == (T((2, 3)),)
    assert infer("dynamic_quantize", [T((2, 3, 5))], mode="row") == (T((2, 3, 5), "i8"),
                                                                      T((2, 3, 1)))
    assert infer("dynamic_quantize", [T((2, 3, 5))], mode="tensor") == (T((2, 3, 5), "i8"),
                                                                         T((1, 1, 1)))
    assert infer("qlinear", [X8, W8, WS], **QL) == (T((4, 8)),)
    assert infer("qlinear", [X8, W8, WS, T((8,)), T((4, 1))], has_bias=True, dynamic=True,
                 out_dtype="i8", out_scale=0.25, out_zero_point=3) == (
        T((4, 8), "i8", per_tensor(0.25, 3)),)
    assert infer("qconv2d", [CX, CW, CS], **QL, groups=2, padding=(1, 1), stride=(2, 2)) == (
        T((1, 8, 3, 3)),)
    assert infer("linear_int4", [T((3, 16)), T((5, 8), "u8"), T((5, 2))], group_size=8,
                 has_bias=False) == (T((3, 5)),)


BAD = [  # (op, input types, attrs, message fragment)
    ("quantize", [T((2,), "i8")], dict(scale=1.0, zero_point=0), "input x must be f32"),
    ("quantize", [T((2,))], dict(scale=0.0, zero_point=0), "attribute scale"),
    ("quantize", [T((2,))], dict(scale=-1.0, zero_point=0), "attribute scale"),
    ("quantize", [T((2,))], dict(scale=math.nan, zero_point=0), "attribute scale"),
    ("quantize", [T((2,))], dict(scale=math.inf, zero_point=0), "attribute scale"),
    ("quantize", [T((2,))], dict(scale=1e-50, zero_point=0), "also as a float32"),
    ("quantize", [T((2,))], dict(scale=1e300, zero_point=0), "also as a float32"),
    ("quantize", [T((2,))], dict(scale=1.0, zero_point=128), "zero_point=128"),
    ("quantize", [T((2,))], dict(scale=1.0, zero_point=-129), "zero_point=-129"),
    ("dequantize", [T((2,))], dict(scale=1.0, zero_point=0), "input q must be i8"),
    ("dequantize", [T((2,), "i8", per_tensor(0.5, 0))], dict(scale=0.25, zero_point=0),
     "attributes say scale=0.25"),
    ("dequantize", [T((2,), "i8", per_tensor(0.5, 0))], dict(scale=0.5, zero_point=1),
     "zero_point=1"),
    ("dynamic_quantize", [T((2,))], dict(mode="col"), "attribute mode"),
    ("dynamic_quantize", [T(())], dict(mode="row"), "rank >= 1"),
    ("dynamic_quantize", [T((2,), "f16")], dict(mode="row"), "input x must be f32"),
    ("qlinear", [T((4, 16)), W8, WS], QL, "input x must be i8"),
    ("qlinear", [X8, T((8, 16)), WS], QL, "input weight must be i8"),
    ("qlinear", [X8, W8, T((7,))], QL, "input w_scale must be f32[8]"),
    ("qlinear", [X8, W8, T((8,), "f16")], QL, "input w_scale"),
    ("qlinear", [X8, W8, WS, T((9,))], dict(QL, has_bias=True), "input bias must be f32[8]"),
    ("qlinear", [X8, W8, WS], dict(QL, has_bias=True), "needs at least 4 inputs"),
    ("qlinear", [X8, T((8, 15), "i8"), WS], QL, "does not match weight"),
    ("qlinear", [X8, W8, WS], dict(has_bias=False), "attribute x_scale is required"),
    ("qlinear", [X8, W8, WS, T((4, 1))], dict(QL, dynamic=True), "x_scale must be none"),
    ("qlinear", [X8, W8, WS, T((4, 1))], dict(has_bias=False, dynamic=True, x_zero_point=2),
     "x_zero_point must be 0"),
    ("qlinear", [X8, W8, WS, T((1, 1))], dict(has_bias=False, dynamic=True),
     "input x_scale must be f32[4,1]"),
    ("qlinear", [X8, W8, WS], dict(QL, x_scale=0.0), "attribute x_scale"),
    ("qlinear", [X8, W8, WS], dict(QL, x_zero_point=200), "attribute x_zero_point=200"),
    ("qlinear", [X8, W8, WS], dict(QL, out_dtype="i8"), "attribute out_scale is required"),
    ("qlinear", [X8, W8, WS], dict(QL, out_scale=0.5), "only for out_dtype i8"),
    ("qlinear", [X8, W8, WS], dict(QL, out_dtype="i32"), "out_dtype must be f32 or i8"),
    ("qlinear", [X8, W8, WS], dict(QL, out_dtype="i8", out_scale=0.5, out_zero_point=-200),
     "out_zero_point=-200"),
    ("qlinear", [T((4, 16), "i8", per_tensor(0.2, 0)), W8, WS], QL, "input x has quantization"),
    ("qlinear", [T((4, 16), "i8", per_tensor(0.1, 0)), W8, WS, T((4, 1))],
     dict(has_bias=False, dynamic=True), "the op is dynamic"),
    ("qlinear", [X8, W8, WS, T((4, 8))],
     dict(QL, epilogue=({"op": "add", "operand": 0, "side": "right"},)),
     "not an epilogue operand"),
    ("qlinear", [X8, W8, WS, T((4, 8), "f64")],
     dict(QL, epilogue=({"op": "add", "operand": 3, "side": "right"},)),
     "input 3 (an epilogue operand) must be f32"),
    ("qlinear", [X8, W8, WS, T((4, 8))],
     dict(QL, epilogue=({"op": "gt", "operand": 3, "side": "right"},)), "must stay f32"),
    ("qlinear", [X8, W8, WS], dict(QL, epilogue=({"op": "conv2d"},)), "not an elementwise op"),
    ("qlinear", [T((1, 70000), "i8"), T((2, 70000), "i8"), T((2,))], dict(QL, x_zero_point=127),
     "int32 accumulator"),
    ("qconv2d", [CX, CW, CS], QL, "do not agree"),
    ("qconv2d", [T((1, 4, 6), "i8"), CW, CS], dict(QL, groups=2), "qconv2d: conv2d input"),
    ("qconv2d", [CX, CW, T((4,))], dict(QL, groups=2), "input w_scale must be f32[8]"),
    ("qconv2d", [CX, CW, CS, T((1, 1, 1))], dict(has_bias=False, dynamic=True, groups=2),
     "input x_scale must be f32[1,1,1,1]"),
    ("qconv2d", [CX, CW, CS], dict(QL, groups=2, stride=(1,)), "stride must have 2 values"),
    ("linear_int4", [T((3, 16), "i8"), T((5, 8), "u8"), T((5, 2))],
     dict(group_size=8, has_bias=False), "input x must be f32"),
    ("linear_int4", [T((3, 16)), T((5, 8), "i8"), T((5, 2))],
     dict(group_size=8, has_bias=False), "input packed must be u8"),
    ("linear_int4", [T((3, 16)), T((5, 7), "u8"), T((5, 2))],
     dict(group_size=8, has_bias=False), "input packed must be u8[5,8]"),
    ("linear_int4", [T((3, 16)), T((5, 8), "u8"), T((5, 4))],
     dict(group_size=8, has_bias=False), "input scales must be f32[5,2]"),
    ("linear_int4", [T((3, 15)), T((5, 8), "u8"), T((5, 3))],
     dict(group_size=5, has_bias=False), "group_size=5"),
    ("linear_int4", [T((3, 16)), T((5, 8), "u8"), T((5, 2))],
     dict(group_size=8, has_bias=True), "takes 4 inputs"),
    ("linear_int4", [T((3, 16)), T((5, 8), "u8"), T((5, 2)), T((4,))],
     dict(group_size=8, has_bias=True), "input bias must be f32[5]"),
]


@pytest.mark.parametrize("op, ins, attrs, message", BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_inference_errors(op, ins, attrs, message):
    with pytest.raises(OpTypeError, match=re.escape(message)):
        infer(op, ins, **attrs)


Q = per_tensor(0.1, -3)
QX = T((2, 4, 6, 6), "i8", Q)
LAYOUT = [  # (op, attrs) applied to QX
    ("reshape", dict(shape=(2, -1))), ("permute", dict(dims=(0, 2, 3, 1))),
    ("slice", dict(dim=2, start=1, end=5)), ("select", dict(dim=1, index=2)),
    ("squeeze", dict(dims=(0,))), ("unsqueeze", dict(dim=0)),
    ("expand", dict(shape=(3, 2, 4, 6, 6))), ("split", dict(sizes=(1, 3), dim=1)),
    ("cat", dict(dim=1)), ("identity", {}),
    ("max_pool2d", dict(kernel=(2, 2), stride=(2, 2))),
]


@pytest.mark.parametrize("op, attrs", LAYOUT, ids=[op for op, _ in LAYOUT])
def test_layout_ops_pass_quant_through(op, attrs):
    ins = [QX, QX] if op == "cat" else [QX]
    outs = infer(op, ins, **attrs)
    assert outs and all(t.quant == Q and t.dtype == "i8" for t in outs)
    plain = infer(op, [T(QX.shape, "i8")] * len(ins), **attrs)
    assert all(t.quant is None for t in plain)


def test_quant_stops_at_other_ops():
    assert infer("relu", [QX])[0].quant is None
    assert infer("avg_pool2d", [T(QX.shape, "f32", Q)], kernel=(2, 2), stride=(2, 2))[0].quant \
        is None


def test_cat_needs_one_quantization():
    with pytest.raises(OpTypeError, match="quantized differently"):
        infer("cat", [QX, T(QX.shape, "i8", per_tensor(0.2, -3))], dim=1)
    with pytest.raises(OpTypeError, match="quantized differently"):
        infer("cat", [QX, T(QX.shape, "i8")], dim=1)
    with pytest.raises(OpTypeError, match="per-axis"):
        infer("reshape", [T((4,), "i8", QuantParams((0.1,) * 4, (0,) * 4, 0))], shape=(2, 2))


def test_flops():
    def flops(op, ins, **attrs):
        opdef = ops.get(op)
        full = ops.complete_attrs(opdef, attrs)
        return opdef.count_flops(ins, ops.infer_types(opdef, ins, full), full)

    lin = flops("linear", [T((4, 16)), T((8, 16))])
    assert flops("qlinear", [X8, W8, WS], **QL) == lin == 2 * 4 * 8 * 16
    epi = ({"op": "relu"}, {"op": "clamp", "attrs": {"min": 0.0, "max": 6.0}})
    assert flops("qlinear", [X8, W8, WS], **QL, epilogue=epi) == lin + 2 * 4 * 8
    conv = flops("conv2d", [T(CX.shape), T(CW.shape)], groups=2)
    assert flops("qconv2d", [CX, CW, CS], **QL, groups=2) == conv == 2 * 8 * 16 * 2 * 9
    assert flops("linear_int4", [T((3, 16)), T((5, 8), "u8"), T((5, 2))], group_size=8,
                 has_bias=False) == flops("linear", [T((3, 16)), T((5, 16))])
    assert flops("quantize", [T((2, 3))], scale=1.0, zero_point=0) == 6


def test_kinds():
    kinds = {op: ops.get(op).kind for op in ("quantize", "dequantize", "dynamic_quantize",
                                             "qlinear", "qconv2d", "linear_int4")}
    assert kinds == {"quantize": "quant", "dequantize": "quant", "dynamic_quantize": "quant",
                     "qlinear": "compute", "qconv2d": "compute", "linear_int4": "compute"}


# ---------------------------------------------------------------------------------------------
# A graph with every op: print / parse round trip, verifier, reference run


def _every_op_graph() -> Graph:
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = Value("x", T((2, 3, 9, 9)))
    q = b("quantize", [x], scale=0.05, zero_point=3)
    w1, s1 = quantize_int8_per_channel(rng.standard_normal((4, 3, 3, 3)))
    c1 = b("qconv2d", [q, b.const(w1), b.const(s1), b.const(rng.standard_normal(4).astype(
        np.float32))], stride=(2, 2), padding=(1, 1), has_bias=True, x_scale=0.05, x_zero_point=3,
        out_dtype="i8", out_scale=0.1, out_zero_point=-5, epilogue=({"op": "relu"},))
    p = b("max_pool2d", [c1], kernel=(2, 2), stride=(1, 1))
    d = b("dequantize", [p], scale=0.1, zero_point=-5)
    r = b("reshape", [d], shape=(2, -1))
    dq, ds = b("dynamic_quantize", [r], n_out=2, mode="row")
    k = r.type.shape[1]
    w2, s2 = quantize_int8_per_channel(rng.standard_normal((8, k)))
    res = b.const(rng.standard_normal((2, 8)).astype(np.float32))
    lin = b("qlinear", [dq, b.const(w2), b.const(s2), ds, res], has_bias=False, dynamic=True,
            epilogue=({"op": "add", "operand": 4, "side": "right"},
                      {"op": "clamp", "attrs": {"min": -1.0, "max": 1.0}}))
    packed, scales = quantize_int4_groupwise(rng.standard_normal((6, 8)), 4)
    i4 = b("linear_int4", [lin, b.const(packed), b.const(scales),
                           b.const(np.zeros(6, np.float32))], group_size=4, has_bias=True)
    tq, ts = b("dynamic_quantize", [x], n_out=2, mode="tensor")
    w3, s3 = quantize_int8_per_channel(rng.standard_normal((3, 1, 3, 3)))
    c2 = b("qconv2d", [tq, b.const(w3), b.const(s3), ts], padding=(1, 1), dilation=(2, 2),
           groups=3, has_bias=False, dynamic=True)
    return Graph((x,), tuple(b.nodes), (i4, c2, p))


def test_every_op_graph_round_trips_and_runs():
    g = _every_op_graph()
    verify(g)
    assert {n.op for n in g.nodes} >= {"quantize", "dequantize", "dynamic_quantize", "qlinear",
                                       "qconv2d", "linear_int4"}
    text = str(g)
    assert "qconv2d[stride=[2, 2]" in text and "{scale=[0.1], zero_point=[-5], axis=none}" in text
    parsed = parse_ir(text)
    assert parsed == g
    verify(parsed)
    assert parse_ir(print_graph(g, inline_constants=True)) == g
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    i4, c2, p = run_reference(g, [x])
    assert i4.shape == (2, 6) and i4.dtype == np.float32 and np.all(np.isfinite(i4))
    assert c2.shape == (2, 3, 7, 7) and c2.dtype == np.float32
    assert p.dtype == np.int8 and p.min() >= -5  # relu before requantization: q >= zero point
    arrays = {n.output.name: n.attrs["value"].array for n in g.nodes if n.op == "const"}
    for got, want in zip(run_reference(parse_ir(text, arrays), [x]), (i4, c2, p)):
        np.testing.assert_array_equal(got, want)


def test_reference_refuses_int32_overflow():
    with pytest.raises(ValueError, match="overflows"):
        rq._to_int32(np.array([2.0**31]), "qlinear")
