"""A graph prepared for the Triton backend: generated kernels where a rule claims the node, the
torch backend for the rest; what ran where is kept for the report.

Autotuning happens at a node's first run, when real input shapes are known: each claimed node
times its kernel module's CONFIGS with `autotune.Tuner` (cached on disk, so a second compile of
the same model does not time again). Under the interpreter timing means nothing, so tuning is
off there unless asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fxforge.execute import TorchProgram
from fxforge.ir import Graph, Node
from fxforge.kernels.triton import jit
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

    def __init__(self, graph: Graph, device: torch.device, autotune: bool | None = None):
        self.assignments: list[Assignment] = []
        self.tuned_kernels: set[str] = set()  # autotuner identities, for saving their picks
        self.autotune = (not jit.interpreting()) if autotune is None else autotune
        super().__init__(graph, device)

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
