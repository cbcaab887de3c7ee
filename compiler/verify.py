"""The IR verifier: SSA well-formedness and a fresh type inference of every node.

Runs after every pass in tests and in debug mode, so a pass that leaves a stale type or a dangling
use is caught at the pass that did it, not three passes later.
"""

from __future__ import annotations

import re

from fxforge import ops
from fxforge.errors import FxforgeError
from fxforge.ir import ConstData, Graph, Node, Value
from fxforge.shapes import OpTypeError


class IRVerificationError(FxforgeError, ValueError):
    """The graph is not well formed; the message names the offending node."""


def _fail(node: Node | None, index: int | None, message: str) -> None:
    where = f"node {index} ({node.describe()})" if node is not None else "graph"
    raise IRVerificationError(f"{where}: {message}")


_NAME = re.compile(r"[A-Za-z0-9_]+")  # what the text form can hold (`%name`)


def verify(graph: Graph) -> None:
    defined: dict[str, Value] = {}
    for v in graph.inputs:
        if not _NAME.fullmatch(v.name):
            _fail(None, None, f"input name {v.name!r} is not made of [A-Za-z0-9_]")
        if v.name in defined:
            _fail(None, None, f"input %{v.name} is declared twice")
        defined[v.name] = v
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v.name not in defined:
                _fail(node, i, f"uses %{v.name} before it is defined")
            if defined[v.name] != v:
                _fail(node, i, f"uses %{v.name} with type {v.type}, but it was defined as "
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
        try:
            attrs = ops.complete_attrs(opdef, node.attrs)
            if attrs != node.attrs:
                _fail(node, i, "attributes are not in canonical form (defaults must be explicit)")
            if node.op == "const" and not isinstance(node.attrs["value"], ConstData):
                _fail(node, i, f"value must be a ConstData, got {node.attrs['value']!r}")
            if node.op == "const" and node.attrs["value"].array is None:
                if len(node.outputs) != 1:
                    _fail(node, i, f"const defines {len(node.outputs)} values, not one")
                # data elided in text: the type cannot be re-inferred, only trusted
            elif opdef.infer is not None:
                inferred = ops.infer_types(opdef, [v.type for v in node.inputs], attrs)
                declared = tuple(v.type for v in node.outputs)
                if tuple((t.shape, t.dtype) for t in inferred) != tuple(
                        (t.shape, t.dtype) for t in declared):
                    _fail(node, i, f"declared types {[str(t) for t in declared]} but inference "
                                   f"gives {[str(t) for t in inferred]}")
        except OpTypeError as e:
            _fail(node, i, str(e))
        for v in node.outputs:
            if not _NAME.fullmatch(v.name):
                _fail(node, i, f"value name {v.name!r} is not made of [A-Za-z0-9_]")
            if v.name in defined:
                _fail(node, i, f"redefines %{v.name} (SSA values are defined once)")
            defined[v.name] = v
    for v in graph.outputs:
        if v.name not in defined:
            _fail(None, None, f"returns %{v.name}, which is not defined")
        if defined[v.name] != v:
            _fail(None, None, f"returns %{v.name} with type {v.type}, but it was defined as "
                              f"{defined[v.name].type}")
