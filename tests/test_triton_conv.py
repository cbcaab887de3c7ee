"""Triton conv kernels (kernels/triton/conv.py, depthwise.py) against the numpy reference.

Run on Triton's CPU interpreter without a GPU (tests/conftest.py), on the GPU when there is one.
What is checked, and to what tolerance:

- float conv / depthwise vs `reference.fused_conv2d` (float64, rounded once): f32 rtol 1e-4,
  atol 1e-5 (weights scaled by 1/sqrt(K) so outputs are O(1)); f16 rtol 2e-3, atol 2e-3 (the
  reference rounds an exact sum to f16 once, the kernel rounds an f32 sum: about 1 f16 ulp).
- int8 accumulators (out_dtype "i32") bit-exact vs `reference_quant.qconv2d_acc`, with nonzero
  (and extreme) zero points and padding; int8 f32 outputs rtol 1e-5 (the same float32 formula);
  int8 i8 outputs within 1 LSB and at least 99% exact; ties round half to even, exactly.
- epilogues: relu, residual add (channels_last and NCHW residuals), per-channel mul ([1, C, 1,
  1] and [C, 1, 1]), in float and int8.
- shapes: batch 1 and 2, 1x1 / 3x3 / 5x5 / 7x7 kernels, stride 2, padding, dilation, odd
  channel counts (3, 5, 33: masks on every edge of the tiles), every CONFIGS entry once.
- grouped convs (groups 2 to 8, and depthwise) in the GEMM kernel: float (f32, f16, with bias
  and epilogues), int8 accumulators exact and int8 outputs, per-group channel counts below and
  above the blocks, RegNet-like (groups 8, 3x3 stride 2) and wav2vec2-like ((1, 7) kernel).
- outputs are channels_last; wrong shapes, dtypes and epilogue operands raise clear ValueErrors.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from fxforge import ops
from fxforge.ir import TensorType
from fxforge.kernels import reference as ref
from fxforge.kernels import reference_quant as rq
from fxforge.kernels.triton import conv, conv_common, depthwise
from fxforge.kernels.triton.codegen import Epilogue

F16_TOL = dict(rtol=2e-3, atol=2e-3)
F32_TOL = dict(rtol=1e-4, atol=1e-5)
CL = torch.channels_last


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _int8(rng, shape, lo=-128) -> np.ndarray:
    return rng.integers(lo, 128, size=shape).astype(np.int8)


def _t(a: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.contiguous(memory_format=CL) if channels_last and t.dim() == 4 else t


def _types(arrays) -> list[TensorType]:
    from fxforge import dtypes
    return [TensorType(a.shape, dtypes.from_numpy(a.dtype)) for a in arrays]


def _float_case(inputs, steps, geom, has_bias):
    """(Epilogue, reference output) of a fused_conv2d with these numpy inputs."""
    attrs = ops.complete_attrs(ops.get("fused_conv2d"), dict(geom, has_bias=has_bias,
                                                             epilogue=steps))
    types = _types(inputs)
    stages = ops.stage_types("fused_conv2d", types, attrs)
    epi = Epilogue(attrs["epilogue"], tuple(stages), tuple(types))
    return epi, ref.fused_conv2d(*inputs, **attrs)


def _quant_case(inputs, steps, geom, has_bias, x_scale, zp, out_dtype, out_scale, out_zp,
                dynamic=False):
    """(Epilogue, reference output) of a qconv2d with these numpy inputs."""
    attrs = ops.complete_attrs(ops.get("qconv2d"), dict(
        geom, has_bias=has_bias, dynamic=dynamic, x_scale=None if dynamic else x_scale,
        x_zero_point=zp, out_dtype=out_dtype, out_scale=out_scale, out_zero_point=out_zp,
        epilogue=steps))
    expected = rq.qconv2d(*inputs, **attrs)
    types = _types(inputs)
    stages = ops.epilogue_types(TensorType(expected.shape, "f32"), types, attrs["epilogue"])
    return Epilogue(attrs["epilogue"], tuple(stages), tuple(types)), expected


def _geom(stride, padding, dilation, groups=1):
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _check_i8(got: torch.Tensor, expected: np.ndarray):
    diff = np.abs(got.numpy().astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1, f"int8 output off by {diff.max()} LSB"
    assert (diff == 0).mean() >= 0.99


def _assert_cl(y: torch.Tensor, shape):
    assert tuple(y.shape) == tuple(shape)
    assert y.is_contiguous(memory_format=CL)


# (x shape, Cout, kernel, stride, padding, dilation)
CASES = [
    ((1, 3, 8, 8), 16, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 5, 9, 9), 24, (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 16, 5, 7), 5, (1, 1), (1, 1), (0, 0), (1, 1)),
    ((1, 33, 5, 7), 24, (5, 5), (1, 1), (2, 2), (1, 1)),
    ((1, 3, 9, 9), 16, (7, 7), (2, 2), (3, 3), (1, 1)),
    ((2, 5, 8, 8), 24, (3, 3), (1, 1), (2, 2), (2, 2)),
    ((1, 24, 9, 9), 5, (3, 3), (2, 1), (1, 0), (1, 2)),
]


def _float_inputs(rng, case, dtype, has_bias=True):
    x_shape, cout, kernel, *_ = case
    k = x_shape[1] * kernel[0] * kernel[1]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((cout, x_shape[1], *kernel)) / np.sqrt(k)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    return [x, w, bias] if has_bias else [x, w]


# --- float conv ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_conv2d_float(case, dtype):
    rng = _rng("float", case, dtype)
    x_shape, cout, kernel, stride, padding, dilation = case
    inputs = _float_inputs(rng, case, dtype)
    epi, expected = _float_case(inputs, (), _geom(stride, padding, dilation), True)
    x, w, bias = inputs
    y = conv.conv2d(_t(x, channels_last=case[0][0] == 2), conv.prepare_weight(_t(w)),
                    kernel_size=kernel, bias=_t(bias), stride=stride, padding=padding,
                    dilation=dilation, epilogue=epi)
    _assert_cl(y, expected.shape)
    assert y.dtype == torch.from_numpy(x).dtype
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected.astype(np.float64),
                               **(F32_TOL if dtype == np.float32 else F16_TOL))


@pytest.mark.parametrize("cfg", conv.CONFIGS)
def test_conv2d_every_config(cfg):
    rng = _rng("config", sorted(cfg.items()))
    case = ((2, 20, 9, 9), 37, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w = _float_inputs(rng, case, np.float32, has_bias=False)
    expected = ref.conv2d(x, w, **_geom((1, 1), (1, 1), (1, 1)))
    y = conv.conv2d(_t(x, True), conv.prepare_weight(_t(w)), kernel_size=(3, 3),
                    padding=(1, 1), config=cfg)
    np.testing.assert_allclose(y.numpy(), expected, **F32_TOL)


def _epilogue_inputs(rng, kind, out_shape, dtype):
    """Steps and operands (appended after x, w, bias) of one epilogue kind."""
    b, c, ho, wo = out_shape
    if kind == "relu":
        return [{"op": "relu"}], []
    if kind == "residual":
        res = rng.standard_normal(out_shape).astype(dtype)
        return [{"op": "add", "operand": 3, "side": "left"}, {"op": "relu"}], [res]
    if kind == "channel_mul":
        s = rng.uniform(0.5, 2.0, (1, c, 1, 1)).astype(dtype)
        return [{"op": "mul", "operand": 3, "side": "right"}], [s]
    if kind == "channel_mul_3d_then_residual":
        s = rng.uniform(0.5, 2.0, (c, 1, 1)).astype(dtype)
        res = rng.standard_normal(out_shape).astype(dtype)
        return [{"op": "mul", "operand": 3, "side": "right"},
                {"op": "add", "operand": 4, "side": "right"}, {"op": "relu"}], [s, res]
    raise AssertionError(kind)


EPILOGUES = ["relu", "residual", "channel_mul", "channel_mul_3d_then_residual"]


@pytest.mark.parametrize("kind, dtype", [(k, np.float32) for k in EPILOGUES] + [
    ("residual", np.float16), ("channel_mul_3d_then_residual", np.float16)])
def test_conv2d_float_epilogue(kind, dtype):
    rng = _rng("float-epilogue", kind, dtype)
    case = ((2, 5, 9, 9), 24, (3, 3), (2, 2), (1, 1), (1, 1))
    inputs = _float_inputs(rng, case, dtype)
    steps, extra = _epilogue_inputs(rng, kind, (2, 24, 5, 5), dtype)
    epi, expected = _float_case(inputs + extra, steps, _geom(*case[3:]), True)
    # the residual goes in NCHW (not channels_last): the wrapper reads it through its strides
    operands = {3 + i: _t(a, channels_last=(i == 0)) for i, a in enumerate(extra)}
    y = conv.conv2d(_t(inputs[0], True), conv.prepare_weight(_t(inputs[1])), kernel_size=(3, 3),
                    bias=_t(inputs[2]), stride=(2, 2), padding=(1, 1), epilogue=epi,
                    operands=operands)
    _assert_cl(y, expected.shape)
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected.astype(np.float64),
                               **(F32_TOL if dtype == np.float32 else F16_TOL))


# --- int8 conv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case, zp", [(c, 13) for c in CASES] + [
    (CASES[1], -128), (CASES[3], -128), (CASES[5], 127)])
def test_qconv2d_accumulator_exact(case, zp):
    x_shape, cout, kernel, stride, padding, dilation = case
    rng = _rng("acc", case, zp)
    x, w = _int8(rng, x_shape), _int8(rng, (cout, x_shape[1], *kernel))
    expected = rq.qconv2d_acc(x, w, zp, stride, padding, dilation, 1)
    y = conv.qconv2d(_t(x, True), conv.prepare_weight(_t(w)), torch.ones(cout),
                     kernel_size=kernel, x_scale=0.5, x_zero_point=zp, stride=stride,
                     padding=padding, dilation=dilation, out_dtype="i32")
    _assert_cl(y, expected.shape)
    assert y.dtype == torch.int32
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("cfg", conv.CONFIGS[::3])
def test_qconv2d_accumulator_configs(cfg):
    rng = _rng("qconfig", sorted(cfg.items()))
    x, w = _int8(rng, (2, 40, 6, 6)), _int8(rng, (20, 40, 3, 3))
    expected = rq.qconv2d_acc(x, w, -3, (1, 1), (1, 1), (1, 1), 1)
    y = conv.qconv2d(_t(x, True), conv.prepare_weight(_t(w)), torch.ones(20), kernel_size=3,
                     x_scale=0.5, x_zero_point=-3, padding=1, out_dtype="i32", config=cfg)
    np.testing.assert_array_equal(y.numpy(), expected)


def test_qconv2d_accumulator_raw_weight_tensor():
    """A plain [Cout, kh*kw*Cin] tensor works too (its column sums are made per call)."""
    rng = _rng("raw")
    x, w = _int8(rng, (1, 5, 8, 8)), _int8(rng, (7, 5, 3, 3))
    expected = rq.qconv2d_acc(x, w, 9, (1, 1), (1, 1), (1, 1), 1)
    y = conv.qconv2d(_t(x), conv.prepare_weight(_t(w)).data, torch.ones(7), kernel_size=(3, 3),
                     x_scale=0.5, x_zero_point=9, padding=(1, 1), out_dtype="i32")
    np.testing.assert_array_equal(y.numpy(), expected)


Q_VARIANTS = [  # (case, has_bias, dynamic, out_dtype, out_zp)
    (CASES[0], True, False, "f32", 0),
    (CASES[1], True, False, "i8", -5),
    (CASES[3], False, False, "i8", 3),
    (CASES[4], True, True, "f32", 0),
    (CASES[5], True, True, "i8", 0),
    (CASES[6], False, False, "f16", 0),
]


def _q_inputs(rng, x_shape, cout, kernel_w, has_bias, dynamic):
    x, w = _int8(rng, x_shape), _int8(rng, (cout, *kernel_w), lo=-127)
    w_scale = rng.uniform(1e-3, 1e-2, cout).astype(np.float32)
    inputs = [x, w, w_scale]
    if has_bias:
        inputs.append(rng.standard_normal(cout).astype(np.float32))
    if dynamic:
        inputs.append(np.full((1, 1, 1, 1), 0.037, np.float32))
    return inputs


def _check_q(y, expected, out_dtype):
    _assert_cl(y, expected.shape)
    if out_dtype == "i8":
        assert y.dtype == torch.int8
        _check_i8(y, expected)
    elif out_dtype == "f16":
        assert y.dtype == torch.float16
        np.testing.assert_allclose(y.numpy().astype(np.float32), expected, **F16_TOL)
    else:
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, has_bias, dynamic, out_dtype, out_zp", Q_VARIANTS)
def test_qconv2d_outputs(case, has_bias, dynamic, out_dtype, out_zp):
    x_shape, cout, kernel, stride, padding, dilation = case
    rng = _rng("qout", case, has_bias, dynamic, out_dtype)
    inputs = _q_inputs(rng, x_shape, cout, (x_shape[1], *kernel), has_bias, dynamic)
    zp, out_scale = (0 if dynamic else -11), (0.02 if out_dtype == "i8" else None)
    ref_dtype = "f32" if out_dtype == "f16" else out_dtype
    epi, expected = _quant_case(inputs, (), _geom(stride, padding, dilation), has_bias, 0.021,
                                zp, ref_dtype, out_scale, out_zp if out_scale else 0, dynamic)
    x_scale = _t(inputs[-1]) if dynamic else 0.021
    y = conv.qconv2d(_t(inputs[0], True), conv.prepare_weight(_t(inputs[1])), _t(inputs[2]),
                     kernel_size=kernel, x_scale=x_scale, x_zero_point=zp,
                     bias=_t(inputs[3]) if has_bias else None, stride=stride, padding=padding,
                     dilation=dilation, epilogue=epi, out_dtype=out_dtype, out_scale=out_scale,
                     out_zero_point=out_zp)
    _check_q(y, expected, out_dtype)


@pytest.mark.parametrize("kind", EPILOGUES)
@pytest.mark.parametrize("out_dtype", ["f32", "i8"])
def test_qconv2d_epilogue(kind, out_dtype):
    rng = _rng("qepi", kind, out_dtype)
    case = CASES[1]
    x_shape, cout, kernel, stride, padding, dilation = case
    base = _q_inputs(rng, x_shape, cout, (x_shape[1], *kernel), True, False)
    steps, extra = _epilogue_inputs(rng, kind, (2, 24, 5, 5), np.float32)
    steps = [dict(s, operand=s["operand"] + 1) if "operand" in s else s for s in steps]
    out_scale = 0.03 if out_dtype == "i8" else None
    epi, expected = _quant_case(base + extra, steps, _geom(stride, padding, dilation), True,
                                0.021, 7, out_dtype, out_scale, 2 if out_scale else 0)
    operands = {4 + i: _t(a, channels_last=(i == 1)) for i, a in enumerate(extra)}
    y = conv.qconv2d(_t(base[0], True), conv.prepare_weight(_t(base[1])), _t(base[2]),
                     kernel_size=kernel, x_scale=0.021, x_zero_point=7, bias=_t(base[3]),
                     stride=stride, padding=padding, epilogue=epi, operands=operands,
                     out_dtype=out_dtype, out_scale=out_scale,
                     out_zero_point=2 if out_scale else 0)
    _check_q(y, expected, out_dtype)


def test_requantize_rounds_half_to_even():
    """y / out_scale lands exactly on .5 for every odd y: ties go to the even neighbour, and
    values beyond the int8 range saturate (exactly as numpy's rint and clip)."""
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    w = np.ones((1, 1, 1, 1), np.int8)
    ones = np.ones(1, np.float32)
    epi, expected = _quant_case([x, w, ones], (), _geom((1, 1), (0, 0), (1, 1)), False, 1.0, 0,
                                "i8", 2.0, 0)
    y = conv.qconv2d(_t(x), conv.prepare_weight(_t(w)), _t(ones), kernel_size=(1, 1),
                     x_scale=1.0, out_dtype="i8", out_scale=2.0, epilogue=epi)
    np.testing.assert_array_equal(y.numpy(), expected)
    assert y[0, 0, 0, 1].item() == -64 and y[0, 0, 8, 3].item() == 2  # -127/2, 3/2
    big = conv.qconv2d(_t(x), conv.prepare_weight(_t(w)), _t(ones), kernel_size=(1, 1),
                       x_scale=1.0, out_dtype="i8", out_scale=0.25, out_zero_point=-3)
    np.testing.assert_array_equal(big.numpy(), rq.requantize(x.astype(np.float32), 0.25, -3))


# --- grouped conv (groups > 1 in the implicit-GEMM kernel) --------------------------------------

# (x shape, Cout, kernel, stride, padding, dilation, groups): per-group channel counts that are
# not multiples of the blocks (Cin_g 8, 5, 1; Cout_g 4, 5, 1) and ones above them (Cin_g and
# Cout_g 40 > 32: two K steps and two column tiles per group, the second partial).
G_CASES = [
    ((1, 24, 6, 6), 12, (3, 3), (2, 2), (1, 1), (1, 1), 3),
    ((2, 8, 5, 5), 16, (1, 1), (1, 1), (0, 0), (1, 1), 2),
    ((1, 16, 7, 7), 20, (3, 3), (1, 1), (2, 2), (2, 2), 4),
    ((2, 40, 5, 6), 40, (3, 3), (1, 2), (1, 0), (1, 1), 8),
    ((1, 80, 4, 4), 80, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    ((1, 64, 7, 7), 64, (3, 3), (2, 2), (1, 1), (1, 1), 8),  # RegNet-like group conv
    ((1, 64, 1, 12), 64, (1, 7), (1, 1), (0, 3), (1, 1), 4),  # wav2vec2-like positional conv
    ((1, 6, 5, 5), 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise runs here too
]
G_IDS = ["g3-s2", "g2-1x1", "g4-dil2", "g8-asym", "g2-wide", "regnet", "wav2vec2", "dw"]


def _g_out_shape(case):
    x_shape, cout, kernel, stride, padding, dilation, _ = case
    ho, wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
              zip(x_shape[2:], kernel, stride, padding, dilation))
    return (x_shape[0], cout, ho, wo)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", G_CASES, ids=G_IDS)
def test_grouped_conv2d_float(case, dtype):
    """Bias and an epilogue that reads per-channel and residual operands by the global output
    channel (the kind rotates over the cases)."""
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("grouped", case, dtype)
    k = x_shape[1] // groups * kernel[0] * kernel[1]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((cout, x_shape[1] // groups, *kernel)) / np.sqrt(k)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    kind = EPILOGUES[G_CASES.index(case) % len(EPILOGUES)]
    steps, extra = _epilogue_inputs(rng, kind, _g_out_shape(case), dtype)
    epi, expected = _float_case([x, w, bias] + extra, steps,
                                _geom(stride, padding, dilation, groups), True)
    operands = {3 + i: _t(a, channels_last=True) for i, a in enumerate(extra)}
    y = conv.conv2d(_t(x, channels_last=x_shape[0] == 2), conv.prepare_weight(_t(w)),
                    kernel_size=kernel, bias=_t(bias), stride=stride, padding=padding,
                    dilation=dilation, groups=groups, epilogue=epi, operands=operands)
    _assert_cl(y, expected.shape)
    assert y.dtype == torch.from_numpy(x).dtype
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected.astype(np.float64),
                               **(F32_TOL if dtype == np.float32 else F16_TOL))


@pytest.mark.parametrize("case, cfg", [(G_CASES[4], conv.CONFIGS[-1]),
                                       (G_CASES[5], conv.CONFIGS[0]),
                                       (G_CASES[3], conv.CONFIGS[6]),
                                       (G_CASES[5], conv.grouped_configs(8)[-2]),
                                       (G_CASES[3], conv.grouped_configs(5)[-1])],
                         ids=["64x32", "128x128", "64x64", "narrow-128x16", "narrow-64x16"])
def test_grouped_conv2d_configs(case, cfg):
    """Tuning configs whose BLOCK_N is below Cout_g (tiles per group) and far above it."""
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("grouped-config", case, sorted(cfg.items()))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((cout, x_shape[1] // groups, *kernel)).astype(np.float32)
    expected = ref.conv2d(x, w, **_geom(stride, padding, dilation, groups))
    y = conv.conv2d(_t(x, True), conv.prepare_weight(_t(w)), kernel_size=kernel, stride=stride,
                    padding=padding, dilation=dilation, groups=groups, config=cfg)
    np.testing.assert_allclose(y.numpy(), expected, **F32_TOL)


@pytest.mark.parametrize("case, zp", [(c, 13) for c in G_CASES] + [
    (G_CASES[0], -128), (G_CASES[3], 127)], ids=[f"{i}-13" for i in G_IDS] + [
    "g3-s2--128", "g8-asym-127"])
def test_grouped_qconv2d_accumulator_exact(case, zp):
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("grouped-acc", case, zp)
    x, w = _int8(rng, x_shape), _int8(rng, (cout, x_shape[1] // groups, *kernel))
    expected = rq.qconv2d_acc(x, w, zp, stride, padding, dilation, groups)
    y = conv.qconv2d(_t(x, True), conv.prepare_weight(_t(w)), torch.ones(cout),
                     kernel_size=kernel, x_scale=0.5, x_zero_point=zp, stride=stride,
                     padding=padding, dilation=dilation, groups=groups, out_dtype="i32")
    _assert_cl(y, expected.shape)
    assert y.dtype == torch.int32
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("case, dynamic, out_dtype, kind", [
    (G_CASES[0], False, "i8", "residual"),
    (G_CASES[2], False, "f32", "channel_mul"),
    (G_CASES[5], False, "i8", "channel_mul_3d_then_residual"),
    (G_CASES[6], True, "f32", "relu"),
    (G_CASES[3], False, "i8", "relu"),
], ids=["g3-i8-residual", "g4-f32-mul", "regnet-i8-mul-residual", "wav2vec2-dynamic",
        "g8-i8-relu"])
def test_grouped_qconv2d(case, dynamic, out_dtype, kind):
    """int8 grouped convs with bias, per-channel w_scale, a nonzero x_zero_point with padding,
    and an epilogue: f32 outputs to 1e-5, i8 outputs within 1 LSB."""
    x_shape, cout, kernel, stride, padding, dilation, groups = case
    rng = _rng("grouped-q", case, dynamic, out_dtype, kind)
    base = _q_inputs(rng, x_shape, cout, (x_shape[1] // groups, *kernel), True, dynamic)
    steps, extra = _epilogue_inputs(rng, kind, _g_out_shape(case), np.float32)
    shift = 1 + dynamic
    steps = [dict(s, operand=s["operand"] + shift) if "operand" in s else s for s in steps]
    zp, out_scale = (0 if dynamic else -9), (0.05 if out_dtype == "i8" else None)
    epi, expected = _quant_case(base + extra, steps, _geom(stride, padding, dilation, groups),
                                True, 0.021, zp, out_dtype, out_scale, 4 if out_scale else 0,
                                dynamic)
    operands = {3 + shift + i: _t(a, True) for i, a in enumerate(extra)}
    y = conv.qconv2d(_t(base[0], True), conv.prepare_weight(_t(base[1])), _t(base[2]),
                     kernel_size=kernel, x_scale=_t(base[4]) if dynamic else 0.021,
                     x_zero_point=zp, bias=_t(base[3]), stride=stride, padding=padding,
                     dilation=dilation, groups=groups, epilogue=epi, operands=operands,
                     out_dtype=out_dtype, out_scale=out_scale,
                     out_zero_point=4 if out_scale else 0)
    _check_q(y, expected, out_dtype)


def test_grouped_source():
    """groups = 1 launches the kernel source of before groups existed (no group index). A
    grouped tile masks its columns to its own group: the interpreter runs the programs in
    order, so a tile writing into the next group's columns would be overwritten by that group's
    tile and pass the tests above; on a GPU it would race. So the mask is checked here."""
    finish = conv_common.make_finish(None, None, (1, 8, 4, 4), "f32", True, None, "f32")
    plain, grouped = conv._source(finish, False), conv._source(finish, False, True)
    assert "grp" not in plain and "NG" not in plain and "offs_n = pid_n * BLOCK_N" in plain
    assert "x_rows = x_rows + grp * CIN" in grouped
    assert grouped.index("mask_n = offs_ng < NG") > grouped.index("mask_n = offs_n < N")
    assert "mask_n = offs_ng < NG" in grouped.split("for it in")[0]


# --- depthwise ----------------------------------------------------------------------------------

# (x shape, kernel, stride, padding, dilation)
DW_CASES = [
    ((1, 16, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 33, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 5, 5, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((1, 24, 9, 9), (3, 3), (1, 2), (2, 1), (2, 1)),
]


@pytest.mark.parametrize("case", DW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_depthwise_float(case, dtype):
    x_shape, kernel, stride, padding, dilation = case
    c = x_shape[1]
    rng = _rng("dw", case, dtype)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((c, 1, *kernel)) / kernel[0]).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    res_shape = (x_shape[0], c, *ref.conv2d(x[:, :1], w[:1], **_geom(
        stride, padding, dilation)).shape[2:])
    res = rng.standard_normal(res_shape).astype(dtype)
    steps = [{"op": "add", "operand": 3, "side": "right"}, {"op": "relu"}]
    epi, expected = _float_case([x, w, bias, res], steps, _geom(stride, padding, dilation, c),
                                True)
    y = depthwise.depthwise_conv2d(
        _t(x, True), depthwise.prepare_depthwise_weight(_t(w)), kernel_size=kernel,
        bias=_t(bias), stride=stride, padding=padding, dilation=dilation, epilogue=epi,
        operands={3: _t(res, True)})
    _assert_cl(y, expected.shape)
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected.astype(np.float64),
                               **(F32_TOL if dtype == np.float32 else F16_TOL))


@pytest.mark.parametrize("cfg", depthwise.CONFIGS)
def test_depthwise_every_config(cfg):
    rng = _rng("dwconfig", sorted(cfg.items()))
    x = rng.standard_normal((2, 37, 9, 9)).astype(np.float32)
    w = rng.standard_normal((37, 1, 3, 3)).astype(np.float32)
    expected = ref.conv2d(x, w, **_geom((2, 2), (1, 1), (1, 1), 37))
    y = depthwise.depthwise_conv2d(_t(x, True), depthwise.prepare_depthwise_weight(_t(w)),
                                   kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), config=cfg)
    np.testing.assert_allclose(y.numpy(), expected, **F32_TOL)


@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_accumulator_exact(case):
    x_shape, kernel, stride, padding, dilation = case
    c = x_shape[1]
    rng = _rng("dwacc", case)
    x, w = _int8(rng, x_shape), _int8(rng, (c, 1, *kernel))
    expected = rq.qconv2d_acc(x, w, -17, stride, padding, dilation, c)
    y = depthwise.depthwise_qconv2d(
        _t(x, True), depthwise.prepare_depthwise_weight(_t(w)), torch.ones(c),
        kernel_size=kernel, x_scale=0.1, x_zero_point=-17, stride=stride, padding=padding,
        dilation=dilation, out_dtype="i32")
    _assert_cl(y, expected.shape)
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("case, dynamic, out_dtype, kind", [
    (DW_CASES[0], False, "i8", "residual"),
    (DW_CASES[1], True, "f32", "channel_mul"),
    (DW_CASES[1], False, "i8", "relu"),
    (DW_CASES[3], False, "f32", "channel_mul_3d_then_residual"),
])
def test_depthwise_qconv2d(case, dynamic, out_dtype, kind):
    x_shape, kernel, stride, padding, dilation = case
    c = x_shape[1]
    rng = _rng("dwq", case, dynamic, out_dtype, kind)
    base = _q_inputs(rng, x_shape, c, (1, *kernel), True, dynamic)
    out_shape = rq.qconv2d_acc(base[0][:, :1], base[1][:1], 0, stride, padding, dilation,
                               1).shape
    steps, extra = _epilogue_inputs(rng, kind, (x_shape[0], c, *out_shape[2:]), np.float32)
    shift = 1 + dynamic
    steps = [dict(s, operand=s["operand"] + shift) if "operand" in s else s for s in steps]
    zp, out_scale = (0 if dynamic else 5), (0.02 if out_dtype == "i8" else None)
    epi, expected = _quant_case(base + extra, steps, _geom(stride, padding, dilation, c), True,
                                0.021, zp, out_dtype, out_scale, -1 if out_scale else 0, dynamic)
    operands = {3 + shift + i: _t(a, True) for i, a in enumerate(extra)}
    y = depthwise.depthwise_qconv2d(
        _t(base[0]), depthwise.prepare_depthwise_weight(_t(base[1])), _t(base[2]),
        kernel_size=kernel, x_scale=_t(base[4]) if dynamic else 0.021, x_zero_point=zp,
        bias=_t(base[3]), stride=stride, padding=padding, dilation=dilation, epilogue=epi,
        operands=operands, out_dtype=out_dtype, out_scale=out_scale,
        out_zero_point=-1 if out_scale else 0)
    _check_q(y, expected, out_dtype)


def test_configs_fit_h100():
    """Dot tiles of at least 16 and, for the GEMM conv, shared memory within H100's 227 KB even
    with f32 operands; depthwise tiles are powers of two."""
    for cfg in conv.CONFIGS:
        assert min(cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]) >= 16
        smem = cfg["num_stages"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * 4
        assert smem <= 200 * 1024, cfg
    for cfg in depthwise.CONFIGS:
        assert all(cfg[k] & (cfg[k] - 1) == 0 for k in ("BLOCK_M", "BLOCK_N")), cfg


# --- supports() and errors ----------------------------------------------------------------------


def test_supports_says_why():
    one = ((3, 3), (1, 1), (1, 1), (1, 1))
    assert conv.supports(*one, 1, 16, 32) is None
    assert conv.supports(*one, 2, 16, 32) is None
    assert conv.supports(*one, 8, 64, 64) is None
    assert conv.supports(*one, 16, 16, 16) is None  # depthwise: runs, depthwise.py is faster
    assert "divide both Cin = 16 and Cout = 30" in conv.supports(*one, 4, 16, 30)
    assert "divide both Cin = 24 and Cout = 12" in conv.supports(*one, 5, 24, 12)
    assert "must be >= 1" in conv.supports(*one, 0, 16, 16)
    assert depthwise.supports(*one, 16, 16, 16) is None
    assert "groups = Cin = Cout" in depthwise.supports(*one, 16, 16, 32)
    assert "groups = Cin = Cout" in depthwise.supports(*one, 1, 16, 16)
    assert "padding" in conv.supports((3, 3), (1, 1), (-1, 0), (1, 1), 1, 3, 3)


def _x(shape=(1, 4, 6, 6), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("call, message", [
    (lambda: conv.conv2d(_x((4, 6, 6)), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3),
     r"input must be \[B, C, H, W\]"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 5, 3, 3))), kernel_size=3),
     r"kh\*kw\*Cin = 36"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=(1, 1)),
     "prepared for kernel"),
    (lambda: conv.conv2d(_x(dtype=torch.float64), _x((8, 36)), kernel_size=3),
     "must be f32 or f16"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3), torch.float16)),
                         kernel_size=3), "does not match"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3,
                         bias=_x((7,))), r"bias must be a float vector \[8\]"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 7, 7))), kernel_size=7),
     "has no output"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3,
                         out_dtype="i4"), "out_dtype must be one of"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3,
                         stride=(0, 1)), r"must be >= 1"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3,
                         stride=(1, 1, 1)), "stride must be an int or a pair"),
    (lambda: conv.qconv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3), torch.int8)),
                          torch.ones(8), kernel_size=3, x_scale=0.1), "must be int8"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=torch.ones(2)),
     "1-element f32"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=0.1,
                          out_dtype="i8"), "needs out_scale"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=0.1,
                          x_zero_point=200), r"\[-128, 127\]"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=0.1,
                          bias=torch.ones(8), out_dtype="i32"), "raw accumulator"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=0.1,
                          config=dict(conv.CONFIGS[0], BLOCK_K=16)), "BLOCK_K >= 32"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3, groups=2),
     r"kh\*kw\*Cin/groups \(groups = 2\) = 18"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((8, 4, 3, 3))), kernel_size=3, groups=3),
     r"groups = 3 must be >= 1 and divide the input's Cin = 4"),
    (lambda: conv.conv2d(_x(), conv.prepare_weight(_x((7, 2, 3, 3))), kernel_size=3, groups=2),
     "groups = 2 must divide Cout = 7"),
    (lambda: conv.qconv2d(_x(dtype=torch.int8), conv.prepare_weight(_x((8, 4, 3, 3),
                          torch.int8)), torch.ones(8), kernel_size=3, x_scale=0.1, groups=0),
     "groups = 0 must be >= 1"),
    (lambda: depthwise.depthwise_conv2d(_x(), depthwise.prepare_depthwise_weight(
        _x((5, 1, 3, 3))), kernel_size=3), r"\[kh\*kw = 9, C = 4\]"),
    (lambda: depthwise.prepare_depthwise_weight(_x((4, 2, 3, 3))), r"\[C, 1, kh, kw\]"),
    (lambda: depthwise.depthwise_qconv2d(_x(dtype=torch.int8), depthwise.prepare_depthwise_weight(
        _x((4, 1, 3, 3), torch.int8)), torch.ones(3), kernel_size=3, x_scale=0.1),
     r"w_scale must be a float vector \[4\]"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_epilogue_operand_errors():
    x, w = _x(), conv.prepare_weight(_x((8, 4, 3, 3)))
    res = np.zeros((1, 8, 4, 4), np.float32)
    steps = [{"op": "add", "operand": 2, "side": "right"}]
    epi, _ = _float_case([x.numpy(), np.zeros((8, 4, 3, 3), np.float32), res], steps,
                         _geom((1, 1), (0, 0), (1, 1)), False)
    with pytest.raises(ValueError, match="operands given for"):
        conv.conv2d(x, w, kernel_size=3, epilogue=epi)
    with pytest.raises(ValueError, match="does not broadcast"):
        conv.conv2d(x, w, kernel_size=3, epilogue=epi, operands={2: torch.zeros(1, 8, 5, 5)})
    with pytest.raises(ValueError, match="the epilogue expects f32"):
        conv.conv2d(x, w, kernel_size=3, epilogue=epi,
                    operands={2: torch.zeros(1, 8, 4, 4, dtype=torch.float16)})
    with pytest.raises(ValueError, match="epilogue starts from"):
        conv.conv2d(x, w, kernel_size=3, padding=1, epilogue=epi,
                    operands={2: torch.zeros(1, 8, 4, 4)})


def test_grouped_configs_fit_the_group():
    """Candidates for a grouped conv are no wider than its groups' output channels (>= 16) and
    include the narrow tiles; every one is a valid conv config."""
    for cout_g, width in ((8, 16), (16, 16), (24, 32), (64, 64)):
        cfgs = conv.grouped_configs(cout_g)
        assert all(c["BLOCK_N"] <= width for c in cfgs)
        assert any(c["BLOCK_N"] == 16 for c in cfgs)
        for c in cfgs:
            assert conv.config_for(c, 64, int8=True) == c
