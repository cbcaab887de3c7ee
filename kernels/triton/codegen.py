"""Triton expressions for the registry's elementwise ops: one table, used by every generator.

GEMM and conv epilogues (`epilogue_lines`) and fused elementwise chains (`chain_lines`) are
written from the IR's steps with this table, so an op's Triton form is written once. Float math
runs in float32 and each step's result is rounded to the dtype the unfused graph holds there
(`fxforge.ops.stage_types`), as the numpy reference does. An op or attribute the table cannot
express (pow, a NaN bound, a non-float dtype where math is needed) makes `supports_*` say no, and
the node stays on the torch backend, listed in the report.

Only generated names appear in the output: values are `v<i>`, operands `e<i>`; numbers are
written with `repr(float)` (finite only; an infinite clamp bound is the literal `1e400`, which
Python reads as inf, since inf has no literal of its own).

Arguments are converted as the reference converts them: first to the step's result dtype (torch's
promotion: an f32 0-d scalar against an f16 tensor is rounded to f16 first), then widened to the
compute dtype (f32; f64 for f64 results). Comparisons and `where` convert to the promoted dtype of
the compared / selected operands; `cast` converts once, directly. Bool arithmetic is logical (torch
and numpy: True + True is True), so add / mul / maximum / minimum on bools are or / and.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fxforge import dtypes, ops
from fxforge.ir import TensorType

TL = {"f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16", "f64": "tl.float64",
      "i8": "tl.int8", "u8": "tl.uint8", "i16": "tl.int16", "i32": "tl.int32", "i64": "tl.int64",
      "bool": "tl.int1"}
_SQRT_HALF = repr(1.0 / math.sqrt(2.0))
_GELU_TANH_C = repr(math.sqrt(2.0 / math.pi))


def number(value: Any) -> str:
    """A finite number as Python source (never inf/nan, which have no literal)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"no literal for {value}")
    return repr(value)


def _tanh(a: str) -> str:
    # exp of a non-positive argument cannot overflow; the sign is put back after. Below 0.125,
    # 1 - exp(-2|a|) cancels, so the odd Taylor series to a**7 (relative error < 2e-9) is used.
    big = (f"tl.where({a} < 0, -1.0, 1.0) * (1.0 - tl.exp(-2.0 * tl.abs({a}))) / "
           f"(1.0 + tl.exp(-2.0 * tl.abs({a})))")
    a2 = f"({a} * {a})"
    small = (f"{a} * (1.0 + {a2} * (-0.3333333333333333 + {a2} * "
             f"(0.13333333333333333 - 0.05396825396825397 * {a2})))")
    return f"tl.where(tl.abs({a}) < 0.125, {small}, {big})"


def _bound(value: Any, integer: bool) -> str:
    """A clamp bound: an integer literal for an integer result (a float literal would make
    Triton compare, and select, in float32: inexact past 2**24), else a float one (inf: 1e400)."""
    if integer:
        return repr(int(value))
    value = float(value)
    return ("1e400" if value > 0 else "-1e400") if math.isinf(value) else number(value)


def _clamp(a: str, lo: Any, hi: Any, integer: bool = False) -> str:
    out = a
    if lo is not None and lo != -math.inf:
        out = f"tl.where({out} < {_bound(lo, integer)}, {_bound(lo, integer)}, {out})"
    if hi is not None and hi != math.inf:
        out = f"tl.where({out} > {_bound(hi, integer)}, {_bound(hi, integer)}, {out})"
    return out


def _gelu(a: str, approximate: str) -> str:
    if approximate == "tanh":
        # 0.5 * (1 + tanh(u)) == sigmoid(2u), without 1 + tanh(u) cancelling for u << 0
        inner = f"{_GELU_TANH_C} * ({a} + 0.044715 * {a} * {a} * {a})"
        return f"{a} * tl.sigmoid(2.0 * ({inner}))"
    return f"0.5 * {a} * (1.0 + tl.erf({a} * {_SQRT_HALF}))"


# op -> (expression builder(args, attrs), math: True when it computes in float32)
_FLOAT_MATH: dict[str, Callable[[Sequence[str], Mapping[str, Any]], str]] = {
    "sigmoid": lambda a, _: f"tl.sigmoid({a[0]})",
    "tanh": lambda a, _: _tanh(a[0]),
    "gelu": lambda a, at: _gelu(a[0], at["approximate"]),
    "silu": lambda a, _: f"{a[0]} * tl.sigmoid({a[0]})",
    "hardsigmoid": lambda a, _: f"({_clamp(f'({a[0]} + 3.0)', 0.0, 6.0)}) / 6.0",
    # x * (relu6(x + 3) / 6): dividing x * 6 instead overflows past float32's max / 6
    "hardswish": lambda a, _: f"{a[0]} * (({_clamp(f'({a[0]} + 3.0)', 0.0, 6.0)}) / 6.0)",
    "sqrt": lambda a, _: f"tl.sqrt_rn({a[0]})",
    "rsqrt": lambda a, _: f"1.0 / tl.sqrt_rn({a[0]})",
    "exp": lambda a, _: f"tl.exp({a[0]})",
    "log": lambda a, _: f"tl.log({a[0]})",
    "erf": lambda a, _: f"tl.erf({a[0]})",
    "div": lambda a, _: f"{a[0]} / {a[1]}",
}
_ANY = {
    "identity": lambda a, _: a[0],
    "dropout": lambda a, _: a[0],
    "relu": lambda a, _: f"tl.where({a[0]} < 0, 0, {a[0]})",
    "clamp": lambda a, at: _clamp(a[0], at["min"], at["max"]),
    "neg": lambda a, _: f"-{a[0]}",
    "abs": lambda a, _: f"tl.abs({a[0]})",
    "add": lambda a, _: f"{a[0]} + {a[1]}",
    "sub": lambda a, _: f"{a[0]} - {a[1]}",
    "mul": lambda a, _: f"{a[0]} * {a[1]}",
    "maximum": lambda a, _: f"tl.maximum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)",
    "minimum": lambda a, _: f"tl.minimum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)",
    "eq": lambda a, _: f"{a[0]} == {a[1]}",
    "ne": lambda a, _: f"{a[0]} != {a[1]}",
    "lt": lambda a, _: f"{a[0]} < {a[1]}",
    "le": lambda a, _: f"{a[0]} <= {a[1]}",
    "gt": lambda a, _: f"{a[0]} > {a[1]}",
    "ge": lambda a, _: f"{a[0]} >= {a[1]}",
    "where": lambda a, _: f"tl.where({a[0]}, {a[1]}, {a[2]})",
    "bitwise_and": lambda a, _: f"{a[0]} & {a[1]}",  # bool and integers only (the IR's check)
    "bitwise_or": lambda a, _: f"{a[0]} | {a[1]}",
    "bitwise_xor": lambda a, _: f"{a[0]} ^ {a[1]}",
    "bitwise_not": lambda a, _: f"~{a[0]}",
    "cast": lambda a, _: a[0],  # the conversion to the step's dtype follows every step
}
_COMPARE = frozenset(("eq", "ne", "lt", "le", "gt", "ge"))


_BOOL = {"identity": "{0}", "dropout": "{0}", "relu": "{0}", "abs": "{0}", "add": "{0} | {1}",
         "maximum": "{0} | {1}", "mul": "{0} & {1}", "minimum": "{0} & {1}",
         "bitwise_and": "{0} & {1}", "bitwise_or": "{0} | {1}", "bitwise_xor": "{0} ^ {1}",
         "bitwise_not": "{0} == 0"}


def step_refusal(op: str, attrs: Mapping[str, Any], in_types: Sequence[TensorType],
                 out_type: TensorType) -> str | None:
    """Why the table cannot write this step for its dtypes, or None when it can."""
    if out_type.dtype not in TL or any(t.dtype not in TL for t in in_types):
        return f"{op}: no Triton dtype for {[t.dtype for t in in_types]} -> {out_type.dtype}"
    if op not in _FLOAT_MATH and op not in _ANY:
        return f"{op}: no Triton form in the elementwise table"
    if op in _FLOAT_MATH and not dtypes.is_float(out_type.dtype):
        return f"{op}: float math with a {out_type.dtype} result"
    if out_type.dtype == "bool" and op not in _BOOL and op not in _COMPARE | {"where", "cast"}:
        return f"{op} on bool values (numpy and torch refuse it or give no bool)"
    if op == "clamp":
        bounds = [b for b in (attrs["min"], attrs["max"]) if b is not None]
        if any(math.isnan(float(b)) for b in bounds):
            return "clamp with a NaN bound"
        if not dtypes.is_float(out_type.dtype):
            info = np.iinfo(dtypes.to_numpy(out_type.dtype))
            if any(not info.min <= int(b) <= info.max for b in bounds):
                return f"clamp bound outside the range of {out_type.dtype}"
    return None


def supports_step(op: str, attrs: Mapping[str, Any], in_types: Sequence[TensorType],
                  out_type: TensorType) -> bool:
    """Whether the table can write this step exactly enough for its dtypes."""
    return step_refusal(op, attrs, in_types, out_type) is None


def _convert(arg: str, have: str, want: str) -> str:
    return arg if have == want else f"{arg}.to({TL[want]})"


def step_expression(op: str, attrs: Mapping[str, Any], args: Sequence[str],
                    in_types: Sequence[TensorType], out_type: TensorType) -> str:
    """One step as a Triton expression of the variables `args`, converted to the step's dtype.
    Arguments go to the result dtype first (torch's promotion), float math then runs in f32
    (f64 for an f64 result); comparisons and `where` work in the operands' promoted dtype."""
    out = out_type.dtype
    if op == "cast":
        return _convert(args[0], in_types[0].dtype, out)
    if op in _COMPARE or op == "where":
        lead = 1 if op == "where" else 0
        common = dtypes.promote([(t.dtype, len(t.shape)) for t in in_types[lead:]])
        # to the promoted dtype (an f32 0-d constant against f16 rounds to f16, as in torch);
        # ordered comparisons of bools as int8, of f16 / bf16 in f32 (exact)
        conv = [_convert(a, t.dtype, common) for a, t in zip(args[lead:], in_types[lead:])]
        if op != "where" and common in ("bool", "f16", "bf16"):
            wide = "i8" if common == "bool" else "f32"
            conv = [_convert(c, common, wide) for c in conv]
        expr = _ANY[op]([*args[:lead], *conv], attrs)
        return _convert(f"({expr})", common if op == "where" else "bool", out)
    if out == "bool":
        conv = [_convert(a, t.dtype, out) for a, t in zip(args, in_types)]
        return f"({_BOOL[op].format(*conv)})"
    compute = out if not dtypes.is_float(out) else "f64" if out == "f64" else "f32"
    conv = [_convert(_convert(a, t.dtype, out), out, compute) for a, t in zip(args, in_types)]
    if op == "clamp":
        expr = _clamp(conv[0], attrs["min"], attrs["max"], integer=not dtypes.is_float(out))
    else:
        expr = (_FLOAT_MATH if op in _FLOAT_MATH else _ANY)[op](conv, attrs)
    return f"({expr}).to({TL[out]})"


def step_attrs(step: Mapping) -> dict[str, Any]:
    """A step's attributes with the registry's defaults filled in."""
    return dict(ops.complete_attrs(ops.get(step["op"]), step.get("attrs", {})))


# --- epilogues of GEMM / conv kernels -----------------------------------------------------------


def supports_epilogue(node_inputs: Sequence[TensorType], epilogue: Sequence[Mapping],
                      stages: Sequence[TensorType]) -> bool:
    """Whether every step of a conv2d / linear epilogue has a Triton form."""
    for step, before, after in zip(epilogue, stages, stages[1:]):
        attrs = step_attrs(step)
        if "operand" in step:
            other = node_inputs[step["operand"]]
            ins = [before, other] if step["side"] == "right" else [other, before]
        else:
            ins = [before]
        if not supports_step(step["op"], attrs, ins, after):
            return False
    return True


def epilogue_lines(epilogue: Sequence[Mapping], stages: Sequence[TensorType],
                   node_inputs: Sequence[TensorType], acc: str, operand: Callable[[int], str],
                   indent: str = "    ") -> tuple[list[str], str]:
    """Source lines applying `epilogue` to the tile `acc` (of dtype stages[0]); `operand(i)` is
    the variable holding node input i's tile. Returns the lines and the result variable."""
    lines, current = [], acc
    for k, (step, before, after) in enumerate(zip(epilogue, stages, stages[1:])):
        attrs = step_attrs(step)
        if "operand" in step:
            other, other_t = operand(step["operand"]), node_inputs[step["operand"]]
            pair = ([current, other], [before, other_t]) if step["side"] == "right" else \
                ([other, current], [other_t, before])
        else:
            pair = ([current], [before])
        name = f"{acc}_s{k}"
        lines.append(f"{indent}{name} = {step_expression(step['op'], attrs, *pair, after)}")
        current = name
    return lines, current


# --- fused elementwise chains -------------------------------------------------------------------


def supports_chain(in_types: Sequence[TensorType], steps: Sequence[Mapping],
                   stages: Sequence[TensorType]) -> bool:
    values = list(in_types)
    for step, out in zip(steps, stages):
        attrs = step_attrs(step)
        if not supports_step(step["op"], attrs, [values[i] for i in step["args"]], out):
            return False
        values.append(out)
    return True


def chain_lines(inputs: Sequence[str], in_types: Sequence[TensorType], steps: Sequence[Mapping],
                stages: Sequence[TensorType], indent: str = "    ") -> tuple[list[str], str]:
    """Source lines computing a fused_elementwise chain from the tiles `inputs`; returns the
    lines and the variable of the last step (the node's result)."""
    names, types, lines = list(inputs), list(in_types), []
    for k, (step, out) in enumerate(zip(steps, stages)):
        attrs = step_attrs(step)
        args = [names[i] for i in step["args"]]
        arg_types = [types[i] for i in step["args"]]
        name = f"v{k}"
        lines.append(f"{indent}{name} = {step_expression(step['op'], attrs, args, arg_types, out)}")
        names.append(name)
        types.append(out)
    return lines, names[-1]


# --- what a GEMM / conv generator needs to know of its epilogue ------------------------------


@dataclass(frozen=True)
class Epilogue:
    """The float epilogue of a linear / conv node: its IR steps (operand indices count from the
    node's first input), the type after the base op and after each step (`stages`, from
    `fxforge.ops.stage_types`), and the types of all the node's inputs. `Epilogue.none(t)`: no
    steps. Generators take the operands' tiles as `e<i>` for node input i (`operand_name`)."""

    steps: tuple = ()
    stages: tuple[TensorType, ...] = ()
    node_inputs: tuple[TensorType, ...] = ()

    @staticmethod
    def none(acc: TensorType) -> Epilogue:
        return Epilogue((), (acc,), ())

    @property
    def operands(self) -> tuple[int, ...]:
        """Node input indices the steps read, in first-use order."""
        return tuple(dict.fromkeys(s["operand"] for s in self.steps if "operand" in s))

    def supported(self) -> bool:
        return supports_epilogue(self.node_inputs, self.steps, self.stages)

    def lines(self, acc: str, indent: str = "    ") -> tuple[list[str], str]:
        return epilogue_lines(self.steps, self.stages, self.node_inputs, acc, operand_name,
                              indent)


def operand_name(i: int) -> str:
    return f"e{i}"
