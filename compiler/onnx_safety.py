"""Reading an ONNX file as untrusted input: the model proto, its tensors and its external data.

An ONNX file comes from anywhere (a model hub, an e-mail), so everything in it is checked before
it is used, and every problem is an `OnnxImportError` (or a subclass) whose message names the
file and the tensor or node at fault, never a raw protobuf, numpy or OS error:

- the file itself: a regular file of at most `Limits.max_file_bytes` (protobuf's own limit is
  2 GiB), parsed with protobuf only (no pickle, eval or exec anywhere on this path); a malformed
  or truncated protobuf is a `OnnxFileError`;
- the graph: values used but never defined, values defined twice and cycles in the nodes are
  errors naming them (`node_order`);
- tensors (initializers and `Constant` attributes): a dtype the IR has, dims that are int64s
  >= 0 within the IR's rank and element limits, data of exactly the declared size (raw bytes or
  the typed field), and all of them together within `Limits.max_total_bytes`, checked from the
  declared sizes before any byte is read;
- external data (the 2024-2026 CVE classes of ONNX loaders): the location must be a relative
  path without `..`, and the file actually opened must lie inside the model's directory: its
  real path is read back from the open descriptor (`/proc/self/fd`), so a symlink anywhere on
  the path (or swapped in after a check) that leads outside is refused; it must be a regular
  file (a FIFO or a device is refused, and opened without blocking), and `offset + length` must
  lie within it. A model given as a `ModelProto` has no directory, so its external data is
  refused unless `base_dir` names one.
"""

from __future__ import annotations

import heapq
import math
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from fxforge.errors import FxforgeError
from fxforge.shapes import MAX_NUMEL, MAX_RANK, clip, is_int


class OnnxImportError(FxforgeError, ValueError):
    """An ONNX model that cannot become IR; the message names the file and what is at fault."""


class OnnxFileError(OnnxImportError):
    """The file, a tensor in it, or its external data is malformed, too large or unsafe to read
    (path traversal, a symlink out of the model's directory, a truncated protobuf)."""


class UnsupportedOnnxError(OnnxImportError):
    """Ops (or dtypes) the importer has no converter for. `ops` maps each unsupported
    `op_type` (with its domain when not the default one) to the names of its nodes."""

    def __init__(self, message: str, ops: dict[str, list[str]] | None = None,
                 dtypes: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.ops = ops or {}
        self.dtypes = dtypes or {}


class SymbolicShapeError(OnnxImportError):
    """Inputs with symbolic (`dim_param`) or unknown dims and no concrete shape given in
    `input_shapes`. `dims` maps each such input to its [(axis, name), ...]."""

    def __init__(self, message: str, dims: dict[str, list[tuple[int, str]]]):
        super().__init__(message)
        self.dims = dims


class NeedsConstantError(OnnxImportError):
    """A node needs the value of a graph input at import time (a Reshape's shape, a Slice's
    starts) because the IR has static shapes. `inputs` names those graph inputs; pass their
    values with `import_onnx(..., constants={name: array})`."""

    def __init__(self, message: str, inputs: list[str]):
        super().__init__(message)
        self.inputs = inputs


@dataclass(frozen=True)
class Limits:
    """Bounds on what an ONNX file may make the importer read or allocate."""

    max_file_bytes: int = 2**31  # protobuf cannot hold more
    max_total_bytes: int = 16 * 2**30  # all tensors (initializers, constants) together
    max_nodes: int = 1_000_000


# ONNX element type -> IR dtype. Everything else (strings, unsigned 16..64-bit, complex,
# bfloat16 (numpy, which holds constants and runs the reference, has none), the 8-, 6-, 4- and
# 2-bit floats and ints) is not imported.
ONNX_TO_IR: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32",
    onnx.TensorProto.DOUBLE: "f64",
    onnx.TensorProto.FLOAT16: "f16",
    onnx.TensorProto.INT8: "i8",
    onnx.TensorProto.UINT8: "u8",
    onnx.TensorProto.INT16: "i16",
    onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64",
    onnx.TensorProto.BOOL: "bool",
}
IR_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_TO_IR.items()}

# numpy dtype of each element type's raw (little-endian) bytes
_RAW_DTYPE: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"),
    onnx.TensorProto.DOUBLE: np.dtype("<f8"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"),
    onnx.TensorProto.INT8: np.dtype("i1"),
    onnx.TensorProto.UINT8: np.dtype("u1"),
    onnx.TensorProto.INT16: np.dtype("<i2"),
    onnx.TensorProto.INT32: np.dtype("<i4"),
    onnx.TensorProto.INT64: np.dtype("<i8"),
    onnx.TensorProto.BOOL: np.dtype("u1"),
}

# the typed field that holds each element type's values when raw_data is not used
_FIELD: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    **{t: "int32_data" for t in (onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                                 onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                                 onnx.TensorProto.INT32, onnx.TensorProto.BOOL)},
}


def onnx_type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"element type {elem_type}"


def ir_dtype(elem_type: int) -> str | None:
    """The IR dtype of an ONNX element type, None if the IR has none."""
    return ONNX_TO_IR.get(elem_type)


# ---------------------------------------------------------------------------------------------
# The model file


def read_model(source: str | os.PathLike | onnx.ModelProto, limits: Limits
               ) -> tuple[onnx.ModelProto, Path | None, str]:
    """(model, the directory its external data is relative to (None for a proto), a label for
    messages). Only protobuf parses the bytes: external data is never loaded here."""
    if isinstance(source, onnx.ModelProto):
        check_text(source, "<ModelProto>")
        return source, None, "<ModelProto>"
    if not isinstance(source, (str, os.PathLike)):
        raise OnnxImportError(f"import_onnx takes a path or an onnx.ModelProto, got "
                              f"{type(source).__name__}")
    path = Path(source)
    label = str(path)
    try:
        with open(path, "rb") as f:  # noqa: PTH123 - the descriptor is checked below
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OnnxFileError(f"{label}: not a regular file")
            if info.st_size > limits.max_file_bytes:
                raise OnnxFileError(f"{label}: {info.st_size} bytes, more than the limit of "
                                    f"{limits.max_file_bytes}")
            data = f.read(limits.max_file_bytes + 1)
    except OSError as e:
        raise OnnxFileError(f"{label}: cannot read it: {e.strerror or e}") from e
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxFileError(f"{label}: not a valid ONNX protobuf (malformed or truncated): "
                            f"{clip(e, 200)}") from e
    if not model.HasField("graph"):
        raise OnnxFileError(f"{label}: the protobuf holds no graph (not an ONNX model, or "
                            "truncated)")
    check_text(model, label)
    return model, path.absolute().parent, label


def check_text(model: onnx.ModelProto, label: str) -> None:
    """Every name the importer reads is text: protobuf hands a string field that is not valid
    UTF-8 over as bytes, which would then meet str names in comparisons and messages."""
    g = model.graph

    def names():
        yield "a domain", [o.domain for o in model.opset_import]
        for info in [*g.input, *g.output]:
            yield "a value name", [info.name]
            t = info.type.tensor_type if info.type.WhichOneof("value") == "tensor_type" else None
            if t is not None and t.HasField("shape"):
                yield "a dim name", [d.dim_param for d in t.shape.dim]
        for t in g.initializer:
            yield "an initializer name", [t.name]
            yield "external data", [x for e in t.external_data for x in (e.key, e.value)]
        for n in g.node:
            yield "a node field", [n.op_type, n.domain, n.name, *n.input, *n.output]
            for a in n.attribute:
                yield "an attribute name", [a.name, a.ref_attr_name]
                yield "external data", [x for e in a.t.external_data for x in (e.key, e.value)]

    for what, values in names():
        if any(not isinstance(v, str) for v in values):
            raise OnnxFileError(f"{label}: {what} is not valid UTF-8 text")


# ---------------------------------------------------------------------------------------------
# Tensors


def declared_bytes(t: onnx.TensorProto, where: str) -> int:
    """The byte size of a tensor from its declared dims and dtype, after checking both; the
    budget is checked from these sizes before anything is read."""
    if ir_dtype(t.data_type) is None:
        raise UnsupportedOnnxError(f"{where}: dtype {onnx_type_name(t.data_type)} has no IR "
                                   "dtype", dtypes={onnx_type_name(t.data_type): [where]})
    dims = list(t.dims)
    if len(dims) > MAX_RANK:
        raise OnnxFileError(f"{where}: rank {len(dims)} is more than the IR's limit of "
                            f"{MAX_RANK}")
    if not all(is_int(d) and d >= 0 for d in dims):
        raise OnnxFileError(f"{where}: dims {clip(dims)} must be int64s >= 0")
    numel = math.prod(dims)
    if numel > MAX_NUMEL:
        raise OnnxFileError(f"{where}: dims {clip(dims)} hold {clip(numel)} elements, more than "
                            "the IR's limit of 2**40")
    return numel * _RAW_DTYPE[t.data_type].itemsize


def tensor_array(t: onnx.TensorProto, where: str, base_dir: Path | None) -> np.ndarray:
    """The array of a tensor proto, checked (see the module docstring). `where` names it in
    messages (`initializer 'w' of model.onnx`)."""
    nbytes = declared_bytes(t, where)
    shape = tuple(t.dims)
    numel = math.prod(shape)
    raw_dtype = _RAW_DTYPE[t.data_type]
    if t.HasField("segment"):
        raise OnnxFileError(f"{where}: segmented tensors are not supported")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        data = read_external(t, where, base_dir, nbytes)
        flat = np.frombuffer(data, dtype=raw_dtype)
    elif t.HasField("raw_data") or len(t.raw_data):
        if len(t.raw_data) != nbytes:
            raise OnnxFileError(f"{where}: raw data holds {len(t.raw_data)} bytes, its dims "
                                f"{list(shape)} and dtype {onnx_type_name(t.data_type)} need "
                                f"{nbytes} (truncated or corrupt)")
        flat = np.frombuffer(t.raw_data, dtype=raw_dtype)
    else:
        field = getattr(t, _FIELD[t.data_type])
        if len(field) != numel:
            what = "holds no data" if not len(field) else f"holds {len(field)} values"
            raise OnnxFileError(f"{where}: {what} in {_FIELD[t.data_type]}, its dims "
                                f"{list(shape)} need {numel} (missing or truncated data)")
        flat = _from_field(field, t.data_type, where)
    return _finish(flat, t.data_type, shape, where)


def _from_field(field, data_type: int, where: str) -> np.ndarray:
    """Values of a typed field: float16 is stored as its bit patterns in int32_data; the
    smaller ints as int32 values that must fit their type."""
    if data_type == onnx.TensorProto.FLOAT16:
        bits = np.asarray(field, dtype=np.int64)
        if bits.size and (bits.min() < 0 or bits.max() > 0xFFFF):
            raise OnnxFileError(f"{where}: 16-bit float bit patterns out of range")
        return bits.astype(np.uint16).view(_RAW_DTYPE[data_type])
    if data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64):
        return np.asarray(field, dtype=_RAW_DTYPE[data_type])
    values = np.asarray(field, dtype=np.int64)
    target = np.dtype(np.bool_) if data_type == onnx.TensorProto.BOOL else _RAW_DTYPE[data_type]
    if values.size:
        lo, hi = (0, 1) if target == np.bool_ else (np.iinfo(target).min, np.iinfo(target).max)
        if values.min() < lo or values.max() > hi:
            raise OnnxFileError(f"{where}: values out of the range of "
                                f"{onnx_type_name(data_type)}")
    return values.astype(target)


def _finish(flat: np.ndarray, data_type: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    if data_type == onnx.TensorProto.BOOL:
        if flat.dtype != np.bool_:
            if flat.size and flat.max() > 1:
                raise OnnxFileError(f"{where}: booleans that are not 0 or 1")
            flat = flat.astype(np.bool_)
    array = flat.astype(flat.dtype.newbyteorder("="), copy=True).reshape(shape)
    return array


# ---------------------------------------------------------------------------------------------
# External data


def external_info(t: onnx.TensorProto, where: str) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, each checked."""
    entries: dict[str, str] = {}
    for entry in t.external_data:
        if entry.key in entries:
            raise OnnxFileError(f"{where}: external data key {entry.key!r} given twice")
        entries[entry.key] = entry.value
    location = entries.get("location", "")
    numbers = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is None:
            numbers[key] = None
            continue
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise OnnxFileError(f"{where}: external data {key} {clip(text, use_repr=True)} is "
                                "not an integer >= 0")
        numbers[key] = int(text)
    return location, numbers["offset"] or 0, numbers["length"]


def check_location(location: str, where: str) -> None:
    """A relative path with no `..` part, no NUL and no drive or root: anything else could name
    a file outside the model's directory."""
    if not location:
        raise OnnxFileError(f"{where}: external data without a location")
    shown = clip(location, use_repr=True)
    if "\0" in location:
        raise OnnxFileError(f"{where}: external data location {shown} holds a NUL byte")
    if (os.path.isabs(location) or location.startswith(("/", "\\"))
            or (len(location) > 1 and location[1] == ":")):
        raise OnnxFileError(f"{where}: external data location {shown} is an absolute path; "
                            "it must be relative to the model's directory")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise OnnxFileError(f"{where}: external data location {shown} leaves the model's "
                            "directory (path traversal with '..')")


def _opened_path(fd: int, fallback: str) -> str:
    """The real path of an open file: read back from the descriptor where the OS says it
    (Linux), so that a path swapped after a check cannot fool the containment test."""
    proc = f"/proc/self/fd/{fd}"
    try:
        return os.readlink(proc)
    except OSError:
        return os.path.realpath(fallback)


def read_external(t: onnx.TensorProto, where: str, base_dir: Path | None, nbytes: int) -> bytes:
    """Exactly `nbytes` of external data, read after the checks of the module docstring."""
    location, offset, length = external_info(t, where)
    check_location(location, where)
    if base_dir is None:
        raise OnnxFileError(f"{where}: external data ({clip(location, use_repr=True)}) needs "
                            "the model's directory; pass the model as a file path, not a "
                            "ModelProto")
    if length is not None and length != nbytes:
        raise OnnxFileError(f"{where}: external data length {length} differs from the "
                            f"{nbytes} bytes its dims and dtype need")
    root = os.path.realpath(base_dir)
    path = os.path.join(root, location)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise OnnxFileError(f"{where}: cannot open external data {clip(location, use_repr=True)}"
                            f": {e.strerror or e}") from e
    try:
        real = _opened_path(fd, path)
        if os.path.commonpath([root, real]) != root:
            raise OnnxFileError(f"{where}: external data {clip(location, use_repr=True)} "
                                f"resolves to {clip(real, 120)}, outside the model's directory "
                                f"{clip(root, 120)} (a symlink that leaves it)")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OnnxFileError(f"{where}: external data {clip(location, use_repr=True)} is not "
                                "a regular file")
        if offset + nbytes > info.st_size:
            raise OnnxFileError(f"{where}: external data {clip(location, use_repr=True)} holds "
                                f"{info.st_size} bytes; offset {offset} + {nbytes} bytes lies "
                                "beyond its end (truncated)")
        data = os.pread(fd, nbytes, offset) if nbytes else b""
    except OSError as e:
        raise OnnxFileError(f"{where}: cannot read external data "
                            f"{clip(location, use_repr=True)}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(data) != nbytes:
        raise OnnxFileError(f"{where}: external data {clip(location, use_repr=True)}: read "
                            f"{len(data)} of {nbytes} bytes (truncated)")
    return data


# ---------------------------------------------------------------------------------------------
# The graph's structure


def initializer_protos(graph: onnx.GraphProto, label: str) -> dict[str, onnx.TensorProto]:
    found: dict[str, onnx.TensorProto] = {}
    for t in graph.initializer:
        if t.name in found:
            raise OnnxFileError(f"{label}: initializer {clip(t.name, 60, use_repr=True)} is "
                                "defined twice")
        found[t.name] = t
    return found


def check_budget(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], label: str,
                 limits: Limits) -> None:
    """All tensors' declared sizes together (initializers and tensor attributes), before any
    is read."""
    total = 0
    for name, t in initializers.items():
        total += declared_bytes(t, f"initializer {clip(name, 60, use_repr=True)} of {label}")
    for i, node in enumerate(graph.node):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += declared_bytes(a.t, f"{label}, node #{i} ({clip(node.op_type, 40)}), "
                                             f"attribute {clip(a.name, 40)}")
    if total > limits.max_total_bytes:
        raise OnnxFileError(f"{label}: its tensors declare {total} bytes, more than the limit of "
                            f"{limits.max_total_bytes}")


@dataclass
class Structure:
    """A graph's nodes in an order that puts producers first, and where each value comes from."""

    order: list[int]
    producer: dict[str, int]  # value name -> index of the node that defines it


def node_order(graph: onnx.GraphProto, label: str, inputs: Sequence[str],
               initializers: Iterable[str]) -> Structure:
    """The nodes in an order where each comes after the producers of its inputs (the file's own
    order where it is one, which ONNX requires but not every tool keeps). A value used but never
    defined (a missing initializer or input), a value defined twice, and a cycle are errors that
    name the values or nodes."""
    defined: dict[str, str] = {}
    for name in inputs:
        if name in defined:
            raise OnnxFileError(f"{label}: graph input {clip(name, 60, use_repr=True)} is "
                                "declared twice")
        defined[name] = "graph input"
    for name in initializers:
        defined[name] = "initializer"
    producer: dict[str, int] = {}
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in defined or out in producer:
                what = defined.get(out) or f"node #{producer[out]}"
                raise OnnxFileError(f"{label}: node #{i} ({clip(node.op_type, 40)}) defines "
                                    f"{clip(out, 60, use_repr=True)}, already defined by {what} "
                                    "(ONNX values are defined once)")
            producer[out] = i
    undefined = []
    deps: list[set[int]] = []
    for i, node in enumerate(nodes):
        mine = set()
        for name in node.input:
            if not name or name in defined:
                continue
            if name in producer:
                mine.add(producer[name])
            else:
                undefined.append(f"{clip(name, 60, use_repr=True)} (input of node #{i}, "
                                 f"{clip(node.op_type, 40)})")
        deps.append(mine)
    for o in graph.output:
        if o.name not in defined and o.name not in producer:
            undefined.append(f"{clip(o.name, 60, use_repr=True)} (graph output)")
    if undefined:
        raise OnnxFileError(f"{label}: values used but never defined (missing initializers or "
                            f"inputs): {', '.join(undefined[:10])}"
                            f"{' ...' if len(undefined) > 10 else ''}")
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [i for i in range(len(nodes)) if waiting[i] > 0]
        names = ", ".join(f"#{i} {clip(nodes[i].op_type, 40)} "
                          f"{clip(nodes[i].name, 40, use_repr=True)}" for i in stuck[:8])
        raise OnnxFileError(f"{label}: the node graph has a cycle; these nodes wait on each "
                            f"other: {names}{' ...' if len(stuck) > 8 else ''}")
    return Structure(order, producer)


# ---------------------------------------------------------------------------------------------
# Operand types


def op_schema(op_type: str, opset: int, domain: str):
    """onnx's schema of an op at an opset, None if onnx defines none."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params, k: int):
    """The formal parameter that actual argument k binds to (a variadic last one takes the
    rest)."""
    if k < len(params):
        return params[k]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _type_name(dtype: str) -> str:
    return onnx_type_name(IR_TO_ONNX[dtype]) if dtype in IR_TO_ONNX else dtype


def check_input_types(where: str, schema, in_dtypes: Sequence[str | None]) -> None:
    """ONNX types an op's inputs by type variables: every input bound to `T` must have one
    dtype (the IR would silently promote an Add of int64 and float32; ONNX forbids it)."""
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    seen: dict[str, tuple[int, str]] = {}
    for k, dtype in enumerate(in_dtypes):
        p = _formal(schema.inputs, k)
        if dtype is None or p is None or (p.option == variadic and not p.is_homogeneous):
            continue
        if p.type_str in seen and seen[p.type_str][1] != dtype:
            j, other = seen[p.type_str]
            raise OnnxImportError(
                f"{where}: type mismatch: input {j} is {_type_name(other)} and input {k} is "
                f"{_type_name(dtype)}, but {schema.name} needs both to be the same type "
                f"{p.type_str}")
        seen.setdefault(p.type_str, (k, dtype))


def check_output_types(where: str, schema, in_dtypes: Sequence[str | None],
                       out_dtypes: Sequence[str | None]) -> None:
    """A result typed by the same variable as an input must have that input's dtype: a
    converter that let the IR promote (an integer division giving f32) is caught here."""
    bound: dict[str, str] = {}
    for k, dtype in enumerate(in_dtypes):
        p = _formal(schema.inputs, k)
        if dtype is not None and p is not None:
            bound.setdefault(p.type_str, dtype)
    for k, dtype in enumerate(out_dtypes):
        p = _formal(schema.outputs, k)
        if dtype is None or p is None or p.type_str not in bound:
            continue
        if bound[p.type_str] != dtype:
            raise OnnxImportError(f"{where}: output {k} computes {dtype}, ONNX says "
                                  f"{bound[p.type_str]} (an importer bug)")
