"""GEMMs with [N, K] weights (y = x @ w.T), float or int8, with the node's epilogue generated in.

Float (`linear`, f32 or f16 in, f32 accumulator) and int8 (`qlinear`, the contract of
docs/quantized-ir.md) share one generator. The int8 zero point is taken out of the loop:
sum_k (x - zp) * w = dot(x, w) - zp * colsum(w), exact in int32, so the tensor cores see the raw
int8 operands. Big-M path, one program per [BLOCK_M, BLOCK_N] tile in grouped order:

    for pid in grid(cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)):       # GROUP_M row tiles share w
        acc = 0                                                  # int32 or float32
        for k in range(0, K, BLOCK_K):
            acc += dot(x[m, k:k + BLOCK_K], w[n, k:k + BLOCK_K].T)
            wsum += sum(w[n, k:k + BLOCK_K])                     # int8, zero point != 0 only
        acc -= zp * wsum
        y = f32(acc) * (x_scale * w_scale[n])                   # int8; float: y = acc
        y = epilogue(y + bias[n], operands)                       # generated from the IR
        out[m, n] = y | requantize(y) | acc                      # f32 / f16, i8, i32

Small M (M <= 16: batch-1 decoding, where a [BLOCK_M, BLOCK_N] grid has too few programs to
fill the GPU), split-K: SPLIT_K programs per tile each reduce one K slice into an exact int32
(or f32) workspace, and a second kernel sums the slices and runs the same epilogue. The path is
`small_m` when given, else the config's (one with SPLIT_K is a small-M config), else M <= 16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import host, jit
from fxforge.kernels.triton.codegen import TL, Epilogue, operand_name

# H100 candidates for the autotuner: wide tiles for the tensor cores, 3-4 pipeline stages.
CONFIGS = [
    {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "num_warps": w, "num_stages": st}
    for m, n, k, w, st in [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4),
                           (128, 128, 128, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                           (64, 64, 128, 4, 3)]
]
# Small M is bound by reading w: narrow N tiles and K split so that every SM streams weights.
SMALL_M_CONFIGS = [
    {"BLOCK_M": 16, "BLOCK_N": n, "BLOCK_K": k, "SPLIT_K": s, "num_warps": 4, "num_stages": 4}
    for n, k, s in [(32, 128, 4), (64, 128, 4), (64, 256, 2), (64, 128, 8), (128, 128, 4),
                    (128, 64, 8), (32, 256, 8), (64, 64, 16)]
]
DEFAULT_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4,
                  "num_stages": 2}
DEFAULT_SMALL_M_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 2,
                          "num_warps": 4, "num_stages": 2}
SMALL_M = 16  # M at or below this takes the split-K path unless told otherwise
INT32_MAX = 2**31 - 1


# --- what a kernel's source depends on ----------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    a: str                 # dtype of x and w: f32, f16 or i8
    has_bias: bool
    dynamic: bool          # int8: x_scale per row (a tensor) instead of one float
    has_zp: bool           # int8: x_zero_point != 0
    out: str               # f32, f16, i8 (requantized) or i32 (the raw accumulator)
    epilogue: Epilogue

    @property
    def acc(self) -> str:
        return "i32" if self.a == "i8" else "f32"


def _epilogue_params(s: _Spec) -> tuple[list[str], list[str], list[str]]:
    """(pointers, strides, scalars) the epilogue reads, in signature order."""
    ptrs, strides, scalars = [], [], []
    if s.out != "i32":
        ptrs += ["bias_ptr"] if s.has_bias else []
        if s.a == "i8":
            ptrs += ["ws_ptr"]
            if s.dynamic:
                ptrs, strides = ptrs + ["xs_ptr"], strides + ["stride_xs"]
            else:
                scalars += ["x_scale"]
        for i in s.epilogue.operands:
            e = operand_name(i)
            ptrs, strides = ptrs + [f"{e}_ptr"], strides + [f"{e}_sm", f"{e}_sn"]
    scalars += ["out_scale", "out_zp"] if s.out == "i8" else []
    return ptrs, strides, scalars


def _signature(name: str, groups: list[list[str]], meta: list[str]) -> list[str]:
    lines = [f"def {name}("]
    lines += [f"    {', '.join(g)}," for g in groups if g]
    lines += [f"    {', '.join(f'{m}: tl.constexpr' for m in meta)},", "):"]
    return lines


def _mainloop(s: _Spec, k_lo: str, k_len: str) -> list[str]:
    """acc[BLOCK_M, BLOCK_N] over K in [k_lo, k_lo + k_len), given offs_m, offs_n. Rows and
    columns past M / N read row M-1 / N-1 again (wrapped, so loads need no mask there); their
    results are never stored."""
    dot = {"f32": "tl.dot(a, b, acc, input_precision=PRECISION)",
           "f16": "tl.dot(a, b, acc)", "i8": "tl.dot(a, b, acc, out_dtype=tl.int32)"}[s.a]
    zp = s.a == "i8" and s.has_zp
    lines = [
        "    rows = offs_m % M",
        "    cols = offs_n % N",
        "    offs_k = tl.arange(0, BLOCK_K)",
        f"    x_ptrs = x_ptr + rows[:, None] * stride_xm + ({k_lo} + offs_k)[None, :]",
        f"    w_ptrs = w_ptr + cols[None, :] * stride_wn + ({k_lo} + offs_k)[:, None]",
        f"    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={TL[s.acc]})",
        *(["    wsum = tl.zeros((BLOCK_N,), dtype=tl.int32)"] if zp else []),
        f"    for k in range(0, tl.cdiv({k_len}, BLOCK_K)):",
        f"        k_left = {k_len} - k * BLOCK_K",
        "        a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0)",
        "        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)",
        f"        acc = {dot}",
        *(["        wsum += tl.sum(b.to(tl.int32), axis=0)"] if zp else []),
        "        x_ptrs += BLOCK_K",
        "        w_ptrs += BLOCK_K",
    ]
    return lines + (["    acc = acc - x_zp * wsum[None, :]"] if zp else [])


def _finish(s: _Spec) -> list[str]:
    """The epilogue of the tile `acc` at offs_m, offs_n, and its masked store."""
    lines = ["    m_in = offs_m < M", "    n_in = offs_n < N",
             "    mask = m_in[:, None] & n_in[None, :]"]
    if s.out == "i32":
        value = "acc"
    else:
        if s.a == "i8":
            lines.append("    ws = tl.load(ws_ptr + offs_n, mask=n_in, other=0.0)")
            if s.dynamic:
                lines += ["    xs = tl.load(xs_ptr + offs_m * stride_xs, mask=m_in, other=0.0)",
                          "    y = acc.to(tl.float32) * (xs[:, None] * ws[None, :])"]
            else:
                lines.append("    y = acc.to(tl.float32) * (x_scale * ws)[None, :]")
        else:
            lines.append("    y = acc")
        if s.has_bias:
            lines += ["    bias = tl.load(bias_ptr + offs_n, mask=n_in, other=0.0)",
                      "    y = y + bias[None, :]"]
        lines.append(f"    y = y.to({TL[s.epilogue.stages[0].dtype]})")
        for i in s.epilogue.operands:
            e = operand_name(i)
            lines.append(f"    {e} = tl.load({e}_ptr + offs_m[:, None] * {e}_sm + "
                         f"offs_n[None, :] * {e}_sn, mask=mask, other=0)")
        steps, value = s.epilogue.lines("y")
        lines += steps
        if s.out == "i8":
            lines += requantize_lines(value, "q")
            value = "q"
    lines.append(f"    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], "
                 f"{value}.to({TL[s.out]}), mask=mask)")
    return lines


def requantize_lines(y: str, q: str) -> list[str]:
    """clip(rint(y / out_scale) + out_zp, -128, 127) in float32 with round-half-to-even. rint is
    spelled out with floor (exact in float32) because libdevice has no interpreter form; a value
    of magnitude >= 2**23 is already an integer and comes through unchanged."""
    return [f"    {q}_v = tl.div_rn({y}.to(tl.float32), out_scale)",
            f"    {q}_f = tl.floor({q}_v)",
            f"    {q}_r = {q}_v - {q}_f",
            f"    {q}_odd = {q}_f - 2.0 * tl.floor({q}_f * 0.5)",
            f"    {q} = {q}_f + tl.where({q}_r > 0.5, 1.0, tl.where({q}_r == 0.5, {q}_odd, 0.0))",
            f"    {q} = tl.minimum(tl.maximum({q} + out_zp, -128.0), 127.0)"]


GROUPED_PIDS = [  # the tutorial's grouped ordering: GROUP_M row tiles walk N together (L2 reuse)
    "    pid = tl.program_id(0)",
    "    num_pid_m = tl.cdiv(M, BLOCK_M)",
    "    num_pid_n = tl.cdiv(N, BLOCK_N)",
    "    num_pid_in_group = GROUP_M * num_pid_n",
    "    first_pid_m = (pid // num_pid_in_group) * GROUP_M",
    "    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)",
    "    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)",
    "    pid_n = (pid % num_pid_in_group) // group_size_m",
]
TILE_OFFSETS = ["    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
         "    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)"]
_META = ["BLOCK_M", "BLOCK_N", "BLOCK_K"]


def _source(s: _Spec, phase: str) -> tuple[str, list[str]]:
    """Kernel source of one phase ("gemm", "split" or "reduce") and its argument names."""
    ptrs, strides, scalars = _epilogue_params(s)
    zp = ["x_zp"] if s.a == "i8" and s.has_zp else []
    if phase == "gemm":
        groups = [["x_ptr", "w_ptr", "out_ptr", *ptrs], ["M", "N", "K"],
                  ["stride_xm", "stride_wn", "stride_om", *strides], zp + scalars]
        body = GROUPED_PIDS + TILE_OFFSETS + _mainloop(s, "0", "K") + _finish(s)
        meta = _META + ["GROUP_M"]
    elif phase == "split":
        groups = [["x_ptr", "w_ptr", "part_ptr"], ["M", "N", "K", "K_SPLIT"],
                  ["stride_xm", "stride_wn"], zp]
        body = ["    pid = tl.program_id(0)", "    num_pid_n = tl.cdiv(N, BLOCK_N)",
                "    pid_m = pid // num_pid_n", "    pid_n = pid % num_pid_n",
                "    k_lo = tl.program_id(1) * K_SPLIT", *TILE_OFFSETS,
                *_mainloop(s, "k_lo", "tl.minimum(K - k_lo, K_SPLIT)"),
                "    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]",
                "    part = part_ptr + tl.program_id(1) * M * N",
                "    tl.store(part + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)"]
        meta = _META
    else:
        groups = [["part_ptr", "out_ptr", *ptrs], ["M", "N", "SPLITS"],
                  ["stride_om", *strides], scalars]
        body = ["    pid_m = tl.program_id(0)", "    pid_n = tl.program_id(1)", *TILE_OFFSETS,
                "    mask_in = (offs_m < M)[:, None] & (offs_n < N)[None, :]",
                "    part = part_ptr + offs_m[:, None] * N + offs_n[None, :]",
                f"    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={TL[s.acc]})",
                "    for k in range(0, SPLITS):",
                "        acc += tl.load(part + k * M * N, mask=mask_in, other=0)",
                *_finish(s)]
        meta = ["BLOCK_M", "BLOCK_N"]
    if s.a == "f32" and phase != "reduce":
        meta = meta + ["PRECISION"]  # "ieee" (from the host: source holds no strings)
    lines = _signature(f"fx_{phase}", groups, meta) + body
    return jit.HEADER + "\n".join(lines) + "\n", [n for g in groups for n in g]


# --- host: arguments, launch -------------------------------------------------------------------


def _epilogue_args(spec: _Spec, operands: Mapping | None, out_shape: tuple[int, int]) -> dict:
    """Pointers and strides of the epilogue operands (node input i -> e<i>), checked against
    the epilogue's types; each must broadcast to the [M, N] output."""
    operands = dict(operands or {})
    want = set(spec.epilogue.operands)
    if set(operands) != want:
        raise ValueError(f"the epilogue reads operands {sorted(want)}, got {sorted(operands)}")
    args = {}
    for i, t in operands.items():
        want_dtype = spec.epilogue.node_inputs[i].dtype
        if not isinstance(t, torch.Tensor) or dtypes.from_torch(t.dtype) != want_dtype:
            raise ValueError(f"epilogue operand {i} must be a {want_dtype} tensor")
        try:
            view, rs, cs = host.rows_view(t, out_shape, channels_last=False)
        except RuntimeError:
            raise ValueError(f"epilogue operand {i} of shape {list(t.shape)} does not broadcast "
                             f"to the output {list(out_shape)}") from None
        e = operand_name(i)
        args.update({f"{e}_ptr": view, f"{e}_sm": rs, f"{e}_sn": cs})
    return args


def _run(spec: _Spec, x: torch.Tensor, w: torch.Tensor, args: dict, config: Mapping | None,
         small_m: bool | None) -> torch.Tensor:
    (m, k), n = x.shape, w.shape[0]
    far = [a for a, v in dict(args, w=w).items()
           if isinstance(v, torch.Tensor) and v.device != x.device]
    if far:
        raise ValueError(f"x is on {x.device} but {far} are not: all tensors must share it")
    if not spec.epilogue.supported():
        raise ValueError("the epilogue has a step without a Triton form")
    out = torch.empty((m, n), dtype=dtypes.to_torch(spec.out), device=x.device)
    if m == 0 or n == 0:
        return out
    args.update(x_ptr=x, w_ptr=w, out_ptr=out, M=m, N=n, K=k, stride_xm=x.stride(0),
                stride_wn=w.stride(0), stride_om=out.stride(0))
    min_k = 32 if spec.a == "i8" else 16
    if small_m is None:  # a config names its path (SPLIT_K: small M); else M decides
        small_m = "SPLIT_K" in config if config is not None else m <= SMALL_M
    if not small_m:
        cfg = host.check_config(config, DEFAULT_CONFIG,
                                ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"), min_k)
        source, names = _source(spec, "gemm")
        grid = (host.cdiv(m, cfg["BLOCK_M"]) * host.cdiv(n, cfg["BLOCK_N"]),)
        jit.build(source, "fx_gemm")[grid](
            *[args[a] for a in names], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], **host.launch_options(cfg, spec.a))
        return out
    cfg = host.check_config(config, DEFAULT_SMALL_M_CONFIG,
                            ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K"), min_k)
    k_split = host.cdiv(host.cdiv(max(k, 1), cfg["SPLIT_K"]), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    splits = max(1, host.cdiv(k, k_split))
    if splits * m * n >= 2**31:
        raise ValueError(f"split-K workspace of {splits} x {m} x {n} needs int64 offsets; use "
                         "the big-M path (small_m=False)")
    args.update(part_ptr=torch.empty((splits, m, n), dtype=dtypes.to_torch(spec.acc),
                                     device=x.device), K_SPLIT=k_split, SPLITS=splits)
    tiles_m, tiles_n = host.cdiv(m, cfg["BLOCK_M"]), host.cdiv(n, cfg["BLOCK_N"])
    source, names = _source(spec, "split")
    jit.build(source, "fx_split")[(tiles_m * tiles_n, splits)](
        *[args[a] for a in names], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], **host.launch_options(cfg, spec.a))
    source, names = _source(spec, "reduce")
    jit.build(source, "fx_reduce")[(tiles_m, tiles_n)](
        *[args[a] for a in names], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        **host.launch_options(cfg, "i8" if spec.a == "i8" else None))
    return out


# --- public API ---------------------------------------------------------------------------------


def linear(x: torch.Tensor, w: torch.Tensor, *, bias: torch.Tensor | None = None,
           epilogue: Epilogue | None = None, operands: Mapping[int, torch.Tensor] | None = None,
           out_dtype: str | torch.dtype | None = None, config: Mapping | None = None,
           small_m: bool | None = None) -> torch.Tensor:
    """y = epilogue(x @ w.T + bias) for x [M, K], w [N, K] (both f32 or both f16), accumulated
    in float32 (f32 exactly: tl.dot in "ieee" precision, no TF32); bias f32 [N]. The
    accumulator is rounded to epilogue.stages[0]'s dtype before the steps, as the unfused graph
    holds it; the result is stored as out_dtype (f32 or f16, default x's dtype)."""
    host.check_matrix(x, "x", ("f32", "f16"))
    host.check_matrix(w, "w", ("f32", "f16"))
    if x.dtype != w.dtype or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {x.dtype}{list(x.shape)} and w {w.dtype}{list(w.shape)} must share "
                         "dtype and K (w is [N, K])")
    a = dtypes.from_torch(x.dtype)
    out = a if out_dtype is None else host.dtype_name(out_dtype)
    if out not in ("f32", "f16"):
        raise ValueError(f"linear out_dtype must be f32 or f16, got {out}")
    epilogue = epilogue or Epilogue.none(TensorType((x.shape[0], w.shape[0]), a))
    if epilogue.stages[0].dtype not in ("f32", "f16"):
        raise ValueError(f"epilogue.stages[0] must be f32 or f16, got {epilogue.stages[0].dtype}")
    spec = _Spec(a, bias is not None, False, False, out, epilogue)
    args = _epilogue_args(spec, operands, (x.shape[0], w.shape[0]))
    if bias is not None:
        args["bias_ptr"] = host.check_vector(bias, w.shape[0], "bias")
    return _run(spec, x, w, args, config, small_m)


def qlinear(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *,
            x_scale: float | torch.Tensor, x_zero_point: int = 0,
            bias: torch.Tensor | None = None, epilogue: Epilogue | None = None,
            operands: Mapping[int, torch.Tensor] | None = None, out_dtype: str = "f32",
            out_scale: float | None = None, out_zero_point: int = 0,
            config: Mapping | None = None, small_m: bool | None = None) -> torch.Tensor:
    """The `qlinear` op of docs/quantized-ir.md on x i8 [M, K], w i8 [N, K], w_scale f32 [N]:
    x_scale a float (static; with x_zero_point) or an f32 [M, 1] tensor (dynamic, per row, zero
    point 0). out_dtype: "f32", "f16", "i8" (requantized with out_scale / out_zero_point) or
    "i32" (the raw accumulator, before scales, bias and epilogue: for tests)."""
    host.check_matrix(x, "x", ("i8",))
    host.check_matrix(w, "w", ("i8",))
    (m, k), n = x.shape, w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"x [M, K] = {list(x.shape)} and w [N, K] = {list(w.shape)} differ in K")
    args: dict = {"ws_ptr": host.check_vector(w_scale, n, "w_scale")}
    if isinstance(x_zero_point, bool) or not isinstance(x_zero_point, (int, np.integer)) \
            or not -128 <= x_zero_point <= 127:
        raise ValueError(f"x_zero_point must be an int in [-128, 127], got {x_zero_point!r}")
    x_zero_point = int(x_zero_point)
    if k * max(abs(-128 - x_zero_point), abs(127 - x_zero_point)) * 128 > INT32_MAX:
        raise ValueError(f"K = {k} with zero point {x_zero_point} can overflow the int32 "
                         "accumulator")
    dynamic = isinstance(x_scale, torch.Tensor)
    if dynamic:
        if x_scale.dtype != torch.float32 or tuple(x_scale.shape) != (m, 1):
            raise ValueError(f"a dynamic x_scale must be float32 [M, 1] = [{m}, 1], got "
                             f"{x_scale.dtype}{list(x_scale.shape)}")
        if x_zero_point != 0:
            raise ValueError("a dynamic (per-row) x_scale needs x_zero_point 0")
        args.update(xs_ptr=x_scale, stride_xs=x_scale.stride(0))
    else:
        args["x_scale"] = float(x_scale)
    if out_dtype not in ("f32", "f16", "i8", "i32"):
        raise ValueError(f"qlinear out_dtype must be f32, f16, i8 or i32, got {out_dtype!r}")
    if out_dtype == "i8":
        if out_scale is None or not -128 <= out_zero_point <= 127:
            raise ValueError("out_dtype i8 needs out_scale and an out_zero_point in [-128, 127]")
        args.update(out_scale=float(out_scale), out_zp=int(out_zero_point))
    epilogue = epilogue or Epilogue.none(TensorType((m, n), "f32"))
    if epilogue.stages[0].dtype != "f32":
        raise ValueError(f"a qlinear epilogue starts from f32, got {epilogue.stages[0].dtype}")
    spec = _Spec("i8", bias is not None, dynamic, x_zero_point != 0, out_dtype, epilogue)
    if out_dtype != "i32":
        args.update(_epilogue_args(spec, operands, (m, n)))
    if bias is not None:
        args["bias_ptr"] = host.check_vector(bias, n, "bias")
    args["x_zp"] = x_zero_point
    return _run(spec, x, w, args, config, small_m)
