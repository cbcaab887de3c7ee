"""Runs IR nodes with torch ops, on whatever device the tensors live (CPU or CUDA).

This backend claims every op, so it is also the fallback of the faster backends. Each entry
takes the op's input tensors and its attributes as keyword arguments, as declared in
`compiler/ops.py`; the executor casts the result to the node's declared dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxforge import dtypes
from fxforge.kernels import torch_int8
from fxforge.kernels.opaque import call_on_tensors


def _no_attrs(fn):
    return lambda *xs: fn(*xs)


def _int_bound(x, bound):
    """An integral bound of an integer tensor as a python int, as in torch's clamp(x, 0): a float
    bound would make torch clamp in float32, inexact past 2**24, where the IR keeps the dtype."""
    if bound is None or x.is_floating_point() or x.dtype == torch.bool:
        return bound
    return int(bound) if float(bound).is_integer() else bound


def _clamp(x, *, min, max):  # noqa: A002
    return torch.clamp(x, min=_int_bound(x, min), max=_int_bound(x, max))


def _reduce(fn):
    """Reduce over explicit dims; an empty list reduces nothing (torch would reduce all)."""

    def run(x, *, dims, keepdim):
        return fn(x, dim=list(dims), keepdim=keepdim) if dims else x

    return run


def _batch_norm(x, weight, bias, mean, var, *, eps):
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)


def _layer_norm(x, weight, bias, *, eps):
    return F.layer_norm(x, tuple(weight.shape), weight, bias, eps)


def _conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _sdpa(q, k, v, mask=None, *, is_causal, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def _max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    if x.dtype == torch.int8:  # torch's is slow on int8 and refuses it channels-last
        return torch_int8.max_pool2d(x, kernel=kernel, stride=stride, padding=padding,
                                     dilation=dilation, ceil_mode=ceil_mode)
    if x.dim() == 4 and x.device.type == "cpu" and x.is_contiguous():
        # torch's CPU max pooling of some NCHW shapes is ~10x slower than channels-last (zoo
        # ResNet-18 at batch 32: 10.8 ms vs 1.8 ms with both conversions); the result goes back
        # to NCHW because the convolutions after it ran slower channels-last at batch 1
        x = x.contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).contiguous()
    return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


def _avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _slice(x, *, dim, start, end, step):
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def _squeeze(x, *, dims):
    return torch.squeeze(x, dims) if dims else x


def _cumsum(x, *, dim, dtype):
    return torch.cumsum(x, dim, dtype=dtypes.to_torch(dtype) if dtype is not None else None)


def _index(x, *indices, dim):
    return x[(slice(None),) * (dim % x.dim()) + indices]  # torch's x[:, ..., i0, i1]


def _pad(x, *, pads, mode, value):
    return F.pad(x, pads, mode=mode, value=value if mode == "constant" else None)


def _topk(x, *, k, dim, largest):
    """A stable sort's first k, not torch.topk: torch.topk orders equal values as its kernel
    happens to (and differently on CPU and CUDA), a stable sort keeps them in index order, as the
    reference does, on every device. The price is a full sort of the dim."""
    if x.dim() == 0:
        return x, torch.zeros((), dtype=torch.int64, device=x.device)
    values, indices = torch.sort(x, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


def _embedding_bag(weight, indices, offsets, per_sample_weights=None, *, mode,
                   include_last_offset, padding_idx):
    return F.embedding_bag(indices, weight, offsets, mode=mode,
                           per_sample_weights=per_sample_weights,
                           include_last_offset=include_last_offset, padding_idx=padding_idx)


def _arange(*, start, end, step, dtype, device):
    if not dtypes.is_float(dtype):  # torch's own integer arange: it truncates start and step
        return torch.arange(start, end, step, dtype=dtypes.to_torch(dtype), device=device)
    return torch.arange(start, end, step, dtype=torch.float64, device=device).to(
        dtypes.to_torch(dtype))


def _full(*, shape, value, dtype, device):
    return torch.full(shape, value, dtype=dtypes.to_torch(dtype), device=device)


# --- fused ops: the base op, then each step with that op's own entry in TORCH_IMPLS -----------
# No casts between steps: the IR's dtypes are torch's, so each intermediate already has the dtype
# the unfused graph declares there (a `cast` step casts itself); the executor casts the result.


# Steps that may update the accumulator in place: the accumulator is a tensor the base op just
# allocated (and every later one a step's fresh result), so nothing else holds it, and writing
# into it saves a pass over memory per step. add/mul commute exactly in IEEE arithmetic, so
# either side may be updated; sub/div only with the accumulator on the left.
_INPLACE_UNARY = {"relu": torch.relu_}
_INPLACE_BINARY = {("add", "right"): torch.Tensor.add_, ("add", "left"): torch.Tensor.add_,
                   ("mul", "right"): torch.Tensor.mul_, ("mul", "left"): torch.Tensor.mul_,
                   ("sub", "right"): torch.Tensor.sub_, ("div", "right"): torch.Tensor.div_}


def _epilogue(acc, inputs, epilogue):
    for step in epilogue:
        op = step["op"]
        if "operand" in step:
            other = inputs[step["operand"]]
            inplace = _INPLACE_BINARY.get((op, step["side"]))
            if inplace is not None and other.dtype == acc.dtype and \
                    torch.broadcast_shapes(other.shape, acc.shape) == acc.shape:
                acc = inplace(acc, other)
                continue
            args = (acc, other) if step["side"] == "right" else (other, acc)
        elif op in _INPLACE_UNARY:
            acc = _INPLACE_UNARY[op](acc)
            continue
        else:
            args = (acc,)
        acc = TORCH_IMPLS[op](*args, **step.get("attrs", {}))
    return acc


def _fused_conv2d(*inputs, stride, padding, dilation, groups, has_bias, epilogue):
    acc = _conv2d(*inputs[:3 if has_bias else 2], stride=stride, padding=padding,
                  dilation=dilation, groups=groups)
    return _epilogue(acc, inputs, epilogue)


def _fused_linear(*inputs, has_bias, epilogue):
    return _epilogue(F.linear(*inputs[:3 if has_bias else 2]), inputs, epilogue)


def _fused_elementwise(*inputs, steps):
    values = list(inputs)
    for step in steps:
        fn = TORCH_IMPLS[step["op"]]
        values.append(fn(*[values[i] for i in step["args"]], **step.get("attrs", {})))
    return values[-1]


# Ops that may have no tensor input need to be told where to put their result.
DEVICE_AWARE_OPS = {"arange", "full", "torch_op"}

TORCH_IMPLS = {
    "identity": lambda x: x,
    "memory_format": lambda x, *, layout: x.contiguous(
        memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format),
    "dropout": lambda x, *, p: x,
    "relu": _no_attrs(torch.relu),
    "clamp": _clamp,
    "sigmoid": _no_attrs(torch.sigmoid),
    "tanh": _no_attrs(torch.tanh),
    "gelu": lambda x, *, approximate: F.gelu(x, approximate=approximate),
    "silu": _no_attrs(F.silu),
    "hardswish": _no_attrs(F.hardswish),
    "hardsigmoid": _no_attrs(F.hardsigmoid),
    "sqrt": _no_attrs(torch.sqrt),
    "rsqrt": _no_attrs(torch.rsqrt),
    "exp": _no_attrs(torch.exp),
    "log": _no_attrs(torch.log),
    "erf": _no_attrs(torch.erf),
    "sin": _no_attrs(torch.sin),
    "cos": _no_attrs(torch.cos),
    "bitwise_not": _no_attrs(torch.bitwise_not),
    "neg": _no_attrs(torch.neg),
    "abs": _no_attrs(torch.abs),
    "cast": lambda x, *, dtype: x.to(dtypes.to_torch(dtype)),
    "add": _no_attrs(torch.add),
    "sub": _no_attrs(torch.sub),
    "mul": _no_attrs(torch.mul),
    "div": _no_attrs(torch.true_divide),
    "pow": _no_attrs(torch.pow),
    "maximum": _no_attrs(torch.maximum),
    "minimum": _no_attrs(torch.minimum),
    "eq": _no_attrs(torch.eq),
    "ne": _no_attrs(torch.ne),
    "lt": _no_attrs(torch.lt),
    "le": _no_attrs(torch.le),
    "gt": _no_attrs(torch.gt),
    "ge": _no_attrs(torch.ge),
    "bitwise_and": _no_attrs(torch.bitwise_and),
    "bitwise_or": _no_attrs(torch.bitwise_or),
    "bitwise_xor": _no_attrs(torch.bitwise_xor),
    "where": _no_attrs(torch.where),
    "sum": _reduce(torch.sum),
    "mean": _reduce(torch.mean),
    "amax": _reduce(torch.amax),
    "amin": _reduce(torch.amin),
    "argmax": lambda x, *, dim, keepdim: torch.argmax(x, dim, keepdim),
    "argmin": lambda x, *, dim, keepdim: torch.argmin(x, dim, keepdim),
    "topk": _topk,
    "cumsum": _cumsum,
    "softmax": lambda x, *, dim: torch.softmax(x, dim),
    "log_softmax": lambda x, *, dim: torch.log_softmax(x, dim),
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "conv2d": _conv2d,
    "linear": _no_attrs(F.linear),
    "matmul": _no_attrs(torch.matmul),
    "scaled_dot_product_attention": _sdpa,
    "embedding": lambda weight, indices: F.embedding(indices, weight),
    "embedding_bag": _embedding_bag,
    "gather": lambda x, index, *, dim: torch.gather(x, dim, index),
    "index": _index,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "adaptive_avg_pool2d": lambda x, *, output_size: F.adaptive_avg_pool2d(x, output_size),
    "reshape": lambda x, *, shape: torch.reshape(x, shape),
    "permute": lambda x, *, dims: torch.permute(x, dims),
    "cat": lambda *xs, dim: torch.cat(xs, dim),
    "split": lambda x, *, sizes, dim: torch.split(x, list(sizes), dim),
    "slice": _slice,
    "select": lambda x, *, dim, index: torch.select(x, dim, index),
    "unsqueeze": lambda x, *, dim: torch.unsqueeze(x, dim),
    "squeeze": _squeeze,
    "expand": lambda x, *, shape: x.expand(shape),
    "pad": _pad,
    "arange": _arange,
    "full": _full,
    "torch_op": lambda *xs, target, args, kwargs, device: call_on_tensors(target, args, kwargs,
                                                                          xs, device),
    "fused_conv2d": _fused_conv2d,
    "fused_linear": _fused_linear,
    "fused_elementwise": _fused_elementwise,
}

# The quantized ops (docs/quantized-ir.md) with int8 arithmetic, and their one-time preparation
# of constant inputs: TORCH_PREPARE[op](constant inputs or None, attrs, device) returns a runner
# with the impl's signature (or None to keep the impl); TorchProgram applies it once per node.
TORCH_IMPLS.update(torch_int8.IMPLS)
TORCH_PREPARE = dict(torch_int8.PREPARE)


def supports(op: str) -> bool:
    return op in TORCH_IMPLS
