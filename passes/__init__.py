"""The pass registry: kebab-case name -> pure function `Graph -> (Graph, stats)`.

Every pass lives in its own module and is listed here explicitly (no registration by import side
effects). `stats` is a small dict of counts the report shows (nodes removed, BNs folded, ...).
"""

from __future__ import annotations

from collections.abc import Callable

from compiler.ir import Graph
from passes.dce import dce

PassFn = Callable[[Graph], tuple[Graph, dict[str, int]]]

PASSES: dict[str, PassFn] = {
    "dce": dce,
}
