"""ONNX converters: reductions (Reduce*, ArgMax/ArgMin, TopK, CumSum, CumProd) and Einsum.

ONNX reductions keep their input's type (a ReduceSum of int32s is an int32, a ReduceMean of
integers truncates), where the IR sums integers in int64 and averages floats only; converters
compute in the IR's types and cast back. ReduceProd and CumProd, which the IR lacks, multiply
the slices of each axis.
"""

from __future__ import annotations

import math

import numpy as np

from fxforge.onnx_converters import axis_of, cast, ints, is_float, like, unsupported

MAX_PROD_AXIS = 1024  # ReduceProd and CumProd multiply this many slices per axis at most


def _reduce_axes(ctx, node, x) -> tuple[int, ...] | None:
    """The normalized, sorted axes, or None for "do not reduce" (empty axes with
    noop_with_empty_axes)."""
    if "axes" in node.attrs:
        axes = tuple(node.attr("axes"))
    elif node.has(1):
        axes = ints(ctx.need_const(node, 1, "axes"), node, "axes")
    else:
        axes = ()
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(x.type.ndim))
    dims = sorted({axis_of(node, a, x.type.ndim) for a in axes})
    if len(dims) != len(axes):
        raise unsupported(node, f"repeated axes {list(axes)}")
    return tuple(dims)


def _prod(ctx, node, x, dims, keepdim):
    out = x
    for d in dims:
        size = out.type.shape[d]
        if size > MAX_PROD_AXIS:
            raise unsupported(node, f"ReduceProd over an axis of {size}")
        if size == 0:
            shape = out.type.shape[:d] + (1,) + out.type.shape[d + 1:]
            out = ctx.const(np.ones(shape, dtype=_np(out)))
            continue
        parts = ctx.emit("split", [out], n_outputs=size, sizes=(1,) * size, dim=d) \
            if size > 1 else [out]
        acc = parts[0]
        for p in parts[1:]:
            acc = ctx.emit("mul", [acc, p])
        out = acc
    if not keepdim:
        out = ctx.emit("reshape", [out], shape=tuple(n for i, n in enumerate(x.type.shape)
                                                     if i not in dims))
    return out


def _np(v):
    from fxforge import dtypes

    return dtypes.to_numpy(v.type.dtype)


def _sum(ctx, x, dims, keepdim):
    return ctx.emit("sum", [x], dims=dims, keepdim=keepdim)


def _reduce(kind: str):
    def convert(ctx, node):
        x = ctx.input(node, 0)
        dims = _reduce_axes(ctx, node, x)
        keep = bool(node.attr("keepdims", 1))
        dtype = x.type.dtype
        if dims is None:
            dims, keep = (), True
            if kind in ("sum", "mean", "max", "min", "prod"):
                return [ctx.emit("identity", [x])]
        if any(x.type.shape[d] == 0 for d in dims):
            return [_empty_reduction(ctx, node, kind, x, dims, keep)]
        if kind == "max" or kind == "min":
            return [ctx.emit("amax" if kind == "max" else "amin", [x], dims=dims,
                             keepdim=keep)]
        if kind == "prod":
            return [_prod(ctx, node, x, dims, keep)]
        if kind == "mean":
            work = x if is_float(x) else cast(ctx, x, "f64")
            return [cast(ctx, ctx.emit("mean", [work], dims=dims, keepdim=keep), dtype)]
        if kind == "sum":
            return [cast(ctx, _sum(ctx, x, dims, keep), dtype)]
        if kind == "l1":
            return [cast(ctx, _sum(ctx, ctx.emit("abs", [x]), dims, keep), dtype)]
        if kind == "sumsquare":
            return [cast(ctx, _sum(ctx, ctx.emit("mul", [x, x]), dims, keep), dtype)]
        if kind == "l2":
            total = _sum(ctx, ctx.emit("mul", [x, x]), dims, keep)
            total = total if is_float(total) else cast(ctx, total, "f64")
            return [cast(ctx, ctx.emit("sqrt", [total]), dtype)]
        if not is_float(x):
            raise unsupported(node, f"{node.op_type} of {dtype}")
        if kind == "logsum":
            return [ctx.emit("log", [_sum(ctx, x, dims, keep)])]
        return [_log_sum_exp(ctx, x, dims, keep)]

    return convert


def _empty_reduction(ctx, node, kind: str, x, dims, keep):
    """A reduction over no elements: ONNX's identity of each (-inf for a max, 1 for a
    product, 0 for a sum, -inf for the log of a sum)."""
    shape = tuple(1 if i in dims else n for i, n in enumerate(x.type.shape)
                  if keep or i not in dims)
    np_dtype = _np(x)
    if kind in ("max", "min"):
        if np_dtype.kind == "f":
            value = -np.inf if kind == "max" else np.inf
        elif np_dtype == np.bool_:
            value = kind == "min"
        else:
            info = np.iinfo(np_dtype)
            value = info.min if kind == "max" else info.max
    elif kind in ("logsum", "logsumexp"):
        value = -np.inf
    elif kind == "prod":
        value = 1
    elif kind == "mean":
        raise unsupported(node, "a mean over no elements")
    else:
        value = 0
    return ctx.const(np.full(shape, value, dtype=np_dtype))


def _log_sum_exp(ctx, x, dims, keep):
    """m = max (0 where infinite); log(sum(exp(x - m))) + m."""
    top = ctx.emit("amax", [x], dims=dims, keepdim=True)
    infinite = ctx.emit("eq", [ctx.emit("abs", [top]), like(ctx, math.inf, top)])
    top = ctx.emit("where", [infinite, like(ctx, 0.0, top), top])
    total = _sum(ctx, ctx.emit("exp", [ctx.emit("sub", [x, top])]), dims, keep)
    shift = top if keep else ctx.emit("reshape", [top], shape=total.type.shape)
    return ctx.emit("add", [ctx.emit("log", [total]), shift])


def _flip(ctx, x, dim: int):
    size = x.type.shape[dim]
    return ctx.emit("index", [x, ctx.const(np.arange(size - 1, -1, -1, dtype=np.int64))],
                    dim=dim)


def _arg(op: str):
    def convert(ctx, node):
        x = ctx.input(node, 0)
        axis = axis_of(node, node.attr("axis", 0), x.type.ndim)
        keep = bool(node.attr("keepdims", 1))
        if x.type.dtype == "bool":
            x = cast(ctx, x, "u8")
        if not node.attr("select_last_index", 0):
            return [ctx.emit(op, [x], dim=axis, keepdim=keep)]
        size = x.type.shape[axis]
        found = ctx.emit(op, [_flip(ctx, x, axis)], dim=axis, keepdim=keep)
        return [ctx.emit("sub", [like(ctx, size - 1, found), found])]

    return convert


def _topk(ctx, node):
    x = ctx.input(node, 0)
    k = ints(ctx.need_const(node, 1, "K"), node, "K")
    if len(k) != 1:
        raise unsupported(node, f"K with {len(k)} values")
    axis = axis_of(node, node.attr("axis", -1), x.type.ndim)
    values, indices = ctx.emit("topk", [x], n_outputs=2, k=k[0], dim=axis,
                               largest=bool(node.attr("largest", 1)))
    return [values, indices]


def _cumsum(ctx, node):
    x = ctx.input(node, 0)
    axis = ints(ctx.need_const(node, 1, "axis"), node, "axis")
    if len(axis) != 1:
        raise unsupported(node, "more than one axis")
    dim = axis_of(node, axis[0], x.type.ndim)
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    y = _flip(ctx, x, dim) if reverse else x
    if exclusive:
        size = y.type.shape[dim]
        first = list(y.type.shape)
        first[dim] = min(size, 1)
        zeros = ctx.const(np.zeros(first, dtype=_np(y)))
        rest = ctx.emit("slice", [y], dim=dim, start=0, end=max(size - 1, 0), step=1)
        y = ctx.emit("cat", [zeros, rest], dim=dim)
    y = cast(ctx, ctx.emit("cumsum", [y], dim=dim, dtype=None), x.type.dtype)
    return [_flip(ctx, y, dim) if reverse else y]


def _cumprod(ctx, node):
    x = ctx.input(node, 0)
    axis = ints(ctx.need_const(node, 1, "axis"), node, "axis")
    if len(axis) != 1:
        raise unsupported(node, "more than one axis")
    dim = axis_of(node, axis[0], x.type.ndim)
    size = x.type.shape[dim]
    if size > MAX_PROD_AXIS or size == 0:
        raise unsupported(node, f"CumProd along an axis of {size}")
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    parts = list(ctx.emit("split", [x], n_outputs=size, sizes=(1,) * size, dim=dim)) \
        if size > 1 else [x]
    if reverse:
        parts.reverse()
    one_shape = parts[0].type.shape
    running, out = None, []
    for p in parts:
        if exclusive:
            out.append(running if running is not None else
                       ctx.const(np.ones(one_shape, dtype=_np(x))))
            running = p if running is None else ctx.emit("mul", [running, p])
        else:
            running = p if running is None else ctx.emit("mul", [running, p])
            out.append(running)
    if reverse:
        out.reverse()
    return [ctx.emit("cat", out, dim=dim) if len(out) > 1 else ctx.emit("identity", [out[0]])]


# --- Einsum -------------------------------------------------------------------------------------


def _parse_einsum(node, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise unsupported(node, f"equation {equation!r} for {len(ranks)} inputs")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    ellipsis = 0
    for t, r in zip(terms, ranks):  # "..." stands for the same leading dims in every term
        if "..." in t:
            ellipsis = max(ellipsis, r - (len(t) - 3))
    fill = "".join(spare[:ellipsis])
    for k, (t, r) in enumerate(zip(terms, ranks)):
        if "..." in t:
            n = r - (len(t) - 3)
            terms[k] = t.replace("...", fill[ellipsis - n:] if n else "")
    if arrow:
        out = out.replace("...", fill)
    elif ellipsis:
        counts = {c: lhs.count(c) for c in set(lhs.replace(",", "").replace(".", ""))}
        out = fill + "".join(sorted(c for c, n in counts.items() if n == 1))
        arrow = "->"
    if "." in "".join(terms) + out or any(len(t) != r for t, r in zip(terms, ranks)):
        raise unsupported(node, f"equation {equation!r} for inputs of ranks {ranks}")
    if not arrow:
        counts = {c: lhs.count(c) for c in set(lhs.replace(",", ""))}
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    if not all(c.isalpha() for c in "".join(terms) + out):
        raise unsupported(node, f"equation {equation!r}")
    return terms, out


def _diagonals(ctx, v, term: str):
    """An index repeated within one operand takes its diagonal: the two dims made adjacent, then
    one `index` by the same positions on both."""
    while len(set(term)) != len(term):
        c = next(c for c in term if term.count(c) > 1)
        i = term.index(c)
        j = term.index(c, i + 1)
        order = [k for k in range(len(term)) if k != j]
        order.insert(i + 1, j)
        if order != list(range(len(term))):
            v = ctx.emit("permute", [v], dims=tuple(order))
            term = "".join(term[k] for k in order)
        positions = ctx.const(np.arange(v.type.shape[i], dtype=np.int64))
        v = ctx.emit("index", [v, positions, positions], dim=i)
        term = term[:i + 1] + term[i + 2:]
    return v, term


def _einsum_reduce(ctx, v, term: str, keep: set[str]):
    """Sum out the indices of one operand that nothing else needs."""
    dims = tuple(i for i, c in enumerate(term) if c not in keep)
    if not dims:
        return v, term
    v = ctx.emit("sum", [v], dims=dims, keepdim=False)
    return v, "".join(c for c in term if c in keep)


def _permute_to(ctx, v, term: str, order: str):
    if term == order:
        return v
    return ctx.emit("permute", [v], dims=tuple(term.index(c) for c in order))


def _einsum_pair(ctx, a, ta: str, b, tb: str, keep: set[str]):
    """a and b contracted over their shared indices that `keep` lacks, as one batched matmul:
    (batch, left, k) @ (batch, k, right)."""
    size = {c: n for t, v in ((ta, a), (tb, b)) for c, n in zip(t, v.type.shape)}
    batch = [c for c in ta if c in tb and c in keep]
    contract = [c for c in ta if c in tb and c not in keep]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    nb, nl, nk, nr = (math.prod(size[c] for c in g) for g in (batch, left, contract, right))
    a = ctx.emit("reshape", [_permute_to(ctx, a, ta, "".join(batch + left + contract))],
                 shape=(nb, nl, nk))
    b = ctx.emit("reshape", [_permute_to(ctx, b, tb, "".join(batch + contract + right))],
                 shape=(nb, nk, nr))
    y = ctx.emit("matmul", [a, b])
    term = "".join(batch + left + right)
    return ctx.emit("reshape", [y], shape=tuple(size[c] for c in term)), term


def _einsum(ctx, node):
    values = [ctx.input(node, i) for i in range(len(node.inputs)) if node.has(i)]
    terms, out = _parse_einsum(node, node.attr("equation", ""), [v.type.ndim for v in values])
    for c in out:
        if not any(c in t for t in terms):
            raise unsupported(node, f"output index {c!r} is in no input")
    sizes: dict[str, int] = {}
    for t, v in zip(terms, values):
        for c, n in zip(t, v.type.shape):
            if sizes.setdefault(c, n) != n:
                raise unsupported(node, f"index {c!r} has sizes {sizes[c]} and {n}")
    values, terms = map(list, zip(*(_diagonals(ctx, v, t) for v, t in zip(values, terms))))
    acc, term = values[0], terms[0]
    for k in range(1, len(values)):
        v, t = values[k], terms[k]
        later = set(out) | {c for t2 in terms[k + 1:] for c in t2}
        acc, term = _einsum_reduce(ctx, acc, term, later | set(t))
        v, t = _einsum_reduce(ctx, v, t, later | set(term))
        acc, term = _einsum_pair(ctx, acc, term, v, t, later)
    acc, term = _einsum_reduce(ctx, acc, term, set(out))
    return [cast(ctx, _permute_to(ctx, acc, term, out), values[0].type.dtype)]


TABLE = [
    ("ReduceSum", (11, 13), _reduce("sum")),
    ("ReduceMean", (11, 13, 18), _reduce("mean")),
    ("ReduceMax", (11, 12, 13, 18, 20), _reduce("max")),
    ("ReduceMin", (11, 12, 13, 18, 20), _reduce("min")),
    ("ReduceProd", (11, 13, 18), _reduce("prod")),
    ("ReduceL1", (11, 13, 18), _reduce("l1")),
    ("ReduceL2", (11, 13, 18), _reduce("l2")),
    ("ReduceSumSquare", (11, 13, 18), _reduce("sumsquare")),
    ("ReduceLogSum", (11, 13, 18, 28), _reduce("logsum")),
    ("ReduceLogSumExp", (11, 13, 18, 28), _reduce("logsumexp")),
    ("ArgMax", (11, 12, 13), _arg("argmax")),
    ("ArgMin", (11, 12, 13), _arg("argmin")),
    ("TopK", (10, 11, 24), _topk),
    ("CumSum", (11, 14), _cumsum),
    ("Einsum", (12, 28), _einsum),
    ("CumProd", (26,), _cumprod),
]
