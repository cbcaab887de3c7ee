"""Pooling kernels: max_pool2d, avg_pool2d and adaptive_avg_pool2d on NCHW tensors stored NHWC.

Why tiles of (output pixels x channels): pooling never mixes channels, and in the cuda targets'
channels-last layout a pixel's channels are one contiguous run, so every tap of a pixel tile is
BLOCK_M contiguous channel runs (coalesced loads), the same tiling as the depthwise conv. The
kernels address the input and the output through all four strides, so a contiguous NCHW tensor
works too (its channel loads are strided); the output is channels-last when the input is, else
contiguous.

    M = B * Ho * Wo (pixels), N = C; a program owns [BLOCK_M pixels, BLOCK_N channels]
    max / avg:   ih0 = oh * stride_h - pad_h                       (iw0 likewise)
        for r in range(kh):                                 a loop
            for s in static_range(kw):                      unrolled
                ih = ih0 + r * dil_h;  tap outside the image -> pad value
                max: acc = maximum(acc, x)   in the input dtype, NaN propagates (numpy's max);
                                             pad = -inf, or the integer dtype's min (exact)
                avg: acc += f32(x)           pad = 0
        avg divisor:  divisor_override, or
            count_include_pad:  (min(ih0 + kh, H + pad_h) - ih0) * (... w)   (padding counts,
                                                                    ceil_mode's overhang not)
            else:               (min(ih0 + kh, H) - max(ih0, 0)) * (... w)   (real pixels only)
        ceil_mode only changes Ho / Wo (torch's rule: a window that would start in the right
        padding is dropped); overhanging taps fall outside the image like padding does.
    adaptive avg: bin i of H covers [floor(i * H / Ho), ceil((i + 1) * H / Ho)); bins differ in
        size, so the loops run to the largest bin (constexpr) and mask the taps past each bin.
        Bins larger than WINDOW_TAPS (a global pool over a large image) take the window kernel
        instead: one program per (output pixel, channel block) loops over the bin's taps,
        flattened, BLOCK_K at a time, into a [BLOCK_K, BLOCK_N] f32 tile summed once at the end;
        nothing is unrolled per tap and the loop bound is the bin's own size.
    averages: f32 accumulation, an IEEE division (div_rn), the result stored in the input dtype.

Dtypes: f32 and f16 for all three; int8 and uint8 for max_pool2d. Offsets are 32-bit (tensors of
fewer than 2**31 elements). The source is generated text built by `jit.build` (no string
literals, comments or unknown names: `jit.check_identifiers`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import conv_common, host, jit
from fxforge.kernels.triton.codegen import TL
from fxforge.shapes import OpTypeError, window_out

OPS = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
_DTYPES = {"max_pool2d": ("f32", "f16", "i8", "u8"), "avg_pool2d": ("f32", "f16"),
           "adaptive_avg_pool2d": ("f32", "f16")}
WINDOW_TAPS = 16  # adaptive bins with more taps than this loop over the bin in BLOCK_K chunks

# Candidates for the autotuner (kernels/triton/autotune.py): pooling is memory-bound, so wide
# channel runs and enough warps to cover load latency (as for the depthwise conv).
CONFIGS: list[dict] = [
    {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4},
    {"BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8},
]
DEFAULT_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4}

Pair = tuple[int, int]


# --- geometry and checks ------------------------------------------------------------------------


def _pool_out(hw, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
              ceil_mode: bool) -> Pair:
    """(Ho, Wo) by torch's rule (ceil_mode included), or a ValueError."""
    if min(*kernel, *stride, *dilation) < 1 or min(padding) < 0:
        raise ValueError(f"pooling needs kernel {kernel}, stride {stride} and dilation "
                         f"{dilation} >= 1 and padding {padding} >= 0")
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"pooling padding {padding} must be at most half the kernel {kernel}")
    try:
        return tuple(window_out(n, k, s, p, d, bool(ceil_mode))
                     for n, k, s, p, d in zip(hw, kernel, stride, padding, dilation))
    except OpTypeError as e:
        raise ValueError(str(e)) from None


def _adaptive_out(output_size) -> Pair:
    out = conv_common.pair(output_size, "output_size")
    if min(out) < 0:
        raise ValueError(f"adaptive_avg_pool2d output_size {out} is negative")
    return out


def _out_shape(op: str, shape, attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    if op == "adaptive_avg_pool2d":
        hw = _adaptive_out(attrs["output_size"])
    else:
        pairs = [conv_common.pair(attrs[k], k) for k in ("kernel", "stride", "padding")]
        dilation = conv_common.pair(attrs.get("dilation", (1, 1)), "dilation")
        if op == "avg_pool2d":
            if dilation != (1, 1):
                raise ValueError("avg_pool2d has no dilation")
            if attrs.get("divisor_override") == 0:
                raise ValueError("avg_pool2d divisor_override must not be 0")
        hw = _pool_out(shape[2:], *pairs, dilation, attrs.get("ceil_mode", False))
    return (shape[0], shape[1], *hw)


def supports(op: str, in_type: TensorType, attrs: Mapping[str, Any]) -> str | None:
    """None when a kernel here runs `op` on an input of `in_type` with the node's `attrs`; else
    why not (the backend then falls back)."""
    if op not in OPS:
        return f"{op} is not a pooling kernel"
    shape = tuple(in_type.shape)
    if any(type(d) is not int for d in shape):
        return f"{op} needs a static shape, got {list(shape)}"
    if len(shape) != 4:
        return f"{op} needs a 4-D NCHW input, got rank {len(shape)}"
    if in_type.dtype not in _DTYPES[op]:
        return f"{op} kernel takes {' / '.join(_DTYPES[op])}, not {in_type.dtype}"
    try:
        out = _out_shape(op, shape, attrs)
    except (ValueError, TypeError, KeyError) as e:
        return f"{op}: {e}"
    if max(math.prod(shape), math.prod(out)) >= 2**31:
        return f"{op} needs 64-bit offsets (2**31 elements or more)"
    return None


def _input(x: torch.Tensor, op: str) -> tuple[torch.Tensor, bool]:
    """x as a dense NHWC or NCHW tensor, and whether it is channels-last."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op} input must be a 4-D [B, C, H, W] tensor, got {got}")
    dtype = dtypes.from_torch(x.dtype)
    if dtype not in _DTYPES[op]:
        raise ValueError(f"{op} kernel takes {' / '.join(_DTYPES[op])}, not {x.dtype}")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1
    if not channels_last and not x.is_contiguous():
        from fxforge.kernels.triton import layout

        x, channels_last = layout.memory_format(x, "nhwc"), True
    if x.numel() >= 2**31:
        raise ValueError(f"{op} input has {x.numel()} elements; 32-bit offsets hold fewer than "
                         "2**31")
    return x, channels_last


def _output(x: torch.Tensor, out_shape, channels_last: bool) -> torch.Tensor:
    if math.prod(out_shape) >= 2**31:
        raise ValueError(f"output {list(out_shape)} needs 64-bit offsets (2**31 elements or more)")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _config(config: Mapping | None) -> dict:
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    for k, v in cfg.items():
        if k == "WINDOW" and v in (0, 1):
            continue
        if not isinstance(v, int) or v < 1 or (k.startswith("BLOCK") and v & (v - 1)):
            raise ValueError(f"config {k} must be a positive int (a power of two for blocks), "
                             f"got {v!r}")
    return cfg


# --- kernel source ------------------------------------------------------------------------------

_PIXELS = """
def {name}(
    x_ptr, y_ptr, M, N, H, W, HO, WO,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw,{params}
    KH: tl.constexpr, KW: tl.constexpr,{consts}
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ow = offs_m % WO
    oh = (offs_m // WO) % HO
    img = offs_m // (WO * HO)
    x_rows = x_ptr + img * sxb
    x_cols = (offs_n * sxc)[None, :]
{start}
    acc = tl.full((BLOCK_M, BLOCK_N), {init}, {acc})
    for r in range(KH):
        ih = {ih}
        row_ok = {row_ok}
        for s in tl.static_range(KW):
            iw = {iw}
            inside = {inside}
            xv = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + x_cols,
                         mask=inside[:, None] & mask_n[None, :], other={init})
            acc = {step}
{finish}
    y_off = img * syb + oh * syh + ow * syw
    tl.store(y_ptr + y_off[:, None] + (offs_n * syc)[None, :], res.to({out}),
             mask=mask_m[:, None] & mask_n[None, :])
"""

_WINDOW = """    ih0 = oh * SH - PH
    iw0 = ow * SW - PW"""
_WINDOW_TAP = dict(ih="ih0 + r * DH", row_ok="mask_m & (ih >= 0) & (ih < H)",
                   iw="iw0 + s * DW", inside="row_ok & (iw >= 0) & (iw < W)")
_WINDOW_CONSTS = ("\n    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,"
                  " DH: tl.constexpr, DW: tl.constexpr,")

_BINS = """    h0 = (oh * H) // HO
    h1 = ((oh + 1) * H + HO - 1) // HO
    w0 = (ow * W) // WO
    w1 = ((ow + 1) * W + WO - 1) // WO"""
_BIN_TAP = dict(ih="h0 + r", row_ok="mask_m & (ih < h1)", iw="w0 + s",
                inside="row_ok & (iw < w1)")

_DIVIDE = """    cnt = tl.where(mask_m, cnt, 1.0)
    res = tl.div_rn(acc, cnt[:, None])"""

_AVG_COUNT = {
    "override": "    cnt = tl.zeros((BLOCK_M,), tl.float32) + divisor",
    "include": ("    hend = tl.minimum(ih0 + KH, H + PH)\n"
                "    wend = tl.minimum(iw0 + KW, W + PW)\n"
                "    cnt = ((hend - ih0) * (wend - iw0)).to(tl.float32)"),
    "exclude": ("    hn = tl.minimum(ih0 + KH, H) - tl.maximum(ih0, 0)\n"
                "    wn = tl.minimum(iw0 + KW, W) - tl.maximum(iw0, 0)\n"
                "    cnt = (hn * wn).to(tl.float32)"),
}

_ADAPTIVE_WINDOW = """
def adaptive_window_kernel(
    x_ptr, y_ptr, M, N, H, W, HO, WO,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    m = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    ow = m % WO
    oh = (m // WO) % HO
    img = m // (WO * HO)
    h0 = (oh * H) // HO
    h1 = ((oh + 1) * H + HO - 1) // HO
    w0 = (ow * W) // WO
    w1 = ((ow + 1) * W + WO - 1) // WO
    bw = w1 - w0
    count = (h1 - h0) * bw
    x_img = x_ptr + img * sxb
    x_cols = (offs_n * sxc)[None, :]
    taps = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_K, BLOCK_N), tl.float32)
    for start in range(0, count, BLOCK_K):
        t = start + taps
        ih = h0 + t // bw
        iw = w0 + t % bw
        xv = tl.load(x_img + (ih * sxh + iw * sxw)[:, None] + x_cols,
                     mask=(t < count)[:, None] & mask_n[None, :], other=0.0)
        acc = acc + xv.to(tl.float32)
    res = tl.div_rn(tl.sum(acc, 0), tl.zeros((BLOCK_N,), tl.float32) + count.to(tl.float32))
    y_off = img * syb + oh * syh + ow * syw
    tl.store(y_ptr + y_off + offs_n * syc, res.to({out}), mask=mask_n)
"""


def _max_source(dtype: str) -> str:
    floating = dtypes.is_float(dtype)
    low = "-1e400" if floating else str(int(torch.iinfo(dtypes.to_torch(dtype)).min))
    nan = ", propagate_nan=tl.PropagateNan.ALL" if floating else ""
    return _PIXELS.format(name="max_pool_kernel", params="", consts=_WINDOW_CONSTS,
                          start=_WINDOW, init=low, acc=TL[dtype], **_WINDOW_TAP,
                          step=f"tl.maximum(acc, xv{nan})", finish="    res = acc",
                          out=TL[dtype])


def _avg_source(dtype: str, count: str) -> str:
    params = " divisor," if count == "override" else ""
    return _PIXELS.format(name="avg_pool_kernel", params=params, consts=_WINDOW_CONSTS,
                          start=_WINDOW, init="0.0", acc="tl.float32", **_WINDOW_TAP,
                          step="acc + xv.to(tl.float32)",
                          finish=_AVG_COUNT[count] + "\n" + _DIVIDE, out=TL[dtype])


def _adaptive_source(dtype: str) -> str:
    cnt = "    cnt = ((h1 - h0) * (w1 - w0)).to(tl.float32)\n"
    return _PIXELS.format(name="adaptive_pool_kernel", params="", consts="", start=_BINS,
                          init="0.0", acc="tl.float32", **_BIN_TAP,
                          step="acc + xv.to(tl.float32)", finish=cnt + _DIVIDE, out=TL[dtype])


def _build(source: str, name: str) -> Any:
    return jit.build(jit.HEADER + source.lstrip("\n"), name)  # cached by source and mode


# --- host wrappers ------------------------------------------------------------------------------


def _shape_args(x: torch.Tensor, y: torch.Tensor) -> list[int]:
    b, c, h, w = x.shape
    return [b * y.shape[2] * y.shape[3], c, h, w, y.shape[2], y.shape[3], *x.stride(),
            *y.stride()]


def _launch_pixels(kernel, x, y, extra, consts, cfg) -> torch.Tensor:
    if y.numel():
        args = _shape_args(x, y)
        grid = (host.cdiv(args[0], cfg["BLOCK_M"]), host.cdiv(args[1], cfg["BLOCK_N"]))
        kernel[grid](x, y, *args, *extra, **consts, BLOCK_M=cfg["BLOCK_M"],
                     BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return y


def max_pool2d(x: torch.Tensor, *, kernel, stride, padding=(0, 0), dilation=(1, 1),
               ceil_mode: bool = False, config: Mapping | None = None) -> torch.Tensor:
    """max_pool2d of x [B, C, H, W] (f32, f16, int8 or uint8; channels-last or contiguous) as in
    the reference: padding is -inf (the integer dtype's min), NaN propagates. Returns
    [B, C, Ho, Wo] of x's dtype, channels-last when x is."""
    x, channels_last = _input(x, "max_pool2d")
    geo = [conv_common.pair(v, n) for v, n in ((kernel, "kernel"), (stride, "stride"),
                                               (padding, "padding"), (dilation, "dilation"))]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo
    y = _output(x, (*x.shape[:2], *_pool_out(x.shape[2:], *geo, ceil_mode)), channels_last)
    kernel_fn = _build(_max_source(dtypes.from_torch(x.dtype)), "max_pool_kernel")
    consts = dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw)
    return _launch_pixels(kernel_fn, x, y, [], consts, _config(config))


def avg_pool2d(x: torch.Tensor, *, kernel, stride, padding=(0, 0), ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None,
               config: Mapping | None = None) -> torch.Tensor:
    """avg_pool2d of x [B, C, H, W] (f32 or f16; channels-last or contiguous) as in the
    reference: f32 sums divided by divisor_override, or by the window's count (padding counted
    when count_include_pad, ceil_mode's overhang never). Returns [B, C, Ho, Wo] of x's dtype,
    channels-last when x is."""
    x, channels_last = _input(x, "avg_pool2d")
    geo = [conv_common.pair(v, n) for v, n in ((kernel, "kernel"), (stride, "stride"),
                                               (padding, "padding"))]
    (kh, kw), (sh, sw), (ph, pw) = geo
    if divisor_override is not None and int(divisor_override) == 0:
        raise ValueError("avg_pool2d divisor_override must not be 0")
    y = _output(x, (*x.shape[:2], *_pool_out(x.shape[2:], *geo, (1, 1), ceil_mode)),
                channels_last)
    count = ("override" if divisor_override is not None else
             "include" if count_include_pad else "exclude")
    kernel_fn = _build(_avg_source(dtypes.from_torch(x.dtype), count), "avg_pool_kernel")
    extra = [float(divisor_override)] if divisor_override is not None else []
    consts = dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=1, DW=1)
    return _launch_pixels(kernel_fn, x, y, extra, consts, _config(config))


def _largest_bin(n: int, out: int) -> int:
    return max((-(-(i + 1) * n // out) - (i * n) // out for i in range(out)), default=0)


def adaptive_avg_pool2d(x: torch.Tensor, *, output_size, config: Mapping | None = None
                        ) -> torch.Tensor:
    """adaptive_avg_pool2d of x [B, C, H, W] (f32 or f16; channels-last or contiguous) to
    output_size (Ho, Wo), torch's bins [floor(i * H / Ho), ceil((i + 1) * H / Ho)); f32 sums.
    Returns [B, C, Ho, Wo] of x's dtype, channels-last when x is. config may hold BLOCK_M,
    BLOCK_N, BLOCK_K, num_warps, and WINDOW (1: the window kernel, 0: the pixel kernel; default:
    the window kernel for bins of more than WINDOW_TAPS taps)."""
    x, channels_last = _input(x, "adaptive_avg_pool2d")
    ho, wo = _adaptive_out(output_size)
    y = _output(x, (*x.shape[:2], ho, wo), channels_last)
    if y.numel() == 0:
        return y
    kh, kw = _largest_bin(x.shape[2], ho), _largest_bin(x.shape[3], wo)
    cfg = _config(config)
    window = bool(cfg.pop("WINDOW", int(kh * kw > WINDOW_TAPS)))
    out = TL[dtypes.from_torch(x.dtype)]
    if not window:
        kernel_fn = _build(_adaptive_source(dtypes.from_torch(x.dtype)), "adaptive_pool_kernel")
        return _launch_pixels(kernel_fn, x, y, [], dict(KH=max(kh, 1), KW=max(kw, 1)), cfg)
    kernel_fn = _build(_ADAPTIVE_WINDOW.format(out=out), "adaptive_window_kernel")
    args = _shape_args(x, y)
    grid = (args[0], host.cdiv(args[1], cfg["BLOCK_N"]))
    kernel_fn[grid](x, y, *args, BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"],
                    num_warps=cfg["num_warps"])
    return y


__all__ = ["CONFIGS", "DEFAULT_CONFIG", "OPS", "WINDOW_TAPS", "supports", "max_pool2d",
           "avg_pool2d", "adaptive_avg_pool2d"]
