"""Symbolic dims: one compiled graph serves a range of batch sizes and sequence lengths.

A dim of a `TensorType` (or an integer attribute that is a size: reshape targets, slice bounds,
split sizes, pads, arange bounds) is a python `int` or a `sympy.Expr` over integer, positive
symbols (`sym("B")`). sympy because torch.export's own symbolic sizes are sympy expressions, and
because it gives canonical forms for free: every expression is kept `sympy.expand`ed, so equal
polynomials are structurally equal and a type compares with `==` as before. Floor division
(pooling and conv windows) is `sympy.floor(a / k)` with a positive integer `k`.

sympy is imported only when a symbolic dim is first made (`sym`, `parse_dim`, ...): a graph
with static shapes never loads it, and its `int` fast paths stay as they were.

A graph declares its symbols with their ranges (`Graph.dims`, `DimRange`); `bind` reads their
values from the concrete shapes of a call's inputs and checks them, and `substitute` turns a
symbolic graph into the static graph the executors run (`specialize` caches those per binding).

Text form of a dim (`format_dim` / `parse_dim`): integers, declared names, `+`, `-`, `*`, `//`
by a positive integer constant, and parentheses: `B*S`, `2*B`, `S - 1`, `(S + 1)//2`. The
parser is a small tokenizer and recursive descent; untrusted text is never given to sympify,
eval or parse_expr, and its size (tokens, nesting, integers) is bounded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fxforge.errors import InputError
from fxforge.shapes import INT64_MAX, OpTypeError

if TYPE_CHECKING:
    import sympy

    from fxforge.ir import Graph

Dim = Any  # int | sympy.Expr (sympy is imported lazily; see the module docstring)

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
RESERVED = frozenset({"true", "false", "none", "inf", "nan", "graph", "dims", "return", "const"})
MAX_DIMS = 32  # symbols a graph may declare
MAX_TOKENS = 256  # tokens of one dim expression (ResNet's last feature map takes 25)
MAX_DEPTH = 16  # nested parentheses of one dim expression
MAX_TERMS = 64  # terms of one dim expression expanded (sympy's work on it stays small)


class DimError(InputError, ValueError):
    """Input shapes that do not fit a symbolic graph: a symbol out of its range or not a
    multiple it must be, two inputs that disagree about a symbol, a static dim that differs.
    Names the input, the dim index, the symbol and its range."""


def _sp():
    import sympy

    return sympy


def is_sym(d: object) -> bool:
    """Whether `d` is a symbolic dim (a sympy expression); never loads sympy."""
    if type(d) is int:
        return False
    mod = sys.modules.get("sympy")
    return mod is not None and isinstance(d, mod.Expr)


def sym(name: str) -> sympy.Symbol:
    """The symbol of a dim: an integer > 0 named `name` (an identifier)."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(f"dim name {name!r} must be an identifier (not one of "
                         f"{', '.join(sorted(RESERVED))})")
    return _sp().Symbol(name, integer=True, positive=True)


def normalize(d: Any) -> Dim:
    """A dim in canonical form: an int, or an expanded sympy expression that is not a number.
    Rejects bools, non-integer and negative constants, and expressions that are provably
    negative."""
    if type(d) is int:
        if d < 0:
            raise OpTypeError(f"negative dimension {d}")
        return d
    if isinstance(d, bool):
        raise OpTypeError(f"dimension {d!r} is a bool, not a size")
    if not is_sym(d):
        try:
            import operator

            value = operator.index(d)  # numpy integers; not floats
        except TypeError:
            raise OpTypeError(f"dimension {d!r} is not an integer or a symbolic size") from None
        return normalize(int(value))
    if d.is_Symbol and d.is_integer and d.is_positive:  # the common case: a bare symbol
        return d
    if d.is_Number:
        if not d.is_Integer:
            raise OpTypeError(f"dimension {d} is not an integer")
        return normalize(int(d))
    e = _expand(d)
    if e.is_Number:
        return normalize(e)
    if e.is_integer is not True or e.free_symbols - _dim_symbols(e):
        raise OpTypeError(f"dimension {e} is not an integer expression of dim symbols")
    if e.is_negative:
        raise OpTypeError(f"dimension {format_dim(e)} is negative")
    return e


def normalize_attr(d: Any) -> Any:
    """A symbolic integer attribute in canonical form (it may be negative: a slice start)."""
    e = _expand(d)
    if e.is_Integer:
        return int(e)
    if e.is_integer is not True or e.free_symbols - _dim_symbols(e):
        raise TypeError(f"attribute value {e} is not an integer expression of dim symbols")
    return e


def _expand(e):
    return _sp().expand(e)


def _dim_symbols(e) -> set:
    return {s for s in e.free_symbols if s.is_integer and s.is_positive}


def is_static(shape: Iterable[Any]) -> bool:
    return all(type(d) is int for d in shape)


def symbols_of(x: Any) -> frozenset[str]:
    """Names of the symbols in a dim, shape, TensorType, Value, attribute value, Node or Graph."""
    from fxforge.ir import Attrs, Graph, Node, TensorType, Value

    names: set[str] = set()

    def visit(v: Any) -> None:
        if type(v) is int or v is None or isinstance(v, (str, float, bool)):
            return
        if is_sym(v):
            names.update(s.name for s in v.free_symbols)
        elif isinstance(v, TensorType):
            for d in v.shape:
                visit(d)
        elif isinstance(v, Value):
            visit(v.type)
        elif isinstance(v, (tuple, list)):
            for item in v:
                visit(item)
        elif isinstance(v, (dict, Attrs)):
            for item in v.values():
                visit(item)
        elif isinstance(v, Node):
            visit(v.attrs)
            for out in v.outputs:
                visit(out.type)
        elif isinstance(v, Graph):
            for inp in v.inputs:
                visit(inp.type)
            for node in v.nodes:
                visit(node)

    visit(x)
    return frozenset(names)


def show(value: Any) -> Any:
    """`value` (a dim, a shape, a list of them) for an error message: itself when it holds no
    symbol, so that static messages read as they always did; else text with dims in their
    text form."""
    return value if not symbols_of(value) else _show(value)


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(map(_show, v)) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(map(_show, v)) + "]"
    return format_dim(v)


# ---------------------------------------------------------------------------------------------
# Arithmetic and proofs over symbols (all symbols are integers >= 1)


def equal(a: Dim, b: Dim) -> bool:
    """Whether two dims are provably equal."""
    if type(a) is int and type(b) is int:
        return a == b
    if a == b:
        return True
    if not (is_sym(a) or is_sym(b)):
        return False
    diff = _expand(a - b)
    if diff == 0:
        return True
    if diff.is_Number:
        return False
    return _sp().simplify(diff) == 0


def same_shape(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))


def known_ge(a: Dim, b: Dim) -> bool | None:
    """True if a >= b provably, False if a < b provably, None when it depends on the symbols.
    Within `assume(ranges)`, a difference linear in the symbols is decided over their ranges
    too (`x[:, :S]` of a 512-long buffer when S: 1..512)."""
    if type(a) is int and type(b) is int:
        return a >= b
    diff = _expand(a - b)
    if diff.is_nonnegative:
        return True
    if diff.is_negative:
        return False
    ranges = _RANGES.get()
    if ranges:
        lo, hi = _linear_bounds(diff, ranges)
        if lo is not None and lo >= 0:
            return True
        if hi is not None and hi < 0:
            return False
    return None


_RANGES: contextvars.ContextVar[Mapping[str, DimRange] | None] = contextvars.ContextVar(
    "fxforge_dim_ranges", default=None)


@contextlib.contextmanager
def assume(ranges: Iterable[DimRange]):
    """Shape inference within knows the declared ranges of these symbols (a graph's `dims`):
    the verifier and the PassManager enter it for the graph at hand, and so must a converter
    that builds a graph's nodes. Outside, only positivity is known, and a size that needs a
    range says that it needs a static size."""
    known = {r.name: r for r in ranges if isinstance(r, DimRange)}  # the verifier names others
    token = _RANGES.set({**(_RANGES.get() or {}), **known})
    try:
        yield
    finally:
        _RANGES.reset(token)


def _linear_bounds(e, ranges: Mapping[str, DimRange]) -> tuple[int | None, int | None]:
    """(min, max) of `e` over the ranges when it is linear in its symbols (None: unbounded or
    not linear); a symbol with no declared range is >= 1."""
    lo: int | None = 0
    hi: int | None = 0
    for term, coeff in e.as_coefficients_dict().items():
        if not coeff.is_Integer:
            return None, None
        c = int(coeff)
        if term == 1:
            lo, hi = (None if lo is None else lo + c), (None if hi is None else hi + c)
            continue
        if not term.is_Symbol:
            return None, None
        r = ranges.get(term.name)
        smin, smax = (r.min, r.max) if r is not None else (1, None)
        low, high = (smin, smax) if c > 0 else (smax, smin)
        lo = None if lo is None or low is None else lo + c * low
        hi = None if hi is None or high is None else hi + c * high
    return lo, hi


def exact_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it is an integer for every value of the symbols, else None."""
    if type(a) is int and type(b) is int:
        return a // b if b and a % b == 0 else None
    q = _expand(_sp().cancel(a / b))
    if q.is_Integer:
        return int(q) if q >= 0 else None
    if q.is_integer is not True or q.free_symbols - _dim_symbols(q):
        return None
    return q


def floordiv(a: Dim, k: Dim) -> Dim:
    """a // k for a positive integer k (static)."""
    if type(k) is not int or k < 1:
        raise OpTypeError(f"floor division needs a static divisor >= 1, got {format_dim(k)}")
    if type(a) is int:
        return a // k
    return normalize(_sp().floor(a / k)) if k != 1 else a


def ceildiv(a: Dim, k: Dim) -> Dim:
    if type(a) is int and type(k) is int:
        return -(-a // k)
    return floordiv(a + k - 1, k)


def static(d: Dim, op: str, what: str) -> int:
    """`d` as an int, or the OpTypeError of an op that needs a static size there."""
    if type(d) is int:
        return d
    raise OpTypeError(f"{op} needs a static size for {what}, got {format_dim(d)}")


def evaluate(d: Dim, values: Mapping[str, int]) -> Dim:
    """`d` with the symbols named in `values` replaced (an int when all are). The value may be
    negative (an attribute: a slice start); a type checks its own dims."""
    if type(d) is int:
        return d
    sp = _sp()
    table = {s: sp.Integer(values[s.name]) for s in d.free_symbols if s.name in values}
    if not table:
        return d
    return normalize_attr(d.xreplace(table))


# ---------------------------------------------------------------------------------------------
# Text form


def format_dim(d: Any) -> str:
    """An int as digits; an expression as compact text that `parse_dim` reads back exactly."""
    if type(d) is int:
        return str(d)
    if not is_sym(d):
        return str(d)
    return _fmt(d, 0)


_ADD, _MUL, _ATOM = 1, 2, 3


def _fmt(e, prec: int) -> str:
    sp = _sp()
    if e.is_Integer:
        text = str(int(e))
        return f"({text})" if int(e) < 0 and prec > _ADD else text
    if e.is_Symbol:
        return e.name
    if e.is_Add:
        terms = list(e.as_ordered_terms())
        parts = [_fmt(terms[0], _ADD)]
        for t in terms[1:]:
            coeff, _ = t.as_coeff_Mul()
            if coeff.is_negative:
                parts.append(f"- {_fmt(-t, _ADD + 1)}")
            else:
                parts.append(f"+ {_fmt(t, _ADD + 1)}")
        text = " ".join(parts)
        return f"({text})" if prec > _ADD else text
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff.is_negative:  # `-2*B` reads as (-2)*B: unary minus binds tightest, so a
            text = "-" + _fmt(-e, _MUL + 1 if isinstance(-e, sp.floor) else _MUL)  # -(a//k)
            return f"({text})" if prec > _ADD else text
        factors = [] if coeff == 1 else [coeff]
        factors += [f for f in sp.Mul.make_args(rest)]
        text = "*".join(_fmt(f, _MUL + 1) for f in factors)
        return f"({text})" if prec > _MUL else text
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        text = "*".join([_fmt(e.base, _MUL + 1)] * int(e.exp))
        return f"({text})" if prec > _MUL else text
    if isinstance(e, sp.floor):
        arg = e.args[0]
        k = math.lcm(*[int(t.as_coeff_Mul()[0].q) for t in sp.Add.make_args(arg)])
        num = _expand(arg * k)
        text = f"{_fmt(num, _MUL + 1)}//{k}"  # `//` groups like `*`, from the left
        return f"({text})" if prec > _MUL else text
    raise ValueError(f"dim expression {e} has no text form")


_DIM_TOKEN = re.compile(r"\s*(?:(?P<num>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                        r"|(?P<op>//|[-+*()]))", re.ASCII)


def tokenize_dim(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of a dim expression: num, name, op."""
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _DIM_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        tokens.append((m.lastgroup or "", m.group(m.lastgroup or 0)))
        pos = m.end()
    return tokens


def parse_dim(text: str, known: Iterable[str]) -> Dim:
    """A dim from its text (`format_dim`'s form); only the names in `known` may appear.
    Raises ValueError with a message on anything else."""
    if not isinstance(text, str) or len(text) > 1000:
        raise ValueError("a dim expression is a string of at most 1000 characters")
    tokens = tokenize_dim(text)
    return parse_dim_tokens(tokens, frozenset(known))


def parse_dim_tokens(tokens: Sequence[tuple[str, str]], known: frozenset[str]) -> Dim:
    """Recursive descent over tokens (num / name / op):

        expr   := term (("+" | "-") term)*
        term   := unary (("*" | "//") unary)*
        unary  := "-" unary | atom
        atom   := num | name | "(" expr ")"

    `//` needs a static divisor >= 1. The value may be negative (an attribute such as a slice
    start); `normalize` decides whether it is a valid size."""
    if not tokens:
        raise ValueError("empty dim expression")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"dim expression has more than {MAX_TOKENS} tokens")
    parser = _DimParser(tokens, known)
    value, _ = parser.expr(0)
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.pos][1]!r} in dim expression")
    return _finish(value)


def _finish(value: Any) -> Any:
    if type(value) is int:
        return value
    e = _expand(value)
    if e.is_Integer:
        return int(e)
    for atom in e.atoms(_sp().Rational):
        if abs(atom.p) > INT64_MAX or abs(atom.q) > INT64_MAX:
            raise ValueError("dim expression holds an integer outside int64's range")
    return e


class _DimParser:
    """Each rule returns (value, terms): `terms` bounds the term count of the value expanded,
    so that hostile text (a product of many sums) is refused before sympy expands it."""

    def __init__(self, tokens: Sequence[tuple[str, str]], known: frozenset[str]):
        self.tokens, self.known, self.pos = tokens, known, 0

    def peek(self) -> str:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else ""

    def expr(self, depth: int) -> tuple[Any, int]:
        value, terms = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs, n = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
            terms = _bound_terms(terms + n)
            _check_int(value)
        return value, terms

    def term(self, depth: int) -> tuple[Any, int]:
        value, terms = self.unary(depth)
        while self.peek() in ("*", "//"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs, n = self.unary(depth)
            if op == "*":
                value = value * rhs
                terms = _bound_terms(terms * n)
            else:
                if type(rhs) is not int or rhs < 1:
                    raise ValueError("// needs a positive integer constant divisor")
                value = value // rhs if type(value) is int else _sp().floor(value / rhs)
                terms = _bound_terms(terms + 1)  # sympy may split terms off, or drop a //1
            _check_int(value)
        return value, terms

    def unary(self, depth: int) -> tuple[Any, int]:
        if self.peek() == "-":
            self.pos += 1
            value, terms = self.unary(depth)
            return -value, terms
        return self.atom(depth)

    def atom(self, depth: int) -> tuple[Any, int]:
        if self.pos >= len(self.tokens):
            raise ValueError("dim expression ends too early")
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "num":
            digits = text.lstrip("0") or "0"
            if len(digits) > 19 or int(digits) > INT64_MAX:
                raise ValueError(f"integer {text[:30]} is outside int64's range")
            return int(digits), 1
        if kind in ("name", "ident"):
            if text not in self.known:
                raise ValueError(f"undeclared dim symbol {text!r}")
            return sym(text), 1
        if text == "(":
            if depth + 1 > MAX_DEPTH:
                raise ValueError(f"dim expression nests more than {MAX_DEPTH} parentheses")
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise ValueError("missing ')' in dim expression")
            self.pos += 1
            return value
        raise ValueError(f"unexpected {text!r} in dim expression")


def _bound_terms(terms: int) -> int:
    if terms > MAX_TERMS:
        raise ValueError(f"dim expression expands to more than {MAX_TERMS} terms")
    return terms


def _check_int(value: Any) -> None:
    if type(value) is int and abs(value) > INT64_MAX:
        raise ValueError("dim expression computes an integer outside int64's range")


# ---------------------------------------------------------------------------------------------
# Ranges


@dataclass(frozen=True)
class DimRange:
    """A symbol's declared range: min <= value <= max and, if given, value % multiple_of == 0.
    Text: `B: 1..128`, `S: 8..512 %8`."""

    name: str
    min: int = 1
    max: int = INT64_MAX
    multiple_of: int | None = None

    def __post_init__(self) -> None:
        sym(self.name)  # checks the name
        for field_name in ("min", "max"):
            v = getattr(self, field_name)
            if type(v) is not int or not 1 <= v <= INT64_MAX:
                raise ValueError(f"dim {self.name}: {field_name} {v!r} must be an int in "
                                 "[1, 2**63 - 1]")
        if self.min > self.max:
            raise ValueError(f"dim {self.name}: min {self.min} is more than max {self.max}")
        m = self.multiple_of
        if m is not None and (type(m) is not int or not 1 <= m <= INT64_MAX):
            raise ValueError(f"dim {self.name}: multiple_of {m!r} must be an int >= 1")
        if m is not None and -(-self.min // m) * m > self.max:
            raise ValueError(f"dim {self.name}: no multiple of {m} in {self.min}..{self.max}")

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max and (
            self.multiple_of is None or value % self.multiple_of == 0)

    def describe(self) -> str:
        return f"{self.name}: {self.min}..{self.max}" + (
            f" %{self.multiple_of}" if self.multiple_of is not None else "")

    __str__ = describe


# ---------------------------------------------------------------------------------------------
# Substitution and binding


def substitute(x: Any, values: Mapping[str, int]) -> Any:
    """`x` (a dim, shape, TensorType, Value, attribute value, Attrs, Node or Graph) with the
    symbols named in `values` replaced by those sizes. A graph loses the ranges of the symbols
    it no longer holds."""
    from fxforge.ir import Attrs, ConstData, Graph, Node, TensorType, Value

    if not values:
        return x
    if type(x) is int or x is None or isinstance(x, (str, float, bool, ConstData)):
        return x
    if is_sym(x):
        return evaluate(x, values)
    if isinstance(x, TensorType):
        if is_static(x.shape):
            return x
        return TensorType(tuple(evaluate(d, values) for d in x.shape), x.dtype, x.quant)
    if isinstance(x, Value):
        t = substitute(x.type, values)
        return x if t is x.type else Value(x.name, t)
    if isinstance(x, tuple):
        return tuple(substitute(v, values) for v in x)
    if isinstance(x, list):
        return [substitute(v, values) for v in x]
    if isinstance(x, Attrs):
        return Attrs({k: substitute(v, values) for k, v in x.items()})
    if isinstance(x, dict):
        return {k: substitute(v, values) for k, v in x.items()}
    if isinstance(x, Node):
        attrs = x.attrs
        if symbols_of(attrs):  # canonical again: a float attribute (arange's end) is a float
            from fxforge import ops

            attrs = substitute(attrs, values)
            opdef = ops.OPS.get(x.op)
            attrs = ops.complete_attrs(opdef, attrs) if opdef is not None else attrs
        return Node(x.op, tuple(substitute(v, values) for v in x.inputs),
                    tuple(substitute(v, values) for v in x.outputs), attrs, x.provenance)
    if isinstance(x, Graph):
        inputs = tuple(substitute(v, values) for v in x.inputs)
        nodes = tuple(substitute(n, values) for n in x.nodes)
        outputs = tuple(substitute(v, values) for v in x.outputs)
        dims = tuple(r for r in x.dims if r.name not in values)
        return Graph(inputs, nodes, outputs, dims)
    raise TypeError(f"cannot substitute dims in a {type(x).__name__}")


def bind(graph: Graph, shapes: Sequence[Sequence[int]]) -> dict[str, int]:
    """Symbol values from the concrete shapes of the graph's inputs (one shape per input): a
    dim of an input that is a bare symbol gives that symbol's value. Checks that inputs agree,
    that every value is in its declared range (and a multiple where declared), and that every
    other dim (static or an expression) has the size it must have. Raises DimError."""
    if len(shapes) != len(graph.inputs):
        raise DimError(f"graph takes {len(graph.inputs)} inputs, got {len(shapes)}")
    ranges = {r.name: r for r in graph.dims}
    values: dict[str, int] = {}
    where: dict[str, str] = {}
    for v, shape in zip(graph.inputs, shapes):
        shape = tuple(shape)
        if len(shape) != v.type.ndim:
            raise DimError(f"input %{v.name} must have rank {v.type.ndim} "
                           f"({_fmt_shape(v.type.shape)}), got shape {list(shape)}")
        for k, (d, n) in enumerate(zip(v.type.shape, shape)):
            if type(d) is int or not d.is_Symbol:
                continue
            n = int(n)
            here = f"input %{v.name} dim {k}"
            r = ranges.get(d.name)
            if d.name in values and values[d.name] != n:
                raise DimError(f"{here} is {n}, but {where[d.name]} gave {d.name} = "
                               f"{values[d.name]}; both are {d.name}"
                               + (f" ({r.describe()})" if r else ""))
            if r is not None and not r.contains(n):
                raise DimError(f"{here} is {n}, outside the range of {r.describe()}")
            if r is None and n < 1:
                raise DimError(f"{here} is {n}; symbol {d.name} must be >= 1")
            values[d.name] = n
            where[d.name] = here
    for v, shape in zip(graph.inputs, shapes):
        for k, (d, n) in enumerate(zip(v.type.shape, tuple(shape))):
            if type(d) is int:
                if d != n:
                    raise DimError(f"input %{v.name} dim {k} must be {d}, got {n} (shape "
                                   f"{list(shape)} for {_fmt_shape(v.type.shape)})")
                continue
            missing = sorted(s.name for s in d.free_symbols if s.name not in values)
            if missing:
                raise DimError(f"input %{v.name} dim {k} is {format_dim(d)}, but no input "
                               f"dim is {missing[0]} alone, so its value is unknown")
            want = evaluate(d, values)
            if want != n:
                raise DimError(f"input %{v.name} dim {k} must be {format_dim(d)} = {want}, "
                               f"got {n}")
    unbound = sorted(symbols_of(graph) - set(values))
    if unbound:
        raise DimError(f"symbol {unbound[0]} is not the size of any input dim, so a call "
                       "cannot give its value")
    return values


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(format_dim(d) for d in shape) + "]"


def example_sizes(graph: Graph, prefer: int = 2) -> dict[str, int]:
    """One size per symbol of `graph` that its range admits, near `prefer` (2: a batch of one
    hides broadcasting mistakes): for seeded inputs where a caller gives none (reproducers,
    numeric checks)."""
    sizes = {name: prefer for name in symbols_of(graph)}
    for r in graph.dims:
        size = max(r.min, min(prefer, r.max))
        m = r.multiple_of
        if m is not None and size % m:
            size = -(-size // m) * m if -(-size // m) * m <= r.max else -(-r.min // m) * m
        sizes[r.name] = size
    return sizes


SPECIALIZE_CACHE = 16  # static graphs kept per symbolic graph, most recent first


def specialize(graph: Graph, values: Mapping[str, int]) -> Graph:
    """`substitute(graph, values)`, cached on the graph per binding (a few recent ones)."""
    key = tuple(sorted(values.items()))
    with _SPECIALIZE_LOCK:  # one graph may run in many threads
        cache = graph.__dict__.setdefault("_fxforge_specialized", {})
        hit = cache.pop(key, None)
        if hit is not None:
            cache[key] = hit
            return hit
    try:
        hit = substitute(graph, values)
    except ValueError as e:  # `S - 2` with S = 1: the ranges admit a size no shape can have
        given = ", ".join(f"{k} = {v}" for k, v in key)
        raise DimError(f"with {given} a size of the graph is negative ({e}); narrow the "
                       "declared ranges") from None
    with _SPECIALIZE_LOCK:
        while len(cache) >= SPECIALIZE_CACHE:
            cache.pop(next(iter(cache)))
        cache[key] = hit
    return hit


_SPECIALIZE_LOCK = threading.Lock()
