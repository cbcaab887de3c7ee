"""fxforge: a graph compiler for PyTorch models.

    import fxforge
    fast = fxforge.compile(model, target="cpu")
    y = fast(x)
    print(fast.graph)

One import namespace: `fxforge` is the folder `compiler/`, and `fxforge.passes`,
`fxforge.kernels`, `fxforge.bench` are the folders `passes/`, `kernels/`, `bench/` (pyproject's
package-dir puts them there in the wheel). Those three folders have no `__init__.py`: from the
repository root, where Python puts the current directory first on its path, a regular package
`kernels/` would shadow the distribution of that name (Hugging Face's `kernels`, which
transformers imports), while a folder without one never does.
"""

import sys
from importlib.machinery import ModuleSpec
from importlib.util import module_from_spec
from pathlib import Path

SUBPACKAGES = ("passes", "kernels", "bench")


def _mount_source_subpackages() -> None:
    """In a checkout (this file in `compiler/`), make `fxforge.passes` etc. the sibling folders.

    An installed wheel lays them out under `fxforge/` and needs nothing. An editable install
    maps `fxforge` to `compiler/` but cannot map a subpackage without `__init__.py` elsewhere,
    so each is registered here as a namespace package over its folder, before anything below
    imports one."""
    here = Path(__file__).resolve().parent
    if here.name != "compiler":
        return
    package = sys.modules[__name__]
    for name in SUBPACKAGES:
        full = f"{__name__}.{name}"
        if full in sys.modules or not (here.parent / name).is_dir():
            continue
        spec = ModuleSpec(full, None, is_package=True)
        spec.submodule_search_locations = [str(here.parent / name)]
        module = module_from_spec(spec)
        sys.modules[full] = module
        setattr(package, name, module)


_mount_source_subpackages()

from fxforge import zoo
from fxforge.api import CompiledModel, compile
from fxforge.archive import ArchiveError, load
from fxforge.distill import distill
from fxforge.ensemble import EnsembleError, ensemble, merge_weights
from fxforge.errors import (
    CalibrationError,
    CaptureError,
    DeviceUnavailableError,
    ExecutionError,
    FxforgeError,
    InputError,
    MiscompileError,
    OptionError,
    PipelineError,
    UnsupportedModelError,
)
from fxforge.ir import Graph, Node, TensorType, Value
from fxforge.parser import IRParseError, parse_ir
from fxforge.pipeline import DebugOptions, PassManager
from fxforge.pruning import prune_channels
from fxforge.targets import TARGETS
from fxforge.verify import IRVerificationError, verify

_LAZY = {"export_onnx": "fxforge.onnx_export", "import_onnx": "fxforge.onnx_import"}


def __getattr__(name: str):
    """ONNX functions, imported at first use: `import onnx` alone costs most of a second."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fxforge' has no attribute {name!r}")


__all__ = [
    "TARGETS",
    "ArchiveError",
    "CalibrationError",
    "CaptureError",
    "CompiledModel",
    "DebugOptions",
    "DeviceUnavailableError",
    "EnsembleError",
    "ExecutionError",
    "FxforgeError",
    "Graph",
    "IRParseError",
    "IRVerificationError",
    "InputError",
    "MiscompileError",
    "Node",
    "OptionError",
    "PassManager",
    "PipelineError",
    "TensorType",
    "UnsupportedModelError",
    "Value",
    "compile",
    "distill",
    "ensemble",
    "export_onnx",
    "import_onnx",
    "load",
    "merge_weights",
    "parse_ir",
    "prune_channels",
    "verify",
    "zoo",
]
