"""The CUDA-graph path of Triton programs (kernels/triton/cuda_graph.py), on the CPU.

No GPU here: the capture mechanism is a stand-in (`FakeBackend`) that records its calls and
"replays" by running the captured function again on the static inputs and writing the results
into the static outputs captured the first time, which is what a CUDA graph replay does. So the
logic is checked (warm-up, capture, static buffers, clones, mismatched calls, failures, threads,
status) with real Triton kernels under the interpreter; `torch.cuda.CUDAGraph` itself
(CudaGraphBackend) only runs on a GPU.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from graph_builder import GraphBuilder

from fxforge import compile, ops
from fxforge.errors import ExecutionError
from fxforge.ir import Graph
from fxforge.kernels.triton import jit
from fxforge.kernels.triton.cuda_graph import UNCAPTURABLE_OPS, GraphReplay, signature, why_not
from fxforge.kernels.triton.program import TritonProgram
from fxforge.parser import parse_ir

pytestmark = pytest.mark.skipif(not jit.interpreting(), reason="runs Triton's CPU interpreter")

CPU = torch.device("cpu")


class FakeBackend:
    """Capture runs `fn` once and keeps its outputs as the static outputs; replay runs `fn` again
    (reading the static inputs' current values) and copies its results into those outputs."""

    def __init__(self, fail_capture: str | None = None, fail_replay: str | None = None,
                 delay: float = 0.0):
        self.fail_capture, self.fail_replay, self.delay = fail_capture, fail_replay, delay
        self.captures = self.replays = 0
        self.active = self.most_active = 0  # replays running at once (the lock keeps it at 1)
        self._count = threading.Lock()

    def capture(self, fn):
        self.captures += 1
        if self.fail_capture:
            raise RuntimeError(self.fail_capture)
        outs = fn()
        return (fn, outs), outs

    def replay(self, handle):
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.fail_replay:
                raise RuntimeError(self.fail_replay)
            time.sleep(self.delay)
            fn, outs = handle
            for static, new in zip(outs, fn()):
                static.copy_(new)
            self.replays += 1
        finally:
            with self._count:
                self.active -= 1


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


@pytest.fixture(scope="module")
def mlp():
    model = _mlp()
    fast = compile(model, "cuda", autotune=False)
    fast(torch.randn(2, 8))
    return model, fast.graph


def _program(graph, backend, **kwargs) -> TritonProgram:
    return TritonProgram(graph, CPU, autotune=False, cuda_graphs=True, graph_backend=backend,
                         **kwargs)


def _eager(model, x):
    with torch.no_grad():
        return model(x)


def _x(seed: int, shape=(2, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_replayed_calls_match_eager_for_new_values_each_call(mlp):
    model, graph = mlp
    fake = FakeBackend()
    program = _program(graph, fake)
    assert any(a.kernel for a in program.assignments)  # Triton kernels run, not only torch
    assert program.cuda_graph_status == "on" and program.cuda_graph.status == "waiting for warm-up"
    statuses = []
    for seed in range(5):
        x = _x(seed)
        (y,) = program([x])
        torch.testing.assert_close(y, _eager(model, x), rtol=1e-4, atol=1e-5)
        statuses.append(program.cuda_graph.status)
    assert statuses[0] == "warm: captures at the next call"
    assert statuses[1:] == ["captured"] * 4
    replay = program.cuda_graph
    assert (replay.plain_runs, replay.captures, replay.replays) == (1, 1, 4)
    assert (fake.captures, fake.replays) == (1, 4)
    assert program.cuda_graph_status == "on"


def test_results_are_clones_not_the_static_buffers(mlp):
    model, graph = mlp
    program = _program(graph, FakeBackend())
    for seed in range(2):
        program([_x(seed)])
    (a,) = program([_x(10)])
    kept = a.clone()
    (b,) = program([_x(11)])
    static = program.cuda_graph._static_outputs[0]
    assert a.data_ptr() != b.data_ptr()
    assert static.data_ptr() not in (a.data_ptr(), b.data_ptr())
    torch.testing.assert_close(a, kept, rtol=0, atol=0)  # the later replay left `a` alone
    torch.testing.assert_close(b, _eager(model, _x(11)), rtol=1e-4, atol=1e-5)
    a.fill_(123.0)  # writing to a result changes nothing the program holds
    (c,) = program([_x(12)])
    torch.testing.assert_close(c, _eager(model, _x(12)), rtol=1e-4, atol=1e-5)


def test_a_call_with_other_strides_or_shape_runs_plainly_without_recapture(mlp):
    model, graph = mlp
    fake = FakeBackend()
    program = _program(graph, fake)
    for seed in range(2):
        program([_x(seed)])
    replay = program.cuda_graph
    transposed = _x(5, (8, 2)).t()  # same shape, other strides
    (y,) = program([transposed])
    torch.testing.assert_close(y, _eager(model, transposed), rtol=1e-4, atol=1e-5)
    assert (replay.mismatches, replay.captures, replay.replays) == (1, 1, 1)
    # another batch: the static program refuses it exactly as without graphs
    with pytest.raises(ExecutionError, match="fused_linear"):
        program([_x(6, (3, 8))])
    with pytest.raises(ExecutionError, match="fused_linear"):
        TritonProgram(graph, CPU, autotune=False, cuda_graphs=False)([_x(6, (3, 8))])
    assert replay.mismatches == 2 and program.cuda_graph_status == "on"
    (y,) = program([_x(7)])  # the captured signature replays again
    torch.testing.assert_close(y, _eager(model, _x(7)), rtol=1e-4, atol=1e-5)
    assert (replay.captures, replay.replays, fake.captures) == (1, 2, 1)


def test_capture_failure_turns_graphs_off_and_results_stay_right(mlp):
    model, graph = mlp
    fake = FakeBackend(fail_capture="operation not permitted when stream is capturing")
    program = _program(graph, fake)
    for seed in range(4):
        (y,) = program([_x(seed)])
        torch.testing.assert_close(y, _eager(model, _x(seed)), rtol=1e-4, atol=1e-5)
    status = program.cuda_graph_status
    assert status.startswith("off: capture failed: RuntimeError: operation not permitted"), status
    assert fake.captures == 1 and program.cuda_graph.plain_runs == 4  # tried once, not per call


def test_replay_failure_turns_graphs_off_and_results_stay_right(mlp):
    model, graph = mlp
    program = _program(graph, FakeBackend(fail_replay="device lost"))
    for seed in range(3):
        (y,) = program([_x(seed)])
        torch.testing.assert_close(y, _eager(model, _x(seed)), rtol=1e-4, atol=1e-5)
    assert program.cuda_graph_status == "off: replay failed: RuntimeError: device lost"
    assert program.cuda_graph._static_inputs == []  # buffers freed


def test_observe_and_wrong_input_counts_run_plainly(mlp):
    model, graph = mlp
    program = _program(graph, FakeBackend())
    for seed in range(3):
        program([_x(seed)])
    seen = {}
    (y,) = program([_x(9)], observe=lambda name, t: seen.setdefault(name, t.clone()))
    torch.testing.assert_close(y, _eager(model, _x(9)), rtol=1e-4, atol=1e-5)
    assert set(seen) >= {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    assert program.cuda_graph.replays == 2
    with pytest.raises(ExecutionError, match="takes 1 inputs, got 2"):
        program([_x(1), _x(2)])
    assert program.cuda_graph_status == "on"


def test_concurrent_calls_from_four_threads(mlp):
    model, graph = mlp
    fake = FakeBackend(delay=0.002)
    program = _program(graph, fake)
    program([_x(100)])  # warm-up
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(t: int):
        try:
            start.wait()
            for i in range(5):
                x = _x(10 * t + i)
                (y,) = program([x])
                torch.testing.assert_close(y, _eager(model, x), rtol=1e-4, atol=1e-5)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    replay = program.cuda_graph
    assert replay.captures == 1 and fake.captures == 1 and replay.replays == 20
    assert fake.most_active == 1  # the static buffers were never used by two calls at once


# --- when graphs are off ------------------------------------------------------------------------

OPAQUE = """\
graph(%x: f32[2,3]) {
  %a = torch_op[target="aten.sinh.default", args=[{"$input": 0}], kwargs={}] %x : f32[2,3]
  %b = relu %a : f32[2,3]
  return %b
}"""

SYMBOLIC = """\
graph(%x: f32[B,4]) dims(B: 2..6) {
  %y = relu %x : f32[B,4]
  return %y
}"""


def test_why_not_names_torch_op_symbolic_dims_and_no_inputs(mlp):
    _, graph = mlp
    assert why_not(graph) is None
    reason = why_not(parse_ir(OPAQUE))
    assert "torch_op" in reason and "%a" in reason and "synchronise" in reason
    assert "symbolic dims" in why_not(parse_ir(SYMBOLIC))
    b = GraphBuilder()
    out = b("full", [], shape=(2, 2), value=1.0, dtype="f32")
    assert "no inputs" in why_not(Graph((), tuple(b.nodes), (out,)))


def test_uncapturable_ops_are_real_ops_and_cover_every_opaque_one():
    assert UNCAPTURABLE_OPS <= set(ops.OPS)
    assert {name for name, d in ops.OPS.items() if d.kind == "opaque"} <= UNCAPTURABLE_OPS


def test_a_torch_op_graph_runs_plainly_even_when_asked():
    fake = FakeBackend()
    program = _program(parse_ir(OPAQUE), fake)
    assert program.cuda_graph is None
    assert program.cuda_graph_status.startswith("off: the graph holds torch_op")
    x = _x(3, (2, 3))
    for _ in range(3):
        (y,) = program([x])
        torch.testing.assert_close(y, torch.relu(torch.sinh(x)), rtol=1e-4, atol=1e-5)
    assert fake.captures == 0


def test_symbolic_graph_runs_plainly_even_when_asked():
    program = _program(parse_ir(SYMBOLIC), FakeBackend())
    assert program.cuda_graph_status.startswith("off: the graph has symbolic dims")
    for batch in (2, 5):
        x = _x(batch, (batch, 4))
        (y,) = program([x])
        torch.testing.assert_close(y, torch.relu(x))


def test_default_is_off_under_the_interpreter_and_false_means_not_asked(mlp):
    model, graph = mlp
    default = TritonProgram(graph, CPU, autotune=False)
    assert default.cuda_graph is None
    assert default.cuda_graph_status == ("off: Triton runs under its CPU interpreter "
                                         "(TRITON_INTERPRET=1)")
    asked = TritonProgram(graph, CPU, autotune=False, cuda_graphs=True)  # no CUDA, no backend
    assert asked.cuda_graph is None and asked.cuda_graph_status.startswith("off: ")
    never = TritonProgram(graph, CPU, autotune=False, cuda_graphs=False, graph_backend=object())
    assert never.cuda_graph is None and never.cuda_graph_status == "not asked"
    for program in (default, asked, never):
        for seed in range(2):
            (y,) = program([_x(seed)])
            torch.testing.assert_close(y, _eager(model, _x(seed)), rtol=1e-4, atol=1e-5)


# --- GraphReplay on its own (a torch function, no kernels) --------------------------------------


def _replay(fn=lambda xs: [xs[0] * 2 + xs[1], xs[0]]):
    fake = FakeBackend()
    return GraphReplay(lambda xs: fn(xs), fake), fake


def test_graph_replay_other_shapes_expanded_inputs_and_aliased_outputs():
    replay, fake = _replay()
    a = torch.arange(6.0).reshape(2, 3)
    replay([a, torch.zeros(2, 3)])  # warm-up
    for k in range(1, 4):  # captured with an expanded (stride 0) input: a contiguous buffer
        b = torch.full((3,), float(k)).expand(2, 3)
        x, y = replay([a + k, b])
        torch.testing.assert_close(x, (a + k) * 2 + k)
        torch.testing.assert_close(y, a + k)  # the output that is a static input: a clone
        assert y.data_ptr() != replay._static_inputs[0].data_ptr()
    assert (replay.captures, replay.replays, replay.mismatches) == (1, 3, 0)
    x, _ = replay([a, torch.ones(2, 3)])  # contiguous: another signature, a plain run
    torch.testing.assert_close(x, a * 2 + 1)
    x, y = replay([torch.ones(4, 3), torch.ones(4, 3)])  # another shape: plain too
    torch.testing.assert_close(x, torch.full((4, 3), 3.0))
    assert (fake.captures, replay.replays, replay.mismatches) == (1, 3, 2)
    assert replay.status == "captured"


def test_graph_replay_runs_plainly_when_autograd_or_inference_mode_differs():
    replay, fake = _replay()
    a, b = torch.ones(2, 3), torch.ones(2, 3)
    with torch.no_grad():
        replay([a, b])
        replay([a, b])
    assert replay.status == "captured"
    w = torch.ones(2, 3, requires_grad=True)
    x, _ = replay([w, b])  # grad enabled, an input that needs it: plain, with a graph
    assert x.grad_fn is not None
    with torch.inference_mode():
        x, _ = replay([a, b])
    torch.testing.assert_close(x, torch.full((2, 3), 3.0))
    assert replay.replays == 1 and replay.mismatches == 2
    assert signature([w]) is None and signature([a, 1.0]) is None


def test_graph_replay_waits_for_a_successful_warm_up():
    calls = []

    def run(xs):
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("first call fails")
        return [xs[0] + 1]

    replay = GraphReplay(run, FakeBackend())
    with pytest.raises(ValueError):
        replay([torch.zeros(2)])
    assert replay.status == "waiting for warm-up"
    replay([torch.zeros(2)])
    assert replay.status == "warm: captures at the next call"
    (y,) = replay([torch.full((2,), 4.0)])
    assert replay.status == "captured" and np.allclose(y.numpy(), 5.0)


def test_cuda_graph_backend_warms_up_on_a_side_stream_then_captures(monkeypatch):
    """The order of torch.cuda calls, with torch.cuda stood in for (the real thing needs a GPU):
    warm-up runs on a side stream that waits for the current one, the current stream waits for
    it, then one run is captured into a private pool with thread-local capture mode."""
    from contextlib import contextmanager

    from fxforge.kernels.triton import cuda_graph

    log: list = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            log.append(("wait", self.name, other.name))

        def wait_event(self, event):
            log.append(("wait_event", self.name))

    class Graph:
        def replay(self):
            log.append(("replay",))

    class Event:
        def record(self, stream):
            log.append(("record", stream.name))

    current = Stream("current")
    where = ["current"]

    @contextmanager
    def on(stream):
        where.append(stream.name)
        yield
        where.pop()

    @contextmanager
    def graph(g, pool=None, capture_error_mode="global"):
        log.append(("capture", pool, capture_error_mode))
        where.append("capture")
        yield
        where.pop()

    @contextmanager
    def device(d):
        yield

    for name, value in dict(Stream=lambda d: Stream("side"), current_stream=lambda d: current,
                            stream=on, CUDAGraph=Graph, graph=graph, device=device,
                            Event=Event).items():
        monkeypatch.setattr(torch.cuda, name, value)
    backend = cuda_graph.CudaGraphBackend("cuda", warmup=2)

    def fn():
        log.append(("run", where[-1]))
        return [torch.zeros(1)]

    handle, outs = backend.capture(fn)
    assert log == [("wait", "side", "current"), ("run", "side"), ("run", "side"),
                   ("wait", "current", "side"), ("capture", None, "thread_local"),
                   ("run", "capture")]
    log.clear()
    backend.begin()
    backend.replay(handle)
    backend.end()
    backend.begin()
    assert log == [("replay",), ("record", "current"), ("wait_event", "current")]
