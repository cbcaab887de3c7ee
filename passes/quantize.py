"""`quantize`: float conv2d / linear (plain or fused) become int8 `qconv2d` / `qlinear`.

The semantics of the quantized ops are in docs/quantized-ir.md. Decisions this pass makes:

- Weights: int8, per output channel, symmetric (`fxforge.quant_math`); with `weight_bits=7`
  in [-63, 63], declared as `w_bits=7` on the layer (what `cpu-int8` picks on CPUs without
  VNNI, see kernels/int8_scheme.py).
- Activations: static per-tensor int8 when calibration gave the value's range (`ranges`, keyed
  by value name), else dynamic: `dynamic_quantize` computes a scale per row (linear) or per
  tensor (conv) at run time and the layer outputs float.
- int8 flows between layers: a static layer writes int8 (requantizing in its epilogue) when every
  reader of its result reads int8 — another static layer, or an element-moving layout op
  (max_pool2d, reshape, cat, ...) whose result is read as int8 in turn. The inputs of a `cat`
  share the cat's scale, so the concatenation needs no requantizing.
- Where a float value must become int8 a `quantize` node is inserted, and where an int8 value
  has a float reader a `dequantize`; both are listed in the stats (`round_trips`) with the
  reason, so the report says where precision and time go.
- Kept in float, and listed with the reason: layers with too little work to gain from int8
  (fewer than `MIN_DOT` products per output: e.g. a depthwise 3x3 conv), non-constant weights,
  layers named in `keep_float` (see `layer_names`), and everything that is not a
  conv or linear (attention matmuls, norms, pooling that averages).

The quantized node keeps the float node's result name when it outputs float, so the IR still
speaks the names it had; `layers` in the stats maps each quantized layer to its float value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fxforge import ops, quant_math
from fxforge.errors import OptionError
from fxforge.ir import Graph, Node, Provenance, Value
from fxforge.passes.rewrite import Rewriter

MIN_DOT = 16  # products per output below which int8 does not pay for quantizing its input
QUANTIZABLE = {"conv2d": "qconv2d", "fused_conv2d": "qconv2d", "linear": "qlinear",
               "fused_linear": "qlinear"}
# Ops that move or select int8 elements without arithmetic: they run on int8 unchanged.
TRANSPARENT = frozenset(("reshape", "permute", "slice", "select", "squeeze", "unsqueeze",
                         "expand", "cat", "split", "max_pool2d", "identity", "memory_format"))
CONV_ATTRS = ("stride", "padding", "dilation", "groups")

Range = tuple[float, float]


def _dot_length(node: Node) -> int:
    w = node.inputs[1].type.shape
    return int(np.prod(w[1:]))


def _layer_base(node: Node) -> tuple[bool, tuple, list[tuple[int, Value]]]:
    """has_bias, the epilogue, and the epilogue operands (index in node.inputs, value)."""
    if node.op in ("conv2d", "linear"):
        return len(node.inputs) == 3, (), []
    epilogue = node.attrs["epilogue"]
    operands = [(s["operand"], node.inputs[s["operand"]]) for s in epilogue if "operand" in s]
    return node.attrs["has_bias"], epilogue, operands


def layer_names(graph: Graph, node: Node) -> set[str]:
    """The names `keep_float` can give a layer by: its result, its module path and, when its
    weight is a parameter, the module owning it (nn.MultiheadAttention runs its out_proj inside
    its own forward, so only the weight's path says `attn.out_proj`)."""
    names = {node.outputs[0].name}
    if node.provenance.module:
        names.add(node.provenance.module)
    producer = graph.producers.get(node.inputs[1].name) if len(node.inputs) > 1 else None
    if producer is not None and producer.op == "const" \
            and producer.provenance.source == "parameter":
        owner = producer.provenance.module.rpartition(".")[0]
        if owner:
            names.add(owner)
    return names


def keeps(keep: Iterable[str], names: Iterable[str]) -> bool:
    """A keep_float entry keeps a layer it names, and every layer inside a module it names."""
    return any(n == k or n.startswith(k + ".") for k in keep for n in names)


def _why_matmul_float(node: Node) -> str:
    """Every matmul-like node left float is listed with a reason (a matmul by a constant 2-D
    weight became a linear layer in canonicalize, so what is left has no such weight)."""
    shapes = " x ".join(str(list(v.type.shape)) for v in node.inputs[:2])
    what = "attention over" if node.op == "scaled_dot_product_attention" else "matmul of"
    return (f"{what} computed values ({shapes}), no constant weight: int8 covers layers "
            "with weights")


def check_keep_float_names(names: Iterable[str], graph: Graph) -> None:
    """Every keep_float name must name a layer of `graph` (see `layer_names`), a module holding
    layers, or a value of it: a typo would otherwise quantize the very layer the user meant to
    protect, without a word. Names are matched on the graph quantize sees, after the float
    passes (fusion renames values, merged sibling layers become one)."""
    per_layer = [layer_names(graph, n) for n in graph.nodes if n.op in QUANTIZABLE]
    values = {v.name for n in graph.nodes for v in n.outputs}
    unknown = [k for k in names if k not in values and not any(keeps((k,), ns)
                                                                 for ns in per_layer)]
    if not unknown:
        return
    layers = sorted({m for n in graph.nodes if n.op in QUANTIZABLE
                     for m in layer_names(graph, n) - {n.outputs[0].name}
                     or {n.outputs[0].name}})  # value names only where a layer has no module
    lines = [f"  {k!r}: closest: "
             f"{', '.join(difflib.get_close_matches(k, layers, n=5, cutoff=0.4)) or '(none)'}"
             for k in unknown]
    shown = ", ".join(layers[:20]) + (" ..." if len(layers) > 20 else "")
    raise OptionError("keep_float names no layer of the model (names are matched after the "
                      "float passes; see compiled.graph):\n" + "\n".join(lines)
                      + f"\n  its quantizable layers: {shown or '(none)'}")


def reason_float(graph: Graph, node: Node, keep: frozenset[str] = frozenset()) -> str | None:
    """Why `node` stays float under `quantize`; None when it is quantized."""
    if node.op not in QUANTIZABLE:
        return "not a conv or linear"
    if keep and keeps(keep, layer_names(graph, node)):
        return "kept in float on request (keep_float / min_sqnr)"
    weight = graph.constant(node.inputs[1])
    if weight is None:
        return "weight is not a constant"
    bias = graph.constant(node.inputs[2]) if len(node.inputs) > 2 else None
    if not np.isfinite(weight).all() or (bias is not None and not np.isfinite(bias).all()):
        return "its weight or bias has inf/NaN values, which int8 cannot hold"
    if node.inputs[0].type.dtype != "f32" or node.inputs[1].type.dtype != "f32":
        return "not float32"
    if _dot_length(node) < MIN_DOT:
        return f"{_dot_length(node)} products per output: too little work to gain from int8"
    if _dot_length(node) * 255 * 128 > 2**31 - 1:
        return f"{_dot_length(node)} products per output could overflow the int32 accumulator"
    _, _, operands = _layer_base(node)
    if any(v.type.dtype != "f32" and graph.constant(v) is None for _, v in operands):
        return "an epilogue operand is a non-float32 tensor computed at run time"
    return None


class _Quantizer:
    def __init__(self, graph: Graph, ranges: Mapping[str, Range] | None,
                 keep_float: Iterable[str], weight_bits: int):
        self.graph = graph
        self.weight_bits = weight_bits
        self.ranges = dict(ranges or {})
        self.static = ranges is not None
        self.keep = frozenset(keep_float)
        self.rw = Rewriter(graph)
        # old name -> its value in the new graph (float, or i8 where a layer writes int8)
        self.value: dict[str, Value] = {v.name: v for v in graph.inputs}
        self.as_float: dict[str, Value] = {}  # old name -> float version, when one was made
        self.as_int8: dict[str, Value] = {}  # old name -> int8 version, when one was made
        self.dynamic: dict[tuple[str, str], tuple[Value, Value]] = {}
        self.layers: list[dict[str, Any]] = []
        self.kept: list[str] = []
        self.round_trips: list[str] = []
        self.quantized = {n.outputs[0].name for n in graph.nodes
                          if reason_float(graph, n, self.keep) is None}
        self._share_cat_scales()

    # --- decisions ---

    def _params(self, name: str) -> tuple[float, int] | None:
        r = self.ranges.get(name)
        return None if r is None else quant_math.qparams_from_range(*r)

    def _int8_readers_only(self, v: Value, depth: int = 0) -> bool:
        """Every reader of `v` reads it as int8 (static layers' x, or int8 layout ops)."""
        users = self.graph.users.get(v.name, ())
        if not users or v.name in {o.name for o in self.graph.outputs} or depth > 16:
            return False
        for user in users:
            reads = [u.name for u in user.inputs]
            if user.outputs[0].name in self.quantized and reads.index(v.name) == 0 \
                    and reads.count(v.name) == 1 and self._params(v.name) is not None:
                continue
            if user.op in TRANSPARENT and all(self._int8_readers_only(o, depth + 1)
                                              for o in user.outputs):
                continue
            return False
        return True

    def _share_cat_scales(self) -> None:
        """Give every input of an int8 cat the cat's range, so the cat needs no requantizing."""
        if not self.static:
            return
        for node in self.graph.nodes:
            if node.op == "cat" and node.output.name in self.ranges:
                for v in node.inputs:
                    self.ranges[v.name] = self.ranges[node.output.name]

    # --- values in the new graph ---

    def float_of(self, v: Value, why: str, where: Node | None) -> Value:
        """`v` as float in the new graph (dequantized once if a layer made it int8)."""
        new = self.value[v.name]
        if new.type.dtype == v.type.dtype:
            return new
        if v.name not in self.as_float:
            scale, zp = new.type.quant.scale[0], new.type.quant.zero_point[0]
            provenance = where.provenance if where else Provenance()
            node = self.rw.add(ops.build_node(
                "dequantize", [new], {"scale": scale, "zero_point": zp},
                [self.rw.names.fresh(f"{v.name}_dq")], provenance))
            self.as_float[v.name] = node.output
            reader = f"{where.op} at {where.provenance.describe()}" if where else "the output"
            self.round_trips.append(f"dequantize %{v.name} for {reader}: {why}")
        return self.as_float[v.name]

    def int8_of(self, v: Value, params: tuple[float, int], where: Node) -> Value:
        new = self.value[v.name]
        if new.type.dtype == "i8":
            q = new.type.quant
            if (q.scale[0], q.zero_point[0]) == params:
                return new
        if v.name not in self.as_int8:
            source = self.float_of(v, "scales differ", where) if new.type.dtype == "i8" else new
            node = self.rw.add(ops.build_node(
                "quantize", [source], {"scale": params[0], "zero_point": params[1]},
                [self.rw.names.fresh(f"{v.name}_q")], where.provenance))
            self.as_int8[v.name] = node.output
            what = self.graph.producers.get(v.name)
            origin = f"{what.op} at {what.provenance.describe()}" if what else "a graph input"
            self.round_trips.append(f"quantize %{v.name} (from {origin}) for {where.op} at "
                                    f"{where.provenance.describe()}")
        return self.as_int8[v.name]

    # --- rewriting ---

    def run(self) -> Graph:
        for node in self.graph.nodes:
            if node.outputs[0].name in self.quantized:
                self._layer(node)
            elif node.op in TRANSPARENT and self._int8_input(node):
                self._transparent(node)
            else:
                if node.op in QUANTIZABLE:
                    why = reason_float(self.graph, node, self.keep)
                    self.kept.append(f"{node.provenance.describe()}: {why}")
                elif node.op in ("matmul", "scaled_dot_product_attention"):
                    self.kept.append(f"{node.provenance.describe()}: {_why_matmul_float(node)}")
                self._float(node)
        outputs = [self.float_of(v, "graph output", None) for v in self.graph.outputs]
        return Graph(self.graph.inputs, tuple(self.rw.nodes), tuple(outputs),
                     self.graph.dims)

    def _int8_input(self, node: Node) -> bool:
        ins = [self.value[v.name] for v in node.inputs]
        if not ins or any(v.type.dtype != "i8" for v in ins):
            return False
        if node.op == "cat" and len({(v.type.quant.scale, v.type.quant.zero_point)
                                     for v in ins}) != 1:
            return False
        return all(self._int8_readers_only(o) for o in node.outputs)

    def _float(self, node: Node) -> None:
        inputs = [self.float_of(v, "its reader runs in float", node) for v in node.inputs]
        new = Node(node.op, tuple(inputs), node.outputs, node.attrs, node.provenance)
        self.rw.add(new)
        for v in node.outputs:
            self.value[v.name] = v

    def _transparent(self, node: Node) -> None:
        inputs = [self.value[v.name] for v in node.inputs]
        names = [self.rw.names.fresh(f"{v.name}_q") for v in node.outputs]
        new = self.rw.add(ops.build_node(node.op, inputs, dict(node.attrs), names, node.provenance))
        for old, v in zip(node.outputs, new.outputs):
            self.value[old.name] = v

    def _float_operand(self, v: Value, node: Node) -> Value:
        """An epilogue operand as float32. A constant of another dtype (capture's `+ 3` is an
        i64 scalar) becomes an f32 constant: torch's promotion computes the float step with
        exactly that value, since the fused epilogue keeps float32 throughout."""
        if v.type.dtype == "f32":
            return self.float_of(v, "epilogue operand", node)
        array = self.graph.constant(v)
        return self.rw.const(array.astype(np.float32), node.provenance, prefix=f"{v.name}_f")

    def _layer(self, node: Node) -> None:
        rw, x, out = self.rw, node.inputs[0], node.outputs[0]
        has_bias, epilogue, _ = _layer_base(node)
        weight = self.graph.constant(node.inputs[1])
        w_q, w_scale = quant_math.quantize_int8_per_channel(weight, self.weight_bits)
        inputs = [None, rw.const(w_q, node.provenance, prefix=f"{out.name}_wq"),
                  rw.const(w_scale, node.provenance, prefix=f"{out.name}_wscale")]
        if has_bias:
            inputs.append(self.value[node.inputs[2].name])
        x_params = self._params(x.name) if self.static else None
        attrs: dict[str, Any] = {"has_bias": has_bias, "dynamic": x_params is None,
                                 "w_bits": self.weight_bits}
        if node.op in ("conv2d", "fused_conv2d"):
            attrs.update({k: node.attrs[k] for k in CONV_ATTRS})
        if x_params is None:
            mode = "row" if QUANTIZABLE[node.op] == "qlinear" else "tensor"
            key = (x.name, mode)
            if key not in self.dynamic:
                dq = rw.add(ops.build_node(
                    "dynamic_quantize", [self.float_of(x, "dynamic quantization", node)],
                    {"mode": mode}, [rw.names.fresh(f"{x.name}_q"),
                                     rw.names.fresh(f"{x.name}_scale")], node.provenance))
                self.dynamic[key] = tuple(dq.outputs)
            inputs[0], x_scale = self.dynamic[key]
            inputs.append(x_scale)
        else:
            inputs[0] = self.int8_of(x, x_params, node)
            attrs.update({"x_scale": x_params[0], "x_zero_point": x_params[1]})
        # epilogue operands are float; re-index them after the quantized op's own inputs
        steps = []
        for step in epilogue:
            step = dict(step)
            if "operand" in step:
                inputs.append(self._float_operand(node.inputs[step["operand"]], node))
                step["operand"] = len(inputs) - 1
            steps.append(step)
        attrs["epilogue"] = tuple(steps)
        out_params = self._params(out.name) if self.static else None
        int8_out = out_params is not None and self._int8_readers_only(out) \
            and out.type.dtype == "f32"
        if int8_out:
            attrs.update({"out_dtype": "i8", "out_scale": out_params[0],
                          "out_zero_point": out_params[1]})
            name = rw.names.fresh(f"{out.name}_q")
        else:
            name = out.name
        new = rw.add(ops.build_node(QUANTIZABLE[node.op], inputs, attrs, [name], node.provenance))
        self.value[out.name] = new.output
        self.layers.append({"module": node.provenance.module, "float_value": out.name,
                            "value": new.output.name, "op": new.op,
                            "mode": "dynamic" if attrs["dynamic"] else "static",
                            "out": "i8" if int8_out else "f32"})


def quantize_graph(graph: Graph, ranges: Mapping[str, Range] | None = None,
                   keep_float: Iterable[str] = (), weight_bits: int = 8,
                   ) -> tuple[Graph, dict[str, Any]]:
    """Quantize `graph` (see the module doc). `ranges`: calibrated (lo, hi) per float value
    name, or None for dynamic quantization everywhere. `weight_bits`: 8, or 7 for CPUs whose
    int8 kernels sum pairs of products in 16 bits (`kernels/int8_scheme.py`)."""
    check_keep_float_names(keep_float, graph)
    q = _Quantizer(graph, ranges, keep_float, weight_bits)
    new = q.run()
    stats = {"quantized": len(q.layers),
             "static": sum(layer["mode"] == "static" for layer in q.layers),
             "dynamic": sum(layer["mode"] == "dynamic" for layer in q.layers),
             "kept_float": q.kept, "round_trips": q.round_trips, "layers": q.layers}
    return new, stats


def quantize(graph: Graph, ranges: Mapping[str, Range] | None = None,
             keep_float: Iterable[str] = (), weight_bits: int = 8,
             ) -> tuple[Graph, dict[str, Any]]:
    """The pass as the PassManager calls it; options come from `compile(...)`."""
    return quantize_graph(graph, ranges, keep_float, weight_bits)
