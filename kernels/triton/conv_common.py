"""What the implicit-GEMM conv (conv.py) and the depthwise conv (depthwise.py) share: the
argument checks and geometry of a conv on NHWC activations, the channels-last output, and the
phase after the accumulator (`Finish`: bias, int8 scale, IR epilogue, store) with its checks.

The two kernels differ only in how they accumulate; everything from the accumulator on, and the
host-side checks around it, must stay the same for both, so it lives here once.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import host
from fxforge.kernels.triton.codegen import TL, Epilogue, operand_name

Pair = tuple[int, int]
FLOAT_DTYPES = {torch.float32: "f32", torch.float16: "f16"}
OUT_DTYPES = ("f32", "f16", "i8", "i32")

# Kernel source shared by both conv kernels: each output row m of the [M = B*Ho*Wo, N] tile is a
# pixel (b, oh, ow) in NHWC order; its first input tap is at (ih0, iw0) of image b.
PIXELS = """\
    mask_m = offs_m < M
    mask_n = offs_n < N
    ow = offs_m % WO
    oh = (offs_m // WO) % HO
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_rows = x_ptr + (offs_m // (WO * HO)) * sxb
"""


# --- geometry and checks ------------------------------------------------------------------------


def pair(v, what: str) -> Pair:
    try:
        t = (operator.index(v),) * 2
    except TypeError:
        t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return t


def geometry(kernel_size, stride, padding, dilation) -> tuple[Pair, Pair, Pair, Pair]:
    return tuple(pair(v, n) for v, n in ((kernel_size, "kernel_size"), (stride, "stride"),
                                         (padding, "padding"), (dilation, "dilation")))


def out_size(x: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair
             ) -> Pair:
    """(Ho, Wo), or a ValueError when the geometry is invalid or leaves no output."""
    if min(*kernel_size, *stride, *dilation) < 1 or min(padding) < 0:
        raise ValueError(f"kernel {kernel_size}, stride {stride}, dilation {dilation} must be "
                         f">= 1 and padding {padding} >= 0")
    ho, wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
              zip(x.shape[2:], kernel_size, stride, padding, dilation))
    if ho < 1 or wo < 1:
        raise ValueError(f"conv of a {tuple(x.shape[2:])} image with kernel {kernel_size}, "
                         f"stride {stride}, padding {padding}, dilation {dilation} has no output")
    return ho, wo


def nhwc(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{what} must be [B, C, H, W], got shape {tuple(x.shape)}")
    x = x.contiguous(memory_format=torch.channels_last)
    if x.numel() >= 2**31:
        raise ValueError(f"{what} has {x.numel()} elements; 32-bit offsets hold fewer than 2**31")
    return x


def empty_out(out_shape, out: str, device) -> torch.Tensor:
    """The output, [B, C, Ho, Wo] channels_last, addressed with 32-bit offsets."""
    if torch.Size(out_shape).numel() >= 2**31:
        raise ValueError(f"output {list(out_shape)} needs 64-bit offsets (2**31 elements or more)")
    return torch.empty(out_shape, dtype=dtypes.to_torch(out), device=device,
                       memory_format=torch.channels_last)


def out_dtype_name(out_dtype, default: str) -> str:
    if out_dtype is None:
        return default
    name = dtypes.from_torch(out_dtype) if isinstance(out_dtype, torch.dtype) else out_dtype
    if name not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    return name


# --- the epilogue and store phase --------------------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """Everything after the accumulator, as source: bias, the int8 scale (`quant`: None for
    float, "static" or "dynamic"), the IR epilogue, and the store as `out` (a dtype name; "i32"
    stores the raw int8 accumulator). Works on the tile variables acc, offs_m, offs_n, mask_m,
    mask_n, and stores to out_ptr + m * som + n."""

    epilogue: Epilogue
    has_bias: bool
    quant: str | None
    out: str

    def params(self) -> list[str]:
        names = ["bias_ptr"] if self.has_bias else []
        if self.quant is not None and self.out != "i32":
            names += ["ws_ptr", "xs_ptr" if self.quant == "dynamic" else "x_scale"]
        if self.out == "i8":
            names += ["out_scale", "out_zp"]
        for i in self.epilogue.operands:
            e = operand_name(i)
            names += [f"{e}_ptr", f"{e}_sm", f"{e}_sn"]
        return names

    def args(self, bias, w_scale, x_scale, out_scale, out_zp, operands, out_shape) -> list:
        """Launch arguments in the order of `params`."""
        vals = [bias] if self.has_bias else []
        if self.quant is not None and self.out != "i32":
            xs = x_scale if self.quant == "dynamic" else float(torch.tensor(x_scale).float())
            vals += [w_scale, xs]
        if self.out == "i8":
            vals += [float(torch.tensor(out_scale).float()), int(out_zp)]
        for i in self.epilogue.operands:
            vals += host.rows_view(operands[i], out_shape, channels_last=True)
        return vals

    def lines(self) -> list[str]:
        i4 = "    "
        mask = "mask_m[:, None] & mask_n[None, :]"
        out = [f"{i4}mask = {mask}"]
        if self.out == "i32":
            return out + [f"{i4}tl.store(out_ptr + offs_m[:, None] * som + offs_n[None, :], "
                          "acc, mask=mask)"]
        if self.quant is None:
            out.append(f"{i4}y = acc")
        else:
            scale = "tl.load(xs_ptr)" if self.quant == "dynamic" else "x_scale"
            out += [f"{i4}ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)",
                    f"{i4}y = acc.to(tl.float32) * ({scale} * ws)[None, :]"]
        if self.has_bias:
            out.append(f"{i4}y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]")
        out.append(f"{i4}y = y.to({TL[self.epilogue.stages[0].dtype]})")
        for i in self.epilogue.operands:
            e = operand_name(i)
            out.append(f"{i4}{e} = tl.load({e}_ptr + offs_m[:, None] * {e}_sm + offs_n[None, :] "
                       f"* {e}_sn, mask=mask, other=0)")
        steps, y = self.epilogue.lines("y", i4)
        out += steps
        if self.out == "i8":
            # rint half to even from floor: exact in f32 for |t| <= 1024 (clamped first, which
            # saturates the same), with no libdevice (absent in the interpreter) and no magic
            # constant that a reassociating compiler could fold away; div_rn: IEEE division
            out += [f"{i4}t = tl.div_rn({y}.to(tl.float32), out_scale)",
                    f"{i4}t = tl.minimum(tl.maximum(t, -1024.0), 1024.0)",
                    f"{i4}f = tl.floor(t)",
                    f"{i4}d = t - f",
                    f"{i4}odd = f - 2.0 * tl.floor(f * 0.5)",
                    f"{i4}r = tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + odd))",
                    f"{i4}q = tl.minimum(tl.maximum(r + out_zp, -128.0), 127.0)",
                    f"{i4}res = q.to(tl.int8)"]
        else:
            out.append(f"{i4}res = {y}.to({TL[self.out]})")
        out.append(f"{i4}tl.store(out_ptr + offs_m[:, None] * som + offs_n[None, :], res, "
                   "mask=mask)")
        return out


def make_finish(epilogue: Epilogue | None, operands: Mapping | None, out_shape, stage0: str,
                has_bias: bool, quant: str | None, out: str) -> Finish:
    """Check the epilogue against the conv's output and its operands; ValueError if they do not
    fit (a wrong shape, a missing operand, a step Triton cannot write). `stage0`: the dtype of
    the accumulator's stage when no epilogue is given."""
    operands = dict(operands or {})
    if epilogue is None:
        epilogue = Epilogue.none(TensorType(tuple(out_shape), stage0))
    start = epilogue.stages[0]
    # a float conv's accumulator may start the epilogue as any float dtype; int8's is f32
    if tuple(start.shape) != tuple(out_shape) or start.dtype not in (
            ("f32", "f16", "bf16") if quant is None else ("f32",)):
        raise ValueError(f"epilogue starts from {start}, but the conv gives "
                         f"{stage0}{list(out_shape)}")
    if out == "i32" and (epilogue.steps or has_bias):
        raise ValueError("out_dtype i32 returns the raw accumulator: no bias or epilogue")
    if not epilogue.supported():
        raise ValueError("the epilogue has a step with no Triton form")
    if set(operands) != set(epilogue.operands):
        raise ValueError(f"the epilogue reads inputs {sorted(epilogue.operands)}, operands "
                         f"given for {sorted(operands)}")
    for i, t in operands.items():
        want = epilogue.node_inputs[i]
        if dtypes.from_torch(t.dtype) != want.dtype:
            raise ValueError(f"epilogue operand {i} is {t.dtype}, the epilogue expects "
                             f"{want.dtype}")
        try:
            fits = torch.broadcast_shapes(t.shape, tuple(out_shape)) == tuple(out_shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"epilogue operand {i} of shape {tuple(t.shape)} does not "
                             f"broadcast to the output {list(out_shape)}")
    return Finish(epilogue, has_bias, quant, out)


def check_quant(x_scale, x_zero_point: int, out: str, out_scale, out_zero_point: int) -> bool:
    """Check the int8 parameters; True when x_scale is dynamic (a 1-element f32 tensor)."""
    dynamic = isinstance(x_scale, torch.Tensor)
    if dynamic and (x_scale.numel() != 1 or x_scale.dtype != torch.float32):
        raise ValueError(f"dynamic x_scale must be a 1-element f32 tensor, got "
                         f"{x_scale.dtype}{list(x_scale.shape)}")
    if dynamic and x_zero_point != 0:
        raise ValueError("dynamic quantization is symmetric: x_zero_point must be 0")
    if not -128 <= int(x_zero_point) <= 127 or not -128 <= int(out_zero_point) <= 127:
        raise ValueError("zero points must be in [-128, 127]")
    if out == "i8" and out_scale is None:
        raise ValueError("out_dtype i8 needs out_scale")
    return dynamic


def check_vector(v: torch.Tensor | None, n: int, what: str) -> torch.Tensor | None:
    """A per-channel f32 vector [n] (bias, w_scale), made contiguous f32. Unlike
    host.check_vector (f32 only, required), any float dtype is taken and None passes."""
    if v is None:
        return None
    if v.numel() != n or v.dim() != 1 or not v.dtype.is_floating_point:
        raise ValueError(f"{what} must be a float vector [{n}], got {v.dtype}{list(v.shape)}")
    return v.to(torch.float32).contiguous()
