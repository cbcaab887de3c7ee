"""ONNX converters: constants, casts, shapes and data movement (Reshape, Concat, Split, Pad,
Tile, DepthToSpace, CenterCropPad, ...).

Shape-like inputs (a Reshape's shape, Slice's starts and ends, Pad's pads) must be known at
import time, since the IR has static shapes: `ctx.need_const` returns them or raises
`NeedsConstantError` naming the graph inputs they come from. `Shape`, `Size`, `Constant`,
`Range` and `EyeLike` return numpy arrays: values known at import time, which the importer folds
through the nodes that use them.
"""

from __future__ import annotations

import math

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import axis_of, ints, unsupported
from fxforge.onnx_safety import ir_dtype, onnx_type_name
from fxforge.shapes import broadcast, reshape_target

SMALL = 1 << 16  # a result known at import time of at most this many elements is a constant


# --- constants ----------------------------------------------------------------------------------


def _constant(ctx, node):
    for name in ("sparse_value", "value_string", "value_strings"):
        if name in node.attrs:
            raise unsupported(node, f"Constant with {name}")
    if "value" in node.attrs:
        return [np.asarray(node.attr("value"))]
    if "value_float" in node.attrs:
        return [np.array(node.attr("value_float"), dtype=np.float32)]
    if "value_floats" in node.attrs:
        return [np.array(node.attr("value_floats"), dtype=np.float32)]
    if "value_int" in node.attrs:
        return [np.array(node.attr("value_int"), dtype=np.int64)]
    if "value_ints" in node.attrs:
        return [np.array(node.attr("value_ints"), dtype=np.int64)]
    raise unsupported(node, "Constant without a value")


def _constant_of_shape(ctx, node):
    shape = ints(ctx.need_const(node, 0, "shape"), node, "shape")
    if any(d < 0 for d in shape):
        raise unsupported(node, f"negative dims in {list(shape)}")
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    if value.size != 1:
        raise unsupported(node, f"a value of {value.size} elements (ONNX needs one)")
    if math.prod(shape) <= SMALL:
        return [np.full(shape, value.reshape(()), dtype=value.dtype)]
    scalar = value.reshape(()).item()
    if float(scalar) != scalar:
        raise unsupported(node, f"a large fill of {scalar}, which a float cannot hold exactly")
    return [ctx.emit("full", [], shape=shape, value=float(scalar),
                     dtype=dtypes.from_numpy(value.dtype))]


def _range(ctx, node):
    start, limit, delta = (ctx.need_const(node, i, what).reshape(())
                           for i, what in enumerate(("start", "limit", "delta")))
    if delta == 0:
        raise unsupported(node, "delta 0")
    dtype = start.dtype
    if dtype.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        n = max(-((s - lim) // d) if d > 0 else -((lim - s) // -d), 0)
    else:
        n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    if n > SMALL * 256:
        raise unsupported(node, f"a range of {n} elements")
    if dtype.kind in "iu":
        return [(int(start) + np.arange(n, dtype=np.int64) * int(delta)).astype(dtype)]
    return [(start.astype(np.float64) + np.arange(n) * delta.astype(np.float64)).astype(dtype)]


def _eye_like(ctx, node):
    x = ctx.input(node, 0)
    if x.type.ndim != 2:
        raise unsupported(node, f"EyeLike of a rank-{x.type.ndim} input")
    dtype = _dtype_attr(node, "dtype") or x.type.dtype
    rows, cols = x.type.shape
    if rows * cols > SMALL * 256:
        raise unsupported(node, f"an identity of {rows}x{cols}")
    return [np.eye(rows, cols, node.attr("k", 0), dtype=dtypes.to_numpy(dtype))]


def _dtype_attr(node, name: str) -> str | None:
    code = node.attr(name)
    if code is None:
        return None
    dtype = ir_dtype(code)
    if dtype is None:
        raise unsupported(node, f"{name} {onnx_type_name(code)}, which has no IR dtype")
    return dtype


# --- casts and copies ---------------------------------------------------------------------------


def _cast(ctx, node):
    x = ctx.input(node, 0)
    dtype = _dtype_attr(node, "to")
    if dtype is None:
        raise unsupported(node, "Cast without 'to'")
    return [ctx.emit("cast", [x], dtype=dtype) if dtype != x.type.dtype else
            ctx.emit("identity", [x])]


def _cast_like(ctx, node):
    x, target = ctx.input(node, 0), ctx.input(node, 1)
    dtype = target.type.dtype
    return [ctx.emit("cast", [x], dtype=dtype) if dtype != x.type.dtype else
            ctx.emit("identity", [x])]


def _identity(ctx, node):
    """The same value under another name (a constant stays one)."""
    const = ctx.const_input(node, 0)
    return [const if const is not None else ctx.input(node, 0)]


def _dropout(ctx, node):
    """Inference: the identity and an all-true mask. Training mode is random (unless the ratio
    is 0): fxforge compiles for inference, so it is the identity too, with a note (as
    onnxruntime's optimized sessions run the train-mode dropouts that torch.onnx's dynamo
    exporter writes for a module left in train mode); its random mask output is refused."""
    x = ctx.input(node, 0)
    training = ctx.need_const(node, 2, "training_mode") if node.has(2) else np.array(False)
    if bool(np.asarray(training).reshape(-1)[0]):
        ratio = ctx.need_const(node, 1, "ratio") if node.has(1) else np.array(0.5)
        if float(np.asarray(ratio).reshape(-1)[0]) != 0.0:
            if len(node.outputs) > 1 and node.outputs[1]:
                raise unsupported(node, "the mask of Dropout in training mode (random)")
            ctx.note("Dropout in training mode compiled for inference (the identity)")
    mask = ctx.emit("full", [], shape=x.type.shape, value=1.0, dtype="bool")
    return [x, mask]


# --- shapes -------------------------------------------------------------------------------------


def _shape(ctx, node):
    x = ctx.input(node, 0)
    rank = x.type.ndim
    start, end = node.attr("start", 0), node.attr("end", rank)
    return [np.array(x.type.shape[slice(start, end)], dtype=np.int64)]


def _size(ctx, node):
    return [np.array(ctx.input(node, 0).type.numel, dtype=np.int64)]


def _reshape(ctx, node):
    x = ctx.input(node, 0)
    target = list(ints(ctx.need_const(node, 1, "shape"), node, "shape"))
    if not node.attr("allowzero", 0):
        for i, d in enumerate(target):
            if d == 0:
                if i >= x.type.ndim:
                    raise unsupported(node, f"0 at dim {i} of {target} copies no input dim")
                target[i] = x.type.shape[i]
    elif 0 in target and -1 in target:
        raise unsupported(node, "allowzero with both 0 and -1 in the shape")
    return [ctx.emit("reshape", [x], shape=reshape_target(x.type.numel, target))]


def _flatten(ctx, node):
    x = ctx.input(node, 0)
    axis = node.attr("axis", 1)
    axis = axis + x.type.ndim if axis < 0 else axis
    if not 0 <= axis <= x.type.ndim:
        raise unsupported(node, f"axis {node.attr('axis', 1)} for rank {x.type.ndim}")
    shape = (math.prod(x.type.shape[:axis]), math.prod(x.type.shape[axis:]))
    return [ctx.emit("reshape", [x], shape=shape)]


def _axes(ctx, node, i: int = 1) -> tuple[int, ...] | None:
    """Axes from the attribute (older versions) or input i (newer); None if neither."""
    if "axes" in node.attrs:
        return tuple(node.attr("axes"))
    if node.has(i):
        return ints(ctx.need_const(node, i, "axes"), node, "axes")
    return None


def _squeeze(ctx, node):
    """`squeeze` of the axes as the model writes them (all size-1 dims without axes)."""
    x = ctx.input(node, 0)
    axes = _axes(ctx, node)
    shape = x.type.shape
    if axes is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    dims = tuple(axis_of(node, a, x.type.ndim) for a in axes)
    if any(shape[d] != 1 for d in dims):
        raise unsupported(node, f"squeezing axes {list(axes)} of {list(shape)} (not size 1)")
    if len(set(dims)) != len(dims):
        raise unsupported(node, f"repeated axes {list(axes)}")
    return [ctx.emit("squeeze", [x], dims=tuple(axes))]


def _unsqueeze(ctx, node):
    """One axis: `unsqueeze` (the axis as the model writes it); several: a reshape."""
    x = ctx.input(node, 0)
    axes = _axes(ctx, node)
    if axes is None:
        raise unsupported(node, "Unsqueeze without axes")
    rank = x.type.ndim + len(axes)
    dims = sorted(axis_of(node, a, rank) for a in axes)
    if len(set(dims)) != len(dims):
        raise unsupported(node, f"repeated axes {list(axes)}")
    if len(axes) == 1:
        return [ctx.emit("unsqueeze", [x], dim=axes[0])]
    shape = list(x.type.shape)
    for d in dims:
        shape.insert(d, 1)
    return [ctx.emit("reshape", [x], shape=tuple(shape))]


def _expand(ctx, node):
    x = ctx.input(node, 0)
    shape = ints(ctx.need_const(node, 1, "shape"), node, "shape")
    target = broadcast(x.type.shape, shape)
    if target == x.type.shape:
        return [ctx.emit("identity", [x])]
    return [ctx.emit("expand", [x], shape=target)]


def _transpose(ctx, node):
    x = ctx.input(node, 0)
    perm = node.attr("perm") or tuple(reversed(range(x.type.ndim)))
    return [ctx.emit("permute", [x], dims=tuple(perm))]


def _tile(ctx, node):
    """x tiled r times along each dim: (d0, ...) -> (1, d0, 1, d1, ...) expanded to
    (r0, d0, r1, d1, ...) -> (r0 * d0, ...)."""
    x = ctx.input(node, 0)
    repeats = ints(ctx.need_const(node, 1, "repeats"), node, "repeats")
    shape = x.type.shape
    if len(repeats) != len(shape) or any(r < 0 for r in repeats):
        raise unsupported(node, f"repeats {list(repeats)} for shape {list(shape)}")
    if all(r == 1 for r in repeats):
        return [ctx.emit("identity", [x])]
    spread = tuple(v for d in shape for v in (1, d))
    wide = tuple(v for r, d in zip(repeats, shape) for v in (r, d))
    y = ctx.emit("expand", [ctx.emit("reshape", [x], shape=spread)], shape=wide)
    return [ctx.emit("reshape", [y], shape=tuple(r * d for r, d in zip(repeats, shape)))]


# --- joining and splitting ----------------------------------------------------------------------


def _concat(ctx, node):
    values = [ctx.input(node, i) for i in range(len(node.inputs)) if node.has(i)]
    axis = axis_of(node, node.attr("axis"), values[0].type.ndim)
    return [ctx.emit("cat", values, dim=axis)]


def _split(ctx, node):
    x = ctx.input(node, 0)
    given = node.attr("axis", 0)  # the IR keeps it as written (-1 stays the last dim)
    axis = axis_of(node, given, x.type.ndim)
    size = x.type.shape[axis]
    n = len(node.outputs)
    if "split" in node.attrs:
        sizes = tuple(node.attr("split"))
    elif node.has(1):
        sizes = ints(ctx.need_const(node, 1, "split"), node, "split")
    elif node.attr("num_outputs") is not None:
        parts = node.attr("num_outputs")
        if parts != n or parts < 1:
            raise unsupported(node, f"num_outputs {parts} with {n} outputs")
        chunk = -(-size // parts)
        sizes = tuple(min(chunk, max(size - chunk * i, 0)) for i in range(parts))
    else:
        if size % n:
            raise unsupported(node, f"{size} does not split into {n} equal parts")
        sizes = (size // n,) * n
    if len(sizes) != n:
        raise unsupported(node, f"{len(sizes)} split sizes for {n} outputs")
    return list(ctx.emit("split", [x], n_outputs=n, sizes=sizes, dim=given)) if n > 1 else \
        [ctx.emit("identity", [x])]


# --- padding and rearranging --------------------------------------------------------------------


def _pad(ctx, node):
    x = ctx.input(node, 0)
    rank = x.type.ndim
    mode = node.attr("mode", "constant")
    pads = ints(ctx.need_const(node, 1, "pads"), node, "pads")
    axes = ints(ctx.need_const(node, 3, "axes"), node, "axes") if node.has(3) else \
        tuple(range(rank))
    if len(pads) != 2 * len(axes):
        raise unsupported(node, f"{len(pads)} pads for {len(axes)} axes")
    before, after = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        a = axis_of(node, a, rank)
        before[a], after[a] = pads[k], pads[len(axes) + k]
    out = x
    for a in range(rank):  # negative pads crop
        size = x.type.shape[a]
        start, end = max(-before[a], 0), size - max(-after[a], 0)
        if (start, end) != (0, size):
            out = ctx.emit("slice", [out], dim=a, start=start, end=max(end, start), step=1)
        before[a], after[a] = max(before[a], 0), max(after[a], 0)
    if not any(before) and not any(after):
        return [out if out is not x else ctx.emit("identity", [x])]
    if mode == "constant":
        value = ctx.need_const(node, 2, "constant_value") if node.has(2) else np.array(0)
        first = min(a for a in range(rank) if before[a] or after[a])
        flat = tuple(p for a in reversed(range(first, rank)) for p in (before[a], after[a]))
        fill = np.asarray(value).reshape(-1)
        fill = float(fill[0]) if fill.size else 0.0
        return [ctx.emit("pad", [out], pads=flat, mode="constant", value=fill)]
    modes = {"edge": "edge", "reflect": "reflect", "wrap": "wrap"}
    if mode not in modes:
        raise unsupported(node, f"mode {mode!r}")
    for a in range(rank):
        if before[a] or after[a]:
            size = out.type.shape[a]
            if size == 0:
                raise unsupported(node, f"{mode} padding of an empty dim")
            positions = np.pad(np.arange(size), (before[a], after[a]), mode=modes[mode])
            out = ctx.emit("index", [out, ctx.const(positions.astype(np.int64))], dim=a)
    return [out]


def _depth_to_space(ctx, node):
    x = ctx.input(node, 0)
    b = node.attr("blocksize")
    if x.type.ndim != 4 or not b or x.type.shape[1] % (b * b):
        raise unsupported(node, f"blocksize {b} for {x.type}")
    n, c, h, w = x.type.shape
    if node.attr("mode", "DCR") == "DCR":
        y = ctx.emit("reshape", [x], shape=(n, b, b, c // (b * b), h, w))
        y = ctx.emit("permute", [y], dims=(0, 3, 4, 1, 5, 2))
    else:
        y = ctx.emit("reshape", [x], shape=(n, c // (b * b), b, b, h, w))
        y = ctx.emit("permute", [y], dims=(0, 1, 4, 2, 5, 3))
    return [ctx.emit("reshape", [y], shape=(n, c // (b * b), h * b, w * b))]


def _space_to_depth(ctx, node):
    x = ctx.input(node, 0)
    b = node.attr("blocksize")
    if x.type.ndim != 4 or not b or x.type.shape[2] % b or x.type.shape[3] % b:
        raise unsupported(node, f"blocksize {b} for {x.type}")
    n, c, h, w = x.type.shape
    y = ctx.emit("reshape", [x], shape=(n, c, h // b, b, w // b, b))
    dims = (0, 3, 5, 1, 2, 4) if node.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ctx.emit("permute", [y], dims=dims)
    return [ctx.emit("reshape", [y], shape=(n, c * b * b, h // b, w // b))]


def _center_crop_pad(ctx, node):
    x = ctx.input(node, 0)
    shape = ints(ctx.need_const(node, 1, "shape"), node, "shape")
    rank = x.type.ndim
    axes = [axis_of(node, a, rank) for a in (node.attr("axes") or range(rank))]
    if len(axes) != len(shape):
        raise unsupported(node, f"shape {list(shape)} for axes {axes}")
    out = x
    pads = [(0, 0)] * rank
    for a, target in zip(axes, shape):
        size = x.type.shape[a]
        if target < size:
            start = (size - target) // 2
            out = ctx.emit("slice", [out], dim=a, start=start, end=start + target, step=1)
        elif target > size:
            before = (target - size) // 2
            pads[a] = (before, target - size - before)
    if any(b or e for b, e in pads):
        first = min(a for a in range(rank) if pads[a] != (0, 0))
        flat = tuple(p for a in reversed(range(first, rank)) for p in pads[a])
        out = ctx.emit("pad", [out], pads=flat, mode="constant", value=0.0)
    return [out if out is not x else ctx.emit("identity", [x])]



_SINCE_13 = (13, 14, 19, 21, 23, 24, 25)

TABLE = [
    ("Constant", (9, 11, 12, 13, 19, 21, 23, 24, 25), _constant),
    ("ConstantOfShape", (9, 20, 21, 23, 24, 25), _constant_of_shape),
    ("Range", (11, 27), _range),
    ("EyeLike", (9, 22), _eye_like),
    ("Cast", (6, 9, 13, 19, 21, 23, 24, 25, 28), _cast),
    ("CastLike", (15, 19, 21, 23, 24, 25), _cast_like),
    ("Identity", (1, 13, 14, 16, 19, 21, 23, 24, 25), _identity),
    ("Dropout", (10, 12, 13, 22), _dropout),
    ("Shape", (1, 13, 15, 19, 21, 23, 24, 25), _shape),
    ("Size", (1, 13, 19, 21, 23, 24, 25), _size),
    ("Reshape", (5, *_SINCE_13), _reshape),
    ("Flatten", (11, 13, 21, 23, 24, 25), _flatten),
    ("Squeeze", (11, 13, 21, 23, 24, 25), _squeeze),
    ("Unsqueeze", (11, 13, 21, 23, 24, 25), _unsqueeze),
    ("Expand", (8, 13), _expand),
    ("Transpose", (1, 13, 21, 23, 24, 25), _transpose),
    ("Tile", (6, 13), _tile),
    ("Concat", (4, 11, 13), _concat),
    ("Split", (11, 13, 18), _split),
    ("Pad", (11, 13, 18, 19, 21, 23, 24, 25), _pad),
    ("DepthToSpace", (11, 13, 28), _depth_to_space),
    ("SpaceToDepth", (1, 13, 28), _space_to_depth),
    ("CenterCropPad", (18,), _center_crop_pad),
]
