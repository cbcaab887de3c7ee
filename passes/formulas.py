"""Ops that models spell as formulas, recognized as the one op they compute.

GELU written out (GPT-2's `NewGELUActivation`, torch.onnx before opset 20, fxforge's own ONNX
export for float64) is `gelu`: one kernel, one int8 epilogue, instead of eight elementwise
steps. `canonicalize` applies it to every captured graph; the ONNX importer's `recognize`
uses it and the helpers below for the chains ONNX files spell with several nodes.

A rule matches only the exact formula: intermediate values with one reader, constants equal to
the formula's in the value's dtype. The op may round differently from the written chain in the
last place (the reference computes `gelu` in one expression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fxforge import dtypes, ops
from fxforge.ir import Node, Provenance, Value
from fxforge.passes.rewrite import Rewriter, Rule
from fxforge.shapes import OpTypeError


def takeover(rw: Rewriter, node: Node, op: str, inputs: Sequence[Value], attrs: dict,
              provenance: Provenance) -> Sequence[Value] | None:
    """The node replacing `node`, under its result names; None when the types would differ."""
    try:
        new = ops.build_node(op, list(inputs), attrs, [v.name for v in node.outputs], provenance)
    except OpTypeError:
        return None
    if [(v.type.shape, v.type.dtype) for v in new.outputs] != \
            [(v.type.shape, v.type.dtype) for v in node.outputs]:
        return None
    return rw.add(new).outputs


def only(rw: Rewriter, v: Value, *names: str) -> Node | None:
    """The producer of `v` if it is one of the ops `names` and `v` has no other reader."""
    p = rw.producer(v)
    return p if p is not None and p.op in names and rw.use_count(v) == 1 else None


def scalar(rw: Rewriter, v: Value) -> float | None:
    array = rw.constant(v)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return float(array.reshape(()))


def is_scalar(rw: Rewriter, v: Value, exact: float, like: Value) -> bool:
    """`v` is a scalar constant equal to `exact` as `like`'s dtype holds it."""
    c = scalar(rw, v)
    if c is None or not dtypes.is_float(like.type.dtype) or like.type.dtype == "bf16":
        return False
    return c == float(np.asarray(exact, dtype=dtypes.to_numpy(like.type.dtype)))


def _factors(rw: Rewriter, node: Node) -> list[Value]:
    """The operands of a product of three: mul(mul(a, b), c) in any nesting."""
    out: list[Value] = []
    for v in node.inputs:
        inner = only(rw, v, "mul")
        out.extend(inner.inputs if inner is not None else (v,))
    return out


def _one_plus(rw: Rewriter, v: Value, op: str) -> Value | None:
    """The argument u of `v` = 1 + op(u) (either order), each with one reader."""
    add = only(rw, v, "add")
    if add is None:
        return None
    for t, one in (add.inputs, add.inputs[::-1]):
        inner = only(rw, t, op)
        if inner is not None and is_scalar(rw, one, 1.0, v):
            return inner.inputs[0]
    return None


def _scaled(rw: Rewriter, v: Value, factor: float) -> Value | None:
    """x for `v` = x * factor or x / (1 / factor) (each constant in v's dtype)."""
    p = only(rw, v, "mul", "div")
    if p is None:
        return None
    if p.op == "div":
        return p.inputs[0] if is_scalar(rw, p.inputs[1], 1.0 / factor, v) else None
    for x, c in (p.inputs, p.inputs[::-1]):
        if is_scalar(rw, c, factor, v):
            return x
    return None


def _is_cube(rw: Rewriter, v: Value, x: Value) -> bool:
    """`v` = x * x * x (any nesting) or x ** 3."""
    p = only(rw, v, "mul", "pow")
    if p is None:
        return False
    if p.op == "pow":
        return p.inputs[0] == x and is_scalar(rw, p.inputs[1], 3.0, v)
    return _factors(rw, p) == [x, x, x]


def _tanh_inner(rw: Rewriter, u: Value) -> Value | None:
    """x for u = sqrt(2 / pi) * (x + 0.044715 * x ** 3)."""
    inner = _scaled(rw, u, math.sqrt(2.0 / math.pi))
    add = only(rw, inner, "add") if inner is not None else None
    if add is None:
        return None
    for x, cube in (add.inputs, add.inputs[::-1]):
        c = _scaled(rw, cube, 0.044715)
        if c is not None and _is_cube(rw, c, x):
            return x
    return None


def gelu(node: Node, rw: Rewriter) -> Sequence[Value] | None:
    """0.5 * x * (1 + erf(x / sqrt 2)) is gelu; with tanh(sqrt(2/pi) * (x + 0.044715 x^3)) in
    the place of the erf, gelu with approximate="tanh"."""
    if node.op != "mul" or not dtypes.is_float(node.output.type.dtype):
        return None
    factors = _factors(rw, node)
    if len(factors) != 3:
        return None
    for i, half in enumerate(factors):
        if not is_scalar(rw, half, 0.5, node.output):
            continue
        rest = factors[:i] + factors[i + 1:]
        for x, t in (rest, rest[::-1]):
            u = _one_plus(rw, t, "erf")
            if u is not None and _scaled(rw, u, 1.0 / math.sqrt(2.0)) == x:
                return takeover(rw, node, "gelu", [x], {"approximate": "none"},
                                 node.provenance)
            u = _one_plus(rw, t, "tanh")
            if u is not None and _tanh_inner(rw, u) == x:
                return takeover(rw, node, "gelu", [x], {"approximate": "tanh"},
                                 node.provenance)
    return None


GELU = Rule("gelu", "0.5 * x * (1 + erf(x / sqrt 2)) (or its tanh form) is gelu", gelu)
