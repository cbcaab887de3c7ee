"""fxforge's IR: an immutable, typed, SSA graph of tensor ops.

Why immutable: passes return new graphs instead of patching shared side tables, so a pass can be
re-run, diffed, bisected and checked against the numpy reference in isolation. Every node carries
its provenance (the module path and aten op it came from) so reports and errors speak the user's
names.

The text form (see `fxforge.printer`) round-trips: `parse_ir(str(g)) == g`. Large constants
print as a content digest rather than their data, and constants compare by that digest, so the
text is readable and the round trip is still exact about which weights a graph holds.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fxforge import dtypes, symdims


@dataclass(frozen=True)
class QuantParams:
    """Quantization of a value: real = scale * (q - zero_point), per tensor or along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None


@dataclass(frozen=True)
class TensorType:
    """A dim is an int or a symbolic size (`fxforge.symdims`), kept in canonical form."""

    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        dtypes.check(self.dtype)
        try:
            shape = tuple(int(d) for d in self.shape)  # the static fast path
        except TypeError:  # a symbolic dim (int() of a sympy symbol raises TypeError)
            shape = tuple(_dim(d) for d in self.shape)
        else:
            if any(d < 0 for d in shape):
                raise ValueError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        """The element count: an int, or an expression for a symbolic shape."""
        n = math.prod(self.shape)
        return n if type(n) is int else symdims.normalize(n)

    @property
    def is_static(self) -> bool:
        return symdims.is_static(self.shape)

    def __str__(self) -> str:
        from fxforge.printer import format_type

        return format_type(self)


def _dim(d: Any) -> Any:
    try:
        return symdims.normalize(d)
    except (TypeError, ArithmeticError) as e:  # OpTypeError is a TypeError
        raise ValueError(str(e)) from None


@dataclass(frozen=True)
class Value:
    """An SSA value: a name unique within its graph, and its type."""

    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"%{self.name}"


class ConstData:
    """The array of a constant, read-only, identified by a digest of its bytes.

    `array` is None for a constant parsed from text whose data was elided; such a graph can be
    printed, compared and verified, but not executed until the data is supplied.
    """

    __slots__ = ("array", "digest")

    def __init__(self, array: np.ndarray | None, digest: str | None = None):
        if array is not None:
            array = np.array(array, copy=True, order="C")
            array.setflags(write=False)
            digest = digest_of(array)
        elif digest is None:
            raise ValueError("ConstData needs an array or a digest")
        self.array = array
        self.digest = digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstData) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"ConstData(@{self.digest})"


def digest_of(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


class Attrs(Mapping[str, Any]):
    """An immutable, hashable attribute mapping with canonical values (tuples, not lists)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {str(k): canonical_attr(v) for k, v in pairs}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return _attr_key(self._items) == _attr_key(other._items)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_hashable(self._items))

    def replace(self, **changes: Any) -> Attrs:
        return Attrs({**self._items, **changes})

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"


def _attr_key(value: Any) -> Any:
    """Equality key that treats NaN as equal to NaN and keeps 1 distinct from 1.0 and True,
    and a list distinct from a map (`[]` from `{}`)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _attr_key(v)) for k, v in value.items())))
    if isinstance(value, tuple):
        return ("list", tuple(_attr_key(v) for v in value))
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value).__name__, value)


def _hashable(value: Any) -> Any:
    return _attr_key(value)


def canonical_attr(value: Any) -> Any:
    """Lists become tuples, numpy scalars become python ones; anything else must already be
    an int, float, bool, str, None, ConstData or a dict of those."""
    if isinstance(value, (list, tuple)):
        return tuple(canonical_attr(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): canonical_attr(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, ConstData)):
        return value
    if symdims.is_sym(value):  # a symbolic size (a reshape target, a slice bound, ...)
        if value.is_Integer:
            return int(value)
        return symdims.normalize_attr(value)
    raise TypeError(f"attribute value of type {type(value).__name__} is not allowed: {value!r}")


_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})


def printable(text: str) -> str:
    """`text` with control, format (bidi), line-separator and private characters escaped
    (`\\r`, `\\u2028`): model-derived names go into messages and reports, where such characters
    would break lines, rewrite what is shown or hide text."""
    if text.isprintable():
        return text
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in _INVISIBLE else c for c in text)


@dataclass(frozen=True)
class Provenance:
    """Where a node came from: the module path (`layer1.0.conv1`) and the source op."""

    module: str = ""
    source: str = ""

    def describe(self) -> str:
        where = printable(self.module) or "<top>"
        return f"{where} ({self.source})" if self.source else where


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Attrs = field(default_factory=Attrs)
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.attrs, Attrs):
            object.__setattr__(self, "attrs", Attrs(self.attrs))

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def describe(self) -> str:
        """A short locator for error messages: `%3 = conv2d at layer1.0.conv1 (aten.conv2d)`."""
        names = ", ".join(str(v) for v in self.outputs)
        return f"{names} = {self.op} at {self.provenance.describe()}"


@dataclass(frozen=True)
class Graph:
    """`dims` declares the symbols of symbolic dims with their ranges (`symdims.DimRange`);
    a static graph has none."""

    inputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]
    dims: tuple[symdims.DimRange, ...] = ()

    def __post_init__(self) -> None:
        for name in ("inputs", "nodes", "outputs", "dims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @cached_property
    def symbolic(self) -> bool:
        """Whether a type or an attribute holds a symbolic dim (computed once)."""
        return bool(symdims.symbols_of(self))

    def __str__(self) -> str:
        from fxforge.printer import print_graph

        return print_graph(self)

    @cached_property
    def producers(self) -> dict[str, Node]:
        """Value name -> the node that defines it (graph inputs have none)."""
        return {v.name: node for node in self.nodes for v in node.outputs}

    @cached_property
    def users(self) -> dict[str, tuple[Node, ...]]:
        """Value name -> nodes that read it, in graph order."""
        table: dict[str, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                table.setdefault(v.name, []).append(node)
        return {k: tuple(v) for k, v in table.items()}

    def constant(self, value: Value) -> np.ndarray | None:
        """The array of `value` if a `const` node defines it and its data is present."""
        node = self.producers.get(value.name)
        if node is None or node.op != "const":
            return None
        return node.attrs["value"].array

    def value_names(self) -> set[str]:
        return {v.name for v in self.inputs} | set(self.producers)


class NameGenerator:
    """Fresh SSA names that avoid the given ones: `prefix0`, `prefix1`, ..."""

    def __init__(self, taken: Iterable[str] = ()):
        self._taken = set(taken)
        self._counters: dict[str, int] = {}

    def fresh(self, prefix: str = "v") -> str:
        n = self._counters.get(prefix, 0)
        while f"{prefix}{n}" in self._taken:
            n += 1
        self._counters[prefix] = n + 1
        name = f"{prefix}{n}"
        self._taken.add(name)
        return name

    def claim(self, name: str) -> str:
        """Use `name` if free, else the first free `name_1`, `name_2`, ..."""
        candidate, n = name, 0
        while candidate in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add(candidate)
        return candidate
