"""`remove-pruned-channels`: physically remove channels that hold a constant for every input.

`passes/channels.py` decides which channels go (whole dependency groups, only where exact); this
pass rebuilds the graph without them: producers lose weight rows, consumers lose weight columns,
batch norms and per-channel constants lose entries, reshapes and splits get their new sizes.

A removed channel that is a nonzero constant c (a batch-norm shift after ReLU where
`torch.nn.utils.prune` zeroed a conv's filters but not its batch norm) is folded into the consumer:
into a linear's or unpadded conv's bias; into a zero-padded conv as the per-position map
conv2d(c everywhere, W[:, removed]) with the conv's own padding, stride and dilation, computed in
float64. The map is uniform away from the borders; where it is uniform everywhere it goes into the
bias, otherwise the conv is followed by `add %conv, %map` (f32[1,Cout,OH,OW], broadcast over the
batch), which `fuse` takes into the conv's epilogue.
"""

from __future__ import annotations

import numpy as np

from fxforge import ops
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.passes.channels import ChannelAnalysis, analyze


class _Builder:
    def __init__(self, graph: Graph, analysis: ChannelAnalysis):
        self.graph = graph
        self.a = analysis
        self.names = NameGenerator(graph.value_names())
        self.nodes: list[Node] = []
        self.mapping: dict[str, Value] = {}
        self.bias_maps = 0

    def keep(self, v: Value) -> np.ndarray | None:
        removed = self.a.removable.get(v.name)
        if removed is None:
            return None
        return np.setdiff1d(np.arange(v.type.shape[1]), removed)

    def const(self, array: np.ndarray, like: Value) -> Value:
        from fxforge import dtypes

        array = np.ascontiguousarray(array.astype(dtypes.to_numpy(like.type.dtype)))
        provenance = self.graph.producers[like.name].provenance if like.name in \
            self.graph.producers else Provenance()
        out = Value(self.names.fresh("c"), TensorType(array.shape, like.type.dtype))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": ConstData(array)}),
                               provenance))
        return out

    def emit(self, node: Node, inputs: list[Value], attrs: dict | None = None,
             bias_map: np.ndarray | None = None) -> None:
        """Rebuild `node`; with a `bias_map`, the node gets a fresh name and an `add` of the map
        takes over its result name."""
        attrs = dict(node.attrs) if attrs is None else attrs
        names = [v.name for v in node.outputs]
        if bias_map is not None:
            names = [self.names.fresh(node.output.name + "_")]
        new = ops.build_node(node.op, inputs, attrs, names, node.provenance)
        if bias_map is not None:
            self.nodes.append(new)
            added = self.const(bias_map[None], node.inputs[1])
            new = ops.build_node("add", [new.output, added], {}, [node.output.name],
                                 node.provenance)
            self.bias_maps += 1
        for old, v in zip(node.outputs, new.outputs):
            keep = self.keep(old)
            expected = old.type.shape[1] if keep is None else len(keep)
            assert v.type.ndim < 2 or v.type.shape[1] == expected, (node.describe(), v.type)
            self.mapping[old.name] = v
        self.nodes.append(new)


def padded_contribution(node: Node, w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """[Cout, OH, OW]: what input channels holding the constants `k` everywhere (and zero in the
    padding) add to the output of conv2d `node` (groups 1) through weight columns `w`, in float64.
    """
    taps = np.einsum("ochw,c->ohw", w, k)  # per output channel, per kernel tap
    valid = []  # valid[axis][o, t]: output position o reads tap t inside the input
    for axis in (0, 1):
        size, out = node.inputs[0].type.shape[2 + axis], node.output.type.shape[2 + axis]
        stride, pad, dil = (node.attrs[a][axis] for a in ("stride", "padding", "dilation"))
        pos = (np.arange(out)[:, None] * stride - pad + np.arange(w.shape[2 + axis])[None] * dil)
        valid.append(((pos >= 0) & (pos < size)).astype(np.float64))
    return np.einsum("yh,ohw,xw->oyx", valid[0], taps, valid[1])


def _weighted(b: _Builder, node: Node, inputs: list[Value]
              ) -> tuple[list[Value], dict, np.ndarray | None]:
    """conv2d (groups 1 or depthwise) / linear: slice rows and columns, absorb constants; a
    per-position bias map when a zero-padded conv absorbs a nonzero constant."""
    x, out = node.inputs[0], node.output
    w = b.graph.constant(node.inputs[1]).astype(np.float64)
    bias = (b.graph.constant(node.inputs[2]).astype(np.float64) if len(node.inputs) == 3
            else np.zeros(w.shape[0]))
    keep_out, keep_in = b.keep(out), b.keep(x)
    rows = np.arange(w.shape[0]) if keep_out is None else keep_out
    groups = node.attrs["groups"] if node.op == "conv2d" else 1
    if groups > 1 and not groups == x.type.shape[1] == w.shape[0]:
        # a grouped conv that is not depthwise: the analysis blocks its channels, so nothing of
        # it is removed (and its groups must stay as they are)
        return list(inputs), dict(node.attrs), None
    depthwise = groups > 1
    bias_map = None
    if depthwise:
        w, bias = w[rows], bias[rows]
    else:
        if keep_in is not None:
            removed = b.a.removable[x.name]
            k = b.a.consts[x.name][removed]
            if node.op == "conv2d" and any(node.attrs["padding"]) and np.any(k):
                contribution = padded_contribution(node, w[:, removed], k)
                uniform = contribution[:, :1, :1]
                if np.allclose(contribution, uniform, rtol=1e-12, atol=0):
                    bias = bias + uniform[:, 0, 0]
                else:
                    bias_map = contribution[rows]
            else:  # exact: zero for zero channels, and nothing varies without padding
                taps = w[:, removed].reshape(w.shape[0], len(removed), -1).sum(axis=2)
                bias = bias + taps @ k
            w = w[:, keep_in]
        w, bias = w[rows], bias[rows]
    new_inputs = [inputs[0], b.const(w, node.inputs[1])]
    if len(node.inputs) == 3 or np.any(bias):
        new_inputs.append(b.const(bias, node.inputs[2] if len(node.inputs) == 3
                                  else node.inputs[1]))
    attrs = dict(node.attrs)
    if depthwise:
        attrs["groups"] = len(rows)
    return new_inputs, attrs, bias_map


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
    attrs, bias_map = dict(node.attrs), None
    if node.op in ("conv2d", "linear"):
        inputs, attrs, bias_map = _weighted(b, node, inputs)
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
    b.emit(node, inputs, attrs, bias_map)


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
    from fxforge.passes.dce import dce

    result, _ = dce(Graph(graph.inputs, tuple(b.nodes), outputs, graph.dims))
    stats = {"channels-removed": removed_total, "layers": layers}
    if b.bias_maps:
        stats["bias-maps"] = b.bias_maps
    return result, stats
