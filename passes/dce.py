"""`dce`: remove nodes none of whose results reach a graph output.

Every IR op is pure (capture functionalizes the model), so an unused result is dead.
"""

from __future__ import annotations

from fxforge.ir import Graph


def dce(graph: Graph) -> tuple[Graph, dict[str, int]]:
    live = {v.name for v in graph.outputs}
    kept = []
    for node in reversed(graph.nodes):
        if any(v.name in live for v in node.outputs):
            kept.append(node)
            live.update(v.name for v in node.inputs)
    removed = len(graph.nodes) - len(kept)
    if not removed:
        return graph, {"removed": 0}
    kept_graph = Graph(graph.inputs, tuple(reversed(kept)), graph.outputs, graph.dims)
    return kept_graph, {"removed": removed}
