"""CUDA graphs for a compiled program: captured at its first run, replayed after.

What: `GraphReplay` wraps a program's `run(inputs) -> outputs`. Its first call runs plainly (the
warm-up: Triton compiles kernels and the autotuner times its configs at a node's first run, and
none of that may be captured). Its second call copies the inputs into static input buffers,
captures one run on those buffers into a CUDA graph and replays it; every later call copies its
inputs into the same buffers, replays the graph and returns clones of the static outputs.

Why: at small batch a compiled program spends most of its time in Python, launching one kernel
(or torch op) after another. A replay launches the whole graph with one call.

When it is off (`why_not`, or `GraphReplay.status` after a failure):
- the graph has symbolic dims: a CUDA graph holds one set of sizes (and of addresses);
- the graph holds an op of `UNCAPTURABLE_OPS` (an opaque `torch_op`), or an embedding / index /
  gather whose positions are computed (`HOST_CHECKED_POSITIONS`: checked on the host);
- the graph has no inputs: nothing changes from one call to the next;
- the device is not CUDA, or Triton runs under its CPU interpreter (TritonProgram's default);
- capture (or a replay) raised: the program runs plainly from then on, and the reason is kept.
A call whose inputs differ from the captured ones in shape, stride, dtype or device (or needs
autograd, or differs in inference mode) runs plainly, without recapture: a compiled model makes
one program per input signature, so such a call is rare, and recapturing on every change would
hold one graph (and its memory pool) per variant, or thrash between two.

The capture mechanism is injectable (`CaptureBackend`): `CudaGraphBackend` uses
`torch.cuda.CUDAGraph`; tests give a stand-in that records its calls and replays by running the
captured function again into the same static outputs, so the logic runs on a CPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from fxforge.ir import Graph

log = logging.getLogger(__name__)

UNCAPTURABLE_OPS = frozenset({"torch_op"})
"""IR ops that keep a graph from being captured. A captured graph replays fixed kernel launches
on fixed addresses, so no node may read tensor values on the host (a synchronisation, which
capture forbids, and a value frozen at capture time) or make an output whose size depends on
the data (nonzero, unique, masked_select, item and the like). `torch_op` runs arbitrary aten
code that may do either. No other op of the registry (compiler/ops.py) does: every IR op's
output type is inferred from its input types and attributes, and their torch and Triton
implementations take scalars from attributes, never from tensors. An op added later that reads
values on the host, or sizes its output from them, belongs here."""


HOST_CHECKED_POSITIONS = frozenset({"embedding", "index", "gather"})
"""Ops whose positions the Triton backend range-checks on the host before its copy kernel reads
them (lower_layout.py), as torch refuses an out-of-range position: constant positions are
checked once when lowered, computed ones (token ids, graph inputs) at every call."""


def why_not(graph: Graph) -> str | None:
    """Why `graph` cannot be captured into a CUDA graph; None when it can."""
    if graph.dims or graph.symbolic:
        return "the graph has symbolic dims (a CUDA graph holds one set of sizes)"
    if not graph.inputs:
        return "the graph has no inputs (nothing changes between calls)"
    found = [node for node in graph.nodes if node.op in UNCAPTURABLE_OPS]
    if found:
        names = ", ".join(f"%{node.outputs[0].name}" for node in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        ops = ", ".join(sorted({node.op for node in found}))
        return (f"the graph holds {ops} node(s) ({names}{more}): opaque torch code may "
                "synchronise with the host or size its output from data")
    producers = graph.producers
    checked = [node for node in graph.nodes if node.op in HOST_CHECKED_POSITIONS and any(
        producers.get(v.name) is None or producers[v.name].op != "const"
        for v in node.inputs[1:])]
    if checked:
        node = checked[0]
        return (f"%{node.outputs[0].name} = {node.op} takes computed positions, which are "
                "range-checked on the host (a synchronisation)")
    return None


class CaptureBackend(Protocol):
    """How a graph is captured and replayed.

    `capture(fn)` records one call of `fn` (which returns the static output tensors) and returns
    `(handle, outputs)`: `outputs` are the tensors `fn` returned while being recorded. After
    `replay(handle)` those same tensors hold the results of a run on the static inputs' current
    values. `begin()` and `end()`, where a backend has them, bracket each use of the static
    buffers (copy in, replay, clone out) to order it after the previous use."""

    def capture(self, fn: Callable[[], list[torch.Tensor]]) -> tuple[Any, list[torch.Tensor]]:
        ...

    def replay(self, handle: Any) -> None:
        ...


class CudaGraphBackend:
    """`torch.cuda.CUDAGraph` capture, as PyTorch's documentation recommends: `fn` runs first on
    a side stream (`warmup` times; it allocates its workspaces and compiles any kernel variant
    not made yet outside the capture), then once under `torch.cuda.graph`, into a private memory
    pool (or `pool`). The capture mode is thread-local, so another thread's (uncaptured) CUDA
    calls do not invalidate this capture."""

    def __init__(self, device: torch.device | str | None = None, warmup: int = 2,
                 pool: Any = None):
        self.device = torch.device("cuda") if device is None else torch.device(device)
        self.warmup = warmup
        self.pool = pool
        self._last: torch.cuda.Event | None = None  # the end of the previous use (see end)

    def capture(self, fn: Callable[[], list[torch.Tensor]]) -> tuple[Any, list[torch.Tensor]]:
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    fn()
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                outputs = fn()
            return graph, outputs

    def replay(self, handle: Any) -> None:
        with torch.cuda.device(self.device):
            handle.replay()

    def begin(self) -> None:
        """Make this thread's stream wait for the previous use of the static buffers (another
        thread's stream may differ from this one's)."""
        if self._last is not None:
            torch.cuda.current_stream(self.device).wait_event(self._last)

    def end(self) -> None:
        if self._last is None:
            self._last = torch.cuda.Event()
        self._last.record(torch.cuda.current_stream(self.device))


Signature = tuple


def signature(inputs: Sequence[Any]) -> Signature | None:
    """What a captured graph is specific to: each input's shape, strides, dtype and device, and
    the inference mode; None for a call no graph may serve (a non-tensor or non-strided input,
    or one that needs autograd)."""
    grad = torch.is_grad_enabled()
    parts: list[Any] = [torch.is_inference_mode_enabled()]
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.layout != torch.strided \
                or (grad and x.requires_grad):
            return None
        parts.append((tuple(x.shape), tuple(x.stride()), x.dtype, x.device))
    return tuple(parts)


def _buffer(x: torch.Tensor) -> torch.Tensor:
    """A static input buffer for `x`, holding a copy of it: the same shape, strides, dtype and
    device; contiguous where `x` has overlapping memory (an expanded tensor), which no buffer
    can be written into."""
    buffer = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    try:
        buffer.copy_(x)
    except RuntimeError:  # internal overlap (stride 0)
        buffer = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        buffer.copy_(x)
    return buffer


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}"


class GraphReplay:
    """`run(inputs) -> outputs` through a CUDA graph (see the module docstring).

    Returned tensors are clones of the static outputs: the next replay writes into the static
    outputs, so handing them out would change a caller's results under its feet, and two calls'
    results would be one tensor. A lock serialises capture and each replay (copy in, replay,
    clone out), since all calls share the static buffers; plain runs take no lock.

    `status`: "waiting for warm-up", "warm: captures at the next call", "captured", or
    "off: <reason>" after a capture or replay raised (the call that hit it, and every later one,
    runs plainly; the user's call never fails because of graphs). Counts: `plain_runs`,
    `captures`, `replays`, `mismatches` (calls run plainly because their signature differs from
    the captured one)."""

    def __init__(self, run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
                 backend: CaptureBackend, warmup_calls: int = 1):
        self._run = run
        self.backend = backend
        self.warmup_calls = warmup_calls
        self.status = "waiting for warm-up"
        self.plain_runs = self.captures = self.replays = self.mismatches = 0
        self._warm = 0  # successful plain runs so far
        self._lock = threading.Lock()
        self._handle: Any = None
        self._key: Signature | None = None
        self._static_inputs: list[torch.Tensor] = []
        self._static_outputs: list[torch.Tensor] = []

    @property
    def off(self) -> bool:
        return self.status.startswith("off")

    def disable(self, reason: str) -> None:
        """Run plainly from now on (frees the graph and its buffers)."""
        with self._lock:
            self._disable(reason)

    def _disable(self, reason: str) -> None:
        if not self.off:
            log.warning("fxforge: CUDA graph off: %s; running plain launches", reason)
        self.status = f"off: {reason}"
        self._handle, self._key = None, None
        self._static_inputs, self._static_outputs = [], []

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inputs = list(inputs)
        if not self.off:
            key = signature(inputs)
            with self._lock:
                if self._handle is not None:
                    if key == self._key:
                        outs = self._replay(inputs)
                        if outs is not None:
                            return outs
                    else:
                        self.mismatches += 1
                elif not self.off and key is not None and self._warm >= self.warmup_calls:
                    outs = self._capture(inputs, key)
                    if outs is not None:
                        return outs
        outs = list(self._run(inputs))
        with self._lock:
            self.plain_runs += 1
            if not self.off and self._handle is None:
                self._warm += 1
                if self._warm >= self.warmup_calls:
                    self.status = "warm: captures at the next call"
        return outs

    def _capture(self, inputs: list[torch.Tensor], key: Signature) -> list[torch.Tensor] | None:
        """Capture a run on fresh static buffers holding `inputs`, then replay it; None (and off)
        when capture fails."""
        try:
            static = [_buffer(x) for x in inputs]
            handle, outputs = self.backend.capture(lambda: list(self._run(static)))
            outputs = list(outputs)
            if not all(isinstance(o, torch.Tensor) for o in outputs):
                raise TypeError("the captured run returned something other than tensors")
        except Exception as e:  # noqa: BLE001 - graphs are an optimisation, never an error
            self._disable(f"capture failed: {_short(e)}")
            return None
        self._handle, self._key = handle, key
        self._static_inputs, self._static_outputs = static, outputs
        self.captures += 1
        self.status = "captured"
        return self._replay(None)

    def _replay(self, inputs: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """Copy `inputs` (None: already there) into the static buffers, replay, and clone the
        outputs; None (and off) when it fails."""
        begin = getattr(self.backend, "begin", None)
        end = getattr(self.backend, "end", None)
        try:
            if begin is not None:
                begin()
            if inputs is not None:
                for buffer, x in zip(self._static_inputs, inputs):
                    buffer.copy_(x)
            self.backend.replay(self._handle)
            outs = [o.clone() for o in self._static_outputs]
            if end is not None:
                end()
        except Exception as e:  # noqa: BLE001 - graphs are an optimisation, never an error
            self._disable(f"replay failed: {_short(e)}")
            return None
        self.replays += 1
        return outs
