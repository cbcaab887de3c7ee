"""Verify checks of the other kernel families against the numpy reference: elementwise (fused
chains), reduce (softmax, layer_norm, sums), quant, attention (masks, head dims, every
autotuner config), pool and layout. Each `v_*` takes a `Verify` and returns one check result;
gpu_verify.py lists them in the order they run."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fxforge.bench.gpu_verify_tools import (
    F16_TOL,
    F32_TOL,
    POOL_TOL,
    Verify,
    check_result,
    close,
    combine,
    exact,
    per_config,
    random_int8,
    tensor_types,
)


def _chain(v: Verify, arrays: list[np.ndarray], steps) -> dict[str, Any]:
    from fxforge import dtypes, ops
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import elementwise

    in_types = tensor_types(arrays)
    stages = ops.stage_types("fused_elementwise", in_types, {"steps": steps})
    why = elementwise.supports(in_types, steps, stages)
    if why is not None:
        return check_result(False, None, "-", error=f"not supported: {why}")
    got = elementwise.fused_elementwise([v.t(a) for a in arrays], in_types, steps, stages)
    want = ref.fused_elementwise(*arrays, steps=steps)
    if stages[-1].dtype == "f16":
        return close(got, want.astype(np.float16), rtol=2e-3, atol=1e-3)
    return close(got, want.astype(dtypes.to_numpy(stages[-1].dtype)), **F32_TOL)


def v_elementwise_f32(v: Verify):
    rng = v.rng("chain32")
    shape, channel = ((8, 64, 14, 14), (1, 64, 1, 1)) if v.big else ((2, 3, 5, 7), (1, 3, 1, 1))
    arrays = [(rng.standard_normal(shape) * 2).astype(np.float32),
              rng.standard_normal(channel).astype(np.float32),
              np.asarray(rng.standard_normal(()), dtype=np.float32)]
    steps = ({"op": "mul", "args": (0, 1)}, {"op": "add", "args": (3, 2)},
             {"op": "gelu", "args": (4,), "attrs": {"approximate": "none"}})
    return _chain(v, arrays, steps)


def v_elementwise_f16(v: Verify):
    rng = v.rng("chain16")
    # |x| stays well below 11, where exp overflows f16
    x = (rng.standard_normal((64, 33, 129) if v.big else (3, 5, 11)) * (1 if v.big else 2)) \
        .astype(np.float16)
    steps = ({"op": "exp", "args": (0,)}, {"op": "add", "args": (1, 0)},
             {"op": "div", "args": (2, 1)}, {"op": "sigmoid", "args": (3,)})
    return _chain(v, [x], steps)


def v_softmax(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    rng = v.rng("softmax")
    x = (rng.standard_normal((64, 3000) if v.big else (3, 1000)) * 8).astype(np.float32)
    x[0, :7] = -np.inf
    h = (rng.standard_normal((64, 777) if v.big else (6, 33)) * 2).astype(np.float16)
    return combine(
        close(reduce.softmax(v.t(x), -1), ref.softmax(x, dim=-1).astype(np.float32), **F32_TOL),
        close(reduce.log_softmax(v.t(x), -1), ref.log_softmax(x, dim=-1).astype(np.float32),
              **F32_TOL),
        close(reduce.softmax(v.t(h), 1), ref.softmax(h, dim=1).astype(np.float16), rtol=2e-3,
              atol=1e-3))


def v_layer_norm(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    out = []
    for shape, dtype in ((((8, 16, 1000) if v.big else (2, 3, 40)), np.float32),
                         (((64, 768) if v.big else (5, 33)), np.float16)):
        rng = v.rng("ln", shape)
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        w = rng.standard_normal(shape[-1:]).astype(np.float32)
        b = rng.standard_normal(shape[-1:]).astype(np.float32)
        got = reduce.layer_norm(v.t(x), v.t(w), v.t(b), 1e-5)
        want = ref.layer_norm(x, w, b, eps=1e-5).astype(dtype)
        out.append(close(got, want, **(F32_TOL if dtype == np.float32 else
                                      dict(rtol=2e-3, atol=1e-3))))
    return combine(*out)


def v_reduce(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import reduce

    out = []
    for shape, dims in ((((16, 33, 700) if v.big else (3, 5, 6)), (0, 2)),
                        (((64, 3000) if v.big else (3, 700)), (1,))):
        x = (v.rng("reduce", shape).standard_normal(shape) * 2).astype(np.float32)
        for op in ("sum", "mean", "amax"):
            want = getattr(ref, op)(x, dims=dims, keepdim=False).astype(np.float32)
            out.append(close(reduce.reduce(v.t(x), op, dims, False), want, **F32_TOL))
    return combine(*out)


def v_quant(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import quant

    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 127.5, -128.5, 3.5, 1e30,
                     -1e30, 0.0, -0.0, 300.0], dtype=np.float32)
    out = []
    for scale, zp in ((1.0, 0), (0.037, 127), (0.25, -128)):
        rng = v.rng("quant", scale)
        x = np.concatenate([ties * np.float32(scale),
                            (rng.standard_normal(4096 if v.big else 96) * 2).astype(np.float32)])
        x = x.reshape(-1, 8)
        q = quant.quantize(v.t(x), scale, zp)
        want = rq.quantize(x, scale=scale, zero_point=zp)
        out += [exact(q, want), exact(quant.dequantize(q, scale, zp),
                                      rq.dequantize(want, scale=scale, zero_point=zp))]
    return combine(*out)


def v_dynamic_quant(v: Verify):
    from fxforge.kernels import reference_quant as rq
    from fxforge.kernels.triton import quant

    x = (v.rng("dynq").standard_normal((64, 1000) if v.big else (5, 33)) * 3).astype(np.float32)
    x[1] = 0.0  # an all-zero row: scale 1
    x[2, :3] = [0.5, -2.5, 127.0]
    out = []
    for mode in ("row", "tensor"):
        q, s = quant.dynamic_quantize(v.t(x), mode)
        want_q, want_s = rq.dynamic_quantize(x, mode=mode)
        out += [exact(q, want_q), exact(s, want_s)]
    return combine(*out)


def _attention(v: Verify, batch, lq, lk, d, dtype, causal=False, mask=None, config=None):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import attention as att

    rng = v.rng("att", batch, lq, lk, d, np.dtype(dtype).name, causal)
    q, k, val = (rng.standard_normal((*batch, n, d)).astype(dtype) for n in (lq, lk, lk))
    got = att.attention(v.t(q), v.t(k), v.t(val), None if mask is None else v.t(mask),
                        is_causal=causal, config=config)
    want = ref.scaled_dot_product_attention(q, k, val, mask, is_causal=causal, scale=None)
    return close(got, want, **(F16_TOL if dtype == np.float16 else F32_TOL))


def v_attention_f32(v: Verify):
    b, lq, lk = ((2, 3), 150, 170) if v.big else ((2, 2), 37, 29)
    return _attention(v, b, lq, lk, 32, np.float32)


def v_attention_f16_causal(v: Verify):
    b, lq = ((2, 3), 200) if v.big else ((1, 2), 40)
    return combine(_attention(v, b, lq, lq, 64, np.float16, causal=True),
                   _attention(v, b, lq - 3, lq, 64, np.float16, causal=True))


def v_attention_bool_mask(v: Verify):
    (bsz, h), lq, lk = ((2, 2), 150, 170) if v.big else ((2, 2), 23, 35)
    mask = np.arange(lk)[None, None, None, :] < np.array([lk - 5, lk // 3])[:, None, None, None]
    return _attention(v, (bsz, h), lq, lk, 128, np.float16, mask=mask)


def v_attention_float_mask(v: Verify):
    (bsz, h), lq, lk = ((2, 2), 150, 170) if v.big else ((1, 2), 26, 33)
    rng = v.rng("float-mask")
    mask = rng.standard_normal((bsz, h, lq, lk)).astype(np.float32)
    mask[rng.random(mask.shape) < 0.2] = -np.inf
    mask[rng.random(mask.shape) < 0.1] = -1e9
    f16 = (rng.standard_normal((lq, lk)) * 3).astype(np.float16)
    f16[:, ::4] = np.finfo(np.float16).min
    return combine(_attention(v, (bsz, h), lq, lk, 64, np.float32, mask=mask),
                   _attention(v, (bsz, h), lq, lk, 32, np.float16, causal=True, mask=f16))


def v_attention_configs(v: Verify):
    from fxforge.kernels.triton import attention as att

    b, length, d = ((2, 3), 128, 64) if v.big else ((1, 1), 40, 16)
    out, bad = per_config(v.some(att.configs(d)), "f16", lambda cfg: _attention(
        v, b, length, length, d, np.float16, config=cfg))
    return combine(*out, configs=len(out), failed_configs=bad)


def _pool_input(v: Verify, dtype: str, key: str) -> np.ndarray:
    shape = (4, 64, 56, 56) if v.big else (2, 5, 9, 8)
    rng = v.rng("pool", dtype, key)
    if dtype == "i8":
        return random_int8(rng, shape)
    return rng.standard_normal(shape).astype(np.float16 if dtype == "f16" else np.float32)


def v_max_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    out = []
    for dtype, cl in (("f32", True), ("f32", False), ("i8", True)):
        a = _pool_input(v, dtype, "max")
        got = pool.max_pool2d(v.t(a, cl), kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                              dilation=(1, 1), ceil_mode=False)
        out.append(exact(got, ref.max_pool2d(a, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                                             dilation=(1, 1), ceil_mode=False)))
    return combine(*out)


def v_avg_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    out = []
    for dtype in ("f32", "f16"):
        a = _pool_input(v, dtype, "avg")
        kw = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
                  count_include_pad=False, divisor_override=None)
        want = ref.avg_pool2d(a, **kw).astype(a.dtype)
        out.append(close(pool.avg_pool2d(v.t(a, True), **kw), want,
                         **(POOL_TOL if dtype == "f32" else F16_TOL)))
    return combine(*out)


def v_adaptive_pool(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import pool

    rng = v.rng("adaptive")
    out = []
    for shape, size in (((2, 64, 7, 7) if v.big else (2, 5, 7, 7), (1, 1)),
                        ((2, 32, 13, 10) if v.big else (1, 5, 13, 10), (5, 3))):
        a = rng.standard_normal(shape).astype(np.float32)
        want = ref.adaptive_avg_pool2d(a, output_size=size).astype(np.float32)
        out.append(close(pool.adaptive_avg_pool2d(v.t(a, True), output_size=size), want,
                         **POOL_TOL))
    return combine(*out)


def v_layout_copy(v: Verify):
    from fxforge.kernels.triton import layout

    a = v.rng("copy").standard_normal((8, 64, 28, 28) if v.big else (2, 3, 5, 7)) \
        .astype(np.float32)
    x = v.t(a)
    moved = layout.contiguous(x.permute(0, 2, 3, 1))
    nhwc = layout.memory_format(x, "nhwc")
    layout_ok = bool(nhwc.is_contiguous(memory_format=torch.channels_last))
    return combine(exact(moved, np.transpose(a, (0, 2, 3, 1))), exact(nhwc, a),
                   check_result(layout_ok, None, "channels-last"))


def v_layout_cat_pad(v: Verify):
    from fxforge.kernels import reference as ref
    from fxforge.kernels.triton import layout

    rng = v.rng("cat")
    n = 16 if v.big else 2
    parts = [rng.standard_normal((n, c, 9, 11)).astype(np.float16) for c in (3, 5, 2)]
    out = [exact(layout.cat([v.t(p) for p in parts], 1), np.concatenate(parts, axis=1))]
    a = rng.standard_normal((n, 3, 9, 11)).astype(np.float32)
    for mode in ("constant", "reflect", "replicate"):
        pads = (1, 2, 0, 3)
        got = layout.pad(v.t(a), pads, mode, 0.5)
        out.append(exact(got, ref.pad(a, pads=pads, mode=mode, value=0.5).astype(np.float32)))
    return combine(*out)


def v_layout_take(v: Verify):
    from fxforge.kernels.triton import layout

    rng = v.rng("take")
    a = rng.standard_normal((4, 50, 6) if v.big else (3, 7, 4)).astype(np.float32)
    size = a.shape[1]
    positions = rng.integers(-size, size, size=(2, 5)).astype(np.int64)
    taken = layout.take(v.t(a), 1, v.t(positions))
    index = rng.integers(0, size, size=(a.shape[0], 3, a.shape[2])).astype(np.int64)
    gathered = layout.gather(v.t(a), 1, v.t(index))
    return combine(exact(taken, np.take(a, positions, axis=1)),
                   exact(gathered, np.take_along_axis(a, index, axis=1)))
