"""Shape arithmetic shared by type inference (broadcasting, dims, windows), and the IR's limits.

Errors raise `OpTypeError` with a message a user can act on; the caller adds the node's location.

The limits are shared by the parser, type inference and the verifier, so that hostile text or a
corrupt attribute is refused with a located message instead of an OverflowError, a MemoryError
or a numpy error deep inside a later pass, and so that whatever verifies also prints and parses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class OpTypeError(TypeError):
    """Inputs or attributes that an op cannot accept (wrong rank, mismatched shapes, ...)."""


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # every integer of the IR: torch indexes with int64
MAX_RANK = 32  # numpy 1.x's limit (fxforge supports numpy >= 1.26); no model comes near it
# 2**40 elements (4 TiB of f32) is no real tensor; a size past it is a corrupt attribute. It is
# not 2**31: embeddings of large language models pass that, and Triton has 64-bit offsets.
MAX_NUMEL = 2**40
# Lists and maps in an attribute value nest at most this deep (a fused op's steps need 4); the
# parser, the printer and attribute comparison recurse once per level.
MAX_ATTR_DEPTH = 32


def is_int(value: object) -> bool:
    """An IR integer: a python int (not a bool) within int64."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and INT64_MIN <= value <= INT64_MAX)


def check_shape(shape: Sequence[int]) -> None:
    """A shape the IR can hold: rank <= MAX_RANK, dims >= 0, at most MAX_NUMEL elements. A
    symbolic dim (`fxforge.symdims`) must not be provably negative; the element count of a
    symbolic shape is checked when its symbols are bound."""
    if len(shape) > MAX_RANK:
        raise OpTypeError(f"rank {len(shape)} is more than the IR's limit of {MAX_RANK}")
    if not all(is_int(d) and d >= 0 for d in shape):
        if all(is_int(d) and d >= 0 or _symbolic_size(d) for d in shape):
            return
        raise OpTypeError(f"shape {clip(list(shape))} needs dimensions that are int64s >= 0")
    numel = math.prod(shape)
    if numel > MAX_NUMEL:
        raise OpTypeError(f"shape {clip(list(shape))} has {clip(numel)} elements, more than "
                          f"the IR's limit of 2**40")


def check_quant(scale: object, zero_point: object, axis: object, ndim: int) -> None:
    """Quantization parameters of a type: non-empty lists of finite scales > 0 (floats or
    int64s) and of int64 zero points, as long as each other; per tensor (axis none) one of
    each, else an axis in range."""
    if not isinstance(scale, tuple) or not all(_positive_number(s) for s in scale):
        raise OpTypeError(f"quantization scale {clip(scale)} must be a list of finite "
                          "numbers > 0")
    if not isinstance(zero_point, tuple) or not all(is_int(z) for z in zero_point):
        raise OpTypeError(f"quantization zero_point {clip(zero_point)} must be a list of int64s")
    if not scale or len(scale) != len(zero_point):
        raise OpTypeError(f"quantization has {len(scale)} scales and {len(zero_point)} zero "
                          "points; it needs as many of each, at least one")
    if axis is None:
        if len(scale) != 1:
            raise OpTypeError(f"per-tensor quantization (axis none) has {len(scale)} scales, "
                              "not one")
    elif not is_int(axis) or not -ndim <= axis < ndim:
        raise OpTypeError(f"quantization axis {clip(axis)} is not a dim of a rank-{ndim} value")


def _positive_number(value: object) -> bool:
    """A finite float > 0, or an int64 > 0 (a 400-digit int is no scale, and math.isfinite
    would raise an OverflowError on it)."""
    if isinstance(value, float):
        return math.isfinite(value) and value > 0
    return is_int(value) and value > 0


def clip(value: object, limit: int = 80, use_repr: bool = False) -> str:
    """`str(value)` (or its repr), shortened in the middle: a hostile value must not make a
    megabyte message, nor fail to print (python refuses to print an int of 4300+ digits)."""
    try:
        text = repr(value) if use_repr else str(value)
    except Exception:  # noqa: BLE001 - e.g. a 4300+ digit int, or a type holding a set
        text = f"<a {type(value).__name__} that does not print>"
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...({len(text) - limit} chars)...{text[-half:]}"


def _symbolic_size(d: object) -> bool:
    """A symbolic dim that is not provably negative (canonical: TensorType normalizes it)."""
    return symdims.is_sym(d) and not d.is_negative


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Equal dims, or 1; a symbolic dim broadcasts with 1 and with dims provably equal to it."""
    ndim = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(-ndim, 0):
        sizes = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(sizes) > 1:
            first = next(iter(sizes))
            if not all(symdims.equal(first, d) for d in sizes):
                raise OpTypeError(f"shapes {symdims.show([tuple(s) for s in shapes])} do not "
                                  "broadcast")
            sizes = {first}
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def _shape_text(shape: Sequence[object]) -> str:
    return "(" + ", ".join(symdims.format_dim(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")")


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
    if type(size) is not int:
        return _window_out_symbolic(size, kernel, stride, pad, dilation, ceil)
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1  # ceil_mode admits span > -stride
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    if out < 1:
        raise OpTypeError(f"window of {kernel} (dilation {dilation}) exceeds padded size "
                          f"{size} + 2 * {pad}")
    return out


def _window_out_symbolic(size, kernel: int, stride: int, pad: int, dilation: int,
                         ceil: bool):
    """window_out over a symbolic size: floor((size + 2p - d(k-1) - 1) / s) + 1; ceil_mode's
    clamp must be decidable for every size, else the op needs a static size."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (symdims.ceildiv(span, stride) if ceil else symdims.floordiv(span, stride)) + 1
    if ceil:
        clamp = symdims.known_ge((out - 1) * stride, size + pad)
        if clamp is None:
            raise OpTypeError(f"ceil_mode needs a static size for a window over "
                              f"{symdims.format_dim(size)} (stride {stride})")
        if clamp:
            out -= 1
    out = symdims.normalize(out)
    if symdims.known_ge(out, 1) is False:
        raise OpTypeError(f"window of {kernel} (dilation {dilation}) exceeds padded size "
                          f"{symdims.format_dim(size)} + 2 * {pad}")
    return out


def reshape_target(numel: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Resolve a single -1 in a reshape target (over symbols: an exact division)."""
    if type(numel) is not int or not all(type(d) is int for d in shape):
        return _reshape_symbolic(numel, shape)
    shape = list(shape)
    if any(d < -1 for d in shape):
        raise OpTypeError(f"reshape to {clip(tuple(shape))} has a negative size other than -1")
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


def _reshape_symbolic(numel, shape: Sequence[object]) -> tuple[object, ...]:
    shape = list(shape)
    text = _shape_text(shape)
    if any(type(d) is int and d < -1 for d in shape):
        raise OpTypeError(f"reshape to {clip(text)} has a negative size other than -1")
    if shape.count(-1) > 1:
        raise OpTypeError(f"reshape to {text} has more than one -1")
    known = math.prod(d for d in shape if not (type(d) is int and d == -1))
    numel_text = symdims.format_dim(numel)
    if -1 in shape:
        if known == 0:
            raise OpTypeError(f"cannot reshape {numel_text} elements to {text}")
        quotient = symdims.exact_div(numel, known)
        if quotient is None:
            raise OpTypeError(f"cannot reshape {numel_text} elements to {text}: "
                              f"{symdims.format_dim(known)} does not divide it for every size")
        shape[shape.index(-1)] = quotient
    if not symdims.equal(math.prod(shape), numel):
        raise OpTypeError(f"cannot reshape {numel_text} elements to {text}")
    return tuple(shape)


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """torch.matmul's result shape, including its 1-D promotions and batch broadcasting."""
    if not a or not b:
        raise OpTypeError("matmul needs operands of rank 1 or more")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2] and not symdims.equal(a2[-1], b2[-2]):
        raise OpTypeError(f"matmul inner dimensions differ: {symdims.show(tuple(a))} @ "
                          f"{symdims.show(tuple(b))}")
    out = (*broadcast(a2[:-2], b2[:-2]), a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


from fxforge import symdims  # noqa: E402 - symdims imports this module's OpTypeError
