"""`to-fp16`: compute an f32 graph in f16, as eager `model.half()` would, behind an f32 interface.

The pass of the `cuda-fp16` target. Callers keep passing and getting float32 (the compiled
model has the user's signature), so each f32 graph input gets a `cast` to f16 and each f32 graph
output a `cast` back; in between, every f32 constant (weights, buffers, 0-d scalars) becomes f16,
as `.half()` makes parameters and buffers, and every node is rebuilt with `build_node`, so its
types are inferred afresh from f16 inputs rather than patched. Attributes that name the dtype
f32 (cast, full, arange, and cast steps inside fused epilogues and elementwise chains) name f16:
the target computes in f16 throughout, where eager would keep an explicit `.float()` in f32.

Left alone: integer and bool values (they re-infer to themselves), f64 values, and int8/int4
quantized graphs, whose numerics fix float32 epilogues (the pass returns them unchanged).
An opaque `torch_op` has no type inference: it keeps its f32 types behind casts, as does any
node whose op refuses f16 (named in the stats under `kept_f32`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fxforge import ops, quant_ops
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.shapes import OpTypeError

_QUANT_OPS = frozenset(d.name for d in quant_ops.declarations())
_STEP_ATTRS = ("epilogue", "steps")  # the fused ops' lists of elementwise steps


def _half(dtype: Any) -> Any:
    return "f16" if dtype == "f32" else dtype


def _step_half(step: Any) -> Any:
    """A fused step whose own attributes name f32 (a cast step) names f16 instead."""
    if not isinstance(step, Mapping) or not isinstance(step.get("attrs"), Mapping):
        return step
    attrs = step["attrs"]
    if attrs.get("dtype") != "f32":
        return step
    return {**step, "attrs": {**attrs, "dtype": "f16"}}


def half_attrs(op: str, attrs: Attrs) -> Attrs:
    """`attrs` with every dtype-kind attribute (and fused cast step) f32 -> f16."""
    specs = ops.get(op).attrs
    changed = {}
    for name, value in attrs.items():
        if specs[name].kind == "dtype" and value == "f32":
            changed[name] = "f16"
        elif name in _STEP_ATTRS and op.startswith("fused_") and isinstance(value, tuple):
            steps = tuple(_step_half(s) for s in value)
            if steps != value:
                changed[name] = steps
    return attrs.replace(**changed) if changed else attrs


def _is_quantized(graph: Graph) -> bool:
    return any(node.op in _QUANT_OPS or any(v.type.quant is not None for v in node.outputs)
               for node in graph.nodes) or any(v.type.quant is not None for v in graph.inputs)


class _Converter:
    def __init__(self, graph: Graph):
        self.names = NameGenerator(graph.value_names())
        self.env: dict[str, Value] = {}  # old value name -> its value in the new graph
        self.nodes: list[Node] = []
        self.stats = {"cast_inputs": 0, "cast_outputs": 0, "constants_f16": 0}
        self.kept: list[str] = []

    def cast(self, v: Value, dtype: str, name: str, provenance: Provenance) -> Value:
        node = ops.build_node("cast", [v], {"dtype": dtype}, [self.names.claim(name)],
                              provenance)
        self.nodes.append(node)
        return node.output

    def const(self, node: Node) -> None:
        array = node.attrs["value"].array
        if array is None or array.dtype != np.float32:
            self.nodes.append(node)
            return
        half = array.astype(np.float16)
        out = Value(node.output.name, TensorType(half.shape, "f16"))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": ConstData(half)}),
                               node.provenance))
        self.env[node.output.name] = out
        self.stats["constants_f16"] += 1

    def node(self, node: Node) -> None:
        inputs = tuple(self.env.get(v.name, v) for v in node.inputs)
        if ops.get(node.op).infer is None:  # opaque: its types were given, not inferred
            if inputs == node.inputs and all(v.type.dtype != "f32" for v in node.outputs):
                self.nodes.append(node)
            else:
                self.kept.append(f"{node.describe()}: an opaque op has no f16 type inference")
                self.keep_f32(node, inputs)
            return
        attrs = half_attrs(node.op, node.attrs)
        if inputs == node.inputs and attrs == node.attrs:
            self.nodes.append(node)  # nothing float reaches it: the very same node
            return
        try:
            new = ops.build_node(node.op, inputs, attrs, [v.name for v in node.outputs],
                                 node.provenance)
        except OpTypeError as e:
            self.kept.append(f"{node.describe()}: {e}")
            self.keep_f32(node, inputs)
            return
        self.nodes.append(new)
        self.env.update({old.name: v for old, v in zip(node.outputs, new.outputs)})

    def keep_f32(self, node: Node, inputs: tuple[Value, ...]) -> None:
        """Run `node` on its original types: f16 inputs cast back, f32 results cast to f16."""
        args = tuple(v if v.type.dtype == old.type.dtype
                     else self.cast(v, old.type.dtype, f"{old.name}_f32", node.provenance)
                     for v, old in zip(inputs, node.inputs))
        self.nodes.append(Node(node.op, args, node.outputs, node.attrs, node.provenance))
        for v in node.outputs:
            if v.type.dtype == "f32":
                self.env[v.name] = self.cast(v, "f16", f"{v.name}_f16", node.provenance)


def to_fp16(graph: Graph) -> tuple[Graph, dict]:
    stats: dict = {"cast_inputs": 0, "cast_outputs": 0, "constants_f16": 0}
    if _is_quantized(graph):
        return graph, stats
    conv = _Converter(graph)
    read = {v.name for node in graph.nodes for v in node.inputs}
    for v in graph.inputs:
        if v.type.dtype == "f32" and v.name in read:
            conv.env[v.name] = conv.cast(v, "f16", f"{v.name}_f16", Provenance())
            conv.stats["cast_inputs"] += 1
    for node in graph.nodes:
        if node.op == "const":
            conv.const(node)
        else:
            conv.node(node)
    inputs = {v.name for v in graph.inputs}
    back: dict[str, Value] = {}
    outputs = []
    for v in graph.outputs:
        new = v if v.name in inputs else conv.env.get(v.name, v)
        if new.type.dtype != v.type.dtype:
            if v.name not in back:
                producer = graph.producers.get(v.name)
                where = producer.provenance if producer else Provenance()
                back[v.name] = conv.cast(new, v.type.dtype, f"{v.name}_f32", where)
                conv.stats["cast_outputs"] += 1
            new = back[v.name]
        outputs.append(new)
    result = dict(conv.stats)
    if conv.kept:
        result["kept_f32"] = conv.kept
    return Graph(graph.inputs, tuple(conv.nodes), tuple(outputs), graph.dims), result
