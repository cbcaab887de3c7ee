"""`quantize-int4`: float linear layers with constant weights become weight-only `linear_int4`.

Why weight-only: at small batch a linear layer is bound by reading its weights, and int4 reads
an eighth of float32's bytes; activations stay float32, so no calibration is needed. Weights are
quantized group-wise and symmetric (`fxforge.quant_math.quantize_int4_groupwise`); the group
is the largest of GROUP_SIZES dividing K. A `fused_linear`'s epilogue moves into a
`fused_elementwise` after the int4 layer (linear_int4 has no epilogue), which the backends fuse
as they fuse any chain. Kept float, and listed with the reason: convolutions (int4 is for
linear layers here), non-constant weights, K with no even group size dividing it, and layers
named in `keep_float`.
"""

from __future__ import annotations

from collections.abc import Iterable

from fxforge import ops, quant_math
from fxforge.ir import Graph, Node
from fxforge.passes.rewrite import Rewriter

GROUP_SIZES = (128, 64, 32, 16)


def _group_size(k: int) -> int | None:
    return next((g for g in GROUP_SIZES if k % g == 0), None)


def _epilogue_as_chain(epilogue: tuple) -> tuple[list[int], tuple[dict, ...]]:
    """Epilogue steps (operands are node input indices) as fused_elementwise steps over
    (accumulator, operands...): the node input indices used, in order, and the steps."""
    order = list(dict.fromkeys(s["operand"] for s in epilogue if "operand" in s))
    position = {i: 1 + k for k, i in enumerate(order)}
    n = 1 + len(order)
    steps = []
    for k, step in enumerate(epilogue):
        acc = 0 if k == 0 else n + k - 1
        if "operand" in step:
            other = position[step["operand"]]
            args = (acc, other) if step["side"] == "right" else (other, acc)
        else:
            args = (acc,)
        new = {"op": step["op"], "args": args}
        if step.get("attrs"):
            new["attrs"] = step["attrs"]
        steps.append(new)
    return order, tuple(steps)


def quantize_int4(graph: Graph, keep_float: Iterable[str] = ()) -> tuple[Graph, dict]:
    keep = frozenset(keep_float)
    rw = Rewriter(graph)
    layers, kept = [], []
    for node in graph.nodes:
        if node.op not in ("linear", "fused_linear"):
            rw.add(node)
            continue
        why = _reason_float(graph, node, keep)
        if why is not None:
            kept.append(f"{node.provenance.module or node.outputs[0].name}: {why}")
            rw.add(node)
            continue
        has_bias = len(node.inputs) == 3 if node.op == "linear" else node.attrs["has_bias"]
        epilogue = () if node.op == "linear" else node.attrs["epilogue"]
        w = graph.constant(node.inputs[1])
        group = _group_size(w.shape[1])
        packed, scales = quant_math.quantize_int4_groupwise(w, group)
        where = node.provenance
        inputs = [node.inputs[0], rw.const(packed, where, prefix="w4_"),
                  rw.const(scales, where, dtype="f32", prefix="s4_")]
        if has_bias:
            inputs.append(node.inputs[2])
        attrs = {"group_size": group, "has_bias": has_bias}
        if not epilogue:
            out = node.outputs[0]
            rw.add(ops.build_node("linear_int4", inputs, attrs, [out.name], where))
        else:
            base = rw.emit("linear_int4", inputs, attrs, where).outputs[0]
            order, steps = _epilogue_as_chain(epilogue)
            chain_inputs = [base, *(node.inputs[i] for i in order)]
            rw.add(ops.build_node("fused_elementwise", chain_inputs, {"steps": steps},
                          [node.outputs[0].name], where))
        layers.append(node.provenance.module or node.outputs[0].name)
    new = Graph(graph.inputs, tuple(rw.nodes), graph.outputs, graph.dims)
    return new, {"quantized": len(layers), "layers": layers, "kept_float": kept}


def _reason_float(graph: Graph, node: Node, keep: frozenset[str]) -> str | None:
    if node.outputs[0].name in keep or (node.provenance.module and node.provenance.module in keep):
        return "kept in float on request (keep_float)"
    w = graph.constant(node.inputs[1])
    if w is None:
        return "weight is not a constant"
    if node.inputs[0].type.dtype != "f32" or node.inputs[1].type.dtype != "f32":
        return "not float32"
    if _group_size(w.shape[1]) is None:
        return f"K = {w.shape[1]} has no group size among {GROUP_SIZES} dividing it"
    return None
