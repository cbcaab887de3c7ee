"""The pass registry: kebab-case name -> pure function `Graph -> (Graph, stats)`.

Every pass lives in its own module and is listed here explicitly (no registration by import side
effects). `stats` is a small dict the report shows: counts (nodes removed, BNs folded, ...) and,
where a count is not enough, lists of short strings (which batch norms stayed, and why).
"""

from __future__ import annotations

from collections.abc import Callable

from fxforge.ir import Graph
from fxforge.passes.canonicalize import canonicalize
from fxforge.passes.cse import cse
from fxforge.passes.dce import dce
from fxforge.passes.fold_batchnorm import fold_batchnorm
from fxforge.passes.fold_constants import fold_constants
from fxforge.passes.fuse import fuse
from fxforge.passes.layout_nhwc import layout_nhwc
from fxforge.passes.quantize import quantize
from fxforge.passes.quantize_int4 import quantize_int4
from fxforge.passes.remove_pruned_channels import remove_pruned_channels
from fxforge.passes.smooth import smooth
from fxforge.passes.to_fp16 import to_fp16

PassFn = Callable[..., tuple[Graph, dict]]  # (graph, **options) -> (graph, stats)

PASSES: dict[str, PassFn] = {
    "canonicalize": canonicalize,
    "fold-constants": fold_constants,
    "cse": cse,
    "dce": dce,
    "fold-batchnorm": fold_batchnorm,
    "remove-pruned-channels": remove_pruned_channels,
    "fuse": fuse,
    "smooth": smooth,
    "quantize": quantize,
    "to-fp16": to_fp16,
    "layout-nhwc": layout_nhwc,
    "quantize-int4": quantize_int4,
}
