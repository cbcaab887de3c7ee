"""`cse`: common-subexpression elimination.

Two nodes with the same op, the same inputs and the same attributes compute the same values
(every IR op is pure), so the second is replaced by the first. Constants are merged by content
digest and type. Opaque `torch_op` nodes are left alone: they may be random.
"""

from __future__ import annotations

from fxforge.ir import Graph, Node, Value
from fxforge.passes.dce import dce


def _key(node: Node) -> tuple:
    if node.op == "const":
        t = node.output.type
        return ("const", node.attrs["value"].digest, t.shape, t.dtype)
    return (node.op, tuple(v.name for v in node.inputs), node.attrs)


def cse(graph: Graph) -> tuple[Graph, dict[str, int]]:
    seen: dict[tuple, Node] = {}
    subst: dict[str, Value] = {}
    nodes = []
    merged = 0
    for node in graph.nodes:
        if any(v.name in subst for v in node.inputs):
            inputs = tuple(subst.get(v.name, v) for v in node.inputs)
            node = Node(node.op, inputs, node.outputs, node.attrs, node.provenance)
        if node.op == "torch_op":
            nodes.append(node)
            continue
        key = _key(node)
        first = seen.get(key)
        if first is None:
            seen[key] = node
            nodes.append(node)
        else:
            subst.update({a.name: b for a, b in zip(node.outputs, first.outputs)})
            merged += 1
    outputs = tuple(subst.get(v.name, v) for v in graph.outputs)
    if not merged:
        return graph, {"merged": 0}
    graph, _ = dce(Graph(graph.inputs, tuple(nodes), outputs, graph.dims))
    return graph, {"merged": merged}
