"""Symbolic dims (stage A): one graph for a range of batch sizes and sequence lengths.

Covers `fxforge.symdims` (canonical form, the text form and its hostile inputs, ranges,
binding), TensorType / Graph with dims, the printer / parser round trip, the verifier, shape
inference per op family over symbols, running a symbolic graph on the reference and torch
executors, and every pass on random graphs with a symbolic batch.

Expected values are written by hand or computed from static graphs built without symbols (the
static inference rules and executors are tested elsewhere), never by the symbolic code itself.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import sympy
import torch
from graph_builder import GraphBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import random_graphs, random_inputs

from fxforge import ops, symdims
from fxforge.errors import InputError
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Attrs, ConstData, Graph, Node, TensorType, Value
from fxforge.parser import IRParseError, parse_ir
from fxforge.passes import registry as passes
from fxforge.pipeline import PassManager
from fxforge.shapes import OpTypeError
from fxforge.symdims import DimError, DimRange
from fxforge.targets import TARGET_INFO
from fxforge.verify import IRVerificationError, verify

B, S = symdims.sym("B"), symdims.sym("S")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
EXAMPLES = int(os.environ.get("FXFORGE_PROPERTY_EXAMPLES", "40"))


# --- symdims: canonical form ---------------------------------------------------------------------


def test_normalize_keeps_ints_as_ints():
    assert symdims.normalize(3) == 3 and type(symdims.normalize(3)) is int
    assert type(symdims.normalize(np.int64(7))) is int
    assert type(symdims.normalize(sympy.Integer(5))) is int
    assert symdims.normalize(B - B + 4) == 4 and type(symdims.normalize(B - B + 4)) is int


def test_normalize_expands_so_equal_polynomials_compare_equal():
    assert symdims.normalize((B + 1) * 2) == 2 * B + 2
    assert symdims.normalize((B + S) * (B - S) + S * S) == B**2


@pytest.mark.parametrize("bad", [-1, True, 2.0, 1.5, "3", B / 2, -B, sympy.Symbol("x") + 1,
                                 sympy.Symbol("n", integer=True)])
def test_normalize_rejects_non_sizes(bad):
    with pytest.raises(OpTypeError):
        symdims.normalize(bad)


def test_sym_checks_names():
    for bad in ("", "1B", "B-1", "graph", "dims", "a b", None):
        with pytest.raises(ValueError):
            symdims.sym(bad)
    assert symdims.sym("seq_len").name == "seq_len"


def test_arithmetic_facts():
    assert symdims.equal(2 * B + 2, (B + 1) * 2) and not symdims.equal(B, S)
    assert symdims.known_ge(B, 1) is True and symdims.known_ge(B, 2) is None
    assert symdims.known_ge(B - 1, 0) is True and symdims.known_ge(-B, 0) is False
    assert symdims.exact_div(6 * B * S, 3 * B) == 2 * S
    assert symdims.exact_div(3 * B, 2) is None and symdims.exact_div(12, 5) is None
    with pytest.raises(OpTypeError, match="static divisor"):
        symdims.floordiv(B, S)
    assert symdims.static(3, "op", "x") == 3
    with pytest.raises(OpTypeError, match="op needs a static size for x, got 2\\*B"):
        symdims.static(2 * B, "op", "x")


@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("offset", [-3, 0, 1, 5])
def test_floordiv_and_ceildiv_agree_with_python(k, offset):
    floor = symdims.floordiv(S + offset, k)
    ceil = symdims.ceildiv(S + offset, k)
    for s in range(1, 30):
        assert symdims.evaluate(floor, {"S": s}) == (s + offset) // k
        assert symdims.evaluate(ceil, {"S": s}) == -(-(s + offset) // k)


def test_symbols_of_and_substitute():
    t = TensorType((B, 3, 2 * S), "f32")
    assert symdims.symbols_of(t) == {"B", "S"}
    assert symdims.substitute(t, {"B": 2, "S": 5}) == TensorType((2, 3, 10), "f32")
    half = symdims.substitute(t, {"S": 5})
    assert half.shape == (B, 3, 10) and symdims.symbols_of(half) == {"B"}


# --- symdims: text form --------------------------------------------------------------------------


CANONICAL_TEXTS = ["B", "2*B", "B*S", "S - 1", "B + S", "(S + 1)//2", "B*B", "S//2 + 1",
                   "2*(S//2)", "B*S + 3*B", "-B + S", "(S - 1)//2 + 1", "B + (2*S + 3)//4",
                   "(S//2)*(S//2)", "(B + S//2)//3"]


@pytest.mark.parametrize("text", CANONICAL_TEXTS)
def test_format_parse_round_trip(text):
    e = symdims.parse_dim(text, ["B", "S"])
    assert symdims.format_dim(e) == text
    assert symdims.parse_dim(symdims.format_dim(e), ["B", "S"]) == e


@pytest.mark.parametrize("text, b, s, want", [
    ("(S + 1)//2", 1, 5, 3), ("(S + 1)//2", 1, 6, 3), ("S - 1", 1, 1, 0),
    ("2*B*S + 3", 2, 3, 15), ("B + (2*S + 3)//4", 1, 4, 3), ("((B))", 9, 1, 9),
    ("S//2*2", 1, 7, 6), ("-(2*B)//3", 1, 1, -1), ("-((2*B)//3)", 1, 1, 0),
    ("2*S//4", 1, 3, 1), ("-B + 10", 4, 1, 6), ("0007", 1, 1, 7)])
def test_parse_dim_values(text, b, s, want):
    assert symdims.evaluate(symdims.parse_dim(text, ["B", "S"]), {"B": b, "S": s}) == want


def test_parse_dim_of_a_number_is_an_int():
    assert symdims.parse_dim("2*3 + 1", []) == 7 and type(symdims.parse_dim("8//3", [])) is int


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("X", "undeclared dim symbol 'X'"),
    ("__import__", "undeclared"),
    ("B**2", "unexpected"),
    ("B / 2", "unexpected character"),
    ("B // S", "positive integer constant"),
    ("B // 0", "positive integer constant"),
    ("B +", "ends too early"),
    ("(B", "missing"),
    ("B)", "unexpected"),
    ("1" * 25, "int64"),
    ("99999999999999999999", "int64"),
    ("4611686018427387904*4", "int64"),
    ("(" * 17 + "B" + ")" * 17, "more than 16 parentheses"),
    ("+".join(["B"] * 130), "more than 256 tokens"),
    ("B" * 1001, "at most 1000 characters"),
    ("B; import os", "unexpected character"),
    ("*".join(["(B + S + 1)"] * 8), "more than 64 terms"),
    ("9223372036854775807 + 1", "int64"),
    ("B*9223372036854775807*2", "int64"),
    ("B $ 1", "unexpected character"),
])
def test_parse_dim_rejects_hostile_text(text, message):
    with pytest.raises(ValueError, match=message):
        symdims.parse_dim(text, ["B", "S"])


def test_parse_dim_never_uses_sympify(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sympify/parse_expr must not see dim text")

    monkeypatch.setattr(sympy, "sympify", refuse)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", refuse)
    assert symdims.parse_dim("(B + 1)*S", ["B", "S"]) == B * S + S


@st.composite
def _expressions(draw, depth=0):
    """(sympy expression, python function of (b, s)) built side by side."""
    if depth > 3 or draw(st.booleans()):
        choice = draw(st.sampled_from(["B", "S", "int"]))
        if choice == "int":
            n = draw(st.integers(0, 50))
            return sympy.Integer(n), lambda b, s, n=n: n
        return (B, lambda b, s: b) if choice == "B" else (S, lambda b, s: s)
    op = draw(st.sampled_from(["+", "-", "*", "//"]))
    (x, fx), (y, fy) = draw(_expressions(depth + 1)), draw(_expressions(depth + 1))
    if op == "+":
        return x + y, lambda b, s: fx(b, s) + fy(b, s)
    if op == "-":
        return x - y, lambda b, s: fx(b, s) - fy(b, s)
    if op == "*":
        return x * y, lambda b, s: fx(b, s) * fy(b, s)
    k = draw(st.integers(1, 5))
    return sympy.floor(x / k), lambda b, s: fx(b, s) // k


@settings(max_examples=200, **SETTINGS)
@given(expr=_expressions(), b=st.integers(1, 20), s=st.integers(1, 20))
def test_text_form_round_trips_random_expressions(expr, b, s):
    e, f = expr
    e = sympy.expand(e)
    text = symdims.format_dim(e)
    if len(text) > 1000 or len(symdims.tokenize_dim(text)) > symdims.MAX_TOKENS:
        with pytest.raises(ValueError, match="at most 1000 characters|more than 256 tokens"):
            symdims.parse_dim(text, ["B", "S"])  # too large to read back: the verifier refuses it
        return
    back = symdims.parse_dim(text, ["B", "S"])
    assert symdims.format_dim(back) == text
    assert int(sympy.Integer(back.subs({B: b, S: s})) if symdims.is_sym(back) else back) \
        == f(b, s)


# --- ranges ------------------------------------------------------------------------------------


def test_dim_range():
    r = DimRange("S", 8, 512, 8)
    assert r.describe() == "S: 8..512 %8" and str(DimRange("B", 1, 128)) == "B: 1..128"
    assert r.contains(16) and not r.contains(12) and not r.contains(520) and not r.contains(0)
    for bad in [("B", 0, 4), ("B", 5, 4), ("B", 1, 2**63), ("B", 1, 4, 0), ("B", 5, 7, 8),
                ("B", 1.0, 4), ("B", True, 4)]:
        with pytest.raises(ValueError):
            DimRange(*bad)


# --- TensorType and Graph ------------------------------------------------------------------------


def test_tensor_type_with_symbols():
    t = TensorType((B, 3, (S + 1) * 2), "f32")
    assert t.shape == (B, 3, 2 * S + 2) and not t.is_static
    assert t.numel == 6 * B * S + 6 * B
    assert TensorType([B, 3], "f32") == TensorType((B, 3), "f32")
    assert hash(TensorType((B, 3), "f32")) == hash(TensorType((B, 3), "f32"))
    assert TensorType((B, 3), "f32") != TensorType((S, 3), "f32")
    with pytest.raises(ValueError):
        TensorType((B - 2 * B, 3), "f32")
    with pytest.raises(ValueError):
        TensorType((B / 2, 3), "f32")


def test_tensor_type_static_fast_path_unchanged():
    t = TensorType((np.int64(2), 3.0, sympy.Integer(4)), "f32")
    assert t.shape == (2, 3, 4) and all(type(d) is int for d in t.shape) and t.is_static
    assert type(t.numel) is int
    with pytest.raises(ValueError, match="negative dimension"):
        TensorType((2, -1), "f32")


def test_static_graph_has_no_dims_and_prints_as_before():
    text = ("graph(%x: f32[2,3]) {\n"
            "  %1 = relu %x : f32[2,3]\n"
            "  return %1\n"
            "}")
    g = parse_ir(text)
    assert g.dims == () and not g.symbolic and str(g) == text
    assert all(type(d) is int for d in g.inputs[0].type.shape)


# --- printer / parser ----------------------------------------------------------------------------


ROUND_TRIP_TEXTS = [
    """graph(%x: f32[B,3,8,8]) dims(B: 1..128) {
  %1 = relu %x : f32[B,3,8,8]
  %2 = reshape[shape=[B, -1]] %1 : f32[B,192]
  %3 = reshape[shape=[-1, 8]] %1 : f32[24*B,8]
  return %2, %3
}""",
    """graph(%x: f32[B,S,8], %ids: i64[B,S], %w: f32[10,8]) dims(B: 1..16, S: 8..512 %8) {
  %e = embedding %w, %ids : f32[B,S,8]
  %a = add %x, %e : f32[B,S,8]
  %b = slice[dim=1, start=0, end=S - 1, step=1] %a : f32[B,S - 1,8]
  %c = slice[dim=1, start=0, end=S, step=2] %a : f32[B,(S + 1)//2,8]
  %p = arange[start=0.0, end=S, step=1.0, dtype="i64"] : i64[S]
  %f = full[shape=[B, 2*S], value=0.0, dtype="f32"] : f32[B,2*S]
  %m = reshape[shape=[B*S, 8]] %a : f32[B*S,8]
  return %b, %c, %p, %f, %m
}""",
    """graph(%x: f32[N,4,S,S]) dims(N: 1..4, S: 4..64) {
  %y = max_pool2d[kernel=[3, 1], stride=[2, 1], padding=[1, 0], ceil_mode=false, """
    """dilation=[1, 1]] %x : f32[N,4,(S - 1)//2 + 1,S]
  %z = cat[dim=2] %x, %y : f32[N,4,S + (S - 1)//2 + 1,S]
  return %z
}""",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_print_parse_round_trip(text):
    g = parse_ir(text)
    verify(g)
    assert g.symbolic and g.dims
    assert str(g) == text
    assert parse_ir(str(g)) == g


def test_parsed_types_and_ranges():
    g = parse_ir(ROUND_TRIP_TEXTS[1])
    assert g.dims == (DimRange("B", 1, 16), DimRange("S", 8, 512, 8))
    assert g.inputs[0].type.shape == (B, S, 8)
    by_name = {v.name: v for n in g.nodes for v in n.outputs}
    assert by_name["b"].type.shape == (B, S - 1, 8)
    assert by_name["c"].type.shape == (B, sympy.floor((S + 1) / 2), 8)
    assert by_name["m"].type.shape == (B * S, 8)
    slice_node = next(n for n in g.nodes if n.outputs[0].name == "b")
    assert slice_node.attrs["end"] == S - 1


def test_graph_built_in_python_round_trips():
    x = Value("x", TensorType((B, 4), "f32"))
    node = ops.build_node("reshape", [x], {"shape": (2 * B, -1)}, ["y"])
    g = Graph((x,), (node,), node.outputs, (DimRange("B", 2, 6),))
    verify(g)
    text = str(g)
    assert text.splitlines()[0] == "graph(%x: f32[B,4]) dims(B: 2..6) {"
    assert "reshape[shape=[2*B, -1]] %x : f32[2*B,2]" in text
    assert parse_ir(text) == g


@pytest.mark.parametrize("text, message", [
    ("graph(%x: f32[B,3]) {\n  return %x\n}", "undeclared dim symbol 'B'"),
    ("graph(%x: f32[B,3]) dims(S: 1..4) {\n  return %x\n}", "undeclared dim symbol 'B'"),
    ("graph(%x: f32[B,3]) dims(B: 0..4) {\n  return %x\n}", "min 0"),
    ("graph(%x: f32[B,3]) dims(B: 5..4) {\n  return %x\n}", "more than max"),
    ("graph(%x: f32[B,3]) dims(B: 1..4, B: 1..4) {\n  return %x\n}", "declared twice"),
    ("graph(%x: f32[B,3]) dims(B: 1..4 %8) {\n  return %x\n}", "no multiple of 8"),
    ("graph(%x: f32[B,3]) dims(B: 1..x) {\n  return %x\n}", "whole number bound"),
    ("graph(%x: f32[B,3]) dims(graph: 1..4) {\n  return %x\n}", "must be an identifier"),
    ("graph(%x: f32[-B,3]) dims(B: 1..4) {\n  return %x\n}", "negative"),
    ("graph(%x: f32[B**2,3]) dims(B: 1..4) {\n  return %x\n}", "unexpected"),
    ("graph(%x: f32[B//B,3]) dims(B: 1..4) {\n  return %x\n}", "positive integer constant"),
    ("graph(%x: f32[" + "(" * 40 + "B" + ")" * 40 + ",3]) dims(B: 1..4) {\n  return %x\n}",
     "more than"),
    ("graph(%x: f32[B*99999999999999999999,3]) dims(B: 1..4) {\n  return %x\n}", "int64"),
    ("graph(%x: f32[B,3]) dims(B: 1..4) {\n  %1 = reshape[shape=[Q, -1]] %x : f32[B,3]\n"
     "  return %1\n}", "undeclared dim symbol 'Q'"),
])
def test_parser_rejects_bad_dims(text, message):
    with pytest.raises(IRParseError, match=message):
        parse_ir(text)


def test_parse_error_points_at_the_dim():
    with pytest.raises(IRParseError) as info:
        parse_ir("graph(%x: f32[B,3]) dims(B: 1..4) {\n  %1 = relu %x : f32[B,Q]\n  return %1\n}")
    assert info.value.line == 2 and info.value.column == 24  # at Q


# --- verifier ------------------------------------------------------------------------------------


def test_verifier_checks_symbolic_types():
    x = Value("x", TensorType((B, 4), "f32"))
    wrong = Node("relu", (x,), (Value("y", TensorType((2 * B, 4), "f32")),), Attrs({}))
    with pytest.raises(IRVerificationError, match="inference gives"):
        verify(Graph((x,), (wrong,), wrong.outputs, (DimRange("B"),)))
    right = ops.build_node("relu", [x], {}, ["y"])
    verify(Graph((x,), (right,), right.outputs, (DimRange("B"),)))
    with pytest.raises(IRVerificationError, match="symbol B is used .* not declared"):
        verify(Graph((x,), (right,), right.outputs))
    with pytest.raises(IRVerificationError, match="declared twice"):
        verify(Graph((x,), (right,), right.outputs, (DimRange("B"), DimRange("B", 1, 3))))


def test_verifier_accepts_equal_forms_of_a_dim():
    x = Value("x", TensorType((S,), "f32"))
    # slice to S with step 2: inference says floor((S + 1)/2); the declared ceil form is equal
    node = Node("slice", (x,), (Value("y", TensorType((symdims.ceildiv(S, 2),), "f32")),),
                ops.complete_attrs(ops.get("slice"), {"dim": 0, "start": 0, "end": S, "step": 2}))
    verify(Graph((x,), (node,), node.outputs, (DimRange("S"),)))


# --- shape inference per op family ---------------------------------------------------------------


def f32(*shape):
    return TensorType(shape, "f32")


def i64(*shape):
    return TensorType(shape, "i64")


def _infer(op, ins, attrs):
    opdef = ops.get(op)
    return ops.infer_types(opdef, ins, ops.complete_attrs(opdef, attrs))


# (op, input types, attrs, expected output shapes written by hand)
INFERENCE = [
    ("add", [f32(B, 3), f32(3)], {}, [(B, 3)]),
    ("add", [f32(B, 1), f32(1, B)], {}, [(B, B)]),
    ("mul", [f32(B, S, 4), f32(B, 1, 4)], {}, [(B, S, 4)]),
    ("where", [TensorType((B, 1), "bool"), f32(B, 3), f32(3)], {}, [(B, 3)]),
    ("relu", [f32(B, 3)], {}, [(B, 3)]),
    ("matmul", [f32(B, S, 8), f32(8, 4)], {}, [(B, S, 4)]),
    ("matmul", [f32(B, S, 8), f32(B, 8, S)], {}, [(B, S, S)]),
    ("linear", [f32(B, S, 8), f32(4, 8), f32(4)], {}, [(B, S, 4)]),
    ("conv2d", [f32(B, 3, 32, 32), f32(8, 3, 3, 3)], {"stride": (2, 2), "padding": (1, 1)},
     [(B, 8, 16, 16)]),
    ("conv2d", [f32(B, 3, S, S), f32(8, 3, 3, 3)], {"stride": (2, 2), "padding": (1, 1)},
     [(B, 8, sympy.floor((S - 1) / 2) + 1, sympy.floor((S - 1) / 2) + 1)]),
    ("max_pool2d", [f32(B, 3, S, 9)], {"kernel": (2, 2), "stride": (2, 2)},
     [(B, 3, sympy.floor(S / 2), 4)]),
    ("avg_pool2d", [f32(B, 3, S, S)], {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1)},
     [(B, 3, S, S)]),
    ("adaptive_avg_pool2d", [f32(B, 3, S, S)], {"output_size": (1, 1)}, [(B, 3, 1, 1)]),
    ("reshape", [f32(B, 3, 4)], {"shape": (B, -1)}, [(B, 12)]),
    ("reshape", [f32(B, 3, 4)], {"shape": (-1, 4)}, [(3 * B, 4)]),
    ("reshape", [f32(B, S, 4)], {"shape": (B * S, 4)}, [(B * S, 4)]),
    ("reshape", [f32(B, S, 4)], {"shape": (-1, 2, S)}, [(2 * B, 2, S)]),
    ("permute", [f32(B, 3, S)], {"dims": (2, 0, 1)}, [(S, B, 3)]),
    ("unsqueeze", [f32(B, 3)], {"dim": 0}, [(1, B, 3)]),
    ("squeeze", [f32(B, 1, 3)], {"dims": (1,)}, [(B, 3)]),
    ("expand", [f32(B, 1)], {"shape": (-1, 5)}, [(B, 5)]),
    ("expand", [f32(1, 3)], {"shape": (B, 3)}, [(B, 3)]),
    ("slice", [f32(B, 8)], {"dim": 1, "start": 2, "end": 5}, [(B, 3)]),
    ("slice", [f32(B, 8)], {"dim": 0, "start": 0, "end": B}, [(B, 8)]),
    ("slice", [f32(B, 8)], {"dim": 0, "start": 1, "end": 2**63 - 1}, [(B - 1, 8)]),
    ("slice", [f32(B, 8)], {"dim": 0, "start": -1, "end": 2**63 - 1}, [(1, 8)]),
    ("slice", [f32(S, 8)], {"dim": 0, "start": 0, "end": S, "step": 3},
     [(sympy.floor((S + 2) / 3), 8)]),
    ("select", [f32(B, 8)], {"dim": 0, "index": -1}, [(8,)]),
    ("select", [f32(B, 8)], {"dim": 1, "index": 3}, [(B,)]),
    ("split", [f32(B, 8)], {"sizes": (3, 5), "dim": 1}, [(B, 3), (B, 5)]),
    ("split", [f32(S, 2)], {"sizes": (1, S - 1), "dim": 0}, [(1, 2), (S - 1, 2)]),
    ("cat", [f32(B, 3), f32(B, 4)], {"dim": 1}, [(B, 7)]),
    ("cat", [f32(B, 3), f32(S, 3)], {"dim": 0}, [(B + S, 3)]),
    ("sum", [f32(B, 3, 4)], {"dims": (0,)}, [(3, 4)]),
    ("mean", [f32(B, 3, 4)], {"dims": (1, 2), "keepdim": True}, [(B, 1, 1)]),
    ("amax", [f32(B, S)], {"dims": (-1,)}, [(B,)]),
    ("argmax", [f32(B, 3)], {"dim": 0}, [(3,)]),
    ("topk", [f32(B, 5)], {"k": 2, "dim": 1}, [(B, 2), (B, 2)]),
    ("topk", [f32(B, 5)], {"k": 1, "dim": 0}, [(1, 5), (1, 5)]),
    ("cumsum", [f32(B, 3)], {"dim": 0}, [(B, 3)]),
    ("softmax", [f32(B, S)], {"dim": -1}, [(B, S)]),
    ("log_softmax", [f32(B, S)], {"dim": 0}, [(B, S)]),
    ("layer_norm", [f32(B, S, 8), f32(8), f32(8)], {}, [(B, S, 8)]),
    ("batch_norm", [f32(B, 3, 4, 4), f32(3), f32(3), f32(3), f32(3)], {}, [(B, 3, 4, 4)]),
    ("embedding", [f32(10, 4), i64(B, S)], {}, [(B, S, 4)]),
    ("gather", [f32(B, 4), i64(B, 2)], {"dim": 1}, [(B, 2)]),
    ("index", [f32(B, 5), i64(S)], {"dim": 1}, [(B, S)]),
    ("scaled_dot_product_attention", [f32(B, 2, S, 8)] * 3, {"is_causal": True}, [(B, 2, S, 8)]),
    ("scaled_dot_product_attention",
     [f32(B, 2, S, 8), f32(B, 2, S, 8), f32(B, 2, S, 4), TensorType((B, 1, S, S), "bool")], {},
     [(B, 2, S, 4)]),
    ("pad", [f32(B, 3, S)], {"pads": (1, 2)}, [(B, 3, S + 3)]),
    ("pad", [f32(B, 3, 4, 4)], {"pads": (1, 1, 1, 1), "mode": "reflect"}, [(B, 3, 6, 6)]),
    ("arange", [], {"start": 0, "end": S, "dtype": "i64"}, [(S,)]),
    ("arange", [], {"start": 1, "end": S + 1, "step": 2, "dtype": "i64"},
     [(sympy.floor((S + 1) / 2),)]),
    ("full", [], {"shape": (B, 3), "value": 0.0, "dtype": "f32"}, [(B, 3)]),
    ("quantize", [f32(B, S, 8)], {"scale": 0.5, "zero_point": 0}, [(B, S, 8)]),
    ("dynamic_quantize", [f32(B, S, 8)], {"mode": "row"}, [(B, S, 8), (B, S, 1)]),
    ("linear_int4", [f32(B, S, 8), TensorType((4, 4), "u8"), f32(4, 1)],
     {"group_size": 8, "has_bias": False}, [(B, S, 4)]),
]


@pytest.mark.parametrize("op, ins, attrs, want", INFERENCE,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(INFERENCE)])
def test_symbolic_inference(op, ins, attrs, want):
    got = _infer(op, ins, attrs)
    assert [t.shape for t in got] == [tuple(symdims.normalize(d) for d in w) for w in want]


@pytest.mark.parametrize("op, ins, attrs, want", INFERENCE,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(INFERENCE)])
def test_symbolic_inference_matches_static_inference(op, ins, attrs, want):
    """At each size, the symbolic result with the size put in equals what the static rule
    gives for static inputs of that size."""
    got = _infer(op, ins, attrs)
    for b, s in [(1, 7), (2, 8), (3, 13), (8, 32)]:
        values = {"B": b, "S": s}
        static_ins = [symdims.substitute(t, values) for t in ins]
        static_attrs = {k: symdims.substitute(v, values) for k, v in attrs.items()}
        want_static = _infer(op, static_ins, static_attrs)
        assert [symdims.substitute(t, values) for t in got] == list(want_static)


NEEDS_STATIC = [
    ("conv2d", [f32(1, B, 8, 8), f32(8, 3, 3, 3)], {}, "conv2d needs a static size"),
    ("max_pool2d", [f32(B, 3, S, S)], {"kernel": (3, 3), "stride": (2, 2), "ceil_mode": True},
     "ceil_mode needs a static size"),
    ("slice", [f32(B, 8)], {"dim": 0, "start": 0, "end": 2}, "slice needs a static size"),
    ("select", [f32(B, 8)], {"dim": 0, "index": 3}, "select needs a static size"),
    ("squeeze", [f32(B, 1, 3)], {"dims": (0,)}, "squeeze needs a static size"),
    ("topk", [f32(B, 3)], {"k": 2, "dim": 0}, "topk needs a static size"),
    ("pad", [f32(B, 3, S, S)], {"pads": (1, 1, 1, 1), "mode": "reflect"},
     "needs a static size"),
    ("arange", [], {"start": 0, "end": S - 4, "dtype": "i64"}, "needs a static size"),
    ("linear_int4", [f32(B, S), TensorType((4, 4), "u8"), f32(4, 1)],
     {"group_size": 8, "has_bias": False}, "linear_int4 needs a static size"),
]


@pytest.mark.parametrize("op, ins, attrs, message", NEEDS_STATIC)
def test_ops_that_need_static_sizes_say_so(op, ins, attrs, message):
    with pytest.raises(OpTypeError, match=message):
        _infer(op, ins, attrs)


@pytest.mark.parametrize("op, ins, attrs, message", [
    ("add", [f32(B, 3), f32(S, 3)], {}, "do not broadcast"),
    ("add", [f32(B, 3), f32(2 * B, 3)], {}, "do not broadcast"),
    ("matmul", [f32(B, S), f32(B, 3)], {}, "inner dimensions differ"),
    ("linear", [f32(B, S), f32(4, 8)], {}, "does not match weight"),
    ("reshape", [f32(B, 3, 4)], {"shape": (B, 5, -1)}, "does not divide"),
    ("reshape", [f32(B, S, 4)], {"shape": (-1, 8)}, "does not divide"),
    ("reshape", [f32(B, 4)], {"shape": (B, 5)}, "cannot reshape"),
    ("split", [f32(B, 8)], {"sizes": (1, 2), "dim": 0}, "do not sum"),
    ("cat", [f32(B, 3), f32(S, 3)], {"dim": 1}, "differ"),
    ("layer_norm", [f32(B, S), f32(8), f32(8)], {}, "do not match"),
    ("expand", [f32(B, 2)], {"shape": (B, 3)}, "cannot expand"),
])
def test_symbolic_shapes_that_do_not_fit(op, ins, attrs, message):
    with pytest.raises(OpTypeError, match=message):
        _infer(op, ins, attrs)


# --- binding -------------------------------------------------------------------------------------


BIND_TEXT = """graph(%x: f32[B,3], %y: f32[B,S], %z: f32[2*B]) dims(B: 1..8, S: 2..64 %2) {
  %1 = sum[dims=[1], keepdim=false] %y : f32[B]
  return %1
}"""


def test_bind_reads_symbols_from_input_shapes():
    g = parse_ir(BIND_TEXT)
    assert symdims.bind(g, [(3, 3), (3, 10), (6,)]) == {"B": 3, "S": 10}


@pytest.mark.parametrize("shapes, message", [
    ([(9, 3), (9, 10), (18,)], r"input %x dim 0 is 9, outside the range of B: 1\.\.8"),
    ([(0, 3), (0, 10), (0,)], "outside the range of B"),
    ([(3, 3), (3, 11), (6,)], r"input %y dim 1 is 11, outside the range of S: 2\.\.64 %2"),
    ([(3, 3), (4, 10), (6,)], r"input %y dim 0 is 4, but input %x dim 0 gave B = 3"),
    ([(3, 4), (3, 10), (6,)], "input %x dim 1 must be 3, got 4"),
    ([(3, 3), (3, 10), (7,)], r"input %z dim 0 must be 2\*B = 6, got 7"),
    ([(3, 3, 1), (3, 10), (6,)], "input %x must have rank 2"),
    ([(3, 3), (3, 10)], "takes 3 inputs"),
])
def test_bind_errors(shapes, message):
    g = parse_ir(BIND_TEXT)
    with pytest.raises(DimError, match=message):
        symdims.bind(g, shapes)


def test_dim_error_is_an_input_error_and_the_executor_raises_it():
    g = parse_ir(BIND_TEXT)
    assert issubclass(DimError, InputError) and issubclass(DimError, ValueError)
    x, y, z = np.zeros((3, 3), np.float32), np.zeros((4, 10), np.float32), np.zeros(6, np.float32)
    with pytest.raises(DimError, match="both are B"):
        run_reference(g, [x, y, z])


def test_bind_refuses_a_symbol_no_input_gives():
    text = """graph(%x: f32[B,3]) dims(B: 1..8, S: 1..8) {
  %1 = full[shape=[S], value=1.0, dtype="f32"] : f32[S]
  return %1
}"""
    with pytest.raises(DimError, match="symbol S is not the size of any input dim"):
        symdims.bind(parse_ir(text), [(2, 3)])


def test_specialize_caches_per_binding():
    g = parse_ir(BIND_TEXT)
    a = symdims.specialize(g, {"B": 2, "S": 4})
    assert symdims.specialize(g, {"S": 4, "B": 2}) is a
    assert a.dims == () and not a.symbolic
    assert [v.type.shape for v in a.inputs] == [(2, 3), (2, 4), (4,)]
    for n in range(1, symdims.SPECIALIZE_CACHE + 2):
        symdims.specialize(g, {"B": 1, "S": 2 * n})
    assert len(g.__dict__["_fxforge_specialized"]) == symdims.SPECIALIZE_CACHE


# --- execution at several sizes ------------------------------------------------------------------


def _cnn(n, h):
    """conv -> batch norm -> relu -> max pool -> cat -> split -> global pool -> linear ->
    softmax, for a batch `n` and image size `h` (ints, or symbols)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = Value("x", TensorType((n, 3, h, h), "f32"))
    w = b.const(rng.standard_normal((6, 3, 3, 3)).astype(np.float32))
    bias = b.const(rng.standard_normal(6).astype(np.float32))
    c = b("conv2d", [x, w, bias], stride=(2, 2), padding=(1, 1))
    stats = [b.const((rng.random(6) + 0.5).astype(np.float32)) for _ in range(4)]
    r = b("relu", [b("batch_norm", [c, *stats])])
    p = b("max_pool2d", [r], kernel=(2, 2), stride=(2, 2))
    s1, _ = b("split", [b("cat", [p, p], dim=1)], n_out=2, sizes=(4, 8), dim=1)
    g = b("adaptive_avg_pool2d", [s1], output_size=(1, 1))
    flat = b("reshape", [g], shape=(n, -1))
    lw = b.const(rng.standard_normal((5, 4)).astype(np.float32))
    sm = b("softmax", [b("linear", [flat, lw])], dim=-1)
    return Graph((x,), tuple(b.nodes), (sm, p))


def _attention(n, s):
    """ids -> embedding + positions (arange) -> q/k/v linears -> heads -> causal attention ->
    merge heads -> layer norm; and a slice dropping the last position."""
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    ids = Value("ids", TensorType((n, s), "i64"))
    table = b.const(rng.standard_normal((16, 8)).astype(np.float32))
    pos_table = b.const(rng.standard_normal((64, 8)).astype(np.float32))
    positions = b("arange", [], start=0, end=s, dtype="i64")
    h = b("add", [b("embedding", [table, ids]), b("embedding", [pos_table, positions])])
    heads = []
    for _ in "qkv":
        w = b.const(rng.standard_normal((8, 8)).astype(np.float32) * 0.3)
        t = b("reshape", [b("linear", [h, w])], shape=(n, s, 2, 4))
        heads.append(b("permute", [t], dims=(0, 2, 1, 3)))
    a = b("scaled_dot_product_attention", heads, is_causal=True)
    a = b("reshape", [b("permute", [a], dims=(0, 2, 1, 3))], shape=(n, s, -1))
    ln_w = b.const(np.ones(8, np.float32))
    ln_b = b.const(np.zeros(8, np.float32))
    out = b("layer_norm", [a, ln_w, ln_b])
    head = b("slice", [out], dim=1, start=0, end=s - 1)
    return Graph((ids,), tuple(b.nodes), (out, head))


def _with_dims(graph, *ranges):
    g = Graph(graph.inputs, graph.nodes, graph.outputs, ranges)
    verify(g)
    return g


def test_symbolic_cnn_matches_static_graphs_at_each_size():
    sym_graph = _with_dims(_cnn(B, S), DimRange("B", 1, 8), DimRange("S", 4, 32))
    assert str(sym_graph).splitlines()[0] == \
        "graph(%x: f32[B,3,S,S]) dims(B: 1..8, S: 4..32) {"
    assert parse_ir(str(sym_graph)) == sym_graph
    rng = np.random.default_rng(2)
    for n, h in [(1, 8), (3, 9), (8, 16), (2, 31)]:
        x = rng.standard_normal((n, 3, h, h)).astype(np.float32)
        static = _cnn(n, h)
        verify(static)
        want = run_reference(static, [x])
        got = run_reference(sym_graph, [x])
        assert [a.shape for a in got] == [a.shape for a in want]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_symbolic_attention_matches_static_graphs_at_each_size():
    sym_graph = _with_dims(_attention(B, S), DimRange("B", 1, 8), DimRange("S", 2, 64))
    assert parse_ir(str(sym_graph)) == sym_graph
    program = TorchProgram(sym_graph, torch.device("cpu"))
    rng = np.random.default_rng(3)
    for n, s in [(1, 2), (3, 5), (8, 17), (3, 5)]:
        ids = rng.integers(0, 16, (n, s))
        static = _attention(n, s)
        verify(static)
        want = run_reference(static, [ids])
        got = run_reference(sym_graph, [ids])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        for _ in range(2):  # the second call takes the variant's generated straight-line code
            torch_out = program([torch.from_numpy(ids)])
            for a, b in zip(torch_out, want, strict=True):
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-5)
    with pytest.raises(DimError, match="outside the range of S: 2..64"):
        run_reference(sym_graph, [np.zeros((2, 65), np.int64)])
    with pytest.raises(DimError, match="S: 2..64"):
        program([torch.zeros((2, 1), dtype=torch.int64)])


# --- passes on graphs with a symbolic batch ------------------------------------------------------


FLOAT_PASSES = sorted(set(passes.PASSES) - {"quantize", "quantize-int4", "to-fp16"})
SIZES = (1, 3, 8)


def _check_at_sizes(before, after):
    verify(after)
    assert after.dims == before.dims
    assert [v.type for v in after.inputs] == [v.type for v in before.inputs]
    for b in SIZES:
        inputs = random_inputs(before, b, {"B": b})
        assert all(x.shape[0] == b for x in inputs)
        for expected, got in zip(run_reference(before, inputs), run_reference(after, inputs),
                                 strict=True):
            assert got.shape == expected.shape and got.dtype == expected.dtype
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=max(EXAMPLES // 2, 10), **SETTINGS)
@given(graph=random_graphs(symbolic_batch=True, zero_channel_prob=0.4, heads=True)
       | random_graphs(symbolic_batch=True))
def test_random_symbolic_graphs_round_trip_and_match_static(graph):
    assert graph.dims == (DimRange("B", 1, 8),)
    assert all(v.type.shape[0] == B for v in graph.inputs)
    assert parse_ir(str(graph)) == graph and str(parse_ir(str(graph))) == str(graph)
    for b in SIZES:
        inputs = random_inputs(graph, 0, {"B": b})
        static = symdims.substitute(graph, {"B": b})
        verify(static)
        for got, want in zip(run_reference(graph, inputs), run_reference(static, inputs),
                             strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", FLOAT_PASSES)
@settings(max_examples=max(EXAMPLES // 2, 10), **SETTINGS)
@given(graph=random_graphs(symbolic_batch=True, zero_channel_prob=0.4, heads=True)
       | random_graphs(symbolic_batch=True))
def test_each_pass_preserves_outputs_with_symbolic_batch(name, graph):
    after, _ = passes.PASSES[name](graph)
    _check_at_sizes(graph, after)


@settings(max_examples=2 * EXAMPLES, **SETTINGS)
@given(graph=random_graphs(symbolic_batch=True, zero_channel_prob=0.5, max_ops=14, heads=True)
       | random_graphs(symbolic_batch=True, zero_channel_prob=0.3, max_ops=14))
def test_cpu_pipeline_preserves_outputs_with_symbolic_batch(graph):
    after, _ = PassManager(TARGET_INFO["cpu"].pipeline).run(graph)
    _check_at_sizes(graph, after)
    assert not any(n.op == "batch_norm" for n in after.nodes)
    assert after.symbolic


def test_pipeline_keeps_dims_of_a_pass_that_drops_them():
    g = _with_dims(_cnn(B, 8), DimRange("B", 1, 4))

    def forgetful(graph):
        return Graph(graph.inputs, graph.nodes, graph.outputs), {}

    after, _ = PassManager([forgetful, "fold-batchnorm"]).run(g)
    assert after.dims == g.dims
    assert not any(n.op == "batch_norm" for n in after.nodes)


def test_fold_constants_keeps_a_symbolic_source():
    text = """graph(%x: f32[S]) dims(S: 1..8) {
  %1 = arange[start=0.0, end=S, step=1.0, dtype="f32"] : f32[S]
  %2 = add %x, %1 : f32[S]
  return %2
}"""
    g = parse_ir(text)
    after, stats = passes.PASSES["fold-constants"](g)
    assert stats["folded"] == 0 and after == g
    np.testing.assert_array_equal(run_reference(g, [np.ones(5, np.float32)])[0],
                                  np.arange(1, 6, dtype=np.float32))


def test_random_inputs_static_default_unchanged():
    g = _cnn(2, 8)
    assert [x.shape for x in random_inputs(g, 0)] == [(2, 3, 8, 8)]


LINEAR_TEXT = """graph(%x: f32[B,S,32]) dims(B: 1..8, S: 1..16) {
  %w = const f32[24,32] @?
  %b = const f32[24] @?
  %y = linear %x, %w, %b : f32[B,S,24]
  %r = relu %y : f32[B,S,24]
  return %r
}"""


def _linear_graph(n, s):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 32)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    x = Value("x", TensorType((n, s, 32), "f32"))
    nodes = [Node("const", (), (Value("w", TensorType((24, 32), "f32")),),
                  Attrs({"value": ConstData(w)})),
             Node("const", (), (Value("b", TensorType((24,), "f32")),),
                  Attrs({"value": ConstData(bias)}))]
    nodes.append(ops.build_node("linear", [x, nodes[0].output, nodes[1].output], {}, ["y"]))
    nodes.append(ops.build_node("relu", [nodes[-1].output], {}, ["r"]))
    return Graph((x,), tuple(nodes), nodes[-1].outputs)


def test_dynamic_quantization_of_a_symbolic_graph_matches_the_static_one():
    sym_graph = _with_dims(_linear_graph(B, S), DimRange("B", 1, 8), DimRange("S", 1, 16))
    assert str(sym_graph).splitlines()[0] == LINEAR_TEXT.splitlines()[0]
    quantized, stats = passes.PASSES["quantize"](sym_graph)
    verify(quantized)
    assert stats["quantized"] == 1 and quantized.dims == sym_graph.dims
    qlinear = next(n for n in quantized.nodes if n.op.startswith("q"))
    assert qlinear.outputs[0].type.shape[:2] == (B, S)
    assert parse_ir(str(quantized), constants={
        n.output.name: n.attrs["value"].array for n in quantized.nodes if n.op == "const"}) \
        == quantized
    rng = np.random.default_rng(5)
    for n, s in [(1, 1), (3, 7), (8, 16)]:
        x = rng.standard_normal((n, s, 32)).astype(np.float32)
        static_q, _ = passes.PASSES["quantize"](_linear_graph(n, s))
        np.testing.assert_array_equal(run_reference(quantized, [x])[0],
                                      run_reference(static_q, [x])[0])


@pytest.mark.parametrize("target", ["cpu-int8", "cuda-fp16", "cuda-int4"])
@settings(max_examples=max(EXAMPLES // 4, 5), **SETTINGS)
@given(graph=random_graphs(symbolic_batch=True, zero_channel_prob=0.4, heads=True)
       | random_graphs(symbolic_batch=True, max_ops=14))
def test_target_pipelines_on_symbolic_graphs_match_them_on_static_graphs(target, graph):
    """quantize (dynamic), to-fp16, quantize-int4 and layout-nhwc change the numbers by design:
    the symbolic graph through a target's pipeline must compute what the static graph of each
    size computes through it."""
    pipeline = TARGET_INFO[target].pipeline
    after, _ = PassManager(pipeline).run(graph)
    verify(after)
    assert after.dims == graph.dims
    for b in (1, 3):
        static_after, _ = PassManager(pipeline).run(symdims.substitute(graph, {"B": b}))
        inputs = random_inputs(graph, b, {"B": b})
        for got, want in zip(run_reference(after, inputs), run_reference(static_after, inputs),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- hostile text around dims --------------------------------------------------------------------

DIM_PIECES = ("B", "S", "Q", "*", "//", "+", "-", "(", ")", "((((", "))))", "..", "%8", "%0",
              ":", ",", "dims(", "dims(B: 1..4)", "B: 1..4", "9" * 25, "0", "-1", "2**", "/",
              "B*" * 40, "(" * 30, ")" * 30, "1e5", "nan", "_", "B.x", " ", "\t")


@st.composite
def _mutated_symbolic_texts(draw):
    text = draw(st.sampled_from(ROUND_TRIP_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + draw(st.sampled_from(DIM_PIECES)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 6)):]
    return text


@settings(max_examples=4 * EXAMPLES, **SETTINGS)
@given(text=_mutated_symbolic_texts())
def test_fuzz_parser_on_mutated_symbolic_texts(text):
    """The parser's contract holds for dims too: a located IRParseError, or a graph that
    verifies (or fails verification by name) and prints and parses back to itself."""
    try:
        graph = parse_ir(text)
    except IRParseError as e:
        assert re.match(rf"^line {e.line}: column {e.column}: ", str(e)), str(e)
        assert len(str(e)) < 1000
        return
    try:
        verify(graph)
    except IRVerificationError as e:
        assert re.match(r"^(node \d+ \(|graph: )", str(e)), str(e)
        return
    assert parse_ir(str(graph)) == graph and str(parse_ir(str(graph))) == str(graph)


def test_a_size_that_the_ranges_let_go_negative_is_a_dim_error():
    text = """graph(%x: f32[S]) dims(S: 1..8) {
  %1 = full[shape=[S - 2], value=1.0, dtype="f32"] : f32[S - 2]
  return %1
}"""
    g = parse_ir(text)
    verify(g)
    assert run_reference(g, [np.arange(5, dtype=np.float32)])[0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(DimError, match="with S = 1 a size of the graph is negative"):
        run_reference(g, [np.zeros(1, np.float32)])


def test_random_inputs_need_sizes_for_symbolic_dims():
    g = _with_dims(_cnn(B, 8), DimRange("B", 1, 4))
    with pytest.raises(ValueError, match="give their sizes"):
        random_inputs(g, 0)


def test_every_op_table_row_with_a_symbolic_leading_dim():
    """Every row of the per-op table (tests/test_ops.py) again, with each input's dim 0 that
    equals the first input's made the symbol B: inference either refuses with an OpTypeError
    (a size it needs static, or one that no longer matches), or gives types that are the static
    row's at B = that size, and the symbolic graph then runs on the reference exactly as the
    static one does."""
    from test_ops import ROWS, _prepare

    outcomes = {"ran": 0, "refused": 0}
    for r in ROWS:
        inputs, _, node, static_graph = _prepare(r)
        if not node.inputs or node.inputs[0].type.ndim == 0 or node.inputs[0].type.shape[0] < 1:
            continue
        n = node.inputs[0].type.shape[0]
        ins = tuple(Value(v.name, TensorType(
            tuple(B if (i == 0 and d == n) else d for i, d in enumerate(v.type.shape)),
            v.type.dtype, v.type.quant)) for v in node.inputs)
        try:
            types = ops.infer_types(ops.get(node.op), [v.type for v in ins], node.attrs)
        except OpTypeError:
            outcomes["refused"] += 1
            continue
        assert [symdims.substitute(t, {"B": n}) for t in types] == \
            [v.type for v in node.outputs], r.id
        outs = tuple(Value(v.name, t) for v, t in zip(node.outputs, types))
        graph = Graph(ins, (Node(node.op, ins, outs, node.attrs),), outs, (DimRange("B", 1, 64),))
        verify(graph)
        arrays = [t.numpy() for t in inputs]
        for got, want in zip(run_reference(graph, arrays), run_reference(static_graph, arrays),
                             strict=True):
            np.testing.assert_array_equal(got, want, err_msg=r.id)
        outcomes["ran"] += 1
    assert outcomes["ran"] >= 250 and outcomes["refused"] <= 30, outcomes


def test_example_sizes_lie_in_the_ranges():
    text = """graph(%x: f32[B,S,T,U]) dims(B: 1..128, S: 8..512 %8, T: 3..20 %5, U: 1..1) {
  return %x
}"""
    assert symdims.example_sizes(parse_ir(text)) == {"B": 2, "S": 8, "T": 5, "U": 1}


@pytest.mark.parametrize("target", ["cpu", "cpu-int8", "cuda-fp16", "cuda-int4"])
def test_pipelines_on_a_symbolic_sequence_length(target):
    """dim 1 symbolic (a sequence length): channel analysis must not take it for channels.
    cpu keeps the numbers (rtol 1e-4); the others must compute what their pipeline makes of
    the static graph of each size."""
    graph = _with_dims(_attention(B, S), DimRange("B", 1, 8), DimRange("S", 2, 64))
    pipeline = TARGET_INFO[target].pipeline
    after, _ = PassManager(pipeline).run(graph)
    verify(after)
    assert after.dims == graph.dims and after.symbolic
    rng = np.random.default_rng(6)
    for n, s in [(1, 2), (3, 9), (2, 33)]:
        ids = rng.integers(0, 16, (n, s))
        got = run_reference(after, [ids])
        if target == "cpu":
            want = run_reference(graph, [ids])
            tolerance = dict(rtol=1e-4, atol=1e-5)
        else:
            static_after, _ = PassManager(pipeline).run(_attention(n, s))
            want = run_reference(static_after, [ids])
            tolerance = dict(rtol=1e-5, atol=1e-6)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, **tolerance)


def _refuse_symbolic(graph):
    if graph.symbolic:
        raise RuntimeError("this pass refuses symbolic graphs")
    return graph


def test_a_failing_pass_on_a_symbolic_graph_leaves_a_reproducer_that_replays(tmp_path):
    from fxforge.debug.bundle import load_bundle, replay
    from fxforge.errors import PipelineError
    from fxforge.pipeline import DebugOptions

    graph = _with_dims(_cnn(B, S), DimRange("B", 1, 8), DimRange("S", 4, 32))
    manager = PassManager(["canonicalize", _refuse_symbolic],
                          DebugOptions(repro_dir=str(tmp_path)))
    with pytest.raises(PipelineError, match="reproducer: ") as info:
        manager.run(graph)
    bundle = load_bundle(info.value.bundle)
    assert bundle.graph.dims == graph.dims and bundle.graph.symbolic
    assert [a.shape for a in bundle.samples[0]] == [(2, 3, 4, 4)]  # B = 2, S = its min, 4
    assert replay(bundle, user_passes={"user:_refuse_symbolic": _refuse_symbolic}).reproduced


# --- ranges in inference (symdims.assume) --------------------------------------------------------


def test_known_ge_uses_ranges_only_within_assume():
    assert symdims.known_ge(64, S) is None and symdims.known_ge(S, 8) is None
    with symdims.assume([DimRange("S", 8, 64)]):
        assert symdims.known_ge(64, S) is True and symdims.known_ge(S, 8) is True
        assert symdims.known_ge(7, S) is False and symdims.known_ge(32, S) is None
        assert symdims.known_ge(2 * S - B, 16 - B) is True  # B has no range here: B >= 1
        assert symdims.known_ge(S * S, 64) is None  # not linear: positivity only
        with symdims.assume([DimRange("B", 1, 4)]):
            assert symdims.known_ge(S - B, 4) is True
        assert symdims.known_ge(S - B, 4) is None
    assert symdims.known_ge(64, S) is None


POSITIONS_TEXT = """graph(%ids: i64[2,S]) dims(S: 8..64) {
  %pos = arange[start=0.0, end=64.0, step=1.0, dtype="i64"] : i64[64]
  %row = unsqueeze[dim=0] %pos : i64[1,64]
  %p = slice[dim=1, start=0, end=S, step=1] %row : i64[1,S]
  %y = add %ids, %p : i64[2,S]
  return %y
}"""


def test_slicing_a_static_buffer_to_a_symbolic_length_needs_its_range():
    row = TensorType((1, 64), "i64")
    attrs = {"dim": 1, "start": 0, "end": S}
    with pytest.raises(OpTypeError, match="slice needs a static size"):
        _infer("slice", [row], attrs)
    with symdims.assume([DimRange("S", 8, 64)]):
        assert _infer("slice", [row], attrs)[0].shape == (1, S)
    with symdims.assume([DimRange("S", 8, 65)]), pytest.raises(OpTypeError, match="static"):
        _infer("slice", [row], attrs)
    g = parse_ir(POSITIONS_TEXT)
    verify(g)  # the verifier infers within the graph's ranges
    assert str(g) == POSITIONS_TEXT
    with pytest.raises(IRVerificationError, match="slice needs a static size"):
        verify(parse_ir(POSITIONS_TEXT.replace("S: 8..64", "S: 8..100")))
    after, _ = PassManager(TARGET_INFO["cpu"].pipeline).run(g)
    verify(after)
    for s in (8, 20, 64):
        ids = np.arange(2 * s).reshape(2, s)
        want = ids + np.arange(s)[None, :]
        np.testing.assert_array_equal(run_reference(g, [ids])[0], want)
        np.testing.assert_array_equal(run_reference(after, [ids])[0], want)
