"""Channel dataflow: which channels (axis 1) of which values must be removed together, and which
hold the same constant for every input.

Values joined by ops that keep channels aligned (batch norm, elementwise ops, pooling, depthwise
convs, reshapes that keep axes 0 and 1) share a *space*: removing channel c from one removes it
from all. `cat`, `split` and flatten-into-features join individual *positions* (space, channel)
across spaces. A space is *blocked* when something outside the analysis produces or reads it
(graph inputs and outputs, opaque ops, grouped convs): its shape is fixed.

Sources (conv2d with groups=1, linear on rank-2 inputs) can drop output channels; sinks (the same
ops, reading the space as their input) can drop input channels and absorb a constant channel
exactly: a zero one vanishes, a nonzero one goes into the bias (linear, unpadded conv) or, for a
zero-padded conv, into a per-position bias map (see `remove-pruned-channels`). A channel known to
be constant is assumed finite (x * 0 == 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from fxforge import dtypes
from fxforge.execute import run_reference
from fxforge.ir import Graph, Node, TensorType, Value

UNARY_SAFE = {"relu", "clamp", "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid",
              "neg", "abs", "exp", "sqrt", "rsqrt", "log", "erf", "identity", "dropout", "cast"}
BINARY_SAFE = {"add", "sub", "mul", "div", "maximum", "minimum", "pow"}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent.setdefault(x, x)
        if parent != x:
            parent = self.parent[x] = self.find(parent)
        return parent

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass
class Sink:
    """`node` reads tracked value `value` as its input x and can drop its input channels,
    absorbing any constant ones."""

    node: Node
    value: Value


@dataclass
class ChannelAnalysis:
    graph: Graph
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # per-channel constant or NaN
    spaces: UnionFind = field(default_factory=UnionFind)
    positions: UnionFind = field(default_factory=UnionFind)
    blocked: set[str] = field(default_factory=set)  # value names (resolve with spaces.find)
    sources: list[Node] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    links: list[tuple[str, np.ndarray, str, np.ndarray]] = field(default_factory=list)
    removable: dict[str, np.ndarray] = field(default_factory=dict)  # value -> removed channels

    # --- helpers for the handlers ---

    def tracked(self, v: Value) -> bool:
        return v.name in self.consts

    def track(self, v: Value, const: np.ndarray | None = None) -> None:
        # a symbolic dim 1 (a sequence length) is no channel dim: such a value stays untracked
        if v.type.ndim >= 2 and type(v.type.shape[1]) is int:
            c = v.type.shape[1]
            self.consts[v.name] = np.full(c, np.nan) if const is None else const.astype(float)
            self.spaces.find(v.name)

    def block(self, *values: Value) -> None:
        for v in values:
            if self.tracked(v):
                self.blocked.add(v.name)

    def const_of(self, v: Value) -> np.ndarray | None:
        return self.graph.constant(v)

    def link(self, a: Value, a_channels, b: Value, b_channels) -> None:
        self.links.append((a.name, np.asarray(a_channels), b.name, np.asarray(b_channels)))

    # --- queries for clients (structured pruning); read-only ---

    def members(self) -> dict[str, list[str]]:
        """Space root -> the tracked value names in that space, in graph order."""
        table: dict[str, list[str]] = defaultdict(list)
        for name in self.consts:
            table[self.spaces.find(name)].append(name)
        return dict(table)

    def blocked_spaces(self) -> set[str]:
        """Roots of the spaces whose shape is fixed (see `blocked`)."""
        return {self.spaces.find(n) for n in self.blocked}

    def space_sources(self) -> dict[str, list[Node]]:
        """Space root -> the sources (conv2d groups=1 / linear) whose output is in the space."""
        table: dict[str, list[Node]] = defaultdict(list)
        for node in self.sources:
            table[self.spaces.find(node.output.name)].append(node)
        return dict(table)

    def linked_spaces(self) -> list[tuple[str, str]]:
        """Pairs of space roots joined by a position link (cat, split, flatten)."""
        return [(self.spaces.find(x), self.spaces.find(y)) for x, _, y, _ in self.links]


def channel_vector(array: np.ndarray, out_ndim: int, channels: int) -> np.ndarray:
    """A constant operand broadcast against a rank-`out_ndim` value, as one number per channel
    (NaN for a channel along which the operand is not constant)."""
    a = np.asarray(array, dtype=float)
    a = a.reshape((1,) * (out_ndim - a.ndim) + a.shape)
    rows = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    vec = np.where(np.all(rows == rows[:, :1], axis=1), rows[:, 0], np.nan)
    return np.repeat(vec, channels) if vec.size == 1 else vec


def _conv_consts(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    groups = node.attrs["groups"]
    cout, cin_g = w.shape[:2]
    padded = any(node.attrs["padding"])
    # k[c, j]: the constant of the input channel that tap group w[c, j] reads
    k = np.repeat(np.asarray(x, dtype=float).reshape(groups, cin_g), cout // groups, axis=0)
    taps = w.reshape(cout, cin_g, -1)
    live = np.any(taps != 0, axis=2) & (k != 0)  # terms that contribute (NaN counts as live)
    unknown = np.any(live & (np.isnan(k) | padded), axis=1)
    out = b.astype(float).copy()
    for c in np.flatnonzero(~unknown & live.any(axis=1)):
        for j in np.flatnonzero(live[c]):  # in order, as a running sum, like the scalar rule
            out[c] += k[c, j] * float(taps[c, j].sum())
    out[unknown] = np.nan
    return out


def _apply(node: Node, vectors: list[np.ndarray]) -> np.ndarray:
    """Run an elementwise op on per-channel constants with the numpy reference."""
    n = len(vectors[0])
    ins = tuple(Value(f"a{i}", TensorType((n,), v.type.dtype)) for i, v in enumerate(node.inputs))
    out = Value("r", TensorType((n,), node.output.type.dtype))
    single = Graph(ins, (Node(node.op, ins, (out,), node.attrs),), (out,))
    known = [np.nan_to_num(vec, nan=0.0).astype(dtypes.to_numpy(v.type.dtype))
             for vec, v in zip(vectors, ins)]
    (result,) = run_reference(single, known)
    unknown = np.any([np.isnan(vec) for vec in vectors], axis=0)
    return np.where(unknown, np.nan, result.astype(float))


# --- the per-op rules --------------------------------------------------------------------------


def _conv2d(a: ChannelAnalysis, node: Node) -> None:
    x, out = node.inputs[0], node.output
    w = a.const_of(node.inputs[1])
    b = a.const_of(node.inputs[2]) if len(node.inputs) == 3 else np.zeros(out.type.shape[1])
    groups, cin = node.attrs["groups"], x.type.shape[1]
    if w is None or b is None or not a.tracked(x):
        a.track(out)
        a.block(x, out)
        return
    a.track(out, _conv_consts(node, a.consts[x.name], w, b))
    if groups == 1:
        a.sources.append(node)
        a.sinks.append(Sink(node, x))
    elif groups == cin == out.type.shape[1]:
        a.spaces.union(x.name, out.name)  # depthwise: channel c in, channel c out
    else:
        a.block(x, out)


def _linear(a: ChannelAnalysis, node: Node) -> None:
    x, out = node.inputs[0], node.output
    w = a.const_of(node.inputs[1])
    b = a.const_of(node.inputs[2]) if len(node.inputs) == 3 else np.zeros(out.type.shape[-1])
    if w is None or b is None or x.type.ndim != 2 or not a.tracked(x):
        a.track(out)
        a.block(x, out)
        return
    xc = a.consts[x.name]
    contrib = (w.astype(float) * np.nan_to_num(xc)[None, :]).sum(axis=1)
    unknown = np.any((w != 0) & np.isnan(xc)[None, :], axis=1)
    a.track(out, np.where(unknown, np.nan, b + contrib))
    a.sources.append(node)
    a.sinks.append(Sink(node, x))


def _batch_norm(a: ChannelAnalysis, node: Node) -> None:
    x, out = node.inputs[0], node.output
    params = [a.const_of(v) for v in node.inputs[1:]]
    if any(p is None for p in params) or not a.tracked(x):
        a.track(out)
        a.block(x, out)
        return
    gamma, beta, mean, var = (p.astype(float) for p in params)
    scale = gamma / np.sqrt(var + node.attrs["eps"])
    a.track(out, (a.consts[x.name] - mean) * scale + beta)
    a.spaces.union(x.name, out.name)


def _elementwise(a: ChannelAnalysis, node: Node) -> None:
    out = node.output
    channels = out.type.shape[1]
    vectors, aligned, coupled_elsewhere = [], [], False
    for v in node.inputs:
        array = a.const_of(v)
        if array is not None:
            vectors.append(channel_vector(array, out.type.ndim, channels))
        elif a.tracked(v) and v.type.ndim == out.type.ndim and v.type.shape[1] == channels:
            vectors.append(a.consts[v.name])
            aligned.append(v)
        else:  # broadcast along channels (a gate, a scalar): not coupled, value unknown
            shape = (1,) * (out.type.ndim - v.type.ndim) + v.type.shape
            coupled_elsewhere |= shape[1] == channels != 1
            vectors.append(np.full(channels, np.nan))
    consts = _apply(node, vectors)
    if node.op == "mul":
        consts = np.where(np.any([vec == 0 for vec in vectors], axis=0), 0.0, consts)
    a.track(out, consts)
    for v in aligned:
        a.spaces.union(v.name, out.name)
    if coupled_elsewhere:  # an operand with a channel axis of its own that we do not track
        a.block(out, *node.inputs)


def _pool(a: ChannelAnalysis, node: Node) -> None:
    x, out = node.inputs[0], node.output
    xc = a.consts[x.name]
    keeps_constant = node.op in ("max_pool2d", "adaptive_avg_pool2d", "amax", "mean") or (
        node.op == "avg_pool2d" and node.attrs["divisor_override"] is None
        and (not any(node.attrs["padding"]) or not node.attrs["count_include_pad"]))
    if node.op == "sum":
        count = math.prod(x.type.shape[d] for d in node.attrs["dims"])
        consts = xc * count
    else:
        consts = xc if keeps_constant else np.where(xc == 0, 0.0, np.nan)
    a.track(out, consts)
    a.spaces.union(x.name, out.name)


def _reshape(a: ChannelAnalysis, node: Node) -> None:
    x, out = node.inputs[0], node.output
    xs, os_ = x.type.shape, out.type.shape
    if x.type.ndim >= 2 and out.type.ndim >= 2 and xs[:2] == os_[:2]:
        a.track(out, a.consts[x.name])
        a.spaces.union(x.name, out.name)
    elif x.type.ndim >= 2 and os_ == (xs[0], math.prod(xs[1:])):
        per = math.prod(xs[2:])
        a.track(out, np.repeat(a.consts[x.name], per))
        channels = np.repeat(np.arange(xs[1]), per)
        a.link(x, channels, out, np.arange(os_[1]))
    else:
        a.track(out)
        a.block(x, out)


def _cat_or_split(a: ChannelAnalysis, node: Node) -> None:
    whole, parts = ((node.output, node.inputs) if node.op == "cat"
                    else (node.inputs[0], node.outputs))
    if node.attrs["dim"] % whole.type.ndim != 1:  # along another axis channels stay aligned
        stacked = np.stack([a.consts[v.name] for v in node.inputs])
        same = np.all(stacked == stacked[:1], axis=0)
        for v in node.outputs:
            a.track(v, np.where(same, stacked[0], np.nan))
        for v in (*node.inputs, *node.outputs):
            a.spaces.union(node.inputs[0].name, v.name)
        return
    if node.op == "cat":
        a.track(whole, np.concatenate([a.consts[p.name] for p in parts]))
    offset = 0
    for p in parts:
        n = p.type.shape[1]
        if node.op == "split":
            a.track(p, a.consts[whole.name][offset:offset + n])
        a.link(p, np.arange(n), whole, np.arange(offset, offset + n))
        offset += n


def _reduction(a: ChannelAnalysis, node: Node) -> None:
    dims = set(node.attrs["dims"])
    if node.inputs[0].type.ndim >= 3 and not dims & {0, 1} and (
            node.attrs["keepdim"] or node.output.type.ndim >= 2):
        _pool(a, node)
    else:
        _opaque(a, node)


def _opaque(a: ChannelAnalysis, node: Node) -> None:
    for v in node.outputs:
        a.track(v)
    a.block(*node.inputs, *node.outputs)


HANDLERS = {"conv2d": _conv2d, "linear": _linear, "batch_norm": _batch_norm,
            "max_pool2d": _pool, "avg_pool2d": _pool, "adaptive_avg_pool2d": _pool,
            "mean": _reduction, "sum": _reduction, "amax": _reduction,
            "reshape": _reshape, "cat": _cat_or_split, "split": _cat_or_split}


def _handler(a: ChannelAnalysis, node: Node):
    if node.op in HANDLERS:
        return HANDLERS[node.op]
    elementwise = node.op in UNARY_SAFE or node.op in BINARY_SAFE
    if elementwise and node.output.type.ndim >= 2 and all(
            a.tracked(v) or a.const_of(v) is not None or v.type.ndim < 2 for v in node.inputs):
        return _elementwise
    return _opaque


def analyze(graph: Graph) -> ChannelAnalysis:
    """Propagate channel constants and build spaces, links, sources and sinks. NaN stands for
    "not a known constant"; inf weights (or eps=0 over a zero variance) make more of them, which
    only keeps channels, so numpy's warnings about them are silenced."""
    with np.errstate(all="ignore"):
        return _analyze(graph)


def _analyze(graph: Graph) -> ChannelAnalysis:
    a = ChannelAnalysis(graph)
    for v in graph.inputs:
        a.track(v)
        a.block(v)
    for node in graph.nodes:
        if node.op == "const":
            continue
        data = node.inputs if node.op == "cat" else node.inputs[:1]
        if node.op in HANDLERS and not all(a.tracked(v) for v in data):
            _opaque(a, node)
            continue
        _handler(a, node)(a, node)
    a.block(*graph.outputs)
    _decide(a)
    return a


def _decide(a: ChannelAnalysis) -> None:
    """Which channels of which values go: whole position components that are constant
    everywhere, unblocked, and produced by droppable sources (every sink absorbs constants)."""
    members: dict[str, list[str]] = defaultdict(list)
    for name in a.consts:
        members[a.spaces.find(name)].append(name)
    blocked = {a.spaces.find(n) for n in a.blocked}
    sourced = {a.spaces.find(n.output.name) for n in a.sources}
    ok: dict[str, np.ndarray] = {}
    for root, names in members.items():
        channels = len(a.consts[names[0]])
        if root in blocked:
            ok[root] = np.zeros(channels, bool)
            continue
        known = np.all([~np.isnan(a.consts[n]) for n in names], axis=0)
        # a space must be produced by droppable sources or fed through links (cat / flatten)
        ok[root] = known & (root in sourced or _linked(a, root))
    for name_a, ca, name_b, cb in a.links:
        ra, rb = a.spaces.find(name_a), a.spaces.find(name_b)
        for i, j in zip(ca, cb):
            a.positions.union((ra, int(i)), (rb, int(j)))
    component_ok: dict = {}
    for root, flags in ok.items():
        for c, flag in enumerate(flags):
            key = a.positions.find((root, c))
            component_ok[key] = component_ok.get(key, True) and bool(flag)
    for root in members:
        keys = [a.positions.find((root, c)) for c in range(len(ok[root]))]
        removed = np.array([component_ok[k] for k in keys], bool)
        if keys and removed.all():  # never empty a space: keep its first channel (and its
            component_ok[keys[0]] = False  # component); a space of no channels has none to drop
    for root, names in members.items():
        removed = np.flatnonzero([component_ok[a.positions.find((root, c))]
                                  for c in range(len(ok[root]))])
        if removed.size:
            for n in names:
                a.removable[n] = removed


def _linked(a: ChannelAnalysis, root: str) -> bool:
    return any(a.spaces.find(x) == root or a.spaces.find(y) == root for x, _, y, _ in a.links)
