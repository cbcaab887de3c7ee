"""Helpers for IR-text pass tests: run a pass, check it against the numpy reference, and print
the result with values renamed in order of definition (%0, %1, ...) so expected text does not
depend on how a pass names new values."""

from __future__ import annotations

import re

import numpy as np

from fxforge import parse_ir, verify
from fxforge.execute import run_reference
from fxforge.ir import Graph
from fxforge.passes import registry as passes
from fxforge.printer import print_graph


def canonical(graph: Graph) -> str:
    """IR text with inline constants, no provenance, values renamed %0, %1, ... by definition."""
    text = print_graph(graph, inline_constants=True)
    names: dict[str, str] = {}
    for v in graph.inputs:
        names.setdefault(v.name, str(len(names)))
    for node in graph.nodes:
        for v in node.outputs:
            names.setdefault(v.name, str(len(names)))
    text = re.sub(r"%([A-Za-z0-9_]+)", lambda m: "%" + names.get(m.group(1), m.group(1)), text)
    return "\n".join(line.split("  #")[0].rstrip() for line in text.splitlines())


def dedent_ir(text: str) -> str:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] if line.strip() else "" for line in lines)


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs]


def run_pass(name: str, before: str | Graph, rtol: float = 1e-4, atol: float = 1e-5,
             seeds: int = 3) -> tuple[Graph, dict]:
    """Parse, run the pass, verify the result, and check outputs on random inputs."""
    graph = parse_ir(before) if isinstance(before, str) else before
    verify(graph)
    after, stats = passes.PASSES[name](graph)
    verify(after)
    for seed in range(seeds):
        inputs = random_inputs(graph, seed)
        for expected, got in zip(run_reference(graph, inputs), run_reference(after, inputs)):
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return after, stats
