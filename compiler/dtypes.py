"""The IR's element types, and how they map to numpy and torch.

One table holds every dtype so that the printer, the parser, the numpy reference and the torch
backend can never disagree about what `f16` means. Type promotion follows torch's rules
(`torch.result_type`), because the IR must compute what the user's eager model computes.
"""

from __future__ import annotations

import numpy as np
import torch

# name -> (category, numpy dtype or None, torch dtype). Category orders bool < int < float.
_TABLE: dict[str, tuple[int, np.dtype | None, torch.dtype]] = {
    "bool": (0, np.dtype(np.bool_), torch.bool),
    "u8": (1, np.dtype(np.uint8), torch.uint8),
    "i8": (1, np.dtype(np.int8), torch.int8),
    "i16": (1, np.dtype(np.int16), torch.int16),
    "i32": (1, np.dtype(np.int32), torch.int32),
    "i64": (1, np.dtype(np.int64), torch.int64),
    "f16": (2, np.dtype(np.float16), torch.float16),
    "bf16": (2, None, torch.bfloat16),  # numpy has no bfloat16: reference runs reject it
    "f32": (2, np.dtype(np.float32), torch.float32),
    "f64": (2, np.dtype(np.float64), torch.float64),
}

DTYPES: tuple[str, ...] = tuple(_TABLE)
FLOAT_DTYPES = tuple(name for name, (cat, _, _) in _TABLE.items() if cat == 2)
INT_DTYPES = tuple(name for name, (cat, _, _) in _TABLE.items() if cat == 1)

_FROM_TORCH = {t: name for name, (_, _, t) in _TABLE.items()}
_FROM_NUMPY = {n: name for name, (_, n, _) in _TABLE.items() if n is not None}


class DTypeError(TypeError):
    """A dtype the IR does not know, or one a backend cannot hold."""


def check(name: str) -> str:
    if name not in _TABLE:
        raise DTypeError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return name


def category(name: str) -> int:
    return _TABLE[check(name)][0]


def is_float(name: str) -> bool:
    return category(name) == 2


def to_numpy(name: str) -> np.dtype:
    np_dtype = _TABLE[check(name)][1]
    if np_dtype is None:
        raise DTypeError(f"dtype {name} has no numpy equivalent; the numpy reference cannot run it")
    return np_dtype


def to_torch(name: str) -> torch.dtype:
    return _TABLE[check(name)][2]


def from_torch(dtype: torch.dtype) -> str:
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise DTypeError(f"torch dtype {dtype} is not supported by fxforge") from None


def from_numpy(dtype: np.dtype) -> str:
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise DTypeError(f"numpy dtype {dtype} is not supported by fxforge") from None


def _promote_pair(a: str, b: str) -> str:
    return from_torch(torch.promote_types(to_torch(a), to_torch(b)))


def _promote_all(names: list[str]) -> str | None:
    if not names:
        return None
    result = names[0]
    for name in names[1:]:
        result = _promote_pair(result, name)
    return result


def promote(operands: list[tuple[str, int]]) -> str:
    """torch.result_type for operands given as (dtype, ndim).

    Zero-dimensional operands (python scalars become 0-d constants in the IR) only decide the
    result when their category is higher than that of every dimensioned operand, as in torch.
    """
    dimensioned = _promote_all([d for d, ndim in operands if ndim > 0])
    zero_dim = _promote_all([d for d, ndim in operands if ndim == 0])
    if dimensioned is None:
        assert zero_dim is not None, "promote() needs at least one operand"
        return zero_dim
    if zero_dim is not None and category(zero_dim) > category(dimensioned):
        return zero_dim
    return dimensioned
