"""IR -> text. The grammar is the one `fxforge.parser` reads; see that module's docstring.

Names that came from a model (module paths, source ops) are printed bare only when they are made
of harmless characters, and JSON-quoted otherwise, so a hostile name can never break a line or
smuggle text into the IR.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from fxforge import symdims
from fxforge.ir import ConstData, Graph, Node, Provenance, TensorType

INLINE_LIMIT = 4  # constants with at most this many elements print their values
_SAFE_MODULE = re.compile(r"[A-Za-z0-9_.\-]+")
_SAFE_SOURCE = re.compile(r"[A-Za-z0-9_.]+")


def format_scalar(x: Any) -> str:
    if isinstance(x, bool) or isinstance(x, np.bool_):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def format_attr(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)}: {format_attr(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, ConstData):
        raise TypeError("ConstData is only printed as a const node's value")
    if symdims.is_sym(value):
        return symdims.format_dim(value)
    return format_scalar(value)


def format_type(t: TensorType) -> str:
    text = f"{t.dtype}[{','.join(map(symdims.format_dim, t.shape))}]"
    if t.quant is not None:
        q = t.quant
        text += (
            f"{{scale={format_attr(q.scale)}, zero_point={format_attr(q.zero_point)}, "
            f"axis={format_attr(q.axis)}}}"
        )
    return text


def format_provenance(p: Provenance) -> str:
    if not p.module and not p.source:
        return ""
    parts = []
    if p.module:
        parts.append(p.module if _SAFE_MODULE.fullmatch(p.module) else json.dumps(p.module))
    if p.source:
        source = p.source if _SAFE_SOURCE.fullmatch(p.source) else json.dumps(p.source)
        parts.append(f"({source})")
    return "  # " + " ".join(parts)


def _text_is_exact(array: np.ndarray) -> bool:
    """Whether the printed values give back the same bytes: true but for NaNs with a payload
    (the text has only `nan` and `-nan`), which therefore print as a digest."""
    if array.dtype.kind != "f":
        return True
    nans = array[np.isnan(array)]
    if not nans.size:
        return True
    plain = np.where(np.signbit(nans), -np.nan, np.nan).astype(array.dtype)
    return plain.tobytes() == nans.tobytes()


def _format_const(node: Node, inline_all: bool) -> str:
    data: ConstData = node.attrs["value"]
    t = node.output.type
    if (data.array is not None and (inline_all or data.array.size <= INLINE_LIMIT)
            and _text_is_exact(data.array)):
        flat = data.array.reshape(-1)
        if t.ndim == 0:
            return f"const {format_type(t)} {format_scalar(flat[0])}"
        return f"const {format_type(t)} [{', '.join(format_scalar(x) for x in flat)}]"
    return f"const {format_type(t)} @{data.digest}"


def format_node(node: Node, inline_all: bool = False) -> str:
    lhs = ", ".join(str(v) for v in node.outputs)
    if node.op == "const":
        body = _format_const(node, inline_all)
    else:
        attrs = ""
        if node.attrs:
            attrs = "[" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items()) + "]"
        operands = ", ".join(str(v) for v in node.inputs)
        types = ", ".join(format_type(v.type) for v in node.outputs)
        body = f"{node.op}{attrs}{' ' + operands if operands else ''} : {types}"
    return f"  {lhs} = {body}{format_provenance(node.provenance)}"


def print_graph(graph: Graph, inline_constants: bool = False) -> str:
    """The text form. `inline_constants=True` prints every constant's values (large, exact)."""
    params = ", ".join(f"{v}: {format_type(v.type)}" for v in graph.inputs)
    dims = f" dims({', '.join(r.describe() for r in graph.dims)})" if graph.dims else ""
    lines = [f"graph({params}){dims} {{"]
    lines += [format_node(n, inline_constants) for n in graph.nodes]
    lines.append("  return " + ", ".join(str(v) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
