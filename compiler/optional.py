"""Optional packages: imported where a feature needs them, with one line naming the extra.

The core (`pip install fxforge`) needs torch, numpy, triton, onnx, onnx-graphsurgeon and tqdm.
Bundled models built from `transformers` or trained on scikit-learn's digits need the `zoo`
extra; the benchmark harness needs `bench`. Every optional import that has no fallback goes
through `require` (ONNX Runtime, jsonschema and threadpoolctl have one in the bench: a system
reported as not installed, a lighter schema check, BLAS threads left alone), so a missing
package says what to install instead of ending in a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fxforge.errors import MissingDependencyError

# import name -> (distribution, extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "zoo"),
    "sklearn": ("scikit-learn", "zoo"),
    "matplotlib": ("matplotlib", "bench"),
    "onnxruntime": ("onnxruntime", "bench"),
    "onnxscript": ("onnxscript", "bench"),
    "jsonschema": ("jsonschema", "bench"),
    "threadpoolctl": ("threadpoolctl", "bench"),
}


def require(module: str, needed_for: str) -> ModuleType:
    """Import `module` (dotted names allowed) or raise MissingDependencyError naming the extra.

    Only the package itself being absent is turned into that error: an installed package that
    fails to import (a broken install, a missing dependency of its own) keeps its real error."""
    top = module.split(".")[0]
    try:
        importlib.import_module(top)
    except ModuleNotFoundError as e:
        if e.name != top or top not in PACKAGES:
            raise
        dist, extra = PACKAGES[top]
        raise MissingDependencyError(
            f"{needed_for} needs {dist}, which is not installed: "
            f'pip install "fxforge[{extra}]"') from None
    return importlib.import_module(module)

