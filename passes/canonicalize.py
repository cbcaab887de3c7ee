"""`canonicalize`: remove what computes nothing, so later patterns see one spelling of a model.

Identities (dropout in inference, clone/contiguous, casts to the same dtype, reshapes/permutes/
expands/squeezes/slices that change nothing) are dropped, chains of reshapes collapse, and
`weight * mask` left by `torch.nn.utils.prune` (a product of two constants) is folded, and a
matmul by a constant 2-D weight becomes a linear layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fxforge.ir import Graph, Node, Value
from fxforge.passes.fold_constants import _fold
from fxforge.passes.rewrite import Rewriter, Rule, rewrite


def _input_if(condition: Callable[[Node], bool]):
    """A rule body that replaces the node by its first input when `condition(node)` holds and
    the result has the input's exact type (for layout ops that alone makes them no-ops)."""

    def apply(node: Node, rw: Rewriter) -> Sequence[Value] | None:
        if node.inputs and condition(node) and node.inputs[0].type == node.output.type:
            return [node.inputs[0]]
        return None

    return apply


def _reshape_chain(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op != "reshape":
        return None
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "reshape":
        return None
    return rw.emit("reshape", [inner.inputs[0]], {"shape": node.attrs["shape"]},
                   node.provenance).outputs


def _fold_const_product(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    if node.op != "mul":
        return None
    return _fold(node, rw)


def _matmul_by_constant(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """x @ W with W a constant [K, N] (GPT-2's Conv1D, `addmm`) is linear(x, W.T): then fusion
    folds its bias in and int8 quantizes it like any linear layer."""
    if node.op != "matmul":
        return None
    x, w = node.inputs
    weight = rw.constant(w)
    if weight is None or weight.ndim != 2 or x.type.ndim < 1 or x.type.dtype != w.type.dtype:
        return None
    source = rw.producer(w).provenance
    transposed = rw.const(np.ascontiguousarray(weight.T), source, w.type.dtype, prefix="wt")
    return rw.emit("linear", [x, transposed], {}, node.provenance).outputs


def _op(names: str, condition=lambda node: True):
    ops = set(names.split())
    return lambda node: node.op in ops and condition(node)


RULES = [
    Rule("drop-identity", "dropout, identity (clone, contiguous, detach) are their input",
         _input_if(_op("dropout identity"))),
    Rule("drop-noop-cast", "a cast to the dtype it already has", _input_if(_op("cast"))),
    Rule("drop-noop-layout", "reshape / expand / squeeze / slice that keep the type",
         _input_if(_op("reshape expand squeeze slice"))),
    Rule("drop-noop-permute", "permute by the identity permutation",
         _input_if(_op("permute", lambda n: list(n.attrs["dims"]) == sorted(n.attrs["dims"])))),
    Rule("reshape-chain", "reshape(reshape(x)) is one reshape", _reshape_chain),
    Rule("fold-weight-mask", "weight * mask (torch.nn.utils.prune) is one constant",
         _fold_const_product),
    Rule("matmul-to-linear", "x @ W with a constant W [K, N] is linear(x, W.T)",
         _matmul_by_constant),
]


def canonicalize(graph: Graph) -> tuple[Graph, dict[str, int]]:
    graph, stats = rewrite(graph, RULES)
    return graph, {rule.name: stats[rule.name] for rule in RULES if stats[rule.name]}
