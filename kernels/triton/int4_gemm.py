"""Weight-only int4 linear: y = x @ dequant(packed, scales).T (+ bias), dequantized in registers.

The weights stay packed in memory (two per byte: a quarter of f16's traffic, which is what bounds
small-batch inference); each K step unpacks a tile and scales it group-wise in float32, as
docs/quantized-ir.md (`linear_int4`) defines. Byte j of a row holds k = 2j (low nibble) and
k = 2j + 1 (high nibble), so instead of interleaving nibbles the kernel splits x the same way:
x @ w.T = x[:, 0::2] @ w[:, 0::2].T + x[:, 1::2] @ w[:, 1::2].T.

    for pid in grid(cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)):        # grouped order, as gemm.py
        acc = 0                                                   # float32
        for k in range(0, K, BLOCK_K):                            # j: BLOCK_K / 2 bytes
            p = packed[n, k / 2 + j]
            s = scales[n, (k + 2j) // group_size]
            w_even = f32((p & 15) - 8) * s;  w_odd = f32((p >> 4) - 8) * s
            acc += dot(x[m, k + 2j], w_even) + dot(x[m, k + 2j + 1], w_odd)
        out[m, n] = acc + bias[n]

Group constraint: group_size is even (so both nibbles of a byte share a group) and divides K.
When BLOCK_K divides group_size a K step lies in one group and the scales are one [BLOCK_N]
vector per step (the fast path: use such a config); otherwise each byte row gathers its scale,
which is right for every even group size but costs a [BLOCK_K / 2, BLOCK_N] gather per step.
f16 x multiplies f16 tiles (the dequantized f32 weight rounded to f16) with f32 accumulation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fxforge import dtypes
from fxforge.kernels.triton import jit
from fxforge.kernels.triton.codegen import TL
from fxforge.kernels.triton.gemm import GROUPED_PIDS, TILE_OFFSETS
from fxforge.kernels.triton.host import (
    cdiv,
    check_config,
    check_matrix,
    check_vector,
    dtype_name,
    launch_options,
)

# H100 candidates: weight-bound at small M, so narrow M tiles and long K steps.
CONFIGS = [
    {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "num_warps": w, "num_stages": s}
    for m, n, k, w, s in [(16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (32, 64, 128, 4, 4),
                          (64, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3)]
]
DEFAULT_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4,
                  "num_stages": 2}
_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")


# --- source -------------------------------------------------------------------------------------


def _source(a: str, has_bias: bool, one_group: bool, out: str) -> tuple[str, list[str]]:
    """Kernel source and argument names. a: x's dtype; one_group: BLOCK_K divides group_size."""
    args = [["x_ptr", "p_ptr", "s_ptr", "out_ptr", *(["bias_ptr"] if has_bias else [])],
            ["M", "N", "K", "GROUP_SIZE"], ["stride_xm", "stride_pn", "stride_sn", "stride_om"]]
    meta = ["BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", *(["PRECISION"] if a == "f32" else [])]
    dot = "input_precision=PRECISION" if a == "f32" else "out_dtype=tl.float32"
    if one_group:
        scale = ["        s = tl.load(s_ptr + cols * stride_sn + (k * BLOCK_K) // GROUP_SIZE)",
                 "        s = s[None, :]"]
    else:
        scale = ["        kk = k * BLOCK_K + 2 * offs_j",
                 "        s = tl.load(s_ptr + cols[None, :] * stride_sn + (kk // GROUP_SIZE)"
                 "[:, None], mask=j_in[:, None], other=0.0)"]
    body = [
        *GROUPED_PIDS,
        *TILE_OFFSETS,
        "    rows = offs_m % M",
        "    cols = offs_n % N",
        # ---- main loop: j indexes bytes, k = 2j (low nibble) and 2j + 1 (high nibble)
        "    offs_j = tl.arange(0, BLOCK_K // 2)",
        "    x_ptrs = x_ptr + rows[:, None] * stride_xm + 2 * offs_j[None, :]",
        "    p_ptrs = p_ptr + cols[None, :] * stride_pn + offs_j[:, None]",
        "    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
        "    for k in range(0, tl.cdiv(K, BLOCK_K)):",
        "        j_in = offs_j < (K - k * BLOCK_K) // 2",
        "        x_even = tl.load(x_ptrs, mask=j_in[None, :], other=0.0)",
        "        x_odd = tl.load(x_ptrs + 1, mask=j_in[None, :], other=0.0)",
        "        p = tl.load(p_ptrs, mask=j_in[:, None], other=0).to(tl.int32)",
        *scale,
        "        w_even = ((p & 15) - 8).to(tl.float32) * s",
        "        w_odd = ((p >> 4) - 8).to(tl.float32) * s",
        f"        acc = tl.dot(x_even, w_even.to({TL[a]}), acc, {dot})",
        f"        acc = tl.dot(x_odd, w_odd.to({TL[a]}), acc, {dot})",
        "        x_ptrs += BLOCK_K",
        "        p_ptrs += BLOCK_K // 2",
        # ---- epilogue: bias, store
        "    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]",
    ]
    if has_bias:
        body += ["    bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)",
                 "    acc = acc + bias[None, :]"]
    body.append(f"    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], "
                f"acc.to({TL[out]}), mask=mask)")
    lines = ["def fx_int4_gemm(", *[f"    {', '.join(g)}," for g in args],
             f"    {', '.join(f'{m}: tl.constexpr' for m in meta)},", "):", *body]
    return jit.HEADER + "\n".join(lines) + "\n", [n for g in args for n in g]


# --- host ---------------------------------------------------------------------------------------


def linear_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, *, group_size: int,
                bias: torch.Tensor | None = None, out_dtype: str | torch.dtype | None = None,
                config: Mapping | None = None) -> torch.Tensor:
    """`linear_int4` of docs/quantized-ir.md: x f32 or f16 [M, K], packed u8 [N, K/2], scales f32
    [N, K/group_size], bias f32 [N]; returns [M, N] in out_dtype (f32 or f16, default x's).
    config BLOCK_K: a power of two >= 32; one that divides group_size takes the fast path."""
    check_matrix(x, "x", ("f32", "f16"))
    check_matrix(packed, "packed", ("u8",))
    check_matrix(scales, "scales", ("f32",))
    (m, k), n = x.shape, packed.shape[0]
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even int >= 2, got {group_size!r}")
    if k % group_size:
        raise ValueError(f"K = {k} is not a multiple of group_size {group_size}")
    if packed.shape[1] * 2 != k:
        raise ValueError(f"packed must be u8 [N, K/2] = [{n}, {k // 2}], got {list(packed.shape)}")
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales must be f32 [N, K/group_size] = [{n}, {k // group_size}], got "
                         f"{list(scales.shape)}")
    if packed.device != x.device or scales.device != x.device:
        raise ValueError("x, packed and scales must be on one device")
    a = dtypes.from_torch(x.dtype)
    out_name = a if out_dtype is None else dtype_name(out_dtype)
    if out_name not in ("f32", "f16"):
        raise ValueError(f"linear_int4 out_dtype must be f32 or f16, got {out_name}")
    cfg = check_config(config, DEFAULT_CONFIG, _KEYS, 32)
    out = torch.empty((m, n), dtype=dtypes.to_torch(out_name), device=x.device)
    if m == 0 or n == 0:
        return out
    args = {"x_ptr": x, "p_ptr": packed, "s_ptr": scales, "out_ptr": out, "M": m, "N": n, "K": k,
            "GROUP_SIZE": group_size, "stride_xm": x.stride(0), "stride_pn": packed.stride(0),
            "stride_sn": scales.stride(0), "stride_om": out.stride(0)}
    if bias is not None:
        args["bias_ptr"] = check_vector(bias, n, "bias")
    source, names = _source(a, bias is not None, group_size % cfg["BLOCK_K"] == 0, out_name)
    grid = (cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"]),)
    jit.build(source, "fx_int4_gemm")[grid](
        *[args[name] for name in names], **{key: cfg[key] for key in _KEYS},
        **launch_options(cfg, a))
    return out
