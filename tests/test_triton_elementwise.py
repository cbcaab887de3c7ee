"""Generated Triton kernels on the interpreter vs the numpy reference: fused elementwise chains
(broadcasting, strided inputs, mixed dtypes, ranks 0-5), softmax / log_softmax, layer_norm,
sum / mean / amax, and quantize / dequantize / dynamic_quantize.

Tolerances: f32 rtol 1e-4 / atol 1e-5; f16 results rtol 2e-3 / atol 1e-3 (a chain rounds each
step to f16 as the reference does, but from an f32 instead of an f64 value, so a step can land
one f16 ulp away and the next steps carry it); int and bool results exact. The quantization
kernels are compared exactly (no LSB allowance): they do the reference's float32 operations in
its order, with an IEEE-rounded division and an exact round-half-to-even.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxforge import dtypes, ops
from fxforge.ir import TensorType
from fxforge.kernels import reference as ref
from fxforge.kernels import reference_quant as rq
from fxforge.kernels.triton import elementwise, quant, reduce

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _array(shape, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    if dtypes.is_float(dtype):
        return np.asarray(rng.standard_normal(shape) * 2).astype(dtypes.to_numpy(dtype))
    return np.asarray(rng.integers(-50, 50, shape)).astype(dtypes.to_numpy(dtype))


def _close(got: torch.Tensor, want: np.ndarray, dtype: str) -> None:
    assert tuple(got.shape) == want.shape
    got = got.numpy()
    if not dtypes.is_float(dtype):
        np.testing.assert_array_equal(got, want)
    elif dtype == "f16":
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3,
                                   atol=1e-3)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _chain(arrays: list[np.ndarray], steps, tensors: list[torch.Tensor] | None = None) -> None:
    in_types = [TensorType(a.shape, dtypes.from_numpy(a.dtype)) for a in arrays]
    stages = ops.stage_types("fused_elementwise", in_types, {"steps": steps})
    assert elementwise.supports(in_types, steps, stages) is None
    tensors = tensors or [torch.from_numpy(a.copy()) for a in arrays]
    got = elementwise.fused_elementwise(tensors, in_types, steps, stages)
    assert got.dtype == dtypes.to_torch(stages[-1].dtype)
    _close(got, ref.fused_elementwise(*arrays, steps=steps), stages[-1].dtype)


# --- fused elementwise chains -------------------------------------------------------------------

AFFINE_GELU = ({"op": "mul", "args": (0, 1)}, {"op": "add", "args": (3, 2)},
               {"op": "gelu", "args": (4,), "attrs": {"approximate": "none"}})


@pytest.mark.parametrize("x,scale,shift", [
    ((2, 3, 5, 7), (1, 3, 1, 1), ()),          # per-channel scale, 0-d scalar shift
    ((2, 3, 5, 7), (3, 1, 1), (7,)),            # trailing row operand, rank-3 channel operand
    ((4, 9), (9,), (4, 1)),                     # row and column broadcasts
    ((17,), (), ()),                            # rank 1, scalars only
    ((2, 1, 3, 1, 5), (1, 4, 1, 1, 1), (5,)),   # rank 5, the output grows a dim
    ((), (), ()),                               # 0-d
    ((1, 1, 1), (1,), ()),                      # size-1 dims only
    ((3, 0, 2), (2,), ()),                      # empty
])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_broadcast_chain(x, scale, shift, dtype):
    _chain([_array(x, dtype, 1), _array(scale, dtype, 2), _array(shift, "f32", 3)], AFFINE_GELU)


def test_large_odd_size_uses_many_blocks():
    x, r = _array((3, 1031), "f32", 4), _array((1031,), "f32", 5)
    steps = ({"op": "sub", "args": (0, 1)}, {"op": "tanh", "args": (2,)},
             {"op": "mul", "args": (3, 0)})
    _chain([x, r], steps)


def test_strided_inputs_are_read_in_place():
    base = torch.from_numpy(_array((6, 5, 4), "f32", 6))
    views = [base.permute(2, 0, 1), base[::2, 1:4].permute(2, 0, 1)[:, :, :3]]
    views = [views[0][:, :3, :3], views[1]]
    arrays = [v.numpy().copy() for v in views]
    assert not views[0].is_contiguous() and not views[1].is_contiguous()
    steps = ({"op": "maximum", "args": (0, 1)}, {"op": "silu", "args": (2,)})
    _chain(arrays, steps, tensors=views)


def test_comparisons_and_where_mixed_dtypes():
    x, y = _array((4, 6), "f16", 7), _array((6,), "f32", 8)
    idx = _array((4, 1), "i64", 9)
    steps = ({"op": "gt", "args": (0, 1)},                    # f16 vs f32 -> bool
             {"op": "where", "args": (3, 0, 2)},              # f16 / i64 -> f16
             {"op": "lt", "args": (2, 4)},                    # i64 vs f16
             {"op": "cast", "args": (5,), "attrs": {"dtype": "f32"}},
             {"op": "mul", "args": (6, 4)})
    _chain([x, y, idx], steps)


def test_integer_and_bool_chain_is_exact():
    a, b, m = _array((5, 7), "i32", 10), _array((7,), "i64", 11), _array((5, 1), "bool", 12)
    steps = ({"op": "add", "args": (0, 1)}, {"op": "mul", "args": (3, 2)},
             {"op": "clamp", "args": (4,), "attrs": {"min": -20.0, "max": 30.0}},
             {"op": "ge", "args": (5, 0)}, {"op": "add", "args": (6, 2)})
    _chain([a, b, m], steps)


def test_f16_chain_with_exp_and_div():
    x = _array((3, 5, 11), "f16", 13)
    steps = ({"op": "exp", "args": (0,)}, {"op": "add", "args": (1, 0)},
             {"op": "div", "args": (2, 1)}, {"op": "sigmoid", "args": (3,)})
    _chain([x], steps)


def test_single_op_and_errors():
    t = TensorType((3, 4), "f32")
    x = torch.randn(3, 4)
    got = elementwise.elementwise("relu", {}, [x], [t], t)
    np.testing.assert_array_equal(got.numpy(), np.maximum(x.numpy(), 0))
    with pytest.raises(ValueError, match="type says"):
        elementwise.elementwise("relu", {}, [x.half()], [t], t)
    big = TensorType((1,) * 7, "f32")
    assert "rank" in elementwise.supports([big], ({"op": "relu", "args": (0,)},), [big])


# --- softmax / log_softmax ----------------------------------------------------------------------


@pytest.mark.parametrize("shape,dim", [((5, 7), -1), ((6, 4, 3), 1), ((9, 2), 0), ((4, 1), 1),
                                       ((3, 1000), -1), ((2, 1500), 1), ((7,), 0)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax(shape, dim, log):
    x = _array(shape, "f32", 14) * 4
    flat = x.reshape(-1)
    flat[0] = -np.inf  # a -inf in the first row (and first chunk)
    fn, want = (reduce.log_softmax, ref.log_softmax) if log else (reduce.softmax, ref.softmax)
    _close(fn(torch.from_numpy(x), dim), want(x, dim=dim).astype(np.float32), "f32")


@pytest.mark.parametrize("log", [False, True])
def test_softmax_looped_rows_and_all_inf_rows(log):
    """Rows longer than one tile take the two-pass loop; a leading chunk of -inf must not turn
    the running sum into NaN; an all -inf row is NaN, as in the reference."""
    x = _array((4, 300), "f32", 15) * 3
    x[1, :200] = -np.inf
    x[2, :] = -np.inf
    fn, want = (reduce.log_softmax, ref.log_softmax) if log else (reduce.softmax, ref.softmax)
    got = fn(torch.from_numpy(x), -1, {"BLOCK_N": 64, "BLOCK_M": 2})
    _close(got, want(x, dim=-1).astype(np.float32), "f32")
    assert np.isnan(got[2].numpy()).all() and np.isfinite(got[1, 200:].numpy()).all()


def test_softmax_f16():
    x = _array((6, 33), "f16", 16)
    _close(reduce.softmax(torch.from_numpy(x), 1), ref.softmax(x, dim=1).astype(np.float16),
           "f16")


# --- layer_norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,norm,dtype,cfg", [
    ((4, 7), (7,), "f32", None), ((2, 3, 40), (40,), "f32", None),
    ((3, 5, 6), (5, 6), "f32", {"BLOCK_N": 8}), ((5, 33), (33,), "f16", None),
    ((1, 1), (1,), "f32", None), ((2, 100), (100,), "f16", {"BLOCK_N": 32}),
])
def test_layer_norm(shape, norm, dtype, cfg):
    x = _array(shape, dtype, 17) + 3
    w, b = _array(norm, "f32", 18), _array(norm, "f32", 19)
    got = reduce.layer_norm(*(torch.from_numpy(a) for a in (x, w, b)), 1e-5, cfg)
    assert got.dtype == torch.from_numpy(x).dtype
    want = ref.layer_norm(x, w, b, eps=1e-5).astype(x.dtype)
    _close(got, want, dtype)


# --- sum / mean / amax --------------------------------------------------------------------------


@pytest.mark.parametrize("shape,dims", [((4, 7), (1,)), ((4, 7), (0,)), ((3, 5, 6), (0, 2)),
                                        ((3, 5, 6), (1, 2)), ((2, 3, 4, 5), (-1,)),
                                        ((3, 5, 6), ()), ((), (0,)), ((3, 700), (1,)),
                                        ((2, 0, 3), (2,))])
@pytest.mark.parametrize("op", ["sum", "mean", "amax"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduce_float(shape, dims, op, keepdim):
    x = _array(shape, "f32", 20)
    got = reduce.reduce(torch.from_numpy(x), op, dims, keepdim)
    want = getattr(ref, op)(x, dims=dims, keepdim=keepdim).astype(np.float32)
    _close(got, want, "f32")


@pytest.mark.parametrize("dtype", ["i32", "i64", "bool", "f16"])
@pytest.mark.parametrize("op", ["sum", "amax"])
def test_reduce_other_dtypes(dtype, op):
    x = _array((3, 5, 9), dtype, 21)
    for dims in ((2,), (0, 1)):
        got = reduce.reduce(torch.from_numpy(x), op, dims, False)
        want = getattr(ref, op)(x, dims=dims, keepdim=False)
        out = "i64" if op == "sum" and not dtypes.is_float(dtype) else dtype
        _close(got, want.astype(dtypes.to_numpy(out)), out)


def test_amax_propagates_nan_and_refuses_empty():
    x = _array((3, 4), "f32", 22)
    x[1, 2] = np.nan
    for dims in ((1,), (0,)):
        got = reduce.reduce(torch.from_numpy(x), "amax", dims).numpy()
        np.testing.assert_array_equal(got, ref.amax(x, dims=dims, keepdim=False))
    assert reduce.supports("amax", [TensorType((2, 0), "f32")], {"dims": (1,)})
    assert reduce.supports("mean", [TensorType((2, 3), "i32")], {"dims": (1,)})
    assert reduce.supports("pow", [TensorType((2, 3), "f32")], {}) is not None


# --- quantize / dequantize / dynamic_quantize ---------------------------------------------------

TIES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 127.5, -128.5, 3.5, 1e30,
                 -1e30, 0.0, -0.0, 300.0], dtype=np.float32)


@pytest.mark.parametrize("scale,zero_point", [(1.0, 0), (0.5, 3), (0.25, -128), (0.037, 127),
                                              (3.0, -5)])
def test_quantize_dequantize_exact(scale, zero_point):
    x = np.concatenate([TIES * np.float32(scale), _array((3 * 67,), "f32", 23) * 2])
    x = x.reshape(-1, 7)
    q = quant.quantize(torch.from_numpy(x), scale, zero_point)
    want = rq.quantize(x, scale=scale, zero_point=zero_point)
    np.testing.assert_array_equal(q.numpy(), want)
    y = quant.dequantize(q, scale, zero_point)
    np.testing.assert_array_equal(y.numpy(), rq.dequantize(want, scale=scale,
                                                           zero_point=zero_point))


def test_quantize_ties_go_to_even():
    q = quant.quantize(torch.from_numpy(TIES[:10]), 1.0, 0).numpy()
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 126, -128, 127, -128]


@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 7), (1,), (4, 1), (3, 0), (2, 250)])
@pytest.mark.parametrize("mode", ["row", "tensor"])
@pytest.mark.parametrize("cfg", [None, {"BLOCK_N": 16, "BLOCK": 16, "PARTIALS": 4}])
def test_dynamic_quantize_exact(shape, mode, cfg):
    x = _array(shape, "f32", 24) * 3
    if x.size:
        x.reshape(-1)[: min(x.size, 3)] = [0.5, -2.5, 127.0][: min(x.size, 3)]
    if len(shape) == 2 and shape[0] > 2:
        x[1] = 0.0  # an all-zero row: scale 1
    q, s = quant.dynamic_quantize(torch.from_numpy(x), mode, cfg)
    want_q, want_s = rq.dynamic_quantize(x, mode=mode)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    np.testing.assert_array_equal(s.numpy(), want_s)
    np.testing.assert_array_equal(q.numpy(), want_q)


def test_dynamic_quantize_nan_row_gets_scale_one_and_errors():
    x = _array((3, 9), "f32", 25)
    x[1, 4] = np.nan
    _, s = quant.dynamic_quantize(torch.from_numpy(x), "row")
    np.testing.assert_array_equal(s.numpy(), rq.dynamic_quantize(x, mode="row")[1])
    with pytest.raises(ValueError):
        quant.quantize(torch.zeros(3, dtype=torch.float16), 1.0, 0)
    with pytest.raises(ValueError):
        quant.dynamic_quantize(torch.zeros(()), "row")
    assert quant.supports("quantize", "f16", {}) is not None
    assert quant.supports("dynamic_quantize", "f32", {"mode": "row"}) is None
