"""Triton pooling kernels (kernels/triton/pool.py) against the numpy reference and torch.

Run on Triton's CPU interpreter without a GPU (tests/conftest.py). What is checked, and how:

- max_pool2d bit-exact vs `reference.max_pool2d` and torch.nn.functional.max_pool2d (CPU) in
  f32, f16, int8 and uint8; NaN and -inf inputs (NaN propagates as in numpy's max).
- avg_pool2d and adaptive_avg_pool2d vs the reference (float64, rounded once) and torch: f32
  rtol 1e-5 (atol 1e-6 for sums near zero), f16 rtol 2e-3 / atol 2e-3 (an f32 sum rounded to
  f16: about 1 ulp).
- geometry: kernel 3 stride 2 padding 1 (the ResNet stem), ceil_mode with an overhanging last
  window and with a window that would start in the padding (dropped), dilation 2,
  count_include_pad False, divisor_override, adaptive 1x1 (global, the window kernel),
  7x7 from 14x14, non-divisible 5x3 from 13x10 and upsampling 5x4 from 3x3 (both kernels).
- layouts: channels-last and contiguous inputs, a non-dense view; the output is channels-last
  exactly when the input is. Channel blocks with masked edges (C = 5, and 20 with BLOCK_N 16).
- `supports` reasons: op, symbolic shape, rank, dtype, geometry.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fxforge import symdims
from fxforge.ir import TensorType
from fxforge.kernels import reference as ref
from fxforge.kernels.triton import pool

CL = torch.channels_last
F32_TOL = dict(rtol=1e-5, atol=1e-6)
F16_TOL = dict(rtol=2e-3, atol=2e-3)
NP = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "u8": np.uint8}


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _array(shape, dtype: str, *key) -> np.ndarray:
    rng = _rng(shape, dtype, *key)
    if dtype == "i8":
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    if dtype == "u8":
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    return rng.standard_normal(shape).astype(NP[dtype])


def _t(a: np.ndarray, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.contiguous(memory_format=CL) if channels_last else t


def _check_format(y: torch.Tensor, channels_last: bool) -> None:
    if channels_last:
        assert y.is_contiguous(memory_format=CL) and y.stride(1) == 1
    else:
        assert y.is_contiguous()


def _close(y: torch.Tensor, want: np.ndarray, dtype: str) -> None:
    assert y.dtype == torch.from_numpy(np.zeros(0, NP[dtype])).dtype
    tol = F16_TOL if dtype == "f16" else F32_TOL
    np.testing.assert_allclose(y.float().numpy(), want.astype(NP[dtype]).astype(np.float64),
                               **tol)


# --- max_pool2d ---------------------------------------------------------------------------------

MAX_CASES = {  # name: (shape, kernel, stride, padding, dilation, ceil_mode)
    "stem": ((2, 5, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "ceil_overhang": ((1, 5, 8, 7), (3, 3), (2, 2), (0, 0), (1, 1), True),
    "ceil_dropped": ((1, 5, 5, 7), (2, 2), (2, 2), (1, 1), (1, 1), True),
    "dilation2": ((1, 5, 8, 9), (3, 2), (1, 2), (1, 1), (2, 2), False),
}


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(MAX_CASES))
def test_max_pool_f32_exact(case, channels_last):
    shape, k, s, p, d, ceil = MAX_CASES[case]
    a = _array(shape, "f32", case)
    x = _t(a, channels_last)
    y = pool.max_pool2d(x, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    want = ref.max_pool2d(a, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    np.testing.assert_array_equal(y.numpy(), want)
    torch.testing.assert_close(y, F.max_pool2d(x, k, s, p, d, ceil_mode=ceil), rtol=0, atol=0)
    _check_format(y, channels_last)


def test_ceil_mode_geometry_matches_torch():
    """ceil_overhang keeps a last window hanging past the image; ceil_dropped drops the window
    that would start in the padding (torch's rule), so its output is not ceil's naive size."""
    shape, k, s, p, d, _ = MAX_CASES["ceil_overhang"]
    assert pool.max_pool2d(torch.zeros(shape), kernel=k, stride=s, padding=p, dilation=d,
                           ceil_mode=True).shape[2:] == (4, 3)
    shape, k, s, p, d, _ = MAX_CASES["ceil_dropped"]
    y = pool.max_pool2d(torch.zeros(shape), kernel=k, stride=s, padding=p, dilation=d,
                        ceil_mode=True)
    assert y.shape == F.max_pool2d(torch.zeros(shape), k, s, p, d, ceil_mode=True).shape
    assert y.shape[2] == 3  # naive ceil((5 + 2 - 2) / 2) + 1 = 4


@pytest.mark.parametrize("dtype", ["f16", "i8", "u8"])
@pytest.mark.parametrize("case", ["stem", "ceil_overhang"])
def test_max_pool_other_dtypes_exact(dtype, case):
    shape, k, s, p, d, ceil = MAX_CASES[case]
    a = _array(shape, dtype, case)
    x = _t(a, True)
    y = pool.max_pool2d(x, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    want = ref.max_pool2d(a, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y.numpy(), want)
    torch.testing.assert_close(y, F.max_pool2d(x, k, s, p, d, ceil_mode=ceil), rtol=0, atol=0)
    _check_format(y, True)


def test_max_pool_int_padding_is_dtype_min():
    """All-minimum windows next to the padding stay the minimum (the pad never wins)."""
    for dtype, low in (("i8", -128), ("u8", 0)):
        a = np.full((1, 3, 4, 4), low, NP[dtype])
        y = pool.max_pool2d(_t(a, True), kernel=3, stride=2, padding=1, dilation=1,
                            ceil_mode=True)
        assert (y.numpy() == low).all()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_max_pool_nan_and_inf(dtype):
    a = _array((1, 5, 7, 7), dtype, "nan")
    a[0, 1, 2, 3] = np.nan
    a[0, 2, 0, 0] = np.nan
    a[0, 3, :, :] = -np.inf
    a[0, 4, 6, 6] = np.inf
    x = _t(a, True)
    y = pool.max_pool2d(x, kernel=3, stride=2, padding=1, dilation=1, ceil_mode=True)
    want = ref.max_pool2d(a, kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                          ceil_mode=True)
    assert np.isnan(want).sum() == 3  # the NaN at (2, 3) is in two windows, (0, 0) in one
    np.testing.assert_array_equal(y.numpy(), want)  # NaN where the reference has NaN
    torch.testing.assert_close(y, F.max_pool2d(x, 3, 2, 1, ceil_mode=True), rtol=0, atol=0,
                               equal_nan=True)


def test_channel_blocks_and_non_dense_input():
    a = _array((2, 20, 9, 10), "f32", "blocks")
    x = _t(a, True)
    y = pool.max_pool2d(x, kernel=3, stride=2, padding=1, dilation=1, ceil_mode=False,
                        config={"BLOCK_M": 16, "BLOCK_N": 16})
    want = ref.max_pool2d(a, kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                          ceil_mode=False)
    np.testing.assert_array_equal(y.numpy(), want)
    view = x[:, ::2, :, 1:]  # neither layout: copied to channels-last
    y = pool.avg_pool2d(view, kernel=2, stride=2, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None)
    torch.testing.assert_close(y, F.avg_pool2d(view, 2, 2), **F32_TOL)
    _check_format(y, True)


# --- avg_pool2d ---------------------------------------------------------------------------------

AVG_CASES = {  # name: (shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    "stem": ((2, 5, 9, 8), (3, 3), (2, 2), (1, 1), False, True, None),
    "exclude_pad": ((1, 5, 9, 8), (3, 3), (2, 2), (1, 1), False, False, None),
    "ceil_include": ((1, 5, 8, 7), (3, 3), (2, 2), (1, 1), True, True, None),
    "ceil_exclude": ((1, 5, 8, 7), (3, 2), (2, 2), (1, 1), True, False, None),
    "divisor": ((1, 5, 7, 8), (3, 3), (2, 2), (1, 1), True, True, 5),
    "rect": ((1, 3, 6, 9), (2, 4), (1, 3), (1, 2), False, True, None),
}


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(AVG_CASES))
def test_avg_pool_f32(case, channels_last):
    shape, k, s, p, ceil, include, div = AVG_CASES[case]
    a = _array(shape, "f32", case)
    x = _t(a, channels_last)
    y = pool.avg_pool2d(x, kernel=k, stride=s, padding=p, ceil_mode=ceil,
                        count_include_pad=include, divisor_override=div)
    want = ref.avg_pool2d(a, kernel=k, stride=s, padding=p, ceil_mode=ceil,
                          count_include_pad=include, divisor_override=div)
    _close(y, want, "f32")
    torch.testing.assert_close(y, F.avg_pool2d(x, k, s, p, ceil_mode=ceil,
                                               count_include_pad=include,
                                               divisor_override=div), **F32_TOL)
    _check_format(y, channels_last)


@pytest.mark.parametrize("case", ["stem", "ceil_exclude", "divisor"])
def test_avg_pool_f16(case):
    shape, k, s, p, ceil, include, div = AVG_CASES[case]
    a = _array(shape, "f16", case)
    y = pool.avg_pool2d(_t(a, True), kernel=k, stride=s, padding=p, ceil_mode=ceil,
                        count_include_pad=include, divisor_override=div)
    _close(y, ref.avg_pool2d(a, kernel=k, stride=s, padding=p, ceil_mode=ceil,
                             count_include_pad=include, divisor_override=div), "f16")
    _check_format(y, True)


# --- adaptive_avg_pool2d ------------------------------------------------------------------------

ADAPTIVE_CASES = {  # name: (shape, output_size)
    "global": ((2, 5, 12, 11), (1, 1)),
    "7x7_from_14x14": ((1, 3, 14, 14), (7, 7)),
    "5x3_from_13x10": ((1, 5, 13, 10), (5, 3)),
    "5x4_from_3x3": ((1, 3, 3, 3), (5, 4)),
}


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(ADAPTIVE_CASES))
def test_adaptive_avg_pool_f32(case, channels_last):
    shape, out = ADAPTIVE_CASES[case]
    a = _array(shape, "f32", case)
    x = _t(a, channels_last)
    y = pool.adaptive_avg_pool2d(x, output_size=out)
    want = ref.adaptive_avg_pool2d(a, output_size=out)
    _close(y, want, "f32")
    torch.testing.assert_close(y, F.adaptive_avg_pool2d(x, out), **F32_TOL)
    _check_format(y, channels_last)


@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("case", ["5x3_from_13x10", "global"])
def test_adaptive_both_kernels(case, window):
    """The pixel kernel (loops to the largest bin) and the window kernel (loops over the bin
    in BLOCK_K chunks: BLOCK_K 16 < the 132 taps of the global bin) agree with the reference."""
    shape, out = ADAPTIVE_CASES[case]
    a = _array(shape, "f32", case)
    y = pool.adaptive_avg_pool2d(_t(a, True), output_size=out,
                                 config={"WINDOW": window, "BLOCK_K": 16, "BLOCK_N": 4})
    _close(y, ref.adaptive_avg_pool2d(a, output_size=out), "f32")


def test_global_pool_uses_the_window_kernel():
    from fxforge.kernels.triton import jit
    pool.adaptive_avg_pool2d(torch.zeros((1, 2, 12, 11)).contiguous(memory_format=CL),
                             output_size=(1, 1))
    assert any("def adaptive_window_kernel" in s for s in jit.generated_sources())


@pytest.mark.parametrize("case", ["global", "5x3_from_13x10"])
def test_adaptive_avg_pool_f16(case):
    shape, out = ADAPTIVE_CASES[case]
    a = _array(shape, "f16", case)
    y = pool.adaptive_avg_pool2d(_t(a, True), output_size=out)
    _close(y, ref.adaptive_avg_pool2d(a, output_size=out), "f16")
    _check_format(y, True)


def test_adaptive_empty_output():
    y = pool.adaptive_avg_pool2d(torch.zeros((1, 2, 4, 4)), output_size=(0, 3))
    assert y.shape == (1, 2, 0, 3)


# --- supports and errors ------------------------------------------------------------------------

MAX_ATTRS = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False)
AVG_ATTRS = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
                 count_include_pad=False, divisor_override=None)


def test_supports():
    t = TensorType((2, 8, 16, 16), "f32")
    assert pool.supports("max_pool2d", t, MAX_ATTRS) is None
    assert pool.supports("avg_pool2d", t, AVG_ATTRS) is None
    assert pool.supports("adaptive_avg_pool2d", t, {"output_size": (1, 1)}) is None
    for dtype in ("f16", "i8", "u8"):
        assert pool.supports("max_pool2d", TensorType((2, 8, 16, 16), dtype), MAX_ATTRS) is None
    reasons = {
        "op": pool.supports("conv2d", t, {}),
        "symbolic": pool.supports("max_pool2d", TensorType((symdims.sym("B"), 8, 16, 16),
                                                           "f32"), MAX_ATTRS),
        "rank": pool.supports("adaptive_avg_pool2d", TensorType((8, 16, 16), "f32"),
                              {"output_size": (1, 1)}),
        "avg int8": pool.supports("avg_pool2d", TensorType((2, 8, 16, 16), "i8"), AVG_ATTRS),
        "adaptive u8": pool.supports("adaptive_avg_pool2d", TensorType((1, 8, 4, 4), "u8"),
                                     {"output_size": (1, 1)}),
        "max f64": pool.supports("max_pool2d", TensorType((2, 8, 16, 16), "f64"), MAX_ATTRS),
        "padding": pool.supports("max_pool2d", t, dict(MAX_ATTRS, padding=(2, 2))),
        "too big": pool.supports("max_pool2d", TensorType((1, 8, 2, 2), "f32"),
                                 dict(MAX_ATTRS, kernel=(5, 5), padding=(0, 0))),
    }
    for name, why in reasons.items():
        assert isinstance(why, str) and why, name
    assert "static" in reasons["symbolic"] and "rank 3" in reasons["rank"]
    assert "i8" in reasons["avg int8"] and "padding" in reasons["padding"]


def test_errors():
    with pytest.raises(ValueError, match="4-D"):
        pool.max_pool2d(torch.zeros(2, 3, 4), kernel=2, stride=2)
    with pytest.raises(ValueError, match="not torch.int8"):
        pool.avg_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int8), kernel=2, stride=2)
    with pytest.raises(ValueError, match="divisor_override"):
        pool.avg_pool2d(torch.zeros(1, 2, 4, 4), kernel=2, stride=2, divisor_override=0)
    with pytest.raises(ValueError, match="half the kernel"):
        pool.max_pool2d(torch.zeros(1, 2, 4, 4), kernel=2, stride=2, padding=2)
    with pytest.raises(ValueError, match="power of two"):
        pool.max_pool2d(torch.zeros(1, 2, 4, 4), kernel=2, stride=2, config={"BLOCK_M": 24})
