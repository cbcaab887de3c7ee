"""The reduction strategies of `fxforge.debug.reducer`, in the order a round runs them, and
the graph surgery they share. The module docstring of `reducer` says why each exists."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fxforge import ops
from fxforge.execute import run_reference
from fxforge.ir import Attrs, ConstData, Graph, Node, Provenance, TensorType, Value
from fxforge.passes.dce import dce
from fxforge.passes.rewrite import substitute

if TYPE_CHECKING:
    from fxforge.debug.reducer import _Reducer

Samples = list[list[np.ndarray]]  # samples[i][j]: sample i's array for graph.inputs[j]
Candidate = tuple[Graph, Samples]
Maker = Callable[[], Candidate]

# A recorded result with at most this many elements, alike in every sample, is cut into a
# constant rather than an input: small enough to read in the IR text.
CONST_CUT_LIMIT = 64


def count_nodes(graph: Graph) -> int:
    """The size the reducer minimizes: constants are data, not computation."""
    return sum(node.op != "const" for node in graph.nodes)


class _NotApplicable(Exception):
    """A candidate that does not exist (a constant for a value that differs between samples)."""


def _record(graph: Graph, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of one run of the reference. A graph it cannot run to the end (the bug may be
    the reference's) still gives the values before the failing node, and only those can be cut."""
    seen: dict[str, np.ndarray] = {}
    try:
        run_reference(graph, sample, observe=seen.__setitem__)
    except Exception:  # noqa: BLE001 - what was observed before the failure is still right
        pass
    return seen


# ---------------------------------------------------------------------------------------------
# Graph surgery shared by the strategies


def _rebuild(graph: Graph, subst: dict[str, Value], *, drop: Iterable[str] = (),
             inputs: Sequence[Value] | None = None, first: Sequence[Node] = (),
             outputs: Sequence[Value] | None = None) -> Graph:
    """`graph` with uses renamed by `subst`, the nodes defining `drop` removed, `first` nodes
    (constants) put first, and its dead code removed."""
    dropped = set(drop)
    nodes = list(first)
    nodes += [substitute(node, subst) for node in graph.nodes
              if not any(v.name in dropped for v in node.outputs)]
    outs = graph.outputs if outputs is None else outputs
    outs = tuple(subst.get(v.name, v) for v in outs)
    new = Graph(graph.inputs if inputs is None else tuple(inputs), tuple(nodes), outs)
    return dce(new)[0]


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality: NaN equals NaN, and -0.0 is not 0.0, as a constant's digest sees it."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _used(graph: Graph, node: Node) -> list[Value]:
    returned = {v.name for v in graph.outputs}
    return [v for v in node.outputs if v.name in graph.users or v.name in returned]


def _node_index(graph: Graph) -> dict[str, int]:
    return {v.name: i for i, node in enumerate(graph.nodes) for v in node.outputs}


# ---------------------------------------------------------------------------------------------
# 1. outputs


def _reduce_outputs(r: _Reducer) -> None:
    if len(dce(r.graph)[0].nodes) < len(r.graph.nodes):
        r.attempt("dead-code elimination", lambda: (dce(r.graph)[0], r.samples))
    _drop_outputs(r)
    while r.bisect(_return_options(r.graph, r.samples)):
        pass


def _drop_outputs(r: _Reducer) -> None:
    """ddmin over the output list, removing complements of ever smaller chunks."""
    parts = 2
    while len(r.graph.outputs) > 1:
        outs = r.graph.outputs
        size = -(-len(outs) // parts)
        for start in range(0, len(outs), size):
            keep = outs[:start] + outs[start + size:]
            what = f"drop {len(outs) - len(keep)} of {len(outs)} outputs"
            if r.attempt(what, lambda keep=keep: (_rebuild(r.graph, {}, outputs=keep),
                                                  r.samples)):
                parts = max(parts - 1, 2)
                break
        else:
            if size == 1:
                return
            parts = min(parts * 2, len(outs))


def _return_options(graph: Graph, samples: Samples) -> list[tuple[str, list[Maker]]]:
    """Graphs that return one node's results instead, fewest nodes first (those are likeliest
    to lose the failure, so `bisect` finds the smallest that keeps it)."""
    index = _node_index(graph)
    ancestors: list[int] = []  # bit set of the non-const nodes each node needs, itself included
    for i, node in enumerate(graph.nodes):
        bits = (1 << i) if node.op != "const" else 0
        for v in node.inputs:
            if v.name in index:
                bits |= ancestors[index[v.name]]
        ancestors.append(bits)
    live = dce(graph)[0]
    live_names = {v.name for node in live.nodes for v in node.outputs}
    current = count_nodes(live)
    ranked = sorted((ancestors[i].bit_count(), i) for i, node in enumerate(graph.nodes)
                    if node.op != "const" and node.outputs[0].name in live_names)
    options = []
    for size, i in ranked:
        node = graph.nodes[i]
        if size >= current or node.outputs == graph.outputs:
            continue
        make = lambda node=node: (_rebuild(graph, {}, outputs=node.outputs), samples)
        options.append((f"return {node.outputs[0]} ({node.op}) instead", [make]))
    return options


# ---------------------------------------------------------------------------------------------
# 2. cuts


def _cut_gains(graph: Graph) -> dict[int, int]:
    """For every live non-const node, how many non-const nodes die when its results become
    inputs: itself and every node it post-dominates (all whose paths to an output pass through
    it), i.e. its subtree in the post-dominator tree, built in one reverse pass (a DAG in
    topological order, so a node's users are all done before it)."""
    n = len(graph.nodes)
    sink = n
    index = _node_index(graph)
    users: list[set[int]] = [set() for _ in range(n)]
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v.name in index:
                users[index[v.name]].add(i)
    returned = {index[v.name] for v in graph.outputs if v.name in index}
    parent, depth, live = [sink] * (n + 1), [0] * (n + 1), [False] * n + [True]
    for i in reversed(range(n)):
        succ = sorted(u for u in users[i] if live[u]) + ([sink] if i in returned else [])
        if not succ:
            continue
        p = succ[0]
        for u in succ[1:]:
            p = _meet(p, u, parent, depth)
        parent[i], depth[i], live[i] = p, depth[p] + 1, True
    size = [0] * (n + 1)
    for i in range(n):  # a node's post-dominator comes after it: children are done first
        if live[i]:
            size[i] += graph.nodes[i].op != "const"
            size[parent[i]] += size[i]
    return {i: size[i] for i in range(n) if live[i] and graph.nodes[i].op != "const"}


def _meet(a: int, b: int, parent: list[int], depth: list[int]) -> int:
    while a != b:
        if depth[a] >= depth[b]:
            a = parent[a]
        else:
            b = parent[b]
    return a


def _cut_makers(r: _Reducer, node: Node) -> list[Maker]:
    """Cut `node` into a constant (where its results allow) or else into new inputs."""
    return [lambda: _cut(r, node, as_const=True), lambda: _cut(r, node, as_const=False)]


def _cut(r: _Reducer, node: Node, as_const: bool) -> Candidate:
    graph, records, names = r.graph, r.recorded(), r.names()
    subst: dict[str, Value] = {}
    consts: list[Node] = []
    new_inputs: list[Value] = []
    columns: list[list[np.ndarray]] = []
    provenance = Provenance(node.provenance.module, "reduce.cut")
    for v in _used(graph, node):
        arrays = [record[v.name] for record in records]  # KeyError: not recorded, no candidate
        w = Value(names.fresh("cut"), v.type)
        subst[v.name] = w
        if as_const:
            if not _const_worthy(v, arrays):
                raise _NotApplicable
            consts.append(Node("const", (), (w,), Attrs({"value": ConstData(arrays[0])}),
                               provenance))
        else:
            new_inputs.append(w)
            columns.append([np.array(a, copy=True) for a in arrays])
    new = _rebuild(graph, subst, drop=[node.outputs[0].name], first=consts,
                   inputs=graph.inputs + tuple(new_inputs))
    samples = [row + [column[k] for column in columns] for k, row in enumerate(r.samples)]
    return new, samples


def _const_worthy(v: Value, arrays: list[np.ndarray]) -> bool:
    return (v.type.quant is None and bool(arrays) and arrays[0].size <= CONST_CUT_LIMIT
            and all(_same_array(a, arrays[0]) for a in arrays[1:]))


def _cut_options(r: _Reducer) -> list[tuple[str, list[Maker]]]:
    graph = r.graph
    gains = _cut_gains(graph)
    order = sorted(gains, key=lambda i: (-gains[i], -i))
    return [(f"cut {graph.nodes[i].outputs[0]} ({graph.nodes[i].op})",
             _cut_makers(r, graph.nodes[i])) for i in order]


def _cut_biggest(r: _Reducer) -> None:
    while r.bisect(_cut_options(r)):
        pass


# ---------------------------------------------------------------------------------------------
# 3. single nodes


def _remove_nodes(r: _Reducer) -> None:
    """Each node from the last: cut it, or bypass it with a same-typed input."""
    for name in [n.outputs[0].name for n in reversed(r.graph.nodes) if n.op != "const"]:
        node = r.graph.producers.get(name)
        if node is None:
            continue  # gone with an earlier reduction
        if not _used(r.graph, node):
            continue
        if r.attempt(f"cut {node.outputs[0]} ({node.op})", *_cut_makers(r, node)):
            continue
        for u in dict.fromkeys(node.inputs):
            if len(node.outputs) == 1 and u.type == node.output.type:
                make = lambda node=node, u=u: (
                    _rebuild(r.graph, {node.output.name: u}, drop=[node.output.name]), r.samples)
                if r.attempt(f"bypass {node.output} ({node.op}) with {u}", make):
                    break


# ---------------------------------------------------------------------------------------------
# 4. unused inputs


def _remove_unused_inputs(r: _Reducer) -> None:
    read = {v.name for node in r.graph.nodes for v in node.inputs}
    read |= {v.name for v in r.graph.outputs}
    unused = [v.name for v in r.graph.inputs if v.name not in read]
    if not unused:
        return
    if r.attempt(_inputs_step(unused), lambda: _without_inputs(r, set(unused))):
        return
    for name in unused if len(unused) > 1 else ():
        r.attempt(_inputs_step([name]), lambda name=name: _without_inputs(r, {name}))


def _inputs_step(names: list[str]) -> str:
    return "remove unused input" + "s" * (len(names) > 1) + " " + ", ".join(f"%{n}" for n in names)


def _without_inputs(r: _Reducer, names: set[str]) -> Candidate:
    keep = [j for j, v in enumerate(r.graph.inputs) if v.name not in names]
    graph = Graph(tuple(r.graph.inputs[j] for j in keep), r.graph.nodes, r.graph.outputs)
    return graph, [[row[j] for j in keep] for row in r.samples]


# ---------------------------------------------------------------------------------------------
# 5. dims


ShrinkSpec = tuple[int, int, int, tuple[str, ...]]  # dim, old size, new size, input names


def _shrink_dims(r: _Reducer) -> None:
    failed: set[ShrinkSpec] = set()
    while True:
        for spec in _shrink_specs(r.graph):
            if spec in failed:
                continue
            dim, old, new, names = spec
            what = f"shrink dim {dim} of {', '.join('%' + n for n in names)} from {old} to {new}"
            if r.attempt(what, lambda spec=spec: _shrunk(r.graph, r.samples, spec)):
                break
            failed.add(spec)
        else:
            return


def _shrink_specs(graph: Graph) -> list[ShrinkSpec]:
    """Inputs that share a dim's size together first (a batch), then each input alone; each
    dim to 1, or else halved (a reshape may take half where it cannot take one)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for v in graph.inputs:
        for d, s in enumerate(v.type.shape):
            if s > 1:
                groups.setdefault((d, s), []).append(v.name)
    together, alone = [], []
    for (d, s), names in sorted(groups.items()):
        for new in dict.fromkeys((1, s // 2)):
            if len(names) > 1:
                together.append((d, s, new, tuple(names)))
            alone += [(d, s, new, (name,)) for name in names]
    return together + alone


def _shrunk(graph: Graph, samples: Samples, spec: ShrinkSpec) -> Candidate:
    dim, _, new, names = spec
    subst: dict[str, Value] = {}
    for v in graph.inputs:
        if v.name in names:
            shape = v.type.shape[:dim] + (new,) + v.type.shape[dim + 1:]
            subst[v.name] = Value(v.name, TensorType(shape, v.type.dtype, v.type.quant))
    nodes = [_retyped(node, subst) for node in graph.nodes]
    inputs = tuple(subst.get(v.name, v) for v in graph.inputs)
    outputs = tuple(subst.get(v.name, v) for v in graph.outputs)
    index = (slice(None),) * dim + (slice(0, new),)
    rows = [[np.ascontiguousarray(x[index]) if v.name in names else x
             for v, x in zip(graph.inputs, row)] for row in samples]
    return Graph(inputs, tuple(nodes), outputs), rows


def _retyped(node: Node, subst: dict[str, Value]) -> Node:
    """`node` over retyped inputs with its types inferred again (recording in `subst` the
    results whose type changed); names, attributes and provenance stay."""
    if not any(v.name in subst for v in node.inputs):
        return node
    inputs = [subst.get(v.name, v) for v in node.inputs]
    built = ops.build_node(node.op, inputs, node.attrs, [v.name for v in node.outputs],
                           node.provenance)
    outputs = []
    for old, v in zip(node.outputs, built.outputs):
        quant = v.type.quant if v.type.quant is not None else old.type.quant
        v = Value(v.name, TensorType(v.type.shape, v.type.dtype, quant))
        if v != old:
            subst[v.name] = v
        outputs.append(v)
    return Node(node.op, tuple(inputs), tuple(outputs), built.attrs, node.provenance)


# ---------------------------------------------------------------------------------------------
# 6. constants


def _simplify_constants(r: _Reducer) -> None:
    for name in [n.output.name for n in r.graph.nodes if n.op == "const"]:
        node = r.graph.producers.get(name)
        if node is None or node.attrs["value"].array is None:
            continue
        try:
            options = _simpler_arrays(node.attrs["value"].array)
        except Exception:  # noqa: BLE001 - a dtype numpy cannot round: nothing simpler to try
            continue
        for label, array in options:
            make = lambda node=node, array=array: (_with_const(r.graph, node, array), r.samples)
            if r.attempt(f"{label} for const {node.output} ({node.output.type})", make):
                break


def _simpler_arrays(array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """zeros < ones < rounded to one decimal: only those before the first `array` equals."""
    options = [("zeros", np.zeros_like(array)), ("ones", np.ones_like(array))]
    if array.dtype.kind in "fc":
        options.append(("values rounded to 1 decimal", np.round(array, 1).astype(array.dtype)))
    for k, (_, simpler) in enumerate(options):
        if _same_array(array, simpler):
            return options[:k]
    return options


def _with_const(graph: Graph, node: Node, array: np.ndarray) -> Graph:
    new = Node("const", (), node.outputs, Attrs({"value": ConstData(array)}), node.provenance)
    return Graph(graph.inputs, tuple(new if n is node else n for n in graph.nodes), graph.outputs)


STRATEGIES: tuple[Callable[[_Reducer], None], ...] = (
    _reduce_outputs,
    _cut_biggest,
    _remove_nodes,
    _remove_unused_inputs,
    _shrink_dims,
    _simplify_constants,
)
