"""Verify checks of the matmul-like kernels against the numpy reference: gemm (float, int8
static / dynamic / split-K with fused epilogues, every autotuner config), int4_gemm, conv (float
and int8, grouped, every config) and depthwise. Each `v_*` takes a `Verify` and returns one
check result; gpu_verify.py lists them in the order they run."""

from __future__ import annotations

import numpy as np

from fxforge.bench.gpu_verify_tools import (
    F16_GEMM_TOL,
    F16_TOL,
    F32_TOL,
    GELU,
    RELU,
    Verify,
    close,
    combine,
    exact,
    float_epilogue,
    lsb,
    per_config,
    quant_epilogue,
    random_int8,
)


# GEMM shapes (M, N, K): partial tiles at every edge, a big-M and a split-K (M <= 16) one.
def _gemm_shapes(v: Verify) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((300, 200, 520), (5, 200, 520)) if v.big else ((40, 33, 70), (3, 33, 65))


def v_linear_f32(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("linear", m, n, k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        out.append(close(gemm.linear(v.t(x), v.t(w), bias=v.t(b)), ref.linear(x, w, b),
                         **F32_TOL))
    return combine(*out)


def v_linear_f16_epilogue(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("linear16", m, n, k)
        x = rng.standard_normal((m, k)).astype(np.float16)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)
        # a small bias keeps |x @ w.T + b| ~ 1, where one f16 ulp is within the tolerance
        inputs = [x, w, (rng.standard_normal(n) * 0.1).astype(np.float32),
                  rng.standard_normal((m, n)).astype(np.float32)]
        steps = [GELU, {"op": "add", "operand": 3, "side": "right"}]
        epi, attrs, stages = float_epilogue("fused_linear", inputs,
                                            {"has_bias": True, "epilogue": steps})
        got = gemm.linear(v.t(x), v.t(w), bias=v.t(inputs[2]), epilogue=epi,
                          operands={3: v.t(inputs[3])}, out_dtype=stages[-1].dtype)
        out.append(close(got, ref.fused_linear(*inputs, **attrs), **F16_GEMM_TOL))
    return combine(*out)


def v_qlinear_acc(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    out = []
    for m, n, k in _gemm_shapes(v):
        rng = v.rng("qacc", m, n, k)
        x, w = random_int8(rng, (m, k)), random_int8(rng, (n, k))
        acc = gemm.qlinear(v.t(x), v.t(w), v.t(np.ones(n, np.float32)), x_scale=0.1,
                           x_zero_point=-3, out_dtype="i32")
        out.append(exact(acc, rq.qlinear_acc(x, w, -3)))
    return combine(*out)


def _qlinear(v: Verify, shape, dynamic: bool, steps: list, out_dtype: str, residual: bool):
    """Run qlinear with bias (and a residual operand) on random int8 inputs; (got, want)."""
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    m, n, k = shape
    rng = v.rng("qlinear", shape, dynamic, out_dtype)
    x, w = random_int8(rng, (m, k)), random_int8(rng, (n, k), lo=-127)
    inputs = [x, w, rng.uniform(1e-3, 1e-2, n).astype(np.float32),
              rng.standard_normal(n).astype(np.float32)]
    x_scale = rng.uniform(0.01, 0.1, (m, 1)).astype(np.float32) if dynamic else 0.037
    if dynamic:
        inputs.append(x_scale)
    steps = list(steps)
    if residual:
        inputs.append(rng.standard_normal((m, n)).astype(np.float32))
        steps.append({"op": "add", "operand": len(inputs) - 1, "side": "right"})
    i8 = out_dtype == "i8"
    epi, attrs, want = quant_epilogue("qlinear", inputs, dict(
        has_bias=True, dynamic=dynamic, x_scale=None if dynamic else x_scale,
        x_zero_point=0 if dynamic else -3, out_dtype="i8" if i8 else "f32",
        out_scale=0.05 if i8 else None, out_zero_point=-7 if i8 else 0, epilogue=steps),
        rq.qlinear)
    got = gemm.qlinear(v.t(x), v.t(w), v.t(inputs[2]),
                       x_scale=v.t(x_scale) if dynamic else x_scale,
                       x_zero_point=attrs["x_zero_point"], bias=v.t(inputs[3]), epilogue=epi,
                       operands={len(inputs) - 1: v.t(inputs[-1])} if residual else None,
                       out_dtype=out_dtype, out_scale=attrs["out_scale"],
                       out_zero_point=attrs["out_zero_point"])
    return got, want


def v_qlinear_static_i8(v: Verify):
    got, want = _qlinear(v, _gemm_shapes(v)[0], False, [RELU], "i8", True)
    small, want_small = _qlinear(v, _gemm_shapes(v)[1], False, [RELU], "i8", False)
    return combine(lsb(got, want, 0.95), lsb(small, want_small, 0.95))


def v_qlinear_dynamic_f32(v: Verify):
    out = []
    for shape in _gemm_shapes(v):
        got, want = _qlinear(v, shape, True, [GELU], "f32", True)
        out.append(close(got, want, rtol=1e-5, atol=1e-6, scale_atol=True))
    return combine(*out)


def v_qlinear_f16(v: Verify):
    got, want = _qlinear(v, _gemm_shapes(v)[1], False, [], "f16", False)
    return close(got, want.astype(np.float16), rtol=1e-3, atol=1e-3, scale_atol=True)


def v_gemm_configs(v: Verify):
    """int32 accumulators exact with every autotuner config (aligned shapes, zero point 0: the
    kernels the GEMM benchmark tunes over, so they are compiled once)."""
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import gemm

    n, k = (256, 512) if v.big else (64, 128)
    out, bad = [], []
    for m, configs in ((n, gemm.CONFIGS), (16, gemm.SMALL_M_CONFIGS)):
        rng = v.rng("qcfg", m, n, k)
        x, w = random_int8(rng, (m, k)), random_int8(rng, (n, k))
        want = rq.qlinear_acc(x, w, 0)
        args = (v.t(x), v.t(w), v.t(np.ones(n, np.float32)))
        results, failed = per_config(  # each config runs now, with this loop's args
            v.some(configs), "exact", lambda cfg, args=args, want=want: exact(
                gemm.qlinear(*args, x_scale=1.0, out_dtype="i32", config=cfg), want))
        out += results
        bad += failed
    return combine(*out, configs=len(out), failed_configs=bad)


def v_int4(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import int4_gemm

    cases = ([((300, 200, 512), 32, 32, np.float32), ((5, 200, 516), 6, None, np.float16)]
             if v.big else [((17, 40, 64), 32, 32, np.float32), ((5, 9, 96), 6, None,
                                                                  np.float16)])
    out = []
    for (m, n, k), g, block_k, dtype in cases:
        rng = v.rng("int4", m, n, k, g)
        x = rng.standard_normal((m, k)).astype(dtype)
        packed = rng.integers(0, 256, size=(n, k // 2)).astype(np.uint8)
        scales = rng.uniform(0.01, 0.2, (n, k // g)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        want = rq.linear_int4(x, packed, scales, bias, group_size=g, has_bias=True)
        config = None if block_k is None else dict(int4_gemm.DEFAULT_CONFIG, BLOCK_K=block_k)
        got = int4_gemm.linear_int4(v.t(x), v.t(packed), v.t(scales), group_size=g,
                                    bias=v.t(bias), config=config)
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=4e-3, atol=4e-3)
        out.append(close(got, want, **tol, scale_atol=True))
    return combine(*out)


# conv: (x shape, Cout, kernel, stride, padding, groups)
def _conv_case(v: Verify, grouped: bool):
    if grouped:
        return ((2, 32, 13, 13), 48, 3, 2, 1, 4) if v.big else ((1, 16, 7, 7), 20, 3, 2, 1, 4)
    return ((2, 37, 15, 15), 40, 3, 1, 1, 1) if v.big else ((2, 5, 9, 9), 24, 3, 1, 1, 1)


def _geom(k, s, p, groups):
    return dict(stride=(s, s), padding=(p, p), dilation=(1, 1), groups=groups), (k, k)


def _float_conv(v: Verify, grouped: bool, dtype, stride: int | None, steps: list):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import conv

    x_shape, cout, k, s, p, groups = _conv_case(v, grouped)
    s = stride or s
    rng = v.rng("fconv", grouped, np.dtype(dtype).name, s)
    cin_g = x_shape[1] // groups
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((cout, cin_g, k, k)) / np.sqrt(cin_g * k * k)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    geom, kernel = _geom(k, s, p, groups)
    epi, attrs, _ = float_epilogue("fused_conv2d", [x, w, bias],
                                   dict(geom, has_bias=True, epilogue=steps))
    got = conv.conv2d(v.t(x, True), conv.prepare_weight(v.t(w)), kernel_size=kernel,
                      bias=v.t(bias), epilogue=epi, **geom)
    want = ref.fused_conv2d(x, w, bias, **attrs)
    return close(got, want, **(F32_TOL if dtype == np.float32 else F16_TOL))


def v_conv_f32(v: Verify):
    return _float_conv(v, False, np.float32, None, [RELU])


def v_conv_f16(v: Verify):
    return _float_conv(v, False, np.float16, 2, [])


def v_conv_grouped_f32(v: Verify):
    return _float_conv(v, True, np.float32, None, [RELU])


def _qconv(v: Verify, grouped: bool, out_dtype: str, zp: int):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import conv

    x_shape, cout, k, s, p, groups = _conv_case(v, grouped)
    rng = v.rng("qconv", grouped, out_dtype, zp)
    x = random_int8(rng, x_shape)
    w = random_int8(rng, (cout, x_shape[1] // groups, k, k), lo=-127)
    geom, kernel = _geom(k, s, p, groups)
    if out_dtype == "i32":
        got = conv.qconv2d(v.t(x, True), conv.prepare_weight(v.t(w)),
                           v.t(np.ones(cout, np.float32)), kernel_size=kernel, x_scale=0.5,
                           x_zero_point=zp, out_dtype="i32", **geom)
        return exact(got, rq.qconv2d_acc(x, w, zp, geom["stride"], geom["padding"],
                                         geom["dilation"], groups))
    inputs = [x, w, rng.uniform(1e-3, 1e-2, cout).astype(np.float32),
              rng.standard_normal(cout).astype(np.float32)]
    epi, attrs, want = quant_epilogue("qconv2d", inputs, dict(
        geom, has_bias=True, dynamic=False, x_scale=0.021, x_zero_point=zp, out_dtype="i8",
        out_scale=0.03, out_zero_point=2, epilogue=[RELU]), rq.qconv2d)
    got = conv.qconv2d(v.t(x, True), conv.prepare_weight(v.t(w)), v.t(inputs[2]),
                       kernel_size=kernel, x_scale=0.021, x_zero_point=zp, bias=v.t(inputs[3]),
                       epilogue=epi, out_dtype="i8", out_scale=0.03, out_zero_point=2, **geom)
    return lsb(got, want, 0.99)


def v_qconv_acc(v: Verify):
    return _qconv(v, False, "i32", 7)


def v_qconv_grouped_acc(v: Verify):
    return _qconv(v, True, "i32", 13)


def v_qconv_i8(v: Verify):
    return _qconv(v, False, "i8", 5)


def v_qconv_grouped_i8(v: Verify):
    return _qconv(v, True, "i8", -9)


def v_conv_configs(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import conv

    x_shape, cout = ((2, 64, 14, 14), 64) if v.big else ((1, 16, 6, 6), 16)
    rng = v.rng("qconv-cfg")
    x, w = random_int8(rng, x_shape), random_int8(rng, (cout, x_shape[1], 3, 3))
    want = rq.qconv2d_acc(x, w, 0, (1, 1), (1, 1), (1, 1), 1)
    prepared, ones = conv.prepare_weight(v.t(w)), v.t(np.ones(cout, np.float32))
    out, bad = per_config(v.some(conv.CONFIGS), "exact", lambda cfg: exact(conv.qconv2d(
        v.t(x, True), prepared, ones, kernel_size=(3, 3), x_scale=1.0, padding=(1, 1),
        out_dtype="i32", config=cfg), want))
    return combine(*out, configs=len(out), failed_configs=bad)


def _dw_shape(v: Verify):
    return (2, 48, 15, 15) if v.big else (2, 16, 8, 8)


def _depthwise_float(v: Verify, dtype, stride: int):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import depthwise

    x_shape = _dw_shape(v)
    c = x_shape[1]
    rng = v.rng("dw", np.dtype(dtype).name, stride)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((c, 1, 3, 3)) / 3).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    geom, kernel = _geom(3, stride, 1, c)
    epi, attrs, _ = float_epilogue("fused_conv2d", [x, w, bias],
                                   dict(geom, has_bias=True, epilogue=[RELU]))
    got = depthwise.depthwise_conv2d(v.t(x, True), depthwise.prepare_depthwise_weight(v.t(w)),
                                     kernel_size=kernel, bias=v.t(bias), epilogue=epi,
                                     stride=geom["stride"], padding=geom["padding"])
    return close(got, ref.fused_conv2d(x, w, bias, **attrs),
                 **(F32_TOL if dtype == np.float32 else F16_TOL))


def v_depthwise_f32(v: Verify):
    return _depthwise_float(v, np.float32, 1)


def v_depthwise_f16(v: Verify):
    return _depthwise_float(v, np.float16, 2)


def v_depthwise_int8(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import depthwise

    x_shape = _dw_shape(v)
    c = x_shape[1]
    rng = v.rng("dwq")
    x, w = random_int8(rng, x_shape), random_int8(rng, (c, 1, 3, 3), lo=-127)
    geom, kernel = _geom(3, 1, 1, c)
    prepared = depthwise.prepare_depthwise_weight(v.t(w))
    acc = depthwise.depthwise_qconv2d(v.t(x, True), prepared, v.t(np.ones(c, np.float32)),
                                      kernel_size=kernel, x_scale=0.1, x_zero_point=-17,
                                      stride=(1, 1), padding=(1, 1), out_dtype="i32")
    acc_r = exact(acc, rq.qconv2d_acc(x, w, -17, (1, 1), (1, 1), (1, 1), c))
    inputs = [x, w, rng.uniform(1e-3, 1e-2, c).astype(np.float32),
              rng.standard_normal(c).astype(np.float32)]
    epi, attrs, want = quant_epilogue("qconv2d", inputs, dict(
        geom, has_bias=True, dynamic=False, x_scale=0.021, x_zero_point=5, out_dtype="i8",
        out_scale=0.02, out_zero_point=-1, epilogue=[RELU]), rq.qconv2d)
    got = depthwise.depthwise_qconv2d(v.t(x, True), prepared, v.t(inputs[2]),
                                      kernel_size=kernel, x_scale=0.021, x_zero_point=5,
                                      bias=v.t(inputs[3]), stride=(1, 1), padding=(1, 1),
                                      epilogue=epi, out_dtype="i8", out_scale=0.02,
                                      out_zero_point=-1)
    return combine(acc_r, lsb(got, want, 0.99))
