"""fxforge: a graph compiler for PyTorch models.

    from compiler import compile
    fast = compile(model, target="cpu")
    y = fast(x)
    print(fast.graph)
"""

from compiler.api import CompiledModel, compile
from compiler.errors import (
    CalibrationError,
    CaptureError,
    DeviceUnavailableError,
    ExecutionError,
    FxforgeError,
    InputError,
    PipelineError,
    UnsupportedModelError,
)
from compiler.ir import Graph, Node, TensorType, Value
from compiler.parser import IRParseError, parse_ir
from compiler.pipeline import DebugOptions, PassManager
from compiler.pruning import prune_channels
from compiler.targets import TARGETS
from compiler.verify import IRVerificationError, verify

__all__ = [
    "TARGETS",
    "CalibrationError",
    "CaptureError",
    "CompiledModel",
    "DebugOptions",
    "DeviceUnavailableError",
    "ExecutionError",
    "FxforgeError",
    "Graph",
    "IRParseError",
    "IRVerificationError",
    "InputError",
    "Node",
    "PassManager",
    "PipelineError",
    "TensorType",
    "UnsupportedModelError",
    "Value",
    "compile",
    "parse_ir",
    "prune_channels",
    "verify",
]
