"""The per-pass numeric check: `debug={"check_each": True}` (env `FXFORGE_CHECK_EACH`, CLI
`--check-each`).

Every stage runs on the numpy reference with the same input samples: the model's own inputs
when the compile has them (and calibration samples), else seeded random ones. After each pass,
every value the pass's input and output graphs both have (same name, dtype and shape) is
compared, and so are the graph outputs, position by position. The first value that diverges, in
the input graph's order, names where the pass went wrong; `MiscompileError` says which pass,
which value, its module path and the error.

Tolerance: a float value diverges where max|got - want| > atol + rtol * max|want| (both over the
whole tensor: per element tolerances drown a sign flip of small values in noise, a tensor-wide
scale does not); integers and bools must be equal; NaN matches NaN. Passes exact in real
arithmetic get fp32's rtol 1e-4 (reassociation, folded constants), atol 1e-5. Passes that change
precision on purpose get the error that precision makes: quantize / quantize-int4 rtol 0.25,
to-fp16 rtol 1e-2; such a pass is still caught when it flips a sign or drops a channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxforge import dtypes, symdims
from fxforge.errors import ExecutionError
from fxforge.execute import run_reference
from fxforge.ir import Graph

Samples = list[list[np.ndarray]]

RTOL, ATOL = 1e-4, 1e-5
LOSSY_RTOL = {"quantize": 0.25, "quantize-int4": 0.25, "to-fp16": 1e-2}


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def describe(self) -> str:
        return f"max|got - want| <= {self.atol:g} + {self.rtol:g} * max|want|"


def tolerance_for(pass_name: str, rtol: float = RTOL, atol: float = ATOL) -> Tolerance:
    return Tolerance(max(rtol, LOSSY_RTOL.get(pass_name, 0.0)), atol)


def default_samples(graph: Graph, seed: int = 0, count: int = 2) -> Samples:
    """Seeded inputs for a graph with no real ones: floats standard normal, integers 0 or 1
    (valid token ids and masks for any vocabulary), bools random. Symbolic dims take one size
    in their ranges (`symdims.example_sizes`)."""
    rng = np.random.default_rng(seed)
    sizes = symdims.example_sizes(graph) if graph.symbolic else {}
    samples = []
    for _ in range(count):
        arrays = []
        for v in graph.inputs:
            shape = symdims.substitute(v.type, sizes).shape
            dtype = dtypes.to_numpy(v.type.dtype)
            if dtypes.is_float(v.type.dtype):
                arrays.append(rng.standard_normal(shape).astype(dtype))
            else:
                arrays.append(rng.integers(0, 2, shape).astype(dtype))
        samples.append(arrays)
    return samples


@dataclass(frozen=True)
class Divergence:
    value: str  # the value's name ("output 0" when only an output position diverged)
    op: str  # the op of the node that makes it in the input graph
    module: str
    error: float  # max |got - want|
    scale: float  # max |want|
    sample: int
    tolerance: Tolerance
    note: str = ""  # e.g. the reference failed on the pass's output


def _error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |got - want| with NaN matching NaN, max |want|), in float64; inf when one side is NaN
    or the values are not comparable numbers."""
    if got.shape != want.shape:
        return float("inf"), 0.0
    if got.dtype.kind not in "fc" and want.dtype.kind not in "fc":
        return (0.0 if np.array_equal(got, want) else float("inf")), 1.0
    g, w = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_nan, 0.0, np.abs(g - w))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = w[np.isfinite(w)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    return (float(diff.max()) if diff.size else 0.0), scale


class StageChecker:
    """Runs each stage on the reference and compares it with the stage before."""

    def __init__(self, samples: Samples, rtol: float = RTOL, atol: float = ATOL):
        self.samples = samples
        self.rtol, self.atol = rtol, atol
        self.values: list[dict[str, np.ndarray]] = []
        self.outputs: list[list[np.ndarray]] = []

    def start(self, graph: Graph) -> None:
        """Record every value of the pipeline's input graph (a failure here is the input's)."""
        self.values, self.outputs = [], []
        for sample in self.samples:
            seen: dict[str, np.ndarray] = {}
            self.outputs.append(run_reference(graph, sample, observe=seen.__setitem__))
            self.values.append(seen)

    def check(self, pass_name: str, before: Graph, after: Graph) -> Divergence | None:
        """The first divergence of `after` from `before` (the last stage checked), or None; on
        None, `after`'s values become the ones the next stage is compared with."""
        tol = tolerance_for(pass_name, self.rtol, self.atol)
        order = {v.name: i for i, v in enumerate(before.inputs)}
        producers = before.producers
        for node in before.nodes:
            for v in node.outputs:
                order.setdefault(v.name, len(order))
        types = {v.name: v.type for v in after.inputs}
        types.update({v.name: v.type for n in after.nodes for v in n.outputs})
        before_types = {v.name: v.type for v in before.inputs}
        before_types.update({v.name: v.type for n in before.nodes for v in n.outputs})
        new_values, new_outputs = [], []
        found: list[Divergence] = []
        for index, sample in enumerate(self.samples):
            seen: dict[str, np.ndarray] = {}
            try:
                outs = run_reference(after, sample, observe=seen.__setitem__)
            except ExecutionError as e:
                return Divergence("(run)", "", "", float("inf"), 0.0, index, tol,
                                  f"the reference fails on the pass's output: {e}")
            old = self.values[index]
            for name, got in seen.items():
                want = old.get(name)
                if want is None or name not in before_types or \
                        (types[name].shape, types[name].dtype) != \
                        (before_types[name].shape, before_types[name].dtype):
                    continue
                err, scale = _error(got, want)
                if err > tol.atol + tol.rtol * scale:
                    node = producers.get(name)
                    found.append(Divergence(name, node.op if node else "input",
                                            node.provenance.module if node else "", err, scale,
                                            index, tol))
            for i, (got, want) in enumerate(zip(outs, self.outputs[index])):
                err, scale = _error(got, want)
                if err > tol.atol + tol.rtol * scale and not found:
                    found.append(Divergence(f"output {i}", "", "", err, scale, index, tol))
            if found:
                return min(found, key=lambda d: order.get(d.value, len(order)))
            new_values.append(seen)
            new_outputs.append(outs)
        self.values, self.outputs = new_values, new_outputs
        return None


def describe(pass_name: str, d: Divergence) -> str:
    if d.note:
        return f"pass {pass_name!r} miscompiled the graph: {d.note}"
    where = f" at {d.module}" if d.module else ""
    what = f"%{d.value} ({d.op}{where})" if d.op else d.value
    return (f"pass {pass_name!r} miscompiled the graph: {what} differs from the pass's input "
            f"by {d.error:.3g} (max|want| {d.scale:.3g}) on sample {d.sample}; tolerance "
            f"{d.tolerance.describe()}")
