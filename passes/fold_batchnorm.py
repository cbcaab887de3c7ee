"""`fold-batchnorm`: fold inference batch norm into the conv2d / linear that feeds it.

    y = (conv(x, W) + b - mean) * gamma / sqrt(var + eps) + beta
      = conv(x, W * s) + ((b - mean) * s + beta)          with s = gamma / sqrt(var + eps)

The fold needs the producer's weight (and bias) to be constants and the producer's result to be
read only by this batch norm. The folded weights are new constants computed in float64: a
weight shared with another consumer keeps its old value there. A batch norm that cannot fold
becomes a per-channel `mul` and `add` (which later fuse), and the pass says why it stayed. One
whose scale or shift is not finite (eps=0 over a zero variance) stays as it is.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fxforge.ir import Graph, Node, Value
from fxforge.passes.dce import dce
from fxforge.passes.rewrite import Rewriter


def _scale_shift(bn: Node, rw: Rewriter) -> tuple[np.ndarray, np.ndarray] | None:
    arrays = [rw.constant(v) for v in bn.inputs[1:]]
    if any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    with np.errstate(all="ignore"):  # eps=0 over a zero variance: checked by the caller
        scale = gamma / np.sqrt(var + bn.attrs["eps"])
        return scale, beta - mean * scale


def _why_not_foldable(bn: Node, producer: Node | None, rw: Rewriter) -> str | None:
    if producer is None or producer.op not in ("conv2d", "linear"):
        return f"its input comes from {producer.op if producer else 'a graph input'}, " \
               "not conv2d/linear"
    if producer.op == "linear" and bn.inputs[0].type.ndim != 2:
        return "batch norm over dim 1 of a linear output with rank > 2 is not per feature"
    if rw.use_count(bn.inputs[0]) != 1:
        return f"the {producer.op} result has other readers"
    if any(rw.constant(v) is None for v in producer.inputs[1:]):
        return f"the {producer.op} weights are not constants"
    return None


def _fold_into(bn: Node, producer: Node, scale: np.ndarray, shift: np.ndarray,
               rw: Rewriter) -> Value:
    weight = rw.constant(producer.inputs[1])
    bias = rw.constant(producer.inputs[2]) if len(producer.inputs) == 3 else 0.0
    folded_w = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    folded_b = np.asarray(bias, dtype=np.float64) * scale + shift
    dtype = producer.inputs[1].type.dtype
    w = rw.const(folded_w, rw.producer(producer.inputs[1]).provenance, dtype)
    b = rw.const(folded_b, bn.provenance, dtype)
    node = rw.emit(producer.op, [producer.inputs[0], w, b], dict(producer.attrs),
                   producer.provenance)
    return node.output


def _scale_and_shift(bn: Node, scale: np.ndarray, shift: np.ndarray, rw: Rewriter) -> Value:
    x = bn.inputs[0]
    shape = (-1,) + (1,) * (x.type.ndim - 2)
    s = rw.const(scale.reshape(shape), bn.provenance, x.type.dtype)
    t = rw.const(shift.reshape(shape), bn.provenance, x.type.dtype)
    scaled = rw.emit("mul", [x, s], provenance=bn.provenance).output
    return rw.emit("add", [scaled, t], provenance=bn.provenance).output


def fold_batchnorm(graph: Graph) -> tuple[Graph, dict]:
    rw = Rewriter(graph)
    subst: dict[str, Value] = {}
    stats: Counter = Counter()
    left: list[str] = []
    for node in graph.nodes:
        if any(v.name in subst for v in node.inputs):
            node = Node(node.op, tuple(subst.get(v.name, v) for v in node.inputs), node.outputs,
                        node.attrs, node.provenance)
        if node.op != "batch_norm":
            rw.add(node)
            continue
        name = node.provenance.module or node.output.name
        params = _scale_shift(node, rw)
        if params is None:
            left.append(f"{name}: its parameters are not constants")
            rw.add(node)
            continue
        if not all(np.isfinite(p).all() for p in params):
            # eps=0 over a zero variance: eager divides by zero at run time, and so does the
            # batch norm left as it is; folded, it would plant inf/NaN weights in the layer
            left.append(f"{name}: its scale / shift are not finite (eps={node.attrs['eps']:g} "
                        "and a zero variance?)")
            rw.add(node)
            continue
        producer = rw.producer(node.inputs[0])
        reason = _why_not_foldable(node, producer, rw)
        if reason is None:
            subst[node.output.name] = _fold_into(node, producer, *params, rw)
            stats["folded"] += 1
        else:
            subst[node.output.name] = _scale_and_shift(node, *params, rw)
            stats["to-scale-shift"] += 1
            left.append(f"{name}: {reason}")
    if not stats:
        return graph, {"folded": 0}
    outputs = tuple(subst.get(v.name, v) for v in graph.outputs)
    graph, _ = dce(Graph(graph.inputs, tuple(rw.nodes), outputs, graph.dims))
    result: dict = dict(stats)
    if left:
        result["not-folded"] = left
    return graph, result
