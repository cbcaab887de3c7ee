"""`fuse`: form the fused nodes that backends generate one kernel for.

Four fusions, in this order (each needs what the one before leaves alone):

1. sibling `linear`s / `conv2d`s that read the same input with constant weights (Q, K and V;
   the first convs of an ensemble) become one layer with concatenated output channels and a
   `split`, taking along the unary epilogue chain they share (passes/merge_siblings.py says
   which siblings merge and why: an ordinary function, it groups the graph);
2. matmul(softmax(matmul(q, k^T) * scale [+ mask]), v) becomes `scaled_dot_product_attention`
   (before 3 and 4, which would otherwise take its scale and mask into other nodes);
3. conv2d / linear followed by elementwise ops (bias is already in the op; activation, residual
   add, per-channel scale) becomes `fused_conv2d` / `fused_linear` with an epilogue;
4. what is left of chains of elementwise ops becomes `fused_elementwise`.

A node is absorbed only when the fused result so far has it as its one reader, and an epilogue
step only when it keeps the accumulator's shape and dtype (its operand may broadcast into it: a
per-channel constant, a residual of the same shape). The node that replaces another keeps that
node's result name, so the IR still speaks the names it had, and a chain grows in one round: the
fused value has exactly the readers the replaced one had. Fused ops compute what their nodes did,
rounding to each intermediate's dtype (see `fxforge.ops.stage_types`). One exception: an
attention row whose every key is masked gives NaN unfused and zeros fused (sdpa's safe softmax).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fxforge import ops
from fxforge.ir import Graph, Node, Provenance, Value
from fxforge.passes.merge_siblings import merge_siblings
from fxforge.passes.rewrite import Rewriter, Rule, rewrite
from fxforge.shapes import OpTypeError, norm_dim

EPILOGUE_UNARY = frozenset(("relu", "clamp", "gelu", "silu", "sigmoid", "tanh", "hardswish",
                            "hardsigmoid"))
EPILOGUE_BINARY = frozenset(("add", "sub", "mul", "div"))
CHAINABLE = frozenset(name for name, d in ops.OPS.items() if d.kind == "elementwise")
FUSED_OPS = ("fused_conv2d", "fused_linear", "fused_elementwise", "scaled_dot_product_attention")


def _same_type(a: Value, b: Value) -> bool:
    return (a.type.shape, a.type.dtype) == (b.type.shape, b.type.dtype)


def _takeover(rw: Rewriter, node: Node, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
              provenance: Provenance) -> Sequence[Value] | None:
    """Emit the node that replaces `node` under `node`'s result names (see the module doc), or
    None when its inferred types would differ."""
    try:
        new = ops.build_node(op, inputs, attrs, [v.name for v in node.outputs], provenance)
    except OpTypeError:
        return None
    if not all(_same_type(a, b) for a, b in zip(node.outputs, new.outputs)):
        return None
    return rw.add(new).outputs


def _only(rw: Rewriter, v: Value, *op_names: str) -> Node | None:
    """The producer of `v` if it is one of `op_names` and `v` has no other reader."""
    p = rw.producer(v)
    return p if p is not None and p.op in op_names and rw.use_count(v) == 1 else None


# --- epilogues ----------------------------------------------------------------------------------


def _step(node: Node, **operand: Any) -> dict[str, Any]:
    return {"op": node.op, **({"attrs": dict(node.attrs)} if node.attrs else {}), **operand}


def _absorb(bases: tuple[str, str]):
    """A rule body: `node` joins the epilogue of the conv2d / linear (fused or not) it reads."""
    plain, fused = bases

    def apply(node: Node, rw: Rewriter) -> Sequence[Value] | None:
        if node.op not in EPILOGUE_UNARY | EPILOGUE_BINARY:
            return None
        for i, acc in enumerate(node.inputs):
            base = _only(rw, acc, plain, fused)
            if base is None or not _same_type(node.output, acc):
                continue
            inputs = list(base.inputs)
            attrs = dict(base.attrs)
            if base.op == plain:
                attrs.update(has_bias=len(inputs) == 3, epilogue=())
            operand = {}
            if len(node.inputs) == 2:
                other = node.inputs[1 - i]
                names = [v.name for v in inputs]
                if other.name not in names:
                    inputs.append(other)
                    names.append(other.name)
                operand = {"operand": names.index(other.name), "side": "right" if i == 0 else
                           "left"}
            attrs["epilogue"] = (*attrs["epilogue"], _step(node, **operand))
            return _takeover(rw, node, fused, inputs, attrs, base.provenance)
        return None

    return apply


EPILOGUE_RULES = [
    Rule("conv2d-epilogue", "an elementwise op that alone reads a conv2d joins its epilogue",
         _absorb(("conv2d", "fused_conv2d"))),
    Rule("linear-epilogue", "an elementwise op that alone reads a linear joins its epilogue",
         _absorb(("linear", "fused_linear"))),
]


# --- attention ----------------------------------------------------------------------------------


def _scalar(rw: Rewriter, v: Value) -> float | None:
    array = rw.constant(v)
    if array is None or array.size != 1 or array.dtype.kind not in "iuf":
        return None
    return float(array.reshape(()))


def _scores(rw: Rewriter, s: Value) -> tuple[Node, float] | None:
    """`s` = matmul(q, k^T) [* c | / c] with c a scalar constant: the matmul and the scale."""
    scale, p = 1.0, _only(rw, s, "mul", "div")
    if p is not None:
        a, b = p.inputs
        if p.op == "mul" and _scalar(rw, a) is not None:
            a, b = b, a
        c = _scalar(rw, b)
        if c is None or not np.isfinite(c) or c == 0 or not _same_type(s, a):
            return None
        scale, s = (c if p.op == "mul" else 1.0 / c), a
    mm = _only(rw, s, "matmul")
    if mm is None:
        return None
    kt = rw.producer(mm.inputs[1])
    n = mm.inputs[1].type.ndim
    if kt is None or kt.op != "permute" or n < 2 or tuple(
            d % n for d in kt.attrs["dims"]) != (*range(n - 2), n - 1, n - 2):
        return None
    return mm, scale


def _is_neg_inf(rw: Rewriter, v: Value) -> bool:
    c = _scalar(rw, v)
    return c is not None and c == -np.inf


def _not(rw: Rewriter, cond: Value, provenance: Provenance) -> Value:
    """The negation of a bool value: the input of a `bitwise_not`, else cond == false."""
    p = rw.producer(cond)
    negation = p is not None and (p.op == "bitwise_not" or (
        p.op == "torch_op" and p.attrs["target"] == "aten.bitwise_not.default"))
    if negation and len(p.inputs) == 1 and _same_type(p.inputs[0], cond):
        return p.inputs[0]
    false = rw.const(np.array(False), provenance)
    return rw.emit("eq", [cond, false], provenance=provenance).output


def _masked_scores(rw: Rewriter, x: Value):
    """(matmul, scale, mask, negate mask) for the input of the softmax, or None."""
    found = _scores(rw, x)
    if found is not None:
        return (*found, None, False)
    p = _only(rw, x, "add", "where")
    if p is None:
        return None
    if p.op == "add":  # an additive float mask, on either side
        for s, mask in (p.inputs, p.inputs[::-1]):
            found = _scores(rw, s)
            if found is not None and _same_type(x, s) and mask.type.dtype == s.type.dtype:
                return (*found, mask, False)
        return None
    cond, a, b = p.inputs  # where(keep, s, -inf) or masked_fill: where(drop, -inf, s)
    for s, fill, negate in ((a, b, False), (b, a, True)):
        found = _scores(rw, s) if _is_neg_inf(rw, fill) else None
        if found is not None and _same_type(x, s):
            return (*found, cond, negate)
    return None


def _attention(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op != "matmul":
        return None
    probs, v = node.inputs
    sm = _only(rw, probs, "softmax")
    if sm is None or norm_dim(sm.attrs["dim"], probs.type.ndim) != probs.type.ndim - 1:
        return None
    found = _masked_scores(rw, sm.inputs[0])
    if found is None:
        return None
    mm, scale, mask, negate = found
    q, k = mm.inputs[0], rw.producer(mm.inputs[1]).inputs[0]
    if not q.type.ndim == k.type.ndim == v.type.ndim:
        return None
    attrs = {"is_causal": False, "scale": scale}
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    try:  # check the types before emitting the negated mask
        ops.build_node("scaled_dot_product_attention", inputs, attrs, ["check"])
    except OpTypeError:
        return None
    if negate:
        inputs[3] = _not(rw, mask, node.provenance)
    return _takeover(rw, node, "scaled_dot_product_attention", inputs, attrs, node.provenance)


ATTENTION_RULES = [
    Rule("attention", "matmul(softmax(matmul(q, k^T) * scale [+ mask]), v) is sdpa", _attention),
]


# --- elementwise chains -------------------------------------------------------------------------


class _Chain:
    """Steps under construction; an argument is ("in", i) or ("step", k) until `encode` numbers
    them (inputs first, so step k becomes index len(inputs) + k)."""

    def __init__(self) -> None:
        self.inputs: list[Value] = []
        self.steps: list[tuple[dict[str, Any], list[tuple[str, int]]]] = []

    def _input(self, v: Value) -> tuple[str, int]:
        names = [x.name for x in self.inputs]
        if v.name not in names:
            self.inputs.append(v)
            names.append(v.name)
        return ("in", names.index(v.name))

    def inline(self, node: Node, refs: dict[str, tuple[str, int]]) -> tuple[str, int]:
        """Append `node`'s steps; `refs` maps its inputs that are earlier steps' results."""
        if node.op == "fused_elementwise":
            steps = node.attrs["steps"]
        else:
            steps = ({**_step(node), "args": tuple(range(len(node.inputs)))},)
        n, local = len(node.inputs), []
        for step in steps:
            args = [(refs.get(node.inputs[a].name) or self._input(node.inputs[a])) if a < n
                    else local[a - n] for a in step["args"]]
            self.steps.append((step, args))
            local.append(("step", len(self.steps) - 1))
        return local[-1]

    def encode(self) -> tuple[dict[str, Any], ...]:
        n = len(self.inputs)
        return tuple({**step, "args": tuple(i if kind == "in" else n + i for kind, i in args)}
                     for step, args in self.steps)


def _chain(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op not in CHAINABLE:
        return None
    producers = {v.name: p for v in node.inputs
                 if (p := _only(rw, v, *CHAINABLE)) is not None and len(p.outputs) == 1}
    if not producers:
        return None
    chain = _Chain()
    refs = {name: chain.inline(p, {}) for name, p in producers.items()}
    chain.inline(node, refs)
    first = next(iter(producers.values()))
    return _takeover(rw, node, "fused_elementwise", chain.inputs, {"steps": chain.encode()},
                     first.provenance)


ELEMENTWISE_RULES = [
    Rule("elementwise-chain", "elementwise ops read only by an elementwise op join it", _chain),
]


# --- the pass -----------------------------------------------------------------------------------


def _count(graph: Graph) -> Counter:
    return Counter(node.op for node in graph.nodes if node.op in FUSED_OPS)


def fuse(graph: Graph) -> tuple[Graph, dict[str, Any]]:
    """Counts of what formed, and `merged`: one note per horizontal merge (for the report)."""
    before = _count(graph)
    graph, merged, notes = merge_siblings(graph, EPILOGUE_UNARY, EPILOGUE_BINARY)
    graph, attention = rewrite(graph, ATTENTION_RULES)
    graph, epilogue = rewrite(graph, EPILOGUE_RULES)
    graph, chains = rewrite(graph, ELEMENTWISE_RULES)
    formed = _count(graph) - before
    stats = {
        "merged-linears": merged["linear"],
        "merged-convs": merged["conv2d"],
        "attention": attention["attention"],
        "fused_conv2d": formed["fused_conv2d"],
        "fused_linear": formed["fused_linear"],
        "epilogue-steps": sum(epilogue.values()),
        "fused_elementwise": formed["fused_elementwise"],
        "elementwise-steps": chains["elementwise-chain"],
    }
    stats["merged"] = notes
    return graph, {k: v for k, v in stats.items() if v}
