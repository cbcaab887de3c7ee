"""Shape arithmetic shared by type inference: broadcasting, dims, windows.

Errors raise `OpTypeError` with a message a user can act on; the caller adds the node's location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class OpTypeError(TypeError):
    """Inputs or attributes that an op cannot accept (wrong rank, mismatched shapes, ...)."""


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    ndim = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(-ndim, 0):
        sizes = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(sizes) > 1:
            raise OpTypeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def norm_dim(dim: int, ndim: int) -> int:
    """A dim in [-ndim, ndim) made non-negative (torch's convention; rank 0 accepts 0 and -1)."""
    bound = max(ndim, 1)
    if not -bound <= dim < bound:
        raise OpTypeError(f"dim {dim} is out of range for rank {ndim}")
    return dim % bound


def norm_dims(dims: Sequence[int], ndim: int) -> tuple[int, ...]:
    result = tuple(norm_dim(d, ndim) for d in dims)
    if len(set(result)) != len(result):
        raise OpTypeError(f"dims {tuple(dims)} repeat a dimension")
    return result


def window_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """Output length of a conv / pooling window, torch's formula including ceil_mode's clamp."""
    if kernel < 1 or stride < 1 or dilation < 1 or pad < 0:
        raise OpTypeError(f"window needs kernel, stride, dilation >= 1 and padding >= 0, got "
                          f"{kernel}, {stride}, {dilation} and {pad}")
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1  # ceil_mode admits span > -stride
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    if out < 1:
        raise OpTypeError(f"window of {kernel} (dilation {dilation}) exceeds padded size "
                          f"{size} + 2 * {pad}")
    return out


def reshape_target(numel: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Resolve a single -1 in a reshape target."""
    shape = list(shape)
    if shape.count(-1) > 1:
        raise OpTypeError(f"reshape to {tuple(shape)} has more than one -1")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or numel % known:
            raise OpTypeError(f"cannot reshape {numel} elements to {tuple(shape)}")
        shape[shape.index(-1)] = numel // known
    if math.prod(shape) != numel:
        raise OpTypeError(f"cannot reshape {numel} elements to {tuple(shape)}")
    return tuple(shape)


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """torch.matmul's result shape, including its 1-D promotions and batch broadcasting."""
    if not a or not b:
        raise OpTypeError("matmul needs operands of rank 1 or more")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise OpTypeError(f"matmul inner dimensions differ: {tuple(a)} @ {tuple(b)}")
    out = (*broadcast(a2[:-2], b2[:-2]), a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out
