"""ONNX converters: attention (Attention, RotaryEmbedding, SwiGLU) and the losses
(NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss), built from matmul, softmax, gather and
elementwise ops following ONNX's reference step by step (its scale split between Q and K, its
additive -inf masks, its zeroing of fully masked rows).
"""

from __future__ import annotations

import math

import numpy as np

from fxforge import dtypes
from fxforge.onnx_converters import cast, ints, like, unsupported
from fxforge.onnx_safety import ir_dtype


def _heads(ctx, x, heads: int):
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = x.type.shape
    if not heads or hidden % heads:
        raise ValueError(f"hidden size {hidden} does not split into {heads} heads")
    return ctx.emit("permute", [ctx.emit("reshape", [x], shape=(b, s, heads, hidden // heads))],
                    dims=(0, 2, 1, 3))


def _repeat_heads(ctx, x, times: int):
    """Each head repeated `times` times in a row (h0, h0, h1, h1, ...): grouped-query attention."""
    if times == 1:
        return x
    b, h, s, d = x.type.shape
    y = ctx.emit("expand", [ctx.emit("unsqueeze", [x], dim=2)], shape=(b, h, times, s, d))
    return ctx.emit("reshape", [y], shape=(b, h * times, s, d))


def _window_bias(q_len: int, kv_len: int, offset, causal: bool, left: int, right: int,
                 dtype) -> np.ndarray | None:
    """The constant additive bias (0 or -inf) of the causal and sliding-window rules; offset is
    an int or a per-batch array."""
    if not causal and left < 0 and right < 0:
        return None
    i = np.arange(q_len).reshape(q_len, 1)
    j = np.arange(kv_len).reshape(1, kv_len)
    per_batch = np.ndim(offset) > 0
    pos = i + (np.reshape(offset, (-1, 1, 1)) if per_batch else int(offset))
    allowed = np.ones(np.broadcast(pos, j).shape, dtype=bool)
    if causal:
        allowed &= j <= pos
    if left >= 0:
        allowed &= (pos - j) <= left
    if right >= 0:
        allowed &= (j - pos) <= right
    bias = np.where(allowed, 0.0, -np.inf).astype(dtype)
    return bias.reshape(bias.shape[0], 1, q_len, kv_len) if per_batch else bias


def _attention(ctx, node):
    q, k, v = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    three_d = q.type.ndim == 3
    if three_d:
        q_heads, kv_heads = node.attr("q_num_heads"), node.attr("kv_num_heads")
        q, k, v = _heads(ctx, q, q_heads), _heads(ctx, k, kv_heads), _heads(ctx, v, kv_heads)
    if q.type.ndim != 4 or k.type.ndim != 4 or v.type.ndim != 4:
        raise unsupported(node, f"Q {q.type}, K {k.type}, V {v.type}")
    dtype = q.type.dtype
    np_dtype = dtypes.to_numpy(dtype)
    scale = node.attr("scale")
    scale = 1 / math.sqrt(q.type.shape[3]) if scale is None else scale
    root = like(ctx, np.sqrt(scale), q)
    past = node.has(4) and node.has(5)
    if node.has(4) != node.has(5):
        raise unsupported(node, "past_key without past_value (or the reverse)")
    if past:
        past_len = ctx.input(node, 4).type.shape[2]
        k = ctx.emit("cat", [ctx.input(node, 4), k], dim=2)
        v = ctx.emit("cat", [ctx.input(node, 5), v], dim=2)
    present_k, present_v = k, v
    q_len, kv_len = q.type.shape[2], k.type.shape[2]
    nonpad = ints(ctx.need_const(node, 6, "nonpad_kv_seqlen"), node, "nonpad_kv_seqlen") \
        if node.has(6) else None
    if nonpad is not None and past:
        raise unsupported(node, "nonpad_kv_seqlen with past_key")

    bias = None  # a Value or None; const_bias is its array when known at import time
    if node.has(3):
        mask = ctx.input(node, 3)
        pad = kv_len - mask.type.shape[-1]
        if pad > 0:
            fill = 0.0 if mask.type.dtype == "bool" else -math.inf
            mask = ctx.emit("pad", [mask], pads=(0, pad), mode="constant", value=fill)
        if mask.type.dtype == "bool":
            mask = ctx.emit("where", [mask, like(ctx, 0.0, q), like(ctx, -math.inf, q)])
        bias = mask
    offset = past_len if past else (np.array(nonpad) - q_len if nonpad is not None else 0)
    window = _window_bias(q_len, kv_len, offset, bool(node.attr("is_causal", 0)),
                          node.attr("left_window_size", -1), node.attr("right_window_size", -1),
                          np_dtype)
    if window is not None:
        bias = ctx.const(window) if bias is None else ctx.emit("add", [bias, ctx.const(window)])
    if nonpad is not None:
        keep = np.arange(kv_len) < np.array(nonpad).reshape(-1, 1)
        padding = np.where(keep, 0.0, -np.inf).astype(np_dtype).reshape(len(nonpad), 1, 1, kv_len)
        bias = ctx.const(padding) if bias is None else ctx.emit("add", [bias, ctx.const(padding)])

    hq, hk = q.type.shape[1], k.type.shape[1]
    if hq != hk:
        if hq % hk or v.type.shape[1] != hk:
            raise unsupported(node, f"{hq} query heads for {hk} key/value heads")
        k, v = _repeat_heads(ctx, k, hq // hk), _repeat_heads(ctx, v, hq // hk)
    scores = ctx.emit("matmul", [ctx.emit("mul", [q, root]),
                                 ctx.emit("permute", [ctx.emit("mul", [k, root])],
                                          dims=(0, 1, 3, 2))])
    softcap = node.attr("softcap")
    if softcap is not None and softcap > 0:
        capped = ctx.emit("tanh", [ctx.emit("div", [scores, like(ctx, softcap, scores)])])
        scores = ctx.emit("mul", [capped, like(ctx, softcap, scores)])
    with_bias = scores if bias is None else ctx.emit("add", [scores, bias])
    mode = node.attr("qk_matmul_output_mode", 0)
    precision = node.attr("softmax_precision")
    work = with_bias
    if precision is not None:
        target = ir_dtype(precision)
        if target is None:
            raise unsupported(node, f"softmax_precision {precision}")
        work = cast(ctx, work, target)
    probs = ctx.emit("softmax", [work], dim=3)
    if bias is not None:  # a row that may attend to no key gives zeros
        top = ctx.emit("amax", [bias], dims=(bias.type.ndim - 1,), keepdim=True)
        dead = ctx.emit("eq", [top, like(ctx, -math.inf, top)])
        probs = ctx.emit("where", [dead, like(ctx, 0.0, probs), probs])
    probs = cast(ctx, probs, dtype)
    y = ctx.emit("matmul", [probs, v])
    if three_d:
        y = ctx.emit("permute", [y], dims=(0, 2, 1, 3))
        y = ctx.emit("reshape", [y], shape=(y.type.shape[0], y.type.shape[1],
                                            y.type.shape[2] * y.type.shape[3]))
    qk_out = {2: with_bias, 3: probs}.get(mode, scores)
    return [y, present_k, present_v, cast(ctx, qk_out, dtype)]


def _rotary(ctx, node):
    x = ctx.input(node, 0)
    cos, sin = ctx.input(node, 1), ctx.input(node, 2)
    shape = x.type.shape
    if x.type.ndim == 4:
        work = ctx.emit("permute", [x], dims=(0, 2, 1, 3))
    elif x.type.ndim == 3:
        heads = node.attr("num_heads")
        if not heads or shape[2] % heads:
            raise unsupported(node, f"num_heads {heads} for {x.type}")
        work = ctx.emit("reshape", [x], shape=(shape[0], shape[1], heads, shape[2] // heads))
    else:
        raise unsupported(node, f"input {x.type}")
    head = work.type.shape[3]
    dim = node.attr("rotary_embedding_dim", 0) or head
    half = dim // 2
    if node.has(3):
        ids = ctx.input(node, 3)
        cos = ctx.emit("index", [cos, ids], dim=0)
        sin = ctx.emit("index", [sin, ids], dim=0)
    if cos.type.shape[-1] != half or sin.type.shape[-1] != half:
        raise unsupported(node, f"caches {cos.type} for a rotary dim of {dim}")
    cos, sin = ctx.emit("unsqueeze", [cos], dim=2), ctx.emit("unsqueeze", [sin], dim=2)
    rotate = ctx.emit("slice", [work], dim=3, start=0, end=dim, step=1)
    if node.attr("interleaved", 0):
        x1 = ctx.emit("slice", [rotate], dim=3, start=0, end=dim, step=2)
        x2 = ctx.emit("slice", [rotate], dim=3, start=1, end=dim, step=2)
    else:
        x1, x2 = ctx.emit("split", [rotate], n_outputs=2, sizes=(half, dim - half), dim=3)
    real = ctx.emit("sub", [ctx.emit("mul", [cos, x1]), ctx.emit("mul", [sin, x2])])
    imag = ctx.emit("add", [ctx.emit("mul", [sin, x1]), ctx.emit("mul", [cos, x2])])
    if node.attr("interleaved", 0):
        pair = ctx.emit("cat", [ctx.emit("unsqueeze", [real], dim=4),
                                ctx.emit("unsqueeze", [imag], dim=4)], dim=4)
        rotated = ctx.emit("reshape", [pair], shape=rotate.type.shape)
    else:
        rotated = ctx.emit("cat", [real, imag], dim=3)
    if dim < head:
        rest = ctx.emit("slice", [work], dim=3, start=dim, end=head, step=1)
        rotated = ctx.emit("cat", [rotated, rest], dim=3)
    if x.type.ndim == 4:
        return [ctx.emit("permute", [rotated], dims=(0, 2, 1, 3))]
    return [ctx.emit("reshape", [rotated], shape=shape)]


def _swiglu(ctx, node):
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    alpha = node.attr("alpha", 1.0)
    gate = ctx.emit("sigmoid", [ctx.emit("mul", [a, like(ctx, alpha, a)])]) if alpha != 1.0 \
        else ctx.emit("sigmoid", [a])
    return [ctx.emit("mul", [ctx.emit("mul", [a, gate]), b])]


# --- losses -------------------------------------------------------------------------------------


def _nll(ctx, node, log_probs, target, weight):
    """ONNX's NegativeLogLikelihoodLoss on log-probabilities (N, C, d...) and targets (N, d...):
    -log_probs[n, target, d...] weighted by weight[target], 0 where the target is ignore_index,
    then none / sum / mean (a weighted mean divides by the weights' sum)."""
    reduction = node.attr("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise unsupported(node, f"reduction {reduction!r}")
    ignore = node.attr("ignore_index")
    if log_probs.type.ndim < 2 or target.type.shape != (log_probs.type.shape[0],
                                                       *log_probs.type.shape[2:]):
        raise unsupported(node, f"input {log_probs.type} and target {target.type}")
    t = cast(ctx, target, "i64")
    valid = None
    if ignore is not None:
        valid = ctx.emit("ne", [t, like(ctx, ignore, t)])
        t = ctx.emit("where", [valid, t, like(ctx, 0, t)])
    picked = ctx.emit("gather", [log_probs, ctx.emit("unsqueeze", [t], dim=1)], dim=1)
    loss = ctx.emit("neg", [ctx.emit("squeeze", [picked], dims=(1,))])
    w = None
    if weight is not None:
        w = ctx.emit("index", [weight, t], dim=0)
    if valid is not None:
        zero = like(ctx, 0.0, loss)
        w = ctx.emit("where", [valid, w if w is not None else like(ctx, 1.0, loss), zero])
        if w.type.shape != loss.type.shape:
            w = ctx.emit("expand", [w], shape=loss.type.shape)
    if w is not None:
        loss = ctx.emit("mul", [loss, w])
    if reduction == "none":
        return loss
    dims = tuple(range(loss.type.ndim))
    total = ctx.emit("sum", [loss], dims=dims, keepdim=False)
    if reduction == "sum":
        return total
    if w is None:
        return ctx.emit("mean", [loss], dims=dims, keepdim=False)
    return ctx.emit("div", [total, ctx.emit("sum", [w], dims=dims, keepdim=False)])


def _nll_loss(ctx, node):
    weight = ctx.input(node, 2) if node.has(2) else None
    return [_nll(ctx, node, ctx.input(node, 0), ctx.input(node, 1), weight)]


def _softmax_cross_entropy(ctx, node):
    x = ctx.input(node, 0)
    log_probs = ctx.emit("log_softmax", [x], dim=1)
    weight = ctx.input(node, 2) if node.has(2) else None
    return [_nll(ctx, node, log_probs, ctx.input(node, 1), weight), log_probs]


TABLE = [
    ("Attention", (23, 24, 25), _attention),
    ("RotaryEmbedding", (23,), _rotary),
    ("SwiGLU", (28,), _swiglu),
    ("NegativeLogLikelihoodLoss", (12, 13, 22), _nll_loss),
    ("SoftmaxCrossEntropyLoss", (12, 13), _softmax_cross_entropy),
]
