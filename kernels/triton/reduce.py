"""Row kernels: softmax, log_softmax, layer_norm, and sum / mean / amax over any dims.

Every op is seen as rows: the reduced dims are made the last ones (a view when they already are,
a host copy otherwise), so the kernel reads [rows, N] with N contiguous. A program takes BLOCK_M
rows; statistics are float32 (float64 for f64 inputs) whatever the storage dtype.

    softmax / log_softmax (max-subtracted, so exp never overflows):
        N <= BLOCK_N:  t = row;  m = max(t);  e = exp(t - m);  s = sum(e)      # one read
                       y = e / s                |  y = (t - m) - log(s)
        N >  BLOCK_N:  online pass over chunks:  m' = max(m, max(chunk))
                                   s = s * exp(m - m') + sum(exp(chunk - m'));  m = m'
                       second pass writes y chunk by chunk                      # two reads
        (an all -inf prefix keeps s = 0 instead of exp(-inf + inf) = NaN; an all -inf row is
         NaN, as in the reference)
    layer_norm: mean = sum(t) / N;  var = sum((t - mean)**2) / N
                y = (t - mean) * (1 / sqrt(var + eps)) * w + b
        (long rows: one pass each for mean, variance and the output; no sum-of-squares cancel)
    sum / mean / amax over [O, R, I] (R reduced): I == 1: tiles [BLOCK_M, BLOCK_N] along rows;
        I > 1: tiles [BLOCK_N, BLOCK_I] down columns, so the loads stay contiguous either way.
        acc = elementwise accumulator tile over R chunks, reduced once at the end; amax
        propagates NaN like numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import jit
from fxforge.kernels.triton.codegen import TL
from fxforge.kernels.triton.elementwise import cdiv, next_pow2
from fxforge.shapes import norm_dims

MAX_BLOCK_N = 4096  # a row tile's width; longer rows loop
TILE = 4096  # elements per program tile (BLOCK_M * BLOCK_N)
OPS = ("softmax", "log_softmax", "layer_norm", "sum", "mean", "amax")


def supports(op: str, in_types: Sequence[TensorType], attrs: Mapping[str, Any]) -> str | None:
    """None when `op` (with the node's input types and attributes) has a kernel here."""
    if op not in OPS:
        return f"{op} is not a row kernel"
    x = in_types[0]
    if op in ("softmax", "log_softmax", "mean", "layer_norm") and not dtypes.is_float(x.dtype):
        return f"{op} needs a float input, got {x.dtype}"
    if op in ("softmax", "log_softmax") and len(x.shape) == 0:
        return f"{op} of a 0-d tensor"
    if op == "amax" and len(x.shape) and any(x.shape[d] == 0 for d in attrs["dims"]):
        return "amax over an empty dim has no value"
    return None


# --- generated source ---------------------------------------------------------------------------


def _acc(dtype: str) -> str:
    return "tl.float64" if dtype == "f64" else "tl.float32"


def _tile(n: int, config: Mapping[str, int] | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for rows of length n."""
    cfg = dict(config or {})
    block_n = cfg.get("BLOCK_N", min(MAX_BLOCK_N, max(16, next_pow2(n))))
    block_m = cfg.get("BLOCK_M", max(1, TILE // block_n))
    return block_m, block_n, cfg.get("num_warps", 4 if block_m * block_n <= 2048 else 8)


_ROWS = """    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    base = rows.to(tl.int64)[:, None] * n_cols
    cols = tl.arange(0, BLOCK_N)
"""


def _chunk(start: str, other: str, acc: str, i: str = "        ") -> str:
    """Load the row tile at columns start.. as `t` (masked lanes hold `other`)."""
    return (f"{i}c = {start} + cols\n"
            f"{i}mask = row_mask[:, None] & (c[None, :] < n_cols)\n"
            f"{i}t = tl.load(x + base + c[None, :], mask=mask, other={other}).to({acc})\n")


def _softmax_source(log: bool, one_pass: bool, acc: str, out: str) -> str:
    result = "shifted - tl.log(s)[:, None]" if log else "tl.exp(shifted) / s[:, None]"
    head = ("def softmax_kernel(x, y, n_rows, n_cols, BLOCK_M: tl.constexpr, "
            "BLOCK_N: tl.constexpr):\n" + _ROWS)
    if one_pass:
        body = (_chunk("0", "-1e400", acc, "    ")
                + "    m = tl.max(t, 1)\n"
                "    m = tl.where(m == -1e400, 0.0, m)\n"
                "    s = tl.sum(tl.exp(t - m[:, None]), 1)\n")
    else:
        body = (f"    m = tl.full([BLOCK_M], -1e400, {acc})\n"
                f"    s = tl.zeros([BLOCK_M], {acc})\n"
                "    for start in range(0, n_cols, BLOCK_N):\n" + _chunk("start", "-1e400", acc)
                + "        m_new = tl.maximum(m, tl.max(t, 1))\n"
                "        m_safe = tl.where(m_new == -1e400, 0.0, m_new)\n"
                "        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(t - m_safe[:, None]), 1)\n"
                "        m = m_new\n"
                "    m = tl.where(m == -1e400, 0.0, m)\n"
                "    for start in range(0, n_cols, BLOCK_N):\n" + _chunk("start", "-1e400", acc))
    indent = "    " if one_pass else "        "
    store = (f"{indent}shifted = t - m[:, None]\n"
             f"{indent}tl.store(y + base + c[None, :], ({result}).to({out}), mask=mask)\n")
    return head + body + store


def _layer_norm_source(one_pass: bool, acc: str, out: str) -> str:
    head = ("def layer_norm_kernel(x, w, b, y, n_rows, n_cols, eps, BLOCK_M: tl.constexpr, "
            "BLOCK_N: tl.constexpr):\n" + _ROWS)
    params = (f"{{i}}wv = tl.load(w + c, mask=c < n_cols, other=0.0).to({acc})\n"
              f"{{i}}bv = tl.load(b + c, mask=c < n_cols, other=0.0).to({acc})\n"
              f"{{i}}d = tl.where(mask, t - mean[:, None], 0.0)\n"
              f"{{i}}out = d * rstd[:, None] * wv[None, :] + bv[None, :]\n"
              f"{{i}}tl.store(y + base + c[None, :], out.to({out}), mask=mask)\n")
    if one_pass:
        return (head + _chunk("0", "0.0", acc, "    ")
                + "    mean = tl.sum(t, 1) / n_cols\n"
                "    d = tl.where(mask, t - mean[:, None], 0.0)\n"
                "    rstd = 1.0 / tl.sqrt_rn(tl.sum(d * d, 1) / n_cols + eps)\n"
                + params.format(i="    "))
    loop = "    for start in range(0, n_cols, BLOCK_N):\n" + _chunk("start", "0.0", acc)
    return (head + f"    total = tl.zeros([BLOCK_M], {acc})\n" + loop
            + "        total += tl.sum(t, 1)\n"
            "    mean = total / n_cols\n"
            f"    total = tl.zeros([BLOCK_M], {acc})\n" + loop
            + "        d = tl.where(mask, t - mean[:, None], 0.0)\n"
            "        total += tl.sum(d * d, 1)\n"
            "    rstd = 1.0 / tl.sqrt_rn(total / n_cols + eps)\n" + loop
            + params.format(i="        "))


def _reduce_source(op: str, columns: bool, in_dtype: str, acc: str, init: str, out: str) -> str:
    """sum / mean / amax over R of x viewed as [O, R, I]; `columns`: I > 1."""
    if columns:
        setup = ("    pid = tl.program_id(0)\n"
                 "    o = pid // tl.cdiv(n_inner, BLOCK_I)\n"
                 "    inner = (pid % tl.cdiv(n_inner, BLOCK_I)) * BLOCK_I + tl.arange(0, BLOCK_I)\n"
                 "    keep = inner < n_inner\n"
                 "    base = o.to(tl.int64) * n_red * n_inner\n"
                 "    red = tl.arange(0, BLOCK_N)\n"
                 f"    acc = tl.full([BLOCK_N, BLOCK_I], {init}, {acc})\n"
                 "    for start in range(0, n_red, BLOCK_N):\n"
                 "        r = start + red\n"
                 "        mask = (r[:, None] < n_red) & keep[None, :]\n"
                 "        at = base + r.to(tl.int64)[:, None] * n_inner + inner[None, :]\n")
        axis, dest, store_mask = 0, "o.to(tl.int64) * n_inner + inner", "keep"
    else:
        setup = ("    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
                 "    keep = rows < n_outer\n"
                 "    base = rows.to(tl.int64)[:, None] * n_red\n"
                 "    red = tl.arange(0, BLOCK_N)\n"
                 f"    acc = tl.full([BLOCK_M, BLOCK_N], {init}, {acc})\n"
                 "    for start in range(0, n_red, BLOCK_N):\n"
                 "        r = start + red\n"
                 "        mask = keep[:, None] & (r[None, :] < n_red)\n"
                 "        at = base + r[None, :]\n")
        axis, dest, store_mask = 1, "rows", "keep"
    load = "tl.load(x + at, mask=mask)" + (".to(tl.int8)" if in_dtype == "bool" else "")
    if op == "amax":
        step = (f"        acc = tl.where(mask, tl.maximum(acc, {load}, "
                "propagate_nan=tl.PropagateNan.ALL), acc)\n")
        final = f"    res = tl.max(acc, {axis})\n"
        if acc in ("tl.float32", "tl.float64"):
            final += (f"    nan = tl.sum(tl.where(acc == acc, 0.0, acc), {axis})\n"
                      "    res = tl.where(nan == nan, res, nan)\n")
    else:
        step = f"        acc += tl.where(mask, {load}.to({acc}), 0)\n"
        final = f"    res = tl.sum(acc, {axis})" + (" / n_red\n" if op == "mean" else "\n")
    return ("def reduce_kernel(x, y, n_outer, n_red, n_inner, BLOCK_M: tl.constexpr, "
            "BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):\n" + setup + step + final
            + f"    tl.store(y + {dest}, res.to({out}), mask={store_mask})\n")


def _build(source: str, name: str) -> Any:
    return jit.build(jit.HEADER + source, name)


# --- host wrappers ------------------------------------------------------------------------------


def _float(x: torch.Tensor, what: str) -> str:
    dtype = dtypes.from_torch(x.dtype)
    if not dtypes.is_float(dtype):
        raise ValueError(f"{what} needs a float tensor, got {x.dtype}")
    return dtype


def _softmax(x: torch.Tensor, dim: int, log: bool, config) -> torch.Tensor:
    dtype = _float(x, "log_softmax" if log else "softmax")
    if x.dim() == 0:
        raise ValueError("softmax of a 0-d tensor")
    dim = norm_dims((dim,), x.dim())[0]
    rows = x.movedim(dim, -1).contiguous()
    y = torch.empty_like(rows)
    n_cols = rows.shape[-1] if rows.dim() else 1
    n_rows = rows.numel() // max(n_cols, 1)
    if rows.numel():
        block_m, block_n, warps = _tile(n_cols, config)
        kernel = _build(_softmax_source(log, n_cols <= block_n, _acc(dtype), TL[dtype]),
                        "softmax_kernel")
        kernel[(cdiv(n_rows, block_m),)](rows, y, n_rows, n_cols, BLOCK_M=block_m,
                                         BLOCK_N=block_n, num_warps=warps)
    return y.movedim(-1, dim).contiguous()


def softmax(x: torch.Tensor, dim: int, config: Mapping[str, int] | None = None) -> torch.Tensor:
    """softmax along `dim` (any float dtype, f32 math); same shape and dtype as x."""
    return _softmax(x, dim, False, config)


def log_softmax(x: torch.Tensor, dim: int, config: Mapping[str, int] | None = None
                ) -> torch.Tensor:
    """log_softmax along `dim`; same shape and dtype as x."""
    return _softmax(x, dim, True, config)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               config: Mapping[str, int] | None = None) -> torch.Tensor:
    """Layer norm over the trailing dims of weight's shape; weight and bias any float dtype;
    result of x's shape and dtype."""
    dtype = _float(x, "layer_norm")
    k = weight.dim()
    if (k == 0 or tuple(weight.shape) != tuple(bias.shape)
            or tuple(x.shape[x.dim() - k:]) != tuple(weight.shape)):
        raise ValueError(f"layer_norm: weight {list(weight.shape)} / bias {list(bias.shape)} do "
                         f"not match the trailing dims of {list(x.shape)}")
    rows = x.contiguous()
    y = torch.empty_like(rows)
    n_cols = math.prod(weight.shape)
    n_rows = rows.numel() // max(n_cols, 1)
    if rows.numel():
        block_m, block_n, warps = _tile(n_cols, config)
        kernel = _build(_layer_norm_source(n_cols <= block_n, _acc(dtype), TL[dtype]),
                        "layer_norm_kernel")
        kernel[(cdiv(n_rows, block_m),)](rows, weight.contiguous(), bias.contiguous(), y,
                                         n_rows, n_cols, float(eps), BLOCK_M=block_m,
                                         BLOCK_N=block_n, num_warps=warps)
    return y


def reduce(x: torch.Tensor, op: str, dims: Sequence[int], keepdim: bool = False,
           config: Mapping[str, int] | None = None) -> torch.Tensor:
    """sum / mean / amax over `dims` (the reference's rules: float sum keeps the dtype, integer
    and bool sums are i64, mean needs floats; no dims, or a 0-d x, reduces nothing)."""
    if op not in ("sum", "mean", "amax"):
        raise ValueError(f"reduce op must be sum, mean or amax, got {op!r}")
    dtype = dtypes.from_torch(x.dtype)
    why = supports(op, [TensorType(tuple(x.shape), dtype)], {"dims": tuple(dims)})
    if why is not None:
        raise ValueError(f"reduce: {why}")
    red = norm_dims(tuple(dims), x.dim()) if x.dim() else ()
    kept = [d for d in range(x.dim()) if d not in red]
    out_dtype = "i64" if op == "sum" and not dtypes.is_float(dtype) else dtype
    out_shape = [1 if d in red else x.shape[d] for d in range(x.dim())] if keepdim else \
        [x.shape[d] for d in kept]
    y = torch.empty(out_shape, dtype=dtypes.to_torch(out_dtype), device=x.device)
    red_sorted = sorted(red)
    if red_sorted and red_sorted != list(range(red_sorted[0], red_sorted[-1] + 1)):
        x, red_sorted = x.permute(*kept, *red_sorted), list(range(len(kept), x.dim()))
    x = x.contiguous()
    lo = red_sorted[0] if red_sorted else x.dim()
    n_outer = math.prod(x.shape[:lo])
    n_red = math.prod(x.shape[d] for d in red_sorted)
    n_inner = math.prod(x.shape[lo + len(red_sorted):])
    if y.numel() == 0:
        return y
    floating = dtypes.is_float(dtype)
    acc = _acc(dtype) if floating else "tl.int64" if op == "sum" else TL[dtype]
    if op == "amax":
        acc = "tl.int8" if dtype == "bool" else acc
        init = "-1e400" if floating else repr(int(torch.iinfo(x.dtype).min)) \
            if dtype != "bool" else "0"
    else:
        init = "0"
    cfg = dict(config or {})
    columns = n_inner > 1
    block_n = cfg.get("BLOCK_N", min(256 if columns else 2048, max(16, next_pow2(n_red))))
    block_i = cfg.get("BLOCK_I", min(128, max(16, next_pow2(n_inner)))) if columns else 1
    block_m = cfg.get("BLOCK_M", 1 if columns else max(1, TILE // block_n))
    grid = n_outer * cdiv(n_inner, block_i) if columns else cdiv(n_outer, block_m)
    kernel = _build(_reduce_source(op, columns, dtype, acc, init, TL[out_dtype]), "reduce_kernel")
    kernel[(grid,)](x, y, n_outer, n_red, n_inner, BLOCK_M=block_m, BLOCK_N=block_n,
                    BLOCK_I=block_i, num_warps=cfg.get("num_warps", 4))
    return y


# --- cumsum: a row scan -----------------------------------------------------------------------

_CUMSUM = """
def cumsum_kernel(x, y, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    carry = tl.zeros((BLOCK_M,), dtype=ACC)
    for c0 in range(0, n_cols, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        at = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        t = tl.load(x + at, mask=mask, other=0).to(OUT).to(WIDEN)
        tl.store(y + at, (tl.cumsum(t, 1) + carry[:, None]).to(STORE), mask=mask)
        carry += tl.sum(t, 1)
"""


def cumsum(x: torch.Tensor, dim: int, out_dtype: torch.dtype,
           config: Mapping[str, int] | None = None) -> torch.Tensor:
    """Running sums along `dim`, as the reference: converted to out_dtype first, summed in
    float64 (floats) or int64, stored as out_dtype. A row scan (tl.cumsum) per column chunk,
    with the chunk sums carried; wide accumulation keeps the scan's order from mattering."""
    from fxforge.kernels.triton import layout

    out = dtypes.from_torch(out_dtype)
    if out not in TL or out == "bool":
        raise ValueError(f"cumsum: no kernel for a {out_dtype} result")
    if x.dim() == 0:
        return x.to(out_dtype).reshape(())
    dim = norm_dims((dim,), x.dim())[0]
    rows = layout.contiguous(x.movedim(dim, -1))
    y = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
    n_cols = rows.shape[-1]
    n_rows = rows.numel() // max(n_cols, 1)
    if rows.numel():
        cfg = dict(config or {})
        block_n = cfg.get("BLOCK_N", min(1024, max(16, next_pow2(n_cols))))
        block_m = cfg.get("BLOCK_M", max(1, min(64, TILE // block_n)))
        acc = "tl.float64" if dtypes.is_float(out) else "tl.int64"
        # bf16 through f32 both ways: Triton's interpreter converts between bf16 and f64 wrongly
        bf16 = out == "bf16"
        store = "tl.float32).to(tl.bfloat16" if bf16 else TL[out]
        widen = f"tl.float32).to({acc}" if bf16 else acc
        source = (_CUMSUM.replace("WIDEN", widen).replace("ACC", acc).replace("STORE", store)
                  .replace("OUT", TL[out]))
        kernel = _build(source, "cumsum_kernel")
        kernel[(cdiv(n_rows, block_m),)](rows, y, n_rows, n_cols, BLOCK_M=block_m,
                                         BLOCK_N=block_n, num_warps=cfg.get("num_warps", 4))
    return layout.contiguous(y.movedim(-1, dim))
