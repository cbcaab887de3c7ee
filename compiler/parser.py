"""Text -> IR. The inverse of `fxforge.printer`; no eval, only a small tokenizer.

Grammar (one statement per line)::

    graph(%x: f32[8,3,32,32], ...) {
      %w = const f32[16,3,3,3] @0123456789abcdef        # digest: data elided
      %s = const f32[] 0.5                               # or inline values, flat
      %y = conv2d[stride=[1, 1], groups=1] %x, %w : f32[8,16,32,32]  # stem.0 (aten.conv2d.default)
      %a, %b = split[sizes=[8, 8], dim=1] %y : f32[8,8,32,32], f32[8,8,32,32]
      return %a, %b
    }

Symbolic dims (`fxforge.symdims`): the header may declare symbols with their ranges after the
inputs, `graph(%x: f32[B,3,32,32], %m: i64[B,S]) dims(B: 1..128, S: 8..512 %8) {`, that is
`NAME: MIN..MAX` and optionally `%M` (the value must be a multiple of M). A dim in a type, and an
integer attribute that is a size (reshape/expand/full shapes, slice bounds, split sizes, pads,
arange bounds), may then be an expression of declared names: integers, `+`, `-`, `*`, `//` by a
positive integer constant and parentheses (`B*S`, `S - 1`, `(S + 1)//2`). A name that is not
declared is an error at its column; expressions are read by `fxforge.symdims`' own small
parser (never eval or sympify), bounded in length and nesting.

Attribute values: integers, floats (`1.0`, `1e-05`, `nan`, `inf`), `true`/`false`, `none`,
JSON strings, `[...]` lists and `{"key": value}` maps. The trailing comment is the node's
provenance: a module path and, in parentheses, the source op; either may be a JSON string.

Malformed text of any kind raises `IRParseError` naming the line and column, never another
exception: integers must fit int64 (dimensions are also >= 0), a finite float literal must not
overflow (to float64, or to a constant's dtype), values nest at most `MAX_ATTR_DEPTH` lists and
maps deep, types stay within the IR's limits (`fxforge.shapes`), and an error message quotes at
most a window of a long line. Lines end at "\n" (a "\r" before it is dropped), so the line
numbers are an editor's; digits are ASCII only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from fxforge import dtypes
from fxforge.errors import FxforgeError
from fxforge.ir import Attrs, ConstData, Graph, Node, Provenance, QuantParams, TensorType, Value
from fxforge.printer import format_attr
from fxforge.shapes import (
    INT64_MAX,
    MAX_ATTR_DEPTH,
    OpTypeError,
    check_quant,
    check_shape,
    clip,
)


class IRParseError(FxforgeError, ValueError):
    """The text is not valid IR; the message starts `line L: column C: ` and says what was
    expected. `line` and `column` (1-based) hold the same place."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


# What a failed statement can raise that is malformed input, not a parser bug; turned into an
# IRParseError at the statement's line as a last resort (each known case has its own message).
_INPUT_ERRORS = (ArithmeticError, LookupError, ValueError, TypeError, RecursionError,
                 MemoryError)
_EXCERPT = 80  # characters of a line quoted around the column of an error


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z0-9_]+)
  | (?P<digest>@[0-9a-f]+)
  | (?P<num>-?(?:\d+\.(?!\.)\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)
            |-?inf\b|-?nan\b)
  | (?P<arith>//|\.\.|[*+\-])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[\[\](){},=:\#])
    """,
    re.VERBOSE | re.ASCII,
)


class _Line:
    """Tokens of one line with their columns, the raw provenance comment split off. `col` is
    the column of the token looked at last, which is where an error points by default."""

    def __init__(self, text: str, lineno: int):
        self.lineno = lineno
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        self.cols: list[int] = []
        self.comment: str | None = None
        self.comment_col = 0
        self.col = 1
        self.known: frozenset[str] = frozenset()  # declared dim symbols (the header's dims)
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail(f"unexpected character {text[pos]!r}", pos + 1)
            kind = m.lastgroup or ""
            if kind == "punct" and m.group() == "#":
                self.comment, self.comment_col = text[m.end():], m.end() + 1
                break
            if kind != "ws":
                self.tokens.append((kind, m.group()))
                self.cols.append(pos + 1)
            pos = m.end()
        self.pos = 0

    def fail(self, message: str, col: int | None = None) -> NoReturn:
        col = self.col if col is None else col
        raise IRParseError(f"line {self.lineno}: column {col}: {clip(message, 200)}: "
                           f"{_excerpt(self.text, col)}", self.lineno, col)

    def peek(self) -> tuple[str, str]:
        if self.pos < len(self.tokens):
            self.col = self.cols[self.pos]
            return self.tokens[self.pos]
        self.col = len(self.text.rstrip()) + 1
        return ("end", "")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "end":
            self.fail("unexpected end of line")
        self.pos += 1
        return tok

    def expect(self, text: str) -> None:
        kind, tok = self.next()
        if tok != text:
            self.fail(f"expected {text!r}, found {clip(tok)!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "ident"):
            self.pos += 1
            return True
        return False

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)


def _excerpt(text: str, col: int) -> str:
    """The stripped line, or for a long one a window around `col`: a megabyte line must not
    become a megabyte message."""
    if len(text) <= _EXCERPT:
        return repr(text.strip())
    lo = max(0, min(col - 1 - _EXCERPT // 2, len(text) - _EXCERPT))
    window = repr(text[lo:lo + _EXCERPT])
    return f"{'...' if lo else ''}{window}{'...' if lo + _EXCERPT < len(text) else ''}"


def _json_string(text: str, line: _Line) -> str:
    try:
        value = json.loads(text)
    except ValueError as e:
        line.fail(f"malformed string {clip(text)}: {e}")
    if not isinstance(value, str):
        line.fail(f"expected a quoted string, found {clip(text)}")
    return value


def _integer(tok: str, line: _Line) -> int:
    """An integer token as an int64. Its digits are counted before converting, as python
    refuses to convert (ValueError) a string of more than 4300 digits."""
    digits = tok.lstrip("-").lstrip("0") or "0"
    value = int(digits) if len(digits) <= 19 else 10**19  # more digits: past int64 either way
    value = -value if tok.startswith("-") else value
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        line.fail(f"integer {clip(tok)} is outside int64's range (a float is written with a "
                  "'.' or an exponent)")
    return value


def _number(tok: str, line: _Line) -> int | float:
    if tok.lstrip("-").isdigit():
        return _integer(tok, line)
    value = float(tok)
    if math.isinf(value) and "inf" not in tok:
        line.fail(f"{clip(tok)} overflows a float64 (infinity is written inf)")
    return value


def _scalar(kind: str, tok: str, line: _Line) -> Any:
    if kind == "num":
        return _number(tok, line)
    if kind == "ident" and tok in ("true", "false"):
        return tok == "true"
    if kind == "ident" and tok == "none":
        return None
    if kind == "str":
        return _json_string(tok, line)
    line.fail(f"expected a value, found {clip(tok)!r}")


def _attr_value(line: _Line, depth: int = 0) -> Any:
    """A value; `depth` counts the lists and maps already open around it, bounded so that deep
    nesting is an error message rather than a RecursionError (here or in the printer)."""
    if line.accept("["):
        _open(line, depth)
        items = []
        while not line.accept("]"):
            items.append(_attr_value(line, depth + 1))
            if not line.accept(","):
                line.expect("]")
                break
        return tuple(items)
    if line.accept("{"):
        _open(line, depth)
        return _map(line, depth + 1)
    if _starts_dim_expr(line):
        return _dim_expr(line, attribute=True)
    kind, tok = line.next()
    return _scalar(kind, tok, line)


_WORDS = frozenset(("true", "false", "none"))


def _starts_dim_expr(line: _Line) -> bool:
    """Whether a symbolic size starts here: a name (not true/false/none), `(`, a unary `-`,
    or an integer followed by an operator."""
    kind, tok = line.peek()
    if kind == "ident":
        return tok not in _WORDS
    if (kind, tok) in (("punct", "("), ("arith", "-")):
        return True
    if kind == "num" and tok.lstrip("-").isdigit() and line.pos + 1 < len(line.tokens):
        nxt = line.tokens[line.pos + 1]
        return nxt[0] == "arith" and nxt[1] != ".."
    return False


def _dim_expr(line: _Line, attribute: bool) -> Any:
    """A symbolic size: the tokens up to a `,`, `]` or `}` outside parentheses, read by
    `symdims.parse_dim_tokens`; an int when it has no symbol. A type's dim must be >= 0."""
    from fxforge import symdims

    line.peek()
    col, tokens, depth = line.col, [], 0
    while True:
        kind, tok = line.peek()
        if kind == "end" or (depth == 0 and (kind, tok) in (("punct", ","), ("punct", "]"),
                                                            ("punct", "}"))):
            break
        if kind not in ("num", "ident", "arith") and tok not in ("(", ")"):
            line.fail(f"unexpected {clip(tok)!r} in a dim expression")
        depth += {"(": 1, ")": -1}.get(tok, 0) if kind == "punct" else 0
        if kind == "num" and tok.startswith("-"):  # `S -1`: the tokenizer joins sign and digits
            tokens += [("op", "-"), ("num", tok[1:])]
        elif kind == "num" and not tok.isdigit():
            line.fail(f"expected an integer in a dim expression, found {clip(tok)!r}")
        else:
            tokens.append(("name" if kind == "ident" else kind, tok))
        line.pos += 1
    try:
        value = symdims.parse_dim_tokens(tokens, line.known)
        return symdims.normalize_attr(value) if attribute else symdims.normalize(value)
    except (ValueError, TypeError, ArithmeticError) as e:
        line.fail(f"{e}" + ("" if line.known else " (no dims are declared in the header)"),
                  col)


def _open(line: _Line, depth: int) -> None:
    if depth + 1 > MAX_ATTR_DEPTH:
        line.fail(f"values nest more than {MAX_ATTR_DEPTH} lists and maps deep")


def _map(line: _Line, depth: int) -> dict[str, Any]:
    """The rest of a `{"key": value, ...}` map, after its `{`; a key may appear once."""
    items: dict[str, Any] = {}
    while not line.accept("}"):
        kind, key = line.next()
        if kind != "str":
            line.fail(f"expected a quoted key, found {clip(key)!r}")
        key_col, name = line.col, _json_string(key, line)
        if name in items:
            line.fail(f"key {clip(key)} appears twice", key_col)
        line.expect(":")
        items[name] = _attr_value(line, depth)
        if not line.accept(","):
            line.expect("}")
            break
    return items


def _type(line: _Line) -> TensorType:
    kind, dtype = line.next()
    start = line.col
    if kind != "ident" or dtype not in dtypes.DTYPES:
        line.fail(f"expected a dtype ({', '.join(dtypes.DTYPES)}), found {clip(dtype)!r}")
    line.expect("[")
    shape = []
    while not line.accept("]"):
        if _starts_dim_expr(line):
            shape.append(_dim_expr(line, attribute=False))
            if not line.accept(","):
                line.expect("]")
                break
            continue
        kind, tok = line.next()
        if kind != "num" or not tok.isdigit():
            line.fail(f"expected a dimension, found {clip(tok)!r}")
        shape.append(_integer(tok, line))
        if not line.accept(","):
            line.expect("]")
            break
    try:
        check_shape(shape)
    except OpTypeError as e:
        line.fail(f"{dtype}: {e}", start)
    quant = _quant(line, len(shape)) if line.accept("{") else None
    return TensorType(tuple(shape), dtype, quant)


_QUANT_FIELDS = ("scale", "zero_point", "axis")


def _quant(line: _Line, ndim: int) -> QuantParams:
    """The rest of `{scale=[...], zero_point=[...], axis=...}` after its `{`: each field once,
    checked as the verifier checks them (so a dict scale never reaches a hash)."""
    start = line.col
    fields = _named_values(line, "}", "quantization field", _QUANT_FIELDS)
    missing = [f for f in _QUANT_FIELDS if f not in fields]
    if missing:
        line.fail(f"quantization is missing {', '.join(missing)}", start)
    try:
        check_quant(fields["scale"], fields["zero_point"], fields["axis"], ndim)
    except OpTypeError as e:
        line.fail(str(e), start)
    return QuantParams(fields["scale"], fields["zero_point"], fields["axis"])


def _value_name(line: _Line) -> str:
    kind, tok = line.next()
    if kind != "value":
        line.fail(f"expected a %value, found {clip(tok)!r}")
    return tok[1:]


def _provenance(comment: str | None, line: _Line) -> Provenance:
    if comment is None:
        return Provenance()
    col = line.comment_col  # errors point at the comment
    text = comment.strip()
    decoder = json.JSONDecoder()
    module = ""
    if text.startswith('"'):
        try:
            module, end = decoder.raw_decode(text)
        except ValueError as e:
            line.fail(f"malformed module name in the provenance comment: {e}", col)
        text = text[end:].strip()
    elif not text.startswith("("):
        module, _, text = text.partition(" ")
        text = text.strip()
    source = ""
    if text:
        if not (text.startswith("(") and text.endswith(")")):
            line.fail("provenance comment must be `# module (source)`", col)
        inner = text[1:-1]
        line.col = col
        source = _json_string(inner, line) if inner.startswith('"') else inner
    return Provenance(module, source)


def _numpy_dtype(t: TensorType, line: _Line) -> np.dtype:
    """The numpy dtype that holds a constant's data: bf16 has none, so its data can only be
    elided (a digest), never written inline or supplied."""
    try:
        return dtypes.to_numpy(t.dtype)
    except dtypes.DTypeError as e:
        line.fail(f"{e}; a {t.dtype} constant can only be a digest, without data")


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
        data = ConstData(array.astype(_numpy_dtype(t, line), copy=False))
        if data.digest != digest:
            line.fail(f"data supplied for %{out.name} does not match its digest @{digest}")
        return data
    col = line.col
    value = _attr_value(line)
    flat = list(value) if isinstance(value, tuple) else [value]
    if len(flat) != t.numel:
        line.fail(f"constant has {len(flat)} values, its type {t} needs {t.numel}", col)
    line.col = col
    return ConstData(_const_array(flat, t, line))


def _const_array(flat: list[Any], t: TensorType, line: _Line) -> np.ndarray:
    """The inline values as an array of t's dtype; each must be a scalar that dtype holds
    (a finite float too: 1e39 is no f32, while inf is written inf)."""
    np_dtype = _numpy_dtype(t, line)
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
            line.fail(f"{clip(format_attr(x))} is not a value of dtype {t.dtype}")
    if category < 2:
        return np.array(flat, dtype=np_dtype).reshape(t.shape)
    with np.errstate(over="ignore"):
        array = np.array(flat, dtype=np_dtype)
    overflow = np.isinf(array) & np.isfinite(np.array(flat, dtype=np.float64))
    if overflow.any():
        line.fail(f"{format_attr(flat[int(np.argmax(overflow))])} overflows dtype {t.dtype}")
    return array.reshape(t.shape)


def _attrs(line: _Line) -> dict[str, Any]:
    """`[name=value, ...]` after an op name, if present; each name once."""
    if not line.accept("["):
        return {}
    return _named_values(line, "]", "attribute")


def _named_values(line: _Line, close: str, what: str,
                  allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`name=value, ...` up to `close` (already past the opener): each name once, and one of
    `allowed` when given."""
    found: dict[str, Any] = {}
    while not line.accept(close):
        kind, key = line.next()
        if kind != "ident" or (allowed is not None and key not in allowed):
            expected = f"one of {', '.join(allowed)}" if allowed else f"an {what} name"
            line.fail(f"expected {expected}, found {clip(key)!r}")
        if key in found:
            line.fail(f"{what} {key} appears twice")
        line.expect("=")
        found[key] = _attr_value(line)
        if not line.accept(","):
            line.expect(close)
            break
    return found


def _node(line: _Line, defined: dict[str, Value], constants) -> Node:
    out_names = [_value_name(line)]
    out_cols = [line.col]
    while line.accept(","):
        out_names.append(_value_name(line))
        out_cols.append(line.col)
    line.expect("=")
    kind, op = line.next()
    if kind != "ident":
        line.fail(f"expected an op name, found {clip(op)!r}")
    if op == "const":
        t = _type(line)
        out = Value(out_names[0], t)
        data = _const_node(line, out, t, constants)
        node = Node("const", (), (out,), Attrs({"value": data}), _provenance(line.comment, line))
    else:
        attrs = _attrs(line)
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
            line.fail(f"{len(out_names)} results but {len(types)} types", out_cols[0])
        outs = tuple(Value(n, t) for n, t in zip(out_names, types))
        node = Node(op, tuple(inputs), outs, Attrs(attrs), _provenance(line.comment, line))
    if not line.at_end():
        line.fail(f"unexpected {clip(line.peek()[1])!r}")
    for v, col in zip(node.outputs, out_cols):
        if v.name in defined:
            line.fail(f"%{v.name} is defined twice", col)
        defined[v.name] = v
    return node


def _header(line: _Line, defined: dict[str, Value]) -> tuple[list[Value], list]:
    """`graph(%x: type, ...) dims(...) {`: the inputs, which `defined` then holds, and the
    declared dims (read first, as the input types use them)."""
    line.expect("graph")
    line.expect("(")
    start = line.pos
    dims = _dims_clause(line)
    line.known = frozenset(r.name for r in dims)
    end, line.pos = line.pos, start
    inputs = []
    while not line.accept(")"):
        name = _value_name(line)
        col = line.col
        line.expect(":")
        v = Value(name, _type(line))
        if name in defined:
            line.fail(f"input %{name} is declared twice", col)
        defined[name] = v
        inputs.append(v)
        if not line.accept(","):
            line.expect(")")
            break
    if dims:
        line.pos = end
    line.expect("{")
    if not line.at_end():
        line.fail(f"unexpected {clip(line.peek()[1])!r}")
    return inputs, dims


def _dims_clause(line: _Line) -> list:
    """`dims(B: 1..128, S: 8..512 %8)` after the inputs' closing parenthesis, if there; the
    line is left after it (or where it started when there is none)."""
    from fxforge.symdims import MAX_DIMS, DimRange

    depth, pos = 1, line.pos
    while pos < len(line.tokens) and depth:
        tok = line.tokens[pos]
        if tok[0] == "punct" and tok[1] in "()":
            depth += 1 if tok[1] == "(" else -1
        pos += 1
    if depth or pos >= len(line.tokens) or line.tokens[pos] != ("ident", "dims"):
        return []
    line.pos = pos + 1
    line.expect("(")
    dims: list[DimRange] = []
    while not line.accept(")"):
        kind, name = line.next()
        col = line.col
        if kind != "ident":
            line.fail(f"expected a dim name, found {clip(name)!r}")
        if any(r.name == name for r in dims):
            line.fail(f"dim {clip(name)} is declared twice", col)
        if len(dims) >= MAX_DIMS:
            line.fail(f"more than {MAX_DIMS} dims are declared", col)
        line.expect(":")
        lo = _dim_bound(line)
        line.expect("..")
        hi = _dim_bound(line)
        multiple = None
        kind, tok = line.peek()
        if kind == "value" and tok[1:].isdigit():  # `%8`: the tokenizer reads it as a value
            line.next()
            multiple = _integer(tok[1:], line)
        try:
            dims.append(DimRange(name, lo, hi, multiple))
        except ValueError as e:
            line.fail(str(e), col)
        if not line.accept(","):
            line.expect(")")
            break
    return dims


def _dim_bound(line: _Line) -> int:
    kind, tok = line.next()
    if kind != "num" or not tok.isdigit():
        line.fail(f"expected a whole number bound, found {clip(tok)!r}")
    return _integer(tok, line)


def _return(line: _Line, defined: dict[str, Value]) -> list[Value]:
    """The values after `return`."""
    outputs = []
    while not line.at_end():
        name = _value_name(line)
        if name not in defined:
            line.fail(f"returns %{name}, which is not defined")
        outputs.append(defined[name])
        if not line.accept(","):
            break
    if not line.at_end():
        line.fail(f"unexpected {clip(line.peek()[1])!r}")
    return outputs


def _guarded(line: _Line, parse, *args: Any) -> Any:
    """`parse(line, *args)`, with an input error it has no message for turned into an
    IRParseError at this line, at the column it had reached: malformed text never escapes as
    another exception, even of a kind not foreseen here."""
    try:
        return parse(line, *args)
    except IRParseError:
        raise
    except _INPUT_ERRORS as e:
        line.fail(f"cannot parse this ({type(e).__name__}: {clip(e, 120)})")


def _lines(text: str) -> list[tuple[int, str]]:
    """(number, text) of each non-blank line. Only "\n" ends a line, as in an editor (python's
    splitlines also breaks at \x0c, \x1c or \u2028 and would skew the numbers)."""
    numbered = ((i + 1, raw.removesuffix("\r")) for i, raw in enumerate(text.split("\n")))
    return [(i, raw) for i, raw in numbered if raw.strip(" \t")]


def parse_ir(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form. `constants` supplies the data of constants printed as a digest,
    keyed by value name or by digest; a supplied array must match its digest."""
    constants = constants or {}
    lines = _lines(text)
    if not lines:
        raise IRParseError("line 1: column 1: empty text: expected `graph(...) {`", 1, 1)
    defined: dict[str, Value] = {}
    inputs, dims = _guarded(_Line(lines[0][1], lines[0][0]), _header, defined)
    known = frozenset(r.name for r in dims)
    nodes, outputs, closed = [], None, False
    for lineno, raw in lines[1:]:
        line = _Line(raw, lineno)
        line.known = known
        if closed:
            line.fail("text after the closing `}`", 1)
        if line.accept("}"):
            if outputs is None:
                line.fail("graph has no `return`")
            if not line.at_end():
                line.fail(f"unexpected {clip(line.peek()[1])!r}")
            closed = True
        elif line.accept("return"):
            outputs = _guarded(line, _return, defined)
        elif outputs is not None:
            line.fail("statement after `return`", 1)
        else:
            nodes.append(_guarded(line, _node, defined, constants))
    if not closed:
        lineno, raw = lines[-1]
        col = len(raw.rstrip()) + 1
        raise IRParseError(f"line {lineno}: column {col}: missing closing `}}` after "
                           f"{_excerpt(raw, col)}", lineno, col)
    return Graph(tuple(inputs), tuple(nodes), tuple(outputs), tuple(dims))
