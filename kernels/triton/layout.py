"""Layout ops for the Triton backend: views where strides allow, one generated copy kernel where
data must move (a reshape of a non-contiguous tensor, a change of storage order, `cat`, `pad`).

Why one kernel: every such move is "walk the output's coordinates, read the source at its own
strides (shifted, and masked or mirrored on padded dims), write the destination at its
strides". A `cat` writes each input into its slice of one output buffer (a strided view of it);
a storage-order change is a copy into a channels-last buffer; `pad` reads the source shifted by
the leading pads; `index`, `embedding` and `gather` add source offsets read from position
tensors (each broadcast to the output, read at its strides). The host drops size-1 dims and
merges dims that every tensor walks as one, so most copies are 1-3 dims; which dims are padded
and how, and how many index terms there are, is part of the generated source.

    for each block of BLOCK flat output offsets (one program each):
        i_d = unravel(offs, sizes)                  # output coordinates
        j_d = i_d - lo_d on padded dims             # constant: masked, the fill outside
                                                    # replicate: clamped; reflect: mirrored
        v = load(src + sum(j_d * src_stride_d) + sum(p_k * S_k))  # p_k: index term k
        store(dst + sum(i_d * dst_stride_d), v)

Views (permute, slice, select, squeeze, unsqueeze, expand, split pieces, and a reshape whose
strides allow it) move no data and launch nothing; `lower.py` returns them as torch views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


def _source(rank: int, modes: tuple[str | None, ...], dtype: str, wide: bool,
            n_index: int) -> str:
    """The copy kernel for `rank` coalesced dims; modes[d] is None or how dim d is padded. Each
    of the `n_index` index terms adds positions p_k * S_k to the source offset, p_k read from
    an index tensor at its strides q_k (negative positions count from the end, in_k)."""
    padded = [d for d in range(rank) if modes[d] is not None]
    params = ["src", "dst", "n", *(f"size{d}" for d in range(1, rank)),
              *(f"s{d}" for d in range(rank)), *(f"t{d}" for d in range(rank)),
              *(f"lo{d}, in{d}" for d in padded), "fill_ptr"]
    for k in range(n_index):
        params += [f"idx{k}", *(f"q{k}_{d}" for d in range(rank)), f"S{k}", f"n{k}"]
    lines = ["def copy_kernel(", f"    {', '.join(params)},", "    BLOCK: tl.constexpr,", "):",
             "    pid = tl.program_id(0)"]
    start = "pid.to(tl.int64) * BLOCK" if wide else "pid * BLOCK"
    lines += [f"    offs = {start} + tl.arange(0, BLOCK)", "    mask = offs < n",
              "    rest = offs"]
    for d in range(rank - 1, 0, -1):
        lines += [f"    i{d} = rest % size{d}", f"    rest = rest // size{d}"]
    lines.append("    i0 = rest")
    inside = []
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
    terms = [f"{'j' if modes[d] is not None else 'i'}{d} * s{d}" for d in range(rank)]
    for k in range(n_index):  # positions were range-checked on the host
        where = " + ".join(f"i{d} * q{k}_{d}" for d in range(rank))
        lines.append(f"    p{k} = tl.load(idx{k} + {where}, mask=mask, other=0)")
        if wide:  # int32 positions times a stride can pass 2**31
            lines.append(f"    p{k} = p{k}.to(tl.int64)")
        lines.append(f"    p{k} = tl.where(p{k} < 0, p{k} + n{k}, p{k})")
        terms.append(f"p{k} * S{k}")
    dst = " + ".join(f"i{d} * t{d}" for d in range(rank))
    load_mask = " & ".join(["mask", *inside])
    lines.append(f"    v = tl.load(src + {' + '.join(terms)}, mask={load_mask}, other=0)")
    if inside:
        lines.append("    fill = tl.load(fill_ptr)")
        lines.append(f"    v = tl.where({' & '.join(inside)}, v, fill).to({TL[dtype]})")
    lines.append(f"    tl.store(dst + {dst}, v, mask=mask)")
    return jit.HEADER + "\n".join(lines) + "\n"


_KERNELS: dict[Any, Any] = {}


def _kernel(rank: int, modes: tuple[str | None, ...], dtype: str, wide: bool,
            n_index: int) -> Any:
    key = (rank, modes, dtype, wide, n_index, jit.interpreting())
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = jit.build(_source(rank, modes, dtype, wide, n_index),
                                           "copy_kernel")
    return kernel


@dataclass(frozen=True)
class IndexTerm:
    """A source offset read from an index tensor: positions (broadcast to the destination's
    shape, so read at its strides) times the source stride of the dim they index, whose size
    wraps negative positions."""

    positions: torch.Tensor
    stride: int
    size: int


# --- host: dims as strides ------------------------------------------------------------------------


def _coalesce(sizes: Sequence[int], strides: Sequence[Sequence[int]],
              pads: Sequence[tuple[int, int] | None]) -> list[tuple[int, list[int], Any]]:
    """(size, one stride per tensor, pad) per dim: size-1 unpadded dims dropped, and unpadded
    neighbours that every tensor walks as one merged."""
    dims = [(z, [st[d] for st in strides], p) for d, (z, p) in enumerate(zip(sizes, pads))
            if z != 1 or p is not None]
    if not dims:
        return [(1, [0] * len(strides), None)]
    merged = [dims[0]]
    for z, st, p in dims[1:]:
        oz, ost, op = merged[-1]
        if p is None and op is None and all(o == s * z for o, s in zip(ost, st)):
            merged[-1] = (oz * z, st, None)
        else:
            merged.append((z, st, p))
    return merged


def _launch(src: torch.Tensor, dst: torch.Tensor, pads: Sequence[tuple[int, int] | None],
            mode: str = "constant", fill: float = 0.0, src_strides: Sequence[int] | None = None,
            index: Sequence[IndexTerm] = ()) -> torch.Tensor:
    """Copy `src` into `dst`: shapes equal but on padded dims (pads[d] = (before, after)); or,
    with index terms, src read at `src_strides` (one per dst dim) plus the terms' offsets."""
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
    strides = [tuple(src.stride() if src_strides is None else src_strides), dst.stride(),
               *(t.positions.stride() for t in index)]
    dims = _coalesce(dst.shape, strides, pads)
    if len(dims) > MAX_RANK:
        raise ValueError(f"copy: {len(dims)} dims after merging; the kernel takes {MAX_RANK}")
    sizes = [d[0] for d in dims]
    modes = tuple(None if p is None else mode for _, _, p in dims)
    reach = max(sum((z - 1) * abs(st[k]) for z, (_, st, _) in zip(sizes, dims))
                for k in range(len(strides)))
    reach += sum(t.size * abs(t.stride) for t in index)  # anywhere along an indexed dim
    wide = n + BLOCK > _INT32_LIMIT or reach > _INT32_LIMIT
    args: list[Any] = [src, dst, n, *sizes[1:], *(st[0] for _, st, _ in dims),
                       *(st[1] for _, st, _ in dims)]
    for d, (_, _, p) in enumerate(dims):
        if p is not None:
            args += [p[0], sizes[d] - p[0] - p[1]]
    # the fill as one element of dst's dtype: a float argument would reach the kernel as fp32
    constant = any(m is not None for m in modes) and mode == "constant"
    args.append(torch.full((1,), fill, dtype=dst.dtype, device=dst.device) if constant else dst)
    for k, term in enumerate(index):
        args += [term.positions, *(st[2 + k] for _, st, _ in dims), term.stride, term.size]
    kernel = _kernel(len(dims), modes, dtype, wide, len(index))
    kernel[(cdiv(n, BLOCK),)](*args, BLOCK=BLOCK, num_warps=4)
    return dst


def copy(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst[...] = src, each at its own strides (dst may be a strided view of a larger buffer)."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy: shapes {list(src.shape)} and {list(dst.shape)} differ")
    return _launch(src, dst, [None] * dst.dim())


def fits(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """Whether the copy kernel can copy src into dst: at most MAX_RANK dims once merged."""
    return len(_coalesce(dst.shape, [src.stride(), dst.stride()], [None] * dst.dim())) <= MAX_RANK


def contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous, else a contiguous copy made by the copy kernel (by torch for
    the rare tensor of more than MAX_RANK dims that do not merge: the kernels that call this
    take any rank)."""
    if x.is_contiguous():
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return copy(x, out) if fits(x, out) else x.contiguous()


def memory_format(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x stored as `layout` ("nhwc": channels-last, "nchw": contiguous); x itself if it is."""
    if layout == "nchw" or x.dim() != 4:
        return contiguous(x)
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    return copy(x, out) if fits(x, out) else x.contiguous(memory_format=torch.channels_last)


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


def index(x: torch.Tensor, dim: int, positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """x[:, ..., p0, p1, ...] with k position tensors on dims dim .. dim + k - 1 (broadcast
    together; their shape replaces those dims; negative positions count from the end). x[idx]
    on one dim is k = 1; embedding is x = weight, dim 0. Positions must already be checked."""
    dim = dim % x.dim()
    k = len(positions)
    if not 1 <= k <= x.dim() - dim:
        raise ValueError(f"index: {k} position tensors from dim {dim} of a rank-{x.dim()} tensor")
    if any(p.dtype not in (torch.int64, torch.int32) for p in positions):
        raise ValueError("index: positions must be int32 or int64")
    shape = tuple(torch.broadcast_shapes(*(p.shape for p in positions)))
    lead, tail = x.shape[:dim], x.shape[dim + k:]
    out = torch.empty((*lead, *shape, *tail), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    src_strides = (*x.stride()[:dim], *(0,) * len(shape), *x.stride()[dim + k:])
    around = (None,) * dim + (Ellipsis,) + (None,) * len(tail)  # views: no copy of positions
    terms = [IndexTerm(p.expand(shape)[around].expand(out.shape), x.stride(dim + j),
                       x.shape[dim + j]) for j, p in enumerate(positions)]
    return _launch(x, out, [None] * out.dim(), src_strides=src_strides, index=terms)


def take(x: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """x[..., positions, ...] on `dim`: `index` with one position tensor."""
    return index(x, dim, [positions])


def gather(x: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """torch.gather: out[..., i, ...] = x[..., positions[..., i, ...], ...] on `dim`; positions
    have out's shape (no larger than x's on the other dims) and must already be checked."""
    dim = dim % x.dim()
    out = torch.empty(positions.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    src_strides = [0 if d == dim else s for d, s in enumerate(x.stride())]
    term = IndexTerm(positions, x.stride(dim), x.shape[dim])
    return _launch(x, out, [None] * out.dim(), src_strides=src_strides, index=[term])
