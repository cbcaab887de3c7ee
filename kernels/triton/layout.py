"""Layout ops for the Triton backend: views where strides allow, one generated copy kernel where
data must move (a reshape of a non-contiguous tensor, a change of storage order, `cat`, `pad`).

Why one kernel: every such move is "walk the output's coordinates, read the source at its own
strides (shifted, and masked or mirrored on padded dims), write the destination at its
strides". A `cat` writes each input into its slice of one output buffer (a strided view of it);
a storage-order change is a copy into a channels-last buffer; `pad` reads the source shifted by
the leading pads. The host drops size-1 dims and merges dims that source and destination both
walk as one, so most copies are 1-3 dims; which dims are padded and how is part of the
generated source.

    for each block of BLOCK flat output offsets (one program each):
        i_d = unravel(offs, sizes)                  # output coordinates
        j_d = i_d - lo_d on padded dims             # constant: masked, the fill outside
                                                    # replicate: clamped; reflect: mirrored
        v = load(src + sum(j_d * src_stride_d))
        store(dst + sum(i_d * dst_stride_d), v)

Views (permute, slice, select, squeeze, unsqueeze, expand, split pieces, and a reshape whose
strides allow it) move no data and launch nothing; `lower.py` returns them as torch views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from fxforge import dtypes
from fxforge.kernels.triton import jit
from fxforge.kernels.triton.codegen import TL
from fxforge.kernels.triton.host import cdiv

MAX_RANK = 6
BLOCK = 1024
_INT32_LIMIT = 2**31 - 1
PAD_MODES = ("constant", "replicate", "reflect")

# --- the generated kernel -----------------------------------------------------------------------


def _source(rank: int, modes: tuple[str | None, ...], dtype: str, wide: bool) -> str:
    """The copy kernel for `rank` coalesced dims; modes[d] is None, how dim d is padded, or
    "indexed" (the source coordinate is read from an index tensor, at its strides q_d)."""
    padded = [d for d in range(rank) if modes[d] not in (None, "indexed")]
    indexed = [d for d in range(rank) if modes[d] == "indexed"]
    params = ["src", "dst", "n", *(f"size{d}" for d in range(1, rank)),
              *(f"s{d}" for d in range(rank)), *(f"t{d}" for d in range(rank)),
              *(f"lo{d}, in{d}" for d in padded), "fill"]
    if indexed:
        params += ["idx", *(f"q{d}" for d in range(rank)), "in_idx"]
    lines = ["def copy_kernel(", f"    {', '.join(params)},", "    BLOCK: tl.constexpr,", "):",
             "    pid = tl.program_id(0)"]
    start = "pid.to(tl.int64) * BLOCK" if wide else "pid * BLOCK"
    lines += [f"    offs = {start} + tl.arange(0, BLOCK)", "    mask = offs < n",
              "    rest = offs"]
    for d in range(rank - 1, 0, -1):
        lines += [f"    i{d} = rest % size{d}", f"    rest = rest // size{d}"]
    lines.append("    i0 = rest")
    inside = []
    for d in indexed:  # negative positions count from the end (checked on the host)
        where = " + ".join(f"i{e} * q{e}" for e in range(rank))
        lines.append(f"    j{d} = tl.load(idx + {where}, mask=mask, other=0)")
        lines.append(f"    j{d} = tl.where(j{d} < 0, j{d} + in_idx, j{d})")
    for d in padded:
        lines.append(f"    j{d} = i{d} - lo{d}")
        if modes[d] == "constant":
            lines.append(f"    ok{d} = (j{d} >= 0) & (j{d} < in{d})")
            lines.append(f"    j{d} = tl.where(ok{d}, j{d}, 0)")
            inside.append(f"ok{d}")
        elif modes[d] == "replicate":
            lines.append(f"    j{d} = tl.minimum(tl.maximum(j{d}, 0), in{d} - 1)")
        else:  # reflect: pads are smaller than the dim (ops._check_edge_pad), one mirror each way
            lines.append(f"    j{d} = tl.abs(j{d})")
            lines.append(f"    j{d} = (in{d} - 1) - tl.abs((in{d} - 1) - j{d})")
    src = " + ".join(f"{'j' if modes[d] is not None else 'i'}{d} * s{d}" for d in range(rank))
    dst = " + ".join(f"i{d} * t{d}" for d in range(rank))
    load_mask = " & ".join(["mask", *inside])
    lines.append(f"    v = tl.load(src + {src}, mask={load_mask}, other=0)")
    if inside:
        lines.append(f"    v = tl.where({' & '.join(inside)}, v, fill).to({TL[dtype]})")
    lines.append(f"    tl.store(dst + {dst}, v, mask=mask)")
    return jit.HEADER + "\n".join(lines) + "\n"


_KERNELS: dict[Any, Any] = {}


def _kernel(rank: int, modes: tuple[str | None, ...], dtype: str, wide: bool) -> Any:
    key = (rank, modes, dtype, wide, jit.interpreting())
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = jit.build(_source(rank, modes, dtype, wide), "copy_kernel")
    return kernel


# --- host: dims as strides ------------------------------------------------------------------------


def _coalesce(sizes: Sequence[int], strides: Sequence[Sequence[int]],
              marks: Sequence[Any]) -> list[tuple[int, list[int], Any]]:
    """(size, one stride per tensor, mark) per dim: size-1 unmarked dims dropped, and unmarked
    neighbours that every tensor walks as one merged. A mark is a dim's pad or "indexed"."""
    dims = [(z, [st[d] for st in strides], m) for d, (z, m) in enumerate(zip(sizes, marks))
            if z != 1 or m is not None]
    if not dims:
        return [(1, [0] * len(strides), None)]
    merged = [dims[0]]
    for z, st, m in dims[1:]:
        oz, ost, om = merged[-1]
        if m is None and om is None and all(o == s * z for o, s in zip(ost, st)):
            merged[-1] = (oz * z, st, None)
        else:
            merged.append((z, st, m))
    return merged


def _launch(src: torch.Tensor, dst: torch.Tensor, pads: Sequence[tuple[int, int] | None],
            mode: str = "constant", fill: float = 0.0,
            index: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Copy `src` into `dst` (shapes equal but on padded dims: pads[d] = (before, after); or on
    the indexed dim of `index` = (dim, positions broadcast to dst's shape))."""
    if src.dtype != dst.dtype or src.device != dst.device:
        raise ValueError(f"copy: {src.dtype} on {src.device} into {dst.dtype} on {dst.device}")
    dtype = dtypes.from_torch(dst.dtype)
    if dtype not in TL:
        raise ValueError(f"copy: no Triton dtype for {dst.dtype}")
    n = dst.numel()
    if n == 0:
        return dst
    if src.numel() == 0 and mode != "constant":
        raise ValueError(f"pad mode {mode!r} of an empty tensor")
    marks: list[Any] = list(pads)
    strides = [src.stride(), dst.stride()]
    if index is not None:
        marks[index[0]] = "indexed"
        strides.append(index[1].stride())
    dims = _coalesce(dst.shape, strides, marks)
    if len(dims) > MAX_RANK:
        raise ValueError(f"copy: {len(dims)} dims after merging; the kernel takes {MAX_RANK}")
    sizes = [d[0] for d in dims]
    modes = tuple(None if m is None else "indexed" if m == "indexed" else mode
                  for _, _, m in dims)
    reach = max(sum((z - 1) * abs(st[k]) for z, (_, st, _) in zip(sizes, dims))
                for k in range(len(strides)))
    if index is not None:  # the source is read anywhere along the indexed dim
        reach += src.shape[index[0]] * abs(src.stride(index[0]))
    wide = n + BLOCK > _INT32_LIMIT or reach > _INT32_LIMIT
    args: list[Any] = [src, dst, n, *sizes[1:], *(st[0] for _, st, _ in dims),
                       *(st[1] for _, st, _ in dims)]
    for d, (_, _, m) in enumerate(dims):
        if m is not None and m != "indexed":
            args += [m[0], sizes[d] - m[0] - m[1]]
    args.append(bool(fill) if dtype == "bool" else int(fill) if not dtypes.is_float(dtype)
                else float(fill))
    if index is not None:
        args += [index[1], *(st[2] for _, st, _ in dims), src.shape[index[0]]]
    kernel = _kernel(len(dims), modes, dtype, wide)
    kernel[(cdiv(n, BLOCK),)](*args, BLOCK=BLOCK, num_warps=4)
    return dst


def copy(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst[...] = src, each at its own strides (dst may be a strided view of a larger buffer)."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy: shapes {list(src.shape)} and {list(dst.shape)} differ")
    return _launch(src, dst, [None] * dst.dim())


def contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous, else a contiguous copy made by the copy kernel."""
    if x.is_contiguous():
        return x
    return copy(x, torch.empty(x.shape, dtype=x.dtype, device=x.device))


def memory_format(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x stored as `layout` ("nhwc": channels-last, "nchw": contiguous); x itself if it is."""
    if layout == "nchw" or x.dim() != 4:
        return contiguous(x)
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    return copy(x, out)


def reshape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A view when x's strides allow one (no data moves), else a contiguous copy, viewed."""
    try:
        return x.view(tuple(shape))
    except RuntimeError:
        return contiguous(x).view(tuple(shape))


def _like_inputs(shape: Sequence[int], first: torch.Tensor) -> torch.Tensor:
    """An output buffer stored as the first input is: channels-last 4-D stays channels-last (the
    conv kernels read NHWC), anything else is contiguous."""
    fmt = (torch.channels_last if first.dim() == 4 and not first.is_contiguous()
           and first.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    return torch.empty(tuple(shape), dtype=first.dtype, device=first.device, memory_format=fmt)


def cat(xs: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.cat: one output buffer, each input copied into its slice by the copy kernel."""
    if not xs:
        raise ValueError("cat of no tensors")
    dim = dim % xs[0].dim()
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    for x in xs:
        if x.dtype != xs[0].dtype or x.dim() != len(shape) or any(
                a != b for d, (a, b) in enumerate(zip(x.shape, shape)) if d != dim):
            raise ValueError(f"cat: {x.dtype}{list(x.shape)} does not stack with "
                             f"{xs[0].dtype}{list(xs[0].shape)} along dim {dim}")
    out = _like_inputs(shape, xs[0])
    at = 0
    for x in xs:
        if x.shape[dim]:
            copy(x, out.narrow(dim, at, x.shape[dim]))
        at += x.shape[dim]
    return out


def pad(x: torch.Tensor, pads: Sequence[int], mode: str = "constant",
        value: float = 0.0) -> torch.Tensor:
    """F.pad: pads lists (before, after) pairs from the last dim backwards; modes constant,
    replicate and reflect (each pad smaller than its dim, as torch requires)."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if len(pads) % 2 or len(pads) // 2 > x.dim() or any(p < 0 for p in pads):
        raise ValueError(f"pad: pads {list(pads)} for a rank-{x.dim()} input")
    per_dim: list[tuple[int, int] | None] = [None] * x.dim()
    shape = list(x.shape)
    for i in range(len(pads) // 2):
        d = x.dim() - 1 - i
        before, after = int(pads[2 * i]), int(pads[2 * i + 1])
        if before or after:
            per_dim[d] = (before, after)
            shape[d] += before + after
            if mode == "reflect" and (before >= x.shape[d] or after >= x.shape[d]):
                raise ValueError(f"reflect pad ({before}, {after}) of a dim of size "
                                 f"{x.shape[d]}: each pad must be smaller than the dim")
    out = _like_inputs(shape, x)
    if math.prod(shape) == 0:
        return out
    return _launch(x, out, per_dim, mode, value)


def check_positions(positions: torch.Tensor, size: int, what: str,
                    negative: bool) -> None:
    """Positions along a dim of `size` must be in range, as torch requires (negative ones count
    from the end where `negative`). This reads them on the host: a synchronisation for positions
    made on the device, none for constant ones (checked once, when the node is lowered)."""
    if positions.numel() == 0:
        return
    low, high = int(positions.min()), int(positions.max())
    if high >= size or low < (-size if negative else 0):
        raise IndexError(f"{what}: position {high if high >= size else low} is out of range for "
                         f"a dim of size {size}")


def take(x: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """x[..., positions, ...] on `dim` (positions of any shape replace that dim, as x[idx] on
    dim 0 does; negative ones count from the end). Positions must already be checked."""
    dim = dim % x.dim()
    if positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"take: positions must be int32 or int64, got {positions.dtype}")
    flat = positions.reshape(-1)
    shape = list(x.shape)
    shape[dim] = flat.numel()
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    view = [1] * len(shape)
    view[dim] = flat.numel()
    if out.numel():
        _launch(x, out, [None] * x.dim(), index=(dim, flat.view(view).expand(shape)))
    return out.reshape(*x.shape[:dim], *positions.shape, *x.shape[dim + 1:])


def gather(x: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """torch.gather: out[..., i, ...] = x[..., positions[..., i, ...], ...] on `dim`; positions
    have out's shape (no larger than x's on the other dims) and must already be checked."""
    dim = dim % x.dim()
    out = torch.empty(positions.shape, dtype=x.dtype, device=x.device)
    if out.numel():
        src = x.narrow(dim, 0, x.shape[dim])
        other = [slice(0, z) if d != dim else slice(None) for d, z in enumerate(out.shape)]
        _launch(src[tuple(other)], out, [None] * x.dim(), index=(dim, positions))
    return out
