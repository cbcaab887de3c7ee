"""`canonicalize`: remove what computes nothing, so later patterns see one spelling of a model.

Identities (dropout in inference, clone/contiguous, casts to the same dtype, reshapes/permutes/
expands/squeezes/slices that change nothing) are dropped, chains of reshapes collapse, and
`weight * mask` left by `torch.nn.utils.prune` (a product of two constants) is folded, a
matmul by a constant 2-D weight becomes a linear layer, and a constant [N] vector added to a
bias-less linear becomes its bias; a whole-input average pool is the global one, and GELU written
as its formula is `gelu` (`formulas.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fxforge.ir import Graph, Node, Value
from fxforge.passes.fold_constants import _fold
from fxforge.passes.formulas import GELU
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
    """x @ W with W a constant [K, N] (GPT-2's Conv1D, `addmm`) is linear(x, W.T): then
    `linear-bias` folds its bias in and int8 quantizes it like any linear layer."""
    if node.op != "matmul":
        return None
    x, w = node.inputs
    weight = rw.constant(w)
    if weight is None or weight.ndim != 2 or x.type.ndim < 1 or x.type.dtype != w.type.dtype:
        return None
    source = rw.producer(w).provenance
    transposed = rw.const(np.ascontiguousarray(weight.T), source, w.type.dtype, prefix="wt")
    return rw.emit("linear", [x, transposed], {}, node.provenance).outputs


def _linear_bias(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """add(linear(x, W), b) with b a constant [N] and the linear's only reader: linear(x, W, b)
    (`addmm`, and MatMul + Add in ONNX files), so the bias is the kernel's and int8's."""
    if node.op != "add":
        return None
    for y, b in (node.inputs, node.inputs[::-1]):
        lin = rw.producer(y)
        if lin is None or lin.op != "linear" or len(lin.inputs) != 2 or rw.use_count(y) != 1:
            continue
        if rw.constant(b) is None or b.type.dtype != y.type.dtype or \
                b.type.shape != (lin.inputs[1].type.shape[0],) or node.output.type != y.type:
            continue
        return rw.emit("linear", [*lin.inputs, b], {}, lin.provenance).outputs
    return None


def _whole_window_pool(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """avg_pool2d whose one unpadded window covers the whole input (kernel = the input's size,
    or larger in ceil mode: HF EfficientNet's `AvgPool2d(hidden_dim, ceil_mode=True)`) is the
    global average, adaptive_avg_pool2d to 1x1 (a window clipped to the input divides by what
    is there)."""
    if node.op != "avg_pool2d" or node.attrs["divisor_override"] is not None:
        return None
    x = node.inputs[0]
    if x.type.ndim != 4 or any(node.attrs["padding"]) or node.output.type.shape[2:] != (1, 1):
        return None
    if any(k < n for k, n in zip(node.attrs["kernel"], x.type.shape[2:])):
        return None
    return rw.emit("adaptive_avg_pool2d", [x], {"output_size": (1, 1)}, node.provenance).outputs


LINEAR_BIAS = Rule("linear-bias", "add(linear(x, W), b) with a constant b [N] is linear(x, W, b)",
                   _linear_bias)


def _op(names: str, condition=lambda node: True):
    ops = set(names.split())
    return lambda node: node.op in ops and condition(node)


RULES = [
    Rule("drop-identity", "dropout, identity (clone, contiguous, detach) are their input",
         _input_if(_op("dropout identity"))),
    Rule("drop-noop-cast", "a cast to the dtype it already has", _input_if(_op("cast"))),
    Rule("drop-noop-layout", "reshape / expand / squeeze / slice that keep the type",
         _input_if(_op("reshape expand squeeze slice"))),
    Rule("drop-noop-pad", "a pad by zero on every side",
         _input_if(_op("pad", lambda n: not any(n.attrs["pads"])))),
    Rule("drop-noop-permute", "permute by the identity permutation",
         _input_if(_op("permute", lambda n: list(n.attrs["dims"]) == sorted(n.attrs["dims"])))),
    Rule("reshape-chain", "reshape(reshape(x)) is one reshape", _reshape_chain),
    Rule("fold-weight-mask", "weight * mask (torch.nn.utils.prune) is one constant",
         _fold_const_product),
    Rule("matmul-to-linear", "x @ W with a constant W [K, N] is linear(x, W.T)",
         _matmul_by_constant),
    LINEAR_BIAS,
    Rule("whole-window-pool", "avg_pool2d of one window over the whole input is the global "
         "average", _whole_window_pool),
    GELU,
]


def canonicalize(graph: Graph) -> tuple[Graph, dict[str, int]]:
    graph, stats = rewrite(graph, RULES)
    return graph, {rule.name: stats[rule.name] for rule in RULES if stats[rule.name]}
