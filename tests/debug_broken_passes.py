"""Deliberately wrong passes, for the pass-debugging tests (importable by name, so a fresh
process can replay them: `fxforge replay B --pass user:flip_scale=debug_broken_passes:flip_scale`).

Each models a bug seen in real compilers: a rewrite rule with a sign error, a pass that drops a
channel, a folded constant computed wrong, a pass that crashes on one op.
"""

from __future__ import annotations

import numpy as np

from fxforge.ir import Graph, Node
from fxforge.passes.rewrite import Rewriter, Rule, rewrite


def _mul_by_one(node: Node, rw: Rewriter):
    """Correct rule: mul(x, 1) -> x."""
    if node.op != "mul":
        return None
    c = rw.constant(node.inputs[1])
    if c is not None and c.size == 1 and float(c.reshape(-1)[0]) == 1.0 \
            and node.inputs[0].type == node.output.type:
        return [node.inputs[0]]
    return None


def _flip(node: Node, rw: Rewriter):
    """The bug: mul(x, c) with every c > 0 becomes mul(x, -c) (a sign error in a rule that
    meant to canonicalize the constant). It fires once per node: -c is no longer positive."""
    if node.op != "mul" or len(node.inputs) != 2:
        return None
    c = rw.constant(node.inputs[1])
    if c is None or c.dtype != np.float32 or c.size == 0 or not (c > 0).all():
        return None
    neg = rw.const(-c, node.provenance)
    return [rw.emit("mul", [node.inputs[0], neg], {}, node.provenance).output]


def flip_scale(graph: Graph) -> tuple[Graph, dict]:
    graph, stats = rewrite(graph, [Rule("mul-one", "mul by 1 is x", _mul_by_one),
                                   Rule("flip-scale", "BUG: negates the scale", _flip)])
    return graph, dict(stats)


def drop_channel(graph: Graph) -> Graph:
    """The bug: the first linear/conv with a constant weight loses output channel 0 (zeroed),
    as a pruning pass with an off-by-one would."""
    rw = Rewriter(graph)
    done = False
    subst = {}
    for node in graph.nodes:
        node = Node(node.op, tuple(subst.get(v.name, v) for v in node.inputs), node.outputs,
                    node.attrs, node.provenance)
        weight = graph.constant(node.inputs[1]) if node.op in ("linear", "conv2d",
                                                               "fused_linear") else None
        if not done and weight is not None and weight.shape[0] > 1:
            w = weight.copy()
            w[0] = 0
            node = Node(node.op, (node.inputs[0], rw.const(w, node.provenance),
                                  *node.inputs[2:]), node.outputs, node.attrs, node.provenance)
            done = True
        rw.add(node)
    return Graph(graph.inputs, tuple(rw.nodes), graph.outputs)


def wrong_fold(graph: Graph) -> Graph:
    """The bug: layer_norm's bias folded from the wrong constant (gain + bias instead of bias):
    a folding pass that read the wrong operand."""
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.op == "layer_norm" and rw.constant(node.inputs[1]) is not None \
                and rw.constant(node.inputs[2]) is not None:
            bias = rw.constant(node.inputs[1]) + rw.constant(node.inputs[2])
            node = Node(node.op, (node.inputs[0], node.inputs[1],
                                  rw.const(bias.astype(np.float32), node.provenance)),
                        node.outputs, node.attrs, node.provenance)
        rw.add(node)
    return Graph(graph.inputs, tuple(rw.nodes), graph.outputs)


def crash_on_layer_norm(graph: Graph) -> Graph:
    """The bug: a pass that cannot handle one op."""
    for node in graph.nodes:
        if node.op == "layer_norm":
            raise NotImplementedError(f"no rule for layer_norm over {node.inputs[0].type.ndim} "
                                      "dims")
    return graph
