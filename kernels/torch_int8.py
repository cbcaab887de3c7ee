"""The quantized ops of docs/quantized-ir.md in torch, with real int8 arithmetic (`cpu-int8`).

Two ways to run `qlinear` / `qconv2d`, both held to the contract (int32 accumulators exact,
float32 epilogue in the contract's order up to float32 rounding, int8 outputs within 1 LSB):

- Generic (`IMPLS`; any device, any weight): exact int32 accumulators from `torch._int_mm`
  where it is exact on this machine (always on CUDA; on the CPU as `int8_scheme` found it),
  else from float32 GEMMs of the integer values, split along K so every partial sum stays
  below 2**24 (convolutions through a channels-last int8 im2col; grouped ones through an exact
  float convolution), then the float32 epilogue step by step in torch.
- Prepared (`PREPARE`, applied once when a program is built; CPU with oneDNN, constant weights,
  and a layer oneDNN computes exactly here: `int8_scheme.onednn_takes`): the weight is reordered
  once for oneDNN's int8 matmul / convolution (AMX, VNNI or AVX2 brgemm kernels, several times
  faster than the generic path), and the epilogue's leading steps that oneDNN has as post-ops
  (relu, gelu, a residual add, the requantization) run inside the kernel, so a layer reads int8
  and writes int8 without a float32 round trip through memory. Steps it cannot fuse run in
  torch on its float32 output, exactly as in the generic path.

oneDNN scales the accumulator as `acc * (x_scale * w_scale[n]) + bias` like the contract, and
requantizes by multiplying with 1 / out_scale (hence the 1-LSB allowance on int8 outputs). Its
convolution reads uint8 activations: int8 `q` with zero point `z` is the uint8 `q ^ 0x80 = q +
128` with zero point `z + 128`, one byte-wide pass. A 1x1 convolution skips that pass: it runs as
the int8 matmul on the channels-last pixel rows. Layers too small for oneDNN's fast kernels
(`MATMUL_MIN_ROWS`, `MATMUL_MIN_K`) take the generic path. Outputs of convolutions are NCHW
tensors in channels-last memory, the layout the next convolution reads.

The standalone `quantize` / `dynamic_quantize` divide by the scale (not multiply by its
reciprocal) and round half to even, bit-exact with the numpy reference. `max_pool2d` here is
the torch backend's for int8 (torch's own is slow on int8 and refuses channels-last int8).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fxforge.kernels import int8_scheme

Tensor = torch.Tensor
# FXFORGE_INT8_ONEDNN=0 keeps every layer on the generic path (to compare or debug).
USE_ONEDNN = os.environ.get("FXFORGE_INT8_ONEDNN", "1") != "0"


# --- elementwise quantization ------------------------------------------------------------------
# Each runs over cache-sized pieces (the few torch ops of a formula then stream through L2
# instead of memory, about twice as fast as whole-tensor ops), in the tensor's storage order
# (the result keeps its memory format: channels-last stays channels-last).

CHUNK = 1 << 18  # elements per piece: a 1 MiB float32 scratch buffer


def _storage_order(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(out, x_flat, out_flat): an empty tensor like x with `dtype`, and 1-D views of x and of it
    in memory order (x is copied first when it is neither contiguous nor channels-last)."""
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    if not cl:
        x = x.contiguous()
    out = torch.empty_like(x, dtype=dtype)  # a dense x: the same strides
    if cl:
        return out, x.permute(0, 2, 3, 1).reshape(-1), out.permute(0, 2, 3, 1).reshape(-1)
    return out, x.view(-1), out.view(-1)


def _quantize_into(dst: Tensor, src: Tensor, scale: float | Tensor, zero_point: int, lo: int,
                   hi: int, buf: Tensor) -> None:
    """dst = clamp(round(src / scale) + zero_point, lo, hi) through the float32 scratch `buf`."""
    b = buf[:src.numel()].view(src.shape)
    torch.div(src, scale, out=b)  # by a python float: float32 division by f32(scale)
    b.round_()  # half to even
    if zero_point:
        b.add_(float(zero_point))
    b.clamp_(lo, hi)
    dst.copy_(b)


def requantize(y: Tensor, scale: float, zero_point: int) -> Tensor:
    """clamp(round(y / f32(scale)) + zero_point, -128, 127) as int8; `y` is not modified."""
    out, src, dst = _storage_order(y.float(), torch.int8)
    buf = torch.empty(min(CHUNK, src.numel()), device=y.device)
    for i in range(0, src.numel(), CHUNK):
        _quantize_into(dst[i:i + CHUNK], src[i:i + CHUNK], float(scale), zero_point, -128, 127,
                       buf)
    return out


def quantize(x: Tensor, *, scale: float, zero_point: int) -> Tensor:
    return requantize(x, scale, zero_point)


def dequantize(q: Tensor, *, scale: float, zero_point: int) -> Tensor:
    """f32(int32(q) - zero_point) * f32(scale): q - zp is a small integer, exact in float32."""
    if not zero_point:
        return torch.mul(q, float(scale))  # int8 tensor * python float: float32 q * f32(scale)
    out, src, dst = _storage_order(q, torch.float32)
    for i in range(0, src.numel(), CHUNK):
        d = dst[i:i + CHUNK]
        d.copy_(src[i:i + CHUNK])
        d.sub_(float(zero_point))
        d.mul_(float(scale))
    return out


def dynamic_quantize(x: Tensor, *, mode: str) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with a scale per row (last dim) or per tensor, computed from max |x|:
    s = f32(amax) / 127 (1 where that is not > 0), q = clamp(round(x / s), -127, 127)."""
    x = x.float()
    if mode == "tensor":
        keep = (1,) * x.dim()
        amax = x.abs().amax().reshape(keep) if x.numel() else x.new_zeros(keep)
        s = amax / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        out, src, dst = _storage_order(x, torch.int8)
        buf = torch.empty(min(CHUNK, src.numel()), device=x.device)
        for i in range(0, src.numel(), CHUNK):
            _quantize_into(dst[i:i + CHUNK], src[i:i + CHUNK], s.reshape(()), 0, -127, 127, buf)
        return out, s
    if mode != "row":
        raise ValueError(f"dynamic_quantize mode must be 'row' or 'tensor', got {mode!r}")
    k = x.shape[-1]
    rows = x.reshape(math.prod(x.shape[:-1]), k).contiguous()
    s = torch.ones(rows.shape[0], 1, device=x.device)
    q = torch.empty(rows.shape, dtype=torch.int8, device=x.device)
    if k:
        step = max(1, CHUNK // k)
        buf = torch.empty(min(step, rows.shape[0]) * k, device=x.device)
        for i in range(0, rows.shape[0], step):
            src, sc = rows[i:i + step], s[i:i + step]
            b = buf[:src.numel()].view(src.shape)
            torch.abs(src, out=b)
            torch.amax(b, dim=1, keepdim=True, out=sc)
            sc.div_(127.0)
            sc.masked_fill_(~(sc > 0), 1.0)  # an all-zero (or NaN) row gets scale 1
            _quantize_into(q[i:i + step], src, sc, 0, -127, 127, buf)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


# --- exact int32 accumulators ------------------------------------------------------------------


def _int_mm_takes(a: Tensor, b: Tensor) -> bool:
    """Whether torch._int_mm computes a [M, K] @ b [K, N]: on CPU any sizes and strides; on
    CUDA only M > 16 and K, N multiples of 8."""
    if a.device.type == "cpu":
        return True
    if a.device.type == "cuda":
        m, k = a.shape
        return m > 16 and k % 8 == 0 and b.shape[1] % 8 == 0
    return False


def _float32_is_ieee(device: torch.device) -> bool:
    """float32 matmuls and convolutions round like IEEE float32 (no bf16 / tf32 shortcuts)."""
    if device.type == "cuda":
        return not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return (torch.get_float32_matmul_precision() == "highest"
            and torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")
            and torch.backends.mkldnn.conv.fp32_precision in ("none", "ieee"))


# float32 adds integers below 2**24 exactly, in any order: int8 x int8 products are at most
# 128 * 128, so a dot product of up to 1024 of them is exact.
FLOAT_EXACT_K = 2**24 // (128 * 128)


def float_int_mm(a: Tensor, b: Tensor) -> Tensor:
    """int8 a [M, K] @ int8 b [K, N] as exact int32 through float32 matmuls of K-slices of at
    most FLOAT_EXACT_K (float64 where float32 matmuls are not IEEE here)."""
    if not _float32_is_ieee(a.device):
        return torch.matmul(a.double(), b.double()).to(torch.int32)
    k = a.shape[1]
    acc = torch.matmul(a[:, :FLOAT_EXACT_K].float(), b[:FLOAT_EXACT_K].float()).to(torch.int32)
    for k0 in range(FLOAT_EXACT_K, k, FLOAT_EXACT_K):
        part = torch.matmul(a[:, k0:k0 + FLOAT_EXACT_K].float(), b[k0:k0 + FLOAT_EXACT_K].float())
        acc.add_(part.to(torch.int32))
    return acc


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """int8 a [M, K] @ int8 b [K, N] as exact int32: `_int_mm` where it takes the operands and
    is exact and fast on this machine (oneDNN's AVX2 kernels behind it can saturate or crawl),
    else `float_int_mm`."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    if k == 1:  # an outer product; _int_mm misreads a [1, N] operand's strides (torch 2.13 CPU)
        return a.to(torch.int32) * b.to(torch.int32)
    if _int_mm_takes(a, b) and (a.device.type != "cpu" or int8_scheme.detect().int_mm):
        return torch._int_mm(a, b)
    return float_int_mm(a, b)


@dataclass(frozen=True)
class GemmWeight:
    """A weight as the int8 GEMM reads it: `mat` int8 [N, K] row-major (a conv weight in its
    channels-last patch order kh, kw, Cin) and its row sums, which turn sum x * w into
    sum (x - zp) * w: acc = x @ mat.T - zp * row_sum."""

    mat: Tensor
    row_sum: Tensor

    @staticmethod
    def of(w: Tensor) -> GemmWeight:
        mat = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(w.shape[0], -1)
        mat = mat.contiguous()
        return GemmWeight(mat, mat.sum(dim=1, dtype=torch.int32))

    def acc(self, a: Tensor, x_zero_point: int) -> Tensor:
        """a int8 [M, K] -> exact int32 [M, N] of sum_k (a - x_zero_point) * w."""
        acc = int_mm(a, self.mat.t())  # the [K, N] view of the row-major weight: _int_mm's best
        if x_zero_point:
            acc.sub_(self.row_sum * x_zero_point)
        return acc


def qlinear_acc(x: Tensor, w: Tensor, x_zero_point: int,
                gemm: GemmWeight | None = None) -> Tensor:
    """acc[..., n] = sum_k (int32(x[..., k]) - x_zero_point) * int32(w[n, k]), int32."""
    gemm = gemm or GemmWeight.of(w)
    acc = gemm.acc(x.reshape(-1, x.shape[-1]), x_zero_point)
    return acc.reshape(*x.shape[:-1], w.shape[0])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _exact_float_dtype(k: int, device: torch.device) -> torch.dtype:
    """float32 adds integers below 2**24 exactly in any order; a float32 convolution qualifies
    while its dot products stay below that (and the backend is not told to use bf16/tf32)."""
    ieee = _float32_is_ieee(device)
    return torch.float32 if ieee and k * 255 * 128 < 2**24 else torch.float64


def qconv2d_acc(x: Tensor, w: Tensor, x_zero_point: int, stride, padding, dilation, groups: int,
                gemm: GemmWeight | None = None) -> Tensor:
    """conv2d(int32(x) - x_zero_point, int32(w)) as int32 [B, Cout, Ho, Wo] (x padded with its
    zero point); the result is channels-last in memory.

    groups == 1: channels-last im2col on int8 (pad with the zero point, one strided gather) and
    `_int_mm`; a 1x1 stride-1 conv is a GEMM on the NHWC view itself. Grouped convolutions run
    as an exact float convolution of the integer values."""
    (s0, s1), (p0, p1), (d0, d1) = _pair(stride), _pair(padding), _pair(dilation)
    b, c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    if groups != 1:
        dtype = _exact_float_dtype(cin_g * kh * kw, x.device)
        xf = x.to(dtype)
        if x_zero_point:
            xf.sub_(x_zero_point)
        acc = F.conv2d(xf, w.to(dtype), None, (s0, s1), (p0, p1), (d0, d1), groups)
        return acc.to(torch.int32)
    ho = (h + 2 * p0 - d0 * (kh - 1) - 1) // s0 + 1
    wo = (wd + 2 * p1 - d1 * (kw - 1) - 1) // s1 + 1
    nhwc = x.permute(0, 2, 3, 1)
    if kh == kw == 1 and (s0, s1) == (1, 1) and (p0, p1) == (0, 0):
        patches = nhwc.reshape(b * h * wd, c)  # a view when x is channels-last
    else:
        if p0 or p1:
            nhwc = F.pad(nhwc, (0, 0, p1, p1, p0, p0), value=x_zero_point)
        nhwc = nhwc.contiguous()
        sb, sh, sw, sc = nhwc.stride()
        patches = nhwc.as_strided((b, ho, wo, kh, kw, c),
                                  (sb, sh * s0, sw * s1, sh * d0, sw * d1, sc))
        # the one copy; contiguous() as well, because with a size-1 dim reshape may return a
        # view with strides that `_int_mm` misreads (one output column: wrong values)
        patches = patches.reshape(b * ho * wo, kh * kw * c).contiguous()
    acc = (gemm or GemmWeight.of(w)).acc(patches, x_zero_point)
    return acc.view(b, ho, wo, cout).permute(0, 3, 1, 2)


# --- the float32 epilogue ----------------------------------------------------------------------


def _run_epilogue(y: Tensor, inputs: Sequence[Tensor], steps: Sequence[Any]) -> Tensor:
    if not steps:
        return y
    # Imported here: torch_backend imports this module to register IMPLS (no import cycle).
    from fxforge.kernels.torch_backend import _epilogue

    return _epilogue(y, inputs, steps)


def _finish(y: Tensor, inputs: Sequence[Tensor], steps: Sequence[Any], out_dtype: str,
            out_scale: float | None, out_zero_point: int) -> Tensor:
    y = _run_epilogue(y, inputs, steps)
    return y if out_dtype == "f32" else requantize(y, out_scale, out_zero_point)


def _scale_and_bias(acc: Tensor, inputs: Sequence[Tensor], has_bias: bool, dynamic: bool,
                    x_scale: float | None, x_scale_shape: tuple[int, ...]) -> Tensor:
    """y = f32(acc) * m (+ bias) with m = f32(x_scale) * w_scale[n] (static) or x_scale[.., 0:1]
    * w_scale[n] (dynamic): `acc` is [M, N] (conv: NHWC rows), channels last."""
    w_scale = inputs[2].float()
    if dynamic:
        xs = inputs[3 + has_bias].float().reshape(x_scale_shape)
        m = xs * w_scale
    else:
        m = torch.tensor(x_scale, dtype=torch.float32, device=acc.device) * w_scale
    y = acc.to(torch.float32)
    y.mul_(m)
    if has_bias:
        y.add_(inputs[3].float())
    return y


# --- generic qlinear / qconv2d -----------------------------------------------------------------


def _qlinear_generic(inputs: Sequence[Tensor], attrs: dict, gemm: GemmWeight | None) -> Tensor:
    x, w = inputs[0], inputs[1]
    acc = qlinear_acc(x, w, attrs["x_zero_point"], gemm).reshape(-1, w.shape[0])
    y = _scale_and_bias(acc, inputs, attrs["has_bias"], attrs["dynamic"], attrs["x_scale"],
                        (-1, 1))
    y = y.reshape(*x.shape[:-1], w.shape[0])
    return _finish(y, inputs, attrs["epilogue"], attrs["out_dtype"], attrs["out_scale"],
                   attrs["out_zero_point"])


def _qconv2d_generic(inputs: Sequence[Tensor], attrs: dict, gemm: GemmWeight | None) -> Tensor:
    x, w = inputs[0], inputs[1]
    acc = qconv2d_acc(x, w, attrs["x_zero_point"], attrs["stride"], attrs["padding"],
                      attrs["dilation"], attrs["groups"], gemm)
    nhwc = acc.permute(0, 2, 3, 1)  # channel axis last: the scales broadcast over rows
    y = _scale_and_bias(nhwc, inputs, attrs["has_bias"], attrs["dynamic"], attrs["x_scale"],
                        (1, 1, 1, 1))
    return _finish(y.permute(0, 3, 1, 2), inputs, attrs["epilogue"], attrs["out_dtype"],
                   attrs["out_scale"], attrs["out_zero_point"])


def qlinear(*inputs: Tensor, **attrs: Any) -> Tensor:
    return _qlinear_generic(inputs, attrs, None)


def qconv2d(*inputs: Tensor, **attrs: Any) -> Tensor:
    return _qconv2d_generic(inputs, attrs, None)


# --- linear_int4 -------------------------------------------------------------------------------


def dequantize_int4(packed: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """u8 [N, K/2] (low nibble: column 2j, high: 2j + 1, each value + 8) -> f32 [N, K]."""
    lo = (packed & 0xF).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    w_int = torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)
    return w_int.to(torch.float32) * scales.float().repeat_interleave(group_size, dim=1)


def linear_int4(x: Tensor, packed: Tensor, scales: Tensor, bias: Tensor | None = None, *,
                group_size: int, has_bias: bool) -> Tensor:
    return F.linear(x, dequantize_int4(packed, scales, group_size), bias if has_bias else None)


# --- max_pool2d on int8 -------------------------------------------------------------------------


def max_pool2d(x: Tensor, *, kernel, stride, padding, dilation, ceil_mode) -> Tensor:
    """max_pool2d of an integer tensor as a running `torch.maximum` over the kh * kw strided
    views of its window offsets, in x's memory format. torch's own integer max_pool2d is not
    vectorized (several times slower than this) and refuses channels-last int8 inputs, which
    the int8 convolutions write."""
    from fxforge.shapes import window_out

    (kh, kw), (s0, s1), (p0, p1), (d0, d1) = (_pair(kernel), _pair(stride), _pair(padding),
                                              _pair(dilation))
    b, c, h, w = x.shape
    ho, wo = window_out(h, kh, s0, p0, d0, ceil_mode), window_out(w, kw, s1, p1, d1, ceil_mode)
    # pad with the dtype's minimum: left by the padding, right as far as the last window reaches
    low = torch.iinfo(x.dtype).min if not x.is_floating_point() else -math.inf
    bottom = max(0, (ho - 1) * s0 + d0 * (kh - 1) + 1 - h - p0)
    right = max(0, (wo - 1) * s1 + d1 * (kw - 1) + 1 - w - p1)
    if p0 or p1 or bottom or right:
        x = F.pad(x, (p1, right, p0, bottom), value=low)
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty((b, c, ho, wo), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i * d0:i * d0 + (ho - 1) * s0 + 1:s0,
                     j * d1:j * d1 + (wo - 1) * s1 + 1:s1]
            if i == j == 0:
                out.copy_(view)
            else:
                torch.maximum(out, view, out=out)
    return out


# --- prepared layers: oneDNN int8 kernels with fused post-ops -----------------------------------


def onednn_built() -> bool:
    """oneDNN int8 linear and conv ops in this torch build."""
    if not torch.backends.mkldnn.is_available():
        return False
    names = ("qlinear_prepack", "qlinear_pointwise", "qconv_prepack", "qconv2d_pointwise")
    return all(hasattr(torch.ops.onednn, n) for n in names)


def onednn_available(device: torch.device) -> bool:
    """oneDNN int8 ops for tensors on `device` (the CPU), unless turned off."""
    return USE_ONEDNN and device.type == "cpu" and onednn_built()


@dataclass(frozen=True)
class _Fusion:
    """The epilogue's leading steps oneDNN runs as post-ops: an optional residual add (the
    input index of its operand), then an optional unary op; `rest` runs in torch after."""

    add: int | None
    unary: tuple[str, list, str]  # (post-op name, its scalars, its algorithm)
    rest: tuple
    whole: bool  # everything fused: oneDNN writes the final dtype


_UNARY = {"relu": lambda attrs: ("relu", [], ""),
          "gelu": lambda attrs: ("gelu", [], attrs.get("approximate", "none"))}
_NO_UNARY = ("none", [], "")


def _plan(epilogue: Sequence[Any], unary_ops: Sequence[str]) -> _Fusion:
    steps = tuple(epilogue)
    i, add, unary = 0, None, _NO_UNARY
    if i < len(steps) and steps[i]["op"] == "add" and "operand" in steps[i]:
        add, i = steps[i]["operand"], i + 1
    if i < len(steps) and steps[i]["op"] in unary_ops and "operand" not in steps[i]:
        unary, i = _UNARY[steps[i]["op"]](steps[i].get("attrs", {})), i + 1
    return _Fusion(add, unary, steps[i:], i == len(steps))


def _static_scale(inputs: Sequence[Tensor], attrs: dict) -> float | None:
    """x's scale as one float: the static attribute, or a dynamic per-tensor scale's value;
    None for a dynamic per-row scale (which oneDNN cannot apply inside the kernel)."""
    if not attrs["dynamic"]:
        return attrs["x_scale"]
    xs = inputs[3 + attrs["has_bias"]]
    return float(xs.reshape(-1)[0]) if xs.numel() == 1 else None


class _OnednnLayer:
    """Shared by the linear and conv runners: the fusion plan and the float fallback."""

    unary_ops: tuple[str, ...] = ()

    def __init__(self, attrs: dict):
        self.attrs = attrs
        self.plan = _plan(attrs["epilogue"], self.unary_ops)
        self.unfused = _Fusion(None, _NO_UNARY, tuple(attrs["epilogue"]), not attrs["epilogue"])

    def __call__(self, *inputs: Tensor, **attrs: Any) -> Tensor:
        a = self.attrs
        x_scale = _static_scale(inputs, a)
        if x_scale is None:  # per-row scales: oneDNN gives acc * w_scale, torch the rest
            y = self.run(inputs, 1.0, False, self.unfused, "f32")
            y.mul_(inputs[3 + a["has_bias"]].reshape(*y.shape[:-1], 1))
            if a["has_bias"]:
                y.add_(inputs[3])
            return _finish(y, inputs, a["epilogue"], a["out_dtype"], a["out_scale"],
                           a["out_zero_point"])
        plan = self.plan
        if plan.add is not None and not self.takes_operand(inputs, plan.add):
            plan = self.unfused
        out_dtype = a["out_dtype"] if plan.whole else "f32"
        y = self.run(inputs, x_scale, a["has_bias"], plan, out_dtype)
        if plan.whole:
            return y
        return _finish(y, inputs, plan.rest, a["out_dtype"], a["out_scale"],
                       a["out_zero_point"])


# oneDNN's int8 matmul runs its fast brgemm kernels only from some size on: with a short
# reduction (K <= 16) or few rows and columns (e.g. M = 32, N <= 8) it falls back to a naive
# reference loop (seconds for [32768, 16] x [16, 64]). Measured on oneDNN 3.12 (torch 2.13):
# K >= 24 with M >= 64 always got brgemm. Smaller layers run on `_int_mm` (1x1 convs on oneDNN's
# convolution, which had no such fallback).
MATMUL_MIN_ROWS, MATMUL_MIN_K = 64, 24


class _OnednnLinear(_OnednnLayer):
    unary_ops = ("relu", "gelu")

    def __init__(self, w: Tensor, attrs: dict):
        super().__init__(attrs)
        self.n, self.k = w.shape
        self.packed = torch.ops.onednn.qlinear_prepack(w.contiguous(), None)
        self.w_zero = torch.zeros(self.n, dtype=torch.int64)
        self.gemm: GemmWeight | None = None  # made on first use, for sizes oneDNN runs slowly

    def __call__(self, *inputs: Tensor, **attrs: Any) -> Tensor:
        if inputs[0].numel() < MATMUL_MIN_ROWS * self.k or self.k < MATMUL_MIN_K:
            self.gemm = self.gemm or GemmWeight.of(inputs[1])
            return _qlinear_generic(inputs, self.attrs, self.gemm)
        return super().__call__(*inputs, **attrs)

    def takes_operand(self, inputs: Sequence[Tensor], i: int) -> bool:
        other = inputs[i]
        return (other.dtype == torch.float32
                and tuple(other.shape) == (*inputs[0].shape[:-1], self.n))

    def run(self, inputs, x_scale, with_bias, plan, out_dtype):
        x = inputs[0]
        other = None if plan.add is None else inputs[plan.add].reshape(-1, self.n)
        y = self.matmul(x.reshape(-1, self.k), other, inputs, x_scale, with_bias, plan,
                        out_dtype)
        return y.reshape(*x.shape[:-1], self.n)

    def matmul(self, x2, other, inputs, x_scale, with_bias, plan, out_dtype):
        """oneDNN on rows x2 [M, K] (and the residual rows `other` [M, N] if plan.add)."""
        a = self.attrs
        w_scale = inputs[2].float()
        bias = inputs[3].float() if with_bias else None
        i8 = out_dtype == "i8"
        o_scale, o_zp = (a["out_scale"], a["out_zero_point"]) if i8 else (1.0, 0)
        o_dtype = torch.int8 if i8 else torch.float32
        # uint8 rows (q ^ 0x80, zero point + 128): with int8 activations this oneDNN ran a
        # reference loop on an AVX-512 VNNI CPU (0.1 GOPS against 34-740 GOPS for uint8 on
        # [512, 512] x [512, 512], AMD EPYC, torch 2.13, 2026-12-07)
        xu = _as_uint8(x2)
        zp = a["x_zero_point"] + 128
        if other is None:
            return torch.ops.onednn.qlinear_pointwise(
                xu, x_scale, zp, self.packed, w_scale, self.w_zero, bias, o_scale, o_zp,
                o_dtype, *plan.unary)
        return torch.ops.onednn.qlinear_pointwise.binary(
            xu, x_scale, zp, self.packed, w_scale, self.w_zero, other, bias, o_scale, o_zp,
            o_dtype, 1.0, 0, "add", 1.0, *plan.unary)


class _OnednnConv1x1(_OnednnLinear):
    """A 1x1 convolution (no padding, one group) as oneDNN's int8 matmul on the channels-last
    rows [B * Ho * Wo, Cin] (a strided conv reads every s-th pixel), and a residual add that
    reads its operand instead of overwriting a copy."""

    def __init__(self, w: Tensor, w_scale: Tensor, attrs: dict):
        super().__init__(w.reshape(w.shape[0], w.shape[1]), attrs)
        self.stride = _pair(attrs["stride"])
        self.conv = _OnednnConv(w, w_scale, attrs)  # for the sizes the matmul runs slowly

    def __call__(self, *inputs: Tensor, **attrs: Any) -> Tensor:
        if self._pixels(inputs[0]).numel() < MATMUL_MIN_ROWS * self.k:
            return self.conv(*inputs, **attrs)
        return _OnednnLayer.__call__(self, *inputs, **attrs)

    def _pixels(self, x: Tensor) -> Tensor:
        return x[:, :, ::self.stride[0], ::self.stride[1]]

    def takes_operand(self, inputs: Sequence[Tensor], i: int) -> bool:
        b, _, ho, wo = self._pixels(inputs[0]).shape
        other = inputs[i]
        return other.dtype == torch.float32 and tuple(other.shape) == (b, self.n, ho, wo)

    def run(self, inputs, x_scale, with_bias, plan, out_dtype):
        x = self._pixels(inputs[0])
        b, _, ho, wo = x.shape
        rows = _row_major(x.permute(0, 2, 3, 1).reshape(-1, self.k))  # channels-last x: a view
        other = None
        if plan.add is not None:
            other = _row_major(inputs[plan.add].permute(0, 2, 3, 1).reshape(-1, self.n))
        y = self.matmul(rows, other, inputs, x_scale, with_bias, plan, out_dtype)
        return y.view(b, ho, wo, self.n).permute(0, 3, 1, 2)  # NCHW, channels-last


def _as_uint8(x: Tensor, memory_format=torch.contiguous_format) -> Tensor:
    """int8 q with zero point z is uint8 q ^ 0x80 with zero point z + 128: one byte-wide pass."""
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device, memory_format=memory_format)
    return torch.bitwise_xor(x.view(torch.uint8), 0x80, out=out)


def _row_major(rows: Tensor) -> Tensor:
    """`rows` with unit stride along its columns. oneDNN's int8 matmul takes column-major rows
    (an NCHW tensor seen as pixels x channels) but then runs a reference loop: 0.9 s instead of
    0.4 ms for [784, 64] x [64, 256] with a residual add (measured, oneDNN 3.12 / torch 2.13).
    The programs keep activations channels-last, so only tensors from elsewhere are copied."""
    return rows if rows.stride(-1) == 1 else rows.contiguous()


class _OnednnConv(_OnednnLayer):
    unary_ops = ("relu",)

    def __init__(self, w: Tensor, w_scale: Tensor, attrs: dict):
        super().__init__(attrs)
        self.cout = w.shape[0]
        self.geometry = ([*_pair(attrs["stride"])], [*_pair(attrs["padding"])],
                         [*_pair(attrs["dilation"])], attrs["groups"])
        # The scale and zero point given here are placeholders: each call passes its own.
        self.packed = torch.ops.onednn.qconv_prepack(w.contiguous(), w_scale.float().contiguous(),
                                                     1.0, 0, *self.geometry, None)
        self.w_zero = torch.zeros(self.cout, dtype=torch.int64)
        self.w_scale = w_scale.float().contiguous()
        self.kernel = tuple(w.shape[2:])

    def __call__(self, *inputs: Tensor, **attrs: Any) -> Tensor:
        # oneDNN's int8 convolution (torch 2.13) computes wrong values when the output is one
        # column wide with a horizontal stride > 1 (found by tests/test_quantize_pass.py):
        # such calls take the generic path
        if self.geometry[0][1] > 1 and self._shape(inputs[0])[3] == 1:
            return qconv2d(*inputs, **attrs)
        return super().__call__(*inputs, **attrs)

    def _shape(self, x: Tensor) -> tuple[int, int, int, int]:
        (s0, s1), (p0, p1), (d0, d1), _ = self.geometry
        (kh, kw), (h, w) = self.kernel, x.shape[2:]
        return (x.shape[0], self.cout, (h + 2 * p0 - d0 * (kh - 1) - 1) // s0 + 1,
                (w + 2 * p1 - d1 * (kw - 1) - 1) // s1 + 1)

    def takes_operand(self, inputs: Sequence[Tensor], i: int) -> bool:
        other = inputs[i]
        return other.dtype == torch.float32 and tuple(other.shape) == self._shape(inputs[0])

    def run(self, inputs, x_scale, with_bias, plan, out_dtype):
        a = self.attrs
        x = inputs[0]
        xu = _as_uint8(x, torch.channels_last)  # the layout oneDNN computes in
        zp = a["x_zero_point"] + 128
        bias = inputs[3].float() if with_bias else None
        if plan.add is None:
            i8 = out_dtype == "i8"
            o_scale, o_zp = (a["out_scale"], a["out_zero_point"]) if i8 else (1.0, 0)
            return torch.ops.onednn.qconv2d_pointwise(
                xu, x_scale, zp, self.packed, self.w_scale, self.w_zero, bias, *self.geometry,
                o_scale, o_zp, torch.int8 if i8 else torch.float32, plan.unary[0],
                plan.unary[1], plan.unary[2] or None)
        # oneDNN's sum post-op accumulates into its operand, in float32 only: a fresh copy of
        # the residual, channels-last, becomes the output buffer.
        accum = torch.empty(self._shape(x), dtype=torch.float32, device=x.device,
                            memory_format=torch.channels_last)
        accum.copy_(inputs[plan.add])
        y = torch.ops.onednn.qconv2d_pointwise.binary(
            xu, x_scale, zp, self.packed, self.w_scale, self.w_zero, accum, bias,
            *self.geometry, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0,
            plan.unary[0] if plan.unary[0] != "none" else None, plan.unary[1],
            plan.unary[2] or None)
        if out_dtype == "i8":  # the fused steps wrote float32; requantize it here
            return requantize(y, a["out_scale"], a["out_zero_point"])
        return y


def _generic_prepared(generic: Callable, w: Tensor) -> Callable[..., Tensor]:
    gemm = GemmWeight.of(w)
    return lambda *inputs, **attrs: generic(inputs, attrs, gemm)


def prepare_qlinear(consts: Sequence[Tensor | None], attrs: dict,
                    device: torch.device) -> Callable[..., Tensor] | None:
    """A runner for one qlinear node whose weight is a constant; None keeps the generic one."""
    w = consts[1]
    if w is None or w.dtype != torch.int8:
        return None
    if onednn_available(device) and w.numel() and int8_scheme.onednn_takes(w):
        return _OnednnLinear(w, dict(attrs))
    return _generic_prepared(_qlinear_generic, w)


def prepare_qconv2d(consts: Sequence[Tensor | None], attrs: dict,
                    device: torch.device) -> Callable[..., Tensor] | None:
    w, w_scale = consts[1], consts[2]
    if w is None or w.dtype != torch.int8:
        return None
    if (onednn_available(device) and w_scale is not None and w.numel()
            and int8_scheme.onednn_takes(w)):
        if (w.shape[1] >= MATMUL_MIN_K and w.shape[2:] == (1, 1)
                and _pair(attrs["padding"]) == (0, 0) and attrs["groups"] == 1):
            return _OnednnConv1x1(w, w_scale, dict(attrs))
        return _OnednnConv(w, w_scale, dict(attrs))
    if attrs["groups"] != 1:
        return None
    return _generic_prepared(_qconv2d_generic, w)


def prepare_linear_int4(consts: Sequence[Tensor | None], attrs: dict,
                        device: torch.device) -> Callable[..., Tensor] | None:
    """Dequantize a constant int4 weight once; each call is then a float32 linear."""
    packed, scales = consts[1], consts[2]
    if packed is None or scales is None:
        return None
    w = dequantize_int4(packed, scales, attrs["group_size"])

    def run(x, packed, scales, bias=None, *, group_size, has_bias):
        return F.linear(x, w, bias if has_bias else None)

    return run


# op -> impl, in TORCH_IMPLS' convention (input tensors, then the node's attributes)
IMPLS: dict[str, Callable[..., Any]] = {
    "quantize": quantize,
    "dequantize": dequantize,
    "dynamic_quantize": dynamic_quantize,
    "qlinear": qlinear,
    "qconv2d": qconv2d,
    "linear_int4": linear_int4,
}

# op -> prepare(constant inputs (None where not constant), attrs, device) -> a runner with the
# impl's signature, or None to keep the impl. Applied once per node when a program is built.
PREPARE: dict[str, Callable[..., Callable[..., Any] | None]] = {
    "qlinear": prepare_qlinear,
    "qconv2d": prepare_qconv2d,
    "linear_int4": prepare_linear_int4,
}
