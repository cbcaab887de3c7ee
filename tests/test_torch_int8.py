"""The cpu-int8 kernels (kernels/torch_int8.py) against the numpy reference of the quantized ops
(kernels/reference_quant.py, the executable form of docs/quantized-ir.md).

Each qlinear / qconv2d case runs three ways: `generic` (the IMPLS entry: `_int_mm`, im2col),
`prepared` (PREPARE without oneDNN: the GEMM weight laid out once) and `onednn` (PREPARE with
oneDNN's int8 kernels and fused post-ops; skipped where this torch has none). Tolerances:

- int32 accumulators: bit-exact (`qlinear_acc`, `qconv2d_acc`, the float64 fallback of
  `int_mm`, and oneDNN's kernels run with unit scales, whose float32 output is the accumulator
  itself while |acc| < 2**24).
- quantize, dequantize, dynamic_quantize: bit-exact (same float32 division, half to even).
- int8 outputs of qlinear / qconv2d: within 1 LSB (oneDNN requantizes by multiplying with
  1 / out_scale); the generic paths are checked to be exact.
- float outputs: |got - ref| <= 1e-5 |ref| + 1e-6 max(1, max |ref|), i.e. rtol 1e-5 and atol 1e-6
  relative to the output's largest magnitude: oneDNN may round acc * x_scale * w_scale in another
  order, a few float32 ulps of terms that a bias or a residual can then cancel. The generic
  paths are checked to be exact where the epilogue has no gelu (torch's and numpy's erf differ
  in the last bits).
- linear_int4: rtol 1e-4 / atol 1e-5 (the contract's tolerance; the reference rounds a float64
  product once).
- int8 max_pool2d (the torch backend routes int8 to kernels/torch_int8.py): exact.

Weights span the range oneDNN's kernels sum exactly on this CPU (`int8_scheme`): all of int8
where they sum in int32 (VNNI, AMX), [-63, 63] where they add pairs of products in 16 bits (AVX2
without VNNI), so the `onednn` runs exercise the fast kernels on every x86 CPU; weights outside
that range take the generic path (tests/test_int8_exact.py).

Also checked: oneDNN's matmul is used only where it has fast kernels; channels-last outputs
read right through reshape / flatten / permute; a TorchProgram with prepared layers, node by
node against the reference run on the program's own intermediate values.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from graph_builder import GraphBuilder

from fxforge import ops
from fxforge.execute import TorchProgram
from fxforge.ir import Graph, TensorType, Value
from fxforge.kernels import int8_scheme
from fxforge.kernels import reference_quant as rq
from fxforge.kernels import torch_int8 as ti
from fxforge.kernels.torch_backend import TORCH_IMPLS
from fxforge.quant_math import quantize_int4_groupwise, quantize_int8_per_channel

CPU = torch.device("cpu")
HAS_ONEDNN = ti.onednn_available(CPU)
# the weights oneDNN's int8 kernels sum exactly here: [W_LO, W_HI)
W_LO, W_HI = (-128, 128) if int8_scheme.detect().onednn_w8 else (-63, 64)
RUNNERS = ["generic", "prepared", "onednn"]


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _runner(op: str, how: str, inputs: list[np.ndarray], attrs: dict,
            monkeypatch) -> Callable[..., torch.Tensor]:
    """The kernel for `how`; weights and scales (inputs 1, 2) and the bias act as constants."""
    if how == "generic":
        return ti.IMPLS[op]
    if how == "onednn" and not HAS_ONEDNN:
        pytest.skip("this torch has no oneDNN int8 ops")
    monkeypatch.setattr(ti, "USE_ONEDNN", how == "onednn")
    consts = [None, _t(inputs[1]), _t(inputs[2])] + [None] * (len(inputs) - 3)
    if attrs["has_bias"]:
        consts[3] = _t(inputs[3])
    run = ti.PREPARE[op](consts, attrs, CPU)
    assert isinstance(run, ti._OnednnLayer) == (how == "onednn")
    return run or ti.IMPLS[op]  # None: nothing to prepare (a grouped conv without oneDNN)


def _check(got: torch.Tensor, ref: np.ndarray, exact: bool) -> None:
    got = got.numpy()
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if exact:
        np.testing.assert_array_equal(got, ref)
    elif ref.dtype == np.int8:
        assert np.abs(got.astype(np.int32) - ref.astype(np.int32)).max(initial=0) <= 1
    else:
        atol = 1e-6 * max(1.0, float(np.abs(ref).max(initial=0)))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


# --- quantize / dequantize / dynamic_quantize ---------------------------------------------------


@pytest.mark.parametrize("scale,zp", [(0.5, 0), (0.5, 3), (0.0173, -7), (0.1, 127), (1e-3, -128),
                                      (2.0, 0)])
def test_quantize_exact(scale, zp):
    rng = _rng("q", scale, zp)
    x = (rng.standard_normal(50_000) * 100 * scale).astype(np.float32)
    # exact ties (k + 1/2) * scale, saturation and infinities
    ties = ((np.arange(-300, 300) + 0.5) * scale).astype(np.float32)
    x = np.concatenate([x, ties, np.float32([1e30, -1e30, np.inf, -np.inf, 0.0, -0.0])])
    got = ti.quantize(_t(x), scale=scale, zero_point=zp)
    np.testing.assert_array_equal(got.numpy(), rq.quantize(x, scale=scale, zero_point=zp))


def test_quantize_large_tensor_keeps_layout():
    """More than one CHUNK, a channels-last input and a non-contiguous view."""
    rng = _rng("qlarge")
    x = _t((rng.standard_normal((3, 8, 150, 150)) * 4).astype(np.float32))
    ref = rq.quantize(x.numpy(), scale=0.03, zero_point=-5)
    for v in (x, x.contiguous(memory_format=torch.channels_last)):
        got = ti.quantize(v, scale=0.03, zero_point=-5)
        assert got.stride() == v.stride()
        np.testing.assert_array_equal(got.numpy(), ref)
    t = x.transpose(2, 3)
    np.testing.assert_array_equal(ti.quantize(t, scale=0.03, zero_point=-5).numpy(),
                                  rq.quantize(t.numpy(), scale=0.03, zero_point=-5))


@pytest.mark.parametrize("zp", [0, 5, -128, 127])
def test_dequantize_exact(zp):
    q = np.arange(-128, 128, dtype=np.int8).repeat(1500).reshape(6, 4, 80, 200)
    for v in (_t(q), _t(q).contiguous(memory_format=torch.channels_last)):
        got = ti.dequantize(v, scale=0.0371, zero_point=zp)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), rq.dequantize(q, scale=0.0371, zero_point=zp))


@pytest.mark.parametrize("mode", ["row", "tensor"])
@pytest.mark.parametrize("shape", [(1, 7), (5, 3, 64), (2, 700, 768), (4, 0), (3, 8, 5, 5)])
def test_dynamic_quantize_exact(mode, shape):
    rng = _rng("dq", mode, shape)
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10)).astype(np.float32)
    if x.size:
        x.reshape(-1, shape[-1])[0] = 0  # an all-zero row gets scale 1
    q, s = ti.dynamic_quantize(_t(x), mode=mode)
    rq_q, rq_s = rq.dynamic_quantize(x, mode=mode)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    np.testing.assert_array_equal(s.numpy(), rq_s)
    np.testing.assert_array_equal(q.numpy(), rq_q)


# --- accumulators -------------------------------------------------------------------------------

LINEAR_SHAPES = [  # x shape, N, x_zero_point
    ((1, 8), 4, 0), ((7, 33), 17, -128), ((3, 5, 64), 48, -5), ((16, 64), 24, 127),
    ((17, 64), 24, 3), ((200, 130), 70, 7), ((2, 1), 3, 1), ((0, 16), 8, 2), ((96, 768), 64, 9),
]


@pytest.mark.parametrize("shape,n,zp", LINEAR_SHAPES)
def test_qlinear_acc_exact(shape, n, zp, monkeypatch):
    rng = _rng("lacc", shape, n, zp)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-128, 128, (n, shape[-1])).astype(np.int8)
    ref = rq.qlinear_acc(x, w, zp)
    got = ti.qlinear_acc(_t(x), _t(w), zp)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), ref)
    monkeypatch.setattr(ti, "_int_mm_takes", lambda a, b: False)  # the float64 fallback
    np.testing.assert_array_equal(ti.qlinear_acc(_t(x), _t(w), zp).numpy(), ref)


CONV_SHAPES = [  # B, Cin, Cout, H, W, kernel, stride, padding, dilation, groups
    (1, 3, 8, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 16, 32, 14, 14, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (2, 16, 16, 10, 10, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    (2, 16, 32, 10, 10, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    (2, 32, 32, 12, 12, (3, 3), (1, 1), (1, 1), (1, 1), 32),
    (1, 16, 32, 11, 11, (3, 3), (2, 2), (1, 1), (1, 1), 16),
    (3, 64, 64, 8, 8, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (3, 64, 24, 9, 9, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (1, 5, 7, 6, 5, (3, 2), (2, 1), (1, 0), (1, 2), 1),
    (2, 64, 64, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 3, 16, 17, 17, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    (1, 32, 16, 4, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),
]


def _conv_out(shape) -> tuple[int, int]:
    _, _, _, h, w, (kh, kw), (s0, s1), (p0, p1), (d0, d1), _ = shape
    return (h + 2 * p0 - d0 * (kh - 1) - 1) // s0 + 1, (w + 2 * p1 - d1 * (kw - 1) - 1) // s1 + 1


def _conv_data(shape, zp_key):
    b, cin, cout, h, w, k, *_rest, groups = shape
    rng = _rng("conv", shape, zp_key)
    x = rng.integers(-128, 128, (b, cin, h, w)).astype(np.int8)
    wt = rng.integers(W_LO, W_HI, (cout, cin // groups, *k)).astype(np.int8)
    return rng, x, wt


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("zp", [0, -9, 127])
def test_qconv2d_acc_exact(shape, zp, monkeypatch):
    _, x, w = _conv_data(shape, zp)
    geo = shape[6:]
    ref = rq.qconv2d_acc(x, w, zp, *geo)
    for xt in (_t(x), _t(x).contiguous(memory_format=torch.channels_last)):
        got = ti.qconv2d_acc(xt, _t(w), zp, *geo)
        assert got.dtype == torch.int32
        np.testing.assert_array_equal(got.numpy(), ref)
    monkeypatch.setattr(ti, "_int_mm_takes", lambda a, b: False)
    np.testing.assert_array_equal(ti.qconv2d_acc(_t(x), _t(w), zp, *geo).numpy(), ref)


@pytest.mark.skipif(not HAS_ONEDNN, reason="this torch has no oneDNN int8 ops")
@pytest.mark.parametrize("case", [("linear", s) for s in LINEAR_SHAPES if s[0][0]]
                         + [("conv", s) for s in CONV_SHAPES])
def test_onednn_accumulators_exact(case):
    """oneDNN with x_scale 1, w_scale 1, no bias, float32 out gives f32(acc): exact < 2**24."""
    kind, shape = case
    zp = -7
    attrs = dict(has_bias=False, dynamic=False, x_scale=1.0, x_zero_point=zp, out_dtype="f32",
                 out_scale=None, out_zero_point=0, epilogue=())
    if kind == "linear":
        x_shape, n, _ = shape
        rng = _rng("oacc", shape)
        x = rng.integers(-128, 128, x_shape).astype(np.int8)
        w = rng.integers(W_LO, W_HI, (n, x_shape[-1])).astype(np.int8)
        ref = rq.qlinear_acc(x, w, zp)
        run = ti._OnednnLinear(_t(w), attrs)
    else:
        _, x, w = _conv_data(shape, "oacc")
        geo = dict(zip(("stride", "padding", "dilation", "groups"), shape[6:]))
        attrs.update(geo)
        ref = rq.qconv2d_acc(x, w, zp, *shape[6:])
        run = ti.prepare_qconv2d([None, _t(w), torch.ones(w.shape[0])], attrs, CPU)
        assert isinstance(run, ti._OnednnConv1x1 if w.shape[2:] == (1, 1) else ti._OnednnConv)
    assert np.abs(ref).max() < 2**24
    got = run(_t(x), _t(w), torch.ones(w.shape[0]), **attrs)
    np.testing.assert_array_equal(got.numpy(), ref.astype(np.float32))


# --- qlinear / qconv2d with epilogues -----------------------------------------------------------


def _steps(names, inputs, out_shape, rng) -> tuple:
    """Epilogue steps; a residual operand is appended to `inputs` ("add_b": a broadcast [N] one,
    which oneDNN cannot fuse; "add_l": the residual on the left)."""
    steps = []
    for name in names:
        if name.startswith("add"):
            shape = out_shape[-1:] if name == "add_b" else out_shape
            if name == "add_b" and len(out_shape) == 4:
                shape = (1, out_shape[1], 1, 1)
            steps.append({"op": "add", "operand": len(inputs),
                          "side": "left" if name == "add_l" else "right"})
            inputs.append(rng.standard_normal(shape).astype(np.float32))
        elif name == "gelu":
            steps.append({"op": "gelu", "attrs": {"approximate": "none"}})
        elif name == "gelu_tanh":
            steps.append({"op": "gelu", "attrs": {"approximate": "tanh"}})
        elif name == "clamp":
            steps.append({"op": "clamp", "attrs": {"min": -0.5, "max": 2.0}})
        else:
            steps.append({"op": name})
    return tuple(steps)


def _exact(how: str, epi: tuple) -> bool:
    return how != "onednn" and not any(name.startswith("gelu") for name in epi)


def _q_attrs(op, *, zp, out_dtype, steps, dynamic, has_bias, **extra) -> dict:
    attrs = dict(has_bias=has_bias, dynamic=bool(dynamic), x_scale=None if dynamic else 0.0173,
                 x_zero_point=0 if dynamic else zp, out_dtype=out_dtype,
                 out_scale=0.05 if out_dtype == "i8" else None,
                 out_zero_point=-3 if out_dtype == "i8" else 0, epilogue=steps, **extra)
    return dict(ops.complete_attrs(ops.get(op), attrs))


LINEAR_CASES = [  # x shape, N, zp, out dtype, epilogue, dynamic (None, "row", "tensor"), bias
    ((1, 8), 4, 0, "f32", (), None, True),
    ((7, 33), 17, -128, "i8", ("relu",), None, True),
    ((3, 5, 64), 48, -5, "i8", ("add", "relu"), None, True),
    ((17, 64), 24, 127, "f32", ("add_l",), None, False),
    ((200, 130), 70, 7, "f32", ("gelu",), None, True),
    ((128, 768), 256, -3, "i8", ("gelu_tanh",), None, True),
    ((64, 96), 80, 3, "i8", ("add_b", "relu"), None, True),
    ((33, 768), 64, 12, "i8", ("relu", "add", "clamp"), None, True),
    ((64, 96), 80, 0, "f32", ("add",), "row", True),
    ((2, 9, 40), 24, 0, "i8", ("relu",), "tensor", True),
    ((5, 40), 24, 0, "i8", ("gelu",), "row", False),
    ((256, 768), 768, 5, "f32", ("add",), None, True),
]


@pytest.mark.parametrize("how", RUNNERS)
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_qlinear(case, how, monkeypatch):
    x_shape, n, zp, out_dtype, epi, dynamic, has_bias = case
    rng = _rng("qlinear", case)
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(max(W_LO, -127), W_HI, (n, x_shape[-1])).astype(np.int8)
    inputs = [x, w, (rng.random(n) * 0.01 + 1e-3).astype(np.float32)]
    if has_bias:
        inputs.append(rng.standard_normal(n).astype(np.float32))
    if dynamic:
        xs_shape = (*x_shape[:-1], 1) if dynamic == "row" else (1,) * len(x_shape)
        inputs.append((rng.random(xs_shape) * 0.05 + 0.01).astype(np.float32))
    steps = _steps(epi, inputs, (*x_shape[:-1], n), rng)
    attrs = _q_attrs("qlinear", zp=zp, out_dtype=out_dtype, steps=steps, dynamic=dynamic,
                     has_bias=has_bias)
    ref = rq.qlinear(*inputs, **attrs)
    got = _runner("qlinear", how, inputs, attrs, monkeypatch)(*map(_t, inputs), **attrs)
    _check(got, ref, exact=_exact(how, epi))


CONV_CASES = [  # shape (CONV_SHAPES), zp, out dtype, epilogue, dynamic, bias
    (CONV_SHAPES[0], 0, "f32", (), False, True),
    (CONV_SHAPES[1], -9, "i8", ("relu",), False, True),
    (CONV_SHAPES[2], 5, "i8", ("add", "relu"), False, True),
    (CONV_SHAPES[3], 5, "f32", ("add_l", "relu"), False, False),
    (CONV_SHAPES[4], 127, "i8", ("relu",), False, True),
    (CONV_SHAPES[5], -128, "f32", ("relu",), False, True),
    (CONV_SHAPES[6], 0, "i8", (), True, True),
    (CONV_SHAPES[6], 3, "i8", ("add", "relu"), False, True),
    (CONV_SHAPES[7], 3, "f32", ("relu", "add"), False, True),
    (CONV_SHAPES[7], -2, "i8", ("add_l",), False, False),
    (CONV_SHAPES[8], 2, "i8", ("add_b", "relu"), False, True),
    (CONV_SHAPES[9], -1, "f32", ("add", "relu"), False, True),
    (CONV_SHAPES[9], 4, "i8", ("gelu", "clamp"), False, True),
    (CONV_SHAPES[10], 0, "f32", ("add",), True, False),
    (CONV_SHAPES[11], 0, "i8", ("add", "relu"), False, True),
]


@pytest.mark.parametrize("how", RUNNERS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_qconv2d(case, how, monkeypatch):
    shape, zp, out_dtype, epi, dynamic, has_bias = case
    rng, x, w = _conv_data(shape, ("qconv2d", case))
    cout = w.shape[0]
    inputs = [x, w, (rng.random(cout) * 0.01 + 1e-3).astype(np.float32)]
    if has_bias:
        inputs.append(rng.standard_normal(cout).astype(np.float32))
    if dynamic:
        inputs.append(np.float32([[[[0.0231]]]]))
    steps = _steps(epi, inputs, (x.shape[0], cout, *_conv_out(shape)), rng)
    geo = dict(zip(("stride", "padding", "dilation", "groups"), shape[6:]))
    attrs = _q_attrs("qconv2d", zp=zp, out_dtype=out_dtype, steps=steps, dynamic=dynamic,
                     has_bias=has_bias, **geo)
    ref = rq.qconv2d(*inputs, **attrs)
    run = _runner("qconv2d", how, inputs, attrs, monkeypatch)
    for xt in (_t(x), _t(x).contiguous(memory_format=torch.channels_last)):
        got = run(xt, *map(_t, inputs[1:]), **attrs)
        _check(got, ref, exact=_exact(how, epi))


@pytest.mark.skipif(not HAS_ONEDNN, reason="this torch has no oneDNN int8 ops")
@pytest.mark.parametrize("rows,k,onednn", [(64, 24, True), (63, 768, False), (4096, 16, False),
                                           (1, 768, False)])
def test_onednn_matmul_only_where_it_has_fast_kernels(rows, k, onednn, monkeypatch):
    """Small layers (where oneDNN would run its reference loop) go to `_int_mm`."""
    calls = []
    generic = ti._qlinear_generic
    monkeypatch.setattr(ti, "_qlinear_generic", lambda *a: calls.append(1) or generic(*a))
    w = torch.randint(max(W_LO, -127), W_HI, (8, k), dtype=torch.int8)
    attrs = _q_attrs("qlinear", zp=0, out_dtype="f32", steps=(), dynamic=False, has_bias=False)
    run = ti.prepare_qlinear([None, w, torch.ones(8)], attrs, CPU)
    run(torch.zeros(rows, k, dtype=torch.int8), w, torch.ones(8), **attrs)
    assert calls == ([] if onednn else [1])


@pytest.mark.parametrize("how", RUNNERS)
def test_qconv2d_channels_last_output_reads_right(how, monkeypatch):
    """The conv writes channels-last; reshape / flatten / permute after it see NCHW values."""
    shape = CONV_SHAPES[1]
    rng, x, w = _conv_data(shape, "layout")
    inputs = [x, w, (rng.random(w.shape[0]) * 0.01 + 1e-3).astype(np.float32)]
    attrs = _q_attrs("qconv2d", zp=1, out_dtype="i8", steps=({"op": "relu"},), dynamic=False,
                     has_bias=False, **dict(zip(("stride", "padding", "dilation", "groups"),
                                                shape[6:])))
    ref = rq.qconv2d(*inputs, **attrs)
    got = _runner("qconv2d", how, inputs, attrs, monkeypatch)(*map(_t, inputs), **attrs)
    assert np.abs(got.numpy().astype(int) - ref).max() <= 1
    ref = got.numpy()  # compare the views with the result's own values
    np.testing.assert_array_equal(got.reshape(got.shape[0], -1).numpy(),
                                  ref.reshape(ref.shape[0], -1))
    np.testing.assert_array_equal(torch.flatten(got, 1).numpy(), ref.reshape(ref.shape[0], -1))
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), ref.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ti.dequantize(got, scale=0.05, zero_point=-3).numpy(),
                                  rq.dequantize(ref, scale=0.05, zero_point=-3))


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("prepared", [False, True])
def test_linear_int4(has_bias, prepared):
    rng = _rng("int4", has_bias)
    n, k, g = 48, 128, 32
    packed, scales = quantize_int4_groupwise(rng.standard_normal((n, k)), g)
    x = rng.standard_normal((3, 5, k)).astype(np.float32)
    inputs = [x, packed, scales] + ([rng.standard_normal(n).astype(np.float32)] if has_bias else [])
    attrs = dict(group_size=g, has_bias=has_bias)
    ref = rq.linear_int4(*inputs, **attrs)
    tin = list(map(_t, inputs))
    run = ti.PREPARE["linear_int4"](tin, attrs, CPU) if prepared else ti.linear_int4
    got = run(*tin, **attrs).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("geometry", [((3, 3), (2, 2), (1, 1), (1, 1), False),
                                      ((2, 2), (2, 2), (0, 0), (1, 1), False),
                                      ((3, 2), (2, 3), (1, 1), (2, 1), True),
                                      ((2, 3), (1, 2), (0, 1), (1, 2), True)])
def test_int8_max_pool2d(geometry):
    """int8 max_pool2d (routed here by the torch backend) equals torch's float one, in both
    memory formats, keeping the input's."""
    kernel, stride, padding, dilation, ceil_mode = geometry
    rng = _rng("pool", geometry)
    x = _t(rng.integers(-128, 128, (2, 5, 9, 8)).astype(np.int8))
    ref = torch.nn.functional.max_pool2d(x.float(), kernel, stride, padding, dilation,
                                         ceil_mode).to(torch.int8)
    for xt in (x, x.contiguous(memory_format=torch.channels_last)):
        got = TORCH_IMPLS["max_pool2d"](xt, kernel=kernel, stride=stride, padding=padding,
                                        dilation=dilation, ceil_mode=ceil_mode)
        assert got.dtype == torch.int8 and got.stride() == ref.contiguous(
            memory_format=torch.channels_last if xt is not x else torch.contiguous_format).stride()
        np.testing.assert_array_equal(got.numpy(), ref.numpy())


# --- whole programs: TorchProgram with PREPARE, checked node by node ----------------------------


def _program_graph(rng) -> Graph:
    """A ResNet-style block (int8 flowing, residual add + relu fused) and a BERT-style FFN
    (dynamic and static qlinear, gelu), ending in float outputs."""
    b = GraphBuilder()
    x = Value("x", TensorType((2, 16, 12, 12), "f32"))
    t = Value("t", TensorType((2, 10, 32), "f32"))
    qx = b("quantize", [x], scale=0.03, zero_point=-4)

    def conv_w(cout, cin, k):
        w, s = quantize_int8_per_channel(rng.standard_normal((cout, cin, k, k)) * 0.2)
        return b.const(w), b.const(s), b.const(rng.standard_normal(cout).astype(np.float32))

    c1 = b("qconv2d", [qx, *conv_w(16, 16, 3)], padding=(1, 1), has_bias=True, x_scale=0.03,
           x_zero_point=-4, out_dtype="i8", out_scale=0.05, out_zero_point=-100,
           epilogue=({"op": "relu"},))
    c2 = b("qconv2d", [c1, *conv_w(16, 16, 3), x], padding=(1, 1), has_bias=True,
           x_scale=0.05, x_zero_point=-100, out_dtype="f32",
           epilogue=({"op": "add", "operand": 4, "side": "right"}, {"op": "relu"}))
    pooled = b("max_pool2d", [c1], kernel=(2, 2), stride=(2, 2))
    dq = b("dequantize", [pooled], scale=0.05, zero_point=-100)

    def lin_w(n, k):
        w, s = quantize_int8_per_channel(rng.standard_normal((n, k)) * 0.2)
        return b.const(w), b.const(s), b.const(rng.standard_normal(n).astype(np.float32))

    q, s = b("dynamic_quantize", [t], n_out=2, mode="row")
    h = b("qlinear", [q, *lin_w(64, 32), s], has_bias=True, dynamic=True, out_dtype="f32",
          epilogue=({"op": "gelu", "attrs": {"approximate": "none"}},))
    qh = b("quantize", [h], scale=0.02, zero_point=-120)
    o = b("qlinear", [qh, *lin_w(32, 64), t], has_bias=True, x_scale=0.02, x_zero_point=-120,
          out_dtype="i8", out_scale=0.04, out_zero_point=2,
          epilogue=({"op": "add", "operand": 4, "side": "left"},))
    packed, scales = quantize_int4_groupwise(rng.standard_normal((8, 32)), 16)
    i4 = b("linear_int4", [t, b.const(packed), b.const(scales)], group_size=16, has_bias=False)
    return Graph((x, t), tuple(b.nodes), (c2, dq, o, i4))


@pytest.mark.parametrize("onednn", [False, True])
def test_torch_program_node_by_node(onednn, monkeypatch):
    """Every node's torch result against the reference run on that node's torch inputs."""
    if onednn and not HAS_ONEDNN:
        pytest.skip("this torch has no oneDNN int8 ops")
    monkeypatch.setattr(ti, "USE_ONEDNN", onednn)
    rng = _rng("program")
    graph = _program_graph(rng)
    inputs = [torch.from_numpy(rng.standard_normal(v.type.shape).astype(np.float32))
              for v in graph.inputs]
    program = TorchProgram(graph, CPU)
    prepared = {node.op for node, fn, *_ in program.steps if fn is not TORCH_IMPLS[node.op]}
    assert prepared == {"qconv2d", "qlinear", "linear_int4"}
    seen: dict[str, torch.Tensor] = dict(program.constants)
    outs = program(inputs, observe=lambda name, t: seen.__setitem__(name, t))
    assert [o.dtype for o in outs] == [torch.float32, torch.float32, torch.int8, torch.float32]
    for node in graph.nodes:
        if node.op == "const":
            continue
        args = [seen[v.name].numpy() for v in node.inputs]
        ref = ops.get(node.op).reference(*args, **node.attrs)
        refs = ref if isinstance(ref, tuple) else (ref,)
        for v, r in zip(node.outputs, refs):
            r = np.asarray(r).astype(seen[v.name].numpy().dtype)
            if node.op == "linear_int4":
                np.testing.assert_allclose(seen[v.name].numpy(), r, rtol=1e-4, atol=1e-5)
            elif node.op in ("qlinear", "qconv2d"):
                names = tuple(step["op"] for step in node.attrs["epilogue"])
                _check(seen[v.name], r, exact=_exact("onednn" if onednn else "generic", names))
            else:
                _check(seen[v.name], r, exact=True)
