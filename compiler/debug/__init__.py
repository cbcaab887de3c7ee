"""Debugging passes: find the pass, shrink the case, replay it, see it.

- `check.py`: `debug={"check_each": True}` runs every stage on the numpy reference and raises
  `fxforge.MiscompileError` at the first pass whose output computes something else.
- `bundle.py`: reproducer bundles (IR before the failing pass, constants, the rest of the
  pipeline, input samples, versions, the failure's signature), `replay`.
- `bisect.py`: `debug={"bisect_limit": N}` applies only the first N rewrites; `bisect` finds the
  first one that brings the failure.
- `reducer.py` (+ `reduce_steps.py`): shrinks a failing graph while the same failure holds.
- `html.py`: one self-contained HTML page with every stage, diffs, provenance and int8 SQNR.

Submodules are imported on first use (`fxforge.debug.reduce(...)`), so that importing the
pipeline, which uses `check` and `bisect`, does not import the viewer.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "reduce": ("fxforge.debug.reducer", "reduce"),
    "Reduction": ("fxforge.debug.reducer", "Reduction"),
    "write_html": ("fxforge.debug.html", "write_html"),
    "write_bundle": ("fxforge.debug.bundle", "write_bundle"),
    "load_bundle": ("fxforge.debug.bundle", "load_bundle"),
    "replay": ("fxforge.debug.bundle", "replay"),
    "bundle_before": ("fxforge.debug.bundle", "bundle_before"),
    "bisect": ("fxforge.debug.bisect", "bisect"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fxforge.debug' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
