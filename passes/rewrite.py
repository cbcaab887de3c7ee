"""One driver for local rewrites: tables of rules applied in order to a fixed point.

A rule looks at one node (its inputs already rewritten) through a `Rewriter` and returns the
values that replace the node's results, or None. Replacements must have the same types: a rule
that changes a type is a bug and the driver says which rule did it. New nodes a rule needs are
made with `rw.emit` / `rw.const`, which give them fresh names and type inference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fxforge import dtypes, ops
from fxforge.debug import bisect
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.passes.dce import dce


@dataclass(frozen=True)
class Rule:
    name: str
    doc: str
    apply: Callable[[Node, Rewriter], Sequence[Value] | None]


class Rewriter:
    """The view a rule has of the graph being rebuilt."""

    def __init__(self, graph: Graph):
        self.source = graph
        self.names = NameGenerator(graph.value_names())
        self.nodes: list[Node] = []
        self.producers: dict[str, Node] = {}
        self.outputs = {v.name for v in graph.outputs}

    def producer(self, v: Value) -> Node | None:
        return self.producers.get(v.name)

    def constant(self, v: Value) -> np.ndarray | None:
        node = self.producers.get(v.name)
        if node is None or node.op != "const":
            return None
        return node.attrs["value"].array

    def use_count(self, v: Value) -> int:
        """Readers of `v` in the source graph, counting a graph output as a reader."""
        return len(self.source.users.get(v.name, ())) + (v.name in self.outputs)

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        for v in node.outputs:
            self.producers[v.name] = node
        return node

    def emit(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
             provenance: Provenance = Provenance(), n_outputs: int = 1) -> Node:
        names = [self.names.fresh(op.replace("_", "")[:8] or "v") for _ in range(n_outputs)]
        return self.add(ops.build_node(op, inputs, attrs or {}, names, provenance))

    def const(self, array: np.ndarray, provenance: Provenance = Provenance(),
              dtype: str | None = None, prefix: str = "c") -> Value:
        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(dtypes.to_numpy(dtype))
        out = Value(self.names.fresh(prefix), TensorType(array.shape,
                                                         dtypes.from_numpy(array.dtype)))
        self.add(Node("const", (), (out,), Attrs({"value": ConstData(array)}), provenance))
        return out


def substitute(node: Node, subst: dict[str, Value]) -> Node:
    """`node` reading `subst[name]` wherever it read the value `name` (itself if none)."""
    if not any(v.name in subst for v in node.inputs):
        return node
    inputs = tuple(subst.get(v.name, v) for v in node.inputs)
    return Node(node.op, inputs, node.outputs, node.attrs, node.provenance)


def _same_types(old: Sequence[Value], new: Sequence[Value]) -> bool:
    return len(old) == len(new) and all(
        (a.type.shape, a.type.dtype) == (b.type.shape, b.type.dtype) for a, b in zip(old, new))


def rewrite(graph: Graph, rules: Sequence[Rule], max_rounds: int = 50) -> tuple[Graph, Counter]:
    """Apply `rules` (first match wins, per node) until nothing changes; then remove dead code."""
    stats: Counter = Counter()
    for _ in range(max_rounds):
        rw = Rewriter(graph)
        subst: dict[str, Value] = {}
        changed = False
        for original in graph.nodes:
            node = substitute(original, subst)
            for rule in rules:
                replacement = rule.apply(node, rw)
                if replacement is None:
                    continue
                replacement = tuple(replacement)
                if not _same_types(node.outputs, replacement):
                    raise TypeError(f"rewrite rule {rule.name!r} changed the type of "
                                    f"{node.describe()}")
                if not bisect.allow(f"rule {rule.name}", node.describe()):
                    continue  # bisecting: this application is past the limit
                subst.update({old.name: new for old, new in zip(node.outputs, replacement)})
                stats[rule.name] += 1
                changed = True
                break
            else:
                rw.add(node)
        outputs = tuple(subst.get(v.name, v) for v in graph.outputs)
        graph, _ = dce(Graph(graph.inputs, tuple(rw.nodes), outputs, graph.dims))
        if not changed:
            break
    return graph, stats
