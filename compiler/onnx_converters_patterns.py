"""ONNX import: ops that ONNX spells with several nodes, recognized once every node is converted.

The converters lower one ONNX node at a time; a few IR ops have no single ONNX node (at the
model's opset) and come back as the chain that spells them. `recognize(graph)` rewrites those
chains into the IR op, so an imported model meets the same fusions, kernels and quantization as a
captured one, and torch -> IR -> ONNX -> IR gives the IR it started from:

- `linear` without a bias, then `add` of a constant [N] vector: nn.Linear on a 3-D input
  (MatMul + Add, as torch.onnx and fxforge's exporter write it) is one linear with its bias
  (canonicalize's rule);
- `ne` (exported as Not(Equal)), `silu` (x * Sigmoid(x)), `rsqrt` (Reciprocal(Sqrt)), and
  `cumsum` of an integer (a Cast to int64 before CumSum);
- GELU's formula, 0.5 * x * (1 + erf(x / sqrt 2)) or the tanh approximation, in any order of
  its products (torch.onnx before opset 20, fxforge's exporter for float64): `gelu`
  (`passes/formulas.py`, which canonicalize applies to captured graphs too);
- attention as fxforge's exporter writes `scaled_dot_product_attention`: matmul(q, k^T) times
  the scale (divided by sqrt(E) for the default scale, so the default comes back as None), the
  causal rule as a constant lower-triangular `where`, a mask (bool: `where`; float: `add`)
  followed by the safe softmax that zeroes a row whose every key is masked, softmax, matmul by v.

Each pattern matches only what computes exactly the op: intermediate values with one reader,
constants equal to the formula's in the value's dtype. Everything else is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fxforge import dtypes
from fxforge.ir import Graph, Node, Value
from fxforge.passes.canonicalize import LINEAR_BIAS
from fxforge.passes.formulas import GELU, is_scalar, only, scalar, takeover
from fxforge.passes.rewrite import Rewriter, Rule, rewrite
from fxforge.shapes import norm_dim

# --- ne, silu ----------------------------------------------------------------------------------


def _ne(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """bitwise_not(eq(a, b)) (ONNX's Not(Equal), as `ne` is exported): ne(a, b)."""
    if node.op != "bitwise_not" or node.output.type.dtype != "bool":
        return None
    eq = only(rw, node.inputs[0], "eq")
    if eq is None:
        return None
    return takeover(rw, node, "ne", list(eq.inputs), {}, eq.provenance)


def _silu(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """mul(x, sigmoid(x)) in either order (no single ONNX op before opset 24): silu(x)."""
    if node.op != "mul" or not dtypes.is_float(node.output.type.dtype):
        return None
    for x, s in (node.inputs, node.inputs[::-1]):
        sig = only(rw, s, "sigmoid")
        if sig is not None and sig.inputs[0] == x and x.type == node.output.type:
            return takeover(rw, node, "silu", [x], {}, node.provenance)
    return None


def _rsqrt(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """div(1, sqrt(x)) (Reciprocal(Sqrt), as `rsqrt` is exported): rsqrt(x), which the IR
    computes in float64 (the chain's float32 rounding can differ by 1 ulp)."""
    if node.op != "div" or not is_scalar(rw, node.inputs[0], 1.0, node.output):
        return None
    root = only(rw, node.inputs[1], "sqrt")
    if root is None:
        return None
    return takeover(rw, node, "rsqrt", list(root.inputs), {}, node.provenance)


def _cumsum_cast(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """cumsum(cast(x, i64)) of an integer x: cumsum(x), which sums integers in int64 as torch
    does (the exporter writes that Cast before ONNX's CumSum)."""
    if node.op != "cumsum" or node.attrs["dtype"] is not None:
        return None
    cast = only(rw, node.inputs[0], "cast")
    if cast is None or cast.attrs["dtype"] != "i64":
        return None
    x = cast.inputs[0]
    if dtypes.is_float(x.type.dtype):
        return None
    return takeover(rw, node, "cumsum", [x], dict(node.attrs), node.provenance)


# --- attention ----------------------------------------------------------------------------------


def _scores(rw: Rewriter, s: Value):
    """(q, k, scale) for s = matmul(q, permute(k, last two swapped)) * scale; a division by
    sqrt(E) in s's dtype is the default scale (None)."""
    p = only(rw, s, "mul", "div")
    if p is None:
        return None
    if p.op == "div":
        (mm_v, c), scale = p.inputs, None
    else:
        pairs = [(a, c) for a, c in (p.inputs, p.inputs[::-1]) if scalar(rw, c) is not None]
        if not pairs:
            return None
        mm_v, c = pairs[0]
        scale = scalar(rw, c)
        if not math.isfinite(scale) or scale == 0:
            return None
    mm = only(rw, mm_v, "matmul")
    if mm is None or mm_v.type != s.type:
        return None
    q, kt = mm.inputs
    perm = only(rw, kt, "permute")
    n = kt.type.ndim
    if perm is None or n < 2 or tuple(d % n for d in perm.attrs["dims"]) != (
            *range(n - 2), n - 1, n - 2):
        return None
    if p.op == "div" and not is_scalar(rw, c, math.sqrt(q.type.shape[-1]), s):
        return None
    return q, perm.inputs[0], scale


def _neg_inf(rw: Rewriter, v: Value) -> bool:
    c = scalar(rw, v)
    return c is not None and c == -math.inf


def _masked(rw: Rewriter, s2: Value, safe: bool):
    """(q, k, scale, mask or None, is_causal) for the softmax's input `s2`: the scores, the
    scores where(mask, s, -inf) / s + mask (only with the safe softmax, `safe`), or the scores
    where(tril, s, -inf) (the causal rule, without it)."""
    uses = 2 if safe else 1  # the safe softmax's amax reads the masked scores too
    p = rw.producer(s2)
    if p is None or rw.use_count(s2) != uses:
        return None
    if not safe:
        found = _scores(rw, s2) if p.op in ("mul", "div") else None
        if found is not None:
            return (*found, None, False)
        if p.op != "where" or not _neg_inf(rw, p.inputs[2]):
            return None
        keep = rw.constant(p.inputs[0])
        found = _scores(rw, p.inputs[1])
        if keep is None or found is None or keep.dtype != np.bool_ or keep.ndim != 2:
            return None
        q, k = found[0], found[1]
        if not np.array_equal(keep, np.tril(np.ones((q.type.shape[-2], k.type.shape[-2]),
                                                    dtype=bool))):
            return None
        return (*found, None, True)
    if p.op == "where" and p.inputs[0].type.dtype == "bool" and _neg_inf(rw, p.inputs[2]):
        found = _scores(rw, p.inputs[1])
        return (*found, p.inputs[0], False) if found is not None else None
    if p.op == "add":
        for s, mask in (p.inputs, p.inputs[::-1]):
            found = _scores(rw, s) if dtypes.is_float(mask.type.dtype) else None
            if found is not None:
                return (*found, mask, False)
    return None


def _safe_softmax(rw: Rewriter, probs: Value):
    """(softmax node, True) for where(amax(s, -1) == -inf, 0, softmax(s, -1)); (softmax node,
    False) for a plain softmax; None otherwise."""
    p = only(rw, probs, "where", "softmax")
    if p is None:
        return None
    last = probs.type.ndim - 1
    if p.op == "softmax":
        return (p, False) if norm_dim(p.attrs["dim"], probs.type.ndim) == last else None
    dead, zero, sm_v = p.inputs
    sm = only(rw, sm_v, "softmax")
    eq = only(rw, dead, "eq")
    if sm is None or eq is None or norm_dim(sm.attrs["dim"], probs.type.ndim) != last:
        return None
    if not is_scalar(rw, zero, 0.0, probs):
        return None
    top, ninf = eq.inputs if _neg_inf(rw, eq.inputs[1]) else eq.inputs[::-1]
    amax = only(rw, top, "amax")
    if amax is None or not _neg_inf(rw, ninf) or amax.inputs[0] != sm.inputs[0]:
        return None
    if not amax.attrs["keepdim"] or tuple(norm_dim(d, probs.type.ndim)
                                          for d in amax.attrs["dims"]) != (last,):
        return None
    return sm, True


def _attention(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op != "matmul":
        return None
    probs, v = node.inputs
    found = _safe_softmax(rw, probs)
    if found is None:
        return None
    sm, safe = found
    masked = _masked(rw, sm.inputs[0], safe)
    if masked is None or safe != (masked[3] is not None):
        return None
    q, k, scale, mask, causal = masked
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return takeover(rw, node, "scaled_dot_product_attention", inputs,
                     {"is_causal": causal, "scale": scale}, node.provenance)


RULES = [
    LINEAR_BIAS,
    Rule("ne", "Not(Equal(a, b)) is ne(a, b)", _ne),
    Rule("silu", "x * sigmoid(x) is silu(x)", _silu),
    Rule("rsqrt", "1 / sqrt(x) is rsqrt(x)", _rsqrt),
    Rule("cumsum-cast", "cumsum(cast(x, i64)) of an integer x is cumsum(x)", _cumsum_cast),
    GELU,
    Rule("attention", "the exporter's attention chain is scaled_dot_product_attention",
         _attention),
]


def recognize(graph: Graph) -> Graph:
    """`graph` with the multi-node spellings above as their IR ops (dead nodes removed)."""
    return rewrite(graph, RULES)[0]
