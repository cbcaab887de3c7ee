"""`layout-nhwc`: store 4-D activations channels-last, converting once at the graph's edges.

Why: the Triton conv kernels read NHWC (a pixel's channels are contiguous, so the implicit-GEMM
K loop and the depthwise taps load whole channel runs). Converting before every conv would cost
a copy per layer; instead every 4-D graph input gets one `memory_format[layout=nhwc]` and every
4-D graph output one `memory_format[layout=nchw]`. In between, values stay channels-last: the
conv kernels write NHWC, the elementwise kernels keep their input's storage order, and torch's
fallback ops preserve channels-last. The IR's shapes stay logical NCHW, so no other op changes
and the numpy reference (for which `memory_format` is the identity) checks the result as before.

A graph without a convolution is returned unchanged.
"""

from __future__ import annotations

import dataclasses

from fxforge import ops
from fxforge.ir import Graph, NameGenerator, Node, Provenance, Value

CONVS = frozenset(("conv2d", "fused_conv2d", "qconv2d"))


def layout_nhwc(graph: Graph) -> tuple[Graph, dict[str, int]]:
    stats = {"inputs_converted": 0, "outputs_converted": 0}
    if not any(n.op in CONVS for n in graph.nodes):
        return graph, stats
    names = NameGenerator(graph.value_names())
    edge = Provenance(source="layout-nhwc")
    head: list[Node] = []
    renamed: dict[str, Value] = {}
    for v in graph.inputs:
        if len(v.type.shape) == 4:
            node = ops.build_node("memory_format", [v], {"layout": "nhwc"},
                                  [names.fresh("nhwc")], edge)
            head.append(node)
            renamed[v.name] = node.output
    stats["inputs_converted"] = len(head)
    body = [dataclasses.replace(n, inputs=tuple(renamed.get(v.name, v) for v in n.inputs))
            for n in graph.nodes]
    outputs: list[Value] = []
    tail: list[Node] = []
    converted: dict[str, Value] = {}
    for v in graph.outputs:
        v = renamed.get(v.name, v)
        if len(v.type.shape) == 4:
            if v.name not in converted:
                node = ops.build_node("memory_format", [v], {"layout": "nchw"},
                                      [names.fresh("nchw")], edge)
                tail.append(node)
                converted[v.name] = node.output
            v = converted[v.name]
        outputs.append(v)
    stats["outputs_converted"] = len(tail)
    return Graph(graph.inputs, (*head, *body, *tail), tuple(outputs), graph.dims), stats
