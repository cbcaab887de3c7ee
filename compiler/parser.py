"""Text -> IR. The inverse of `fxforge.printer`; no eval, only a small tokenizer.

Grammar (one statement per line)::

    graph(%x: f32[8,3,32,32], ...) {
      %w = const f32[16,3,3,3] @0123456789abcdef        # digest: data elided
      %s = const f32[] 0.5                               # or inline values, flat
      %y = conv2d[stride=[1, 1], groups=1] %x, %w : f32[8,16,32,32]  # stem.0 (aten.conv2d.default)
      %a, %b = split[sizes=[8, 8], dim=1] %y : f32[8,8,32,32], f32[8,8,32,32]
      return %a, %b
    }

Attribute values: integers, floats (`1.0`, `1e-05`, `nan`, `inf`), `true`/`false`, `none`,
JSON strings, `[...]` lists and `{"key": value}` maps. The trailing comment is the node's
provenance: a module path and, in parentheses, the source op; either may be a JSON string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fxforge import dtypes
from fxforge.ir import Attrs, ConstData, Graph, Node, Provenance, QuantParams, TensorType, Value
from fxforge.printer import format_attr


class IRParseError(ValueError):
    """The text is not valid IR; the message names the line and what was expected."""


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z0-9_]+)
  | (?P<digest>@[0-9a-f]+)
  | (?P<num>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)
            |-?inf\b|-?nan\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[\[\](){},=:\#])
    """,
    re.VERBOSE,
)


class _Line:
    """Tokens of one line, with the raw provenance comment split off."""

    def __init__(self, text: str, lineno: int):
        self.lineno = lineno
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        self.comment: str | None = None
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail(f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind == "punct" and m.group() == "#":
                self.comment = text[m.end():]
                break
            if kind != "ws":
                self.tokens.append((kind, m.group()))
            pos = m.end()
        self.pos = 0

    def fail(self, message: str) -> None:
        raise IRParseError(f"line {self.lineno}: {message}: {self.text.strip()!r}")

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "end":
            self.fail("unexpected end of line")
        self.pos += 1
        return tok

    def expect(self, text: str) -> None:
        kind, tok = self.next()
        if tok != text:
            self.fail(f"expected {text!r}, found {tok!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "ident"):
            self.pos += 1
            return True
        return False

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)


def _json_string(text: str, line: _Line) -> str:
    try:
        value = json.loads(text)
    except ValueError as e:
        line.fail(f"malformed string {text}: {e}")
    if not isinstance(value, str):
        line.fail(f"expected a quoted string, found {text}")
    return value


def _scalar(kind: str, tok: str, line: _Line) -> Any:
    if kind == "num":
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        return float(tok)
    if kind == "ident" and tok in ("true", "false"):
        return tok == "true"
    if kind == "ident" and tok == "none":
        return None
    if kind == "str":
        return _json_string(tok, line)
    line.fail(f"expected a value, found {tok!r}")


def _attr_value(line: _Line) -> Any:
    if line.accept("["):
        items = []
        while not line.accept("]"):
            items.append(_attr_value(line))
            if not line.accept(","):
                line.expect("]")
                break
        return tuple(items)
    if line.accept("{"):
        items: dict[str, Any] = {}
        while not line.accept("}"):
            kind, key = line.next()
            if kind != "str":
                line.fail(f"expected a quoted key, found {key!r}")
            line.expect(":")
            items[_json_string(key, line)] = _attr_value(line)
            if not line.accept(","):
                line.expect("}")
                break
        return items
    kind, tok = line.next()
    return _scalar(kind, tok, line)


def _type(line: _Line) -> TensorType:
    kind, dtype = line.next()
    if kind != "ident" or dtype not in dtypes.DTYPES:
        line.fail(f"expected a dtype ({', '.join(dtypes.DTYPES)}), found {dtype!r}")
    line.expect("[")
    shape = []
    while not line.accept("]"):
        kind, tok = line.next()
        if kind != "num" or not tok.isdigit():
            line.fail(f"expected a dimension, found {tok!r}")
        shape.append(int(tok))
        if not line.accept(","):
            line.expect("]")
            break
    quant = None
    if line.accept("{"):
        fields = {}
        while not line.accept("}"):
            kind, key = line.next()
            line.expect("=")
            fields[key] = _attr_value(line)
            if not line.accept(","):
                line.expect("}")
                break
        missing = sorted({"scale", "zero_point", "axis"} - set(fields))
        if missing:
            line.fail(f"quantization is missing {', '.join(missing)}")
        if not isinstance(fields["scale"], tuple) or not isinstance(fields["zero_point"], tuple):
            line.fail("quantization scale and zero_point must be lists")
        quant = QuantParams(fields["scale"], fields["zero_point"], fields["axis"])
    return TensorType(tuple(shape), dtype, quant)


def _value_name(line: _Line) -> str:
    kind, tok = line.next()
    if kind != "value":
        line.fail(f"expected a %value, found {tok!r}")
    return tok[1:]


def _provenance(comment: str | None, line: _Line) -> Provenance:
    if comment is None:
        return Provenance()
    text = comment.strip()
    decoder = json.JSONDecoder()
    module = ""
    if text.startswith('"'):
        try:
            module, end = decoder.raw_decode(text)
        except ValueError as e:
            line.fail(f"malformed module name in the provenance comment: {e}")
        text = text[end:].strip()
    elif not text.startswith("("):
        module, _, text = text.partition(" ")
        text = text.strip()
    source = ""
    if text:
        if not (text.startswith("(") and text.endswith(")")):
            line.fail("provenance comment must be `# module (source)`")
        inner = text[1:-1]
        source = _json_string(inner, line) if inner.startswith('"') else inner
    return Provenance(module, source)


def _const_node(line: _Line, out: Value, t: TensorType, constants: Mapping[str, np.ndarray]):
    kind, tok = line.peek()
    if kind == "digest":
        line.next()
        digest = tok[1:]
        array = constants.get(out.name)
        if array is None:
            array = constants.get(digest)
        if array is None:
            return ConstData(None, digest)
        array = np.asarray(array)
        if array.shape != t.shape:
            line.fail(f"data supplied for %{out.name} has shape {list(array.shape)}, its type "
                      f"{t} needs {list(t.shape)}")
        data = ConstData(array.astype(dtypes.to_numpy(t.dtype), copy=False))
        if data.digest != digest:
            line.fail(f"data supplied for %{out.name} does not match its digest @{digest}")
        return data
    value = _attr_value(line)
    flat = list(value) if isinstance(value, tuple) else [value]
    if len(flat) != t.numel:
        line.fail(f"constant has {len(flat)} values, its type {t} needs {t.numel}")
    return ConstData(_const_array(flat, t, line))


def _const_array(flat: list[Any], t: TensorType, line: _Line) -> np.ndarray:
    """The inline values as an array of t's dtype; each must be a scalar that dtype holds."""
    np_dtype = dtypes.to_numpy(t.dtype)
    category = dtypes.category(t.dtype)
    for x in flat:
        if category == 0:
            ok = isinstance(x, bool)
        elif category == 1:
            info = np.iinfo(np_dtype)
            ok = isinstance(x, int) and not isinstance(x, bool) and info.min <= x <= info.max
        else:
            ok = isinstance(x, (int, float)) and not isinstance(x, bool)
        if not ok:
            line.fail(f"{format_attr(x)} is not a value of dtype {t.dtype}")
    return np.array(flat, dtype=np_dtype).reshape(t.shape)


def _node(line: _Line, defined: dict[str, Value], constants) -> Node:
    out_names = [_value_name(line)]
    while line.accept(","):
        out_names.append(_value_name(line))
    line.expect("=")
    kind, op = line.next()
    if kind != "ident":
        line.fail(f"expected an op name, found {op!r}")
    if op == "const":
        t = _type(line)
        out = Value(out_names[0], t)
        data = _const_node(line, out, t, constants)
        node = Node("const", (), (out,), Attrs({"value": data}), _provenance(line.comment, line))
    else:
        attrs: dict[str, Any] = {}
        if line.accept("["):
            while not line.accept("]"):
                kind, key = line.next()
                if kind != "ident":
                    line.fail(f"expected an attribute name, found {key!r}")
                line.expect("=")
                attrs[key] = _attr_value(line)
                if not line.accept(","):
                    line.expect("]")
                    break
        inputs = []
        while line.peek()[0] == "value":
            name = _value_name(line)
            if name not in defined:
                line.fail(f"%{name} is used before it is defined")
            inputs.append(defined[name])
            if not line.accept(","):
                break
        line.expect(":")
        types = [_type(line)]
        while line.accept(","):
            types.append(_type(line))
        if len(types) != len(out_names):
            line.fail(f"{len(out_names)} results but {len(types)} types")
        outs = tuple(Value(n, t) for n, t in zip(out_names, types))
        node = Node(op, tuple(inputs), outs, Attrs(attrs), _provenance(line.comment, line))
    if not line.at_end():
        line.fail(f"unexpected {line.peek()[1]!r}")
    for v in node.outputs:
        if v.name in defined:
            line.fail(f"%{v.name} is defined twice")
        defined[v.name] = v
    return node


def parse_ir(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form. `constants` supplies the data of constants printed as a digest,
    keyed by value name or by digest; a supplied array must match its digest."""
    constants = constants or {}
    lines = [(i + 1, raw) for i, raw in enumerate(text.splitlines()) if raw.strip()]
    if not lines:
        raise IRParseError("empty text: expected `graph(...) {`")
    lineno, raw = lines[0]
    head = _Line(raw, lineno)
    head.expect("graph")
    head.expect("(")
    defined: dict[str, Value] = {}
    inputs = []
    while not head.accept(")"):
        name = _value_name(head)
        head.expect(":")
        v = Value(name, _type(head))
        if name in defined:
            head.fail(f"input %{name} is declared twice")
        defined[name] = v
        inputs.append(v)
        if not head.accept(","):
            head.expect(")")
            break
    head.expect("{")
    if not head.at_end():
        head.fail(f"unexpected {head.peek()[1]!r}")
    nodes, outputs, closed = [], None, False
    for lineno, raw in lines[1:]:
        line = _Line(raw, lineno)
        if closed:
            line.fail("text after the closing `}`")
        if line.accept("}"):
            if outputs is None:
                line.fail("graph has no `return`")
            if not line.at_end():
                line.fail(f"unexpected {line.peek()[1]!r}")
            closed = True
        elif line.accept("return"):
            outputs = []
            while not line.at_end():
                name = _value_name(line)
                if name not in defined:
                    line.fail(f"returns %{name}, which is not defined")
                outputs.append(defined[name])
                if not line.accept(","):
                    break
            if not line.at_end():
                line.fail(f"unexpected {line.peek()[1]!r}")
        elif outputs is not None:
            line.fail("statement after `return`")
        else:
            nodes.append(_node(line, defined, constants))
    if not closed:
        raise IRParseError(f"line {lines[-1][0]}: missing closing `}}` after "
                           f"{lines[-1][1].strip()!r}")
    return Graph(tuple(inputs), tuple(nodes), tuple(outputs))
