"""Fused elementwise chains as one generated Triton kernel: one read of each input, one write.

The IR's `fused_elementwise` node is a list of steps over its inputs, which broadcast to the
output's shape. The host collapses the broadcast into per-input strides (0 on a broadcast dim),
merges dims that every input walks contiguously, and the kernel walks the output flat:

    for each block of BLOCK flat output offsets (one program each):
        coords = unravel(offs, sizes)                    # only dims a strided input needs
        for each input i:
            dense:   a_i = load(x_i + offs)              # laid out like the output
            scalar:  a_i = load(x_i)                     # one element, broadcast
            strided: a_i = load(x_i + sum(coords[d] * stride_i[d]))
        v = steps(a_0, a_1, ...)                         # codegen.chain_lines: f32 math, each
        store(out + offs, v)                             # step rounded to its stage dtype

When every input is dense or a scalar (the common case) no coordinates are computed at all.
Which inputs are dense / scalar / strided (and on which dims) is part of the generated source,
so a per-channel [1, C, 1, 1] operand costs one division and one modulo per element.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fxforge import dtypes
from fxforge.ir import TensorType
from fxforge.kernels.triton import codegen, jit

MAX_RANK = 6
DEFAULT_CONFIG = {"BLOCK": 1024, "num_warps": 4}
_INT32_LIMIT = 2**31 - 1


# --- what the generator can do -------------------------------------------------------------------


def supports(in_types: Sequence[TensorType], steps: Sequence[Mapping],
             stages: Sequence[TensorType]) -> str | None:
    """None when `fused_elementwise(in_types, steps)` has a Triton kernel, else why not."""
    if not steps or len(steps) != len(stages):
        return f"{len(steps)} steps but {len(stages)} stage types"
    if len(stages[-1].shape) > MAX_RANK:
        return f"output rank {len(stages[-1].shape)} > {MAX_RANK}"
    values = list(in_types)
    for k, (step, out) in enumerate(zip(steps, stages)):
        why = codegen.step_refusal(step["op"], codegen.step_attrs(step),
                                   [values[i] for i in step["args"]], out)
        if why is not None:
            return f"step {k}: {why}"
        values.append(out)
    return None


# --- host: broadcasting as strides --------------------------------------------------------------


def _coalesce(shape: Sequence[int], strides: list[Sequence[int]]
              ) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that every input walks as one (stride[d] ==
    stride[d+1] * size[d+1]), so most broadcasts end up as 1-3 dims."""
    dims = [(size, [s[d] for s in strides]) for d, size in enumerate(shape) if size != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    merged = [dims[0]]
    for size, st in dims[1:]:
        outer_size, outer = merged[-1]
        if all(o == s * size for o, s in zip(outer, st)):
            merged[-1] = (outer_size * size, st)
        else:
            merged.append((size, st))
    return [m[0] for m in merged], [[m[1][i] for m in merged] for i in range(len(strides))]


def _kind(strides: list[int], sizes: list[int]) -> tuple[bool, ...] | str:
    """"dense" (the output's layout), "scalar" (one element), or per dim: stride nonzero."""
    dense = [math.prod(sizes[d + 1:]) for d in range(len(sizes))]
    if strides == dense:
        return "dense"
    if all(s == 0 for s in strides):
        return "scalar"
    return tuple(s != 0 for s in strides)


# --- the generated kernel -----------------------------------------------------------------------


def _source(in_types: Sequence[TensorType], steps: Sequence[Mapping],
            stages: Sequence[TensorType], kinds: Sequence[Any], rank: int, wide: bool) -> str:
    n_in = len(in_types)
    strided = [i for i in range(n_in) if isinstance(kinds[i], tuple)]
    used = {d for i in strided for d, nz in enumerate(kinds[i]) if nz}
    params = [f"x{i}" for i in range(n_in)] + ["out", "n"]
    params += [f"size{d}" for d in range(1, rank)]
    params += [f"x{i}_stride{d}" for i in strided for d in range(rank) if kinds[i][d]]
    lines = ["def fused_elementwise_kernel(", f"    {', '.join(params)},",
             "    BLOCK: tl.constexpr,", "):", "    pid = tl.program_id(0)"]
    start = "pid.to(tl.int64) * BLOCK" if wide else "pid * BLOCK"
    lines += [f"    offs = {start} + tl.arange(0, BLOCK)", "    mask = offs < n"]
    if used:
        lines.append("    rest = offs")
        for d in range(rank - 1, min(used) - 1, -1):
            if d == 0:
                lines.append("    i0 = rest")
                continue
            lines.append(f"    i{d} = rest % size{d}")
            if d > min(used):
                lines.append(f"    rest = rest // size{d}")
    for i, kind in enumerate(kinds):
        if kind == "scalar":
            lines.append(f"    a{i} = tl.load(x{i})")
            continue
        where = "offs" if kind == "dense" else " + ".join(
            f"i{d} * x{i}_stride{d}" for d in range(rank) if kind[d])
        lines.append(f"    a{i} = tl.load(x{i} + {where}, mask=mask, other=0)")
    body, result = codegen.chain_lines([f"a{i}" for i in range(n_in)], in_types, steps, stages)
    lines += body
    lines.append(f"    tl.store(out + offs, {result}, mask=mask)")
    return jit.HEADER + "\n".join(lines) + "\n"


_KERNELS: dict[Any, Any] = {}


def _kernel(in_types, steps, stages, kinds, rank, wide):
    key = (tuple((t.dtype, len(t.shape) == 0) for t in in_types), repr(steps),
           tuple((t.dtype, len(t.shape) == 0) for t in stages), tuple(kinds), rank, wide,
           jit.interpreting())
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = _source(in_types, steps, stages, kinds, rank, wide)
        kernel = _KERNELS[key] = jit.build(source, "fused_elementwise_kernel")
    return kernel


# --- host wrappers ------------------------------------------------------------------------------


def _check_inputs(inputs: Sequence[torch.Tensor], in_types: Sequence[TensorType]) -> None:
    if len(inputs) != len(in_types):
        raise ValueError(f"{len(inputs)} inputs but {len(in_types)} input types")
    for k, (x, t) in enumerate(zip(inputs, in_types)):
        if tuple(x.shape) != tuple(t.shape) or x.dtype != dtypes.to_torch(t.dtype):
            raise ValueError(f"input {k} is {x.dtype}{list(x.shape)}, its type says {t}")
        if x.device != inputs[0].device:
            raise ValueError(f"input {k} is on {x.device}, input 0 on {inputs[0].device}")


def fused_elementwise(inputs: Sequence[torch.Tensor], in_types: Sequence[TensorType],
                      steps: Sequence[Mapping], stages: Sequence[TensorType],
                      config: Mapping[str, int] | None = None) -> torch.Tensor:
    """The chain `steps` over `inputs` (any layout; broadcast to stages[-1].shape), as a new
    contiguous tensor of stages[-1]'s shape and dtype. config: BLOCK, num_warps."""
    why = supports(in_types, steps, stages)
    if why is not None:
        raise ValueError(f"fused_elementwise: {why}")
    _check_inputs(inputs, in_types)
    out_type = stages[-1]
    device = inputs[0].device if inputs else None
    out = torch.empty(out_type.shape, dtype=dtypes.to_torch(out_type.dtype), device=device)
    n = out.numel()
    if n == 0:
        return out
    try:
        views = [x.expand(out_type.shape) for x in inputs]
    except RuntimeError as e:
        raise ValueError(f"fused_elementwise: inputs do not broadcast to {out_type}: {e}") from None
    sizes, strides = _coalesce(out_type.shape, [v.stride() for v in views])
    kinds = ["dense" if n == 1 else _kind(s, sizes) for s in strides]
    reach = max((sum((z - 1) * s for z, s in zip(sizes, st)) for st in strides), default=0)
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    block = max(16, min(cfg["BLOCK"], next_pow2(n)))
    wide = n + block > _INT32_LIMIT or reach > _INT32_LIMIT
    kernel = _kernel(in_types, steps, stages, kinds, len(sizes), wide)
    args: list[Any] = [*views, out, n, *sizes[1:]]
    args += [s for st, kind in zip(strides, kinds) if isinstance(kind, tuple)
             for s, nz in zip(st, kind) if nz]
    kernel[(cdiv(n, block),)](*args, BLOCK=block, num_warps=cfg["num_warps"])
    return out


def elementwise(op: str, attrs: Mapping[str, Any], inputs: Sequence[torch.Tensor],
                in_types: Sequence[TensorType], out_type: TensorType,
                config: Mapping[str, int] | None = None) -> torch.Tensor:
    """One registry elementwise op (a chain of one step)."""
    step = {"op": op, "args": tuple(range(len(inputs))), "attrs": dict(attrs)}
    return fused_elementwise(inputs, in_types, (step,), (out_type,), config)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
