"""A graph prepared for the Triton backend: generated kernels where a rule claims the node, the
torch backend for the rest; what ran where is kept for the report.

Autotuning happens at a node's first run, when real input shapes are known: each claimed node
times its kernel module's CONFIGS with `autotune.Tuner` (cached on disk, so a second compile of
the same model does not time again). Under the interpreter timing means nothing, so tuning is
off there unless asked for.

On CUDA, calls go through a CUDA graph (`cuda_graph`): captured at the second call, after the
first has compiled and tuned every kernel, and replayed after; off where the graph cannot be
captured (`cuda_graph.why_not`), under the interpreter, or when asked (`cuda_graphs=False`).
`cuda_graph_status` says which, for the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fxforge.execute import TorchProgram
from fxforge.ir import Graph, Node
from fxforge.kernels.triton import jit
from fxforge.kernels.triton.cuda_graph import CaptureBackend, CudaGraphBackend, GraphReplay, why_not
from fxforge.kernels.triton.lower import Context, Lowered, lower


@dataclass(frozen=True)
class Assignment:
    """One node of the graph and what runs it."""

    node: str  # the node's description (result name, op, module path)
    op: str
    kernel: str | None  # None: the torch backend
    reason: str = ""  # why the torch backend runs it


class TritonProgram(TorchProgram):
    backend_name = "Triton backend (torch for unclaimed nodes)"

    def __init__(self, graph: Graph, device: torch.device, autotune: bool | None = None,
                 cuda_graphs: bool | None = None,
                 graph_backend: CaptureBackend | None = None):
        """cuda_graphs: None, on where it can be (a CUDA device, no interpreter, a graph that
        `cuda_graph.why_not` passes); True, on wherever the graph passes, given a CUDA device or
        a `graph_backend` (a stand-in capture mechanism: tests run it on the CPU); False, off.
        graph_backend: None, `torch.cuda.CUDAGraph` (`cuda_graph.CudaGraphBackend`)."""
        self.assignments: list[Assignment] = []
        self.tuned_kernels: set[str] = set()  # autotuner identities, for saving their picks
        self.autotune = (not jit.interpreting()) if autotune is None else autotune
        super().__init__(graph, device)
        self.cuda_graph: GraphReplay | None = None
        self._cuda_graph_off = self._why_no_graph(cuda_graphs, graph_backend)
        if self._cuda_graph_off is None:
            if graph_backend is None:
                graph_backend = CudaGraphBackend(self.device)
            self.cuda_graph = GraphReplay(
                lambda xs: super(TritonProgram, self).__call__(xs), graph_backend)

    def _why_no_graph(self, asked: bool | None, backend: object) -> str | None:
        """The cuda_graph_status of a program without a graph; None: it gets one."""
        if asked is False:
            return "not asked"
        reason = why_not(self.graph)
        if reason is None and backend is None:
            if jit.interpreting():
                reason = "Triton runs under its CPU interpreter (TRITON_INTERPRET=1)"
            elif torch.device(self.device).type != "cuda":
                reason = f"the device is {self.device}, not CUDA"
        return None if reason is None else f"off: {reason}"

    @property
    def cuda_graph_status(self) -> str:
        """"on", "off: <reason>" (the graph cannot be captured, or capture failed), or
        "not asked"."""
        replay = self.cuda_graph
        if replay is None:
            return self._cuda_graph_off or "not asked"
        return replay.status if replay.off else "on"

    def __call__(self, inputs: Sequence[torch.Tensor],
                 observe: Callable[[str, torch.Tensor], None] | None = None,
                 **kwargs: Any) -> list[torch.Tensor]:
        """TorchProgram's call, through the CUDA graph where it is on; a call that observes
        values (or passes anything else) runs plainly."""
        replay = self.cuda_graph
        if replay is None or observe is not None or kwargs:
            return super().__call__(inputs, observe, **kwargs)
        if len(inputs) != len(self.graph.inputs):  # the plain run's error, not a failed capture
            return super().__call__(inputs)
        return replay(inputs)

    def lower(self, node: Node) -> tuple[Callable[..., Any], dict[str, Any]]:
        result = lower(node, Context(self.constants))
        where = f"%{node.outputs[0].name} = {node.op}" + (
            f"  # {node.provenance.module}" if node.provenance.module else "")
        if isinstance(result, str):
            self.assignments.append(Assignment(where, node.op, None, result))
            return super().lower(node)
        self.assignments.append(Assignment(where, node.op, result.kernel))
        fn = result.fn
        if self.autotune and result.tune is not None and result.configs:
            identity = hashlib.sha256(f"{result.kernel}|{node.op}|{dict(node.attrs)!r}".encode())
            self.tuned_kernels.add(identity.hexdigest())
            fn = _tuned(result, identity.hexdigest())
        return (lambda *xs, **_attrs: fn(*xs)), {}


def _tuned(result: Lowered, identity: str) -> Callable[..., Any]:
    """`result.fn`, which on its first call picks the fastest config for these shapes."""
    from fxforge.kernels.triton import autotune

    configs = list(result.configs)
    done: list[bool] = []

    def run(*xs):
        if not done:
            key = tuple("x".join(map(str, x.shape)) for x in xs if isinstance(x, torch.Tensor))

            def attempt(config):
                result.tune(config)
                result.fn(*xs)

            best = autotune.default_tuner().pick(identity, key, configs, attempt)
            result.tune(best)
            done.append(True)
        return result.fn(*xs)

    return run
