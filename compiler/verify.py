"""The IR verifier: SSA well-formedness and a fresh type inference of every node.

Runs after every pass in tests and in debug mode, so a pass that leaves a stale type or a dangling
use is caught at the pass that did it, not three passes later.

Its only exception is `IRVerificationError`, naming the node and its op: a hostile or corrupt
graph (a 400-digit attribute, a dict where a scale belongs, an arange of 1e616 elements) is
refused like any other ill-typed graph, never with an OverflowError or a TypeError from deep in
an inference rule. A graph that verifies stays within the IR's limits (`fxforge.shapes`), so
it also prints and parses back.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NoReturn

from fxforge import dtypes, ops, symdims
from fxforge.errors import FxforgeError
from fxforge.ir import ConstData, Graph, Node, QuantParams, TensorType, Value
from fxforge.kernels import opaque
from fxforge.shapes import MAX_ATTR_DEPTH, OpTypeError, check_quant, check_shape, clip, is_int


class IRVerificationError(FxforgeError, ValueError):
    """The graph is not well formed; the message names the offending node."""


def _fail(node: Node | None, index: int | None, message: str,
          cause: BaseException | None = None) -> NoReturn:
    where = f"node {index} ({node.describe()})" if node is not None else "graph"
    raise IRVerificationError(f"{where}: {message}") from cause


_NAME = re.compile(r"[A-Za-z0-9_]+")  # what the text form can hold (`%name`)


def verify(graph: Graph) -> None:
    """Raise IRVerificationError if `graph` is not well formed; any other exception met while
    checking (a bug this module has not foreseen) is turned into one, so callers that catch
    IRVerificationError see every bad graph."""
    try:
        _verify(graph)
    except IRVerificationError:
        raise
    except Exception as e:  # noqa: BLE001 - the point: no other exception type escapes
        _fail(None, None, f"checking it raised {type(e).__name__}: {clip(e, 300)}", e)


def _verify(graph: Graph) -> None:
    _check_dims(graph)
    defined: dict[str, Value] = {}
    for v in graph.inputs:
        if not isinstance(v.name, str) or not _NAME.fullmatch(v.name):
            _fail(None, None, f"input name {v.name!r} is not made of [A-Za-z0-9_]")
        if v.name in defined:
            _fail(None, None, f"input %{v.name} is declared twice")
        _check_type(None, None, v)
        defined[v.name] = v
    with symdims.assume(graph.dims):  # inference knows the declared ranges (symdims.known_ge)
        for i, node in enumerate(graph.nodes):
            try:
                _check_node(node, i, defined)
            except IRVerificationError:
                raise
            except Exception as e:  # noqa: BLE001 - an unforeseen failure still names the node
                _fail(node, i, f"checking it raised {type(e).__name__}: {clip(e, 300)}", e)
    for v in graph.outputs:
        if v.name not in defined:
            _fail(None, None, f"returns %{v.name}, which is not defined")
        if defined[v.name] != v:
            _fail(None, None, f"returns %{v.name} with type {clip(v.type)}, but it was defined "
                              f"as {defined[v.name].type}")


def _check_dims(graph: Graph) -> None:
    """The declared dims are DimRanges with distinct names, and every symbol of a type or an
    attribute is declared."""
    names = set()
    for r in graph.dims:
        if not isinstance(r, symdims.DimRange):
            _fail(None, None, f"dims holds a {type(r).__name__}, not a DimRange")
        if r.name in names:
            _fail(None, None, f"dim {r.name} is declared twice")
        names.add(r.name)
    if not graph.dims and not graph.symbolic:
        return
    undeclared = sorted(symdims.symbols_of(graph) - names)
    if undeclared:
        _fail(None, None, f"symbol {undeclared[0]} is used in a shape or an attribute but not "
                          "declared in the graph's dims")


def _check_node(node: Node, i: int, defined: dict[str, Value]) -> None:
    """One node: its uses, its op and arity, its types, its attributes, its inferred types;
    then it defines its outputs."""
    for v in node.inputs:
        if v.name not in defined:
            _fail(node, i, f"uses %{v.name} before it is defined")
        if defined[v.name] != v:
            _fail(node, i, f"uses %{v.name} with type {clip(v.type)}, but it was defined as "
                           f"{defined[v.name].type}")
    if not node.outputs:
        _fail(node, i, "defines no value")
    try:
        opdef = ops.get(node.op)
    except ops.OpRegistryError as e:
        _fail(node, i, e.args[0])
    lo, hi, n = opdef.min_inputs, opdef.max_inputs, len(node.inputs)
    if n < lo or (hi is not None and n > hi):
        want = lo if lo == hi else f"{lo} to {'any' if hi is None else hi}"
        _fail(node, i, f"{node.op} takes {want} inputs, got {n}")
    for v in node.outputs:
        _check_type(node, i, v)
    for name, value in node.attrs.items():
        problem = _attr_problem(value, 0, top_const=node.op == "const" and name == "value")
        if problem is not None:
            _fail(node, i, f"attribute {name} {problem}")
    try:
        _check_inference(node, i, opdef)
    except (OpTypeError, dtypes.DTypeError) as e:
        _fail(node, i, str(e))
    for v in node.outputs:
        if not isinstance(v.name, str) or not _NAME.fullmatch(v.name):
            _fail(node, i, f"value name {v.name!r} is not made of [A-Za-z0-9_]")
        if v.name in defined:
            _fail(node, i, f"redefines %{v.name} (SSA values are defined once)")
        defined[v.name] = v


def _check_inference(node: Node, i: int, opdef: ops.OpDef) -> None:
    """Attributes complete and canonical, and the declared types the ones inference gives."""
    attrs = ops.complete_attrs(opdef, node.attrs)
    if attrs != node.attrs:
        _fail(node, i, "attributes are not in canonical form (defaults must be explicit)")
    if node.op == "const" and not isinstance(node.attrs["value"], ConstData):
        _fail(node, i, f"value must be a ConstData, got {clip(node.attrs['value'], use_repr=True)}")
    if node.op == "torch_op":  # IR text may name anything: only a registered operator runs
        try:
            opaque.resolve(node.attrs["target"])
        except opaque.OpaqueOpError as e:
            _fail(node, i, str(e))
    if node.op == "const" and node.attrs["value"].array is None:
        if len(node.outputs) != 1:
            _fail(node, i, f"const defines {len(node.outputs)} values, not one")
        # data elided in text: the type cannot be re-inferred, only trusted
    elif opdef.infer is not None:
        inferred = ops.infer_types(opdef, [v.type for v in node.inputs], attrs)
        declared = tuple(v.type for v in node.outputs)
        if tuple((t.shape, t.dtype) for t in inferred) != tuple(
                (t.shape, t.dtype) for t in declared) and not _same_types(inferred, declared):
            _fail(node, i, f"declared types {[str(t) for t in declared]} but inference "
                           f"gives {[str(t) for t in inferred]}")


def _same_types(a: tuple[TensorType, ...], b: tuple[TensorType, ...]) -> bool:
    """Equal dtypes and shapes, symbolic dims compared by value (sympy), not by form."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and symdims.same_shape(x.shape, y.shape) for x, y in zip(a, b))


def _check_type(node: Node | None, index: int | None, v: Value) -> None:
    """A value's type within the IR's limits (rank, dims, element count) and, if quantized,
    with well-formed parameters: an inference rule may then rely on both."""
    t = v.type
    if not isinstance(t, TensorType):
        _fail(node, index, f"%{v.name} has no TensorType but {type(t).__name__}")
    if t.quant is not None and not isinstance(t.quant, QuantParams):
        _fail(node, index, f"%{v.name}'s quant is a {type(t.quant).__name__}, not QuantParams")
    if not symdims.is_static(t.shape):
        for d in t.shape:
            problem = _expr_problem(d) if symdims.is_sym(d) else None
            if problem is not None:
                _fail(node, index, f"the type of %{v.name}: a dim {problem}")
    try:
        check_shape(t.shape)
        if t.quant is not None:
            check_quant(t.quant.scale, t.quant.zero_point, t.quant.axis, t.ndim)
    except OpTypeError as e:
        _fail(node, index, f"the type of %{v.name}: {e}")


def _attr_problem(value: Any, depth: int, top_const: bool = False) -> str | None:
    """What keeps an attribute value from printing and parsing back (None if nothing): ints
    past int64, nesting past MAX_ATTR_DEPTH, ConstData anywhere but a const's value, or a
    type the text has no form for. `depth` counts the lists and maps around `value`."""
    if value is None or isinstance(value, (bool, float, str)):
        return None
    if isinstance(value, int):
        return None if is_int(value) else f"holds {clip(value)}, outside int64's range"
    if isinstance(value, ConstData):
        return None if top_const else "holds a ConstData (only a const's value may)"
    if symdims.is_sym(value):
        return _expr_problem(value)
    if isinstance(value, tuple):
        items = value
    elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = tuple(value.values())
    else:
        return f"holds a {type(value).__name__}, which the IR has no form for"
    if depth + 1 > MAX_ATTR_DEPTH:
        return f"nests lists and maps more than {MAX_ATTR_DEPTH} deep"
    for item in items:
        problem = _attr_problem(item, depth + 1)
        if problem is not None:
            return problem
    return None


@functools.lru_cache(maxsize=4096)  # sympy is slow and a graph repeats its few dims
def _expr_problem(value: Any) -> str | None:
    """A symbolic attribute prints and parses back if it is an integer expression of dim
    symbols with int64 constants that has a text form."""
    try:
        if symdims.normalize_attr(value) != value:
            return f"holds {clip(value)}, not in canonical (expanded) form"
        symdims.parse_dim(symdims.format_dim(value), symdims.symbols_of(value))
    except (TypeError, ValueError, ArithmeticError) as e:
        return f"holds {clip(value)}, which is not a valid symbolic size: {clip(e, 120)}"
    return None
