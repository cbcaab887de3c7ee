"""ONNX converters: selecting and scattering elements (Slice, Gather, GatherElements,
GatherND, Trilu, OneHot, ScatterElements, ScatterND, Compress, ReverseSequence).

Selections become `slice`, `select`, `index` (by constant or run-time positions) and `gather`.
The IR has no scatter op, but with indices known at import time a scatter is a gather: for
each output element, which update elements write it is computed here with numpy, and the graph
takes them with `index` ops by constant positions, combining them layer by layer (the k-th
writer of every element at once) with the reduction, under constant masks. Indices computed at
run time raise `NeedsConstantError` (bind them with `constants=`), as do Compress's condition
and ReverseSequence's lengths.
"""

from __future__ import annotations

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import axis_of, cast, ints, is_float, like, unsupported

MAX_WRITERS = 64  # updates that may land on one element (layers of the combination)


def _scatter(ctx, node, data, updates, targets: np.ndarray):
    """data with updates written at flat positions `targets` (one per update element, in
    order), combined by the node's reduction."""
    reduction = node.attr("reduction", "none")
    combine = {"none": None, "add": "add", "mul": "mul", "max": "maximum", "min": "minimum"}
    if reduction not in combine:
        raise unsupported(node, f"reduction {reduction!r}")
    size = data.type.numel
    if targets.size and (targets.min() < 0 or targets.max() >= size):
        raise unsupported(node, "indices out of range")
    writers: list[list[int]] = [[] for _ in range(size)]
    for u, t in enumerate(targets.tolist()):
        writers[t].append(u)
    if reduction == "none":
        writers = [w[-1:] for w in writers]
    layers = max((len(w) for w in writers), default=0)
    if layers > MAX_WRITERS:
        raise unsupported(node, f"{layers} updates land on one element")
    flat = ctx.emit("reshape", [updates], shape=(updates.type.numel,))
    out = data
    for k in range(layers):
        mask = np.array([len(w) > k for w in writers]).reshape(data.type.shape)
        pos = np.array([w[k] if len(w) > k else 0 for w in writers], dtype=np.int64)
        taken = ctx.emit("index", [flat, ctx.const(pos.reshape(data.type.shape))], dim=0)
        value = taken if combine[reduction] is None else ctx.emit(combine[reduction],
                                                                   [out, taken])
        out = ctx.emit("where", [ctx.const(mask), value, out])
    return out if out is not data else ctx.emit("identity", [data])


def _scatter_elements(ctx, node):
    data, updates = ctx.input(node, 0), ctx.input(node, 2)
    idx = ints(ctx.need_const(node, 1, "indices"), node, "indices")
    indices = np.array(idx, dtype=np.int64).reshape(ctx.input(node, 1).type.shape)
    axis = axis_of(node, node.attr("axis", 0), data.type.ndim)
    size = data.type.shape[axis]
    indices = np.where(indices < 0, indices + size, indices)
    if indices.shape != updates.type.shape:
        raise unsupported(node, f"indices {indices.shape} and updates {updates.type}")
    coords = list(np.indices(indices.shape))
    coords[axis] = indices
    if any((c >= n).any() or (c < 0).any() for c, n in zip(coords, data.type.shape)):
        raise unsupported(node, "indices out of range")
    targets = np.ravel_multi_index(coords, data.type.shape).reshape(-1)
    return [_scatter(ctx, node, data, updates, targets)]


def _scatter_nd(ctx, node):
    data, updates = ctx.input(node, 0), ctx.input(node, 2)
    raw = ctx.need_const(node, 1, "indices")
    indices = np.array(ints(raw, node, "indices"), dtype=np.int64).reshape(raw.shape)
    k = indices.shape[-1] if indices.ndim else 0
    shape = data.type.shape
    if indices.ndim < 1 or k > len(shape):
        raise unsupported(node, f"indices {indices.shape} for data {list(shape)}")
    inner = shape[k:]
    if updates.type.shape != indices.shape[:-1] + inner:
        raise unsupported(node, f"updates {updates.type} for indices {indices.shape}")
    lead = np.where(indices < 0, indices + np.array(shape[:k]), indices).reshape(-1, k)
    if (lead < 0).any() or (lead >= np.array(shape[:k])).any():
        raise unsupported(node, "indices out of range")
    base = np.ravel_multi_index(tuple(lead.T), shape[:k]) if k else np.zeros(len(lead), int)
    inner_size = int(np.prod(inner))
    targets = (base[:, None] * inner_size + np.arange(inner_size)[None, :]).reshape(-1)
    return [_scatter(ctx, node, data, updates, targets)]


def _compress(ctx, node):
    x = ctx.input(node, 0)
    condition = np.asarray(ctx.need_const(node, 1, "condition")).reshape(-1).astype(bool)
    axis = node.attr("axis")
    if axis is None:
        x = ctx.emit("reshape", [x], shape=(x.type.numel,))
        axis = 0
    axis = axis_of(node, axis, x.type.ndim)
    positions = np.nonzero(condition[:x.type.shape[axis]])[0].astype(np.int64)
    return [ctx.emit("index", [x, ctx.const(positions)], dim=axis)]


def _reverse_sequence(ctx, node):
    x = ctx.input(node, 0)
    lengths = ints(ctx.need_const(node, 1, "sequence_lens"), node, "sequence_lens")
    batch_axis = axis_of(node, node.attr("batch_axis", 1), x.type.ndim)
    time_axis = axis_of(node, node.attr("time_axis", 0), x.type.ndim)
    shape = x.type.shape
    if len(lengths) != shape[batch_axis] or batch_axis == time_axis:
        raise unsupported(node, f"sequence_lens {list(lengths)} for {x.type}")
    t = np.arange(shape[time_axis]).reshape([-1 if i == time_axis else 1
                                             for i in range(len(shape))])
    n = np.array(lengths).reshape([-1 if i == batch_axis else 1 for i in range(len(shape))])
    source = np.where(t < n, n - 1 - t, t)
    source = np.broadcast_to(source, shape).astype(np.int64)
    return [ctx.emit("gather", [x, ctx.const(np.ascontiguousarray(source))], dim=time_axis)]


def slice_positions(size: int, start: int, end: int, step: int) -> tuple[int, int, int] | range:
    """ONNX's clamping of one axis's slice: (start, end, step) for a positive step, else the
    positions as a range."""
    if step > 0:
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        return start, max(end, start), step
    start = min(max(start + size if start < 0 else start, 0), size - 1)
    end = min(max(end + size if end < 0 else end, -1), size - 1)
    return range(start, end, step)


def _slice(ctx, node):
    x = ctx.input(node, 0)
    rank = x.type.ndim
    starts = ints(ctx.need_const(node, 1, "starts"), node, "starts")
    ends = ints(ctx.need_const(node, 2, "ends"), node, "ends")
    axes = ints(ctx.need_const(node, 3, "axes"), node, "axes") if node.has(3) else \
        tuple(range(len(starts)))
    steps = ints(ctx.need_const(node, 4, "steps"), node, "steps") if node.has(4) else \
        (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise unsupported(node, "starts, ends, axes and steps of different lengths")
    out = x
    seen = set()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(node, axis, rank)
        if axis in seen or step == 0:
            raise unsupported(node, f"axis {axis} repeated or step 0")
        seen.add(axis)
        size = x.type.shape[axis]
        where = slice_positions(size, start, end, step)
        if isinstance(where, tuple):
            start, end, step = where
            if (start, end, step) != (0, size, 1):
                out = ctx.emit("slice", [out], dim=axis, start=start, end=end, step=step)
        else:
            positions = np.array(list(where), dtype=np.int64)
            out = ctx.emit("index", [out, ctx.const(positions)], dim=axis)
    return [out if out is not x else ctx.emit("identity", [x])]


def _gather(ctx, node):
    """A constant scalar index: `select` (the axis and index as the model writes them); rows of
    a constant 2-D float table (an initializer) by run-time indices: `embedding`, as
    nn.Embedding is captured; else `index`."""
    x = ctx.input(node, 0)
    given = node.attr("axis", 0)
    axis = axis_of(node, given, x.type.ndim)
    const = ctx.const_input(node, 1)
    if const is not None and const.ndim == 0:
        return [ctx.emit("select", [x], dim=given, index=int(const))]
    table = ctx.const_input(node, 0)
    if axis == 0 and table is not None and table.ndim == 2 and is_float(x) and const is None:
        return [ctx.emit("embedding", [x, ctx.input(node, 1)])]
    return [ctx.emit("index", [x, ctx.input(node, 1)], dim=axis)]


def _positive_index(ctx, node, i: int, size) -> object:
    """Input i as indices into a dim of `size` (an int, or a Value for a per-element size)
    with negative ones counted from the end."""
    const = ctx.const_input(node, i)
    if const is not None and isinstance(size, int):
        return ctx.const(np.where(const < 0, const + size, const).astype(const.dtype))
    idx = ctx.input(node, i)
    size_v = like(ctx, size, idx) if isinstance(size, int) else cast(ctx, size, idx.type.dtype)
    negative = ctx.emit("lt", [idx, like(ctx, 0, idx)])
    return ctx.emit("where", [negative, ctx.emit("add", [idx, size_v]), idx])


def _gather_elements(ctx, node):
    x = ctx.input(node, 0)
    axis = axis_of(node, node.attr("axis", 0), x.type.ndim)
    index = _positive_index(ctx, node, 1, x.type.shape[axis])
    return [ctx.emit("gather", [x, index], dim=axis)]


def _gather_nd(ctx, node):
    """x[b..., idx[..., 0], idx[..., 1], ...]: one index tensor per indexed dim (and an arange
    per batch dim), all broadcasting together, taken by one `index` from dim 0."""
    x, idx = ctx.input(node, 0), ctx.input(node, 1)
    b = node.attr("batch_dims", 0)
    k = idx.type.shape[-1] if idx.type.ndim else 0
    if idx.type.ndim < 1 or b < 0 or b + k > x.type.ndim or b >= idx.type.ndim:
        raise unsupported(node, f"indices {idx.type} for data {x.type} with batch_dims {b}")
    rank = idx.type.ndim - 1
    index = []
    for j in range(b):
        shape = [1] * rank
        shape[j] = x.type.shape[j]
        index.append(ctx.const(np.arange(x.type.shape[j], dtype=np.int64).reshape(shape)))
    table = ctx.const_input(node, 1)
    if table is not None and k:
        index.extend(ctx.const(c) for c in _smallest_columns(np.asarray(table, np.int64)))
    for j in range(k if table is None else 0):
        column = ctx.emit("select", [idx], dim=idx.type.ndim - 1, index=j)
        index.append(column)
    if not index:
        return [ctx.emit("identity", [x])]
    out = ctx.emit("index", [x, *index], dim=0)
    want = idx.type.shape[:-1] + x.type.shape[b + k:]
    if out.type.shape != want:
        out = ctx.emit("expand", [out], shape=want) if len(want) == out.type.ndim else \
            ctx.emit("reshape", [out], shape=want)
    return [out]


def _smallest_columns(table: np.ndarray) -> list[np.ndarray]:
    """The index columns of constant GatherND indices, each at its smallest broadcast shape
    (an exporter broadcasts x[rows[:, None], cols] to one table; this gives back the [B, 1] and
    [1, N] pieces), while together they still broadcast to the table's shape."""
    columns = [table[..., j] for j in range(table.shape[-1])]
    shape = columns[0].shape
    small = []
    for c in columns:
        for axis in range(c.ndim):
            if c.shape[axis] > 1 and (c == c.take([0], axis=axis)).all():
                c = c.take([0], axis=axis)
        small.append(c)
    for axis, size in enumerate(shape):
        if size > 1 and all(c.shape[axis] == 1 for c in small):
            small[-1] = np.repeat(small[-1], size, axis=axis)
    return [np.ascontiguousarray(c) for c in small]


def _trilu(ctx, node):
    x = ctx.input(node, 0)
    if x.type.ndim < 2:
        raise unsupported(node, "Trilu of rank < 2")
    k = int(ctx.need_const(node, 1, "k").reshape(())) if node.has(1) else 0
    rows, cols = x.type.shape[-2:]
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    keep = offset >= k if node.attr("upper", 1) else offset <= k
    return [ctx.emit("where", [ctx.const(keep), x, like(ctx, 0, x)])]


def _one_hot(ctx, node):
    idx = ctx.input(node, 0)
    depth = ctx.need_const(node, 1, "depth").reshape(-1)
    depth = int(depth[0])
    values = ctx.input(node, 2)
    if values.type.shape != (2,) or depth < 0:
        raise unsupported(node, f"values {values.type} or depth {depth}")
    if dtypes.is_float(idx.type.dtype):
        idx = ctx.emit("cast", [idx], dtype="i64")
    idx = cast(ctx, idx, "i64")
    negative = ctx.emit("lt", [idx, like(ctx, 0, idx)])
    idx = ctx.emit("where", [negative, ctx.emit("add", [idx, like(ctx, depth, idx)]), idx])
    axis = axis_of(node, node.attr("axis", -1), idx.type.ndim + 1)
    shape = [1] * (idx.type.ndim + 1)
    shape[axis] = depth
    positions = ctx.const(np.arange(depth, dtype=np.int64).reshape(shape))
    hot = ctx.emit("eq", [ctx.emit("unsqueeze", [idx], dim=axis), positions])
    off = ctx.emit("select", [values], dim=0, index=0)
    on = ctx.emit("select", [values], dim=0, index=1)
    return [ctx.emit("where", [hot, on, off])]


TABLE = [
    ("ScatterElements", (11, 13, 16, 18), _scatter_elements),
    ("ScatterND", (11, 13, 16, 18), _scatter_nd),
    ("Compress", (11, 28), _compress),
    ("ReverseSequence", (10, 28), _reverse_sequence),
    ("Slice", (10, 11, 13), _slice),
    ("Gather", (11, 13), _gather),
    ("GatherElements", (11, 13), _gather_elements),
    ("GatherND", (11, 12, 13), _gather_nd),
    ("Trilu", (14,), _trilu),
    ("OneHot", (11, 28), _one_hot),
]
