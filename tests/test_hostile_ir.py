"""Hostile IR (issue #14, items 5 and 6): the parser's only exception is IRParseError, whose
message starts `line L: column C: `; the verifier's only exception is IRVerificationError, naming
the node and its op. Never a ValueError, RecursionError, OverflowError, TypeError or DTypeError
from deep inside, whatever the text or the attribute values.

First one regression test per reported example, then tests of each class of input behind them
(integers past int64, floats that overflow, nesting, absurd sizes, unicode, NUL bytes, long
lines, attributes of the wrong type), then hypothesis fuzzers: the parser on mutated printed
graphs and on arbitrary text, the verifier on graphs with hostile attribute values, ops and
types. A graph that verifies must also print and parse back to itself.

FXFORGE_PROPERTY_EXAMPLES (default 40) sets the examples per fuzzer, as in
test_pass_properties.py; `make test-long` runs more.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxforge import dtypes, ops
from fxforge.ir import Attrs, ConstData, Graph, Node, QuantParams, TensorType, Value
from fxforge.parser import IRParseError, parse_ir
from fxforge.printer import print_graph
from fxforge.shapes import MAX_ATTR_DEPTH, MAX_RANK
from fxforge.verify import IRVerificationError, verify

EXAMPLES = int(os.environ.get("FXFORGE_PROPERTY_EXAMPLES", "40"))
# every example is bounded in time: a parser or verifier that goes quadratic fails the deadline
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LOCATED = re.compile(r"^line (\d+): column (\d+): ")

MAIN = """\
graph(%x: f32[1,3,8,8]) {
  %c1 = const f32[4,3,3,3] @31d12ad953912e58
  %c2 = const f32[4] [0.5, -1.0, 0.0, 2.25]
  %v3 = conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1] %x, %c1, %c2 : \
f32[1,4,8,8]  # stem.conv (aten.conv2d.default)
  %v4 = clamp[min=0.0, max=6.0] %v3 : f32[1,4,8,8]
  %v5 = add %v4, %v3 : f32[1,4,8,8]
  %v6 = reshape[shape=[1, -1]] %v5 : f32[1,256]
  %v7, %v8 = split[sizes=[100, 156], dim=1] %v6 : f32[1,100], f32[1,156]
  %v9 = cat[dim=1] %v8, %v7 : f32[1,256]
  %v10 = slice[dim=1, start=3, end=-1, step=2] %v9 : f32[1,126]
  %v11 = quantize[scale=0.05, zero_point=-3] %v10 : i8[1,126]{scale=[0.05], zero_point=[-3], \
axis=none}
  %v12 = reshape[shape=[-1]] %v11 : i8[126]{scale=[0.05], zero_point=[-3], axis=none}
  %v13 = dequantize[scale=0.05, zero_point=-3] %v12 : f32[126]
  %v14 = arange[start=0.0, end=126.0, step=1.0, dtype="f32"] : f32[126]
  %v15 = mul %v13, %v14 : f32[126]
  %v16 = fused_elementwise[steps=[{"op": "add", "args": [0, 1], "attrs": {}}, {"op": "relu", \
"args": [2], "attrs": {}}]] %v15, %v14 : f32[126]
  %v17 = full[shape=[126], value=0.5, dtype="f32"] : f32[126]
  %v18 = maximum %v16, %v17 : f32[126]  # head (aten.maximum)
  return %v18, %v11
}"""

MISC = """\
graph(%x: f32[2,3], %q: i8[4]{scale=[0.5], zero_point=[0], axis=none}) {
  %w = const f32[3] [1.0, 2.0, 3.0]  # bn (buffer)
  %n = const f32[] nan
  %i = const i64[2] [-9223372036854775808, 9223372036854775807]
  %t = const bool[] true
  %h = const f16[] 65504.0
  %e = const bf16[4] @0123456789abcdef
  %a = clamp[min=none, max=6.0] %x : f32[2,3]  # layer1.0-x_y
  %b = gelu[approximate="tanh"] %a : f32[2,3]  # "new\\nline #1" ("src \\"quoted\\")")
  %c = batch_norm[eps=1e-05] %b, %w, %w, %w, %w : f32[2,3]  # (aten.batch_norm)
  %s = softmax[dim=-1] %c : f32[2,3]
  %p = permute[dims=[1, 0]] %s : f32[3,2]
  %u = unsqueeze[dim=0] %p : f32[1,3,2]
  %m = sum[dims=[1], keepdim=false] %u : f32[1,2]
  %t1, %t2 = torch_op[target="aten.topk.default", args=[1, -2, 2.5, 1e+300, nan, -inf, true, \
none, "q\\"uo#", [], [1, [2, [3.0]]], {}], kwargs={"k": {"nested": [none, "x"]}, "": 0}] %c, %q \
: f32[2,3], i8[4]{scale=[0.5, 0.25, 0.125, 1.0], zero_point=[1, -1, 0, 2], axis=0}
  %r = mul %t1, %n : f32[2,3]
  return %r, %t2, %m, %i, %t, %h, %e
}"""

SPLIT = """\
graph(%x: f32[2,6,4,4]) {
  %a, %b, %c = split[sizes=[1, 2, 3], dim=1] %x : f32[2,1,4,4], f32[2,2,4,4], f32[2,3,4,4]
  %d = cat[dim=1] %c, %a, %b : f32[2,6,4,4]
  %e = max_pool2d[kernel=[2, 2], stride=[2, 2], padding=[0, 0], ceil_mode=false, \
dilation=[1, 1]] %d : f32[2,6,2,2]
  %f = expand[shape=[3, -1, -1, -1, -1]] %e : f32[3,2,6,2,2]
  return %f, %b
}"""

SEEDS = (MAIN, MISC, SPLIT)
SEED_GRAPHS = tuple(parse_ir(text) for text in SEEDS)
X = Value("x", TensorType((2, 2), "f32"))


def one_line(body: str, inputs: str = "%x: f32[2,2]", ret: str = "%y") -> str:
    """A graph whose statement `body` is line 2."""
    return f"graph({inputs}) {{\n  {body}\n  return {ret}\n}}"


def parse_fails(text: str, line: int, fragment: str = "", column: int | None = None
                ) -> IRParseError:
    """parse_ir(text) raises IRParseError at `line` (and `column`), saying `fragment`."""
    with pytest.raises(IRParseError) as info:
        parse_ir(text)
    error, message = info.value, str(info.value)
    where = LOCATED.match(message)
    assert where is not None, message
    assert (error.line, error.column) == (int(where[1]), int(where[2]))
    assert error.line == line, message
    if column is not None:
        assert error.column == column, message
    assert fragment in message, message
    assert len(message) < 1000, "a message must quote a window of a long line, not all of it"
    return error


def column_of(text: str, fragment: str, line: int | None = None) -> int:
    """1-based column of `fragment` in line `line` of `text` (by default the first that
    holds it)."""
    lines = text.split("\n")
    for raw in lines if line is None else [lines[line - 1]]:
        if fragment in raw:
            return raw.index(fragment) + 1
    raise AssertionError(fragment)


def verify_fails(graph: Graph, index: int | None, op: str | None, *fragments: str) -> str:
    """verify(graph) raises IRVerificationError naming node `index` and its `op` (or, with
    index None, the graph), and saying each of `fragments`."""
    with pytest.raises(IRVerificationError) as info:
        verify(graph)
    message = str(info.value)
    if index is None:
        assert message.startswith("graph: "), message
    else:
        assert message.startswith(f"node {index} ("), message
        assert f" = {op} at " in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def single(op: str, attrs: dict[str, Any], out: TensorType, inputs=(X,)) -> Graph:
    """x -> one node of `op` with these attributes (not completed, not checked) -> %y."""
    node = Node(op, tuple(inputs), (Value("y", out),), Attrs(attrs))
    return Graph((X,), (node,), (node.output,))


# ------------------------------------------------------------------------------------------------
# The reported examples


def test_seeds_parse_verify_and_reprint():
    for text, graph in zip(SEEDS, SEED_GRAPHS):
        verify(graph)
        assert print_graph(graph) == text


def test_regression_5000_digit_dimension_is_a_parse_error():
    big = "1" + "0" * 4999  # python refuses int() of more than 4300 digits: was a ValueError
    text = f"graph(%x: f32[{big}]) {{\n  return %x\n}}"
    parse_fails(text, 1, "int64", column_of(text, big))


def test_regression_attributes_nested_500_deep_are_a_parse_error():
    nest = "[" * 500 + "]" * 500  # was a RecursionError
    text = one_line(f'%y = torch_op[target="aten.a.b", args={nest}] %x : f32[2,2]')
    parse_fails(text, 2, f"more than {MAX_ATTR_DEPTH}",
                column_of(text, "[" * (MAX_ATTR_DEPTH + 1)) + MAX_ATTR_DEPTH)


def test_regression_float_constant_of_400_zeros_is_a_parse_error():
    text = one_line("%y = const f32[] 1" + "0" * 400)  # was an OverflowError
    parse_fails(text, 2, "outside int64's range", column_of(text, "10000"))


def test_regression_bf16_constant_with_values_is_a_parse_error():
    text = one_line("%y = const bf16[] 1.0")  # was a DTypeError
    parse_fails(text, 2, "bf16", column_of(text, "1.0"))
    elided = one_line("%y = const bf16[2] @0123456789abcdef")
    verify(parse_ir(elided))  # bf16 data can only be elided
    with pytest.raises(IRParseError, match=r"^line 2: column \d+: .*bf16"):
        parse_ir(elided, constants={"y": np.zeros(2, np.float32)})


def test_regression_reshape_to_minus_two_is_a_verification_error():
    graph = parse_ir(one_line("%y = reshape[shape=[-2, -2]] %x : f32[2,2]"))
    verify_fails(graph, 0, "reshape", "-2")  # was a ValueError


def test_regression_400_digit_clamp_bound_is_an_error():
    bound = 10**400  # float(bound) was an OverflowError in the verifier
    verify_fails(single("clamp", {"min": bound, "max": None}, X.type), 0, "clamp",
                 "attribute min", "int64")
    text = one_line(f"%y = clamp[min={bound}, max=none] %x : f32[2,2]")
    parse_fails(text, 2, "int64", column_of(text, str(bound)))


def test_regression_enormous_arange_is_a_verification_error():
    # ceil(1e308 / 1e-308) was an OverflowError (float infinity to integer)
    graph = parse_ir(one_line('%y = arange[start=0.0, end=1e308, step=1e-308, dtype="f32"] : '
                              "f32[1]", inputs=""))
    verify_fails(graph, 0, "arange", "2**40")


def test_regression_quantization_scale_of_a_dict_is_an_error():
    quant = QuantParams(({"a": 1},), (0,), None)  # hashing it was a TypeError
    q = Value("x", TensorType((4,), "i8", quant))
    node = Node("reshape", (q,), (Value("y", TensorType((4,), "i8", quant)),),
                Attrs({"shape": (4,)}))
    verify_fails(Graph((q,), (node,), (node.output,)), None, None, "%x", "scale")
    text = one_line("%y = reshape[shape=[4]] %x : i8[4]",
                    inputs='%x: i8[4]{scale=[{"a": 1}], zero_point=[0], axis=none}')
    parse_fails(text, 1, "scale", column_of(text, "{scale"))


# ------------------------------------------------------------------------------------------------
# The classes behind them: the parser

# name: (statement on line 2, fragment of the message, fragment its column points at or None)
BAD_STATEMENTS = {
    "int_attr_past_int64": ("%y = slice[dim=0, start=9223372036854775808, end=1, step=1] %x : "
                            "f32[1,2]", "int64", "9223372036854775808"),
    "int_attr_below_int64": ("%y = slice[dim=0, start=-9223372036854775809, end=1, step=1] %x : "
                             "f32[1,2]", "int64", "-9223372036854775809"),
    "leading_zeros_past_4300_digits": ("%y = slice[dim=0, start=-" + "0" * 5000 + "1" + "0" * 19
                                       + ", end=1, step=1] %x : f32[1,2]", "int64", "-000"),
    "float_literal_overflows": ("%y = clamp[min=1e400, max=none] %x : f32[2,2]",
                                "overflows a float64", "1e400"),
    "float_literal_of_many_digits": ("%y = clamp[min=" + "9" * 400 + ".0, max=none] %x : "
                                     "f32[2,2]", "overflows a float64", "999"),
    "const_overflows_f32": ("%y = const f32[2] [1.0, 1e39]", "1e+39 overflows dtype f32",
                            "[1.0"),
    "const_overflows_f16": ("%y = const f16[] 70000.0", "overflows dtype f16", "70000"),
    "const_nan_for_int": ("%y = const i32[] nan", "not a value of dtype i32", None),
    "dimension_nan": ("%y = relu %x : f32[nan,2]", "expected a dimension", "nan"),
    "dimension_past_int64": ("%y = relu %x : f32[99999999999999999999,2]", "int64", "999"),
    "too_many_elements": ("%y = relu %x : f32[1048576,1048576,2]", "2**40", "f32["),
    "rank_past_limit": ("%y = relu %x : f32[" + ",".join(["1"] * (MAX_RANK + 1)) + "]",
                        f"rank {MAX_RANK + 1}", "f32["),
    "map_nested_deep": ('%y = torch_op[target="t", args=' + '{"k": ' * 40 + "0" + "}" * 40
                        + "] %x : f32[2,2]", "nest", None),
    "duplicate_attribute": ("%y = clamp[min=0.0, min=1.0] %x : f32[2,2]", "appears twice",
                            "min=1.0"),
    "duplicate_map_key": ('%y = torch_op[target="t", kwargs={"a": 1, "a": 2}] %x : f32[2,2]',
                          "appears twice", '"a": 2'),
    "quant_unknown_field": ("%y = relu %x : i8[2]{scale=[0.5], zero_point=[0], axis=none, "
                            "bits=8}", "expected one of", "bits"),
    "quant_duplicate_field": ("%y = relu %x : i8[2]{scale=[0.5], scale=[0.5], zero_point=[0], "
                              "axis=none}", "appears twice", "scale=[0.5], zero"),
    "quant_nan_scale": ("%y = relu %x : i8[2]{scale=[nan], zero_point=[0], axis=none}",
                        "finite", "{scale"),
    "quant_axis_out_of_range": ("%y = relu %x : i8[2]{scale=[0.5], zero_point=[0], axis=1}",
                                "axis", "{scale"),
    "quant_lengths_differ": ("%y = relu %x : i8[2]{scale=[0.5, 0.5], zero_point=[0], axis=0}",
                             "2 scales and 1 zero points", "{scale"),
    "unicode_digit": ("%y = relu %x : f32[\u0663]", "unexpected character", "\u0663"),
    "nul_byte": ("%y = relu\x00 %x : f32[2,2]", "unexpected character '\\x00'", "\x00"),
    "nul_in_string": ('%y = gelu[approximate="\x00"] %x : f32[2,2]', "malformed string",
                      '"\x00'),
    "form_feed": ("%y = relu %x\x0c : f32[2,2]", "unexpected character '\\x0c'", "\x0c"),
    "line_separator": ("%y = relu\u2028%x : f32[2,2]", "unexpected character", "\u2028"),
    "bom": ("\ufeff%y = relu %x : f32[2,2]", "unexpected character", "\ufeff"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATEMENTS))
def test_bad_statement_is_a_located_parse_error(case):
    body, fragment, at = BAD_STATEMENTS[case]
    text = one_line(body)
    parse_fails(text, 2, fragment, None if at is None else column_of(text, at, 2))


def test_int64_extremes_and_specials_still_parse():
    text = one_line("%y = slice[dim=0, start=-9223372036854775808, end=9223372036854775807, "
                    "step=1] %x : f32[2,2]")
    verify(parse_ir(text))
    graph = parse_ir(one_line("%y = clamp[min=-inf, max=1.7976931348623157e+308] %x : f32[2,2]"))
    verify(graph)
    assert graph.nodes[0].attrs["min"] == -math.inf


def test_windows_line_endings_parse_and_lines_are_an_editors():
    assert parse_ir(MAIN.replace("\n", "\r\n")) == SEED_GRAPHS[0]
    # splitlines() would also break at \x0b, \x0c, \x1c, \x85 and \u2028, shifting the numbers
    text = MAIN.replace("# stem.conv", "# stem\x85\u2028conv").replace("%v9 = cat", "%v9 = $")
    parse_fails(text, 9, "unexpected character '$'", column_of(text, "$"))


def test_a_megabyte_line_gives_a_short_message():
    values = ", ".join(["1.0"] * 250_000)
    text = one_line(f"%y = const f32[250000] [{values}, $]")
    error = parse_fails(text, 2, "unexpected character '$'", column_of(text, "$"))
    assert "..." in str(error)


@pytest.mark.parametrize("text", ["", "\n \t\n", "graph", "graph(", "graph() {", "}", "\x00",
                                  "graph() {\n  return\n}\n}", "graph(%x: f32[2]) {\n  return %x"])
def test_truncated_texts_are_located_parse_errors(text):
    with pytest.raises(IRParseError) as info:
        parse_ir(text)
    assert LOCATED.match(str(info.value)), str(info.value)


# ------------------------------------------------------------------------------------------------
# The classes behind them: the verifier

WRONG_TYPES = [
    ("reshape", "shape", "abc"), ("reshape", "shape", (1.5, 2)), ("reshape", "shape", {"a": 1}),
    ("reshape", "shape", (2**63,)), ("clamp", "min", "x"), ("clamp", "max", (1.0,)),
    ("clamp", "min", True), ("softmax", "dim", 1.0), ("softmax", "dim", None),
    ("softmax", "dim", -(2**63) - 1), ("cast", "dtype", {"a": 1}), ("cast", "dtype", "f8"),
    ("gelu", "approximate", 0), ("arange", "start", "0"), ("full", "shape", 4),
]
COMPLETE = {"reshape": {"shape": (4,)}, "clamp": {"min": None, "max": None},
            "softmax": {"dim": 0}, "cast": {"dtype": "f32"}, "gelu": {"approximate": "none"},
            "arange": {"start": 0.0, "end": 2.0, "step": 1.0, "dtype": "f32"},
            "full": {"shape": (2, 2), "value": 0.0, "dtype": "f32"}}


@pytest.mark.parametrize(("op", "name", "value"), WRONG_TYPES,
                         ids=[f"{op}-{name}-{value!r}"[:40] for op, name, value in WRONG_TYPES])
def test_attribute_of_the_wrong_type_is_named(op, name, value):
    inputs = () if op in ("arange", "full") else (X,)
    graph = single(op, {**COMPLETE[op], name: value}, X.type, inputs)
    verify_fails(graph, 0, op, f"attribute {name}")


ABSURD = [
    ("full", {"shape": (2**31, 2**31), "value": 0.0, "dtype": "f32"}, (), "2**40"),
    ("arange", {"start": -1e308, "end": 1e308, "step": 1.0, "dtype": "f32"}, (), "2**40"),
    ("arange", {"start": 1e308, "end": -1e308, "step": 1.0, "dtype": "f32"}, (), "declared"),
    ("arange", {"start": 0.0, "end": 1e12, "step": 1e-3, "dtype": "i64"}, (), "truncates"),
    ("arange", {"start": 0.0, "end": 9.2e18, "step": 1.0, "dtype": "i64"}, (), "2**40"),
    ("expand", {"shape": (2**30, 2**30, 2, 2)}, (X,), "2**40"),
    ("reshape", {"shape": (-1, 0)}, (X,), "cannot reshape"),
    ("conv2d", {"stride": (1, 1), "padding": (2**62, 2**62), "dilation": (1, 1), "groups": 1},
     (Value("x", TensorType((1, 1, 2, 2), "f32")), Value("w", TensorType((1, 1, 1, 1), "f32"))),
     "result 0"),
]


@pytest.mark.parametrize(("op", "attrs", "inputs", "fragment"), ABSURD,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(ABSURD)])
def test_absurd_sizes_are_verification_errors(op, attrs, inputs, fragment):
    graph = single(op, attrs, TensorType((1,), "f32"), inputs)
    graph = Graph(inputs, graph.nodes, graph.outputs)
    verify_fails(graph, 0, op, fragment)


def test_attribute_values_the_text_cannot_hold_are_named():
    deep: Any = 0
    for _ in range(MAX_ATTR_DEPTH + 1):
        deep = [deep]
    for value, fragment in [(deep, "nests"), ((1, (2**64,)), "int64"),
                            ((10**5000,), "does not print"),  # python won't print 4300+ digits
                            ({"k": ConstData(np.zeros(1))}, "ConstData")]:
        graph = single("torch_op", {"target": "aten.x", "args": value, "kwargs": {}}, X.type)
        verify_fails(graph, 0, "torch_op", "attribute args", fragment)


def test_types_past_the_limits_are_verification_errors():
    wide = Value("x", TensorType((2**21,) * 2, "f32"))
    verify_fails(Graph((wide,), (), (wide,)), None, None, "%x", "2**40")
    node = Node("relu", (X,), (Value("y", TensorType((1,) * (MAX_RANK + 1), "f32")),))
    verify_fails(Graph((X,), (node,), (node.output,)), 0, "relu", "%y", "rank")
    bad_axis = Value("q", TensorType((2,), "i8", QuantParams((0.5,), (0,), 3)))
    verify_fails(Graph((bad_axis,), (), (bad_axis,)), None, None, "axis")
    huge_scale = Value("q", TensorType((2,), "i8", QuantParams((10**400,), (0,), None)))
    assert "finite" in verify_fails(Graph((huge_scale,), (), (huge_scale,)), None, None, "scale")


def test_any_unforeseen_failure_names_the_node(monkeypatch):
    def broken(ins, attrs):
        raise KeyError("a bug in an inference rule")

    monkeypatch.setitem(ops.OPS, "relu", dataclasses.replace(ops.get("relu"), infer=broken))
    graph = single("relu", {}, X.type)
    message = verify_fails(graph, 0, "relu", "KeyError", "a bug in an inference rule")
    assert "relu" in message


# ------------------------------------------------------------------------------------------------
# Fuzzers

def check_text(text: str) -> None:
    """The parser's contract on any text, then the verifier's on what it parses."""
    try:
        graph = parse_ir(text)
    except IRParseError as e:
        message = str(e)
        where = LOCATED.match(message)
        assert where is not None, message
        assert e.line == int(where[1]) >= 1 and e.column == int(where[2]) >= 1
        assert len(message) < 1000, message[:2000]
        assert "cannot parse this" not in message, message
        return
    check_graph(graph)


def check_graph(graph: Graph) -> None:
    """IRVerificationError naming the node and op (or the graph), or a graph that prints and
    parses back to itself."""
    try:
        verify(graph)
    except IRVerificationError as e:
        message = str(e)
        node = re.match(r"^node (\d+) \(", message)
        assert node is not None or message.startswith("graph: "), message
        if node is not None:
            op = graph.nodes[int(node[1])].op
            assert f" = {op} at " in message, message
        assert "checking it raised" not in message, message
        return
    assert parse_ir(print_graph(graph)) == graph


INTERESTING = (
    "nan", "-nan", "inf", "-inf", "1e308", "1e309", "1e-400", "-1", "0", "-2", "2.5",
    "9223372036854775807", "9223372036854775808", "-9223372036854775809", "bf16", "f16",
    "bool", "i64", "true", "none", '"x"', '"\\ud800"', '"\\u0000"', '"', "\\", "[]", "{}", "[[",
    "]]", "[", "]", "{", "}", ",", "=", ":", "%x", "%v3", "%c1", "@00", "@", "#", " # (x)",
    "\x00", "\n", "\r", "\r\n", "\t", "\u2028", "\x0c", "\x85", "\xe9", "\u0663", "\ufeff",
    "\U0001f600", "return", "const", "graph(", ")", "(", "relu", "reshape", "split", "scale=",
    "axis=0", "{scale=[0.5], zero_point=[0], axis=none}", "f32[]", "f32[0]", "i8[2]",
)
BLOWUPS = ("9" * 25, "1" + "0" * 400, "1" * 5000, "0" * 30 + "7", "1e999", "-1", "-2", "0",
           "1e-400", ".5e400", "4294967296", "1099511627777", "nan")


def _position(draw, text: str) -> int:
    """A position in a line drawn uniformly, so that mutations reach the body, not mostly the
    first characters (where hypothesis' integers lean)."""
    starts = [0, *(m.end() for m in re.finditer("\n", text))]
    start = draw(st.sampled_from(starts))
    end = text.find("\n", start)
    return draw(st.integers(start, len(text) if end < 0 else end))


def _insert(draw, text: str) -> str:
    pos = _position(draw, text)
    piece = draw(st.sampled_from(INTERESTING) | st.text(max_size=4))
    return text[:pos] + piece + text[pos:]


def _span(draw, text: str) -> tuple[int, int]:
    start = _position(draw, text)
    return start, min(len(text), start + draw(st.integers(0, 40)))


def _delete(draw, text: str) -> str:
    start, end = _span(draw, text)
    return text[:start] + text[end:]


def _duplicate(draw, text: str) -> str:
    start, end = _span(draw, text)
    pos = _position(draw, text)
    return text[:pos] + text[start:end] + text[pos:]


def _splice(draw, text: str) -> str:
    other = draw(st.sampled_from(SEEDS))
    start, end = _span(draw, text)
    o_start, o_end = _span(draw, other)
    return text[:start] + other[o_start:o_end] + text[end:]


def _blow_up_digits(draw, text: str) -> str:
    runs = [m.span() for m in re.finditer(r"\d+", text)]
    start, end = draw(st.sampled_from(runs))
    return text[:start] + draw(st.sampled_from(BLOWUPS)) + text[end:]


def _nest(draw, text: str) -> str:
    pos = _position(draw, text)
    depth = draw(st.integers(1, 600))
    kind = draw(st.sampled_from(("[]", "{}", '{"k": }', "[x")))
    if kind == '{"k": }':
        piece = '{"k": ' * depth + "0" + "}" * depth
    else:
        piece = kind[0] * depth + kind[1] * depth
    return text[:pos] + piece + text[pos:]


def _swap_token(draw, text: str) -> str:
    tokens = [m.span() for m in re.finditer(r"[%@]?[\w.]+|\S", text)]
    start, end = draw(st.sampled_from(tokens))
    return text[:start] + draw(st.sampled_from(INTERESTING)) + text[end:]


MUTATIONS = (_insert, _delete, _duplicate, _splice, _blow_up_digits, _nest, _swap_token)


@st.composite
def mutated_texts(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


@FUZZ
@given(text=mutated_texts())
def test_fuzz_parser_on_mutated_texts(text):
    check_text(text)


TOKENS = INTERESTING + ("%y", "=", ":", "f32[2,2]", "[min=0.0, max=none]", "clamp", "%x,",
                        "\n  ")


@FUZZ
@given(text=st.one_of(
    st.text(),
    st.text().map(lambda body: f"graph(%x: f32[2,2]) {{\n{body}\n  return %x\n}}"),
    st.lists(st.sampled_from(TOKENS), max_size=30).map(
        lambda toks: f"graph(%x: f32[2,2]) {{\n  %y = {' '.join(toks)}\n  return %y\n}}"),
    st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join),
))
def test_fuzz_parser_on_arbitrary_text(text):
    check_text(text)


EDGES = (2**63, -(2**63) - 1, 10**400, -(10**400), 2**63 - 1, -(2**63), -1, -2, 0, 2**40, 2**31,
         1e308, -1e308, 1e-308, 5e-324, math.nan, math.inf, -math.inf, -0.0, *dtypes.DTYPES)
_SCALARS = st.one_of(st.sampled_from(EDGES), st.sampled_from(EDGES), st.integers(), st.floats(),
                     st.booleans(), st.none(), st.text(max_size=6))


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# what no attribute should hold: deep nesting, a ConstData (one leaf kind in ten each)
_ODD = st.one_of(st.integers(MAX_ATTR_DEPTH - 2, 200).map(_nested),
                 st.builds(lambda: ConstData(np.zeros(2, np.float32))))
HOSTILE = st.recursive(st.one_of(_SCALARS, _ODD), lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
PLAUSIBLE = {
    "int": st.integers(-3, 300) | _SCALARS, "float": st.floats(-4, 300) | _SCALARS,
    "bool": st.booleans(),
    "str": st.sampled_from(("none", "tanh", "row", "tensor", "nhwc", "x")),
    "dtype": st.sampled_from(dtypes.DTYPES),
    "ints": st.lists(st.integers(-3, 300) | _SCALARS, max_size=5).map(tuple), "any": HOSTILE,
}


def _node_indices(graph: Graph) -> list[int]:
    return [i for i, n in enumerate(graph.nodes) if n.op != "const"]


def _with_node(graph: Graph, index: int, node: Node) -> Graph:
    nodes = list(graph.nodes)
    nodes[index] = node
    return Graph(graph.inputs, tuple(nodes), graph.outputs)


@FUZZ
@given(data=st.data())
def test_fuzz_verifier_on_hostile_attribute_values(data):
    graph = data.draw(st.sampled_from(SEED_GRAPHS))
    index = data.draw(st.sampled_from(_node_indices(graph)))
    node = graph.nodes[index]
    attrs = dict(node.attrs)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*sorted(attrs) * 4, "bogus"]))
        attrs[key] = data.draw(HOSTILE)
    hostile = Node(node.op, node.inputs, node.outputs, Attrs(attrs), node.provenance)
    check_graph(_with_node(graph, index, hostile))


def _attr_value(data: st.DataObject, spec: ops.AttrSpec) -> Any:
    """The default (if any) half the time, else a value of the attribute's kind (plausible
    or hostile), or one hostile value of any kind."""
    choice = data.draw(st.integers(0, 9))
    if choice < 5 and spec.default is not ops.REQUIRED:
        return spec.default
    return data.draw(HOSTILE if choice == 9 else PLAUSIBLE[spec.kind])


@FUZZ
@given(data=st.data())
def test_fuzz_verifier_on_random_ops_and_attributes(data):
    """Any registry op in a node's place, on values defined before it, with attributes that are
    plausible or hostile; its output types inferred where that works, else the old ones."""
    graph = data.draw(st.sampled_from(SEED_GRAPHS))
    index = data.draw(st.sampled_from(_node_indices(graph)))
    node = graph.nodes[index]
    available = [*graph.inputs, *(v for n in graph.nodes[:index] for v in n.outputs)]
    opdef = ops.get(data.draw(st.sampled_from(sorted(set(ops.OPS) - {"const"}))))
    hi = opdef.min_inputs + 3 if opdef.max_inputs is None else opdef.max_inputs
    inputs = data.draw(st.lists(st.sampled_from(available), min_size=opdef.min_inputs,
                                max_size=hi))
    attrs = {name: _attr_value(data, spec) for name, spec in opdef.attrs.items()}
    outputs = node.outputs
    try:
        built = ops.build_node(opdef.name, inputs, attrs, [v.name for v in node.outputs])
        attrs, outputs = built.attrs, built.outputs
    except Exception:  # noqa: BLE001 - only to find types; the verifier is what is under test
        pass
    check_graph(_with_node(graph, index, Node(opdef.name, tuple(inputs), outputs, Attrs(attrs),
                                              node.provenance)))


_DIMS = st.one_of(st.integers(0, 8), st.sampled_from([2**31, 2**40 + 1, 2**62, 2**63 - 1,
                                                      2**63, 10**30]))
_QUANT = st.builds(QuantParams, HOSTILE | st.lists(_SCALARS, max_size=3).map(tuple),
                   HOSTILE | st.lists(_SCALARS, max_size=3).map(tuple), HOSTILE)


@FUZZ
@given(data=st.data())
def test_fuzz_verifier_on_hostile_types(data):
    """A graph input's or node output's type replaced by one of absurd rank or sizes, or with
    hostile quantization parameters."""
    graph = data.draw(st.sampled_from(SEED_GRAPHS))
    shape = tuple(data.draw(st.lists(_DIMS, max_size=MAX_RANK + 3)))
    new_type = TensorType(shape, data.draw(st.sampled_from(dtypes.DTYPES)),
                          data.draw(st.none() | _QUANT))
    index = data.draw(st.sampled_from([None, *_node_indices(graph)]))
    if index is None:
        inputs = (Value(graph.inputs[0].name, new_type), *graph.inputs[1:])
        check_graph(Graph(inputs, graph.nodes, graph.outputs))
        return
    node = graph.nodes[index]
    outputs = (Value(node.outputs[0].name, new_type), *node.outputs[1:])
    check_graph(_with_node(graph, index, dataclasses.replace(node, outputs=outputs)))
