"""`smooth`: move activation outliers into the weights before int8 (SmoothQuant).

Why: transformers' activations often have a few channels 10-100x larger than the rest (the
layer norm's gain makes them so). One per-tensor int8 scale must cover those channels, which
leaves the others a handful of levels. Weights are quantized per output channel and have no such
problem. For a linear layer y = x W^T, any positive vector s over the input channels gives
y = (x / s)(W * s)^T exactly, so dividing channel j of x by s_j and multiplying column j of W by
s_j moves the range from the activation to the weight (Xiao et al., SmoothQuant, 2023):

    s_j = max|x_j| ** alpha / max|W_:,j| ** (1 - alpha)

where max|x_j| comes from calibration and the weight maximum is taken over every smoothed layer
reading x (q, k and v share their input, so they share s). alpha = 0.5 balances the two ranges.

Where x / s is computed: when x is made by a layer norm with a 1-D gain whose only readers are the
smoothed layers, the norm's gain and bias are divided by s and no node is added (a pre-norm
transformer block). Otherwise a `mul` by 1/s is inserted before the layers, so other readers of
x still see x.

The pass is a no-op without `scales` (value name -> s): those come from calibration
(`fxforge.quantization`, `compile(..., smooth=0.5)`), which runs the graph before this pass to
measure max|x_j|, then again after it, so that the int8 ranges are those of x / s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fxforge import ops, quant_math
from fxforge.errors import OptionError
from fxforge.ir import Graph, Node, Value
from fxforge.passes.quantize import reason_float
from fxforge.passes.rewrite import Rewriter

LINEAR = ("linear", "fused_linear")
_S_MIN, _S_MAX = 1e-5, 1e5  # a scale outside this is a degenerate channel: it is left alone


def readers(graph: Graph, x: Value) -> list[Node]:
    """The linear layers that read `x` as their input and have a constant 2-D float32 weight:
    the layers whose weights can absorb a scaling of x's last dim. Empty when any reader also
    reads x some other way (as its weight or an epilogue operand)."""
    found = []
    for node in graph.users.get(x.name, ()):
        if node.op not in LINEAR or node.inputs[0].name != x.name:
            continue
        if sum(v.name == x.name for v in node.inputs) != 1:
            return []
        weight = graph.constant(node.inputs[1])
        if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
            continue
        found.append(node)
    return found


def candidates(graph: Graph, keep_float: Iterable[str] = ()) -> dict[str, list[Node]]:
    """Float32 values worth smoothing, with their linear readers: those with at least one reader
    that `quantize` will make int8 (smoothing layers that stay float gains nothing)."""
    keep = frozenset(keep_float)
    found = {}
    for node in graph.nodes:
        for x in node.inputs[:1]:
            if x.name in found or x.type.dtype != "f32" or graph.constant(x) is not None:
                continue
            layers = readers(graph, x)
            if any(reason_float(graph, n, keep) is None for n in layers):
                found[x.name] = layers
    return found


AUTO = "auto"
# What smooth="auto" chooses between for each value: leave it (None), or SmoothQuant's 0.5.
# Stronger or finer choices fitted the few calibration samples and lost on new data: with
# (None, 0.25, ..., 0.9) the zoo's Llama without outliers lost 2.4 dB of output SQNR on held-out
# batches, with (None, 0.25, 0.5) 1.5 dB, with (None, 0.5) nothing (bench/smoothing.py, 2026-12-07)
AUTO_ALPHAS = (None, 0.5)


def check_alpha(value: Any) -> float | str | None:
    """`smooth=` as alpha: None/False off, True 0.5, "auto", else a number in (0, 1]."""
    if value is None or value is False:
        return None
    if value is True:
        return 0.5
    if isinstance(value, str) and value == AUTO:
        return AUTO
    if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) \
            and 0.0 < float(value) <= 1.0:
        return float(value)
    raise OptionError(f"smooth={value!r}: expected None, True (alpha 0.5), 'auto' (alpha chosen "
                      "per layer) or the migration strength alpha in (0, 1] (0.5 balances "
                      "activation and weight ranges)")


def _scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float | None) -> np.ndarray:
    """s = max|x|^alpha / max|w|^(1 - alpha); degenerate channels (never nonzero, zero weight
    column, overflow) keep 1."""
    if alpha is None:
        return np.ones(x_max.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = x_max ** alpha / w_max ** (1.0 - alpha)
    return np.where(np.isfinite(s) & (s > _S_MIN) & (s < _S_MAX), s, 1.0).astype(np.float32)


def _int8_error(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, weights: list[np.ndarray],
                s: np.ndarray, weight_bits: int) -> float:
    """The int8 error power of the layers reading x, relative to their output power, on sampled
    rows of x, when x / s is quantized per tensor over its calibrated range (the minmax range,
    exact from the per-channel extremes since s > 0) and W * s per output channel."""
    x_scale, zp = quant_math.qparams_from_range(min(0.0, float((lo / s).min())),
                                                max(0.0, float((hi / s).max())))
    xs = rows.astype(np.float64) / s
    x_int8 = (np.clip(np.rint(xs / x_scale) + zp, -128, 127) - zp) * x_scale
    signal = noise = 0.0
    for w in weights:
        w_q, w_scale = quant_math.quantize_int8_per_channel(w * s[None, :], weight_bits)
        want = rows.astype(np.float64) @ w.astype(np.float64).T
        got = x_int8 @ (w_q.astype(np.float64) * w_scale[:, None]).T
        signal += float((want * want).sum())
        noise += float(((got - want) ** 2).sum())
    return noise / signal if signal > 0 else 0.0


def _absmax(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.fmax(np.abs(lo), np.abs(hi))


def _auto_error(folds: list, weights: list[np.ndarray], w_max: np.ndarray, alpha: float | None,
                weight_bits: int) -> float:
    """The int8 error of a scaling, fitted on one fold of the calibration data and measured on
    the other, both ways (on the one fold when there is only one)."""
    pairs = [(0, 1), (1, 0)] if len(folds) == 2 else [(0, 0)]
    total = 0.0
    for fit, test in pairs:
        lo, hi, _ = folds[fit]
        s = _scales(_absmax(lo, hi), w_max, alpha)
        total += _int8_error(folds[test][2], lo, hi, weights, s, weight_bits)
    return total


def smoothing_scales(graph: Graph, stats: Any, alpha: float | str,
                     keep_float: Iterable[str] = (), weight_bits: int = 8
                     ) -> tuple[dict[str, np.ndarray], dict[str, float | None]]:
    """s per candidate value (see the module doc) from calibration's per-channel statistics
    (`calibration.ChannelStats`), and the alpha each got. `alpha="auto"`: for each value, the
    choice of AUTO_ALPHAS with the lowest int8 error on calibration rows it was not fitted to
    (`_auto_error`): a value is smoothed only where that helps its layers on data the scaling
    was not fitted to."""
    scales, chosen = {}, {}
    for name, layers in candidates(graph, keep_float).items():
        extremes = stats.range(name)
        weights = [graph.constant(n.inputs[1]) for n in layers]
        w_max = np.max([np.abs(w).max(axis=0) for w in weights], axis=0).astype(np.float64)
        if extremes is None or extremes[0].shape != w_max.shape:
            continue
        best = alpha
        if alpha == AUTO:
            folds = stats.folds(name)
            errors = {a: _auto_error(folds, weights, w_max, a, weight_bits) for a in AUTO_ALPHAS}
            best = min(AUTO_ALPHAS, key=lambda a: (errors[a], a is not None))
        s = _scales(_absmax(*extremes), w_max, best)
        chosen[name] = best
        if not np.all(s == 1.0):
            scales[name] = s
    return scales, chosen


def _foldable_norm(graph: Graph, x: Value, layers: list[Node]) -> Node | None:
    """The layer norm making `x` if its gain and bias can absorb 1/s (see the module doc)."""
    node = graph.producers.get(x.name)
    if node is None or node.op != "layer_norm" or x.name in {v.name for v in graph.outputs}:
        return None
    if len(graph.users.get(x.name, ())) != len(layers) or node.inputs[1].type.ndim != 1:
        return None
    gain, bias = graph.constant(node.inputs[1]), graph.constant(node.inputs[2])
    if gain is None or bias is None or gain.dtype != np.float32 or bias.dtype != np.float32:
        return None
    return node


def smooth(graph: Graph, scales: Mapping[str, np.ndarray] | None = None
           ) -> tuple[Graph, dict[str, Any]]:
    """The pass: divide each value in `scales` by its s and multiply its linear readers' weight
    columns by s (see the module doc)."""
    if not scales:
        return graph, {"smoothed": 0}
    rw = Rewriter(graph)
    plan: dict[str, tuple[np.ndarray, list[Node], Node | None]] = {}
    for name, s in scales.items():
        x = _value(graph, name)
        layers = readers(graph, x) if x is not None else []
        s = np.asarray(s, np.float32)
        if not layers or s.shape != (x.type.shape[-1],):
            continue  # another capture of the model may lack this value: nothing to smooth
        plan[name] = (s, layers, _foldable_norm(graph, x, layers))
    norms = {norm.output.name: name for name, (_, _, norm) in plan.items() if norm is not None}
    smoothed: dict[str, Value] = {}  # x -> x / s in the new graph
    weight_of: dict[int, np.ndarray] = {}  # id(linear node) -> s
    notes = []
    for name, (s, layers, norm) in plan.items():
        for n in layers:
            weight_of[id(n)] = s
        how = "folded into its layer norm" if norm is not None else "divided by a mul"
        where = ", ".join(n.provenance.describe() for n in layers)
        notes.append(f"%{name} ({how}): {where}; s in [{s.min():.3g}, {s.max():.3g}]")
    for node in graph.nodes:
        out = node.outputs[0] if node.outputs else None
        if out is not None and out.name in norms:
            s = plan[norms[out.name]][0]
            gain, bias = graph.constant(node.inputs[1]), graph.constant(node.inputs[2])
            inputs = (node.inputs[0], rw.const(gain / s, node.provenance, prefix=f"{out.name}_g"),
                      rw.const(bias / s, node.provenance, prefix=f"{out.name}_b"))
            rw.add(Node(node.op, inputs, node.outputs, node.attrs, node.provenance))
            smoothed[out.name] = out
        elif id(node) in weight_of:
            s = weight_of[id(node)]
            x = node.inputs[0]
            if x.name not in smoothed:
                inv = rw.const((1.0 / s).astype(np.float32), node.provenance,
                               prefix=f"{x.name}_inv_s")
                smoothed[x.name] = rw.add(ops.build_node(
                    "mul", [x, inv], {}, [rw.names.fresh(f"{x.name}_smooth")],
                    node.provenance)).output
            weight = graph.constant(node.inputs[1]) * s[None, :]
            w = rw.const(weight.astype(np.float32), node.provenance, prefix=f"{out.name}_ws")
            inputs = (smoothed[x.name], w, *node.inputs[2:])
            rw.add(Node(node.op, inputs, node.outputs, node.attrs, node.provenance))
        else:
            rw.add(node)
    new = Graph(graph.inputs, tuple(rw.nodes), graph.outputs, graph.dims)
    return new, {"smoothed": len(plan), "folded_into_norm": len(norms), "notes": notes}


def _value(graph: Graph, name: str) -> Value | None:
    node = graph.producers.get(name)
    if node is not None:
        return next(v for v in node.outputs if v.name == name)
    return next((v for v in graph.inputs if v.name == name), None)
