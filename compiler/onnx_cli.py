"""ONNX on the command line: `fxforge compile model.onnx ...` and `fxforge export SPEC -o F`.

An `.onnx` model spec compiles like any other; it is checked against ONNX Runtime running the
same file (the role eager PyTorch plays for a torch model), on random inputs of the declared
shapes and dtypes (a symbolic dim gets `--batch` when it is the first, else 1) unless `--input`
gives them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxforge import dtypes


class OnnxRuntimeReference:
    """The ONNX file run by ONNX Runtime, called like the compiled model (positional tensors)."""

    reference_name = "ONNX Runtime on the same file"

    def __init__(self, path: str):
        from fxforge.kernels.ort_backend import session_options
        from fxforge.optional import require

        ort = require("onnxruntime", "checking an ONNX model against ONNX Runtime")
        self.session = ort.InferenceSession(path, session_options(),
                                            providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> Any:
        feed = {n: x.detach().cpu().numpy() for n, x in zip(self.names, inputs)}
        outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def example_inputs(path: str, batch: int, seed: int = 0, int_high: int = 100) -> tuple:
    """Random inputs of the model's declared input shapes and dtypes."""
    from fxforge.onnx_model import OnnxSource
    from fxforge.onnx_safety import ir_dtype

    source = OnnxSource(path)
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for info in source.inputs:
        t = info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 1)
                 for i, d in enumerate(t.shape.dim)]
        dtype = ir_dtype(t.elem_type)
        if dtype is None:
            raise ValueError(f"{path}: input {info.name!r} has an element type the IR lacks")
        torch_dtype = dtypes.to_torch(dtype)
        if dtypes.is_float(dtype):
            inputs.append(torch.randn(shape, generator=generator).to(torch_dtype))
        elif dtype == "bool":
            inputs.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            inputs.append(torch.randint(0, int_high, shape, generator=generator).to(torch_dtype))
    return tuple(inputs)


def load_onnx_spec(spec: str, batch: int) -> tuple[Any, tuple]:
    """(what `compile` takes: the path, example inputs, the ONNX Runtime reference)."""
    if not Path(spec).is_file():
        raise FileNotFoundError(f"ONNX model {spec} does not exist")
    return spec, example_inputs(spec, batch)


def cmd_export(args: argparse.Namespace) -> int:
    from fxforge.__main__ import compile_spec

    compiled, _, inputs = compile_spec(args)
    compiled.export_onnx(args.output)
    graph = compiled.graph
    quantized = sum(n.op in ("qlinear", "qconv2d") for n in graph.nodes)
    print(f"exported {args.spec} ({args.target}: {len(graph.nodes)} IR nodes, {quantized} int8 "
          f"layers) to {args.output}")
    check = OnnxRuntimeReference(args.output)(*inputs)
    ours = compiled(*inputs)
    pairs = zip(check if isinstance(check, tuple) else (check,),
                ours if isinstance(ours, tuple) else (ours,))
    for i, (a, b) in enumerate(pairs):
        print(f"  output {i}: ONNX Runtime vs fxforge {args.target}: max |error| "
              f"{(a.double() - b.double()).abs().max().item():.3e}")
    return 0


def add_commands(sub: Any, add_model_args: Any, add_quant_args: Any) -> None:
    p = sub.add_parser("export", help="compile a model and write the optimized graph as ONNX "
                                      "(fp32, or QDQ int8 for int8 targets)")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write")
    add_quant_args(p)
    p.set_defaults(fn=cmd_export)
