"""What a compile did, for people (`str(report)`) and for tools (`report.to_dict()`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fxforge import ops
from fxforge.capture import Fallback
from fxforge.ir import Graph, printable
from fxforge.pipeline import PassRecord

if TYPE_CHECKING:
    from fxforge.quantization import QuantAnalysis


def count_params(graph: Graph) -> int:
    """Elements held in constants (weights, buffers, folded values)."""
    return sum(n.output.type.numel for n in graph.nodes if n.op == "const")


def count_flops(graph: Graph) -> int:
    """Floating-point operations of one run, by each op's declared FLOP rule."""
    total = 0
    for node in graph.nodes:
        opdef = ops.get(node.op)
        total += opdef.count_flops([v.type for v in node.inputs],
                                   tuple(v.type for v in node.outputs), node.attrs)
    return total


@dataclass
class CompileRecord:
    """One capture (one input signature) and the pipeline run on it."""

    signature: str
    export_seconds: float
    convert_seconds: float
    passes: list[PassRecord]
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    fallbacks: list[Fallback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quantization: QuantAnalysis | None = None  # int8 targets with calibration data
    kernels: list[Any] = field(default_factory=list)  # Triton targets: kernels.triton Assignment
    cuda_graphs: str = ""  # Triton targets: "on", "off: why", "not asked" (at compile time)
    # the program's live status (a capture that fails later turns graphs off); not compared
    graph_status: Any = field(default=None, repr=False, compare=False)


def _record_dict(r: CompileRecord) -> dict[str, Any]:
    """A record as plain data: the CUDA-graph status as it is now, not the callable behind it."""
    d = asdict(r)
    status = d.pop("graph_status")
    if status is not None:
        d["cuda_graphs"] = status()
    return d


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _change(before: float, after: float) -> str:
    if before == 0 or before == after:
        return ""
    return f"{(after - before) / before:+.1%}"


@dataclass
class Report:
    target: str
    pipeline: tuple[str, ...]
    records: list[CompileRecord] = field(default_factory=list)
    int8: str | None = None  # int8 targets: weight bits and (cpu-int8) the CPU's int8 scheme
    int8_choices: list[str] = field(default_factory=list)  # int8_layers="measured", per layer
    dynamic: str | None = None  # compile(dynamic=...): the symbols and their ranges
    specializations: list[str] = field(default_factory=list)  # sizes run from a dynamic graph

    @property
    def captures(self) -> int:
        """How many times the model was captured (one per distinct input signature)."""
        return len(self.records)

    @property
    def latest(self) -> CompileRecord | None:
        return self.records[-1] if self.records else None

    @property
    def fallbacks(self) -> list[Fallback]:
        return [f for r in self.records for f in r.fallbacks]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "pipeline": list(self.pipeline), "int8": self.int8,
                "int8_choices": list(self.int8_choices), "captures": self.captures,
                "dynamic": self.dynamic, "specializations": list(self.specializations),
                "records": [_record_dict(r) for r in self.records]}

    def __str__(self) -> str:
        lines = [f"fxforge report: target {self.target}, pipeline "
                 f"[{', '.join(self.pipeline) or 'none'}]"]
        if self.int8:
            lines.append(f"int8: {self.int8}")
        if self.int8_choices:
            lines.append("int8 only where it pays (each layer timed alone on this machine):")
            lines += [f"  {c}" for c in self.int8_choices]
        if not self.records:
            return "\n".join(lines) + "\n(not captured yet: call the model or pass example_inputs)"
        lines.append(f"captures: {self.captures}")
        for i, r in enumerate(self.records, 1):
            lines.append(f"  {i}. {r.signature}  (export {r.export_seconds:.2f} s, "
                         f"lowering {r.convert_seconds:.2f} s)")
        if self.dynamic:
            lines.append(f"dynamic dims: {self.dynamic} (one capture and one pipeline serve "
                         "every size in range)")
            lines.append(f"  sizes run, each the dynamic graph with the size substituted: "
                         f"{'; '.join(self.specializations) or 'none yet'}")
        r = self.records[-1]
        lines += ["", f"{'':10}{'before':>12}{'after':>12}{'change':>10}"]
        for label, before, after in (("nodes", r.nodes_before, r.nodes_after),
                                     ("params", r.params_before, r.params_after),
                                     ("FLOPs", r.flops_before, r.flops_after)):
            lines.append(f"{label:10}{_si(before):>12}{_si(after):>12}{_change(before, after):>10}")
        lines += ["", f"{'pass':24}{'time':>10}{'changed':>9}{'nodes':>14}  details"]
        for p in r.passes:
            counts = {k: v for k, v in p.stats.items() if not isinstance(v, list)}
            details = ", ".join(f"{k}={v}" for k, v in counts.items())
            lines.append(f"{p.name:24}{p.seconds * 1e3:>8.1f}ms{'yes' if p.changed else 'no':>9}"
                         f"{f'{p.nodes_before}->{p.nodes_after}':>14}  {details}")
            for key, notes in p.stats.items():
                if isinstance(notes, list) and notes and all(isinstance(n, str) for n in notes):
                    lines.append(f"{'':26}{key}:")
                    lines += [f"{'':28}{note}" for note in notes]
        if r.fallbacks:
            lines += ["", f"fallbacks: {len(r.fallbacks)} op(s) run by torch as opaque torch_op"]
            for f in r.fallbacks:
                lines.append(f"  %{f.value} at {f.module or '<top>'}: {f.aten} ({f.reason})")
        else:
            lines += ["", "fallbacks: none (every op is in the IR)"]
        if r.quantization is not None:
            lines += ["", *quantization_lines(r.quantization)]
        if r.kernels:
            lines += ["", *kernel_lines(r.kernels)]
        graphs = r.graph_status() if r.graph_status is not None else r.cuda_graphs
        if graphs:
            lines.append(f"CUDA graphs: {graphs}")
        for w in r.warnings:
            lines.append(f"warning: {w}")
        # names come from the model: no character of theirs may break or rewrite a line
        return "\n".join(printable(line) for line in lines)


def quantization_lines(q: QuantAnalysis) -> list[str]:
    """The int8 accuracy table: SQNR per quantized layer (local: the layer alone on the float
    model's input; through: in the quantized model), what stayed float, end-to-end error."""
    lines = [f"int8 accuracy on {q.samples} calibration sample(s), {q.method} calibration "
             "(SQNR in dB vs the float model; higher is better)",
             f"  {'layer':36}{'op':9}{'mode':9}{'out':5}{'local':>8}{'through':>9}"]
    for lay in q.layers:
        lines.append(f"  {lay.module[:35]:36}{lay.op:9}{lay.mode:9}{lay.out:5}"
                     f"{lay.sqnr_local_db:>8.1f}{lay.sqnr_through_db:>9.1f}")
    for i, o in enumerate(q.outputs):
        lines.append(f"  output {i}: SQNR {o['sqnr_db']:.1f} dB, cosine {o['cosine']:.5f}, "
                     f"max abs error {o['max_abs_error']:.3g}")
    if q.min_sqnr is not None:
        lines.append(f"  kept in float by min_sqnr={q.min_sqnr:g} dB: "
                     f"{len(q.kept_by_min_sqnr) or 'none'}")
        lines += [f"    {k}" for k in q.kept_by_min_sqnr]
    return lines


def kernel_lines(kernels: list[Any]) -> list[str]:
    """Which nodes became which generated kernel, and why the others run on torch."""
    claimed = [k for k in kernels if k.kernel is not None]
    views = [k for k in claimed if k.kernel.startswith("view")]
    torch_run = [k for k in kernels if k.kernel is None]
    opaque = [k for k in torch_run if k.op == "torch_op"]
    lines = [f"kernels: {len(claimed) - len(views)} node(s) on generated Triton kernels, "
             f"{len(views)} view(s) (no data moved), {len(torch_run)} on the torch backend"]
    lines += [f"  {k.node[:60]:62}{k.kernel}" for k in claimed]
    if torch_run:
        lines.append("  torch backend (fallback):")
        lines += [f"    {k.node[:58]:60}{k.reason}" for k in torch_run]
    if len(opaque) == len(torch_run):
        lines.append("  every IR op runs as a generated kernel or a view"
                     + (f"; only the {len(opaque)} opaque torch_op node(s) run on torch"
                        if opaque else ""))
    return lines
