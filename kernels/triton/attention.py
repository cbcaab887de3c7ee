"""Fused attention (flash-attention style) for `scaled_dot_product_attention`.

Why fused: softmax(q @ k.T * scale + mask) @ v written as three kernels stores the [Lq, Lk]
score matrix, which is the largest tensor of a transformer layer and grows with the square of
the sequence. Here a program holds a [BLOCK_M, D] tile of queries and walks the keys in blocks,
keeping only running softmax statistics (an online softmax), so the scores live in registers:

    for each (batch, head) and query tile rows (BLOCK_M):          # one program
        m = -inf; l = 0; acc = 0                                   # float32, per row
        for keys cols in blocks of BLOCK_N (causal: only up to the tile's last row):
            s = (q[rows] @ k[cols].T) * scale                      # f32 accumulate
            s = s + mask[rows, cols]  |  s where mask else -inf    # float | bool mask
            s = s where (cols < Lk and, causal, cols <= rows) else -inf
            m' = max(m, max(s));  m0 = 0 if m' == -inf else m'     # no -inf - -inf = NaN
            p = exp(s - m0);  alpha = exp(m - m0)
            l = l * alpha + sum(p);  acc = acc * alpha + p @ v[cols];  m = m'
        out[rows] = acc / l   (l == 0, every key masked: 0, torch's "safe softmax")

Leading dims are (batch, heads), any rank from 2 to 4; q, k, v, the output and the mask are read
through their strides, so a permuted q ([B, L, H, D] -> [B, H, L, D]) or a mask broadcast from
[B, 1, 1, Lk] is never copied (a broadcast dim has stride 0). Head dims pad to the next power of
two (>= 16, tl.dot's smallest tile) with masked loads. f16 inputs: both products on f16 tensor
cores with f32 accumulation (p rounded to f16 for p @ v, as flash attention does); f32 inputs:
tl.dot in "ieee" precision (no TF32 unless the config asks for tf32x3). Offsets inside one head
are int32 (checked), the (batch, head) base int64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import host, jit
from fxforge.kernels.triton.codegen import TL
from fxforge.kernels.triton.elementwise import next_pow2

MAX_HEAD_DIM = 256
FLOAT_DTYPES = ("f32", "f16")
MASK_DTYPES = ("bool", "f32", "f16")
INT32_LIMIT = 2**31

# Candidates for the autotuner (H100): the big tiles suit head dims up to 128; `configs` drops
# the ones whose q / k / v tiles would not fit registers and shared memory for wider heads.
CONFIGS: list[dict] = [
    {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": st}
    for m, n, w, st in [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4),
                        (128, 128, 8, 2), (64, 128, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2),
                        (16, 32, 4, 2)]
]
DEFAULT_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
_KEYS = ("BLOCK_M", "BLOCK_N")


def configs(head_dim: int) -> list[dict]:
    """CONFIGS that suit a head dim: for heads wider than 128 only the tiles of at most
    64 x 64 (a [128, 256] f32 q tile alone is 128 KiB)."""
    if head_dim <= 128:
        return list(CONFIGS)
    return [c for c in CONFIGS if c["BLOCK_M"] <= 64 and c["BLOCK_N"] <= 64]


# --- which inputs the kernel takes --------------------------------------------------------------


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


def supports(q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None,
             attrs: Mapping[str, Any]) -> str | None:
    """None when `attention` runs this scaled_dot_product_attention node, else why not."""
    types = [("q", q), ("k", k), ("v", v)] + ([("mask", mask)] if mask is not None else [])
    for name, t in types:
        if not all(type(d) is int for d in t.shape):
            return f"{name} has a symbolic shape {list(t.shape)}; the kernel needs static dims"
    if q.dtype not in FLOAT_DTYPES:
        return f"q must be f32 or f16, got {q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not 2 <= q.ndim <= 4 or k.ndim != q.ndim or v.ndim != q.ndim:
        return f"q, k, v must share a rank of 2, 3 or 4, got {q.ndim}, {k.ndim}, {v.ndim}"
    d, dv = q.shape[-1], v.shape[-1]
    if k.shape[-1] != d or v.shape[-2] != k.shape[-2]:
        return f"shapes q{list(q.shape)} k{list(k.shape)} v{list(v.shape)} do not agree"
    if not 1 <= d <= MAX_HEAD_DIM or not 1 <= dv <= MAX_HEAD_DIM:
        return f"head dims must be 1..{MAX_HEAD_DIM}, got {d} (q, k) and {dv} (v)"
    batch = _broadcast(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if batch is None:
        return (f"batch dims of q{list(q.shape)} k{list(k.shape)} v{list(v.shape)} do not "
                "broadcast")
    if mask is not None:
        if mask.dtype not in MASK_DTYPES:
            return f"mask must be bool, f32 or f16, got {mask.dtype}"
        full = (*batch, q.shape[-2], k.shape[-2])
        if mask.ndim > len(full) or _broadcast(mask.shape, full) != full:
            return f"mask {list(mask.shape)} does not broadcast to {list(full)}"
    scale = attrs.get("scale")
    if scale is not None and not math.isfinite(float(scale)):
        return f"scale must be finite, got {scale}"
    return None


# --- generated source ---------------------------------------------------------------------------


def _source(a: str, mask: str | None, causal: bool) -> str:
    """The kernel for inputs of dtype `a`, a mask kind (None, "bool", "float") and causality."""
    dot = ", input_precision=PRECISION" if a == "f32" else ""
    meta = "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, " \
           "BLOCK_DV: tl.constexpr" + (", PRECISION: tl.constexpr" if a == "f32" else "")
    hi = "tl.minimum(len_k, (pid_m + 1) * BLOCK_M)" if causal else "len_k"
    lines = [
        "def attention_kernel(",
        "    q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr,",
        "    n_heads, len_q, len_k, head_d, head_dv, scale,",
        "    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd,",
        "    soz, soh, som, sod, smz, smh, smm, smn,",
        f"    {meta},",
        "):",
        "    tiles_m = tl.cdiv(len_q, BLOCK_M)",
        "    pid = tl.program_id(0)",
        "    pid_m = pid % tiles_m",
        "    zh = pid // tiles_m",
        "    z = (zh // n_heads).to(tl.int64)",
        "    h = (zh % n_heads).to(tl.int64)",
        "    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    row_ok = rows < len_q",
        "    offs_n = tl.arange(0, BLOCK_N)",
        "    offs_d = tl.arange(0, BLOCK_D)",
        "    offs_dv = tl.arange(0, BLOCK_DV)",
        "    d_ok = offs_d < head_d",
        "    dv_ok = offs_dv < head_dv",
        "    q_ptrs = q_ptr + z * sqz + h * sqh + rows[:, None] * sqm + offs_d[None, :] * sqd",
        "    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)",
        "    k_base = k_ptr + z * skz + h * skh + offs_d[:, None] * skd",
        "    v_base = v_ptr + z * svz + h * svh + offs_dv[None, :] * svd",
        *(["    m_base = mask_ptr + z * smz + h * smh + rows[:, None] * smm"] if mask else []),
        "    m_i = tl.full([BLOCK_M], -1e400, tl.float32)",
        "    l_i = tl.zeros([BLOCK_M], tl.float32)",
        "    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)",
        f"    hi = {hi}",
        "    for start_n in range(0, hi, BLOCK_N):",
        "        cols = start_n + offs_n",
        "        col_ok = cols < len_k",
        "        kt = tl.load(k_base + cols[None, :] * skn, mask=d_ok[:, None] & col_ok[None, :],",
        "                     other=0.0)",
        f"        s = tl.dot(q, kt{dot}) * scale",
        "        keep = row_ok[:, None] & col_ok[None, :]",
    ]
    if causal:
        lines.append("        keep = keep & (cols[None, :] <= rows[:, None])")
    if mask:
        lines.append("        mv = tl.load(m_base + cols[None, :] * smn, mask=keep, other=0)")
        lines.append("        keep = keep & (mv != 0)" if mask == "bool"
                     else "        s = s + mv.to(tl.float32)")
    lines += [
        "        s = tl.where(keep, s, -1e400)",
        "        m_new = tl.maximum(m_i, tl.max(s, 1))",
        "        m_safe = tl.where(m_new == -1e400, 0.0, m_new)",
        "        alpha = tl.exp(m_i - m_safe)",
        "        p = tl.exp(s - m_safe[:, None])",
        "        l_i = l_i * alpha + tl.sum(p, 1)",
        "        vt = tl.load(v_base + cols[:, None] * svn, mask=col_ok[:, None] & dv_ok[None, :],",
        "                     other=0.0)",
        (f"        acc = tl.dot(p, vt, acc * alpha[:, None]{dot})" if a == "f32" else
         f"        acc = tl.dot(p.to({TL[a]}), vt, acc * alpha[:, None])"),
        "        m_i = m_new",
        "    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]",
        "    o_ptrs = o_ptr + z * soz + h * soh + rows[:, None] * som + offs_dv[None, :] * sod",
        f"    tl.store(o_ptrs, out.to({TL[a]}), mask=row_ok[:, None] & dv_ok[None, :])",
    ]
    return jit.HEADER + "\n".join(lines) + "\n"


def _kernel(a: str, mask: str | None, causal: bool) -> Any:
    return jit.build(_source(a, mask, causal), "attention_kernel")  # cached by source and mode


# --- host wrapper -------------------------------------------------------------------------------


def _four_d(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """t broadcast to `shape` ([*batch, rows, cols]) and seen as [Z, H, rows, cols] (a view: a
    broadcast dim has stride 0)."""
    t = t.expand(*shape)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _span(t: torch.Tensor) -> int:
    """The largest element offset inside one (batch, head) slice."""
    return sum((n - 1) * s for n, s in zip(t.shape[-2:], t.stride()[-2:]) if n > 0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, *, is_causal: bool = False,
              scale: float | None = None, config: Mapping | None = None) -> torch.Tensor:
    """softmax(q @ k.T * scale + mask) @ v for q [..., Lq, D], k [..., Lk, D], v [..., Lk, Dv]
    (f32 or f16, one dtype; batch dims broadcast, rank 2 to 4). scale defaults to 1 / sqrt(D).
    mask: bool (True = attend) or float (added to the scores), broadcastable to
    [*batch, Lq, Lk]; is_causal: query i sees keys j <= i (top-left aligned, as torch). A query
    that sees no key gives zeros. Returns [*batch, Lq, Dv] in q's dtype (contiguous); statistics
    and accumulation are float32. config: BLOCK_M, BLOCK_N (powers of two >= 16), num_warps,
    num_stages, PRECISION (f32: ieee or tf32x3); None is DEFAULT_CONFIG."""
    tensors = {"q": q, "k": k, "v": v, **({"mask": mask} if mask is not None else {})}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != q.device:
            raise ValueError(f"q is on {q.device} but {name} is on {t.device}")
    types = {n: TensorType(tuple(t.shape), dtypes.from_torch(t.dtype))
             for n, t in tensors.items()}
    why = supports(types["q"], types["k"], types["v"], types.get("mask"), {"scale": scale})
    if why is not None:
        raise ValueError(f"attention kernel: {why}")
    cfg = host.check_config(config, DEFAULT_CONFIG, _KEYS, 16)
    a = types["q"].dtype
    len_q, d, len_k, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    out = torch.empty((*batch, len_q, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    q4, k4, v4, o4 = (_four_d(t, (*batch, *t.shape[-2:])) for t in (q, k, v, out))
    kind, m4 = None, o4
    if mask is not None:  # a bool mask is read as bytes (no *i1 pointers)
        kind = "bool" if mask.dtype == torch.bool else "float"
        m4 = _four_d(mask.view(torch.uint8) if kind == "bool" else mask, (*batch, len_q, len_k))
    for name, t in (("q", q4), ("k", k4), ("v", v4), ("out", o4), ("mask", m4)):
        if _span(t) >= INT32_LIMIT:
            raise ValueError(f"{name} spans {_span(t)} elements in one head; int32 offsets "
                             "allow < 2**31")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    z, n_heads = o4.shape[0], o4.shape[1]
    grid = (host.cdiv(len_q, cfg["BLOCK_M"]) * z * n_heads,)
    _kernel(a, kind, bool(is_causal))[grid](
        q4, k4, v4, o4, m4, n_heads, len_q, len_k, d, dv, scale,
        *q4.stride(), *k4.stride(), *v4.stride(), *o4.stride(), *m4.stride(),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=max(16, next_pow2(d)),
        BLOCK_DV=max(16, next_pow2(dv)), **host.launch_options(cfg, a))
    return out


__all__ = ["CONFIGS", "DEFAULT_CONFIG", "MAX_HEAD_DIM", "attention", "configs", "supports"]
