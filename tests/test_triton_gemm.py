"""Generated Triton GEMMs (kernels/triton/gemm.py, int4_gemm.py) against the numpy reference.

Runs on Triton's CPU interpreter without a GPU (conftest.py), so shapes stay small; they are
chosen to leave partial tiles at every edge (M, N, K not multiples of the 32/16 blocks, batch 1)
and to take both the big-M path and the split-K small-M path. Tolerances, as the contract says:
int32 accumulators bit-exact (against reference_quant.qlinear_acc), qlinear float outputs to
float32 rounding, int8 outputs within 1 LSB, f32 GEMMs rtol 1e-4 / atol 1e-5, f16 to f16 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxforge import ops
from fxforge.ir import TensorType
from fxforge.kernels import reference as ref
from fxforge.kernels import reference_quant as rq
from fxforge.kernels.triton import gemm, int4_gemm
from fxforge.kernels.triton.codegen import Epilogue

SHAPES = [(1, 5, 7), (3, 33, 65), (16, 17, 32), (17, 40, 48), (64, 96, 80)]  # (M, N, K)
PATHS = [None, True, False]  # small_m: automatic (M <= 16 splits K), forced split-K, forced big
RELU = {"op": "relu"}
GELU = {"op": "gelu", "attrs": {"approximate": "none"}}
GELU_TANH = {"op": "gelu", "attrs": {"approximate": "tanh"}}
F16_TOL = dict(rtol=4e-3, atol=4e-3)  # f16 rounding of the output (2**-11) and of inputs


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(abs(hash(repr(key))) % 2**32)


def _int8(rng, shape, lo=-128):
    return rng.integers(lo, 128, size=shape).astype(np.int8)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _types(arrays) -> list[TensorType]:
    from fxforge import dtypes
    return [TensorType(a.shape, dtypes.from_numpy(a.dtype)) for a in arrays]


# --- float linear -------------------------------------------------------------------------------


def _fused_linear_case(rng, m, n, k, dtype, variant):
    """Inputs of a fused_linear node (x, w, bias?, operands) and its epilogue steps."""
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    inputs, steps = [x, w], []
    if variant in ("bias", "bias_relu", "residual", "channel_mul"):
        inputs.append(rng.standard_normal(n).astype(np.float32))
    if variant == "bias_relu":
        steps = [RELU]
    elif variant == "gelu":
        steps = [GELU]
    elif variant == "residual":  # relu, then add a full [M, N] operand of the output's dtype
        inputs.append(rng.standard_normal((m, n)).astype(np.float32))
        steps = [RELU, {"op": "add", "operand": len(inputs) - 1, "side": "right"}]
    elif variant == "channel_mul":  # a per-output-channel scale, on the left
        inputs.append(rng.uniform(0.5, 2.0, n).astype(np.float32))
        steps = [{"op": "mul", "operand": len(inputs) - 1, "side": "left"}, GELU_TANH]
    return inputs, steps


LINEAR_CASES = (  # the full shape table with a bias; every epilogue at small M and big M
    [(shape, "bias") for shape in SHAPES]
    + [(shape, v) for shape in [(1, 5, 7), (17, 40, 48)]
       for v in ("plain", "bias_relu", "gelu", "residual", "channel_mul")])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape, variant", LINEAR_CASES)
def test_linear_vs_reference(shape, dtype, variant):
    m, n, k = shape
    rng = _rng("linear", shape, dtype, variant)
    inputs, steps = _fused_linear_case(rng, m, n, k, dtype, variant)
    has_bias = len(inputs) > 2 and inputs[2].shape == (n,) and variant != "plain"
    attrs = ops.complete_attrs(ops.get("fused_linear"), {"has_bias": has_bias,
                                                           "epilogue": steps})
    types = _types(inputs)
    stages = ops.stage_types("fused_linear", types, attrs)
    epi = Epilogue(attrs["epilogue"], tuple(stages), tuple(types))
    want = ref.fused_linear(*inputs, **attrs)
    base = 3 if has_bias else 2
    got = gemm.linear(_t(inputs[0]), _t(inputs[1]), bias=_t(inputs[2]) if has_bias else None,
                      epilogue=epi, operands={i: _t(inputs[i]) for i in range(base, len(inputs))},
                      out_dtype=stages[-1].dtype)
    assert got.shape == (m, n) and got.dtype == torch.from_numpy(want).dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 and want.dtype == np.float32 \
        else F16_TOL
    np.testing.assert_allclose(got.float().numpy(), want.astype(np.float32), **tol)


@pytest.mark.parametrize("small_m", [True, False])
@pytest.mark.parametrize("shape", [(1, 5, 7), (17, 40, 48), (33, 20, 100)])
def test_linear_both_paths(shape, small_m):
    m, n, k = shape
    rng = _rng("linear-path", shape)
    x, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((n, k), np.float32)
    b = rng.standard_normal(n, np.float32)
    got = gemm.linear(_t(x), _t(w), bias=_t(b), small_m=small_m)
    np.testing.assert_allclose(got.numpy(), ref.linear(x, w, b), rtol=1e-4, atol=1e-5)


def test_linear_h100_configs_tile_shapes():
    """A big-tile config from CONFIGS and a small-M one run correctly. PRECISION tf32x3 is only
    accepted here: the interpreter computes it in plain f32 (its GPU accuracy is unchecked)."""
    rng = _rng("linear-config")
    x, w = rng.standard_normal((20, 70), np.float32), rng.standard_normal((40, 70), np.float32)
    want = ref.linear(x, w)
    big = dict(gemm.CONFIGS[-1])
    np.testing.assert_allclose(gemm.linear(_t(x), _t(w), config=big, small_m=False).numpy(),
                               want, rtol=1e-4, atol=1e-5)
    small = dict(gemm.SMALL_M_CONFIGS[0], BLOCK_K=32, SPLIT_K=2, PRECISION="tf32x3")
    np.testing.assert_allclose(gemm.linear(_t(x), _t(w), config=small).numpy(),  # picks split-K
                               want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gemm.linear(_t(x[:3]), _t(w), config=big).numpy(),  # big tiles
                               want[:3], rtol=1e-4, atol=1e-5)


# --- int8 qlinear -------------------------------------------------------------------------------


QACC_CASES = (  # every shape and zero point on the automatic path, then both paths forced
    [(shape, zp, None) for shape in SHAPES for zp in (0, -3, 77, -128)]
    + [((1, 5, 7), 77, False), ((3, 33, 65), -3, False), ((17, 40, 48), 77, True),
       ((40, 20, 70), 0, True)])


@pytest.mark.parametrize("shape, zp, small_m", QACC_CASES)
def test_qlinear_accumulator_bit_exact(shape, zp, small_m):
    m, n, k = shape
    rng = _rng("qacc", shape, zp)
    x, w = _int8(rng, (m, k)), _int8(rng, (n, k))
    acc = gemm.qlinear(_t(x), _t(w), torch.ones(n), x_scale=0.1, x_zero_point=zp,
                       out_dtype="i32", small_m=small_m)
    assert acc.dtype == torch.int32
    np.testing.assert_array_equal(acc.numpy(), rq.qlinear_acc(x, w, zp))


def test_qlinear_accumulator_extremes():
    """|acc| near the bound: x all -128 with zp 127 (x - zp = -255), w all -128, K = 300."""
    x, w = np.full((3, 300), -128, np.int8), np.full((18, 300), -128, np.int8)
    w[::2] = 127
    for small_m in (True, False):
        acc = gemm.qlinear(_t(x), _t(w), torch.ones(18), x_scale=1.0, x_zero_point=127,
                           out_dtype="i32", small_m=small_m)
        np.testing.assert_array_equal(acc.numpy(), rq.qlinear_acc(x, w, 127))


def _qlinear_case(rng, m, n, k, dynamic, has_bias, residual, out_dtype, epi_steps=(RELU,)):
    """Inputs, attributes and Epilogue of a qlinear node, as the quantize pass builds it."""
    x, w = _int8(rng, (m, k)), _int8(rng, (n, k), lo=-127)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    inputs = [x, w, w_scale]
    if has_bias:
        inputs.append(rng.standard_normal(n).astype(np.float32))
    x_scale = rng.uniform(0.01, 0.1, (m, 1)).astype(np.float32) if dynamic else 0.037
    if dynamic:
        inputs.append(x_scale)
    steps = list(epi_steps)
    if residual:
        inputs.append(rng.standard_normal((m, n)).astype(np.float32))
        steps.append({"op": "add", "operand": len(inputs) - 1, "side": "right"})
    attrs = ops.complete_attrs(ops.get("qlinear"), dict(
        has_bias=has_bias, dynamic=dynamic, x_scale=None if dynamic else x_scale,
        x_zero_point=0 if dynamic else -3, out_dtype="i8" if out_dtype == "i8" else "f32",
        out_scale=0.05 if out_dtype == "i8" else None,
        out_zero_point=-7 if out_dtype == "i8" else 0, epilogue=steps))
    types = _types(inputs)
    stages = ops.epilogue_types(TensorType((m, n), "f32"), types, attrs["epilogue"])
    epi = Epilogue(attrs["epilogue"], tuple(stages), tuple(types))
    kwargs = dict(x_scale=_t(x_scale) if dynamic else x_scale,
                  x_zero_point=attrs["x_zero_point"], bias=_t(inputs[3]) if has_bias else None,
                  epilogue=epi, operands={len(inputs) - 1: _t(inputs[-1])} if residual else None,
                  out_dtype=out_dtype, out_scale=attrs["out_scale"],
                  out_zero_point=attrs["out_zero_point"])
    return inputs, attrs, kwargs


Q_VARIANTS = [  # (dynamic, has_bias, residual, out_dtype)
    (False, False, False, "f32"), (False, True, True, "f32"), (False, True, False, "i8"),
    (True, False, False, "f32"), (True, True, True, "i8"), (False, True, True, "f16"),
]


@pytest.mark.parametrize("dynamic, has_bias, residual, out_dtype", Q_VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_qlinear_vs_reference(shape, dynamic, has_bias, residual, out_dtype):
    m, n, k = shape
    rng = _rng("qlinear", shape, dynamic, has_bias, residual, out_dtype)
    inputs, attrs, kwargs = _qlinear_case(rng, m, n, k, dynamic, has_bias, residual, out_dtype)
    want = rq.qlinear(*inputs, **attrs)
    got = gemm.qlinear(_t(inputs[0]), _t(inputs[1]), _t(inputs[2]), **kwargs)
    _check_qlinear(got, want, out_dtype)


def _check_qlinear(got: torch.Tensor, want: np.ndarray, out_dtype: str) -> None:
    if out_dtype == "i8":
        assert got.dtype == torch.int8
        diff = np.abs(got.numpy().astype(np.int32) - want.astype(np.int32))
        assert diff.max() <= 1 and np.mean(diff == 0) > 0.95
    elif out_dtype == "f16":
        assert got.dtype == torch.float16
        np.testing.assert_allclose(got.float().numpy(), want.astype(np.float16).astype(np.float32),
                                   rtol=1e-3, atol=1e-3 * np.abs(want).max())
    else:  # the same float32 operations in the same order: float32 rounding at most
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("epi_steps", [(GELU,), (GELU_TANH, RELU), ()])
@pytest.mark.parametrize("small_m", [True, False])
def test_qlinear_epilogues_both_paths(small_m, epi_steps):
    rng = _rng("qlinear-epi", small_m, epi_steps)
    inputs, attrs, kwargs = _qlinear_case(rng, 9, 35, 70, False, True, True, "f32", epi_steps)
    got = gemm.qlinear(_t(inputs[0]), _t(inputs[1]), _t(inputs[2]), small_m=small_m, **kwargs)
    want = rq.qlinear(*inputs, **attrs)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_qlinear_paths_agree_bit_exactly():
    """Split-K and big tiles give one int32 accumulator, so every output bit agrees."""
    rng = _rng("qlinear-agree")
    inputs, _, kwargs = _qlinear_case(rng, 12, 40, 96, True, True, True, "i8")
    args = [_t(a) for a in inputs[:3]]
    small = gemm.qlinear(*args, small_m=True, config=dict(gemm.DEFAULT_SMALL_M_CONFIG,
                                                          SPLIT_K=3), **kwargs)
    big = gemm.qlinear(*args, small_m=False, **kwargs)
    np.testing.assert_array_equal(small.numpy(), big.numpy())


def test_requantize_rounds_half_to_even():
    """y = acc * 0.5 with out_scale 1 puts many values on .5 ties: they must match np.rint."""
    rng = _rng("ties")
    x, w = _int8(rng, (5, 3), lo=-20), rng.integers(-3, 4, size=(37, 3)).astype(np.int8)
    x[:, :] = np.clip(x, -20, 20)
    attrs = ops.complete_attrs(ops.get("qlinear"), dict(
        has_bias=False, x_scale=0.5, x_zero_point=1, out_dtype="i8", out_scale=1.0,
        out_zero_point=3))
    want = rq.qlinear(x, w, np.ones(37, np.float32), **attrs)
    for small_m in (True, False):
        got = gemm.qlinear(_t(x), _t(w), torch.ones(37), x_scale=0.5, x_zero_point=1,
                           out_dtype="i8", out_scale=1.0, out_zero_point=3, small_m=small_m)
        np.testing.assert_array_equal(got.numpy(), want)
    acc = rq.qlinear_acc(x, w, 1)
    assert np.mean(acc % 2 != 0) > 0.2  # the test really has ties


def test_requantize_saturates():
    x, w = np.full((2, 64), 127, np.int8), np.full((20, 64), 127, np.int8)
    w[10:] = -127
    got = gemm.qlinear(_t(x), _t(w), torch.ones(20), x_scale=1.0, out_dtype="i8",
                       out_scale=1.0, out_zero_point=5)
    assert (got[:, :10] == 127).all() and (got[:, 10:] == -128).all()


# --- int4 weight-only ---------------------------------------------------------------------------


INT4_CASES = [  # (M, N, K, group_size, config BLOCK_K or None): gather and one-group paths
    (1, 5, 32, 16, None), (3, 33, 96, 32, None), (17, 40, 48, 16, None), (5, 9, 96, 6, None),
    (64, 96, 128, 128, 64), (2, 20, 256, 64, 64), (16, 24, 160, 32, 32),
]


@pytest.mark.parametrize("dtype, has_bias", [(np.float32, True), (np.float32, False),
                                             (np.float16, True)])
@pytest.mark.parametrize("case", INT4_CASES)
def test_linear_int4_vs_reference(case, dtype, has_bias):
    m, n, k, g, block_k = case
    rng = _rng("int4", case, dtype, has_bias)
    x = rng.standard_normal((m, k)).astype(dtype)
    packed = rng.integers(0, 256, size=(n, k // 2)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.2, (n, k // g)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    want = rq.linear_int4(x, packed, scales, bias, group_size=g, has_bias=has_bias)
    config = None if block_k is None else dict(int4_gemm.DEFAULT_CONFIG, BLOCK_K=block_k)
    got = int4_gemm.linear_int4(_t(x), _t(packed), _t(scales), group_size=g,
                                bias=None if bias is None else _t(bias), config=config)
    assert got.shape == (m, n) and got.dtype == torch.from_numpy(x).dtype
    if dtype == np.float32:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    else:  # f16 x and f16-rounded weights, f32 accumulation, f16 output
        np.testing.assert_allclose(got.float().numpy(), want, rtol=4e-3,
                                   atol=4e-3 * np.abs(want).max())


# --- errors -------------------------------------------------------------------------------------


def _f(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def _i8(*shape):
    return torch.zeros(shape, dtype=torch.int8)


ERRORS = [
    (lambda: gemm.linear(_f(2, 3, 4), _f(5, 4)), "2-D tensor"),
    (lambda: gemm.linear(_f(4, 2).t(), _f(5, 4)), "contiguous in its last dim"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 3)), "share dtype and K"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4, dtype=torch.float16)), "share dtype and K"),
    (lambda: gemm.linear(_i8(2, 4), _i8(5, 4)), "x must be f32 or f16"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), bias=_f(4)), r"bias must be a float32 .*\[5\]"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), out_dtype="i8"), "out_dtype must be f32 or f16"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), config={"BLOCK_M": 32}), "config lacks"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), small_m=False, config=dict(
        gemm.DEFAULT_CONFIG, BLOCK_N=8)), "BLOCK_N = 8 is below 16"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), operands={2: _f(5)}), r"reads operands \[\]"),
    (lambda: gemm.linear(_f(2, 4), _f(5, 4), config=dict(gemm.DEFAULT_SMALL_M_CONFIG,
                                                         PRECISION="tf32")), "ieee or tf32x3"),
    (lambda: gemm.qlinear(_f(2, 4), _i8(5, 4), _f(5), x_scale=1.0), "x must be i8"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=1.0,
                          bias=torch.zeros(5, device="meta")), "all tensors must share"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 3), _f(5), x_scale=1.0), "differ in K"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(4), x_scale=1.0), "w_scale must be"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=_f(2)), r"\[M, 1\]"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=_f(2, 1), x_zero_point=3),
     "x_zero_point 0"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=1.0, x_zero_point=200),
     r"\[-128, 127\]"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=1.0, out_dtype="i8"),
     "needs out_scale"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=1.0, out_dtype="u8"),
     "out_dtype must be"),
    (lambda: gemm.qlinear(_i8(2, 4), _i8(5, 4), _f(5), x_scale=1.0, small_m=True, config=dict(
        gemm.DEFAULT_SMALL_M_CONFIG, BLOCK_K=16)), "BLOCK_K = 16 is below 32"),
    (lambda: gemm.qlinear(_i8(1, 70000), _i8(1, 70000), _f(1), x_scale=1.0, x_zero_point=-128),
     "overflow the int32"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), torch.zeros(3, 4, dtype=torch.uint8), _f(3, 2),
                                   group_size=3), "even int"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), torch.zeros(3, 4, dtype=torch.uint8), _f(3, 1),
                                   group_size=6), "not a multiple of group_size"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), torch.zeros(3, 3, dtype=torch.uint8), _f(3, 2),
                                   group_size=4), r"packed must be u8 \[N, K/2\]"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), torch.zeros(3, 4, dtype=torch.uint8), _f(3, 4),
                                   group_size=4), "scales must be"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), _i8(3, 4), _f(3, 2), group_size=4),
     "packed must be u8"),
    (lambda: int4_gemm.linear_int4(_f(2, 8), torch.zeros(3, 4, dtype=torch.uint8), _f(3, 2),
                                   group_size=4, config=dict(int4_gemm.DEFAULT_CONFIG,
                                                             BLOCK_K=16)), "below 32"),
]


@pytest.mark.parametrize("call, match", ERRORS)
def test_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_epilogue_operand_checks():
    m, n, k = 3, 5, 4
    types = _types([np.zeros((m, k), np.float32), np.zeros((n, k), np.float32),
                    np.zeros((m, n), np.float32)])
    steps = ({"op": "add", "operand": 2, "side": "right"},)
    epi = Epilogue(steps, tuple(ops.epilogue_types(TensorType((m, n), "f32"), types, steps)),
                   tuple(types))
    with pytest.raises(ValueError, match="does not broadcast"):
        gemm.linear(_f(m, k), _f(n, k), epilogue=epi, operands={2: _f(4, n)})
    with pytest.raises(ValueError, match="must be a f32 tensor"):
        gemm.linear(_f(m, k), _f(n, k), epilogue=epi, operands={2: _f(m, n, dtype=torch.float16)})
    with pytest.raises(ValueError, match=r"reads operands \[2\]"):
        gemm.linear(_f(m, k), _f(n, k), epilogue=epi)


def test_empty_output():
    assert gemm.linear(_f(0, 4), _f(5, 4)).shape == (0, 5)
    assert gemm.qlinear(_i8(3, 4), _i8(0, 4), _f(0), x_scale=1.0).shape == (3, 0)


def test_numpy_integer_zero_point():
    x, w = _int8(_rng("npzp"), (2, 40)), _int8(_rng("npzp-w"), (3, 40))
    acc = gemm.qlinear(_t(x), _t(w), torch.ones(3), x_scale=1.0, x_zero_point=np.int8(-128),
                       out_dtype="i32")
    np.testing.assert_array_equal(acc.numpy(), rq.qlinear_acc(x, w, -128))
