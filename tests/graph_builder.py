"""Building small IR graphs in tests node by node (names c1, v2, ... in creation order)."""

from __future__ import annotations

import numpy as np

from fxforge import dtypes, ops
from fxforge.ir import Attrs, ConstData, Node, TensorType, Value


class GraphBuilder:
    def __init__(self):
        self.nodes: list[Node] = []
        self.n = 0

    def const(self, array: np.ndarray) -> Value:
        self.n += 1
        out = Value(f"c{self.n}", TensorType(array.shape, dtypes.from_numpy(array.dtype)))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": ConstData(array)})))
        return out

    def __call__(self, op: str, inputs, n_out: int = 1, **attrs):
        names = [f"v{self.n + i + 1}" for i in range(n_out)]
        self.n += n_out
        node = ops.build_node(op, inputs, attrs, names)
        self.nodes.append(node)
        return node.outputs if n_out > 1 else node.output
