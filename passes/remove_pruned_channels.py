"""`remove-pruned-channels`: physically remove channels that hold a constant for every input.

`passes/channels.py` decides which channels go (whole dependency groups, only where exact); this
pass rebuilds the graph without them: producers lose weight rows, consumers lose weight columns,
batch norms and per-channel constants lose entries, reshapes and splits get their new sizes. A
removed channel that is a nonzero constant is folded into the consumer's bias, which the analysis
only allows where that is exact (linear, or a conv without padding).
"""

from __future__ import annotations

import numpy as np

from compiler import ops
from compiler.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from passes.channels import ChannelAnalysis, analyze


class _Builder:
    def __init__(self, graph: Graph, analysis: ChannelAnalysis):
        self.graph = graph
        self.a = analysis
        self.names = NameGenerator(graph.value_names())
        self.nodes: list[Node] = []
        self.mapping: dict[str, Value] = {}

    def keep(self, v: Value) -> np.ndarray | None:
        removed = self.a.removable.get(v.name)
        if removed is None:
            return None
        return np.setdiff1d(np.arange(v.type.shape[1]), removed)

    def const(self, array: np.ndarray, like: Value) -> Value:
        from compiler import dtypes

        array = np.ascontiguousarray(array.astype(dtypes.to_numpy(like.type.dtype)))
        provenance = self.graph.producers[like.name].provenance if like.name in \
            self.graph.producers else Provenance()
        out = Value(self.names.fresh("c"), TensorType(array.shape, like.type.dtype))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": ConstData(array)}),
                               provenance))
        return out

    def emit(self, node: Node, inputs: list[Value], attrs: dict | None = None) -> None:
        attrs = dict(node.attrs) if attrs is None else attrs
        new = ops.build_node(node.op, inputs, attrs, [v.name for v in node.outputs],
                             node.provenance)
        for old, v in zip(node.outputs, new.outputs):
            keep = self.keep(old)
            expected = old.type.shape[1] if keep is None else len(keep)
            assert v.type.ndim < 2 or v.type.shape[1] == expected, (node.describe(), v.type)
            self.mapping[old.name] = v
        self.nodes.append(new)


def _weighted(b: _Builder, node: Node, inputs: list[Value]) -> tuple[list[Value], dict]:
    """conv2d (groups 1 or depthwise) / linear: slice rows and columns, absorb constants."""
    x, out = node.inputs[0], node.output
    w = b.graph.constant(node.inputs[1]).astype(np.float64)
    bias = (b.graph.constant(node.inputs[2]).astype(np.float64) if len(node.inputs) == 3
            else np.zeros(w.shape[0]))
    keep_out, keep_in = b.keep(out), b.keep(x)
    rows = np.arange(w.shape[0]) if keep_out is None else keep_out
    depthwise = node.op == "conv2d" and node.attrs["groups"] > 1
    if depthwise:
        w, bias = w[rows], bias[rows]
    else:
        if keep_in is not None:
            removed = b.a.removable[x.name]
            k = b.a.consts[x.name][removed]
            taps = w[:, removed].reshape(w.shape[0], len(removed), -1).sum(axis=2)
            bias = bias + taps @ k  # zero for zero channels; exact without padding otherwise
            w = w[:, keep_in]
        w, bias = w[rows], bias[rows]
    new_inputs = [inputs[0], b.const(w, node.inputs[1])]
    if len(node.inputs) == 3 or np.any(bias):
        new_inputs.append(b.const(bias, node.inputs[2] if len(node.inputs) == 3
                                  else node.inputs[1]))
    attrs = dict(node.attrs)
    if depthwise:
        attrs["groups"] = len(rows)
    return new_inputs, attrs


def _sliced_operands(b: _Builder, node: Node, inputs: list[Value]) -> list[Value]:
    """Per-channel constant operands (batch norm parameters, a (C,1,1) scale) lose entries."""
    if len(node.outputs) != 1:
        return inputs
    out = node.output
    keep = b.keep(out)
    if keep is None:
        return inputs
    result = []
    for v, new in zip(node.inputs, inputs):
        array = b.graph.constant(v)
        if array is None:
            result.append(new)
            continue
        offset = out.type.ndim - array.ndim if node.op != "batch_norm" else 1
        axis = 1 - offset
        if 0 <= axis < array.ndim and array.shape[axis] == out.type.shape[1] > 1:
            result.append(b.const(np.take(array, keep, axis=axis), v))
        else:
            result.append(new)
    return result


def _rebuild(b: _Builder, node: Node) -> None:
    inputs = [b.mapping.get(v.name, v) for v in node.inputs]
    touched = any(n is not v for n, v in zip(inputs, node.inputs)) or any(
        v.name in b.a.removable for v in node.outputs)
    if not touched or node.op == "const":
        b.nodes.append(node)
        return
    attrs = dict(node.attrs)
    if node.op in ("conv2d", "linear"):
        inputs, attrs = _weighted(b, node, inputs)
    elif node.op == "reshape":
        shape = list(attrs["shape"])
        keep = b.keep(node.output)
        if keep is not None:
            shape[1] = len(keep)
        attrs["shape"] = tuple(shape)
    elif node.op == "split" and node.attrs["dim"] % node.inputs[0].type.ndim == 1:
        attrs["sizes"] = tuple(len(b.keep(v)) if b.keep(v) is not None else v.type.shape[1]
                               for v in node.outputs)
    else:
        inputs = _sliced_operands(b, node, inputs)
    b.emit(node, inputs, attrs)


def remove_pruned_channels(graph: Graph) -> tuple[Graph, dict]:
    analysis = analyze(graph)
    if not analysis.removable:
        return graph, {"channels-removed": 0}
    b = _Builder(graph, analysis)
    for node in graph.nodes:
        _rebuild(b, node)
    layers = []
    removed_total = 0
    for node in analysis.sources:
        removed = analysis.removable.get(node.output.name)
        if removed is not None:
            removed_total += len(removed)
            c = node.output.type.shape[1]
            layers.append(f"{node.provenance.module or node.output.name}: {c} -> "
                          f"{c - len(removed)}")
    outputs = tuple(b.mapping.get(v.name, v) for v in graph.outputs)
    from passes.dce import dce

    result, _ = dce(Graph(graph.inputs, tuple(b.nodes), outputs))
    return result, {"channels-removed": removed_total, "layers": layers}
