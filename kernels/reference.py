"""The numpy reference: the executable specification of every IR op.

Floating-point ops compute in float64 and the interpreter rounds once to the op's declared dtype,
so the reference is as close to exact as numpy gets and every other backend is judged against it.
Each function takes the op's inputs as arrays and its attributes as keyword arguments, exactly as
declared in `compiler/ops.py`, and returns an array (or a tuple of arrays for multi-output ops).
"""

from __future__ import annotations

import builtins
import math

import numpy as np


def _wide(x: np.ndarray) -> np.ndarray:
    """Floats widen to float64 for computing; other dtypes stay as they are."""
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


_erf = np.vectorize(math.erf, otypes=[np.float64])


# --- elementwise --------------------------------------------------------------------------------


def identity(x):
    return x


def memory_format(x, *, layout):
    return x  # storage order only: numpy arrays are always NCHW here


def dropout(x, *, p):
    return x


def relu(x):
    return np.maximum(x, 0).astype(x.dtype)


def _bound(x, bound):
    """An integral bound of an integer tensor converts to its dtype, as in torch's clamp(x, 0)
    (float64 would be inexact past 2**53)."""
    if np.issubdtype(x.dtype, np.integer) and float(bound).is_integer():
        return np.array(int(bound)).astype(x.dtype)
    return bound


def clamp(x, *, min, max):  # noqa: A002 - attribute names of the op
    y = _wide(x)
    if min is not None:
        y = np.maximum(y, _bound(x, min))
    if max is not None:
        y = np.minimum(y, _bound(x, max))
    return y


def sigmoid(x):
    x = _wide(x).astype(np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def tanh(x):
    return np.tanh(_wide(x).astype(np.float64))


def gelu(x, *, approximate):
    x = _wide(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if approximate != "none":
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x):
    x = _wide(x)
    return x * sigmoid(x)


def hardsigmoid(x):
    return np.clip(_wide(x) + 3.0, 0.0, 6.0) / 6.0


def hardswish(x):
    x = _wide(x)
    return x * hardsigmoid(x)


def sqrt(x):
    return np.sqrt(_wide(x).astype(np.float64))


def rsqrt(x):
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(_wide(x).astype(np.float64))


def exp(x):
    return np.exp(_wide(x).astype(np.float64))


def log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(_wide(x).astype(np.float64))


def erf(x):
    return _erf(_wide(x).astype(np.float64))


def sin(x):
    return np.sin(_wide(x).astype(np.float64))


def cos(x):
    return np.cos(_wide(x).astype(np.float64))


def bitwise_not(x):
    return np.invert(x)  # bool: logical not; integers: ~x


def neg(x):
    return np.negative(x)


def abs(x):  # noqa: A001 - the op's name
    return np.abs(x)


def cast(x, *, dtype):
    return x  # the interpreter converts to the declared dtype


def _common(a, b, floating=False):
    """Both operands converted to torch's result dtype (a 0-d f32 compared with an f16 tensor is
    rounded to f16 first, as in torch), then widened. `floating`: integer results become f32."""
    from fxforge import dtypes  # not at the top: compiler imports this module

    name = dtypes.promote([(dtypes.from_numpy(x.dtype), np.ndim(x)) for x in (a, b)])
    if floating and not dtypes.is_float(name):
        name = "f32"
    common = dtypes.to_numpy(name)
    return tuple(_wide(np.asarray(x).astype(common, copy=False)) for x in (a, b))


def _binary(fn):
    def run(a, b):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(*_common(a, b))

    run.__name__ = fn.__name__
    return run


add = _binary(np.add)
sub = _binary(np.subtract)
mul = _binary(np.multiply)
pow = _binary(np.power)  # noqa: A001
maximum = _binary(np.maximum)
minimum = _binary(np.minimum)
eq = _binary(np.equal)
ne = _binary(np.not_equal)
lt = _binary(np.less)
le = _binary(np.less_equal)
gt = _binary(np.greater)
ge = _binary(np.greater_equal)
bitwise_and = _binary(np.bitwise_and)
bitwise_or = _binary(np.bitwise_or)
bitwise_xor = _binary(np.bitwise_xor)


def div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(*_common(a, b, floating=True))


def where(cond, a, b):
    return np.where(cond, _wide(a), _wide(b))


# --- reductions and normalizations --------------------------------------------------------------


def _axes(x, dims):
    """Reduction axes; a 0-d tensor takes dim 0 or -1 as torch does and reduces nothing."""
    return tuple(dims) if x.ndim else ()


def sum(x, *, dims, keepdim):  # noqa: A001
    acc = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    return np.sum(x, axis=_axes(x, dims), keepdims=keepdim, dtype=acc)


def mean(x, *, dims, keepdim):
    return np.mean(_wide(x), axis=_axes(x, dims), keepdims=keepdim)


def amax(x, *, dims, keepdim):
    return np.max(x, axis=_axes(x, dims), keepdims=keepdim)


def amin(x, *, dims, keepdim):
    return np.min(x, axis=_axes(x, dims), keepdims=keepdim)


def _arg_extreme(fn):
    """numpy's argmax/argmin are torch's: the first position on ties, and a NaN wins (both)."""

    def run(x, *, dim, keepdim):
        if x.ndim == 0:
            return np.int64(0)
        return fn(x, axis=dim, keepdims=keepdim)

    return run


argmax = _arg_extreme(np.argmax)
argmin = _arg_extreme(np.argmin)


def topk(x, *, k, dim, largest):
    """A stable sort's first k. numpy's stable ascending sort puts NaN last, as torch's does; the
    descending one sorts the reversed axis ascending and reverses the result, so NaN comes first
    and equal values still keep their order (no negation: it would overflow integer minima)."""
    if x.ndim == 0:
        return x, np.int64(0)
    axis = dim % x.ndim
    if largest:
        last = x.shape[axis] - 1
        order = last - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    order = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, order, axis=axis), order.astype(np.int64)


def cumsum(x, *, dim, dtype):
    """Converted to dtype first (torch's dtype=), then summed in float64 or int64 (torch's CPU
    kernel accumulates wide too); a 0-d x sums like a 1-d one."""
    from fxforge import dtypes  # not at the top: compiler imports this module

    if dtype is not None:
        x = x.astype(dtypes.to_numpy(dtype))
    acc = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    x1 = np.atleast_1d(x)
    return np.cumsum(x1, axis=dim % x1.ndim, dtype=acc).reshape(x.shape)


def softmax(x, *, dim):
    x = _wide(x)
    shifted = x - np.max(x, axis=dim, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=dim, keepdims=True)


def log_softmax(x, *, dim):
    x = _wide(x)
    shifted = x - np.max(x, axis=dim, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))


def batch_norm(x, weight, bias, mean, var, *, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = _wide(weight) / np.sqrt(_wide(var) + eps)
    centered = _wide(x) - _wide(mean).reshape(shape)
    return centered * scale.reshape(shape) + _wide(bias).reshape(shape)


def layer_norm(x, weight, bias, *, eps):
    axes = tuple(range(x.ndim - weight.ndim, x.ndim))
    x = _wide(x)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _wide(weight) + _wide(bias)


# --- compute ------------------------------------------------------------------------------------


def _windows(x, kernel, stride, dilation, out_hw):
    """(N, C, H, W) already padded -> (N, C, kh, kw, Ho, Wo) views of each window tap."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    taps = [[x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
             for j in range(kw)] for i in range(kh)]
    return np.stack([np.stack(row, axis=2) for row in taps], axis=2)


def _out_len(size, k, s, p, d, ceil):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pad(x, pad, extra, value):
    """Pad H and W by pad on both sides plus `extra` more at the end (for ceil_mode)."""
    (ph, pw), (eh, ew) = pad, extra
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=value)


def conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    kh, kw = weight.shape[2:]
    n, c, h, w = x.shape
    ho = _out_len(h, kh, stride[0], padding[0], dilation[0], False)
    wo = _out_len(w, kw, stride[1], padding[1], dilation[1], False)
    cols = _windows(_pad(_wide(x), padding, (0, 0), 0.0), (kh, kw), stride, dilation, (ho, wo))
    cols = cols.reshape(n, groups, c // groups, kh, kw, ho, wo)
    wg = _wide(weight).reshape(groups, -1, c // groups, kh, kw)
    out = np.einsum("ngcijhw,gocij->ngohw", cols, wg, optimize=True).reshape(n, -1, ho, wo)
    if bias is not None:
        out = out + _wide(bias).reshape(1, -1, 1, 1)
    return out


def linear(x, weight, bias=None):
    out = _wide(x) @ _wide(weight).T
    return out if bias is None else out + _wide(bias)


def matmul(a, b):
    return np.matmul(_wide(a), _wide(b))


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal, scale):
    q, k, v = _wide(q), _wide(k), _wide(v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    if is_causal:
        causal = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
        scores = np.where(causal, scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + _wide(mask)
    with np.errstate(invalid="ignore"):
        weights = softmax(scores, dim=-1)
    # torch's safe softmax: a query row that may attend to no key gives zeros, not NaN
    weights = np.where(np.isneginf(scores).all(axis=-1, keepdims=True), 0.0, weights)
    return weights @ v


def embedding(weight, indices):
    return weight[indices]


def _bag_bounds(offsets, n: int, include_last_offset: bool):
    """Each bag's [start, end) in the indices, checked as torch checks them."""
    offsets = offsets.astype(np.int64)
    if len(offsets) and offsets[0] != 0:
        raise ValueError(f"embedding_bag: offsets[0] must be 0, got {offsets[0]}")
    if np.any(np.diff(offsets) < 0) or (len(offsets) and offsets[-1] > n):
        raise ValueError(f"embedding_bag: offsets must rise from 0 to at most {n}")
    if include_last_offset:
        return offsets[:-1], offsets[1:]
    return offsets, np.append(offsets[1:], n).astype(np.int64)


def _bag_max(rows):
    """torch's CPU kernel: the bag's first row, then a value replaced only by a larger one, so a
    NaN counts only as the first row (a later NaN never compares larger)."""
    acc = rows[0]
    for r in rows[1:]:
        acc = np.where(r > acc, r, acc)
    return acc


def embedding_bag(weight, indices, offsets, per_sample_weights=None, *, mode,
                  include_last_offset, padding_idx):
    """Per bag, in float64: the sum (of rows times their sample weights), the mean over its rows
    or the max; padding_idx rows are dropped first (not counted in a mean) and a bag left empty
    gives zeros."""
    indices = indices.astype(np.int64)
    if np.any((indices < 0) | (indices >= weight.shape[0])):
        raise ValueError(f"embedding_bag: indices outside [0, {weight.shape[0]})")
    starts, ends = _bag_bounds(offsets, len(indices), include_last_offset)
    rows = _wide(weight)[indices]
    if per_sample_weights is not None:
        rows = rows * _wide(per_sample_weights)[:, None]
    keep = indices != padding_idx if padding_idx is not None else np.ones(len(indices), bool)
    out = np.zeros((len(starts), weight.shape[1]), dtype=rows.dtype)
    for b, (start, end) in enumerate(zip(starts, ends)):
        bag = rows[start:end][keep[start:end]]
        if len(bag) == 0:
            continue
        if mode == "max":
            out[b] = _bag_max(bag)
        else:
            out[b] = bag.mean(axis=0) if mode == "mean" else bag.sum(axis=0)
    return out


def gather(x, index, *, dim):
    # torch allows an index smaller than x in the other dims: it gathers from that corner of x.
    # A 0-d x gathers like a 1-d one.
    x1, index1 = np.atleast_1d(x), np.atleast_1d(index).astype(np.int64)
    axis = dim % x1.ndim
    corner = tuple(builtins.slice(None) if i == axis else builtins.slice(0, n)
                   for i, n in enumerate(index1.shape))
    return np.take_along_axis(x1[corner], index1, axis=axis).reshape(index.shape)


def index(x, *indices, dim):
    """numpy's advanced indexing is torch's: adjacent index arrays broadcast together and their
    shape takes the indexed dims' place; negative indices count from the end."""
    lead = (builtins.slice(None),) * (dim % x.ndim)
    return np.asarray(x[lead + tuple(np.asarray(i, dtype=np.int64) for i in indices)])


# --- pooling ------------------------------------------------------------------------------------


def _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode):
    h, w = x.shape[2:]
    ho = _out_len(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    wo = _out_len(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    need_h = (ho - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (wo - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    extra = (max(0, need_h - h - 2 * padding[0]), max(0, need_w - w - 2 * padding[1]))
    return (ho, wo), extra


def max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    out_hw, extra = _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode)
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    cols = _windows(_pad(x, padding, extra, low), kernel, stride, dilation, out_hw)
    return cols.max(axis=(2, 3))


def avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_hw, extra = _pool_geometry(x, kernel, stride, padding, (1, 1), ceil_mode)
    sums = _windows(_pad(_wide(x), padding, extra, 0.0), kernel, stride, (1, 1), out_hw)
    sums = sums.sum(axis=(2, 3))
    if divisor_override is not None:
        return sums / divisor_override
    ones = np.ones((1, 1) + x.shape[2:])
    if count_include_pad:  # padding counts, the extra ceil_mode overhang does not
        mask = np.pad(_pad(ones, padding, (0, 0), 1.0), ((0, 0), (0, 0), (0, extra[0]),
                                                          (0, extra[1])))
    else:
        mask = _pad(ones, padding, extra, 0.0)
    counts = _windows(mask, kernel, stride, (1, 1), out_hw).sum(axis=(2, 3))
    return sums / counts


def adaptive_avg_pool2d(x, *, output_size):
    x = _wide(x)
    (h, w), (oh, ow) = x.shape[2:], output_size
    out = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


# --- layout -------------------------------------------------------------------------------------


def reshape(x, *, shape):
    return x.reshape(shape)


def permute(x, *, dims):
    return np.transpose(x, dims)


def cat(*xs, dim):
    return np.concatenate([_wide(x) for x in xs], axis=dim)


def split(x, *, sizes, dim):
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=dim))


def slice(x, *, dim, start, end, step):  # noqa: A001
    index = [builtins.slice(None)] * x.ndim
    index[dim] = builtins.slice(start, end, step)
    return x[tuple(index)]


def select(x, *, dim, index):
    return np.take(x, index, axis=dim)


def unsqueeze(x, *, dim):
    return np.expand_dims(x, dim % (x.ndim + 1))


def squeeze(x, *, dims):
    return np.squeeze(x, axis=tuple(d for d in dims if x.ndim and x.shape[d] == 1))


def expand(x, *, shape):
    lead = len(shape) - x.ndim
    target = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape)]
    return np.broadcast_to(x, target)


def _fill(x, value):
    """A pad value in x's dtype as torch converts it: integers truncate toward zero."""
    if x.dtype == np.bool_:
        return np.bool_(value)
    if np.issubdtype(x.dtype, np.integer):
        return np.array(int(value)).astype(x.dtype)
    return value


def pad(x, *, pads, mode, value):
    if not any(pads):
        return x
    widths = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        widths[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    if mode == "constant":
        return np.pad(x, widths, constant_values=_fill(x, value))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


# --- sources ------------------------------------------------------------------------------------


def arange(*, start, end, step, dtype):
    from fxforge import dtypes  # not at the top: compiler imports this module

    if not dtypes.is_float(dtype):
        # torch counts from the truncated start by the truncated step; only int64 also takes
        # the length from the truncated values (the other integer types use the float ones)
        first, stride = int(start), int(step)
        if dtype == "i64":
            start, end, step = first, int(end), stride
        n = max(0, math.ceil((end - start) / step))
        return first + np.arange(n, dtype=np.int64) * stride
    n = max(0, math.ceil((end - start) / step))
    return start + np.arange(n, dtype=np.float64) * step


def full(*, shape, value, dtype):
    return np.full(shape, value, dtype=np.float64)


def torch_op(*inputs, target, args, kwargs):
    from fxforge.kernels.opaque import call_on_arrays

    return call_on_arrays(target, args, kwargs, inputs)


# --- fused (made by the fuse pass) --------------------------------------------------------------


def _stages(op, inputs, attrs):
    """Each intermediate's dtype as numpy, from the op's own type inference."""
    from fxforge import dtypes, ops  # not at the top: compiler imports this module
    from fxforge.ir import TensorType

    types = [TensorType(np.shape(x), dtypes.from_numpy(np.asarray(x).dtype)) for x in inputs]
    return [dtypes.to_numpy(t.dtype) for t in ops.stage_types(op, types, attrs)]


def _step_fn(step):
    from fxforge import ops  # not at the top: compiler imports this module

    return ops.get(step["op"]).reference, dict(step.get("attrs", {}))


def _epilogue(acc, inputs, epilogue, stages):
    """Each step runs its op's own reference on what the unfused graph would hold: the
    accumulator rounded to the dtype it has there, and the step's operand."""
    acc = np.asarray(acc).astype(stages[0], copy=False)
    for step, dtype in zip(epilogue, stages[1:]):
        fn, attrs = _step_fn(step)
        if "operand" in step:
            other = inputs[step["operand"]]
            args = (acc, other) if step["side"] == "right" else (other, acc)
        else:
            args = (acc,)
        with np.errstate(all="ignore"):
            acc = np.asarray(fn(*args, **attrs)).astype(dtype, copy=False)
    return acc


def fused_conv2d(*inputs, stride, padding, dilation, groups, has_bias, epilogue):
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    acc = conv2d(*inputs[:3 if has_bias else 2], **attrs)
    stages = _stages("fused_conv2d", inputs, dict(attrs, has_bias=has_bias, epilogue=epilogue))
    return _epilogue(acc, inputs, epilogue, stages)


def fused_linear(*inputs, has_bias, epilogue):
    acc = linear(*inputs[:3 if has_bias else 2])
    stages = _stages("fused_linear", inputs, dict(has_bias=has_bias, epilogue=epilogue))
    return _epilogue(acc, inputs, epilogue, stages)


def fused_elementwise(*inputs, steps):
    values = list(inputs)
    for step, dtype in zip(steps, _stages("fused_elementwise", inputs, dict(steps=steps))):
        fn, attrs = _step_fn(step)
        with np.errstate(all="ignore"):
            out = fn(*[values[i] for i in step["args"]], **attrs)
        values.append(np.asarray(out).astype(dtype, copy=False))
    return values[-1]
