"""fxforge.debug.reducer: shrinking a failing graph while the same failure holds.

The failures are deliberately broken passes, as a real bug would be met: one flips the sign of
every gelu result (a miscompile, seen by comparing its output with the unchanged graph's on the
reference), one crashes on attention with a specific message and, on a layer norm that reads a
graph input, with another (a failure the reduction itself can provoke: a predicate that only
asked "does it still crash" would drift to it).
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest
from graph_builder import GraphBuilder

from fxforge import ops
from fxforge.debug.reducer import Reduction, count_nodes, reduce
from fxforge.execute import run_reference
from fxforge.ir import Graph, NameGenerator, Node, TensorType, Value
from fxforge.verify import IRVerificationError, verify

reducer_module = importlib.import_module("fxforge.debug.reducer")
steps_module = importlib.import_module("fxforge.debug.reduce_steps")

# ---------------------------------------------------------------------------------------------
# Broken passes and the predicates that recognize their failures


def flip_gelu(graph: Graph) -> Graph:
    """A broken lowering: every gelu's result comes out negated."""
    names = NameGenerator(graph.value_names())
    nodes, subst = [], {}
    for node in graph.nodes:
        if any(v.name in subst for v in node.inputs):
            inputs = tuple(subst.get(v.name, v) for v in node.inputs)
            node = Node(node.op, inputs, node.outputs, node.attrs, node.provenance)
        nodes.append(node)
        if node.op == "gelu":
            neg = ops.build_node("neg", [node.output], {}, [names.fresh("neg")])
            nodes.append(neg)
            subst[node.output.name] = neg.output
    return Graph(graph.inputs, tuple(nodes), tuple(subst.get(v.name, v) for v in graph.outputs))


def miscompiled(graph: Graph, samples: list[list[np.ndarray]]) -> bool:
    """flip_gelu changes some output beyond rtol 1e-4 on some sample."""
    broken = flip_gelu(graph)
    for sample in samples:
        for want, got in zip(run_reference(graph, sample), run_reference(broken, sample)):
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                return True
    return False


SDPA_MESSAGE = "no lowering for scaled_dot_product_attention"


def crashing_pass(graph: Graph) -> Graph:
    """A broken pass: it cannot lower attention, nor a layer norm that reads a graph input."""
    inputs = {v.name for v in graph.inputs}
    for node in graph.nodes:
        if node.op == "scaled_dot_product_attention":
            raise NotImplementedError(SDPA_MESSAGE)
        if node.op == "layer_norm" and node.inputs[0].name in inputs:
            raise RuntimeError("layer_norm on a graph input")
    return graph


def crashes_on_attention(graph: Graph, samples: list[list[np.ndarray]]) -> bool:
    """The same failure signature: the exception type and message of the original crash."""
    try:
        crashing_pass(graph)
    except NotImplementedError as e:
        return str(e) == SDPA_MESSAGE
    except RuntimeError:
        return False
    return False


# ---------------------------------------------------------------------------------------------
# Graphs


@pytest.fixture(scope="module")
def swin() -> tuple[Graph, list[np.ndarray]]:
    """transformers' Swin from a small random config, as captured: 300 nodes before any pass."""
    from fxforge import zoo_hf
    from fxforge.capture import capture

    model, inputs = zoo_hf.build("swin", 2)
    graph = capture(model, (), inputs).graph
    return graph, [np.asarray(inputs["pixel_values"])]


def chain(blocks: int = 12, gelu_at: int = 6) -> Graph:
    """x -> (linear, tanh) x blocks, one of the activations a gelu, a reshape at the end."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = Value("x", TensorType((4, 8), "f32"))
    h = x
    for k in range(blocks):
        w = b.const((rng.standard_normal((8, 8)) / 3).astype(np.float32))
        h = b("linear", [h, w])
        h = b("gelu" if k == gelu_at else "tanh", [h])
    h = b("reshape", [h], shape=(32,))
    return Graph((x,), tuple(b.nodes), (h,))


def samples_for(graph: Graph, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [[rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs]
            for _ in range(n)]


def assert_fits(red: Reduction) -> None:
    """The result verifies, and every sample has one array of the right type per input."""
    verify(red.graph)
    assert red.nodes_after == count_nodes(red.graph)
    for row in red.samples:
        assert len(row) == len(red.graph.inputs)
        for v, array in zip(red.graph.inputs, row):
            assert array.shape == v.type.shape
            assert array.dtype == np.dtype("float32") and v.type.dtype == "f32"


def assert_names_kept(before: Graph, after: Graph) -> None:
    """Surviving values keep their names and provenance; new values have names never used."""
    old = before.value_names()
    for node in after.nodes:
        for v in node.outputs:
            if v.name in old:
                assert before.producers[v.name].provenance == node.provenance
            else:
                assert v.name.startswith("cut") and node.op == "const"
    for v in after.inputs:
        assert v.name in {w.name for w in before.inputs} or v.name not in old


# ---------------------------------------------------------------------------------------------
# Real-sized failures


def test_reduces_a_swin_miscompile_to_the_gelu(swin):
    graph, x = swin
    assert count_nodes(graph) >= 200
    red = reduce(graph, miscompiled, [x])
    assert not red.interrupted
    assert red.nodes_before == count_nodes(graph)
    assert red.nodes_after <= 10
    assert "gelu" in {node.op for node in red.graph.nodes}
    assert_fits(red)
    assert miscompiled(red.graph, red.samples)
    assert_names_kept(graph, red.graph)
    assert red.evaluations >= len(red.steps) + 1 and red.steps
    assert any(step.startswith("cut ") for step in red.steps)
    print(f"swin miscompile: {red.nodes_before} -> {red.nodes_after} nodes, "
          f"{red.evaluations} evaluations, {red.seconds:.2f} s", *red.steps, sep="\n  ")


def test_reduces_a_swin_crash_keeping_its_signature(swin):
    graph, x = swin
    red = reduce(graph, crashes_on_attention, [x])
    assert red.nodes_after <= 10
    assert_fits(red)
    assert crashes_on_attention(red.graph, red.samples)
    assert "scaled_dot_product_attention" in {node.op for node in red.graph.nodes}
    # cuts made graph inputs of what attention reads: the batch and sizes went down with them
    assert sum(v.type.numel for v in red.graph.inputs) < sum(v.type.numel for v in graph.inputs)


def test_three_samples_each_cut_input_records_three_arrays(swin):
    graph, (x,) = swin
    samples = [[x], [x * 0.5], [-x]]
    red = reduce(graph, miscompiled, samples)
    assert red.nodes_after <= 10
    assert_fits(red)
    assert len(red.samples) == 3
    assert miscompiled(red.graph, red.samples)
    cut = [j for j, v in enumerate(red.graph.inputs) if v.name.startswith("cut")]
    assert cut, "the gelu's input is a cut"
    for j in cut:
        arrays = [row[j] for row in red.samples]
        assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0],
                                                                                 arrays[2])


def test_cut_arrays_are_the_recorded_values():
    """Where nothing else can shrink (the predicate wants the whole output), a cut input's
    arrays are exactly what the original graph computes there, per sample."""
    graph = chain(blocks=6, gelu_at=3)
    samples = samples_for(graph, 3)
    shape = graph.outputs[0].type.shape
    predicate = lambda g, s: g.outputs[0].type.shape == shape and miscompiled(g, s)
    red = reduce(graph, predicate, samples)
    assert_fits(red)
    (gelu,) = [node for node in red.graph.nodes if node.op == "gelu"]
    source = graph.producers[gelu.output.name].inputs[0].name  # what the gelu read before
    cut = [j for j, v in enumerate(red.graph.inputs) if v.name == gelu.inputs[0].name]
    assert cut and red.graph.inputs[cut[0]].name.startswith("cut")
    for row, sample in zip(red.samples, samples):
        seen = {}
        run_reference(graph, sample, observe=seen.__setitem__)
        np.testing.assert_array_equal(row[cut[0]], seen[source])


def test_one_sample_small_cut_becomes_a_constant_then_simplifies():
    """One sample and a small value: the cut is a constant, the graph loses its inputs, and
    the constant goes to ones (zeros would make gelu 0 and hide the sign flip)."""
    b = GraphBuilder()
    x = Value("x", TensorType((2, 3), "f32"))
    h = b("tanh", [b("sigmoid", [x])])
    graph = Graph((x,), tuple(b.nodes) + (ops.build_node("gelu", [h], {}, ["out"]),),
                  (Value("out", h.type),))
    red = reduce(graph, miscompiled, samples_for(graph, 1))
    assert red.nodes_after == 1 and red.graph.inputs == () and red.samples == [[]]
    (const,) = [node for node in red.graph.nodes if node.op == "const"]
    assert const.output.name.startswith("cut")
    np.testing.assert_array_equal(const.attrs["value"].array, np.ones((2, 3), np.float32))
    assert miscompiled(red.graph, red.samples)


def test_drops_outputs_and_dead_code_and_unused_inputs():
    b = GraphBuilder()
    x = Value("x", TensorType((3, 4), "f32"))
    y = Value("y", TensorType((3, 4), "f32"))
    dead = b("relu", [y])
    a = b("sigmoid", [x])
    g = b("gelu", [x])
    c = b("tanh", [b("add", [a, y])])
    graph = Graph((x, y), tuple(b.nodes), (a, c, g, c))
    assert dead.name not in {v.name for v in graph.outputs}
    red = reduce(graph, miscompiled, samples_for(graph, 2))
    assert [node.op for node in red.graph.nodes] == ["gelu"]
    assert [v.name for v in red.graph.outputs] == [g.name]
    assert [v.name for v in red.graph.inputs] == ["x"]
    assert red.steps[0] == "dead-code elimination: 5 -> 4 nodes"
    assert any(step.startswith("drop ") for step in red.steps)
    assert any(step.startswith("remove unused input %y") for step in red.steps)
    assert_fits(red)


def test_is_deterministic():
    graph = chain()
    samples = samples_for(graph, 2)
    first, second = (reduce(graph, miscompiled, samples) for _ in range(2))
    assert first.steps == second.steps and str(first.graph) == str(second.graph)
    assert first.graph == second.graph


# ---------------------------------------------------------------------------------------------
# The contract: a true predicate on the input, every candidate verified, exceptions propagate


def test_a_predicate_false_on_the_input_is_refused():
    graph = chain()
    with pytest.raises(ValueError, match="does not hold on the input graph"):
        reduce(graph, lambda g, s: False, samples_for(graph, 1))


def test_samples_that_do_not_fit_are_refused():
    graph = chain()
    with pytest.raises(ValueError, match="shape"):
        reduce(graph, miscompiled, [[np.zeros((2, 8), np.float32)]])


@pytest.mark.parametrize("fail_at", [1, 4])
def test_a_predicate_that_raises_propagates(fail_at):
    graph = chain()
    calls = []

    def predicate(g, s):
        calls.append(g)
        if len(calls) == fail_at:
            raise RuntimeError("predicate bug")
        return miscompiled(g, s)

    with pytest.raises(RuntimeError, match="predicate bug"):
        reduce(graph, predicate, samples_for(graph, 1))
    assert len(calls) == fail_at


def test_candidates_that_do_not_verify_never_reach_the_predicate(monkeypatch):
    """With dim shrinking broken to leave stale types, its candidates fail verification; the
    predicate, which verifies what it gets, never sees one, and the result still verifies."""

    def stale(node: Node, subst: dict[str, Value]) -> Node:
        inputs = tuple(subst.get(v.name, v) for v in node.inputs)
        return Node(node.op, inputs, node.outputs, node.attrs, node.provenance)

    rejected = []

    def counting_verify(graph: Graph) -> None:
        try:
            verify(graph)
        except IRVerificationError:
            rejected.append(graph)
            raise

    monkeypatch.setattr(steps_module, "_retyped", stale)
    monkeypatch.setattr(reducer_module, "verify", counting_verify)
    seen = []

    def predicate(g, s):
        verify(g)  # an IRVerificationError here would propagate and fail the test
        seen.append(g)
        return miscompiled(g, s)

    graph = chain()
    red = reduce(graph, predicate, samples_for(graph, 2))  # two: the cut is an input to shrink
    assert rejected and seen
    assert all(g is not r for g in seen for r in rejected)
    assert red.nodes_after <= 3
    assert_fits(red)


# ---------------------------------------------------------------------------------------------
# Interrupts and budgets: the best graph so far


def test_keyboard_interrupt_returns_the_best_so_far(swin):
    graph, x = swin
    calls = 0

    def predicate(g, s):
        nonlocal calls
        calls += 1
        if calls == 16:
            raise KeyboardInterrupt
        return miscompiled(g, s)

    red = reduce(graph, predicate, [x])
    assert red.interrupted and red.evaluations == 16
    assert red.steps and red.nodes_after < red.nodes_before
    assert_fits(red)
    assert miscompiled(red.graph, red.samples)


def test_time_limit_stops_with_a_valid_graph():
    graph = chain()
    samples = samples_for(graph, 1)
    red = reduce(graph, miscompiled, samples, time_limit=0)
    assert red.interrupted and red.evaluations == 1 and red.graph is graph and not red.steps

    def slow(g, s):
        time.sleep(0.05)
        return miscompiled(g, s)

    started = time.monotonic()
    red = reduce(graph, slow, samples, time_limit=0.3)
    assert red.interrupted and time.monotonic() - started < 1.0
    assert 2 <= red.evaluations <= 10
    assert_fits(red)
    assert miscompiled(red.graph, red.samples)


def test_max_evaluations_is_honoured():
    graph = chain()
    samples = samples_for(graph, 1)
    full = reduce(graph, miscompiled, samples)
    assert not full.interrupted and full.evaluations > 5
    red = reduce(graph, miscompiled, samples, max_evaluations=5)
    assert red.interrupted and red.evaluations == 5
    assert red.steps == full.steps[:len(red.steps)]  # the same path, cut short
    assert_fits(red)
    assert miscompiled(red.graph, red.samples)
