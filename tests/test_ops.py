"""The op table: every IR op checked against an independent torch oracle.

Each row names an op, its inputs (made with a torch generator seeded from the row's id), its
attributes as a converter would give them, and an oracle that calls torch directly. For each row:

1. type inference (`ops.build_node`) gives the oracle's output shapes and dtypes;
2. the numpy reference (`run_reference` on a one-node graph) matches the oracle;
3. the torch backend (`TorchProgram` on CPU) matches the oracle.

Tolerances (see `TOLERANCES`): float32 rtol 1e-4 / atol 1e-5, float16 rtol 1e-3 / atol 1e-3,
float64 rtol 1e-9 / atol 1e-12; integer and bool results must be exactly equal.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fxforge import dtypes, ops
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Attrs, ConstData, Graph, Node, TensorType, Value
from fxforge.shapes import OpTypeError

TOLERANCES = {  # dtype -> (rtol, atol)
    torch.float16: (1e-3, 1e-3),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-9, 1e-12),
}
CPU = torch.device("cpu")
NAN = float("nan")
aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------
# Input specs


@dataclass(frozen=True)
class Spec:
    """How to make one input tensor: random in [lo, hi), integral values, literal, or custom."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    lo: float = -2.0
    hi: float = 2.0
    integral: bool = False  # float tensors holding small integers (ties for comparisons)
    values: Any = None
    make_fn: Callable[[torch.Generator], torch.Tensor] | None = None

    def make(self, gen: torch.Generator) -> torch.Tensor:
        if self.make_fn is not None:
            return self.make_fn(gen)
        if self.values is not None:
            return torch.tensor(self.values, dtype=self.dtype).reshape(self.shape)
        if self.dtype == torch.bool:
            return torch.rand(self.shape, generator=gen) < 0.5
        if self.dtype.is_floating_point and not self.integral:
            u = torch.rand(self.shape, generator=gen, dtype=torch.float64)
            return (u * (self.hi - self.lo) + self.lo).to(self.dtype)
        ints = torch.randint(int(self.lo), int(self.hi), self.shape, generator=gen)
        return ints.to(self.dtype)


def f32(*shape: int, lo: float = -2.0, hi: float = 2.0, integral: bool = False) -> Spec:
    return Spec(shape, torch.float32, lo, hi, integral)


def f16(*shape: int, lo: float = -2.0, hi: float = 2.0) -> Spec:
    return Spec(shape, torch.float16, lo, hi)


def f64(*shape: int, lo: float = -2.0, hi: float = 2.0) -> Spec:
    return Spec(shape, torch.float64, lo, hi)


def i64(*shape: int, lo: int = -5, hi: int = 6) -> Spec:
    return Spec(shape, torch.int64, lo, hi)


def i32(*shape: int, lo: int = -5, hi: int = 6) -> Spec:
    return Spec(shape, torch.int32, lo, hi)


def boolean(*shape: int) -> Spec:
    return Spec(shape, torch.bool)


def lit(values: Any, dtype: torch.dtype = torch.float32) -> Spec:
    """A literal tensor (a python number gives a 0-d tensor)."""
    shape = tuple(torch.tensor(values).shape)
    return Spec(shape, dtype, values=values)


def custom(fn: Callable[[torch.Generator], torch.Tensor]) -> Spec:
    return Spec((), torch.float32, make_fn=fn)


def _attention_mask(gen: torch.Generator) -> torch.Tensor:
    """A (5, 7) bool mask, random but with every query row attending to at least one key."""
    mask = torch.rand((5, 7), generator=gen) < 0.5
    mask[:, 0] = True
    return mask


def _gather_index(gen: torch.Generator, shape: tuple[int, ...], high: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen, dtype=torch.int64)


def distinct(*shape: int, dtype: torch.dtype = torch.float32) -> Spec:
    """A random permutation of 0..n-1, centred and scaled by 1/4 (exact in f16 too): no two
    values tie, so topk and argmax have one right answer whatever order a kernel breaks ties."""
    def make(gen: torch.Generator) -> torch.Tensor:
        n = math.prod(shape)
        perm = torch.randperm(n, generator=gen).reshape(shape) - n // 2
        return perm.to(dtype) if not dtype.is_floating_point else (perm * 0.25).to(dtype)

    return custom(make)


def _bag(*values: int) -> Spec:
    return lit(list(values), torch.int64)


_WORDS = _bag(1, 2, 2, 4, 5, 0, 2)  # embedding_bag indices
_PADDED = _bag(2, 2, 1, 3, 2, 4, 2)  # with padding_idx 2: the first bag is only padding


def _stable_sort_head(k: int, dim: int, descending: bool):
    """torch's stable sort, first k along dim: the order the IR's topk promises on ties."""
    return lambda x: [t.narrow(dim, 0, k) for t in torch.sort(x, dim=dim, descending=descending,
                                                                stable=True)]


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Row:
    id: str
    op: str
    inputs: tuple[Spec, ...]
    oracle: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)


def row(id: str, op: str, inputs: list[Spec], oracle: Callable[..., Any], **attrs: Any) -> Row:  # noqa: A002
    return Row(f"{op}-{id}", op, tuple(inputs), oracle, attrs)


ROWS: list[Row] = [
    # --- elementwise, one input ---------------------------------------------------------------
    row("f32", "identity", [f32(2, 3)], lambda x: x.clone()),
    row("i64", "identity", [i64(4)], lambda x: x.clone()),
    row("eval", "dropout", [f32(2, 5)], lambda x: F.dropout(x, 0.1, training=False), p=0.1),
    row("batch1", "relu", [f32(1, 3, 4, 4)], torch.relu),
    row("i64", "relu", [i64(7)], torch.relu),
    row("min-only", "clamp", [f32(3, 4)], lambda x: torch.clamp(x, min=-0.5), min=-0.5),
    row("max-only", "clamp", [f32(3, 4)], lambda x: torch.clamp(x, max=0.25), max=0.25),
    row("both", "clamp", [f32(3, 4)], lambda x: torch.clamp(x, -1.0, 1.0), min=-1.0, max=1.0),
    row("relu6", "clamp", [f32(2, 8, lo=-3, hi=9)], F.relu6, min=0.0, max=6.0),
    row("i64-int-bounds", "clamp", [i64(9)], lambda x: torch.clamp(x, min=-2, max=3),
        min=-2, max=3),
    row("i64-large-exact", "clamp", [lit([2**24 + 1, 2**60 + 1, -(2**53) - 1, -5], torch.int64)],
        lambda x: torch.clamp(x, min=-(2**62), max=2**61), min=-(2**62), max=2**61),
    row("i64-min-only-large", "clamp", [lit([2**24 + 1, 2**60 + 1, -3], torch.int64)],
        lambda x: torch.clamp(x, min=0), min=0),
    row("i64-fractional-gives-f32", "clamp", [i64(9)], lambda x: torch.clamp(x, min=-1.5, max=2.5),
        min=-1.5, max=2.5),
    row("f16", "clamp", [f16(10)], lambda x: torch.clamp(x, min=-0.3, max=0.7),
        min=-0.3, max=0.7),
    row("i32-int-bounds", "clamp", [i32(9)], lambda x: torch.clamp(x, min=0, max=4), min=0, max=4),
    row("f32", "sigmoid", [f32(3, 5, lo=-6, hi=6)], torch.sigmoid),
    row("i64-gives-f32", "sigmoid", [i64(6)], torch.sigmoid),
    row("f32", "tanh", [f32(3, 5, lo=-3, hi=3)], torch.tanh),
    row("f16", "tanh", [f16(3, 5, lo=-3, hi=3)], torch.tanh),
    row("none", "gelu", [f32(4, 6, lo=-4, hi=4)], lambda x: F.gelu(x, approximate="none"),
        approximate="none"),
    row("tanh", "gelu", [f32(4, 6, lo=-4, hi=4)], lambda x: F.gelu(x, approximate="tanh"),
        approximate="tanh"),
    row("default-f16", "gelu", [f16(4, 6, lo=-4, hi=4)], F.gelu),
    row("f32", "silu", [f32(4, 6, lo=-5, hi=5)], F.silu),
    row("f32", "hardswish", [f32(4, 6, lo=-5, hi=5)], F.hardswish),
    row("f32", "hardsigmoid", [f32(4, 6, lo=-5, hi=5)], F.hardsigmoid),
    row("f32", "sqrt", [f32(3, 4, lo=0.01, hi=9)], torch.sqrt),
    row("i64-gives-f32", "sqrt", [i64(5, lo=0, hi=50)], torch.sqrt),
    row("f32", "rsqrt", [f32(3, 4, lo=0.1, hi=9)], torch.rsqrt),
    row("f32", "exp", [f32(3, 4, lo=-4, hi=4)], torch.exp),
    row("f16", "exp", [f16(3, 4, lo=-4, hi=4)], torch.exp),
    row("f32", "log", [f32(3, 4, lo=0.01, hi=10)], torch.log),
    row("i64-gives-f32", "log", [i64(6, lo=1, hi=100)], torch.log),
    row("f32", "erf", [f32(3, 4, lo=-3, hi=3)], torch.erf),
    row("f32", "sin", [f32(3, 5, lo=-7, hi=7)], torch.sin),
    row("i64-gives-f32", "sin", [i64(6, lo=-50, hi=50)], torch.sin),
    row("f16", "sin", [f16(3, 4, lo=-4, hi=4)], torch.sin),
    row("f32", "cos", [f32(3, 5, lo=-7, hi=7)], torch.cos),
    row("rotary-angles", "cos", [lit([0.0, 1.0, 100.0, 2047.0, -512.5, 1e4])], torch.cos),
    row("i32-gives-f32", "cos", [i32(6, lo=-50, hi=50)], torch.cos),
    row("bool", "bitwise_not", [boolean(3, 4)], torch.bitwise_not),
    row("i64", "bitwise_not", [i64(7)], torch.bitwise_not),
    row("u8", "bitwise_not", [lit([0, 1, 127, 255], torch.uint8)], torch.bitwise_not),
    row("f32", "neg", [f32(3, 4)], torch.neg),
    row("i64", "neg", [i64(5)], torch.neg),
    row("f32", "abs", [f32(3, 4)], torch.abs),
    row("i32", "abs", [i32(5)], torch.abs),
    row("f32-to-f16", "cast", [f32(3, 4)], lambda x: x.to(torch.float16), dtype="f16"),
    row("f16-to-f32", "cast", [f16(3, 4)], lambda x: x.to(torch.float32), dtype="f32"),
    row("f32-to-i64", "cast", [f32(3, 4, lo=-7, hi=7)], lambda x: x.to(torch.int64),
        dtype="i64"),
    row("f16-to-i64", "cast", [f16(8, lo=-7, hi=7)], lambda x: x.to(torch.int64), dtype="i64"),
    row("i64-to-f32", "cast", [i64(6, lo=-1000, hi=1000)], lambda x: x.to(torch.float32),
        dtype="f32"),
    row("i64-to-f16", "cast", [i64(6, lo=-1000, hi=1000)], lambda x: x.to(torch.float16),
        dtype="f16"),
    row("f32-to-bool", "cast", [lit([0.0, -0.0, 0.5, -2.0, 1e-30, 3.0])],
        lambda x: x.to(torch.bool), dtype="bool"),
    row("i64-to-bool", "cast", [i64(8, lo=-2, hi=3)], lambda x: x.to(torch.bool), dtype="bool"),
    row("bool-to-f32", "cast", [boolean(2, 3)], lambda x: x.to(torch.float32), dtype="f32"),
    row("bool-to-i64", "cast", [boolean(2, 3)], lambda x: x.to(torch.int64), dtype="i64"),
    row("f16-to-bool", "cast", [lit([0.0, 1.0, -0.25, 0.0], torch.float16)],
        lambda x: x.to(torch.bool), dtype="bool"),
    # --- elementwise, broadcasting ----------------------------------------------------------
    row("same-shape", "add", [f32(3, 4), f32(3, 4)], torch.add),
    row("broadcast", "add", [f32(2, 1, 4), f32(3, 1)], torch.add),
    row("f32-0d-f32", "add", [f32(3, 4), lit(1.5)], torch.add),
    row("0d-f32-f32", "add", [lit(-0.75), f32(2, 3)], torch.add),
    row("0d-0d", "add", [lit(2.5), lit(-1.0)], torch.add),
    row("i64-0d-f32", "add", [i64(2, 3), lit(0.5)], torch.add),
    row("i64-0d-f64", "add", [i64(2, 3), lit(0.5, torch.float64)], torch.add),
    row("i64-i64", "add", [i64(2, 3), i64(3)], torch.add),
    row("i32-0d-i64", "add", [i32(4), lit(7, torch.int64)], torch.add),
    row("f16-0d-f32", "add", [f16(3, 4), lit(0.1)], torch.add),
    row("f16-f32", "add", [f16(3, 4), f32(4)], torch.add),
    row("f64", "add", [f64(2, 3), f64(3)], torch.add),
    row("bool-bool", "add", [boolean(6), boolean(6)], torch.add),
    row("broadcast", "sub", [f32(4, 1), f32(1, 5)], torch.sub),
    row("i64-0d-f32", "sub", [i64(5), lit(0.25)], torch.sub),
    row("f32-0d-f32", "mul", [f32(2, 3), lit(-3.0)], torch.mul),
    row("i64-0d-i64", "mul", [i64(2, 3), lit(3, torch.int64)], torch.mul),
    row("broadcast", "mul", [f32(2, 1, 3), f32(4, 1)], torch.mul),
    row("f32", "div", [f32(3, 4), f32(4, lo=0.5, hi=2)], torch.div),
    row("i64-i64-gives-f32", "div", [i64(6), lit([1, 2, 3, -4, 5, 7], torch.int64)], torch.div),
    row("i64-0d-i64-gives-f32", "div", [i64(2, 3), lit(4, torch.int64)], torch.div),
    row("f32-0d-f32", "div", [f32(2, 3), lit(0.3)], torch.div),
    row("f32", "pow", [f32(3, 4, lo=0.1, hi=3), f32(3, 4)], torch.pow),
    row("f32-0d-f32", "pow", [f32(3, 4), lit(2.0)], torch.pow),
    row("i64-0d-i64", "pow", [i64(5, lo=-4, hi=5), lit(3, torch.int64)], torch.pow),
    row("i64-0d-f32", "pow", [i64(5, lo=0, hi=20), lit(0.5)], torch.pow),
    row("broadcast", "maximum", [f32(3, 1), f32(1, 4)], torch.maximum),
    row("i64", "maximum", [i64(6), i64(6)], torch.maximum),
    row("broadcast", "minimum", [f32(2, 3, 1), f32(3, 4)], torch.minimum),
    row("i64-0d-f32", "minimum", [i64(6), lit(0.5)], torch.minimum),
    row("broadcast", "eq", [f32(3, 4, lo=-2, hi=3, integral=True), f32(4, lo=-2, hi=3,
                                                                      integral=True)], torch.eq),
    row("i64-0d-f32", "eq", [i64(8, lo=0, hi=4), lit(2.0)], torch.eq),
    row("i64-big-0d-f32-rounds", "eq", [lit([16777217, 16777216, 16777218, 3], torch.int64),
                                         lit(16777216.0)], torch.eq),
    row("f16-0d-f32", "eq", [lit([0.1, 0.2, 0.1, 0.3], torch.float16), lit(0.1)], torch.eq),
    row("broadcast", "ne", [i64(3, 4, lo=0, hi=3), i64(3, 1, lo=0, hi=3)], torch.ne),
    row("broadcast", "lt", [f32(3, 4, lo=-2, hi=3, integral=True), f32(3, 1, integral=True)],
        torch.lt),
    row("i64-0d-f32", "lt", [i64(8, lo=0, hi=4), lit(1.5)], torch.lt),
    row("f16-0d-f32", "lt", [lit([0.1, 0.2, 0.05, 0.3], torch.float16), lit(0.1)], torch.lt),
    row("f32-0d-f32", "le", [f32(3, 4, lo=-2, hi=3, integral=True), lit(1.0)], torch.le),
    row("broadcast", "gt", [f32(2, 1, 4, integral=True), f32(3, 1, integral=True)], torch.gt),
    row("f16-0d-f32", "gt", [lit([0.1, 0.2, 0.05, 0.3], torch.float16), lit(0.1)], torch.gt),
    row("i64-i64", "ge", [i64(5, lo=0, hi=3), i64(5, lo=0, hi=3)], torch.ge),
    row("f32-0d-f32", "ge", [f32(3, 4, lo=-2, hi=3, integral=True), lit(0.0)], torch.ge),
    row("bool-broadcast", "bitwise_and", [boolean(2, 1, 5), boolean(3, 5)], torch.bitwise_and),
    row("i64-i64", "bitwise_and", [i64(6, lo=-9, hi=9), i64(6, lo=-9, hi=9)], torch.bitwise_and),
    row("bool-0d-bool", "bitwise_and", [boolean(4), lit(True, torch.bool)], torch.bitwise_and),
    row("bool-i64-gives-i64", "bitwise_and", [boolean(5), i64(5)], torch.bitwise_and),
    row("i32-0d-i64-stays-i32", "bitwise_and", [i32(5), lit(1, torch.int64)], torch.bitwise_and),
    row("bool-broadcast", "bitwise_or", [boolean(3, 1), boolean(1, 4)], torch.bitwise_or),
    row("i64-0d-i64", "bitwise_or", [i64(5, lo=-9, hi=9), lit(6, torch.int64)], torch.bitwise_or),
    row("bool-bool", "bitwise_xor", [boolean(2, 3), boolean(2, 3)], torch.bitwise_xor),
    row("u8-u8", "bitwise_xor", [lit([0, 5, 255, 128], torch.uint8), lit([255, 5, 1, 128],
                                                                         torch.uint8)],
        torch.bitwise_xor),
    row("broadcast-0d", "where", [boolean(2, 1, 4), f32(3, 4), lit(-1.0)], torch.where),
    row("i64-0d-f32", "where", [boolean(3, 4), i64(3, 4), lit(0.5)], torch.where),
    row("i64-i64", "where", [boolean(5), i64(5), i64(1)], torch.where),
    # --- reductions and normalizations ------------------------------------------------------
    row("dim1", "sum", [f32(2, 3, 4)], lambda x: torch.sum(x, dim=1), dims=(1,)),
    row("neg-keepdim", "sum", [f32(2, 3, 4)], lambda x: torch.sum(x, dim=-1, keepdim=True),
        dims=(-1,), keepdim=True),
    row("two-dims-neg", "sum", [f32(2, 3, 4, 5)], lambda x: torch.sum(x, dim=(-3, -1)),
        dims=(-3, -1)),
    row("i64", "sum", [i64(3, 4)], lambda x: torch.sum(x, dim=0), dims=(0,)),
    row("i32-gives-i64", "sum", [i32(3, 4)], lambda x: torch.sum(x, dim=1), dims=(1,)),
    row("bool-gives-i64", "sum", [boolean(3, 4)], lambda x: torch.sum(x, dim=-1), dims=(-1,)),
    row("f16", "sum", [f16(4, 8)], lambda x: torch.sum(x, dim=1), dims=(1,)),
    row("all", "sum", [f32(3, 4)], torch.sum, dims=(0, 1)),
    row("0d-dim0", "sum", [lit(2.5)], lambda x: torch.sum(x, dim=0), dims=(0,)),
    row("0d-i64-dim-neg-keepdim", "sum", [lit(4, torch.int64)],
        lambda x: torch.sum(x, dim=-1, keepdim=True), dims=(-1,), keepdim=True),
    row("neg-keepdim", "mean", [f32(2, 3, 4)], lambda x: torch.mean(x, dim=-1, keepdim=True),
        dims=(-1,), keepdim=True),
    row("global", "mean", [f32(1, 3, 5, 5)], lambda x: torch.mean(x, dim=(2, 3)), dims=(2, 3)),
    row("0d-dim0", "mean", [lit(-1.5)], lambda x: torch.mean(x, dim=0), dims=(0,)),
    row("neg", "amax", [f32(2, 3, 4)], lambda x: torch.amax(x, dim=-2), dims=(-2,)),
    row("i64-keepdim", "amax", [i64(3, 4)], lambda x: torch.amax(x, dim=1, keepdim=True),
        dims=(1,), keepdim=True),
    row("0d-dim-neg", "amax", [lit(3.0)], lambda x: torch.amax(x, dim=-1), dims=(-1,)),
    row("f32", "amin", [f32(2, 3, 4)], lambda x: torch.amin(x, dim=(0, 2)), dims=(0, 2)),
    row("i64-keepdim", "amin", [i64(3, 4)], lambda x: torch.amin(x, dim=1, keepdim=True),
        dims=(1,), keepdim=True),
    row("bool", "amin", [boolean(3, 4)], lambda x: torch.amin(x, dim=0), dims=(0,)),
    row("nan-propagates", "amin", [lit([[1.0, NAN, -3.0], [2.0, 0.5, 4.0]])],
        lambda x: torch.amin(x, dim=1), dims=(1,)),
    row("0d", "amin", [lit(-2.0)], lambda x: torch.amin(x, dim=0), dims=(0,)),
    row("f32-dim1", "argmax", [distinct(3, 7)], lambda x: torch.argmax(x, 1), dim=1),
    row("keepdim-neg", "argmax", [distinct(2, 3, 4)], lambda x: torch.argmax(x, -1, keepdim=True),
        dim=-1, keepdim=True),
    row("flat", "argmax", [distinct(3, 4)], torch.argmax),
    row("flat-keepdim", "argmax", [distinct(3, 4)], lambda x: torch.argmax(x, keepdim=True),
        keepdim=True),
    row("i64-ties-first", "argmax", [i64(4, 9, lo=0, hi=3)], lambda x: torch.argmax(x, 1), dim=1),
    row("nan-wins", "argmax", [lit([[1.0, NAN, 5.0, NAN], [2.0, 3.0, 1.0, 0.0]])],
        lambda x: torch.argmax(x, 1), dim=1),
    row("f16", "argmax", [distinct(5, 3, dtype=torch.float16)], lambda x: torch.argmax(x, 0),
        dim=0),
    row("u8", "argmax", [lit([3, 250, 7, 250], torch.uint8)], lambda x: torch.argmax(x, 0), dim=0),
    row("0d", "argmax", [lit(1.5)], lambda x: torch.argmax(x, 0), dim=0),
    row("f32-dim0", "argmin", [distinct(6, 4)], lambda x: torch.argmin(x, 0), dim=0),
    row("flat-keepdim", "argmin", [distinct(2, 3, 2)], lambda x: torch.argmin(x, keepdim=True),
        keepdim=True),
    row("i32-ties-first", "argmin", [i32(3, 8, lo=0, hi=3)], lambda x: torch.argmin(x, -1),
        dim=-1),
    row("nan-wins", "argmin", [lit([[1.0, -2.0, NAN, NAN], [2.0, 3.0, -1.0, 0.0]])],
        lambda x: torch.argmin(x, 1, keepdim=True), dim=1, keepdim=True),
    row("largest-last-dim", "topk", [distinct(4, 9)], lambda x: torch.topk(x, 3), k=3),
    row("smallest-dim0", "topk", [distinct(6, 4)],
        lambda x: torch.topk(x, 2, dim=0, largest=False), k=2, dim=0, largest=False),
    row("k-is-size-sort-descending", "topk", [distinct(3, 5)],
        lambda x: torch.sort(x, 1, descending=True), k=5, dim=1),
    row("k-is-size-sort", "topk", [distinct(2, 3, 4)], lambda x: torch.sort(x, 1), k=3, dim=1,
        largest=False),
    row("k0", "topk", [distinct(3, 5)], lambda x: torch.topk(x, 0), k=0),
    row("i64-smallest", "topk", [distinct(2, 7, dtype=torch.int64)],
        lambda x: torch.topk(x, 4, largest=False), k=4, largest=False),
    row("i64-extremes", "topk", [lit([[-(2**63), 5, 2**63 - 1, 0]], torch.int64)],
        lambda x: torch.topk(x, 3), k=3),
    row("u8", "topk", [lit([[3, 250, 0, 7]], torch.uint8)], lambda x: torch.topk(x, 2), k=2),
    row("f16", "topk", [distinct(3, 8, dtype=torch.float16)], lambda x: torch.topk(x, 2), k=2),
    row("nan-above-all", "topk", [lit([[1.0, NAN, 5.0, 2.0], [0.5, -1.0, 3.0, 9.0]])],
        lambda x: torch.topk(x, 2), k=2),
    row("nan-last-smallest", "topk", [lit([[1.0, NAN, 5.0, 2.0]])],
        lambda x: torch.topk(x, 4, largest=False), k=4, largest=False),
    row("ties-stable-descending", "topk", [lit([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0]])],
        _stable_sort_head(4, 1, True), k=4, dim=1),
    row("ties-stable-ascending", "topk", [i64(3, 10, lo=0, hi=3)], _stable_sort_head(10, 1, False),
        k=10, dim=1, largest=False),
    row("bool-sort", "topk", [boolean(3, 6)], _stable_sort_head(6, 1, True), k=6, dim=1),
    row("0d", "topk", [lit(2.5)], lambda x: torch.topk(x, 1), k=1),
    row("empty-other-dim", "topk", [f32(0, 5)], lambda x: torch.topk(x, 2), k=2),
    row("f32-dim1", "cumsum", [f32(2, 5, 3)], lambda x: torch.cumsum(x, 1), dim=1),
    row("f32-neg", "cumsum", [f32(2, 3, 6)], lambda x: torch.cumsum(x, -1), dim=-1),
    row("bool-gives-i64", "cumsum", [boolean(2, 7)], lambda x: torch.cumsum(x, 1), dim=1),
    row("i32-gives-i64", "cumsum", [i32(3, 4)], lambda x: torch.cumsum(x, 0), dim=0),
    row("i64", "cumsum", [i64(9)], lambda x: torch.cumsum(x, 0), dim=0),
    row("f16", "cumsum", [f16(3, 8, lo=0, hi=1)], lambda x: torch.cumsum(x, -1), dim=-1),
    row("bool-dtype-f32", "cumsum", [boolean(2, 6)],
        lambda x: torch.cumsum(x, 1, dtype=torch.float32), dim=1, dtype="f32"),
    row("i64-dtype-i32", "cumsum", [i64(2, 6)], lambda x: torch.cumsum(x, -1, dtype=torch.int32),
        dim=-1, dtype="i32"),
    row("f32-dtype-f64", "cumsum", [f32(4, 3)], lambda x: torch.cumsum(x, 0, dtype=torch.float64),
        dim=0, dtype="f64"),
    row("0d", "cumsum", [lit(2.5)], lambda x: torch.cumsum(x, 0), dim=0),
    row("empty", "cumsum", [f32(0, 3)], lambda x: torch.cumsum(x, 0), dim=0),
    row("0d", "softmax", [lit(3.0)], lambda x: torch.softmax(x, 0), dim=0),
    row("neg", "softmax", [f32(2, 3, 5, lo=-5, hi=5)], lambda x: torch.softmax(x, -1), dim=-1),
    row("dim1", "softmax", [f32(2, 3, 5, lo=-5, hi=5)], lambda x: torch.softmax(x, 1), dim=1),
    row("f16", "softmax", [f16(3, 6, lo=-5, hi=5)], lambda x: torch.softmax(x, -1), dim=-1),
    row("neg", "log_softmax", [f32(2, 7, lo=-5, hi=5)], lambda x: F.log_softmax(x, -1), dim=-1),
    row("dim0", "log_softmax", [f32(4, 3, lo=-5, hi=5)], lambda x: F.log_softmax(x, 0), dim=0),
    row("2d", "batch_norm",
        [f32(4, 3), f32(3), f32(3), f32(3), f32(3, lo=0.1, hi=2)],
        lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=False, eps=1e-5)),
    row("4d-batch1-eps", "batch_norm",
        [f32(1, 3, 5, 5), f32(3), f32(3), f32(3), f32(3, lo=0.1, hi=2)],
        lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=False, eps=1e-3),
        eps=1e-3),
    row("1-dim", "layer_norm", [f32(2, 5, 8), f32(8), f32(8)],
        lambda x, w, b: F.layer_norm(x, (8,), w, b, eps=1e-5)),
    row("2-dims-eps", "layer_norm", [f32(2, 3, 4, 5), f32(4, 5), f32(4, 5)],
        lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-6), eps=1e-6),
    # --- compute ------------------------------------------------------------------------------
    row("3x3-pad1", "conv2d", [f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4)],
        lambda x, w, b: F.conv2d(x, w, b, padding=1), padding=(1, 1)),
    row("stride2-pad1-groups2", "conv2d", [f32(2, 4, 7, 7), f32(6, 2, 3, 3), f32(6)],
        lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
        stride=(2, 2), padding=(1, 1), groups=2),
    row("nonsquare-kernel-batch1", "conv2d", [f32(1, 3, 6, 5), f32(2, 3, 3, 1), f32(2)],
        lambda x, w, b: F.conv2d(x, w, b, padding=(1, 0)), padding=(1, 0)),
    row("nonsquare-stride", "conv2d", [f32(2, 2, 7, 6), f32(3, 2, 2, 3), f32(3)],
        lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(0, 1)),
        stride=(2, 1), padding=(0, 1)),
    row("dilation2", "conv2d", [f32(1, 2, 9, 8), f32(3, 2, 3, 3), f32(3)],
        lambda x, w, b: F.conv2d(x, w, b, padding=2, dilation=2),
        padding=(2, 2), dilation=(2, 2)),
    row("nonsquare-dilation", "conv2d", [f32(1, 2, 9, 8), f32(3, 2, 2, 3), f32(3)],
        lambda x, w, b: F.conv2d(x, w, b, dilation=(3, 1)), dilation=(3, 1)),
    row("depthwise", "conv2d", [f32(2, 4, 6, 6), f32(4, 1, 3, 3), f32(4)],
        lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4), padding=(1, 1), groups=4),
    row("depthwise-multiplier2-stride2", "conv2d", [f32(1, 3, 7, 7), f32(6, 1, 3, 3), f32(6)],
        lambda x, w, b: F.conv2d(x, w, b, stride=2, groups=3), stride=(2, 2), groups=3),
    row("no-bias", "conv2d", [f32(2, 3, 5, 5), f32(4, 3, 1, 1)], lambda x, w: F.conv2d(x, w)),
    row("no-bias-groups-stride2", "conv2d", [f32(1, 6, 8, 8), f32(9, 2, 3, 3)],
        lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=3),
        stride=(2, 2), padding=(1, 1), groups=3),
    row("bias", "linear", [f32(4, 5), f32(3, 5), f32(3)], F.linear),
    row("no-bias-3d", "linear", [f32(2, 4, 5), f32(3, 5)], F.linear),
    row("1d-input", "linear", [f32(5), f32(3, 5), f32(3)], F.linear),
    row("batch1", "linear", [f32(1, 8), f32(2, 8), f32(2)], F.linear),
    row("2d-2d", "matmul", [f32(3, 4), f32(4, 5)], torch.matmul),
    row("1d-2d", "matmul", [f32(4), f32(4, 5)], torch.matmul),
    row("2d-1d", "matmul", [f32(3, 4), f32(4)], torch.matmul),
    row("1d-1d", "matmul", [f32(4), f32(4)], torch.matmul),
    row("batch-broadcast", "matmul", [f32(2, 1, 3, 4), f32(5, 4, 2)], torch.matmul),
    row("3d-1d", "matmul", [f32(2, 3, 4), f32(4)], torch.matmul),
    row("1d-3d", "matmul", [f32(4), f32(2, 4, 3)], torch.matmul),
    row("i64", "matmul", [i64(2, 3), i64(3, 2)], torch.matmul),
    row("no-mask", "scaled_dot_product_attention", [f32(2, 3, 5, 8), f32(2, 3, 7, 8),
                                                    f32(2, 3, 7, 4)],
        F.scaled_dot_product_attention),
    row("bool-mask", "scaled_dot_product_attention",
        [f32(2, 3, 5, 8), f32(2, 3, 7, 8), f32(2, 3, 7, 8), custom(_attention_mask)],
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    row("float-mask", "scaled_dot_product_attention",
        [f32(2, 5, 8), f32(2, 7, 8), f32(2, 7, 6), f32(2, 1, 7, lo=-3, hi=0)],
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    row("causal", "scaled_dot_product_attention", [f32(1, 2, 6, 4), f32(1, 2, 6, 4),
                                                   f32(1, 2, 6, 4)],
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        is_causal=True),
    row("scale", "scaled_dot_product_attention", [f32(2, 4, 8), f32(2, 6, 8), f32(2, 6, 8)],
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), scale=0.3),
    row("batch-broadcast", "scaled_dot_product_attention",
        [f32(2, 3, 4, 8), f32(1, 3, 5, 8), f32(1, 3, 5, 8)],
        F.scaled_dot_product_attention),
    row("bool-mask-row-attends-nothing", "scaled_dot_product_attention",
        [f32(2, 4, 8), f32(2, 6, 8), f32(2, 6, 8),
         lit([[True] * 6, [False] * 6, [True, False] * 3, [False] * 5 + [True]], torch.bool)],
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    row("float-mask-row-all-neg-inf", "scaled_dot_product_attention",
        [f32(1, 3, 4), f32(1, 5, 4), f32(1, 5, 4),
         lit([[0.0] * 5, [float("-inf")] * 5, [-1.0, float("-inf"), 0.5, 0.0, -2.0]])],
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    row("i64-2d", "embedding", [f32(10, 4), i64(2, 3, lo=0, hi=10)],
        lambda w, i: F.embedding(i, w)),
    row("i64-1d", "embedding", [f32(6, 3), lit([5, 0, 0, 2], torch.int64)],
        lambda w, i: F.embedding(i, w)),
    row("dim1", "gather",
        [f32(3, 5), custom(lambda g: _gather_index(g, (3, 4), 5))],
        lambda x, i: torch.gather(x, 1, i), dim=1),
    row("dim-neg", "gather",
        [f32(2, 3, 4), custom(lambda g: _gather_index(g, (2, 2, 6), 4))],
        lambda x, i: torch.gather(x, -1, i), dim=-1),
    row("dim0-i64", "gather",
        [i64(4, 3), custom(lambda g: _gather_index(g, (2, 3), 4))],
        lambda x, i: torch.gather(x, 0, i), dim=0),
    row("0d", "gather", [lit(1.5), lit(0, torch.int64)], lambda x, i: torch.gather(x, 0, i),
        dim=0),
    row("last-dim-wraps", "index", [f32(2, 3, 4), lit([0, -1, 2, -4, 3], torch.int64)],
        lambda x, i: aten.index.Tensor(x, [None, None, i]), dim=2),
    row("neg-dim", "index", [f32(2, 3, 4), lit([2, 0], torch.int64)],
        lambda x, i: aten.index.Tensor(x, [None, None, i]), dim=-1),
    row("2d-index-dim1", "index", [f32(3, 5, 2), custom(lambda g: _gather_index(g, (2, 4), 5))],
        lambda x, i: aten.index.Tensor(x, [None, i]), dim=1),
    row("dim0-i32-index", "index", [i64(4, 3), lit([3, -1, 0, 0], torch.int32)],
        lambda x, i: aten.index.Tensor(x, [i]), dim=0),
    row("0d-index", "index", [f32(2, 3, 4), lit(-2, torch.int64)],
        lambda x, i: aten.index.Tensor(x, [None, i]), dim=1),
    row("empty-index", "index", [f32(2, 3), lit([], torch.int64)],
        lambda x, i: aten.index.Tensor(x, [None, i]), dim=1),
    row("bool-data", "index", [boolean(3, 4), lit([1, 1, -3], torch.int64)],
        lambda x, i: aten.index.Tensor(x, [i]), dim=0),
    row("two-broadcast-mask-lookup", "index",
        [boolean(2, 16), lit([[[[0]]], [[[1]]]], torch.int64),
         custom(lambda g: torch.arange(16).reshape(1, 1, 1, 16))],
        lambda x, b, k: aten.index.Tensor(x, [b, k]), dim=0),
    row("two-after-slice-i32-i64", "index",
        [f32(2, 3, 4), lit([[0], [-1]], torch.int32), lit([-1, 2, 0], torch.int64)],
        lambda x, i, j: aten.index.Tensor(x, [None, i, j]), dim=1),
    row("two-0d-indices", "index", [i64(3, 4), lit(2, torch.int64), lit(-4, torch.int64)],
        lambda x, i, j: aten.index.Tensor(x, [i, j]), dim=0),
    row("sum-empty-bags", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 0, 3, 3, 7)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="sum"), mode="sum"),
    row("mean-empty-bags", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 0, 3, 3, 7)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="mean"), mode="mean"),
    row("max-empty-bags", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 3, 3, 7)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="max"), mode="max"),
    row("sum-per-sample-weights", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 2, 5), f32(7)],
        lambda w, i, o, p: F.embedding_bag(i, w, o, mode="sum", per_sample_weights=p),
        mode="sum"),
    row("include-last-offset", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 2, 5, 7)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="mean", include_last_offset=True),
        mode="mean", include_last_offset=True),
    row("include-last-offset-short", "embedding_bag", [f32(6, 3), _WORDS, _bag(0, 2, 4)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="sum", include_last_offset=True),
        mode="sum", include_last_offset=True),
    row("padding-mean", "embedding_bag", [f32(6, 3), _PADDED, _bag(0, 2, 3, 5)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="mean", padding_idx=2), mode="mean",
        padding_idx=2),
    row("padding-max", "embedding_bag", [f32(6, 3), _PADDED, _bag(0, 2, 3, 5)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="max", padding_idx=2), mode="max",
        padding_idx=2),
    row("padding-sum-weights", "embedding_bag", [f32(6, 3), _PADDED, _bag(0, 2, 3, 5), f32(7)],
        lambda w, i, o, p: F.embedding_bag(i, w, o, mode="sum", per_sample_weights=p,
                                           padding_idx=2), mode="sum", padding_idx=2),
    row("i32-indices-i64-offsets", "embedding_bag",
        [f32(6, 3), lit([5, 0, 3, 3], torch.int32), _bag(0, 1)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="sum"), mode="sum"),
    row("f64-max", "embedding_bag", [f64(6, 3), _WORDS, _bag(0, 4)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="max"), mode="max"),
    row("f16-mean", "embedding_bag", [f16(6, 3), _WORDS, _bag(0, 4, 4)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="mean"), mode="mean"),
    row("no-bags", "embedding_bag", [f32(6, 3), _WORDS, lit([], torch.int64)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="sum"), mode="sum"),
    row("no-indices", "embedding_bag", [f32(6, 3), lit([], torch.int64), _bag(0, 0)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="max"), mode="max"),
    row("max-nan-only-as-first-row", "embedding_bag",
        [lit([[NAN, 1.0], [2.0, NAN], [0.5, 0.5]]), _bag(0, 1, 2, 1), _bag(0, 2)],
        lambda w, i, o: F.embedding_bag(i, w, o, mode="max"), mode="max"),
    # --- storage order (layout-nhwc): the same values ---------------------------------------
    row("nhwc", "memory_format", [f32(2, 3, 4, 5)], lambda x: x.clone(), layout="nhwc"),
    row("nchw-i64", "memory_format", [i64(1, 2, 3, 1)], lambda x: x.clone(), layout="nchw"),
    # --- pooling ----------------------------------------------------------------------------
    row("k2s2", "max_pool2d", [f32(2, 3, 6, 6)], lambda x: F.max_pool2d(x, 2, 2),
        kernel=(2, 2), stride=(2, 2)),
    row("k3s2-pad1-batch1", "max_pool2d", [f32(1, 2, 7, 7)],
        lambda x: F.max_pool2d(x, 3, 2, padding=1), kernel=(3, 3), stride=(2, 2),
        padding=(1, 1)),
    row("ceil", "max_pool2d", [f32(1, 2, 6, 6)], lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
        kernel=(3, 3), stride=(2, 2), ceil_mode=True),
    row("ceil-pad", "max_pool2d", [f32(2, 1, 6, 7)],
        lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True),
    row("ceil-kernel-beyond-input", "max_pool2d", [f32(1, 2, 5, 2)],
        lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), kernel=(3, 3), stride=(2, 2),
        ceil_mode=True),
    row("nonsquare", "max_pool2d", [f32(1, 2, 7, 6)],
        lambda x: F.max_pool2d(x, (3, 2), (2, 1), padding=(1, 0)),
        kernel=(3, 2), stride=(2, 1), padding=(1, 0)),
    row("dilation", "max_pool2d", [f32(1, 2, 9, 9)],
        lambda x: F.max_pool2d(x, 3, 1, padding=1, dilation=2),
        kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(2, 2)),
    row("k2s2", "avg_pool2d", [f32(2, 3, 6, 6)], lambda x: F.avg_pool2d(x, 2, 2),
        kernel=(2, 2), stride=(2, 2)),
    row("pad-include", "avg_pool2d", [f32(1, 2, 7, 7)],
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=True),
    row("pad-exclude", "avg_pool2d", [f32(1, 2, 7, 7)],
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False),
    row("ceil-include", "avg_pool2d", [f32(1, 2, 6, 6)],
        lambda x: F.avg_pool2d(x, 3, 2, ceil_mode=True, count_include_pad=True),
        kernel=(3, 3), stride=(2, 2), ceil_mode=True, count_include_pad=True),
    row("ceil-pad-include", "avg_pool2d", [f32(2, 1, 6, 7)],
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=True),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=True),
    row("ceil-pad-exclude", "avg_pool2d", [f32(2, 1, 6, 7)],
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False),
    row("ceil-kernel-beyond-input", "avg_pool2d", [f32(1, 2, 2, 5)],
        lambda x: F.avg_pool2d(x, (3, 3), (3, 2), padding=(1, 0), ceil_mode=True),
        kernel=(3, 3), stride=(3, 2), padding=(1, 0), ceil_mode=True),
    row("divisor-override", "avg_pool2d", [f32(1, 2, 7, 7)],
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, divisor_override=4),
        kernel=(3, 3), stride=(2, 2), padding=(1, 1), divisor_override=4),
    row("nonsquare", "avg_pool2d", [f32(1, 2, 7, 6)],
        lambda x: F.avg_pool2d(x, (3, 2), (1, 2), padding=(1, 1)),
        kernel=(3, 2), stride=(1, 2), padding=(1, 1)),
    row("7x5-to-3x2", "adaptive_avg_pool2d", [f32(2, 3, 7, 5)],
        lambda x: F.adaptive_avg_pool2d(x, (3, 2)), output_size=(3, 2)),
    row("global-batch1", "adaptive_avg_pool2d", [f32(1, 4, 6, 6)],
        lambda x: F.adaptive_avg_pool2d(x, 1), output_size=(1, 1)),
    row("upsample-3x3-to-5x4", "adaptive_avg_pool2d", [f32(1, 2, 3, 3)],
        lambda x: F.adaptive_avg_pool2d(x, (5, 4)), output_size=(5, 4)),
    # --- layout -------------------------------------------------------------------------------
    row("minus1", "reshape", [f32(2, 3, 4)], lambda x: x.reshape(-1, 4), shape=(-1, 4)),
    row("minus1-middle", "reshape", [i64(2, 3, 4)], lambda x: x.reshape(2, -1, 2),
        shape=(2, -1, 2)),
    row("to-0d", "reshape", [f32(1, 1)], lambda x: x.reshape(()), shape=()),
    row("flatten", "reshape", [f32(2, 3, 4)], lambda x: torch.flatten(x, 1), shape=(2, 12)),
    row("pos", "permute", [f32(2, 3, 4)], lambda x: x.permute(2, 0, 1), dims=(2, 0, 1)),
    row("neg", "permute", [f32(2, 3, 4, 5)], lambda x: x.permute(-1, 0, -2, 1),
        dims=(-1, 0, -2, 1)),
    row("dim0-three", "cat", [f32(2, 3), f32(1, 3), f32(4, 3)], lambda *xs: torch.cat(xs, 0),
        dim=0),
    row("dim-neg", "cat", [f32(2, 3, 1), f32(2, 3, 4)], lambda *xs: torch.cat(xs, -1), dim=-1),
    row("mixed-i64-f32", "cat", [i64(2, 3), f32(2, 2)], lambda *xs: torch.cat(xs, 1), dim=1),
    row("single", "cat", [f32(2, 3)], lambda x: torch.cat([x], 0), dim=0),
    row("dim1", "split", [f32(2, 5, 3)], lambda x: torch.split(x, [2, 3], 1), sizes=(2, 3),
        dim=1),
    row("dim-neg", "split", [i64(3, 4)], lambda x: torch.split(x, [1, 1, 2], -1),
        sizes=(1, 1, 2), dim=-1),
    row("one-piece", "split", [f32(4, 2)], lambda x: torch.split(x, [4], 0), sizes=(4,), dim=0),
    row("neg-start-big-end-step2", "slice", [f32(3, 10)], lambda x: x[:, -7:100:2],
        dim=1, start=-7, end=100, step=2),
    row("dim-neg", "slice", [f32(2, 3, 8)], lambda x: x[..., 1:-1], dim=-1, start=1, end=-1),
    row("dim0-step3", "slice", [i64(9, 2)], lambda x: x[2:9:3], dim=0, start=2, end=9, step=3),
    row("empty", "slice", [f32(4, 5)], lambda x: x[:, 4:2], dim=1, start=4, end=2),
    row("dim0", "select", [f32(3, 4)], lambda x: torch.select(x, 0, 1), dim=0, index=1),
    row("neg-dim-neg-index", "select", [f32(2, 3, 4)], lambda x: torch.select(x, -1, -1),
        dim=-1, index=-1),
    row("dim1-neg-index", "select", [i64(2, 5)], lambda x: x[:, -3], dim=1, index=-3),
    row("dim0", "unsqueeze", [f32(3, 4)], lambda x: x.unsqueeze(0), dim=0),
    row("dim-neg1", "unsqueeze", [f32(3, 4)], lambda x: x.unsqueeze(-1), dim=-1),
    row("dim-neg2", "unsqueeze", [f32(3, 4)], lambda x: x.unsqueeze(-2), dim=-2),
    row("0d", "unsqueeze", [lit(3.0)], lambda x: x.unsqueeze(0), dim=0),
    row("size1", "squeeze", [f32(2, 1, 3)], lambda x: x.squeeze(1), dims=(1,)),
    row("not-1-noop", "squeeze", [f32(2, 1, 3)], lambda x: x.squeeze(0), dims=(0,)),
    row("several-neg", "squeeze", [f32(1, 3, 1, 1)], lambda x: x.squeeze((0, -1, -3)),
        dims=(0, -1, -3)),
    row("0d", "squeeze", [lit(2.0)], lambda x: x.squeeze(0), dims=(0,)),
    row("new-dims", "expand", [f32(2, 1, 3)], lambda x: x.expand(2, 4, 3), shape=(2, 4, 3)),
    row("minus1", "expand", [f32(3, 1)], lambda x: x.expand(2, -1, 4), shape=(2, -1, 4)),
    row("0d", "expand", [lit(1.5)], lambda x: x.expand(2, 3), shape=(2, 3)),
    row("i64-minus1", "expand", [i64(1, 4)], lambda x: x.expand(3, -1), shape=(3, -1)),
    row("tf-same-0101", "pad", [f32(1, 3, 5, 5)], lambda x: F.pad(x, (0, 1, 0, 1)),
        pads=(0, 1, 0, 1)),
    row("zero-size", "pad", [f32(2, 3)], lambda x: F.pad(x, (0, 0)), pads=(0, 0)),
    row("no-pads-0d", "pad", [lit(1.5)], lambda x: F.pad(x, ()), pads=()),
    row("value-every-dim", "pad", [f32(2, 3, 2)], lambda x: F.pad(x, (1, 0, 0, 2, 3, 1), value=2.5),
        pads=(1, 0, 0, 2, 3, 1), value=2.5),
    row("i64-fractional-value", "pad", [i64(2, 3)], lambda x: F.pad(x, (1, 2), value=-2.7),
        pads=(1, 2), value=-2.7),
    row("bool-value", "pad", [boolean(2, 3)], lambda x: F.pad(x, (1, 1, 1, 0), value=1.0),
        pads=(1, 1, 1, 0), value=1.0),
    row("f16-neg-inf", "pad", [f16(2, 3)], lambda x: F.pad(x, (2, 1), value=float("-inf")),
        pads=(2, 1), value=float("-inf")),
    row("empty-dim", "pad", [f32(0, 3)], lambda x: F.pad(x, (1, 1, 2, 0)), pads=(1, 1, 2, 0)),
    row("reflect-1d", "pad", [f32(2, 3, 5)], lambda x: F.pad(x, (2, 4), mode="reflect"),
        pads=(2, 4), mode="reflect"),
    row("reflect-2d", "pad", [f32(1, 2, 4, 5)], lambda x: F.pad(x, (1, 2, 3, 0), mode="reflect"),
        pads=(1, 2, 3, 0), mode="reflect"),
    row("reflect-3d-unbatched", "pad", [f32(2, 3, 4, 5)],
        lambda x: F.pad(x, (1, 1, 2, 2, 0, 1), mode="reflect"), pads=(1, 1, 2, 2, 0, 1),
        mode="reflect"),
    row("reflect-i64-size1-zero-pad", "pad", [i64(2, 4, 1)],
        lambda x: F.pad(x, (0, 0, 3, 1), mode="reflect"), pads=(0, 0, 3, 1), mode="reflect"),
    row("replicate-past-size", "pad", [f32(3, 2)], lambda x: F.pad(x, (4, 1), mode="replicate"),
        pads=(4, 1), mode="replicate"),
    row("replicate-2d-empty-batch", "pad", [f32(0, 2, 3, 4)],
        lambda x: F.pad(x, (1, 1, 2, 0), mode="replicate"), pads=(1, 1, 2, 0), mode="replicate"),
    row("replicate-3d-f16", "pad", [f16(1, 2, 2, 3, 4)],
        lambda x: F.pad(x, (1, 0, 0, 1, 2, 2), mode="replicate"), pads=(1, 0, 0, 1, 2, 2),
        mode="replicate"),
    # --- sources ------------------------------------------------------------------------------
    row("f32", "arange", [], lambda: torch.arange(0.5, 3.2, 0.3, dtype=torch.float32),
        start=0.5, end=3.2, step=0.3, dtype="f32"),
    row("i64", "arange", [], lambda: torch.arange(2, 11, 3, dtype=torch.int64),
        start=2.0, end=11.0, step=3.0, dtype="i64"),
    row("i64-end-only", "arange", [], lambda: torch.arange(5), start=0.0, end=5.0, dtype="i64"),
    row("f32-neg-step", "arange", [], lambda: torch.arange(5.0, 0.0, -1.5), start=5.0, end=0.0,
        step=-1.5, dtype="f32"),
    row("i64-fractional", "arange", [], lambda: torch.arange(-2.5, 2.0, 1.0, dtype=torch.int64),
        start=-2.5, end=2.0, step=1.0, dtype="i64"),
    row("i64-fractional-step", "arange", [],
        lambda: torch.arange(0.0, 7.0, 2.5, dtype=torch.int64), start=0.0, end=7.0, step=2.5,
        dtype="i64"),
    row("i32-fractional", "arange", [], lambda: torch.arange(0.9, 5.1, 1.5, dtype=torch.int32),
        start=0.9, end=5.1, step=1.5, dtype="i32"),
    row("i32-fractional-neg-step", "arange", [],
        lambda: torch.arange(5.5, 0.0, -1.0, dtype=torch.int32), start=5.5, end=0.0, step=-1.0,
        dtype="i32"),
    row("f16", "arange", [], lambda: torch.arange(0.0, 1.0, 0.1, dtype=torch.float16),
        start=0.0, end=1.0, step=0.1, dtype="f16"),
    row("f32", "full", [], lambda: torch.full((2, 3), 1.5), shape=(2, 3), value=1.5,
        dtype="f32"),
    row("i64", "full", [], lambda: torch.full((4,), 7, dtype=torch.int64), shape=(4,),
        value=7.0, dtype="i64"),
    row("f16-0d", "full", [], lambda: torch.full((), -2.25, dtype=torch.float16), shape=(),
        value=-2.25, dtype="f16"),
    row("bool", "full", [], lambda: torch.full((2, 2), True), shape=(2, 2), value=1.0,
        dtype="bool"),
    row("zeros", "full", [], lambda: torch.zeros(1, 3, 2), shape=(1, 3, 2), value=0.0,
        dtype="f32"),
    # --- fused (made by the fuse pass) -----------------------------------------------------------
    row("bias-residual-relu", "fused_conv2d", [f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4),
                                               f32(2, 4, 6, 6)],
        lambda x, w, b, r: torch.relu(F.conv2d(x, w, b, padding=1) + r), padding=(1, 1),
        has_bias=True, epilogue=({"op": "add", "operand": 3, "side": "right"}, {"op": "relu"})),
    row("depthwise-relu6-scale", "fused_conv2d", [f32(1, 4, 5, 5), f32(4, 1, 3, 3), f32(4, 1, 1)],
        lambda x, w, s: F.relu6(F.conv2d(x, w, stride=2, groups=4)) * s, stride=(2, 2),
        groups=4, has_bias=False,
        epilogue=({"op": "clamp", "attrs": {"min": 0.0, "max": 6.0}},
                  {"op": "mul", "operand": 2, "side": "right"})),
    row("gelu", "fused_linear", [f32(2, 5, 8), f32(6, 8), f32(6)],
        lambda x, w, b: F.gelu(F.linear(x, w, b)), has_bias=True,
        epilogue=({"op": "gelu", "attrs": {"approximate": "none"}},)),
    row("residual-left-sub-self-add", "fused_linear", [f32(3, 8), f32(8, 8), f32(3, 8)],
        lambda x, w, r: (r - F.linear(x, w)) + x, has_bias=False,
        epilogue=({"op": "sub", "operand": 2, "side": "left"},
                  {"op": "add", "operand": 0, "side": "right"})),
    row("no-epilogue", "fused_linear", [f32(4, 3), f32(2, 3), f32(2)], F.linear, has_bias=True),
    row("chain", "fused_elementwise", [f32(2, 3), f32(3)],
        lambda x, y: torch.sigmoid(x * y) - x,
        steps=({"op": "mul", "args": (0, 1)}, {"op": "sigmoid", "args": (2,)},
               {"op": "sub", "args": (3, 0)})),
    row("cast-i64-then-mul", "fused_elementwise", [f32(6, lo=-7, hi=7), lit(3, torch.int64)],
        lambda x, k: x.to(torch.int64) * k,
        steps=({"op": "cast", "args": (0,), "attrs": {"dtype": "i64"}},
               {"op": "mul", "args": (2, 1)})),
    row("compare-where", "fused_elementwise", [f32(4, 5), f32(4, 5)],
        lambda x, y: torch.where(x > y, x, y),
        steps=({"op": "gt", "args": (0, 1)}, {"op": "where", "args": (2, 0, 1)})),
]

ROW_IDS = [r.id for r in ROWS]


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _prepare(r: Row) -> tuple[list[torch.Tensor], list[torch.Tensor], Node, Graph]:
    gen = torch.Generator().manual_seed(zlib.crc32(r.id.encode()))
    inputs = [spec.make(gen) for spec in r.inputs]
    with torch.no_grad():
        expected = _as_list(r.oracle(*inputs))
    values = [Value(f"in{i}", TensorType(tuple(t.shape), dtypes.from_torch(t.dtype)))
              for i, t in enumerate(inputs)]
    node = ops.build_node(r.op, values, r.attrs, [f"out{i}" for i in range(len(expected))])
    return inputs, expected, node, Graph(tuple(values), (node,), node.outputs)


def assert_matches(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype
    assert tuple(got.shape) == tuple(expected.shape)
    if expected.dtype.is_floating_point:
        rtol, atol = TOLERANCES[expected.dtype]
        # a NaN where torch has one (a max or topk that must let NaN win) matches
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    else:
        assert torch.equal(got, expected), (got, expected)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


# ---------------------------------------------------------------------------------------------
# The table


def test_every_op_has_a_row():
    covered = {r.op for r in ROWS}
    # quantized ops have their own tables: tests/test_quant_ops.py (reference vs float64) and
    # tests/test_torch_int8.py (torch vs reference)
    quantized = {name for name, d in ops.OPS.items() if d.kind == "quant"} | {
        "qlinear", "qconv2d", "linear_int4"}
    missing = set(ops.OPS) - {"const", "torch_op"} - quantized - covered
    assert not missing, f"ops without a row: {sorted(missing)}"
    assert covered <= set(ops.OPS)


def test_row_ids_are_unique():
    assert len(set(ROW_IDS)) == len(ROW_IDS)


@pytest.mark.parametrize("r", ROWS, ids=ROW_IDS)
def test_inference_matches_torch(r: Row):
    _, expected, node, _ = _prepare(r)
    assert len(node.outputs) == len(expected)
    for v, e in zip(node.outputs, expected):
        assert v.type.shape == tuple(e.shape), (v.type, e.shape)
        assert v.type.dtype == dtypes.from_torch(e.dtype), (v.type, e.dtype)


@pytest.mark.parametrize("r", ROWS, ids=ROW_IDS)
def test_reference_matches_torch(r: Row):
    inputs, expected, _, graph = _prepare(r)
    got = run_reference(graph, [t.numpy() for t in inputs])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_matches(_from_numpy(g), e)


@pytest.mark.parametrize("r", ROWS, ids=ROW_IDS)
def test_torch_backend_matches_torch(r: Row):
    inputs, expected, _, graph = _prepare(r)
    got = TorchProgram(graph, CPU)(inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_matches(g, e)


# ---------------------------------------------------------------------------------------------
# const and torch_op


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array(3, dtype=np.int64),
    np.array([True, False]),
    np.array([0.5, -1.25], dtype=np.float16),
], ids=["f32", "i64-0d", "bool", "f16"])
def test_const(array: np.ndarray):
    node = ops.build_node("const", [], {"value": ConstData(array)}, ["c"])
    expected = torch.from_numpy(array.copy())
    assert node.output.type == TensorType(array.shape, dtypes.from_torch(expected.dtype))
    graph = Graph((), (node,), node.outputs)
    (ref_out,) = run_reference(graph, [])
    assert_matches(_from_numpy(ref_out), expected)
    (torch_out,) = TorchProgram(graph, CPU)([])
    assert_matches(torch_out, expected)


def test_const_with_elided_data_has_no_type():
    with pytest.raises(OpTypeError):
        ops.build_node("const", [], {"value": ConstData(None, digest="0" * 16)}, ["c"])


def test_torch_op():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((3, 4), generator=gen)
    x_value = Value("x", TensorType((3, 4), "f32"))
    attrs = {"target": "aten.cumsum.default", "args": ({"$input": 0}, -1),
             "kwargs": {"dtype": {"$dtype": "f64"}}}
    with pytest.raises(OpTypeError):  # types of an opaque op must be given
        ops.build_node("torch_op", [x_value], attrs, ["y"])
    full = ops.complete_attrs(ops.get("torch_op"), attrs)
    node = Node("torch_op", (x_value,), (Value("y", TensorType((3, 4), "f64")),), Attrs(full))
    graph = Graph((x_value,), (node,), node.outputs)
    expected = torch.cumsum(x, dim=-1, dtype=torch.float64)
    (ref_out,) = run_reference(graph, [x.numpy()])
    assert_matches(_from_numpy(ref_out), expected)
    (torch_out,) = TorchProgram(graph, CPU)([x])
    assert_matches(torch_out, expected)


# ---------------------------------------------------------------------------------------------
# Inference rejects bad inputs


def _t(*shape: int, dtype: str = "f32") -> TensorType:
    return TensorType(shape, dtype)


_IDS, _OFFS = _t(7, dtype="i64"), _t(2, dtype="i64")  # embedding_bag indices, offsets

REJECTED = [
    ("conv2d-channels-vs-weight", "conv2d", [_t(1, 4, 5, 5), _t(6, 3, 3, 3)], {}),
    ("conv2d-groups-vs-channels", "conv2d", [_t(1, 4, 5, 5), _t(6, 2, 3, 3)], {"groups": 3}),
    ("conv2d-groups-vs-out-channels", "conv2d", [_t(1, 4, 5, 5), _t(5, 2, 3, 3)],
     {"groups": 2}),
    ("conv2d-bias-shape", "conv2d", [_t(1, 3, 5, 5), _t(4, 3, 3, 3), _t(3)], {}),
    ("conv2d-kernel-too-big", "conv2d", [_t(1, 3, 2, 2), _t(4, 3, 3, 3)], {}),
    ("linear-k-mismatch", "linear", [_t(2, 5), _t(3, 4)], {}),
    ("linear-bias-shape", "linear", [_t(2, 4), _t(3, 4), _t(4)], {}),
    ("add-not-broadcastable", "add", [_t(2, 3), _t(4)], {}),
    ("mul-not-broadcastable", "mul", [_t(2, 3, 4), _t(3, 1, 5)], {}),
    ("where-cond-not-bool", "where", [_t(3), _t(3), _t(3)], {}),
    ("split-sizes-too-small", "split", [_t(3, 5)], {"sizes": (2, 2), "dim": 1}),
    ("split-sizes-too-big", "split", [_t(3, 5)], {"sizes": (2, 2), "dim": 0}),
    ("permute-repeat", "permute", [_t(2, 3, 4)], {"dims": (0, 0, 1)}),
    ("permute-repeat-neg", "permute", [_t(2, 3, 4)], {"dims": (2, -1, 0)}),
    ("permute-too-few", "permute", [_t(2, 3, 4)], {"dims": (1, 0)}),
    ("permute-out-of-range", "permute", [_t(2, 3, 4)], {"dims": (0, 1, 3)}),
    ("layer_norm-weight-vs-input", "layer_norm", [_t(2, 4), _t(5), _t(5)], {}),
    ("layer_norm-weight-vs-bias", "layer_norm", [_t(2, 4), _t(4), _t(2, 4)], {}),
    ("layer_norm-2d-weight", "layer_norm", [_t(2, 3, 4), _t(4, 3), _t(4, 3)], {}),
    ("batch_norm-param-shape", "batch_norm", [_t(2, 3, 4, 4), _t(3), _t(3), _t(4), _t(3)], {}),
    ("matmul-inner", "matmul", [_t(2, 3), _t(4, 2)], {}),
    ("matmul-batch", "matmul", [_t(2, 3, 4), _t(3, 4, 5)], {}),
    ("softmax-int", "softmax", [_t(2, 3, dtype="i64")], {"dim": 1}),
    ("softmax-dim-range", "softmax", [_t(2, 3)], {"dim": 2}),
    ("sum-dim-range", "sum", [_t(2, 3)], {"dims": (-3,)}),
    ("mean-int", "mean", [_t(2, 3, dtype="i64")], {"dims": (0,)}),
    ("cat-shapes", "cat", [_t(2, 3), _t(2, 4)], {"dim": 0}),
    ("cat-ranks", "cat", [_t(2, 3), _t(2, 3, 1)], {"dim": 0}),
    ("reshape-numel", "reshape", [_t(2, 3)], {"shape": (4, -1)}),
    ("reshape-two-minus1", "reshape", [_t(2, 3)], {"shape": (-1, -1)}),
    ("expand-incompatible", "expand", [_t(2, 3)], {"shape": (4, 3)}),
    ("expand-minus1-new-dim", "expand", [_t(3)], {"shape": (-1, 3)}),
    ("select-index-range", "select", [_t(2, 3)], {"dim": -1, "index": 3}),
    ("select-neg-index-range", "select", [_t(2, 3)], {"dim": 0, "index": -3}),
    ("unsqueeze-dim-range", "unsqueeze", [_t(2, 3)], {"dim": 3}),
    ("slice-step0", "slice", [_t(4)], {"dim": 0, "start": 0, "end": 4, "step": 0}),
    ("max_pool2d-padding", "max_pool2d", [_t(1, 1, 6, 6)],
     {"kernel": (2, 2), "stride": (2, 2), "padding": (2, 2)}),
    ("max_pool2d-kernel-beyond-input", "max_pool2d", [_t(1, 1, 2, 6)],
     {"kernel": (3, 3), "stride": (2, 2)}),
    ("avg_pool2d-int", "avg_pool2d", [_t(1, 1, 6, 6, dtype="i64")],
     {"kernel": (2, 2), "stride": (2, 2)}),
    ("arange-step-zero", "arange", [], {"start": 0.0, "end": 4.0, "step": 0.0, "dtype": "f32"}),
    ("arange-int-step-truncates-to-zero", "arange", [],
     {"start": 0.0, "end": 4.0, "step": 0.5, "dtype": "i64"}),
    ("sdpa-causal-and-mask", "scaled_dot_product_attention",
     [_t(1, 4, 8), _t(1, 4, 8), _t(1, 4, 8), _t(4, 4, dtype="bool")], {"is_causal": True}),
    ("sdpa-head-dims", "scaled_dot_product_attention", [_t(1, 4, 8), _t(1, 4, 6), _t(1, 4, 8)],
     {}),
    ("embedding-float-indices", "embedding", [_t(10, 4), _t(3)], {}),
    ("gather-index-larger", "gather", [_t(3, 4), _t(4, 2, dtype="i64")], {"dim": 1}),
    ("gather-rank", "gather", [_t(3, 4), _t(3, dtype="i64")], {"dim": 0}),
    ("gelu-int", "gelu", [_t(3, dtype="i64")], {}),
    ("conv2d-stride0", "conv2d", [_t(1, 3, 5, 5), _t(4, 3, 3, 3)], {"stride": (0, 1)}),
    ("conv2d-negative-padding", "conv2d", [_t(1, 3, 5, 5), _t(4, 3, 3, 3)], {"padding": (-1, 0)}),
    ("max_pool2d-kernel0", "max_pool2d", [_t(1, 1, 6, 6)], {"kernel": (0, 2), "stride": (1, 1)}),
    ("avg_pool2d-stride0", "avg_pool2d", [_t(1, 1, 6, 6)], {"kernel": (2, 2), "stride": (0, 2)}),
    ("avg_pool2d-divisor0", "avg_pool2d", [_t(1, 1, 6, 6)],
     {"kernel": (2, 2), "stride": (2, 2), "divisor_override": 0}),
    ("adaptive_avg_pool2d-negative", "adaptive_avg_pool2d", [_t(1, 1, 6, 6)],
     {"output_size": (-1, 2)}),
    ("cat-0d", "cat", [_t(), _t()], {"dim": 0}),
    ("split-0d", "split", [_t()], {"sizes": (1,), "dim": 0}),
    ("split-negative-size", "split", [_t(4)], {"sizes": (5, -1), "dim": 0}),
    ("slice-0d", "slice", [_t()], {"dim": 0, "start": 0, "end": 1}),
    ("select-0d", "select", [_t()], {"dim": -1, "index": 0}),
    ("full-negative-shape", "full", [], {"shape": (2, -1), "value": 0.0, "dtype": "f32"}),
    ("arange-infinite", "arange", [], {"start": 0.0, "end": float("inf"), "dtype": "f32"}),
    ("gelu-bad-approximate", "gelu", [_t(3)], {"approximate": "fast"}),
    ("conv2d-too-many-inputs", "conv2d", [_t(1, 3, 5, 5), _t(4, 3, 3, 3), _t(4), _t(4)], {}),
    ("add-unknown-attr", "add", [_t(3), _t(3)], {"alpha": 2}),
    ("split-missing-attr", "split", [_t(4)], {"sizes": (2, 2)}),
    ("bitwise_and-float", "bitwise_and", [_t(3), _t(3, dtype="bool")], {}),
    ("bitwise_or-f16", "bitwise_or", [_t(3, dtype="i64"), _t(dtype="f16")], {}),
    ("bitwise_xor-not-broadcastable", "bitwise_xor", [_t(3, dtype="bool"), _t(4, dtype="bool")],
     {}),
    ("bitwise_not-float", "bitwise_not", [_t(3)], {}),
    ("cumsum-dim-range", "cumsum", [_t(2, 3)], {"dim": 2}),
    ("cumsum-bad-dtype", "cumsum", [_t(2, 3)], {"dim": 0, "dtype": "f8"}),
    ("index-float-index", "index", [_t(3, 4), _t(2)], {"dim": 1}),
    ("index-bool-mask", "index", [_t(3, 4), _t(3, dtype="bool")], {"dim": 0}),
    ("index-u8-mask", "index", [_t(3, 4), _t(3, dtype="u8")], {"dim": 0}),
    ("index-i16-index", "index", [_t(3, 4), _t(3, dtype="i16")], {"dim": 0}),
    ("index-0d-input", "index", [_t(), _t(dtype="i64")], {"dim": 0}),
    ("index-dim-range", "index", [_t(3, 4), _t(2, dtype="i64")], {"dim": -3}),
    ("index-more-indices-than-dims", "index", [_t(3, 4), _t(2, dtype="i64"), _t(2, dtype="i64")],
     {"dim": 1}),
    ("index-indices-not-broadcastable", "index", [_t(3, 4), _t(2, dtype="i64"),
                                                  _t(3, dtype="i64")], {"dim": 0}),
    ("pad-odd-count", "pad", [_t(3, 4)], {"pads": (1,)}),
    ("pad-more-than-rank", "pad", [_t(3)], {"pads": (1, 1, 1, 1)}),
    ("pad-negative", "pad", [_t(3, 4)], {"pads": (-1, 0)}),
    ("pad-circular", "pad", [_t(2, 3, 4)], {"pads": (1, 1), "mode": "circular"}),
    ("pad-reflect-too-wide", "pad", [_t(2, 3, 4)], {"pads": (0, 4), "mode": "reflect"}),
    ("pad-reflect-rank", "pad", [_t(2, 3, 4, 5)], {"pads": (1, 1), "mode": "reflect"}),
    ("pad-replicate-1d-input", "pad", [_t(5)], {"pads": (1, 1), "mode": "replicate"}),
    ("pad-replicate-four-dims", "pad", [_t(1, 2, 3, 4, 5)], {"pads": (1,) * 8,
                                                              "mode": "replicate"}),
    ("pad-replicate-empty", "pad", [_t(2, 0, 4)], {"pads": (1, 1), "mode": "replicate"}),
    ("pad-reflect-bool", "pad", [_t(2, 3, dtype="bool")], {"pads": (1, 1), "mode": "reflect"}),
    ("pad-value-u8-negative", "pad", [_t(3, dtype="u8")], {"pads": (1, 1), "value": -1.0}),
    ("pad-value-i64-nan", "pad", [_t(3, dtype="i64")], {"pads": (1, 1), "value": float("nan")}),
    ("pad-value-f16-overflow", "pad", [_t(3, dtype="f16")], {"pads": (1, 1), "value": 1e6}),
    ("amin-dim-range", "amin", [_t(2, 3)], {"dims": (2,)}),
    ("argmax-bool", "argmax", [_t(3, dtype="bool")], {"dim": 0}),
    ("argmax-dim-range", "argmax", [_t(2, 3)], {"dim": 2}),
    ("argmax-empty-dim", "argmax", [_t(0, 3)], {"dim": 0}),
    ("argmin-flat-empty", "argmin", [_t(3, 0)], {}),
    ("topk-missing-k", "topk", [_t(3, 4)], {}),
    ("topk-k-too-big", "topk", [_t(3, 4)], {"k": 5}),
    ("topk-k-negative", "topk", [_t(3, 4)], {"k": -1}),
    ("topk-dim-range", "topk", [_t(3, 4)], {"k": 1, "dim": 2}),
    ("topk-0d-k0", "topk", [_t()], {"k": 0}),
    ("embedding_bag-bad-mode", "embedding_bag", [_t(10, 4), _IDS, _OFFS], {"mode": "min"}),
    ("embedding_bag-weights-with-mean", "embedding_bag", [_t(10, 4), _IDS, _OFFS, _t(7)],
     {"mode": "mean"}),
    ("embedding_bag-weights-shape", "embedding_bag", [_t(10, 4), _IDS, _OFFS, _t(6)],
     {"mode": "sum"}),
    ("embedding_bag-weights-dtype", "embedding_bag", [_t(10, 4), _IDS, _OFFS, _t(7, dtype="f64")],
     {"mode": "sum"}),
    ("embedding_bag-float-indices", "embedding_bag", [_t(10, 4), _t(7), _OFFS], {"mode": "sum"}),
    ("embedding_bag-2d-indices", "embedding_bag", [_t(10, 4), _t(2, 3, dtype="i64"), _OFFS],
     {"mode": "sum"}),
    ("embedding_bag-i16-offsets", "embedding_bag", [_t(10, 4), _IDS, _t(2, dtype="i16")],
     {"mode": "sum"}),
    ("embedding_bag-1d-weight", "embedding_bag", [_t(10), _IDS, _OFFS], {"mode": "sum"}),
    ("embedding_bag-int-weight", "embedding_bag", [_t(10, 4, dtype="i64"), _IDS, _OFFS],
     {"mode": "sum"}),
    ("embedding_bag-padding-range", "embedding_bag", [_t(10, 4), _IDS, _OFFS],
     {"mode": "sum", "padding_idx": 10}),
    ("embedding_bag-padding-negative", "embedding_bag", [_t(10, 4), _IDS, _OFFS],
     {"mode": "max", "padding_idx": -1}),
    ("embedding_bag-last-offset-without-offsets", "embedding_bag",
     [_t(10, 4), _IDS, _t(0, dtype="i64")], {"mode": "sum", "include_last_offset": True}),
]


@pytest.mark.parametrize("op, types, attrs", [r[1:] for r in REJECTED],
                         ids=[r[0] for r in REJECTED])
def test_inference_rejects(op: str, types: list[TensorType], attrs: dict[str, Any]):
    opdef = ops.get(op)
    with pytest.raises(OpTypeError):  # not build_node: a wrong count of names would also raise
        ops.infer_types(opdef, types, ops.complete_attrs(opdef, attrs))
