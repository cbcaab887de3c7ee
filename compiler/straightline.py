"""A torch program as one generated Python function: the lean path of `TorchProgram`.

Why: the interpreter loop of `TorchProgram` costs per node a dict environment, a `try`, a list
of inputs, a result tuple and a dtype check, about 20 us for a 3-layer MLP, a third of what the
layers themselves cost at batch 1. The generated function is straight-line code:

    def run(i0, i1):
        v0 = f0(i0, c0)          # f0: the op's torch function with its attributes bound
        v1 = f1(v0)
        del v0                   # a value dies at its last use, as in the loop
        v2 = v2.to(d0)           # only where the first run saw torch return another dtype
        return [v1]

Every identifier in it is generated (`i`, `v`, `f`, `c`, `d` and a number): no name from the
model, the graph or a file reaches the source, and `exec` runs only this text. The functions,
constants and dtypes are bound through the function's own namespace.

When the generated code raises, the caller runs the interpreter loop on the same inputs, which
names the node and module path that failed (ops are pure, so running again is safe).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fxforge.ir import Graph


def generate(graph: Graph, constants: dict[str, torch.Tensor],
             steps: Sequence[tuple[Any, Callable, dict, list[str], tuple]],
             casts: set[tuple[int, int]]) -> Callable[..., list[torch.Tensor]]:
    """The straight-line function of a prepared program: `steps` as TorchProgram holds them,
    `casts` the (step, output) pairs whose result must be converted to the declared dtype."""
    local: dict[str, str] = {}  # value name -> generated identifier
    namespace: dict[str, Any] = {}
    for k, v in enumerate(graph.inputs):
        local[v.name] = f"i{k}"
    for k, (name, tensor) in enumerate(constants.items()):
        local[name] = f"c{k}"
        namespace[f"c{k}"] = tensor
    lines = [f"def run({', '.join(local[v.name] for v in graph.inputs)}):"]
    counter = 0
    for index, (node, fn, attrs, expired, out_dtypes) in enumerate(steps):
        namespace[f"f{index}"] = functools.partial(fn, **attrs) if attrs else fn
        args = ", ".join(local[v.name] for v in node.inputs)
        names = []
        for v in node.outputs:
            local[v.name] = f"v{counter}"
            names.append(f"v{counter}")
            counter += 1
        target = names[0] if len(names) == 1 else ", ".join(names)
        lines.append(f"    {target} = f{index}({args})")
        for j, name in enumerate(names):
            if (index, j) in casts:
                namespace[f"d{index}_{j}"] = out_dtypes[j]
                lines.append(f"    {name} = {name}.to(d{index}_{j})")
        dead = [local[n] for n in expired if n in local and not local[n].startswith("c")]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    lines.append(f"    return [{', '.join(local[v.name] for v in graph.outputs)}]")
    source = "\n".join(lines) + "\n"
    code = compile(source, "<fxforge straight-line program>", "exec")
    exec(code, namespace)  # noqa: S102 - generated text, generated identifiers only
    run = namespace["run"]
    run.source = source
    return run
