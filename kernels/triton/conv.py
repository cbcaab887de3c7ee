"""Implicit-GEMM conv2d (any groups) on NHWC activations, float and int8, with an IR epilogue.

The conv is a GEMM whose A matrix is never built: rows are output pixels, columns output
channels, and the reduction runs over the taps and the input channels of each tap. A grouped
conv (G groups; G divides Cin and Cout; Cin_g = Cin / G, Cout_g = Cout / G) is G such GEMMs side
by side: group g owns the output channels [g * Cout_g, (g + 1) * Cout_g) and reads the input
channels [g * Cin_g, (g + 1) * Cin_g). G = 1 is the plain conv.

    M = B * Ho * Wo (rows in NHWC order), N = Cout, K = kh * kw * Cin_g (taps outer, Cin_g inner)
    for each tile [BLOCK_M, BLOCK_N] of out (grouped by GROUP_M rows of tiles, for L2 reuse;
                  G > 1: G * cdiv(Cout_g, BLOCK_N) column tiles, none straddling two groups):
        g = the tile's group (0 when G = 1); n = g * Cout_g + the tile's columns of the group
        acc = 0                                        f32 (float) or int32 (int8)
        for it in range(kh * kw * cdiv(Cin_g, BLOCK_K)):  one flat loop, so it pipelines
            tap, c0 = divmod(it, cdiv(Cin_g, BLOCK_K)); r, s = divmod(tap, kw)
            ih = oh * stride_h - pad_h + r * dil_h    (iw likewise)
            a = x[b, ih, iw, g*Cin_g + c0 + (0:BLOCK_K)]  a contiguous channel run per pixel;
                                                       outside the image: 0 (int8: x_zero_point)
            b = w[n, tap, c0:c0 + BLOCK_K]              weights prepared once as
                                                       [Cout, kh*kw*Cin_g]
            acc += a @ b
        int8: acc -= x_zero_point * sum_k w[n, k]      so every tap, padding too, is (x - zp) * w
        float: y = (acc + bias).to(stage 0 dtype)
        int8:  y = f32(acc) * (f32(x_scale) * w_scale[n]) (+ bias)     (docs/quantized-ir.md)
        y = epilogue steps (codegen.Epilogue; residual / per-channel operands read as row views)
        out[m, n] = y as out_dtype; int8 out: clamp(rint(y / out_scale) + out_zp), half to even

Why the zero point is folded into a column sum: the padded taps must contribute (zp - zp) * w
= 0, and int8 tensor-core dots cannot subtract zp on the fly; loading padding as zp and
removing zp * sum(w) afterwards keeps the inner loop a plain int8 dot, exact in int32.

Groups cost the G = 1 kernel nothing: its source is generated without them (the same source as
before groups existed); the grouped source adds a group index per program and a channel offset.
The epilogue indexes the global output channel n in both (bias, scales, operands, the store).

The kernel source is generated per (dtype, epilogue, output, grouped or not) and built by
`jit.build` when first used, so that Triton binds it to the GPU or to its interpreter at that
moment. The epilogue and store phase (`Finish`) and the argument checks are shared with
depthwise.py (conv_common.py).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fxforge.kernels.triton import jit
from fxforge.kernels.triton.codegen import Epilogue
from fxforge.kernels.triton.conv_common import (
    FLOAT_DTYPES,
    PIXELS,
    Finish,
    Pair,
    check_quant,
    check_vector,
    empty_out,
    geometry,
    make_finish,
    nhwc,
    out_dtype_name,
    out_size,
)
from fxforge.kernels.triton.host import cdiv


def _config(m: int, n: int, k: int, warps: int, stages: int) -> dict:
    return {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "num_warps": warps,
            "num_stages": stages}


# Candidates for the autotuner (kernels/triton/autotune.py), sensible on H100. Each fits its
# shared memory even for f32 operands: num_stages * (BLOCK_M + BLOCK_N) * BLOCK_K * 4 bytes
# <= 200 KB (int8 uses a quarter of that).
CONFIGS: list[dict] = [
    _config(128, 128, 64, 8, 3), _config(128, 256, 32, 8, 3), _config(256, 128, 32, 8, 3),
    _config(128, 128, 32, 8, 4), _config(128, 64, 64, 4, 4), _config(64, 128, 64, 4, 4),
    _config(64, 64, 32, 4, 4), _config(128, 32, 32, 4, 4), _config(64, 32, 32, 2, 5),
]


def grouped_configs(cout_per_group: int) -> list[dict]:
    """Tuning candidates for a grouped conv. A tile of columns never straddles two groups, so a
    tile wider than a group's output channels computes masked columns only: keep the CONFIGS no
    wider than the group (at least 16), and add narrow BLOCK_N = 16 tiles for small groups
    (RegNet's groups of 8-64 channels)."""
    width = max(16, 1 << max(0, cout_per_group - 1).bit_length())
    fit = [c for c in CONFIGS if c["BLOCK_N"] <= width]
    return fit + [_config(128, 16, 32, 4, 4), _config(64, 16, 64, 2, 4)]


# Small enough to be quick in the interpreter; BLOCK_K shrinks to Cin (>= 16) when not given.
DEFAULT_CONFIG = _config(32, 32, 32, 4, 2)


@dataclass(frozen=True)
class PreparedWeight:
    """Conv weights laid out once for the kernel: `data` [Cout, kh*kw*Cin_g] (Cin_g = Cin /
    groups, the weight's second dimension) with K ordered (tap, Cin_g) so the K loop reads
    contiguous channel runs, and for int8 `col_sum` = sum_k data[n, k] (int32 [Cout]), which
    removes the activation zero point from the accumulator."""

    data: torch.Tensor
    kernel_size: Pair
    col_sum: torch.Tensor | None = None


def prepare_weight(w: torch.Tensor) -> PreparedWeight:
    """[Cout, Cin / groups, kh, kw] (f32, f16 or int8) -> PreparedWeight (the same for any
    groups: each output channel's row holds its own group's taps)."""
    if w.dim() != 4:
        raise ValueError(f"conv weight must be [Cout, Cin / groups, kh, kw], got shape "
                         f"{tuple(w.shape)}")
    if w.dtype not in FLOAT_DTYPES and w.dtype != torch.int8:
        raise ValueError(f"conv weight must be f32, f16 or int8, got {w.dtype}")
    data = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()
    col_sum = data.sum(1, dtype=torch.int32) if w.dtype == torch.int8 else None
    return PreparedWeight(data, (int(w.shape[2]), int(w.shape[3])), col_sum)


def supports(kernel_size, stride, padding, dilation, groups, cin, cout) -> str | None:
    """Why this kernel cannot run a conv (None when it can): the backend falls back to torch.
    Any groups dividing Cin and Cout runs; depthwise (groups = Cin = Cout) does too, but
    depthwise.py is the faster kernel for it."""
    if groups < 1 or cin % groups or cout % groups:
        return (f"groups = {groups} must be >= 1 and divide both Cin = {cin} and Cout = "
                f"{cout}")
    if min(*kernel_size, *stride, *dilation, cin, cout) < 1 or min(padding) < 0:
        return "kernel size, stride, dilation and channels must be >= 1 and padding >= 0"
    return None


def _pow2_at_least(n: int, least: int) -> int:
    return max(least, 1 << (n - 1).bit_length())


def config_for(config: Mapping | None, cin: int, int8: bool, cout: int | None = None) -> dict:
    """The launch config: `config`, or the default with BLOCK_K near `cin` (the channels of one
    group) and, when `cout` (the output channels of one group, grouped convs only) is given,
    BLOCK_N near it. int8 dots need BLOCK_K >= 32 on NVIDIA GPUs (16 for float)."""
    least_k = 32 if int8 else 16
    if config is None:
        cfg = dict(DEFAULT_CONFIG, BLOCK_K=min(DEFAULT_CONFIG["BLOCK_K"],
                                               _pow2_at_least(cin, least_k)))
        if cout is not None:
            cfg["BLOCK_N"] = min(DEFAULT_CONFIG["BLOCK_N"], _pow2_at_least(cout, 16))
        return cfg
    cfg = dict(config)
    if min(cfg["BLOCK_M"], cfg["BLOCK_N"]) < 16 or cfg["BLOCK_K"] < least_k:
        raise ValueError(f"config {cfg}: dot tiles need BLOCK_M, BLOCK_N >= 16 and BLOCK_K >= "
                         f"{least_k}")
    return cfg


# --- kernel source ------------------------------------------------------------------------------

_MAIN = """
def conv2d_kernel(
    x_ptr, w_ptr, out_ptr,{params}
    M, N, {group_params}H, W, CIN, HO, WO,
    sxb, sxh, sxw, som,
    zp, wsum_ptr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
{num_n}    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
{offs_n}    offs_k = tl.arange(0, BLOCK_K)
{pixels}    w_cols = w_ptr + offs_n * (KH * KW * CIN)

    n_c = tl.cdiv(CIN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc})
    for it in range(0, KH * KW * n_c):
        tap = it // n_c
        cc = (it - tap * n_c) * BLOCK_K + offs_k
        ih = ih0 + (tap // KW) * DH
        iw = iw0 + (tap % KW) * DW
        inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        mask_c = cc < CIN
        a = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + cc[None, :],
                    mask=inside[:, None] & mask_c[None, :], other={pad})
        b = tl.load(w_cols[None, :] + (tap * CIN + cc)[:, None],
                    mask=mask_c[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc{dot})
{correct}
"""


# The tile's columns: G = 1 (as before groups), or the G > 1 form, where NG = Cout_g columns of
# group `grp` start at grp * NG, a tile covers columns of one group only, and its input channels
# start at grp * CIN (CIN = Cin_g).
_N_PLAIN = ("    num_n = tl.cdiv(N, BLOCK_N)\n",
            "    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)\n", "")
_N_GROUPED = ("    num_ng = tl.cdiv(NG, BLOCK_N)\n"
              "    num_n = G * num_ng\n",
              "    grp = pid_n // num_ng\n"
              "    offs_ng = (pid_n - grp * num_ng) * BLOCK_N + tl.arange(0, BLOCK_N)\n"
              "    offs_n = grp * NG + offs_ng\n",
              "    mask_n = offs_ng < NG\n"
              "    x_rows = x_rows + grp * CIN\n")


def _source(finish: Finish, int8: bool, grouped: bool = False) -> str:
    params = "".join(f" {p}," for p in finish.params())
    correct = ("    acc = acc - zp * tl.load(wsum_ptr + offs_n, mask=mask_n, other=0)[None, :]\n"
               if int8 else "")
    num_n, offs_n, group_pixels = _N_GROUPED if grouped else _N_PLAIN
    body = _MAIN.format(params=params, group_params="NG, G, " if grouped else "",
                        num_n=num_n, offs_n=offs_n, pixels=PIXELS + group_pixels,
                        acc="tl.int32" if int8 else "tl.float32",
                        pad="zp" if int8 else "0.0",
                        dot="" if int8 else ", input_precision=DOT_PRECISION", correct=correct)
    return jit.HEADER + body.lstrip("\n") + "\n".join(finish.lines()) + "\n"


def _kernel(finish: Finish, int8: bool, grouped: bool):
    return jit.build(_source(finish, int8, grouped), "conv2d_kernel")  # cached by source, mode


# --- host wrappers ------------------------------------------------------------------------------


def _launch_config(config: Mapping | None, cin: int, cout: int, groups: int, int8: bool
                   ) -> dict:
    return config_for(config, cin // groups, int8, None if groups == 1 else cout // groups)


def _groups(groups, cin: int) -> int:
    try:
        g = operator.index(groups)
    except TypeError:
        raise ValueError(f"groups must be an int, got {groups!r}") from None
    if g < 1 or cin % g:
        raise ValueError(f"groups = {g} must be >= 1 and divide the input's Cin = {cin}")
    return g


def _weight(w_prepared, x: torch.Tensor, kernel_size: Pair, dtype: torch.dtype, groups: int
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = w_prepared.data if isinstance(w_prepared, PreparedWeight) else w_prepared
    if isinstance(w_prepared, PreparedWeight) and w_prepared.kernel_size != kernel_size:
        raise ValueError(f"weights were prepared for kernel {w_prepared.kernel_size}, "
                         f"called with kernel_size {kernel_size}")
    k = kernel_size[0] * kernel_size[1] * (x.shape[1] // groups)
    if w.dim() != 2 or w.shape[1] != k:
        cin = "Cin" if groups == 1 else f"Cin/groups (groups = {groups})"
        raise ValueError(f"prepared weight must be [Cout, kh*kw*{cin} = {k}] for input "
                         f"{list(x.shape)} and kernel {kernel_size}, got {list(w.shape)}")
    if w.shape[0] % groups:
        raise ValueError(f"groups = {groups} must divide Cout = {w.shape[0]}")
    if w.dtype != dtype:
        raise ValueError(f"weight dtype {w.dtype} does not match the input's ({dtype})")
    col_sum = w_prepared.col_sum if isinstance(w_prepared, PreparedWeight) else None
    return w.contiguous(), col_sum


def _launch(finish: Finish, x, w, out, extra: list, zp: int, wsum, kernel_size, stride,
            padding, dilation, groups: int, cfg: dict, precision, int8: bool) -> torch.Tensor:
    b, cin, h, wd = x.shape
    cout, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    m = b * ho * wo
    cin_g, cout_g = cin // groups, cout // groups
    grid = (cdiv(m, cfg["BLOCK_M"]) * groups * cdiv(cout_g, cfg["BLOCK_N"]),)
    group_args = [] if groups == 1 else [cout_g, groups]
    sxb, _, sxh, sxw = x.stride()
    _kernel(finish, int8, groups != 1)[grid](
        x, w, out, *extra, m, cout, *group_args, h, wd, cin_g, ho, wo, sxb, sxh, sxw,
        out.stride(3),
        zp, w if wsum is None else wsum,
        KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1], PH=padding[0],
        PW=padding[1], DH=dilation[0], DW=dilation[1], DOT_PRECISION=precision,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg.get("GROUP_M", 8), num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 3), enable_fp_fusion=not int8)
    return out


def conv2d(x: torch.Tensor, w_prepared, *, kernel_size, bias: torch.Tensor | None = None,
           stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
           epilogue: Epilogue | None = None, operands: Mapping[int, torch.Tensor] | None = None,
           out_dtype=None, config: Mapping | None = None) -> torch.Tensor:
    """Float conv2d: x f32/f16 [B, Cin, H, W] (channels_last), weights [Cout, Cin/groups, kh,
    kw] of the same dtype from `prepare_weight`, bias float [Cout]; f32 accumulation, then the
    epilogue from stage 0's dtype. Returns [B, Cout, Ho, Wo] channels_last as out_dtype
    (default x's dtype)."""
    x = nhwc(x, "conv2d input")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"conv2d input must be f32 or f16, got {x.dtype}")
    kernel_size, stride, padding, dilation = geometry(kernel_size, stride, padding, dilation)
    groups = _groups(groups, x.shape[1])
    w, _ = _weight(w_prepared, x, kernel_size, x.dtype, groups)
    out_shape = (x.shape[0], w.shape[0], *out_size(x, kernel_size, stride, padding, dilation))
    bias = check_vector(bias, w.shape[0], "bias")
    out = out_dtype_name(out_dtype, FLOAT_DTYPES[x.dtype])
    if out not in ("f32", "f16"):
        raise ValueError(f"float conv2d stores f32 or f16, not {out}")
    finish = make_finish(epilogue, operands, out_shape, FLOAT_DTYPES[x.dtype], bias is not None,
                         None, out)
    y = empty_out(out_shape, out, x.device)
    extra = finish.args(bias, None, None, None, 0, operands, out_shape)
    return _launch(finish, x, w, y, extra, 0, None, kernel_size, stride, padding, dilation,
                   groups, _launch_config(config, x.shape[1], w.shape[0], groups, False),
                   "ieee" if x.dtype == torch.float32 else None, False)


def qconv2d(x: torch.Tensor, w_prepared, w_scale: torch.Tensor, *, kernel_size, x_scale,
            x_zero_point: int = 0, bias: torch.Tensor | None = None, stride=(1, 1),
            padding=(0, 0), dilation=(1, 1), groups: int = 1, epilogue: Epilogue | None = None,
            operands: Mapping[int, torch.Tensor] | None = None, out_dtype: str = "f32",
            out_scale: float | None = None, out_zero_point: int = 0,
            config: Mapping | None = None) -> torch.Tensor:
    """int8 conv2d (docs/quantized-ir.md, qconv2d): x int8 [B, Cin, H, W] (channels_last),
    int8 weights [Cout, Cin/groups, kh, kw] from `prepare_weight`, w_scale f32 [Cout];
    x_scale a float (static) or a 1-element f32 tensor (dynamic, zero point 0). Exact int32
    accumulator, then the float32 epilogue; out_dtype "f32" | "f16" | "i8" (requantized with
    out_scale, out_zero_point) | "i32" (the raw accumulator). Returns [B, Cout, Ho, Wo]
    channels_last."""
    x = nhwc(x, "qconv2d input")
    if x.dtype != torch.int8:
        raise ValueError(f"qconv2d input must be int8, got {x.dtype}")
    kernel_size, stride, padding, dilation = geometry(kernel_size, stride, padding, dilation)
    groups = _groups(groups, x.shape[1])
    w, col_sum = _weight(w_prepared, x, kernel_size, torch.int8, groups)
    cout = w.shape[0]
    out_shape = (x.shape[0], cout, *out_size(x, kernel_size, stride, padding, dilation))
    out = out_dtype_name(out_dtype, "f32")
    dynamic = check_quant(x_scale, x_zero_point, out, out_scale, out_zero_point)
    w_scale = check_vector(w_scale, cout, "w_scale")
    bias = check_vector(bias, cout, "bias")
    if col_sum is None:
        col_sum = w.sum(1, dtype=torch.int32)
    finish = make_finish(epilogue, operands, out_shape, "f32", bias is not None,
                         "dynamic" if dynamic else "static", out)
    y = empty_out(out_shape, out, x.device)
    xs = x_scale.reshape(1).contiguous() if dynamic else x_scale
    extra = finish.args(bias, w_scale, xs, out_scale, out_zero_point, operands, out_shape)
    cfg = _launch_config(config, x.shape[1], cout, groups, True)
    return _launch(finish, x, w, y, extra, int(x_zero_point), col_sum, kernel_size, stride,
                   padding, dilation, groups, cfg, None, True)


__all__ = ["CONFIGS", "PreparedWeight", "prepare_weight", "supports", "conv2d", "qconv2d"]
