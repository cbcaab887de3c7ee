"""Lowering rules for layout nodes: views where strides allow, the copy kernel where data moves.

A view (permute, slice, select, squeeze, unsqueeze, expand, the pieces of a split, a reshape
whose strides allow it) changes a tensor's shape and strides only: no data moves and nothing is
launched, and every kernel downstream reads its input through strides. Where data must move
(a reshape that no view can express, a change of storage order, `cat`, `pad`) it moves through
`layout.py`'s generated copy kernel, never through a torch op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fxforge.ir import Node
from fxforge.kernels.torch_backend import TORCH_IMPLS
from fxforge.kernels.triton import layout
from fxforge.kernels.triton.lowered import Context, Lowered

# ops whose torch implementation (kernels/torch_backend.py) is a view: metadata only, run as is
_VIEWS = {"permute": "permute", "slice": "slice", "select": "select", "unsqueeze": "unsqueeze",
          "squeeze": "squeeze", "expand": "expand, stride 0", "split": "split"}


def _view(node: Node, ctx: Context) -> Lowered | str:
    impl, attrs = TORCH_IMPLS[node.op], dict(node.attrs)
    return Lowered(f"view ({_VIEWS[node.op]}, no copy)", lambda x: impl(x, **attrs))


def _too_many_dims(node: Node) -> str | None:
    """The copy kernel walks at most layout.MAX_RANK dims (after merging); a node whose tensors
    have more is left to torch rather than failing at run time when its dims do not merge."""
    rank = max(len(v.type.shape) for v in (*node.inputs, *node.outputs))
    if rank > layout.MAX_RANK:
        return f"rank {rank}: the copy kernel takes at most {layout.MAX_RANK} dims"
    return None


def _copying(rule: Callable[[Node, Context], Lowered | str]):
    """A rule whose node may move data through the copy kernel: refused past its rank."""

    def checked(node: Node, ctx: Context) -> Lowered | str:
        return _too_many_dims(node) or rule(node, ctx)

    return checked


def _reshape(node: Node, ctx: Context) -> Lowered | str:
    shape = tuple(node.attrs["shape"])
    return Lowered("reshape (a view; the copy kernel when strides do not allow one)",
                   lambda x: layout.reshape(x, shape))


def _cat(node: Node, ctx: Context) -> Lowered | str:
    dim = node.attrs["dim"]
    if any(v.type.dtype != node.outputs[0].type.dtype for v in node.inputs):
        return "inputs of different dtypes (torch promotes them first)"
    return Lowered("cat (copy kernel into one buffer)", lambda *xs: layout.cat(xs, dim))


def _pad(node: Node, ctx: Context) -> Lowered | str:
    a = node.attrs
    pads, mode, value = tuple(a["pads"]), a["mode"], a["value"]
    if mode not in layout.PAD_MODES:
        return f"pad mode {mode!r} has no kernel"
    return Lowered(f"pad ({mode}, copy kernel)", lambda x: layout.pad(x, pads, mode, value))


def _memory_format(node: Node, ctx: Context) -> Lowered | str:
    fmt = node.attrs["layout"]
    return Lowered(f"storage order to {fmt} (copy kernel; none when already so)",
                   lambda x: layout.memory_format(x, fmt))


def _positions(node: Node, ctx: Context, what: str, size: int, negative: bool, which: int = 1
               ) -> Callable[[torch.Tensor], None] | str:
    """The range check of a node's positions (input `which`): done once here for constant
    ones, per call (on the host) for computed ones."""
    v = node.inputs[which]
    if v.type.dtype not in ("i64", "i32"):
        return f"positions of dtype {v.type.dtype}: the kernel takes i32 or i64"
    const = ctx.const(v)
    if const is not None:
        layout.check_positions(const, size, what, negative)
        return lambda _: None
    return lambda p: layout.check_positions(p, size, what, negative)


def _index(node: Node, ctx: Context) -> Lowered | str:
    dim, x_t = node.attrs["dim"], node.inputs[0].type
    checks = []
    for j in range(1, len(node.inputs)):
        check = _positions(node, ctx, node.describe(), x_t.shape[dim + j - 1], negative=True,
                           which=j)
        if isinstance(check, str):
            return check
        checks.append(check)

    def run(x, *positions):
        for check, p in zip(checks, positions):
            check(p)
        return layout.index(x, dim, positions)

    return Lowered(f"index ({len(checks)} position tensor(s), indexed copy kernel)", run)


def _embedding(node: Node, ctx: Context) -> Lowered | str:
    vocab = node.inputs[0].type.shape[0]
    check = _positions(node, ctx, node.describe(), vocab, negative=False)
    if isinstance(check, str):
        return check

    def run(weight, positions):
        check(positions)
        return layout.take(weight, 0, positions)

    return Lowered("embedding (indexed copy kernel; row ids checked on the host)", run)


def _gather(node: Node, ctx: Context) -> Lowered | str:
    dim, x_t = node.attrs["dim"], node.inputs[0].type
    check = _positions(node, ctx, node.describe(), x_t.shape[dim], negative=False)
    if isinstance(check, str):
        return check

    def run(x, positions):
        check(positions)
        return layout.gather(x, dim, positions)

    return Lowered("gather (indexed copy kernel)", run)


RULES = {
    "reshape": _copying(_reshape),
    "index": _copying(_index),
    "embedding": _copying(_embedding),
    "gather": _copying(_gather),
    "cat": _copying(_cat),
    "pad": _copying(_pad),
    "memory_format": _copying(_memory_format),
    **{op: _view for op in _VIEWS},
}
