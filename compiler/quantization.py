"""Post-training int8 quantization for a compiled model: calibration, the `quantize` pass's
options, and the accuracy analysis the report shows.

One `Quantization` belongs to one `CompiledModel`. It calibrates once, on the float IR (the
target's pipeline up to `quantize`): every calibration sample runs through that graph with torch
and an observer sees every float value (`fxforge.calibration`). Samples of another shape (the
last, smaller batch of a DataLoader) get their own capture; values are matched by name, which
capture derives from the model's code, not from shapes.

Accuracy is measured on the first `eval_samples` calibration samples, per quantized layer
(named by module path), as SQNR = 10 log10(sum f^2 / sum (f - q)^2) of its output q against the
float model's f, two ways:
- local: the layer alone, quantized, fed the float model's own input to it. This is the error
  the layer itself adds; `min_sqnr` keeps layers below it in float.
- through: in the quantized model, where errors of earlier layers accumulate.
and end to end: SQNR, cosine similarity and max abs error of each model output.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from fxforge.calibration import ActivationStats, ChannelStats, check_method, iter_samples
from fxforge.capture import Captured
from fxforge.errors import CalibrationError, FxforgeError, OptionError
from fxforge.execute import TorchProgram
from fxforge.ir import Graph, Node
from fxforge.passes.quantize import check_keep_float_names, quantize_graph
from fxforge.passes.smooth import candidates, smooth, smoothing_scales
from fxforge.pipeline import DebugOptions, PassManager


@dataclass(frozen=True)
class QuantOptions:
    """What `compile(...)` was told about int8 quantization."""

    calibration: Any = None  # iterable of input tuples / tensors; None: dynamic quantization
    method: str = "minmax"
    percentile: float = 99.99
    min_sqnr: float | None = None  # dB; layers whose local SQNR is lower stay float
    keep_float: tuple[str, ...] = ()  # module paths or value names to keep in float
    eval_samples: int = 8
    weight_bits: int = 8  # 7 where the CPU's int8 kernels need it (kernels/int8_scheme.py)
    smooth: float | str | None = None  # SmoothQuant's alpha or "auto" (passes/smooth.py)
    int8_layers: str = "all"  # "measured": int8 only where it pays here (fxforge.int8_choice)


@dataclass
class LayerAccuracy:
    module: str
    op: str
    mode: str  # static | dynamic
    out: str  # i8 | f32
    sqnr_local_db: float
    sqnr_through_db: float


@dataclass
class QuantAnalysis:
    """What the report shows about int8: per layer SQNR, what stayed float, end-to-end error."""

    samples: int
    method: str
    layers: list[LayerAccuracy]
    kept_by_min_sqnr: list[str]
    outputs: list[dict[str, float]]  # per model output: sqnr_db, cosine, max_abs_error
    min_sqnr: float | None = None
    notes: list[str] = field(default_factory=list)


class _Power:
    """Streaming SQNR: sums of signal and noise power over samples."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, ref: torch.Tensor, got: torch.Tensor) -> None:
        ref64, got64 = ref.detach().double(), got.detach().double()
        self.signal += float((ref64 * ref64).sum())
        self.noise += float(((ref64 - got64) ** 2).sum())

    @property
    def db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


def as_float(t: torch.Tensor, node: Node | None) -> torch.Tensor:
    """An int8 result as the real numbers it stands for (its type's scale and zero point)."""
    if t.dtype != torch.int8 or node is None:
        return t.float()
    q = node.outputs[0].type.quant
    return (t.to(torch.int32) - q.zero_point[0]).float() * q.scale[0]


def check_min_sqnr(value: Any) -> float | None:
    """None, or a finite number of dB (a string, a list or NaN would fail, or be ignored, only
    after calibration has run)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise OptionError(f"min_sqnr={value!r}: expected a finite number of dB (e.g. 30) or None")
    return float(value)


def check_keep_float(value: Any) -> tuple[str, ...]:
    """keep_float as a tuple of names: None means none, one string means that one name."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise OptionError(f"keep_float={value!r}: expected module paths (a list of "
                          "strings) or None") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise OptionError(f"keep_float: {bad[0]!r} is not a string; give module paths such as "
                          "'encoder.layer.0.attention'")
    return names


class Quantization:
    def __init__(self, capture: Callable[[tuple, dict], Captured], options: QuantOptions,
                 float_pipeline: Sequence[str], debug: DebugOptions):
        check_method(options.method, options.percentile)
        self.capture = capture  # inputs -> Captured: the model's capture (or ONNX import)
        self.options = options
        self.float_pipeline = tuple(float_pipeline)
        self.debug = debug
        self.ranges: dict[str, tuple[float, float]] | None = None
        self.keep_float: tuple[str, ...] = tuple(options.keep_float)
        self.analysis: QuantAnalysis | None = None
        self._graphs: dict[tuple, tuple[Captured, Graph]] = {}
        self.smooth_scales: dict[str, Any] = {}  # value name -> SmoothQuant's s (passes/smooth.py)
        self.smooth_notes: list[str] = []  # the alpha each smoothed value got, for the report
        self.choices: list[Any] = []  # int8_layers="measured": fxforge.int8_choice.LayerChoice
        self._smoothed: dict[tuple, Graph] = {}
        self._eval: list[tuple] = []
        self._prepared = False
        self._failure: FxforgeError | None = None  # see prepare()

    # --- calibration ---

    @staticmethod
    def _signature(args: tuple) -> tuple:
        return tuple((tuple(a.shape), str(a.dtype), str(a.device))
                     if isinstance(a, torch.Tensor) else repr(a) for a in args)

    def captured_for(self, args: tuple) -> Captured | None:
        """The capture made while calibrating on inputs of this signature, if any: the IR is
        immutable, so compiling for the same signature reuses it instead of exporting the model
        a second time (about a quarter of a ResNet-50 int8 compile)."""
        entry = self._graphs.get(self._signature(args))
        return entry[0] if entry else None

    def _float_graph(self, args: tuple, index: int) -> tuple[Captured, Graph]:
        """The capture and float graph for inputs like `args`: the target's passes up to
        `quantize`, with smoothing applied once its scales are known."""
        key = self._signature(args)
        if key not in self._graphs:
            try:
                captured = self.capture(args, {})
                graph, _ = PassManager(self.float_pipeline, self.debug).run(captured.graph)
            except FxforgeError as e:
                raise CalibrationError(f"calibration sample {index} does not fit the model: "
                                       f"{e}") from e
            if not self._graphs:  # a keep_float typo fails before calibration runs (names are
                check_keep_float_names(self.options.keep_float, graph)  # matched as quantize will)
            self._graphs[key] = (captured, graph)
        captured, graph = self._graphs[key]
        if self.smooth_scales:
            if key not in self._smoothed:
                self._smoothed[key] = smooth(graph, self.smooth_scales)[0]
            graph = self._smoothed[key]
        return captured, graph

    @staticmethod
    def _graph_inputs(captured: Captured, args: tuple) -> list[torch.Tensor]:
        leaves = pytree.tree_flatten((args, {}))[0]
        return [leaves[i] for i in captured.input_leaves]

    def prepare(self, n_inputs: int | None, args: tuple | None = None) -> None:
        """Calibrate (once) and decide what stays float; then `pass_options` is ready.

        A calibration that failed stays failed: every later call raises the same error rather
        than compiling with dynamic quantization, which would change the model's numbers without
        a word (the data may be a one-shot iterator, so it cannot be read again)."""
        if self._failure is not None:
            raise type(self._failure)(
                f"calibration failed earlier, so this model has no int8 ranges; compile it "
                f"again with good data and options. The error was: {self._failure}"
            ) from self._failure
        if self._prepared:
            return
        try:
            self._calibrate(n_inputs)
            if self.options.int8_layers == "measured" and args is not None:
                self._measure_layers(args)
        except Exception as e:
            self.ranges, self.analysis, self._eval = None, None, []
            self.smooth_scales, self._smoothed, self.smooth_notes = {}, {}, []
            if isinstance(e, FxforgeError):
                self._failure = e
                raise
            self._failure = CalibrationError(f"calibration failed: {type(e).__name__}: {e}")
            raise self._failure from e
        self._prepared = True

    def _calibrate(self, n_inputs: int | None) -> None:
        data = self.options.calibration
        if data is None:
            return
        if self.options.smooth is not None:
            self._measure_smoothing(data, n_inputs)
        stats: ActivationStats | None = None

        def observe(graph: Graph, args: tuple) -> ActivationStats:
            nonlocal stats
            if stats is None:
                stats = ActivationStats(_float_values(graph))
            if len(self._eval) < self.options.eval_samples:
                self._eval.append(args)
            return stats

        self._run_samples(data, n_inputs, "calibrating", observe)
        self.ranges = stats.ranges(self.options.method, self.options.percentile)
        self.analysis = self.analyze(self.keep_float)
        if self.options.min_sqnr is not None:
            worst = [layer for layer in self.analysis.layers
                     if layer.sqnr_local_db < self.options.min_sqnr]
            if worst:
                self.keep_float += tuple(layer.module for layer in worst)
                kept = [f"{layer.module}: local SQNR {layer.sqnr_local_db:.1f} dB < "
                        f"{self.options.min_sqnr:g} dB" for layer in worst]
                self.analysis = self.analyze(self.keep_float)
                self.analysis.kept_by_min_sqnr = kept
            self.analysis.min_sqnr = self.options.min_sqnr

    def _run_samples(self, data: Any, n_inputs: int | None, what: str,
                     observer_for: Callable[[Graph, tuple], Callable]) -> None:
        """Run every sample through its float graph, watched by `observer_for(graph, sample)`."""
        from tqdm.auto import tqdm

        programs: dict[int, TorchProgram] = {}
        with torch.no_grad():
            for index, args in enumerate(tqdm(iter_samples(data, n_inputs), desc=what,
                                              unit="sample", leave=False, disable=None)):
                captured, graph = self._float_graph(args, index)
                observer = observer_for(graph, args)
                program = programs.get(id(graph))
                if program is None:
                    program = programs[id(graph)] = TorchProgram(graph, torch.device("cpu"))
                program(self._graph_inputs(captured, args), observe=observer)

    def _measure_smoothing(self, data: Any, n_inputs: int | None) -> None:
        """SmoothQuant's first look at the data: max |x| per channel of every value that feeds
        linear layers, turned into scales (passes/smooth.py). Calibration then reads the data
        again, through the smoothed graph, so the int8 ranges are those of x / s."""
        if isinstance(data, Iterator):
            raise OptionError(
                f"smooth={self.options.smooth} reads the calibration data twice (channel maxima, "
                f"then ranges), but a {type(data).__name__} can be read only once: pass a list "
                "or a DataLoader")
        stats: ChannelStats | None = None
        first: Graph | None = None

        def observe(graph: Graph, args: tuple) -> ChannelStats:
            nonlocal stats, first
            if stats is None:
                first = graph
                stats = ChannelStats(candidates(graph, self.keep_float))
            return stats

        self._run_samples(data, n_inputs, "smoothing: channel statistics", observe)
        self.smooth_scales, chosen = smoothing_scales(
            first, stats, self.options.smooth, self.keep_float, self.options.weight_bits)
        self.smooth_notes = [f"smoothing %{name}: " + ("left alone" if a is None else
                                                        f"alpha {a:g}")
                             for name, a in chosen.items()]

    def _measure_layers(self, args: tuple) -> None:
        """Keep float the layers whose int8 version is slower on this machine (timed on the
        first calibration sample's shapes, or on these call's shapes without calibration)."""
        from fxforge.int8_choice import choose

        sample = self._eval[0] if self._eval else args
        _, graph = self._float_graph(sample, 0)
        self.choices = choose(graph, self.ranges, self.keep_float, self.options.weight_bits)
        slower = tuple(c.value for c in self.choices if not c.int8)
        if slower:
            self.keep_float += slower
            if self.analysis is not None:
                kept = self.analysis.kept_by_min_sqnr
                self.analysis = self.analyze(self.keep_float)
                self.analysis.kept_by_min_sqnr = kept
                self.analysis.min_sqnr = self.options.min_sqnr

    def pass_options(self) -> dict[str, dict[str, Any]]:
        """Options of the passes after calibration, by pass name."""
        return {"smooth": {"scales": self.smooth_scales},
                "quantize": {"ranges": self.ranges, "keep_float": self.keep_float,
                             "weight_bits": self.options.weight_bits}}

    # --- accuracy ---

    def analyze(self, keep_float: Sequence[str]) -> QuantAnalysis:
        """SQNR per quantized layer and end to end, on the first calibration samples of the
        first sample's shape."""
        first = self._eval[0]
        captured, graph = self._float_graph(first, 0)
        qgraph, stats = quantize_graph(graph, self.ranges, keep_float, self.options.weight_bits)
        layers = stats["layers"]
        float_program = TorchProgram(graph, torch.device("cpu"))
        quant_program = TorchProgram(qgraph, torch.device("cpu"))
        local = {layer["float_value"]: _LocalLayer(graph, layer["float_value"], self.ranges,
                                                   self.options.weight_bits)
                 for layer in layers}
        needed = set(local) | {v.name for lay in local.values() for v in lay.inputs}
        q_producers = qgraph.producers
        through = {layer["value"]: _Power() for layer in layers}
        local_power = {name: _Power() for name in local}
        outputs = [(_Power(), []) for _ in graph.outputs]
        used = [s for s in self._eval if self._float_graph(s, 0)[1] is graph]
        with torch.no_grad():
            for args in used:
                inputs = self._graph_inputs(captured, args)
                seen, qseen = _Keep(needed), _Keep(through)
                fouts = float_program(inputs, observe=seen)
                qouts = quant_program(inputs, observe=qseen)
                for layer in layers:
                    ref = seen[layer["float_value"]]
                    through[layer["value"]].add(ref, as_float(qseen[layer["value"]],
                                                              q_producers[layer["value"]]))
                    local_power[layer["float_value"]].add(ref, local[layer["float_value"]](seen))
                for (power, cos), f, q in zip(outputs, fouts, qouts):
                    if f.is_floating_point():
                        power.add(f, q)
                        cos.append(_error(f, q))
        return QuantAnalysis(
            samples=len(used), method=self.options.method,
            layers=[LayerAccuracy(layer["module"] or layer["float_value"], layer["op"],
                                  layer["mode"], layer["out"],
                                  local_power[layer["float_value"]].db,
                                  through[layer["value"]].db) for layer in layers],
            kept_by_min_sqnr=[],
            outputs=[{"sqnr_db": p.db, "cosine": min(c[0] for c in e) if e else math.nan,
                      "max_abs_error": max(c[1] for c in e) if e else math.nan}
                     for p, e in outputs],
            notes=[f"kept float: {k}" for k in stats["kept_float"]] + stats["round_trips"]
            + self.smooth_notes)


class _Keep(dict):
    """An observe hook that keeps the tensors of the named values."""

    def __init__(self, names):
        super().__init__()
        self.names = frozenset(names)

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.names:
            self[name] = tensor


def _error(f: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    a, b = f.detach().double().flatten(), q.detach().double().flatten()
    denom = float(a.norm() * b.norm())
    cos = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    return cos, float((a - b).abs().max()) if a.numel() else 0.0


def _float_values(graph: Graph) -> list[str]:
    names = [v.name for v in graph.inputs if v.type.dtype == "f32"]
    names += [v.name for n in graph.nodes if n.op != "const" for v in n.outputs
              if v.type.dtype == "f32"]
    return names


class _LocalLayer:
    """One layer of the float graph alone, quantized: fed the float model's own inputs to it."""

    def __init__(self, graph: Graph, value: str, ranges: dict | None, weight_bits: int):
        node = graph.producers[value]
        consts = [graph.producers[v.name] for v in node.inputs
                  if v.name in graph.producers and graph.producers[v.name].op == "const"]
        const_names = {c.outputs[0].name for c in consts}
        self.inputs = tuple(dict.fromkeys(v for v in node.inputs if v.name not in const_names))
        sub = Graph(self.inputs, (*consts, node), node.outputs)
        qsub, _ = quantize_graph(sub, ranges, weight_bits=weight_bits)
        self.program = TorchProgram(qsub, torch.device("cpu"))

    def __call__(self, seen: dict[str, torch.Tensor]) -> torch.Tensor:
        (out,) = self.program([seen[v.name] for v in self.inputs])
        return out

