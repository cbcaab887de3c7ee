"""Hypothesis strategies for random, valid fxforge graphs with real constant data.

    from random_graphs import random_graphs, random_inputs

    @given(random_graphs(zero_channel_prob=0.5))
    def test_my_pass(g):
        verify(g)
        new, _ = my_pass(g)
        for a, b in zip(run_reference(g, random_inputs(g, 0)), run_reference(new, ...)): ...

A graph starts from one float32 NCHW input (batch 1-3, channels 1-8, spatial 4-9; more inputs
with `max_inputs`) and applies a random sequence of CNN-style ops built with
`fxforge.ops.build_node`: conv2d (kernel 1/3, stride 1/2, padding, grouped and depthwise, with
and without bias), batch_norm, relu, relu6 (clamp), clamp, sigmoid, hardswish, gelu, add/mul of
two values (residual adds, per-channel and scalar constants), cat along channels, max/avg
pooling, adaptive average pooling, reshape/flatten, linear on flattened values and split. Every
constant holds a real array (`ConstData`), made like `fxforge.capture.Lowering.const` does.
Whole output channels of conv weights (weight[c] = 0 and bias[c] = 0) are zeroed with
probability `zero_channel_prob` each. Nodes carry random provenance, hostile (newlines, quotes,
'#', unicode, spaces, empty) with probability `hostile_prob`. Graph outputs are the last value
plus a few random others, so graphs usually hold dead nodes too.

Every generated graph passes `fxforge.verify.verify` (the strategy checks it) and runs under
`fxforge.execute.run_reference` with finite results for the inputs of `random_inputs`.

With `symbolic_batch=True` dim 0 of every input is the symbol `B` (declared `B: 1..8`), so every
batch size in that range runs the same graph; `random_inputs(graph, seed, {"B": 3})` makes
inputs of one size. The default stays static.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from fxforge import dtypes, symdims
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.ops import build_node
from fxforge.verify import verify

__all__ = [
    "HOSTILE_NAMES",
    "OP_KINDS",
    "graph_inputs",
    "provenances",
    "random_graphs",
    "random_inputs",
    "value_names",
]

# Op kinds the generator chooses among (pass a subset as `ops=` to restrict it).
OP_KINDS: tuple[str, ...] = (
    "conv2d", "batch_norm", "relu", "relu6", "clamp", "sigmoid", "hardswish", "gelu",
    "add", "mul", "cat", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "reshape",
    "flatten", "linear", "split",
)

# Names a model could give its modules or ops that must not break the IR text.
HOSTILE_NAMES: tuple[str, ...] = (
    "", " ", "  leading.and.trailing  ", "with space", "new\nline", "cr\rreturn", "tab\there",
    'quote"inside', "'single'", "hash#mark", "# starts with hash", "(parens)", "a (b)", ") (",
    "back\\slash", "\\n", "unicodé.modülé", "层.一", "emoji\U0001f600", "\u2028sep\u2029",
    "nul\x00byte", "\x85next", "ctrl\x0b\x0c\x1c", '"', '"quoted"', "@0123456789abcdef",
    "%value", "}", "{", "return", "graph(", ": f32[1]", "= relu", "-", "...", "nan", "-inf",
)

# The kinds that apply to a flattened [N, F] value (all apply to NCHW values).
_FLAT_KINDS = frozenset(("batch_norm", "relu", "relu6", "clamp", "sigmoid", "hardswish", "gelu",
                         "add", "mul", "cat", "reshape", "linear", "split"))
_MAX_CHANNELS = 16
_MAX_FEATURES = 16


_NAME_PREFIXES = ("v", "x", "conv", "bn", "_", "t_", "0", "layer1_0_conv1_weight", "")


def value_names() -> st.SearchStrategy[str]:
    """Prefixes for SSA names (the IR admits [A-Za-z0-9_]+); `NameGenerator` makes them fresh."""
    return st.sampled_from(_NAME_PREFIXES)


_MODULE_PATHS = st.lists(
    st.sampled_from(("layer1", "layer2", "0", "1", "conv1", "bn1", "features", "downsample",
                     "fc", "head", "block_3", "se-module")),
    max_size=4).map(".".join)
_HOSTILE_TEXT = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=12))


def _draw_provenance(draw: Callable[[st.SearchStrategy[Any]], Any], op: str,
                     hostile_prob: float) -> Provenance:
    hostile = hostile_prob > 0 and draw(st.integers(0, 999)) < hostile_prob * 1000
    if hostile:
        module = draw(st.one_of(_HOSTILE_TEXT, _MODULE_PATHS))
        source = draw(st.one_of(_HOSTILE_TEXT, st.sampled_from((f"aten.{op}.default", ""))))
    else:
        module = draw(_MODULE_PATHS)
        source = draw(st.sampled_from((f"aten.{op}.default", f"aten.{op}", "")))
    return Provenance(module, source)


def provenances(op: str, hostile_prob: float = 0.2) -> st.SearchStrategy[Provenance]:
    """Provenance for a node of `op`: module paths like `layer1.0.conv1` (or the top level),
    source ops like `aten.conv2d.default`; with probability `hostile_prob` the names are instead
    hostile strings (newlines, quotes, '#', unicode, spaces, empty, any text)."""
    return st.composite(lambda draw: _draw_provenance(draw, op, hostile_prob))()


def graph_inputs() -> st.SearchStrategy[tuple[int, int, int, int]]:
    """An NCHW shape: batch 1-3, channels 1-8, spatial 4-9 (H and W drawn separately)."""
    return st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(4, 9), st.integers(4, 9))


class _Builder:
    """Accumulates nodes; every op method returns False when it does not apply to its input."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], rng: np.random.Generator,
                 zero_channel_prob: float, hostile_prob: float, taken: Sequence[str]):
        self.draw = draw
        self.rng = rng
        self.zero_channel_prob = zero_channel_prob
        self.hostile_prob = hostile_prob
        self.names = NameGenerator(taken)
        self.nodes: list[Node] = []
        self.values: list[Value] = []  # every value defined so far, graph inputs first

    # --- helpers ---

    def _name(self, op: str) -> str:
        prefix = self._pick((op, op, *_NAME_PREFIXES))
        return self.names.fresh(prefix)

    def _prov(self, op: str) -> Provenance:
        return _draw_provenance(self.draw, op, self.hostile_prob)

    def const(self, array: np.ndarray, what: str = "const") -> Value:
        """A constant node, made exactly as capture's `Lowering.const` makes one."""
        array = np.asarray(array)
        data = ConstData(array)
        out = Value(self._name(what), TensorType(array.shape, dtypes.from_numpy(array.dtype)))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": data}),
                               self._prov("const")))
        return out

    def emit(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
             n_outputs: int = 1) -> tuple[Value, ...]:
        names = [self._name(op) for _ in range(n_outputs)]
        node = build_node(op, list(inputs), attrs, names, self._prov(op))
        self.nodes.append(node)
        self.values.extend(node.outputs)
        return node.outputs

    def _normal(self, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def _pick(self, choices: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(tuple(choices)))

    # --- ops on one value `x` ---

    def conv2d(self, x: Value) -> bool:
        if x.type.ndim != 4:
            return False
        _, c, h, w = x.type.shape
        groups = self._pick([g for g in range(1, c + 1) if c % g == 0])  # 1 ... c (depthwise)
        cout = groups * self.draw(st.integers(1, max(1, _MAX_CHANNELS // groups)))
        square = self._pick([1, 3])
        kernel, stride, padding, dilation = [], [], [], []
        for size in (h, w):
            k = square if self.draw(st.integers(0, 3)) else self._pick([1, 3])
            d = 2 if k == 3 and self.draw(st.integers(0, 9)) == 0 else 1
            pads = [p for p in (0, 1) if size + 2 * p >= d * (k - 1) + 1]
            if not pads:
                d, pads = 1, [1]
            kernel.append(k)
            dilation.append(d)
            padding.append(self._pick(pads))
            stride.append(self._pick([1, 2]))
        weight = self._normal((cout, c // groups, *kernel), 1.0 / np.sqrt(c // groups * 9.0))
        bias = self._normal((cout,), 0.1) if self.draw(st.booleans()) else None
        zeroed = self.rng.random(cout) < self.zero_channel_prob
        weight[zeroed] = 0.0
        if bias is not None:
            bias[zeroed] = 0.0
        inputs = [x, self.const(weight, "weight")]
        if bias is not None:
            inputs.append(self.const(bias, "bias"))
        self.emit("conv2d", inputs, {"stride": stride, "padding": padding, "dilation": dilation,
                                     "groups": groups})
        return True

    def batch_norm(self, x: Value) -> bool:
        if x.type.ndim < 2:
            return False
        c = x.type.shape[1]
        weight = (1.0 + self._normal((c,), 0.2)).astype(np.float32)
        bias = self._normal((c,), 0.1)
        mean = self._normal((c,), 0.1)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        params = [self.const(a, n) for a, n in ((weight, "bn_weight"), (bias, "bn_bias"),
                                                (mean, "running_mean"), (var, "running_var"))]
        eps = self._pick([1e-5, 1e-3, 0.1])
        self.emit("batch_norm", [x, *params], {"eps": eps})
        return True

    def relu(self, x: Value) -> bool:
        self.emit("relu", [x], {})
        return True

    def relu6(self, x: Value) -> bool:
        self.emit("clamp", [x], {"min": 0.0, "max": 6.0})
        return True

    def clamp(self, x: Value) -> bool:
        lo = self._pick([None, -1.0, -0.5, 0.0])
        hi = self._pick([None, 0.5, 1.0, 6.0]) if lo is not None else self._pick([0.5, 6.0])
        self.emit("clamp", [x], {"min": lo, "max": hi})
        return True

    def sigmoid(self, x: Value) -> bool:
        self.emit("sigmoid", [x], {})
        return True

    def hardswish(self, x: Value) -> bool:
        self.emit("hardswish", [x], {})
        return True

    def gelu(self, x: Value) -> bool:
        self.emit("gelu", [x], {"approximate": self._pick(["none", "tanh"])})
        return True

    def _binary(self, op: str, x: Value) -> bool:
        same = [v for v in self.values if v.type.shape == x.type.shape]
        kind = self._pick(["value", "value", "channel", "scalar"])
        if kind == "value":
            other = self._pick(same)  # x itself is always there: x + x is fine too
        elif kind == "channel" and x.type.ndim >= 2:
            shape = (x.type.shape[1],) + (1,) * (x.type.ndim - 2)
            other = self.const(self._normal(shape), "c")
        else:
            dtype = self._pick([np.float32, np.float32, np.float64, np.int64])
            scalar = np.array(self._pick([0.5, -1.0, 2.0, 0.0, 3]), dtype=dtype)
            other = self.const(scalar, "c")
        a, b = (x, other) if self.draw(st.booleans()) else (other, x)
        self.emit(op, [a, b], {})
        return True

    def add(self, x: Value) -> bool:
        return self._binary("add", x)

    def mul(self, x: Value) -> bool:
        return self._binary("mul", x)

    def cat(self, x: Value) -> bool:
        if x.type.ndim not in (2, 4):
            return False
        key = lambda v: v.type.shape[:1] + v.type.shape[2:]  # everything but the channels
        fits = [v for v in self.values
                if v.type.ndim == x.type.ndim and key(v) == key(x) and v.type.dtype == "f32"]
        others = self.draw(st.lists(st.sampled_from(tuple(fits)), min_size=1, max_size=2))
        dim = self._pick([1, 1 - x.type.ndim])
        self.emit("cat", [x, *others], {"dim": dim})
        return True

    def _window(self, size: int) -> tuple[int, int, int] | None:
        options = [(k, s, p) for k in (1, 2, 3) for s in (1, 2, k) for p in range(k // 2 + 1)
                   if size + 2 * p >= k and s >= 1]
        return self._pick(options) if options else None

    def _pool(self, op: str, x: Value) -> bool:
        if x.type.ndim != 4:
            return False
        wh, ww = self._window(x.type.shape[2]), self._window(x.type.shape[3])
        if wh is None or ww is None:
            return False
        attrs: dict[str, Any] = {"kernel": [wh[0], ww[0]], "stride": [wh[1], ww[1]],
                                 "padding": [wh[2], ww[2]], "ceil_mode": self.draw(st.booleans())}
        if op == "avg_pool2d":
            attrs["count_include_pad"] = self.draw(st.booleans())
            attrs["divisor_override"] = self._pick([None, None, None, 2])
        self.emit(op, [x], attrs)
        return True

    def max_pool2d(self, x: Value) -> bool:
        return self._pool("max_pool2d", x)

    def avg_pool2d(self, x: Value) -> bool:
        return self._pool("avg_pool2d", x)

    def adaptive_avg_pool2d(self, x: Value) -> bool:
        if x.type.ndim != 4:
            return False
        h, w = x.type.shape[2:]
        size = (1, 1) if self.draw(st.booleans()) else (self.draw(st.integers(1, h + 1)),
                                                        self.draw(st.integers(1, w + 1)))
        self.emit("adaptive_avg_pool2d", [x], {"output_size": size})
        return True

    def flatten(self, x: Value) -> bool:
        if x.type.ndim != 4:
            return False
        n = x.type.shape[0]
        features = math.prod(x.type.shape[1:])
        self.emit("reshape", [x], {"shape": self._pick([(n, -1), (n, features)])})
        return True

    def reshape(self, x: Value) -> bool:
        shape = x.type.shape
        if x.type.ndim == 2:  # back to NCHW: [N, F] -> [N, F, 1, 1]
            target = self._pick([(shape[0], shape[1], 1, 1), (shape[0], -1, 1, 1)])
        elif x.type.ndim == 4:
            n, c, h, w = shape
            target = self._pick([(n, c, w, h), (n, c, h * w, 1), (n, c, 1, -1), (-1, c, h, w)])
        else:
            return False
        self.emit("reshape", [x], {"shape": target})
        return True

    def linear(self, x: Value) -> bool:
        if x.type.ndim == 4:  # flatten first
            self.flatten(x)
            x = self.values[-1]
        if x.type.ndim != 2:
            return False
        features = x.type.shape[1]
        out = self.draw(st.integers(1, _MAX_FEATURES))
        inputs = [x, self.const(self._normal((out, features), 1.0 / np.sqrt(features)),
                                "fc_weight")]
        if self.draw(st.booleans()):
            inputs.append(self.const(self._normal((out,), 0.1), "fc_bias"))
        self.emit("linear", inputs, {})
        return True

    def split(self, x: Value) -> bool:
        dims = [d for d in range(1, x.type.ndim) if x.type.shape[d] >= 2]
        if not dims:
            return False
        dim = self._pick(dims)
        size = x.type.shape[dim]
        cuts = sorted(self.draw(st.sets(st.integers(1, size - 1), min_size=1,
                                        max_size=min(2, size - 1))))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, size])]
        dim = self._pick([dim, dim - x.type.ndim])
        self.emit("split", [x], {"sizes": sizes, "dim": dim}, n_outputs=len(sizes))
        return True


def _head(builder: _Builder, v: Value) -> Value:
    if v.type.ndim == 4:
        w = builder.const(builder._normal((2, v.type.shape[1], 1, 1)), "head_w")
        return builder.emit("conv2d", [v, w], {})[0]
    if v.type.ndim == 2:
        w = builder.const(builder._normal((3, v.type.shape[1])), "head_w")
        return builder.emit("linear", [v, w], {})[0]
    return v


def _apply(builder: _Builder, kind: str, x: Value) -> bool:
    return getattr(builder, kind)(x)


@st.composite
def random_graphs(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    *,
    min_ops: int = 1,
    max_ops: int = 10,
    zero_channel_prob: float = 0.25,
    hostile_prob: float = 0.2,
    max_inputs: int = 1,
    max_outputs: int = 3,
    ops: Sequence[str] = OP_KINDS,
    heads: bool = False,
    symbolic_batch: bool = False,
) -> Graph:
    """A random valid graph (see the module docstring).

    min_ops, max_ops: how many ops (not counting constants) to apply; a target, as a
        restricted `ops` may find nothing that applies. `linear` on an NCHW value flattens it
        first (a reshape).
    zero_channel_prob: the probability that each output channel of each conv2d weight is zeroed
        (weight[c] = 0 and, with a bias, bias[c] = 0). 0 disables zeroing; 1 zeroes all.
    hostile_prob: the probability that a node's provenance uses hostile names.
    max_inputs: graph inputs: the first is NCHW as above, others NCHW with the same batch.
    max_outputs: how many values the graph returns at most (the last value always).
    ops: the op kinds to choose among, a subset of `OP_KINDS`.
    heads: end every returned NCHW value in a 1x1 conv (no padding) and every rank-2 value in a
        linear, as a classifier head would. Without heads the graph outputs fix the channel
        counts of most values; with them, channel removal has room to work.
    symbolic_batch: dim 0 of every input is the symbol `B` (range 1..8) instead of a number.
    """
    unknown = set(ops) - set(OP_KINDS)
    if unknown or not ops:
        raise ValueError(f"unknown op kinds {sorted(unknown)}; known: {OP_KINDS}")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c, h, w = draw(graph_inputs())
    batch = {"B": n} if symbolic_batch else {}
    if symbolic_batch:
        n = symdims.sym("B")
    shapes = [(n, c, h, w)]
    for _ in range(draw(st.integers(1, max_inputs)) - 1):
        shapes.append((n, draw(st.integers(1, 8)), *draw(st.sampled_from([(h, w), (4, 9)]))))
    input_names = NameGenerator()
    inputs = tuple(Value(input_names.fresh(draw(st.sampled_from(["x", "input", "in_", "img"]))),
                         TensorType(s, "f32")) for s in shapes)
    builder = _Builder(draw, rng, zero_channel_prob, hostile_prob, [v.name for v in inputs])
    builder.values.extend(inputs)
    target = draw(st.integers(min_ops, max_ops))
    applied = attempts = 0
    while applied < target and attempts < 4 * target + 8:
        attempts += 1
        # mostly extend the newest value, sometimes branch from an older one
        if draw(st.integers(0, 3)):
            x = builder.values[-1]
        else:
            x = draw(st.sampled_from(tuple(builder.values)))
        if symdims.substitute(x.type, batch).numel > 4096:
            continue
        kinds = tuple(k for k in ops if x.type.ndim == 4 or k in _FLAT_KINDS)
        if kinds and _apply(builder, draw(st.sampled_from(kinds)), x):
            applied += 1
    last = builder.values[-1]
    extra = draw(st.lists(st.sampled_from(tuple(builder.values)), max_size=max(0, max_outputs - 1),
                          unique_by=lambda v: v.name))
    outputs = (last, *[v for v in extra if v.name != last.name])
    if heads:
        outputs = tuple(_head(builder, v) for v in outputs)
    dims = (symdims.DimRange("B", 1, 8),) if symbolic_batch else ()
    graph = Graph(inputs, tuple(builder.nodes), outputs, dims)
    verify(graph)
    return graph


def random_inputs(graph: Graph, seed: int = 0,
                  dims: dict[str, int] | None = None) -> list[np.ndarray]:
    """Arrays for `graph.inputs`, deterministic in `seed`: standard normal floats, small ints,
    random bools, each of its input's declared shape and dtype; symbolic dims take their sizes
    from `dims`."""
    rng = np.random.default_rng(seed)
    arrays = []
    for v in graph.inputs:
        np_dtype = dtypes.to_numpy(v.type.dtype)
        shape = symdims.substitute(v.type, dims or {}).shape
        if not symdims.is_static(shape):
            raise ValueError(f"input %{v.name} has symbolic dims: give their sizes in `dims`")
        if dtypes.is_float(v.type.dtype):
            array = rng.standard_normal(shape).astype(np_dtype)
        elif v.type.dtype == "bool":
            array = rng.random(shape) < 0.5
        else:
            array = rng.integers(0, 8, shape).astype(np_dtype)
        arrays.append(np.asarray(array, dtype=np_dtype))
    return arrays
