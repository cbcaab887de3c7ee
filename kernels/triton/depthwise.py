"""Depthwise conv2d (groups = Cin = Cout) on NHWC activations, float and int8, with an IR epilogue.

A depthwise conv has no reduction over channels, so it is no GEMM: each output is a kh * kw
dot product along its own channel. The kernel tiles (pixels x channels); in NHWC a tap of a
pixel tile reads BLOCK_N contiguous channels per pixel, and weights prepared as [kh*kw, C] read
one contiguous channel run per tap.

    M = B * Ho * Wo (rows in NHWC order), N = C
    for each tile [BLOCK_M pixels, BLOCK_N channels]:
        acc = 0                                    f32 (float) or int32 (int8)
        for r in range(kh):                        a loop (large kernels stay small code)
            for s in static_range(kw):             unrolled
                ih = oh * stride_h - pad_h + r * dil_h     (iw likewise)
                xv = x[b, ih, iw, n]               outside the image: 0 (int8: x_zero_point)
                float: acc += xv * w[r * kw + s, n]
                int8:  acc += (int32(xv) - x_zero_point) * int32(w[r * kw + s, n])   exact
        y = bias, int8 scale, epilogue, store      (conv_common.Finish, shared with conv.py)

The numerics are those of conv.py and docs/quantized-ir.md; only the accumulation differs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fxforge.kernels.triton import conv_common, host, jit
from fxforge.kernels.triton.codegen import Epilogue

# Candidates for the autotuner (kernels/triton/autotune.py), sensible on H100: the kernel is
# memory-bound, so wide channel runs and enough warps to cover load latency.
CONFIGS: list[dict] = [
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 256, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 16, "BLOCK_N": 256, "num_warps": 4, "num_stages": 2},
]
DEFAULT_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


def prepare_depthwise_weight(w: torch.Tensor) -> torch.Tensor:
    """[C, 1, kh, kw] -> [kh*kw, C] contiguous: one contiguous channel run per tap."""
    if w.dim() != 4 or w.shape[1] != 1:
        raise ValueError(f"depthwise weight must be [C, 1, kh, kw], got shape {tuple(w.shape)}")
    if w.dtype not in conv_common.FLOAT_DTYPES and w.dtype != torch.int8:
        raise ValueError(f"depthwise weight must be f32, f16 or int8, got {w.dtype}")
    return w.reshape(w.shape[0], -1).t().contiguous()


def supports(kernel_size, stride, padding, dilation, groups, cin, cout) -> str | None:
    """Why this kernel cannot run a conv (None when it can): the backend falls back to torch."""
    if not groups == cin == cout:
        return (f"depthwise kernel needs groups = Cin = Cout; got groups {groups}, Cin {cin}, "
                f"Cout {cout}")
    if min(*kernel_size, *stride, *dilation, cin) < 1 or min(padding) < 0:
        return "kernel size, stride, dilation and channels must be >= 1 and padding >= 0"
    return None


# --- kernel source ------------------------------------------------------------------------------

_MAIN = """
def depthwise_kernel(
    x_ptr, w_ptr, out_ptr,{params}
    M, N, H, W, HO, WO,
    sxb, sxh, sxw, som,
    zp,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
{pixels}
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc})
    for r in range(KH):
        ih = ih0 + r * DH
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for s in tl.static_range(KW):
            iw = iw0 + s * DW
            inside = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + offs_n[None, :],
                         mask=inside[:, None] & mask_n[None, :], other={pad})
            wv = tl.load(w_ptr + (r * KW + s) * N + offs_n, mask=mask_n, other=0)
            acc += {term}
"""


def _source(finish: conv_common.Finish, int8: bool) -> str:
    params = "".join(f" {p}," for p in finish.params())
    term = ("(xv.to(tl.int32) - zp) * wv.to(tl.int32)[None, :]" if int8 else
            "xv.to(tl.float32) * wv.to(tl.float32)[None, :]")
    body = _MAIN.format(params=params, pixels=conv_common.PIXELS,
                        acc="tl.int32" if int8 else "tl.float32",
                        pad="zp" if int8 else "0.0", term=term)
    return jit.HEADER + body.lstrip("\n") + "\n".join(finish.lines()) + "\n"


def _kernel(finish: conv_common.Finish, int8: bool):
    return jit.build(_source(finish, int8), "depthwise_kernel")  # cached by source and mode


# --- host wrappers ------------------------------------------------------------------------------


def _geometry(x, w, kernel_size, stride, padding, dilation, dtype):
    kernel_size, stride, padding, dilation = conv_common.geometry(kernel_size, stride, padding,
                                                                  dilation)
    taps, c = kernel_size[0] * kernel_size[1], x.shape[1]
    if w.dim() != 2 or tuple(w.shape) != (taps, c):
        raise ValueError(f"prepared depthwise weight must be [kh*kw = {taps}, C = {c}] for input "
                         f"{list(x.shape)} and kernel {kernel_size}, got {list(w.shape)}")
    if w.dtype != dtype:
        raise ValueError(f"weight dtype {w.dtype} does not match the input's ({dtype})")
    out_shape = (x.shape[0], c, *conv_common.out_size(x, kernel_size, stride, padding, dilation))
    return (kernel_size, stride, padding, dilation), out_shape


def _launch(finish, x, w, out, extra, zp, geometry, config, int8):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry
    b, c, h, wd = x.shape
    ho, wo = out.shape[2], out.shape[3]
    cfg = dict(DEFAULT_CONFIG if config is None else config)
    m = b * ho * wo
    grid = (host.cdiv(m, cfg["BLOCK_M"]), host.cdiv(c, cfg["BLOCK_N"]))
    sxb, _, sxh, sxw = x.stride()
    _kernel(finish, int8)[grid](
        x, w.contiguous(), out, *extra, m, c, h, wd, ho, wo, sxb, sxh, sxw, out.stride(3), zp,
        KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 2), enable_fp_fusion=not int8)
    return out


def depthwise_conv2d(x: torch.Tensor, w_prepared: torch.Tensor, *, kernel_size,
                     bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0),
                     dilation=(1, 1), epilogue: Epilogue | None = None,
                     operands: Mapping[int, torch.Tensor] | None = None, out_dtype=None,
                     config: Mapping | None = None) -> torch.Tensor:
    """Float depthwise conv: x f32/f16 [B, C, H, W] (channels_last), weights of the same dtype
    from `prepare_depthwise_weight`, bias float [C]; f32 accumulation, then the epilogue from
    stage 0's dtype. Returns [B, C, Ho, Wo] channels_last as out_dtype (default x's dtype)."""
    x = conv_common.nhwc(x, "depthwise conv input")
    if x.dtype not in conv_common.FLOAT_DTYPES:
        raise ValueError(f"depthwise conv input must be f32 or f16, got {x.dtype}")
    geometry, out_shape = _geometry(x, w_prepared, kernel_size, stride, padding, dilation,
                                    x.dtype)
    bias = conv_common.check_vector(bias, x.shape[1], "bias")
    out = conv_common.out_dtype_name(out_dtype, conv_common.FLOAT_DTYPES[x.dtype])
    if out not in ("f32", "f16"):
        raise ValueError(f"float depthwise conv stores f32 or f16, not {out}")
    finish = conv_common.make_finish(epilogue, operands, out_shape,
                                     conv_common.FLOAT_DTYPES[x.dtype], bias is not None, None,
                                     out)
    y = conv_common.empty_out(out_shape, out, x.device)
    extra = finish.args(bias, None, None, None, 0, operands, out_shape)
    return _launch(finish, x, w_prepared, y, extra, 0, geometry, config, False)


def depthwise_qconv2d(x: torch.Tensor, w_prepared: torch.Tensor, w_scale: torch.Tensor, *,
                      kernel_size, x_scale, x_zero_point: int = 0,
                      bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0),
                      dilation=(1, 1), epilogue: Epilogue | None = None,
                      operands: Mapping[int, torch.Tensor] | None = None, out_dtype: str = "f32",
                      out_scale: float | None = None, out_zero_point: int = 0,
                      config: Mapping | None = None) -> torch.Tensor:
    """int8 depthwise conv, the qconv2d of docs/quantized-ir.md with groups = C: x int8
    [B, C, H, W] (channels_last), int8 weights from `prepare_depthwise_weight`, w_scale f32 [C],
    x_scale a float (static) or a 1-element f32 tensor (dynamic, zero point 0); out_dtype "f32"
    | "f16" | "i8" | "i32" (raw accumulator). Returns [B, C, Ho, Wo] channels_last."""
    x = conv_common.nhwc(x, "depthwise qconv input")
    if x.dtype != torch.int8:
        raise ValueError(f"depthwise qconv input must be int8, got {x.dtype}")
    geometry, out_shape = _geometry(x, w_prepared, kernel_size, stride, padding, dilation,
                                    torch.int8)
    out = conv_common.out_dtype_name(out_dtype, "f32")
    dynamic = conv_common.check_quant(x_scale, x_zero_point, out, out_scale, out_zero_point)
    c = x.shape[1]
    w_scale = conv_common.check_vector(w_scale, c, "w_scale")
    bias = conv_common.check_vector(bias, c, "bias")
    finish = conv_common.make_finish(epilogue, operands, out_shape, "f32", bias is not None,
                                     "dynamic" if dynamic else "static", out)
    y = conv_common.empty_out(out_shape, out, x.device)
    xs = x_scale.reshape(1).contiguous() if dynamic else x_scale
    extra = finish.args(bias, w_scale, xs, out_scale, out_zero_point, operands, out_shape)
    return _launch(finish, x, w_prepared, y, extra, int(x_zero_point), geometry, config, True)


__all__ = ["CONFIGS", "prepare_depthwise_weight", "supports", "depthwise_conv2d",
           "depthwise_qconv2d"]
