"""Executors: run a graph with the numpy reference or with torch ops.

Both walk the nodes in order, hand each op its inputs and attributes, and hold the result to the
node's declared type: a wrong shape is an error naming the node (it means an op's inference and
its implementation disagree), a different dtype is converted (numpy and torch promote
differently; the declared dtype is torch's). Values are dropped after their last use.

A graph with symbolic dims (`fxforge.symdims`) runs as the static graph of its inputs' sizes:
the symbols are bound from the input shapes (checked against their ranges) and substituted, and
that static graph is cached per binding. A static graph takes the same path as ever.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fxforge import dtypes, ops, symdims
from fxforge.errors import ExecutionError
from fxforge.ir import Graph, Node, Value
from fxforge.kernels.torch_backend import DEVICE_AWARE_OPS, TORCH_IMPLS, TORCH_PREPARE


def _last_uses(graph: Graph) -> list[list[str]]:
    """For node i, the value names whose last reader is node i (graph outputs never expire)."""
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[v.name] = i
    keep = {v.name for v in graph.outputs}
    table: list[list[str]] = [[] for _ in graph.nodes]
    for name, i in last.items():
        if name not in keep:
            table[i].append(name)
    return table


def _results(node: Node, out: Any) -> tuple:
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(node.outputs):
        raise ExecutionError(f"{node.describe()}: produced {len(outs)} results, "
                             f"declared {len(node.outputs)}")
    return outs


def _check_inputs(graph: Graph, values: Sequence[Any]) -> None:
    if len(values) != len(graph.inputs):
        raise ExecutionError(f"graph takes {len(graph.inputs)} inputs, got {len(values)}")


# --- numpy reference ----------------------------------------------------------------------------


def _to_declared(array: Any, v: Value, node: Node) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != v.type.shape:
        raise ExecutionError(f"{node.describe()}: reference produced shape {list(array.shape)} "
                             f"for {v} declared {v.type}")
    return array.astype(dtypes.to_numpy(v.type.dtype), copy=False)


def run_reference(graph: Graph, inputs: Sequence[np.ndarray],
                  observe: Callable[[str, np.ndarray], None] | None = None) -> list[np.ndarray]:
    """Run `graph` with the numpy reference. Inputs are converted to their declared dtypes.
    `observe(name, array)`, given, sees every input and node result (constants too) as it is
    made; the arrays are the interpreter's own, not to be changed."""
    _check_inputs(graph, inputs)
    if graph.symbolic:
        graph = symdims.specialize(graph, symdims.bind(graph, [np.shape(x) for x in inputs]))
    env: dict[str, np.ndarray] = {
        v.name: np.asarray(x).astype(dtypes.to_numpy(v.type.dtype), copy=False)
        for v, x in zip(graph.inputs, inputs)}
    if observe is not None:
        for v in graph.inputs:
            observe(v.name, env[v.name])
    for node, expired in zip(graph.nodes, _last_uses(graph)):
        if node.op == "const":
            array = node.attrs["value"].array
            if array is None:
                raise ExecutionError(f"{node.describe()}: constant data was elided; parse the IR "
                                     "with parse_ir(text, constants=...) to run it")
            env[node.output.name] = array
            if observe is not None:
                observe(node.output.name, array)
            continue
        fn = ops.get(node.op).reference
        args = [env[v.name] for v in node.inputs]
        try:
            with np.errstate(all="ignore"):
                out = fn(*args, **node.attrs)
        except ExecutionError:
            raise
        except Exception as e:
            raise ExecutionError(f"reference failed at {node.describe()}: "
                                 f"{type(e).__name__}: {e}") from e
        for v, o in zip(node.outputs, _results(node, out)):
            env[v.name] = _to_declared(o, v, node)
            if observe is not None:
                observe(v.name, env[v.name])
        for name in expired:
            env.pop(name, None)
    return [env[v.name] for v in graph.outputs]


# --- torch --------------------------------------------------------------------------------------


class TorchProgram:
    """A graph prepared for repeated torch execution on one device (constants moved once)."""

    backend_name = "torch backend"
    straight_line = True  # generate straight-line code after the first call (see __call__)

    def __init__(self, graph: Graph, device: torch.device, shared: dict | None = None):
        """`shared`: (constant digest, device) -> tensor, filled and reused across programs (the
        sizes of one dynamic graph share their weights; constants are never written to)."""
        self.graph = graph
        self.device = device
        self.constants: dict[str, torch.Tensor] = {}
        self.steps: list[tuple[Node, Any, dict, list[str], torch.dtype | tuple]] = []
        self._fast: Callable[..., list[torch.Tensor]] | None = None  # see __call__
        # symbolic dims: binding -> the program of that static graph (see _variant)
        self._variants: dict[tuple, TorchProgram] | None = {} if graph.symbolic else None
        self._variants_lock = threading.Lock()
        for node in graph.nodes:
            if node.op == "const":
                array = node.attrs["value"].array
                if array is None:
                    raise ExecutionError(f"{node.describe()}: constant data was elided")
                key = (node.attrs["value"].digest, str(device))
                tensor = shared.get(key) if shared is not None else None
                if tensor is None:
                    tensor = torch.from_numpy(np.array(array)).to(device)
                    if shared is not None:  # setdefault: a thread that lost the race uses
                        tensor = shared.setdefault(key, tensor)  # the winner's copy
                self.constants[node.output.name] = tensor
        if self._variants is None:
            self._lower_all()

    def _lower_all(self) -> None:
        for node, expired in zip(self.graph.nodes, _last_uses(self.graph)):
            if node.op == "const":
                continue
            out_dtypes = tuple(dtypes.to_torch(v.type.dtype) for v in node.outputs)
            fn, attrs = self.lower(node)
            self.steps.append((node, fn, attrs, expired, out_dtypes))

    def lower(self, node: Node) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The function that runs `node` and the keyword attributes it is called with. Backends
        that generate kernels override this and fall back to it."""
        attrs = dict(node.attrs)
        if node.op in DEVICE_AWARE_OPS:
            attrs["device"] = self.device
        fn = TORCH_IMPLS[node.op]
        prepare = TORCH_PREPARE.get(node.op)
        if prepare is not None:  # e.g. an int8 weight reordered once for its kernel
            consts = [self.constants.get(v.name) for v in node.inputs]
            fn = prepare(consts, attrs, self.device) or fn
        return fn, attrs

    def __call__(self, inputs: Sequence[torch.Tensor],
                 observe: Callable[[str, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Run the graph. `observe(name, tensor)`, given, sees every input and node result as it
        is made (calibration collects activation statistics this way).

        Without `observe`, the second call on runs generated straight-line code
        (`fxforge.straightline`); should it raise, the node-by-node loop runs the same inputs
        again and its error names the node."""
        if observe is None and self._fast is not None:
            try:
                return self._fast(*inputs)
            except Exception:  # noqa: BLE001 - the loop below says where, or succeeds
                pass
        if self._variants is not None:
            return self._variant(inputs)(inputs, observe)
        casts: set[tuple[int, int]] | None = set() if observe is None and self._fast is None \
            else None
        outs = self._interpret(inputs, observe, casts)
        if casts is not None and self.straight_line:
            from fxforge.straightline import generate

            self._fast = generate(self.graph, self.constants, self.steps, casts)
        return outs

    VARIANTS = 16  # static programs kept per symbolic program, most recent first

    def _variant(self, inputs: Sequence[torch.Tensor]) -> TorchProgram:
        """The program of the static graph for these inputs' sizes (made on first use; it
        shares this program's device constants)."""
        _check_inputs(self.graph, inputs)
        values = symdims.bind(self.graph, [tuple(x.shape) for x in inputs])
        key = tuple(sorted(values.items()))
        variants = self._variants
        with self._variants_lock:  # callers may share one program across threads
            program = variants.pop(key, None)
            if program is not None:
                variants[key] = program
                return program
        program = copy.copy(self)
        program.graph = symdims.specialize(self.graph, values)
        program.steps, program._fast, program._variants = [], None, None
        program._lower_all()
        with self._variants_lock:
            while len(variants) >= self.VARIANTS:
                variants.pop(next(iter(variants)))
            variants[key] = program
        return program

    def _interpret(self, inputs: Sequence[torch.Tensor],
                   observe: Callable[[str, torch.Tensor], None] | None,
                   casts: set[tuple[int, int]] | None) -> list[torch.Tensor]:
        """The node-by-node loop; `casts`, given, collects the (step, output) pairs whose torch
        result had another dtype than the declared one."""
        graph = self.graph
        _check_inputs(graph, inputs)
        env: dict[str, torch.Tensor] = dict(self.constants)
        for v, x in zip(graph.inputs, inputs):
            env[v.name] = x
            if observe is not None:
                observe(v.name, x)
        for index, (node, fn, attrs, expired, out_dtypes) in enumerate(self.steps):
            try:
                out = fn(*[env[v.name] for v in node.inputs], **attrs)
            except Exception as e:
                raise ExecutionError(f"{self.backend_name} failed at {node.describe()}: "
                                     f"{type(e).__name__}: {e}") from e
            results = _results(node, out)
            for j, (v, o, dtype) in enumerate(zip(node.outputs, results, out_dtypes)):
                if o.dtype != dtype:
                    o = o.to(dtype)
                    if casts is not None:
                        casts.add((index, j))
                env[v.name] = o
                if observe is not None:
                    observe(v.name, env[v.name])
            for name in expired:
                if name not in self.constants:
                    env.pop(name, None)
        return [env[v.name] for v in graph.outputs]
