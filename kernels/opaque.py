"""Opaque `torch_op` nodes: aten ops with no IR op, run by torch.

The node stores its target as `aten.name.overload` and its non-tensor arguments in a JSON-like
encoding, so it prints, parses and round-trips like any other node. The target is resolved by
validated attribute lookup on `torch.ops` (never eval), and only in the namespaces below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fxforge import dtypes

_TARGET = re.compile(r"(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}
_LAYOUTS = {"strided": torch.strided}


class OpaqueOpError(ValueError):
    """A torch_op whose target or arguments cannot be resolved."""


def resolve(target: str) -> torch._ops.OpOverload:
    """The operator overload `target` names, and nothing else: the name must be one of the
    namespace's registered operators and the overload one of its registered overloads, so a
    target such as `aten.__dict__.__setitem__` (an attribute of the namespace object, not an
    operator) is refused before anything is looked up on it. Dunder-named operators such as
    `aten.__and__.Tensor` are real ones."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise OpaqueOpError(f"torch_op target {target!r} is not of the form aten.name.overload")
    namespace, name, overload = target.split(".")
    try:  # the registry of operators, not the attributes of Python objects (aten.__and__ is one)
        schema = torch._C._get_schema(f"{namespace}::{name}",
                                      "" if overload == "default" else overload)
    except RuntimeError:
        raise OpaqueOpError(f"torch_op target {target!r} is not an operator torch has") from None
    why = _why_refused(schema)
    if why is not None:
        raise OpaqueOpError(f"torch_op target {target!r} {why}; a captured graph never holds "
                            "one, so IR that names it is refused")
    op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    if not isinstance(op, torch._ops.OpOverload):
        raise OpaqueOpError(f"torch_op target {target!r} is not an operator overload")
    return op


def _why_refused(schema: Any) -> str | None:
    """Operators a functionalized inference graph never calls, and IR text must not either:
    those that write to their arguments (in-place, `out=`) and those that touch files."""
    if schema.is_mutable:
        return "writes to its arguments"
    if any(str(a.type).startswith(("str", "Optional[str]")) and "file" in a.name
           for a in schema.arguments):
        return "reads or writes a file"
    return None


def target_name(op: Any) -> str:
    """`torch.ops.aten.add.Tensor` -> `aten.add.Tensor`."""
    return str(op)


def encode(arg: Any, tensor_index: Callable[[Any], int | None]) -> Any:
    """A python/torch argument -> attribute value. `tensor_index(arg)` numbers tensor inputs."""
    index = tensor_index(arg)
    if index is not None:
        return {"$input": index}
    if isinstance(arg, (list, tuple)):
        return tuple(encode(a, tensor_index) for a in arg)
    if isinstance(arg, torch.dtype):
        return {"$dtype": dtypes.from_torch(arg)}
    if isinstance(arg, torch.device):
        return {"$device": arg.type}
    if isinstance(arg, torch.memory_format):
        name = next((k for k, v in _MEMORY_FORMATS.items() if v == arg), None)
        if name is None:
            raise OpaqueOpError(f"unsupported memory format {arg}")
        return {"$memory_format": name}
    if isinstance(arg, torch.layout):
        if arg != torch.strided:
            raise OpaqueOpError(f"unsupported layout {arg}")
        return {"$layout": "strided"}
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return arg
    raise OpaqueOpError(f"cannot encode argument of type {type(arg).__name__}")


def decode(value: Any, tensors: Sequence[torch.Tensor], device: torch.device) -> Any:
    """An attribute value -> the python/torch argument; anything malformed (IR text is input
    like any other) is an OpaqueOpError, not a KeyError or IndexError from deep inside."""
    if isinstance(value, tuple):
        return [decode(v, tensors, device) for v in value]
    if isinstance(value, dict):
        if len(value) != 1:
            raise OpaqueOpError(f"an encoded argument has one key, got {sorted(value)!r}")
        (key, inner), = value.items()
        try:
            return _decode_tagged(key, inner, tensors, device)
        except (KeyError, IndexError, TypeError, dtypes.DTypeError):
            raise OpaqueOpError(f"bad encoded argument {{{key!r}: {inner!r}}}") from None
    return value


def _decode_tagged(key: str, inner: Any, tensors: Sequence[torch.Tensor],
                   device: torch.device) -> Any:
    if key == "$input":
        if type(inner) is not int or not 0 <= inner < len(tensors):
            raise IndexError(inner)
        return tensors[inner]
    if key == "$dtype":
        return dtypes.to_torch(inner)
    if key == "$device":
        return device  # run where the inputs are, not where the model was captured
    if key == "$memory_format":
        return _MEMORY_FORMATS[inner]
    if key == "$layout":
        return _LAYOUTS[inner]
    raise OpaqueOpError(f"unknown encoded argument {key!r}")


def call_on_tensors(target: str, args: Any, kwargs: Any, tensors: Sequence[torch.Tensor],
                    device: torch.device | None = None) -> Any:
    op = resolve(target)
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    real_args = decode(tuple(args), tensors, device)
    real_kwargs = {k: decode(v, tensors, device) for k, v in dict(kwargs).items()}
    with torch.no_grad():
        return op(*real_args, **real_kwargs)


def call_on_arrays(target: str, args: Any, kwargs: Any, arrays: Sequence[np.ndarray]) -> Any:
    tensors = [torch.from_numpy(np.array(a, copy=True)) for a in arrays]
    out = call_on_tensors(target, args, kwargs, tensors, torch.device("cpu"))
    if isinstance(out, (tuple, list)):
        return tuple(o.numpy() for o in out)
    return out.numpy()
