"""ONNX -> fxforge IR: `import_onnx(path_or_model, input_shapes=..., constants=...)`.

The importer is the ONNX twin of `capture.py`: each ONNX node is lowered by a converter into IR
ops that already exist (`compiler/onnx_converters*.py`), so every pass, backend and the numpy
reference see through it. What it takes from the file is checked first (`onnx_safety.py`).

Converters are chosen by opset from one table, `CONVERTERS[(op_type, domain)]`: a list of
(since_version, converter) pairs, one per ONNX version of the op whose semantics the converter
was written against. A model at opset N gets the newest converter at or below N; if the
installed onnx says the op changed again after that version (at or below N), the op counts as
unsupported rather than being converted by rules written for an older version. The table covers
opsets 13 (`MIN_OPSET`) to the newest the installed onnx knows; an older model imports where its
ops are unchanged since a version the table has (an opset-11 Relu is the opset-14 one), and each
op that changed lands in the unsupported list (convert the model up with
`onnx.version_converter` first).

Static shapes: the IR has no symbolic dims yet, so a symbolic (`dim_param`) input dim needs a
value in `input_shapes`, and every shape-like input (a Reshape's shape, a Slice's starts, a
TopK's K) must be a constant: an initializer, a `Constant`, or computed from those and from the
static shapes of values (`Shape` becomes a constant, and any node whose inputs are all constants
is folded right away with the numpy reference, as `fold-constants` would). A graph input that
must be constant can be bound with `constants={name: array}` (specialization); without it,
`NeedsConstantError` names it.

Everything runs before anything executes: one `UnsupportedOnnxError` lists every op type the
table lacks (with counts and node names), then the graph's structure is checked (undefined
values, a value defined twice, cycles), then nodes are converted in topological order, and the
result is checked by `fxforge.verify`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fxforge import dtypes, ops
from fxforge.execute import run_reference
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.onnx_converters import TABLE as ELEMENTWISE_TABLE
from fxforge.onnx_converters import unsupported
from fxforge.onnx_converters_activation import TABLE as ACTIVATION_TABLE
from fxforge.onnx_converters_attention import TABLE as ATTENTION_TABLE
from fxforge.onnx_converters_index import TABLE as INDEX_TABLE
from fxforge.onnx_converters_int import TABLE as INT_TABLE
from fxforge.onnx_converters_nn import TABLE as NN_TABLE
from fxforge.onnx_converters_patterns import recognize
from fxforge.onnx_converters_pool import TABLE as POOL_TABLE
from fxforge.onnx_converters_reduce import TABLE as REDUCE_TABLE
from fxforge.onnx_converters_resize import TABLE as RESIZE_TABLE
from fxforge.onnx_converters_tensor import TABLE as TENSOR_TABLE
from fxforge.onnx_safety import (
    Limits,
    NeedsConstantError,
    OnnxFileError,
    OnnxImportError,
    SymbolicShapeError,
    UnsupportedOnnxError,
    check_budget,
    check_input_types,
    check_output_types,
    initializer_protos,
    ir_dtype,
    node_order,
    onnx_type_name,
    op_schema,
    read_model,
    tensor_array,
)
from fxforge.passes.dce import dce
from fxforge.shapes import MAX_NUMEL, MAX_RANK, clip, is_int
from fxforge.verify import IRVerificationError, verify

__all__ = [
    "CONVERTERS",
    "MIN_OPSET",
    "ImportedGraph",
    "Limits",
    "NeedsConstantError",
    "OnnxFileError",
    "OnnxImportError",
    "SymbolicShapeError",
    "UnsupportedOnnxError",
    "claimed_ops",
    "import_onnx",
    "lookup",
]

MIN_OPSET = 13
DEFAULT_DOMAINS = ("", "ai.onnx")
FOLD_LIMIT = 1 << 16  # elements a folded result may have beyond its largest input
FOLD_MAX = 1 << 26  # and never more than this


@dataclass(frozen=True)
class ImportedGraph:
    """An imported model: the verified IR graph, the ONNX names of its inputs (graph inputs that
    are neither initializers nor bound by `constants`, in order) and outputs, the model's
    default-domain opset, and notes on what was specialized or approximated."""

    graph: Graph
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    opset: int
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# The converter table

Converter = Callable[["ImportContext", "OnnxNode"], Sequence[Any]]


def _build_table(rows: Iterable[tuple[str, Sequence[int], Converter]]
                 ) -> dict[tuple[str, str], list[tuple[int, Converter]]]:
    table: dict[tuple[str, str], list[tuple[int, Converter]]] = {}
    for op_type, versions, fn in rows:
        entries = table.setdefault((op_type, ""), [])
        for since in versions:
            if any(s == since for s, _ in entries):
                raise ValueError(f"ONNX converter table: {op_type} version {since} twice")
            entries.append((since, fn))
    for entries in table.values():
        entries.sort(key=lambda e: e[0])
    return table


CONVERTERS: dict[tuple[str, str], list[tuple[int, Converter]]] = _build_table(
    [*ELEMENTWISE_TABLE, *ACTIVATION_TABLE, *TENSOR_TABLE, *INDEX_TABLE, *NN_TABLE, *POOL_TABLE,
     *REDUCE_TABLE, *RESIZE_TABLE, *ATTENTION_TABLE, *INT_TABLE])


def _domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def lookup(op_type: str, domain: str, opset: int) -> tuple[Converter | None, str]:
    """The converter for `op_type` in a model whose opset for `domain` is `opset`, or None and
    the reason. The newest converter at or below the opset is picked; it must implement the
    version of the op that ONNX defines at that opset."""
    entries = CONVERTERS.get((op_type, _domain(domain)))
    if not entries:
        return None, "no converter"
    usable = [(since, fn) for since, fn in entries if since <= opset]
    if not usable:
        return None, f"converters start at opset {entries[0][0]}"
    since, fn = usable[-1]
    try:
        current = onnx.defs.get_schema(op_type, opset, _domain(domain)).since_version
    except onnx.defs.SchemaError:
        return None, f"onnx defines no {op_type} at opset {opset}"
    if current > since:
        return None, (f"{op_type} changed at opset {current}; the converters cover versions "
                      f"{', '.join(str(s) for s, _ in entries)}")
    return fn, ""


def claimed_ops(opset: int) -> set[str]:
    """The default-domain op types the importer converts at `opset`."""
    return {op for (op, domain) in CONVERTERS if lookup(op, domain, opset)[0] is not None}


# ---------------------------------------------------------------------------------------------
# Nodes and attributes


class _Unreadable:
    """An attribute of a kind no converter reads (a subgraph, a sparse tensor, a type)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind} attribute>"


@dataclass(frozen=True)
class OnnxNode:
    op_type: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    index: int

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        if isinstance(value, _Unreadable):
            raise OnnxImportError(f"{self.describe()}: attribute {name} is a {value.kind}, "
                                  "which the importer cannot read")
        return value

    def describe(self) -> str:
        name = clip(self.name, 80, use_repr=True) if self.name else f"#{self.index}"
        return f"node {name} ({self.op_type})"

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] != ""


def _decode_attrs(proto: onnx.NodeProto, where: str, base_dir: Path | None
                  ) -> dict[str, Any]:
    A = onnx.AttributeProto
    attrs: dict[str, Any] = {}
    for a in proto.attribute:
        if a.name in attrs:
            raise OnnxFileError(f"{where}: attribute {clip(a.name, use_repr=True)} given twice")
        if a.ref_attr_name:
            attrs[a.name] = _Unreadable("reference")
        elif a.type == A.FLOAT:
            attrs[a.name] = float(a.f)
        elif a.type == A.INT:
            attrs[a.name] = int(a.i)
        elif a.type == A.STRING:
            attrs[a.name] = a.s.decode("utf-8", errors="replace")
        elif a.type == A.FLOATS:
            attrs[a.name] = tuple(float(x) for x in a.floats)
        elif a.type == A.INTS:
            attrs[a.name] = tuple(int(x) for x in a.ints)
        elif a.type == A.STRINGS:
            attrs[a.name] = tuple(s.decode("utf-8", errors="replace") for s in a.strings)
        elif a.type == A.TENSOR:
            attrs[a.name] = tensor_array(a.t, f"{where}, attribute {a.name}", base_dir)
        else:
            kind = A.AttributeType.Name(a.type) if a.type in A.AttributeType.values() \
                else str(a.type)
            attrs[a.name] = _Unreadable(kind.lower())
    return attrs


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)[:64]
    return cleaned or "v"


# ---------------------------------------------------------------------------------------------
# The context converters talk to


class _Const:
    """A value known at import time; `value` is its const node once one was emitted, and
    `origin` the provenance that node gets (the initializer, or the node that computed it)."""

    __slots__ = ("array", "value", "index", "origin")

    def __init__(self, array: np.ndarray, origin: Provenance):
        self.array = array
        self.value: Value | None = None
        self.index = -1
        self.origin = origin


class ImportContext:
    """Builds the IR for one ONNX graph; the API of the converters."""

    def __init__(self, opset: int, label: str, depends: Callable[[str], list[str]]):
        self.opset = opset
        self.label = label
        self.nodes: list[Node] = []
        self.names = NameGenerator()
        self.env: dict[str, Value | _Const] = {}
        self.notes: list[str] = []
        self.node: OnnxNode | None = None
        self.provenance = Provenance()
        self.const_arrays: dict[str, np.ndarray] = {}  # IR value name -> array of const nodes
        self.materialized: list[_Const] = []  # in the order their const nodes were emitted
        self._depends = depends

    # --- reading inputs ---

    def value(self, name: str) -> Value:
        entry = self.env[name]
        if isinstance(entry, _Const):
            if entry.value is None:
                here, self.provenance = self.provenance, entry.origin
                entry.value = self.const(entry.array, name)
                self.provenance = here
                entry.index = len(self.nodes) - 1
                self.materialized.append(entry)
            return entry.value
        return entry

    def input(self, node: OnnxNode, i: int) -> Value | None:
        """The IR value of input i, None if absent (optional and not given)."""
        return self.value(node.inputs[i]) if node.has(i) else None

    def const_input(self, node: OnnxNode, i: int) -> np.ndarray | None:
        """Input i's array if it is known at import time (else None, also when absent)."""
        entry = self.env.get(node.inputs[i]) if node.has(i) else None
        return entry.array if isinstance(entry, _Const) else None

    def need_const(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        """Input i's array; it must be known at import time (static shapes)."""
        array = self.const_input(node, i)
        if array is not None:
            return array
        if not node.has(i):
            raise OnnxImportError(f"{node.describe()}: the {what} input is missing")
        sources = self._depends(node.inputs[i])
        names = ", ".join(clip(s, 60, use_repr=True) for s in sources)
        raise NeedsConstantError(
            f"{node.describe()}: its {what} ({clip(node.inputs[i], 60, use_repr=True)}) must be "
            f"known at import time (fxforge's IR has static shapes), but it depends on the "
            f"graph input(s) {names}; bind them with import_onnx(..., constants={{...}})",
            sources)

    # --- making IR ---

    def const(self, array: np.ndarray, name: str = "c") -> Value:
        array = np.asarray(array)
        out = Value(self.names.claim(_sanitize(name)),
                    TensorType(array.shape, dtypes.from_numpy(array.dtype)))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": ConstData(array)}),
                               self.provenance))
        self.const_arrays[out.name] = self.nodes[-1].attrs["value"].array
        return out

    def scalar(self, x: Any, dtype: str) -> Value:
        """A 0-d constant of `dtype` (ONNX ops need operands of one type)."""
        return self.const(np.array(x, dtype=dtypes.to_numpy(dtype)))

    def emit(self, op: str, inputs: Sequence[Value], n_outputs: int = 1, **attrs: Any):
        names = [self.names.claim(op) for _ in range(n_outputs)]
        node = ops.build_node(op, list(inputs), attrs, names, self.provenance)
        self.nodes.append(node)
        return node.outputs[0] if n_outputs == 1 else node.outputs

    def note(self, text: str) -> None:
        where = self.node.describe() if self.node is not None else "model"
        self.notes.append(f"{where}: {text}")


# ---------------------------------------------------------------------------------------------
# The driver


def import_onnx(model: str | Path | onnx.ModelProto, *,
                input_shapes: Mapping[str, Sequence[int]] | None = None,
                constants: Mapping[str, Any] | None = None,
                limits: Limits | None = None) -> ImportedGraph:
    """Import an ONNX model (a file path or a `ModelProto`) as a verified IR graph.

    input_shapes: concrete shapes for inputs with symbolic dims (`{"x": (8, 3, 224, 224)}`).
    constants: values for graph inputs that the IR needs at import time (shape-like inputs);
        they stop being inputs of the IR graph.
    limits: bounds on file and tensor sizes (`onnx_safety.Limits`).
    """
    limits = limits or Limits()
    proto, base_dir, label = read_model(model, limits)
    return _Importer(proto, base_dir, label, limits).run(dict(input_shapes or {}),
                                                           dict(constants or {}))


@dataclass
class _Importer:
    proto: onnx.ModelProto
    base_dir: Path | None
    label: str
    limits: Limits
    opsets: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def run(self, input_shapes: dict[str, Sequence[int]], constants: dict[str, Any]
            ) -> ImportedGraph:
        g = self.proto.graph
        self.opsets = self._opsets()
        opset = self.opsets[""]
        if len(g.node) > self.limits.max_nodes:
            raise OnnxFileError(f"{self.label}: {len(g.node)} nodes, more than the limit of "
                                f"{self.limits.max_nodes}")
        if len(g.sparse_initializer):
            raise UnsupportedOnnxError(f"{self.label}: sparse initializers are not supported")
        initializers = initializer_protos(g, self.label)
        real_inputs = [i for i in g.input if i.name not in initializers]
        self._check_supported(real_inputs, initializers)
        structure = node_order(g, self.label, [i.name for i in real_inputs], initializers)
        self._producer = structure.producer
        check_budget(g, initializers, self.label, self.limits)
        order = self._decoded_nodes(structure.order)
        input_types = self._input_types(real_inputs, input_shapes, constants)

        graph_inputs = {i.name for i in real_inputs}
        ctx = ImportContext(opset, self.label, self._dependency_finder())
        ctx.notes.extend(self.notes)
        ir_inputs: list[Value] = []
        kept_names: list[str] = []
        for info in real_inputs:
            t = input_types[info.name]
            if info.name in constants:
                ctx.env[info.name] = _Const(self._bound(info.name, constants[info.name], t),
                                            Provenance(_sanitize(info.name), "input"))
                ctx.notes.append(f"input {clip(info.name, 60, use_repr=True)} bound to a "
                                 "constant (specialization)")
                continue
            v = Value(ctx.names.claim(_sanitize(info.name)), t)
            ir_inputs.append(v)
            kept_names.append(info.name)
            ctx.env[info.name] = v
        unknown = set(constants) - graph_inputs
        if unknown:
            raise OnnxImportError(f"{self.label}: constants names no graph input: "
                                  f"{sorted(clip(n, 60) for n in unknown)}")
        for name, t in initializers.items():
            where = f"initializer {clip(name, 60, use_repr=True)} of {self.label}"
            ctx.env[name] = _Const(tensor_array(t, where, self.base_dir),
                                   Provenance(_module_path(name), "initializer"))

        for node in order:
            self._convert(ctx, node)

        outputs = []
        for o in g.output:
            if o.name not in ctx.env:
                raise OnnxFileError(f"{self.label}: graph output {clip(o.name, 60, use_repr=True)}"
                                    " is not computed by any node")
            v = ctx.value(o.name)
            self._check_output(o, v)
            outputs.append(v)
        graph, _ = dce(Graph(tuple(ir_inputs), tuple(ctx.nodes), tuple(outputs)))
        graph = recognize(graph)  # ops ONNX spells with several nodes (gelu, attention, ...)
        try:
            verify(graph)
        except IRVerificationError as e:
            raise OnnxImportError(f"{self.label}: the imported graph does not verify (an "
                                  f"importer bug): {e}") from e
        return ImportedGraph(graph, tuple(kept_names), tuple(o.name for o in g.output), opset,
                             tuple(ctx.notes))

    # --- checks before conversion ---

    def _opsets(self) -> dict[str, int]:
        opsets: dict[str, int] = {}
        for entry in self.proto.opset_import:
            domain = _domain(entry.domain)
            if domain in opsets:
                raise OnnxFileError(f"{self.label}: opset of domain {domain or 'ai.onnx'!r} "
                                    "imported twice")
            opsets[domain] = int(entry.version)
        if "" not in opsets:
            raise OnnxImportError(f"{self.label}: the model imports no default (ai.onnx) opset")
        newest = onnx.defs.onnx_opset_version()
        if not 1 <= opsets[""] <= newest:
            raise UnsupportedOnnxError(f"{self.label}: opset {opsets['']} is outside the ones "
                                       f"the installed onnx knows (1 to {newest})")
        return opsets

    def _check_supported(self, real_inputs: list[onnx.ValueInfoProto],
                         initializers: dict[str, onnx.TensorProto]) -> None:
        """One error for every op type (and dtype) the importer cannot take."""
        missing: dict[str, list[str]] = {}
        reasons: dict[str, str] = {}
        for i, node in enumerate(self.proto.graph.node):
            domain = _domain(node.domain)
            key = node.op_type if not domain else f"{domain}.{node.op_type}"
            if domain not in self.opsets:
                fn, reason = None, f"domain {domain!r} is not imported by the model"
            else:
                fn, reason = lookup(node.op_type, domain, self.opsets[domain])
            if fn is None:
                missing.setdefault(key, []).append(node.name or f"#{i}")
                reasons.setdefault(key, reason)
        bad_types: dict[str, list[str]] = {}
        for info in [*real_inputs, *self.proto.graph.output]:
            kind = info.type.WhichOneof("value")
            if kind != "tensor_type":
                bad_types.setdefault(f"{kind or 'untyped'} value", []).append(info.name)
            elif ir_dtype(info.type.tensor_type.elem_type) is None:
                bad_types.setdefault(onnx_type_name(info.type.tensor_type.elem_type),
                                     []).append(info.name)
        for name, t in initializers.items():
            if ir_dtype(t.data_type) is None:
                bad_types.setdefault(onnx_type_name(t.data_type), []).append(name)
        if not missing and not bad_types:
            return
        lines = []
        ranked = sorted(missing.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if len(ranked) > 40:
            rest = sum(len(v) for _, v in ranked[40:])
            ranked = ranked[:40]
            lines.append(f"  ({len(missing) - 40} more op types, {rest} nodes, not shown)")
        for key, names in ranked:
            shown = ", ".join(clip(n, 40, use_repr=True) for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            lines.append(f"  {clip(key, 60)} x{len(names)} ({reasons[key]}): {shown}{more}")
        for key, names in sorted(bad_types.items()):
            shown = ", ".join(clip(n, 40, use_repr=True) for n in names[:5])
            lines.append(f"  dtype {key} x{len(names)} (no IR dtype): {shown}")
        what = []
        if missing:
            what.append(f"{sum(len(v) for v in missing.values())} node(s) of {len(missing)} "
                        "op type(s)")
        if bad_types:
            what.append("values of unsupported dtypes")
        raise UnsupportedOnnxError(
            f"{self.label} (opset {self.opsets['']}) has {' and '.join(what)} that fxforge "
            "cannot import:\n" + "\n".join(lines), ops=missing, dtypes=bad_types)

    def _decoded_nodes(self, order: list[int]) -> list[OnnxNode]:
        protos = self.proto.graph.node
        result = []
        for i in order:
            p = protos[i]
            where = f"{self.label}, node #{i} ({clip(p.op_type, 40)})"
            attrs = _decode_attrs(p, where, self.base_dir)
            result.append(OnnxNode(p.op_type, _domain(p.domain), p.name, tuple(p.input),
                                   tuple(p.output), attrs, i))
        return result

    def _dependency_finder(self) -> Callable[[str], list[str]]:
        real = {i.name for i in self.proto.graph.input}
        inits = {t.name for t in self.proto.graph.initializer}
        nodes = self.proto.graph.node

        def sources(name: str) -> list[str]:
            """The graph inputs (not initializers) that `name` is computed from."""
            found: list[str] = []
            seen: set[str] = set()
            stack = [name]
            while stack:
                n = stack.pop()
                if n in seen or not n:
                    continue
                seen.add(n)
                if n in real and n not in inits:
                    found.append(n)
                elif n in self._producer:
                    stack.extend(nodes[self._producer[n]].input)
            return sorted(found)

        return sources

    def _input_types(self, real_inputs: list[onnx.ValueInfoProto],
                     input_shapes: dict[str, Sequence[int]], constants: dict[str, Any]
                     ) -> dict[str, TensorType]:
        names = {i.name for i in real_inputs}
        unknown = set(input_shapes) - names
        if unknown:
            raise OnnxImportError(f"{self.label}: input_shapes names no graph input: "
                                  f"{sorted(clip(n, 60) for n in unknown)}; the inputs are "
                                  f"{sorted(clip(n, 60) for n in names)}")
        types: dict[str, TensorType] = {}
        symbolic: dict[str, list[tuple[int, str]]] = {}
        for info in real_inputs:
            tt = info.type.tensor_type
            dtype = ir_dtype(tt.elem_type)
            assert dtype is not None  # _check_supported refused the others
            where = f"{self.label}: input {clip(info.name, 60, use_repr=True)}"
            if not tt.HasField("shape"):
                dims_in: list[tuple[int | None, str]] = []
                ranked = False
            else:
                ranked = True
                dims_in = []
                for axis, d in enumerate(tt.shape.dim):
                    kind = d.WhichOneof("value")
                    if kind == "dim_value":
                        dims_in.append((int(d.dim_value), ""))
                    else:
                        label = d.dim_param if kind == "dim_param" else "?"
                        dims_in.append((None, label))
                        symbolic.setdefault(info.name, []).append((axis, label))
            given = input_shapes.get(info.name)
            if given is None and info.name in constants:
                given = np.shape(constants[info.name])
            if given is not None:
                given = _shape_arg(given, where)
                if ranked and len(given) != len(dims_in):
                    raise OnnxImportError(f"{where} has rank {len(dims_in)}, the shape given "
                                          f"for it {list(given)} rank {len(given)}")
                for axis, ((d, _), g) in enumerate(zip(dims_in, given)):
                    if d is not None and d != g:
                        raise OnnxImportError(f"{where}: dim {axis} is {d} in the model, "
                                              f"{g} in the shape given")
                for axis, label in symbolic.pop(info.name, []):
                    self.notes.append(f"input {clip(info.name, 60, use_repr=True)}: dim {axis} "
                                      f"({clip(label, 40, use_repr=True)}) specialized to "
                                      f"{given[axis] if axis >= 0 else list(given)}")
                shape = given
            elif not ranked:
                symbolic[info.name] = [(-1, "unknown rank")]
                continue
            else:
                if info.name in symbolic:
                    continue
                shape = tuple(d for d, _ in dims_in)
                if len(shape) > MAX_RANK or math.prod(shape) > MAX_NUMEL:
                    raise OnnxFileError(f"{where}: shape {clip(list(shape))} is beyond the IR's "
                                        "limits")
            types[info.name] = TensorType(shape, dtype)
        if symbolic:
            parts = []
            for name, dims in symbolic.items():
                shown = ", ".join(f"dim {a} = {clip(p, 40, use_repr=True)}" for a, p in dims)
                parts.append(f"{clip(name, 60, use_repr=True)} ({shown})")
            raise SymbolicShapeError(
                f"{self.label}: inputs with symbolic or unknown dims need concrete shapes "
                f"(fxforge's IR has static shapes); pass input_shapes={{name: shape}} for: "
                f"{'; '.join(parts)}", symbolic)
        return types

    def _bound(self, name: str, value: Any, t: TensorType) -> np.ndarray:
        array = np.asarray(value)
        want = dtypes.to_numpy(t.dtype)
        if array.dtype != want or array.shape != t.shape:
            raise OnnxImportError(f"{self.label}: the constant for input "
                                  f"{clip(name, 60, use_repr=True)} is {array.dtype}"
                                  f"{list(array.shape)}, the input is {t}")
        return array.copy()

    # --- conversion ---

    def _convert(self, ctx: ImportContext, node: OnnxNode) -> None:
        fn, reason = lookup(node.op_type, node.domain, self.opsets.get(node.domain, 0))
        assert fn is not None, reason  # _check_supported listed the others
        ctx.node = node
        ctx.provenance = Provenance(_module_name_of(node), node.op_type if not node.domain
                                    else f"{node.domain}.{node.op_type}")
        schema = op_schema(node.op_type, self.opsets.get(node.domain, 0), node.domain)
        in_types = [ctx.env[n] if n else None for n in node.inputs]
        in_dtypes = [_dtype_of(e) if e is not None else None for e in in_types]
        if schema is not None:
            check_input_types(node.describe(), schema, in_dtypes)
        mark = len(ctx.nodes)
        try:
            results = list(fn(ctx, node))
        except OnnxImportError as e:
            if e.args and isinstance(e.args[0], str) and node.describe() not in e.args[0]:
                e.args = (f"{self.label}, {node.describe()}: {e.args[0]}", *e.args[1:])
            raise
        except Exception as e:  # noqa: BLE001 - a hostile attribute or an importer bug: typed
            raise OnnxImportError(f"{self.label}, {node.describe()}: cannot convert it: "
                                  f"{type(e).__name__}: {clip(e, 300)}") from e
        outs = [o for o in node.outputs]
        if len(results) < len(outs):
            missing = [o for o in outs[len(results):] if o]
            if missing:
                raise unsupported(node, f"outputs {missing} are not supported")
        for k, name in enumerate(outs):
            if not name:
                continue
            r = results[k]
            if r is None:
                raise unsupported(node, f"output {k} ({clip(name, 40, use_repr=True)}) is not "
                                        "supported")
            ctx.env[name] = _Const(np.asarray(r), ctx.provenance) if isinstance(r, np.ndarray) \
                else r
        if schema is not None:
            check_output_types(f"{self.label}, {node.describe()}", schema, in_dtypes,
                               [_dtype_of(ctx.env[o]) if o else None for o in outs])
        present = [n for n in node.inputs if n]
        if present and all(isinstance(ctx.env[n], _Const) for n in present):
            self._fold(ctx, node, mark)

    def _fold(self, ctx: ImportContext, node: OnnxNode, mark: int) -> None:
        """A node whose inputs are all constants becomes its value, computed by the numpy
        reference on the IR the converter made (so folding uses each op's specification)."""
        outs = [o for o in node.outputs if o and isinstance(ctx.env[o], Value)]
        if not outs:
            return
        sub = ctx.nodes[mark:]
        local = {v.name for n in sub for v in n.outputs}
        largest = max((ctx.env[n].array.size for n in node.inputs if n), default=0)
        limit = min(max(largest, FOLD_LIMIT), FOLD_MAX)
        if any(ctx.env[o].type.numel > limit for o in outs):
            return
        ext: dict[str, Value] = {}
        for n in sub:
            for v in n.inputs:
                if v.name not in local and v.name not in ext:
                    if v.name not in ctx.const_arrays:
                        return
                    ext[v.name] = v
        try:
            results = run_reference(Graph(tuple(ext.values()), tuple(sub),
                                          tuple(ctx.env[o] for o in outs)),
                                    [ctx.const_arrays[name] for name in ext])
        except Exception:  # noqa: BLE001 - left unfolded; running it will say what is wrong
            return
        for n in ctx.nodes[mark:]:
            for v in n.outputs:
                ctx.const_arrays.pop(v.name, None)
        del ctx.nodes[mark:]
        while ctx.materialized and ctx.materialized[-1].index >= mark:
            entry = ctx.materialized.pop()
            entry.value, entry.index = None, -1
        for name, array in zip(outs, results):
            ctx.env[name] = _Const(np.asarray(array), ctx.provenance)

    def _check_output(self, info: onnx.ValueInfoProto, v: Value) -> None:
        """A graph output's declared element type (and static dims) must be what the IR
        computes."""
        tt = info.type.tensor_type
        want = ir_dtype(tt.elem_type)
        where = f"{self.label}: graph output {clip(info.name, 60, use_repr=True)}"
        if want is not None and want != v.type.dtype:
            raise OnnxImportError(f"{where} is declared {onnx_type_name(tt.elem_type)} but "
                                  f"computes {v.type.dtype} (a mistyped model or an importer "
                                  "bug)")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if len(dims) != v.type.ndim:
                raise OnnxImportError(f"{where} is declared with rank {len(dims)} but computes "
                                      f"{v.type}")
            for axis, d in enumerate(dims):
                if d.WhichOneof("value") == "dim_value" and d.dim_value != v.type.shape[axis]:
                    raise OnnxImportError(f"{where}: dim {axis} is declared {d.dim_value} but "
                                          f"computes {v.type}")


def _module_path(name: str) -> str:
    """A model-derived name as a module path (`/layer1/conv/Conv` -> `layer1.conv.Conv`) made
    of the characters the printer shows bare."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name.strip("/").replace("/", "."))[:200]


def _module_name_of(node: OnnxNode) -> str:
    return _module_path(node.name) or f"{node.op_type}_{node.index}"


def _shape_arg(shape: Any, where: str) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               and is_int(int(d)) and d >= 0 for d in dims):
        raise OnnxImportError(f"{where}: the shape given, {clip(shape)}, must be a sequence of "
                              "ints >= 0")
    dims = tuple(int(d) for d in dims)
    if len(dims) > MAX_RANK or math.prod(dims) > MAX_NUMEL:
        raise OnnxImportError(f"{where}: the shape given, {clip(list(dims))}, is beyond the "
                              "IR's limits")
    return dims


def _dtype_of(entry: Value | _Const) -> str | None:
    if isinstance(entry, _Const):
        try:
            return dtypes.from_numpy(entry.array.dtype)
        except dtypes.DTypeError:
            return None
    return entry.type.dtype


