"""quantize, dequantize and dynamic_quantize (docs/quantized-ir.md) as generated Triton kernels.

The contract is exact: the same float32 operations in the same order as the numpy reference,
with round-half-to-even. Two GPU details decide that:
- `x / s` on the GPU is an approximate division (div.full.f32); `tl.math.div_rn` is the
  IEEE-rounded one, so every quantizing division uses it.
- rint: for |v| <= 2**22, (v + 1.5 * 2**23) - 1.5 * 2**23 is v rounded half-to-even (the sum
  lies in [2**23, 2**24], where the float32 spacing is 1, and the subtraction is exact). v is
  clamped to +-2**22 first; any |v| that large saturates the int8 result either way.

    quantize:           q = clip(rint(div_rn(x, s)) + zp, -128, 127)
    dequantize:         y = f32(int32(q) - zp) * s
    dynamic, row:       per row (BLOCK_M rows a program; rows longer than BLOCK_N loop twice)
                        amax = max(|x|) (NaN if any NaN, as numpy);  s = amax / 127
                        s = 1 where not s > 0;  q = clip(rint(div_rn(x, s)), -127, 127)
    dynamic, tensor:    pass 1: per program, amax of its slice of blocks -> partial[P]
                        pass 2: every program reduces the P partials to s (program 0 stores
                        it) and quantizes its block: no third launch, no atomics
NaN inputs give an unspecified int8 (as the contract says).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fxforge.kernels.triton import jit
from fxforge.kernels.triton.elementwise import cdiv, next_pow2

BLOCK = 1024
MAX_PARTIALS = 1024
ROW_TILE = 4096


def supports(op: str, x_dtype: str, attrs: Mapping[str, Any]) -> str | None:
    """None when quantize / dequantize / dynamic_quantize of `x_dtype` has a kernel here."""
    want = {"quantize": "f32", "dequantize": "i8", "dynamic_quantize": "f32"}.get(op)
    if want is None:
        return f"{op} is not a quantization kernel"
    if x_dtype != want:
        return f"{op} takes {want}, got {x_dtype}"
    if op == "dynamic_quantize" and attrs.get("mode") not in ("row", "tensor"):
        return f"dynamic_quantize mode {attrs.get('mode')!r}"
    return None


# --- generated source ---------------------------------------------------------------------------


def _rint_clip(v: str, lo: int, hi: int, zero_point: str = "") -> str:
    """Source of clip(rint(v) + zero_point, lo, hi) as int8 (zero_point: an f32 expression)."""
    plus = f" + {zero_point}" if zero_point else ""
    return (f"tl.minimum(tl.maximum((tl.minimum(tl.maximum({v}, -4194304.0), 4194304.0)"
            f" + 12582912.0 - 12582912.0){plus}, {float(lo)}), {float(hi)}).to(tl.int8)")


_FLAT = ("    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)\n"
         "    mask = offs < n\n")

_QUANTIZE = ("def quantize_kernel(x, q, n, scale, zero_point, BLOCK: tl.constexpr):\n" + _FLAT
             + "    v = tl.math.div_rn(tl.load(x + offs, mask=mask, other=0.0), scale)\n"
             + f"    tl.store(q + offs, {_rint_clip('v', -128, 127, '(zero_point + 0.0)')}"
             ", mask=mask)\n")

_DEQUANTIZE = ("def dequantize_kernel(q, y, n, scale, zero_point, BLOCK: tl.constexpr):\n" + _FLAT
               + "    c = tl.load(q + offs, mask=mask, other=0).to(tl.int32) - zero_point\n"
               "    tl.store(y + offs, c.to(tl.float32) * scale, mask=mask)\n")

# |x| with NaN kept (tl.max alone may drop NaN: GPU max.f32 returns the other operand)
_AMAX = ("{i}a = tl.abs(t)\n"
         "{i}amax = tl.maximum(amax, tl.max(a, {axis}))\n"
         "{i}nan = tl.maximum(nan, tl.max(tl.where(a == a, 0, 1), {axis}))\n")
_SCALE = ("{i}s = tl.math.div_rn(amax, 127.0)\n"
          "{i}s = tl.where(nan > 0, 1.0, tl.where(s > 0, s, 1.0))\n")


def _row_source(one_pass: bool) -> str:
    tile = ("{i}c = {start} + cols\n"
            "{i}mask = row_mask[:, None] & (c[None, :] < n_cols)\n"
            "{i}t = tl.load(x + base + c[None, :], mask=mask, other=0.0)\n")
    quant = ("{i}v = tl.math.div_rn(t, s[:, None])\n"
             "{i}tl.store(q + base + c[None, :], " + _rint_clip("v", -127, 127) + ", mask=mask)\n")
    lines = ("def dynamic_row_kernel(x, q, scales, n_rows, n_cols, BLOCK_M: tl.constexpr, "
             "BLOCK_N: tl.constexpr):\n"
             "    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
             "    row_mask = rows < n_rows\n"
             "    base = rows.to(tl.int64)[:, None] * n_cols\n"
             "    cols = tl.arange(0, BLOCK_N)\n"
             "    amax = tl.zeros([BLOCK_M], tl.float32)\n"
             "    nan = tl.zeros([BLOCK_M], tl.int32)\n")
    if one_pass:
        lines += (tile.format(i="    ", start="0") + _AMAX.format(i="    ", axis=1)
                  + _SCALE.format(i="    ") + quant.format(i="    "))
    else:
        loop = "    for start in range(0, n_cols, BLOCK_N):\n"
        lines += (loop + tile.format(i="        ", start="start")
                  + _AMAX.format(i="        ", axis=1) + _SCALE.format(i="    ")
                  + loop + tile.format(i="        ", start="start") + quant.format(i="        "))
    return lines + "    tl.store(scales + rows, s, mask=row_mask)\n"


_TENSOR_PARTIAL = (
    "def dynamic_partial_kernel(x, partial, flags, n, steps, BLOCK: tl.constexpr):\n"
    "    pid = tl.program_id(0)\n"
    "    amax = tl.zeros([BLOCK], tl.float32)\n"
    "    nan = tl.zeros([BLOCK], tl.int32)\n"
    "    for k in range(0, steps):\n"
    "        offs = (pid.to(tl.int64) * steps + k) * BLOCK + tl.arange(0, BLOCK)\n"
    "        t = tl.load(x + offs, mask=offs < n, other=0.0)\n"
    "        a = tl.abs(t)\n"
    "        amax = tl.maximum(amax, a)\n"
    "        nan = tl.maximum(nan, tl.where(a == a, 0, 1))\n"
    "    tl.store(partial + pid, tl.max(amax, 0))\n"
    "    tl.store(flags + pid, tl.max(nan, 0))\n")

_TENSOR_QUANT = (
    "def dynamic_tensor_kernel(x, q, partial, flags, scales, n, n_partials, BLOCK: tl.constexpr,"
    " PARTIALS: tl.constexpr):\n"
    "    p = tl.arange(0, PARTIALS)\n"
    "    amax = tl.max(tl.load(partial + p, mask=p < n_partials, other=0.0), 0)\n"
    "    nan = tl.max(tl.load(flags + p, mask=p < n_partials, other=0), 0)\n"
    + _SCALE.format(i="    ") + _FLAT
    + "    v = tl.math.div_rn(tl.load(x + offs, mask=mask, other=0.0), s)\n"
    f"    tl.store(q + offs, {_rint_clip('v', -127, 127)}, mask=mask)\n"
    "    tl.store(scales, s, mask=tl.program_id(0) == 0)\n")


def _build(source: str, name: str) -> Any:
    return jit.build(jit.HEADER + source, name)


# --- host wrappers ------------------------------------------------------------------------------


def _f32_scale(scale: float) -> float:
    s = float(np.float32(scale))
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be finite and > 0 as float32, got {scale!r}")
    return s


def _check(x: torch.Tensor, dtype: torch.dtype, what: str, zero_point: int | None = None):
    if x.dtype != dtype:
        raise ValueError(f"{what} takes {dtype}, got {x.dtype}")
    if zero_point is not None and not -128 <= int(zero_point) <= 127:
        raise ValueError(f"{what}: zero_point {zero_point} is not in [-128, 127]")


def _per_tensor(source: str, name: str, x: torch.Tensor, out_dtype: torch.dtype, scale: float,
                zero_point: int) -> torch.Tensor:
    """Run one of the per-tensor kernels (quantize / dequantize) over x, flattened."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if x.numel():
        kernel = _build(source, name)
        kernel[(cdiv(x.numel(), BLOCK),)](x, out, x.numel(), _f32_scale(scale), int(zero_point),
                                          BLOCK=BLOCK)
    return out


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """f32 -> int8 of the same shape: clip(rint(x / f32(scale)) + zero_point, -128, 127)."""
    _check(x, torch.float32, "quantize", zero_point)
    return _per_tensor(_QUANTIZE, "quantize_kernel", x, torch.int8, scale, zero_point)


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """int8 -> f32 of the same shape: f32(int32(q) - zero_point) * f32(scale)."""
    _check(q, torch.int8, "dequantize", zero_point)
    return _per_tensor(_DEQUANTIZE, "dequantize_kernel", q, torch.float32, scale, zero_point)


def dynamic_quantize(x: torch.Tensor, mode: str, config: Mapping[str, int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """f32 x -> (int8 q of x's shape, f32 scale): symmetric, scale = max|x| / 127 per row (last
    dim; scale shape x.shape[:-1] + (1,)) or per tensor (shape (1,) * x.dim()); zero -> 1."""
    _check(x, torch.float32, "dynamic_quantize")
    if mode not in ("row", "tensor") or (mode == "row" and x.dim() == 0):
        raise ValueError(f"dynamic_quantize: mode {mode!r} of a rank-{x.dim()} tensor "
                         "(row needs rank >= 1; modes: row, tensor)")
    cfg = dict(config or {})
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if mode == "row":
        n_cols = x.shape[-1]
        scales = torch.ones((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
        n_rows = scales.numel()
        if x.numel() == 0:
            return q, scales
        block_n = cfg.get("BLOCK_N", min(ROW_TILE, max(16, next_pow2(n_cols))))
        block_m = cfg.get("BLOCK_M", max(1, ROW_TILE // block_n))
        kernel = _build(_row_source(n_cols <= block_n), "dynamic_row_kernel")
        kernel[(cdiv(n_rows, block_m),)](x, q, scales, n_rows, n_cols, BLOCK_M=block_m,
                                         BLOCK_N=block_n, num_warps=cfg.get("num_warps", 4))
        return q, scales
    scales = torch.ones((1,) * x.dim(), dtype=torch.float32, device=x.device)
    n = x.numel()
    if n == 0:
        return q, scales
    block = cfg.get("BLOCK", BLOCK)
    blocks = cdiv(n, block)
    steps = cdiv(blocks, min(blocks, cfg.get("PARTIALS", MAX_PARTIALS)))
    n_partials = cdiv(blocks, steps)
    partial = torch.empty(n_partials, dtype=torch.float32, device=x.device)
    flags = torch.empty(n_partials, dtype=torch.int32, device=x.device)
    _build(_TENSOR_PARTIAL, "dynamic_partial_kernel")[(n_partials,)](
        x, partial, flags, n, steps, BLOCK=block)
    _build(_TENSOR_QUANT, "dynamic_tensor_kernel")[(blocks,)](
        x, q, partial, flags, scales, n, n_partials, BLOCK=block,
        PARTIALS=max(16, next_pow2(n_partials)))
    return q, scales
