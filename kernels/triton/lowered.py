"""What a lowering rule returns (`Lowered`) and reads (`Context`), shared by lower.py and the
rule modules beside it (lower_layout.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fxforge.ir import Value

Tensor = torch.Tensor


@dataclass
class Lowered:
    kernel: str  # what the report calls it, e.g. "int8 GEMM + epilogue (2 steps)"
    fn: Callable[..., Any]  # node inputs (tensors, in order) -> result(s)
    tune: Callable[[dict | None], None] | None = None  # set a config (autotuning)
    configs: Sequence[dict] = ()  # the kernel module's candidates for `tune`


class Context:
    """What a rule may read: the program's constants (on the device) and the graph's values."""

    def __init__(self, constants: dict[str, Tensor]):
        self.constants = constants

    def const(self, v: Value) -> Tensor | None:
        return self.constants.get(v.name)


class Config:
    """The launch config a lowered node uses; the autotuner sets it (None: the default)."""

    def __init__(self):
        self.value: dict | None = None

    def set(self, config: dict | None) -> None:
        self.value = config
