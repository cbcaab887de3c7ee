"""Horizontal fusion, the first step of `fuse`: sibling `linear` / `conv2d` layers that read the
same input become one layer with their output channels concatenated, followed by a `split`.

Why: siblings read the same activation. One wider GEMM (or implicit-GEMM conv) reads it once,
launches once and fills the machine better than several narrow ones: the Q, K and V projections
of attention, the first convs of an ensemble of CNNs run on one image, the branches of an
inception block.

Siblings merge when they have
- the same input value and input dtypes, constant weights, and all a constant bias or none;
- for conv2d: the same kernel size, stride, padding and dilation, and groups == 1 (a grouped
  conv ties each block of output channels to a block of input channels; concatenated weights
  would mix them up);
- the same *unary epilogue chain*: the run of one-operand ops an epilogue takes (relu, clamp,
  gelu, ...) that reads the layer's result as its only reader, then that op's result, and so on,
  with equal attributes. The chain may be empty.

Epilogues. Siblings with the same chain merge *with* it: the merged layer is followed by one copy
of the chain and then the split, so the epilogue rules that run next make one fused_conv2d /
fused_linear with the chain applied once to all channels, and each split result is what its
sibling's chain computed (an elementwise op commutes with the split; a backend may sum the wider
layer's products in another order, within float tolerance). Merging siblings whose
chains differ would leave each chain as a separate elementwise kernel after the split, an extra
read and write of every output that costs more than reading the shared input once saves; they
are not merged (siblings with the same chain among them still are). A layer whose chain ends in
an op an epilogue takes with a second operand (a residual add, a per-channel scale) is not merged
at all: it fuses vertically, and the operand would not concatenate.

The merged nodes take the place of the first sibling; the split's results keep the names of the
values they replace (the last op of each chain, or the layer), so the rest of the graph is
untouched. The stats count merges per layer op, and list one note per merge for the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

import numpy as np

from fxforge import ops
from fxforge.ir import ConstData, Graph, NameGenerator, Node, Provenance, Value

SPLIT_DIM = {"linear": -1, "conv2d": 1}  # the output-channel dim of each op that merges


def _same_type(a: Value, b: Value) -> bool:
    return (a.type.shape, a.type.dtype) == (b.type.shape, b.type.dtype)


def _chain(graph: Graph, node: Node, unary: Collection[str], binary: Collection[str]
           ) -> tuple[Node, ...] | None:
    """The unary epilogue chain after `node` (see the module doc), or None when the chain ends
    where an op with a second operand would join the epilogue."""
    outputs = {v.name for v in graph.outputs}
    chain: list[Node] = []
    v = node.output
    while True:
        users = graph.users.get(v.name, ())
        if len(users) != 1 or v.name in outputs:
            return tuple(chain)
        user = users[0]
        if user.op in binary:
            return None
        if (user.op not in unary or len(user.inputs) != 1 or len(user.outputs) != 1
                or not _same_type(user.output, v)):
            return tuple(chain)
        chain.append(user)
        v = user.output


def _key(graph: Graph, node: Node, chain: tuple[Node, ...]) -> tuple | None:
    """What siblings must share to merge, or None when `node` cannot merge."""
    if any(graph.constant(v) is None for v in node.inputs[1:]):
        return None
    if node.op == "conv2d" and node.attrs["groups"] != 1:
        return None
    kernel = node.inputs[1].type.shape[1:]  # linear: in-features; conv2d: Cin, kh, kw
    return (node.op, node.inputs[0].name, len(node.inputs), tuple(v.type.dtype for v in
            node.inputs), kernel, node.attrs, tuple((n.op, n.attrs) for n in chain))


def common_module(paths: Sequence[str]) -> str:
    """The longest common dotted prefix of module paths (`attn` for attn.q, attn.k, attn.v)."""
    parts = [p.split(".") for p in paths]
    common = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return ".".join(common)


def _provenance(nodes: Sequence[Node]) -> Provenance:
    return Provenance(common_module([n.provenance.module for n in nodes]),
                      nodes[0].provenance.source)


def _merged(group: list[tuple[Node, tuple[Node, ...]]], graph: Graph, names: NameGenerator
            ) -> tuple[list[Node], str]:
    """The nodes that replace a group of (layer, chain) siblings, and a note for the report."""
    layers = [layer for layer, _ in group]
    first, chain = group[0]
    provenance = _provenance(layers)
    consts = []
    for i in range(1, len(first.inputs)):  # weights, then biases
        array = np.concatenate([graph.constant(n.inputs[i]) for n in layers], axis=0)
        consts.append(ops.build_node("const", [], {"value": ConstData(array)}, [names.fresh("c")],
                                     provenance))
    layer = ops.build_node(first.op, [first.inputs[0], *(c.output for c in consts)],
                           dict(first.attrs), [names.fresh("merged")], provenance)
    nodes = [*consts, layer]
    for k, step in enumerate(chain):
        node = ops.build_node(step.op, [nodes[-1].output], dict(step.attrs),
                              [names.fresh("merged")], _provenance([c[k] for _, c in group]))
        nodes.append(node)
    ends = [c[-1].output if c else n.output for n, c in group]
    dim = SPLIT_DIM[first.op]
    sizes = tuple(v.type.shape[dim] for v in ends)
    nodes.append(ops.build_node("split", [nodes[-1].output], {"sizes": sizes, "dim": dim},
                                [v.name for v in ends], provenance))
    steps = "".join(f" + {n.op}" for n in chain)
    note = (f"{len(layers)} {first.op}{steps} merged into one ({sum(sizes)} output channels): "
            + ", ".join(n.provenance.module or f"%{n.output.name}" for n in layers))
    return nodes, note


def merge_siblings(graph: Graph, unary: Collection[str], binary: Collection[str]
                   ) -> tuple[Graph, dict[str, int], list[str]]:
    """Merge sibling linears and conv2ds (see the module doc). `unary` / `binary` are the ops an
    epilogue takes with one / two operands. Returns the graph, merges per op and the notes."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    chains: dict[int, tuple[Node, ...]] = {}
    for i, node in enumerate(graph.nodes):
        if node.op not in SPLIT_DIM:
            continue
        chain = _chain(graph, node, unary, binary)
        key = None if chain is None else _key(graph, node, chain)
        if key is not None:
            groups[key].append(i)
            chains[i] = chain
    leaders = {g[0]: g for g in groups.values() if len(g) >= 2}
    counts = {op: 0 for op in SPLIT_DIM}
    if not leaders:
        return graph, counts, []
    replaced = {id(graph.nodes[j]) for g in leaders.values() for j in g[1:]}
    replaced |= {id(n) for g in leaders.values() for j in g for n in chains[j]}
    names = NameGenerator(graph.value_names())
    nodes: list[Node] = []
    notes: list[str] = []
    for i, node in enumerate(graph.nodes):
        if i in leaders:
            merged, note = _merged([(graph.nodes[j], chains[j]) for j in leaders[i]], graph,
                                   names)
            nodes += merged
            notes.append(note)
            counts[node.op] += 1
        elif id(node) not in replaced:
            nodes.append(node)
    return Graph(graph.inputs, tuple(nodes), graph.outputs, graph.dims), counts, notes
