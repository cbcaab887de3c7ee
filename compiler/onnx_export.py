"""IR -> ONNX: `export_onnx(graph, path)` and `export_compiled(compiled, path)`.

Why a converter per IR op (the table in `fxforge.onnx_export_ops`, quantized ops in
`fxforge.onnx_qdq`) and not torch.onnx: the IR after the pipeline is what fxforge runs and
checks against its numpy reference, so exporting it gives ONNX that computes what the compiled
model computes, fused and quantized nodes included. Fused nodes expand back to standard ops;
quantized graphs become QDQ (docs in `fxforge.onnx_qdq`).

Everything is checked before anything is written: every node must have a converter (one
`OnnxExportError` lists all that do not, with counts and locations), every shape must be static,
and the model must pass `onnx.checker.check_model(full_check=True)`, whose strict shape
inference is held against the IR's own types (every IR value is declared in `value_info`).

Names: graph inputs and outputs take the names asked for (sanitized, unique); every other value
keeps its IR name, intermediates of an expansion get `<ir name>__<op><n>`. Node names carry the
provenance (`<module>/<source op>/<ONNX op>`, sanitized, unique); the exact text, escaped, is in
each node's `doc_string` and `metadata_props` (`fxforge.module`, `fxforge.source`, ...).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fxforge import dtypes
from fxforge.errors import FxforgeError
from fxforge.ir import Graph, NameGenerator, Node, TensorType, digest_of, printable

DEFAULT_OPSET = 21  # see `export_onnx`
MIN_OPSET = 18  # Reduce* take axes as an input, BitwiseNot / BitwiseAnd exist
MAX_OPSET = min(onnx.defs.onnx_opset_version(), 27)  # onnxruntime 1.32 has no QuantizeLinear-28

ONNX_DTYPES = {"bool": TensorProto.BOOL, "u8": TensorProto.UINT8, "i8": TensorProto.INT8,
               "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
               "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
               "f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE}


class OnnxExportError(FxforgeError, ValueError):
    """A graph (or options) that cannot become ONNX. `unsupported` maps each op that has no
    converter (or whose node cannot be converted) to the descriptions of its nodes."""

    def __init__(self, message: str, unsupported: Mapping[str, list[str]] | None = None):
        super().__init__(message)
        self.unsupported = dict(unsupported or {})


class Arg(NamedTuple):
    """A converter's view of an input: its ONNX name, IR type and array when it is constant."""

    name: str
    type: TensorType
    const: np.ndarray | None = None


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def sanitize(text: str, limit: int = 96) -> str:
    """`text` as a name of [A-Za-z0-9_.-] (anything else becomes `_`); long text is cut and
    given a digest of the whole, so two long names stay distinct."""
    clean = _UNSAFE.sub("_", text)
    if len(clean) > limit or clean != text and len(text) > limit:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        clean = f"{clean[:limit - 9]}~{digest}"
    return clean or "_"


class Emitter:
    """Collects ONNX nodes and initializers; what converters call (`op`, `const`, `cast`)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.names = NameGenerator()
        self._node_names = NameGenerator()
        self._consts: dict[str, str] = {}  # digest -> initializer name
        self.cache: dict[Any, str] = {}  # for converters: values made once (dequantized x)
        self._where = "graph"
        self._prefix = "v"
        self._meta: list[tuple[str, str]] = []
        self._doc = ""

    def begin(self, node: Node | None, base: str) -> None:
        """Nodes emitted from now on come from IR `node`; intermediates are named `base__...`."""
        self._prefix = base
        if node is None:
            self._where, self._meta, self._doc = "graph", [], ""
            return
        p = node.provenance
        parts = [sanitize(p.module.replace("/", "_")) if p.module else "top"]
        if p.source:
            parts.append(sanitize(p.source.replace("/", "_"), 48))
        self._where = "/".join(parts)
        value = node.outputs[0].name if node.outputs else ""
        self._meta = [("fxforge.op", node.op), ("fxforge.value", printable(value)),
                      ("fxforge.module", printable(p.module)),
                      ("fxforge.source", printable(p.source))]
        self._doc = printable(node.describe())

    def fresh(self, hint: str) -> str:
        return self.names.fresh(f"{self._prefix}__{hint}")

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any):
        """Emit one node; returns its output name (a list when n_out > 1)."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        name = self._node_names.claim(f"{self._where}/{op_type}")
        node = helper.make_node(op_type, list(inputs), outs, name=name,
                                **{k: v for k, v in attrs.items() if v is not None})
        node.doc_string = self._doc
        for key, value in self._meta:
            node.metadata_props.add(key=key, value=value)
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def const(self, array: Any, hint: str | None = None) -> str:
        """An initializer holding `array`: one per distinct content among generated ones
        (hint None), its own for a named one (an IR constant keeps its name, for tools that
        find or refit weights by name)."""
        array = np.asarray(array)
        key = digest_of(array) if hint is None else None
        if key is None or key not in self._consts:
            name = self.fresh("const") if hint is None else self.names.claim(sanitize(hint))
            self.initializers.append(numpy_helper.from_array(array, name))
            if key is not None:
                self._consts[key] = name
            return name
        return self._consts[key]

    def i64(self, values: Sequence[int] | int) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def scalar(self, value: Any, dtype: str) -> str:
        return self.const(np.asarray(value).astype(dtypes.to_numpy(dtype)))

    def cast(self, name: str, have: str, want: str) -> str:
        return name if have == want else self.op("Cast", [name], to=ONNX_DTYPES[want])

    def rename(self, old: str, new: str, start: int = 0) -> None:
        """Rename the value `old` in the nodes from index `start` on (and in the cache)."""
        for key, name in self.cache.items():
            if name == old:
                self.cache[key] = new
        for node in self.nodes[start:]:
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new
            for i, n in enumerate(node.output):
                if n == old:
                    node.output[i] = new

    def produced(self, name: str, start: int = 0) -> bool:
        return any(name in node.output for node in self.nodes[start:])


# ---------------------------------------------------------------------------------------------
# Checks made before anything is emitted


def _type_problem(t: TensorType) -> str | None:
    if not isinstance(t.shape, tuple) or not all(type(d) is int for d in t.shape):
        return f"shape {t.shape!r} is not static (ONNX export needs integer dims)"
    if t.dtype not in ONNX_DTYPES:
        return f"dtype {t.dtype} has no ONNX type"
    return None


def unsupported_nodes(graph: Graph) -> dict[str, list[str]]:
    """op -> descriptions of the nodes that cannot be exported (and why)."""
    from fxforge.onnx_export_ops import CONVERTERS, why_not

    found: dict[str, list[str]] = {}
    for v in graph.inputs:
        why = _type_problem(v.type)
        if why:
            found.setdefault("<graph input>", []).append(f"%{printable(v.name)}: {why}")
    for node in graph.nodes:
        why = None if node.op in CONVERTERS or node.op == "const" else "no ONNX converter"
        if node.op == "torch_op":
            why = f"opaque torch op {printable(str(node.attrs.get('target')))}"
        why = why or why_not(graph, node)
        why = why or next(filter(None, (_type_problem(v.type) for v in node.outputs)), None)
        if why:
            found.setdefault(node.op, []).append(f"{node.describe()}: {why}")
    return found


def _raise_unsupported(found: dict[str, list[str]]) -> None:
    total = sum(len(v) for v in found.values())
    lines = [f"cannot export to ONNX: {total} node(s) of {len(found)} op(s) have no ONNX form:"]
    for op, nodes in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {printable(op)} x{len(nodes)}:")
        lines += [f"    {d}" for d in nodes[:20]]
        if len(nodes) > 20:
            lines.append(f"    ... and {len(nodes) - 20} more")
    raise OnnxExportError("\n".join(lines), found)


def _io_names(given: Sequence[str] | None, values: Sequence[Any], what: str) -> list[str]:
    if given is None:
        return [v.name for v in values]
    given = list(given)
    if len(given) != len(values) or not all(isinstance(n, str) for n in given):
        raise OnnxExportError(f"{what}: {len(values)} name(s) (strings) needed, got {given!r}")
    return given


def _claim_io(names: NameGenerator, wanted: Sequence[str], what: str) -> list[str]:
    """Sanitized, unique names; a clash between two asked-for names gets a suffix."""
    return [names.claim(sanitize(n) if n else what) for n in wanted]


# ---------------------------------------------------------------------------------------------
# The exporter


def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *, opset: int | None = None,
                input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None,
                metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """Export `graph` as an ONNX model (written to `path` when given) and return it.

    opset: default 21 (DEFAULT_OPSET): the first with what this exporter uses (blocked INT4
    DequantizeLinear for linear_int4), which the installed onnx (up to 28) and onnxruntime 1.32
    (every op emitted here up to 27) run, and within what TensorRT's parser documents (up to 25
    for TensorRT 11); newer opsets change nothing this exporter emits. MIN_OPSET..MAX_OPSET
    (18..27) may be asked for.
    input_names / output_names: one per graph input / output (default: the IR's names);
    sanitized to [A-Za-z0-9_.-] and made unique. metadata: string pairs for the model's
    `metadata_props` (beside fxforge's own). Raises OnnxExportError, listing every node that has
    no ONNX form, before writing anything; the model passes `onnx.checker` with full_check.
    """
    from fxforge.onnx_export_ops import convert_node

    opset = DEFAULT_OPSET if opset is None else opset
    if type(opset) is not int or not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxExportError(f"opset {opset!r} is not supported: fxforge exports opsets "
                              f"{MIN_OPSET} to {MAX_OPSET}")
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise OnnxExportError("metadata must map strings to strings")
    in_names = _io_names(input_names, graph.inputs, "input_names")
    out_names = _io_names(output_names, graph.outputs, "output_names")
    found = unsupported_nodes(graph)
    if found:
        _raise_unsupported(found)

    ctx = Emitter(opset)
    in_names = _claim_io(ctx.names, in_names, "input")
    out_names = _claim_io(ctx.names, out_names, "output")
    env: dict[str, Arg] = {v.name: Arg(n, v.type) for v, n in zip(graph.inputs, in_names)}
    for node in graph.nodes:
        base = sanitize(node.outputs[0].name) if node.outputs else "v"
        ctx.begin(node, base)
        if node.op == "const":
            array = node.attrs["value"].array
            env[node.output.name] = Arg(ctx.const(array, base), node.output.type, array)
            continue
        start = len(ctx.nodes)
        try:
            results = convert_node(ctx, node, [env[v.name] for v in node.inputs])
        except OnnxExportError:
            raise
        except Exception as e:  # a converter's bug: say where
            raise OnnxExportError(f"exporting {node.describe()} failed: {type(e).__name__}: "
                                  f"{e}") from e
        for v, name in zip(node.outputs, results):
            if ctx.produced(name, start) and name.startswith(f"{base}__"):
                final = ctx.names.claim(sanitize(v.name))
                ctx.rename(name, final, start)
                name = final
            env[v.name] = Arg(name, v.type, _env_const(env, node, name))
    ctx.begin(None, "output")
    outputs = _bind_outputs(ctx, graph, env, out_names, set(in_names))
    model = _model(ctx, graph, env, in_names, outputs, meta)
    if model.ByteSize() <= PROTO_LIMIT:
        _check(model)
        if path is not None:
            onnx.save_model(model, os.fspath(path))
        return model
    if path is None:
        raise OnnxExportError(f"the model is {model.ByteSize() / 2**30:.1f} GiB, past protobuf's "
                              "2 GiB: give a path, its weights then go to <path>.data")
    return _save_external(model, os.fspath(path))


PROTO_LIMIT = 2**31 - 2**24  # a model proto past this is written with external data


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several kinds; all mean the same here
        raise OnnxExportError(f"the exported model fails onnx.checker: {e}") from e


def _save_external(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """Write a model past 2 GiB with its weights in `<path>.data` and check it from the file
    (onnx checks large models by path); a model that fails is removed again."""
    data = os.path.basename(path) + ".data"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    try:
        _check(path)
    except OnnxExportError:
        for written in (path, os.path.join(os.path.dirname(path), data)):
            if os.path.exists(written):
                os.remove(written)
        raise
    return model


def _env_const(env: dict[str, Arg], node: Node, name: str) -> np.ndarray | None:
    """An identity-like converter may return its input's name: the constant travels along."""
    for v in node.inputs:
        arg = env[v.name]
        if arg.name == name:
            return arg.const
    return None


def _bind_outputs(ctx: Emitter, graph: Graph, env: dict[str, Arg], names: list[str],
                  inputs: set[str]) -> list[tuple[str, TensorType]]:
    """Give each graph output its name: rename the value where it is a node's result (once),
    else (an input, a constant, a value returned twice) copy it with an Identity."""
    taken: set[str] = set()
    consts = {t.name for t in ctx.initializers}
    outputs = []
    for v, want in zip(graph.outputs, names):
        have = env[v.name].name
        if have not in inputs and have not in consts and have not in taken and ctx.produced(have):
            ctx.rename(have, want)
            for key, arg in env.items():
                if arg.name == have:
                    env[key] = arg._replace(name=want)
        else:
            ctx.nodes.append(helper.make_node("Identity", [have], [want],
                                              name=ctx._node_names.claim(f"output/{want}")))
        taken.add(want)
        outputs.append((want, v.type))
    return outputs


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPES[t.dtype], list(t.shape))


def _model(ctx: Emitter, graph: Graph, env: dict[str, Arg], in_names: list[str],
           outputs: list[tuple[str, TensorType]], meta: dict[str, str]) -> onnx.ModelProto:
    used = {n for node in ctx.nodes for n in node.input} | {n for n, _ in outputs}
    ctx.initializers = [t for t in ctx.initializers if t.name in used]  # e.g. a weight that
    # only its transposed copy reads
    declared = set(in_names) | {n for n, _ in outputs} | {t.name for t in ctx.initializers}
    made = {n for node in ctx.nodes for n in node.output}
    infos, seen = [], set(declared)
    for arg in env.values():
        if arg.name not in seen and arg.name in made:
            seen.add(arg.name)
            infos.append(_value_info(arg.name, arg.type))
    onnx_graph = helper.make_graph(
        ctx.nodes, "fxforge", [_value_info(n, v.type) for n, v in zip(in_names, graph.inputs)],
        [_value_info(n, t) for n, t in outputs], initializer=ctx.initializers,
        value_info=infos)
    opsets = [helper.make_opsetid("", ctx.opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="fxforge",
                              producer_version=_version())
    # IR version 10 at least: nodes carry metadata_props (provenance)
    model.ir_version = max(helper.find_min_ir_version_for(opsets), 10)
    ops = Counter(n.op for n in graph.nodes if n.op != "const")
    props = {"fxforge.ir_ops": ", ".join(f"{k}={v}" for k, v in sorted(ops.items())), **meta}
    helper.set_model_props(model, props)
    return model


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fxforge")
    except Exception:  # noqa: BLE001 - a checkout without metadata
        return "0"


# ---------------------------------------------------------------------------------------------
# Compiled models


def _user_names(compiled: Any) -> tuple[list[str] | None, list[str] | None]:
    """The user's input names (the forward's parameters, pytree paths below them) and output
    paths of the latest compiled signature, where they can be recovered."""
    import torch.utils._pytree as pytree

    from fxforge.api import output_names

    entry = compiled._latest
    inputs = outputs = None
    try:
        spec = entry.in_spec
        args, kwargs = pytree.tree_unflatten([None] * spec.num_leaves, spec)
        leaves = compiled._leaf_names(tuple(args), dict(kwargs))
        inputs = [_path_name(leaves[i], "input") for i in entry.captured.input_leaves]
    except Exception:  # noqa: BLE001 - a loaded model without a spec: the IR's names then
        inputs = None
    try:
        outputs = [_path_name(n, "output") for n in output_names(entry.captured)]
        if len(outputs) != len(entry.graph.outputs):
            outputs = None
    except Exception:  # noqa: BLE001
        outputs = None
    return inputs, outputs


def _path_name(path: str, what: str) -> str:
    """`x`, `args[0]`, `['logits']`, `[0]['a']` -> `x`, `args_0`, `logits`, `output_0_a`."""
    name = "_".join(re.findall(r"[A-Za-z0-9_]+", path))
    return name if name[:1].isalpha() or name[:1] == "_" else f"{what}_{name}".rstrip("_")


def export_compiled(compiled: Any, path: str | os.PathLike | None = None, *,
                    opset: int | None = None,
                    metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """Export the graph of `compiled`'s latest input signature (`compiled.graph`), with the
    user's input names (the forward's parameters) and output paths where known."""
    graph = compiled.graph  # raises the helpful error when nothing is captured yet
    inputs, outputs = _user_names(compiled)
    meta = {"fxforge.target": str(getattr(compiled, "target", "")), **dict(metadata or {})}
    return export_onnx(graph, path, opset=opset, input_names=inputs, output_names=outputs,
                       metadata=meta)
