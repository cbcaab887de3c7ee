"""The `ort` / `ort-int8` targets: fxforge's passes, then ONNX Runtime runs the exported graph.

Why: CPU users who deploy with ONNX Runtime get its lean runtime together with what fxforge's
passes do to the graph (batch norms folded, pruned channels physically removed, int8 layers as
QDQ with calibrated scales). The optimized IR is exported once per input signature
(`fxforge.onnx_export`, fused nodes expanded back to standard ops) and an
`onnxruntime.InferenceSession` is created once for it; each call only converts tensors.

Threads: an InferenceSession may be run from several threads at once (ORT documents `Run` as
thread-safe), and the program keeps no per-call state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fxforge.errors import ExecutionError
from fxforge.ir import Graph
from fxforge.optional import require


def session_options(threads: int | None = None) -> Any:
    """Session options: all graph optimizations, as many intra-op threads as torch uses (so
    `ort` and `cpu` are compared on the same cores), and no spinning: ORT's idle pool threads
    otherwise busy-wait after each run, taking the cores from torch's threads in the same process
    (the benchmark's own ONNX Runtime system runs the same way)."""
    ort = require("onnxruntime", "the ort targets")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OrtProgram:
    """One graph exported to ONNX and held in one InferenceSession (CPU execution provider)."""

    backend_name = "ONNX Runtime"

    def __init__(self, graph: Graph, device: torch.device | None = None):
        from fxforge.onnx_export import export_onnx

        ort = require("onnxruntime", "the ort targets")
        if device is not None and torch.device(device).type != "cpu":
            raise ExecutionError("the ort targets run on ONNX Runtime's CPU execution provider; "
                                 f"got inputs on {device}")
        self.graph = graph
        self.model = export_onnx(graph, None)
        self.session = ort.InferenceSession(self.model.SerializeToString(), session_options(),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.input_names) != len(graph.inputs):
            raise ExecutionError(f"the exported graph has {len(self.input_names)} inputs, the IR "
                                 f"{len(graph.inputs)}")

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feed = {name: np.ascontiguousarray(x.detach().cpu().numpy())
                for name, x in zip(self.input_names, inputs)}
        try:
            outs = self.session.run(self.output_names, feed)
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidArgument types
            raise ExecutionError(f"ONNX Runtime failed: {type(e).__name__}: {e}") from e
        return [torch.from_numpy(np.asarray(o)) for o in outs]

