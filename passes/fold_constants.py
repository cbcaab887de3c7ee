"""`fold-constants`: evaluate nodes whose inputs are all constants, with the numpy reference.

The reference is the specification, so a folded value is exactly what the unfolded graph
computes. Opaque `torch_op` nodes are never folded (they may be random or stateful), and a fold
that would grow the model (an `expand` of a small constant to a large shape, say) is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from fxforge.execute import run_reference
from fxforge.ir import Graph, Node, Value
from fxforge.passes.rewrite import Rewriter, Rule, rewrite

FOLD_LIMIT = 1 << 16  # elements a folded constant may have beyond its largest input


def _fold(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op in ("const", "torch_op"):
        return None
    arrays = [rw.constant(v) for v in node.inputs]
    if any(a is None for a in arrays) or not all(v.type.is_static for v in node.outputs):
        return None  # a symbolic size (arange to S) is no constant
    largest = max((a.size for a in arrays), default=0)
    if any(v.type.numel > max(largest, FOLD_LIMIT) for v in node.outputs):
        return None
    single = Graph(tuple(node.inputs), (node,), node.outputs)
    results = run_reference(single, arrays)
    return [rw.const(r, node.provenance) for r in results]


RULES = [
    Rule("fold", "a node whose inputs are all constants becomes its value", _fold),
]


def fold_constants(graph: Graph) -> tuple[Graph, dict[str, int]]:
    graph, stats = rewrite(graph, RULES)
    return graph, {"folded": stats["fold"]}
