"""`compile(..., int8_layers="measured")`: int8 only for the layers where it pays on this machine.

Why measure: whether an int8 layer beats its float version depends on the layer's shape (a
[1, 64] x [64, 128] linear at batch 1 takes ~5 us in float and ~100 us through the int8 path's
quantize / int8 GEMM / rescale steps), on the CPU (VNNI or not, cores) and on the library
versions. A cost model would have to be validated on each of those; a measurement is that
validation, taken where the model runs.

What is timed: each layer `quantize` would make int8, alone, as the torch backend runs it: the
float node (with its fused epilogue) against the quantized node with the quantize step of its
input and the float result it hands on, on random inputs of its shapes (inside its calibrated
range, when there is one). That is pessimistic for layers that pass int8 to each other (their
round trips disappear in the whole graph), so a layer kept float is one where int8 could not be
shown to pay. The faster per-call mean of three blocks of back-to-back calls counts; results are
cached in the process by layer signature and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fxforge.errors import OptionError
from fxforge.execute import TorchProgram
from fxforge.ir import Graph, Node
from fxforge.passes.quantize import quantize_graph, reason_float

LAYERS = ("all", "measured")
_BLOCK_S = 2e-3  # a timed block lasts at least this long (or one call)
_CACHE: dict[tuple, tuple[float, float]] = {}


@dataclass(frozen=True)
class LayerChoice:
    value: str  # the float layer's result (what keep_float names it by)
    module: str
    int8_us: float
    float_us: float

    @property
    def int8(self) -> bool:
        return self.int8_us < self.float_us

    def describe(self) -> str:
        verdict = "int8" if self.int8 else "float"
        return (f"{self.module or '%' + self.value}: {verdict} (int8 {self.int8_us:.1f} us, "
                f"float {self.float_us:.1f} us)")


def check_layers(value: object) -> str:
    if value not in LAYERS:
        raise OptionError(f"int8_layers={value!r}: expected one of {LAYERS} ('measured' keeps "
                          "float the layers whose int8 version is slower on this machine)")
    return str(value)


def _subgraph(graph: Graph, node: Node) -> Graph:
    consts = [graph.producers[v.name] for v in node.inputs
              if v.name in graph.producers and graph.producers[v.name].op == "const"]
    names = {c.outputs[0].name for c in consts}
    inputs = tuple(dict.fromkeys(v for v in node.inputs if v.name not in names))
    return Graph(inputs, (*consts, node), node.outputs)


def _inputs(sub: Graph, ranges: Mapping[str, tuple[float, float]] | None,
            rng: np.random.Generator) -> list[torch.Tensor]:
    out = []
    for v in sub.inputs:
        lo, hi = (ranges or {}).get(v.name, (-3.0, 3.0))
        out.append(torch.from_numpy(rng.uniform(lo, hi, v.type.shape).astype(np.float32)))
    return out


def seconds_per_call(program: TorchProgram, inputs: list[torch.Tensor]) -> float:
    """The faster per-call mean of three blocks of back-to-back calls."""

    def fn() -> object:
        return program(inputs)

    fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(_BLOCK_S / one))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


_REAL_TIMER = seconds_per_call


def _signature(node: Node, static: bool, weight_bits: int) -> tuple:
    return (node.op, repr(sorted(dict(node.attrs).items())),
            tuple((tuple(v.type.shape), v.type.dtype) for v in node.inputs), static,
            weight_bits, torch.get_num_threads())


def choose(graph: Graph, ranges: Mapping[str, tuple[float, float]] | None,
           keep_float: Iterable[str] = (), weight_bits: int = 8,
           timer: Callable[[TorchProgram, list[torch.Tensor]], float] | None = None,
           ) -> list[LayerChoice]:
    """Time every layer `quantize` would make int8 (see the module doc), float against int8.
    `timer(program, inputs)` gives seconds per call (default: `seconds_per_call`, looked up
    when called, so a test can replace it); only the real timer's results are cached."""
    timer = timer or seconds_per_call
    cache = _CACHE if timer is _REAL_TIMER else {}
    keep = frozenset(keep_float)
    rng = np.random.default_rng(0)
    choices = []
    for node in graph.nodes:
        if reason_float(graph, node, keep) is not None:
            continue
        sub = _subgraph(graph, node)
        key = _signature(node, ranges is not None, weight_bits)
        if key not in cache:
            qsub, _ = quantize_graph(sub, ranges, weight_bits=weight_bits)
            inputs = _inputs(sub, ranges, rng)
            float_run = TorchProgram(sub, torch.device("cpu"))
            int8_run = TorchProgram(qsub, torch.device("cpu"))
            with torch.no_grad():
                cache[key] = (timer(int8_run, inputs) * 1e6, timer(float_run, inputs) * 1e6)
        int8_us, float_us = cache[key]
        choices.append(LayerChoice(node.outputs[0].name, node.provenance.module, int8_us,
                                   float_us))
    return choices
