"""compile(..., dynamic=...): one capture serves a range of batch sizes and sequence lengths.

`dynamic=True` makes dim 0 of every tensor input the batch `B` (1..DEFAULT_MAX); a dict
`{input_name: {dim: spec}}` names any dims, where a spec is a `(min, max)` pair (dim 0 is then
called `B`, dim 1 `S`, dim k `Dk`: inputs that name the same dim share its symbol, as a batch or
a sequence length does), a name, or a `torch.export.Dim`. The model is exported once with
torch.export's `dynamic_shapes`; the IR graph holds the symbols (`fxforge.symdims`), the pipeline
runs once on it, and each new size in range is a substitution of the optimized graph, not a new
capture (`CompiledModel` caches the static graph and program per size).

torch.export specializes sizes 0 and 1 (a batch-1 example would make the batch static), so a
dynamic dim of size 1 is exported from an example repeated to size 2. It also traces dynamic
sizes as >= 2: fxforge.capture turns on torch's `backed_size_oblivious`, so a branch the model
takes on a size (`if x.shape[0] > 1`) becomes a guard instead of a silent assumption, and the
guards on input sizes narrow the declared ranges (`SymbolMap.ranges`): a size the trace does not
cover is refused, never run on the graph traced for the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from fxforge import symdims
from fxforge.errors import CaptureError, OptionError

DEFAULT_MAX = 4096  # dynamic=True: the batch's upper bound (a dict may give any)
_DEFAULT_NAMES = {0: "B", 1: "S"}


@dataclass(frozen=True)
class DynamicDims:
    """Which dims of which call leaves are symbolic: {leaf index: {dim: DimRange}}."""

    per_leaf: Mapping[int, Mapping[int, symdims.DimRange]]
    names: Mapping[str, int] = field(default_factory=dict)  # input name -> leaf (one tensor)

    @property
    def ranges(self) -> tuple[symdims.DimRange, ...]:
        seen: dict[str, symdims.DimRange] = {}
        for dims in self.per_leaf.values():
            for r in dims.values():
                seen.setdefault(r.name, r)
        return tuple(seen.values())

    def describe(self) -> str:
        return ", ".join(r.describe() for r in self.ranges)


def check_option(dynamic: Any) -> Any:
    """`dynamic` as compile() got it, checked for its kind (its names are checked at the first
    call, when the inputs are known)."""
    if dynamic is None or dynamic is False or dynamic is True:
        return dynamic or None
    if not isinstance(dynamic, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in dynamic.items()):
        raise OptionError(f"dynamic={dynamic!r}: expected True, or a dict {{input name: {{dim: "
                          "(min, max) | name | torch.export.Dim}}")
    return dynamic


def _range(name: str, spec: Any, where: str) -> symdims.DimRange:
    if isinstance(spec, str):
        name, lo, hi = spec, 1, DEFAULT_MAX
    elif isinstance(spec, tuple) and len(spec) == 2:
        lo, hi = spec
    elif hasattr(spec, "min"):  # a torch.export.Dim
        name = getattr(spec, "__name__", name)
        lo, hi = getattr(spec, "min", 1), getattr(spec, "max", DEFAULT_MAX)
        lo = 1 if type(lo) is int and lo < 1 else lo  # torch's Dim defaults to 0: no bound
        hi = DEFAULT_MAX if type(hi) is int and hi > symdims.INT64_MAX else hi
    else:
        raise OptionError(f"dynamic: {where}: expected (min, max), a name or a torch.export.Dim, "
                          f"got {spec!r}")
    if any(type(v) is not int for v in (lo, hi)):
        raise OptionError(f"dynamic: {where}: the range needs integer bounds, got {spec!r}")
    try:
        return symdims.DimRange(name, lo, hi)
    except (TypeError, ValueError) as e:
        raise OptionError(f"dynamic: {where}: {e}") from None


def resolve(dynamic: Any, args: tuple, kwargs: dict, names: Sequence[str]) -> DynamicDims:
    """The symbolic dims of this call's leaves; `names` are the positional inputs' names."""
    leaves, _ = pytree.tree_flatten((args, kwargs))
    tensors = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    per_leaf: dict[int, dict[int, symdims.DimRange]] = {}
    if dynamic is True:
        batch = symdims.DimRange("B", 1, DEFAULT_MAX)
        for i in tensors:
            if leaves[i].ndim >= 1:
                per_leaf[i] = {0: batch}
        if not per_leaf:
            raise OptionError("dynamic=True: the call has no tensor input with a dim 0")
        return _checked(DynamicDims(per_leaf, _top_level_leaves(args, kwargs, names)), leaves)
    top = _top_level_leaves(args, kwargs, names)
    for input_name, dims in dynamic.items():
        if input_name not in top:
            raise OptionError(f"dynamic: no tensor input named {input_name!r}; inputs: "
                              f"{', '.join(sorted(top)) or 'none'}")
        i = top[input_name]
        for dim, spec in dims.items():
            where = f"{input_name} dim {dim}"
            if type(dim) is not int:
                raise OptionError(f"dynamic: {input_name}: dims are ints, got {dim!r}")
            if not -leaves[i].ndim <= dim < leaves[i].ndim:
                raise OptionError(f"dynamic: {where}: {input_name} has rank {leaves[i].ndim}")
            dim %= leaves[i].ndim
            per_leaf.setdefault(i, {})[dim] = _range(_DEFAULT_NAMES.get(dim, f"D{dim}"), spec,
                                                     where)
    return _checked(DynamicDims(per_leaf, top), leaves)


def _top_level_leaves(args: tuple, kwargs: dict, names: Sequence[str]) -> dict[str, int]:
    """Input name -> leaf index, for inputs that are one tensor."""
    found: dict[str, int] = {}
    index = 0
    for name, value in [*zip(names, args), *kwargs.items()]:
        n = len(pytree.tree_leaves(value))
        if isinstance(value, torch.Tensor):
            found[name] = index
        index += n
    return found


def _checked(dims: DynamicDims, leaves: list) -> DynamicDims:
    """One range per symbol name, and example sizes the ranges admit (or 1, see the module)."""
    by_name: dict[str, symdims.DimRange] = {}
    for i, per_dim in dims.per_leaf.items():
        for dim, r in per_dim.items():
            if by_name.setdefault(r.name, r) != r:
                raise OptionError(f"dynamic: {r.name} has two ranges: {by_name[r.name]} and {r}")
            size = leaves[i].shape[dim]
            if not r.contains(size):
                raise OptionError(f"dynamic: the example's size {size} is outside {r}")
    return dims


def export_inputs(dims: DynamicDims, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's inputs with every dynamic dim of size 1 repeated to 2 (see the module)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    changed = False
    for i, per_dim in dims.per_leaf.items():
        for dim in per_dim:
            if leaves[i].shape[dim] == 1:
                if any(r.max < 2 for r in per_dim.values()):
                    raise OptionError(f"dynamic: {per_dim[dim]} admits only size 1; make the "
                                      "dim static instead")
                leaves[i] = torch.cat([leaves[i], leaves[i]], dim=dim)
                changed = True
    return pytree.tree_unflatten(leaves, spec) if changed else (args, kwargs)


def torch_dynamic_shapes(dims: DynamicDims, args: tuple, kwargs: dict,
                         names: Sequence[str] | None, flat: bool = False) -> Any:
    """torch.export's `dynamic_shapes` for these inputs: one `Dim` per symbol, shared by the
    dims that name it. `names`: the forward's parameter names for the positional inputs (a
    dict by name then, which keywords need); None: the inputs are all positional, and a tuple
    does. `flat`: torch.export is given the flat leaves (fxforge.shadow.flat_inputs)."""
    from torch.export import Dim

    torch_dims = {r.name: Dim(r.name, min=r.min, max=r.max) for r in dims.ranges}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    per_leaf = [({d: torch_dims[r.name] for d, r in dims.per_leaf[i].items()}
                 if i in dims.per_leaf else None) for i in range(len(leaves))]
    if flat:
        return tuple(per_leaf)
    shaped_args, shaped_kwargs = pytree.tree_unflatten(per_leaf, spec)
    if names is None:
        return tuple(shaped_args)
    return {**dict(zip(names, shaped_args)), **shaped_kwargs}


class SymbolMap:
    """torch.export's symbols (`s77`) -> the user's (`B`), read from the input placeholders'
    shapes, and torch's sizes (SymInt) as IR dims."""

    def __init__(self) -> None:
        self.to_user: dict[Any, Any] = {}

    def learn(self, shape: Sequence[Any], per_dim: Mapping[int, symdims.DimRange],
              where: str) -> None:
        for dim, r in per_dim.items():
            size = shape[dim]
            expr = size.node.expr if isinstance(size, torch.SymInt) else size
            if not hasattr(expr, "is_Symbol") or not expr.is_Symbol:
                raise CaptureError(f"{where} dim {dim}: torch.export made it {expr}, not a free "
                                   f"size; the model constrains it, so it cannot be {r}")
            self.to_user[expr] = symdims.sym(r.name)

    def dim(self, size: Any) -> Any:
        """A torch size as an IR dim; raises ValueError for a size torch knows only at run
        time from the data (nonzero, boolean masks)."""
        if not isinstance(size, torch.SymInt):
            return int(size)
        expr = size.node.expr
        if expr.is_number:
            return int(expr)
        unknown = [s for s in expr.free_symbols if s not in self.to_user]
        if unknown:
            raise ValueError(f"size {expr} depends on the data")
        return symdims.normalize(expr.xreplace(self.to_user))

    def ranges(self, program: Any, dims: DynamicDims) -> tuple[symdims.DimRange, ...]:
        """The declared ranges, narrowed to what torch.export proved (`range_constraints`) and
        to the guards it kept on input sizes (see `_narrow_by_guards`)."""
        narrowed = {}
        for torch_sym, ours in self.to_user.items():
            r = next(r for r in dims.ranges if r.name == ours.name)
            vr = program.range_constraints.get(torch_sym)
            lo, hi = r.min, r.max
            if vr is not None:
                lo = max(lo, int(vr.lower)) if vr.lower.is_finite else lo
                hi = min(hi, int(vr.upper)) if vr.upper.is_finite else hi
            narrowed[ours.name] = symdims.DimRange(ours.name, lo, hi, r.multiple_of)
        _narrow_by_guards(narrowed, getattr(program, "_guards_code", None) or [], dims)
        return tuple(narrowed.values())


_SAME = re.compile(r"L\['(\w+)'\]\.size\(\)\[(\d+)\] == L\['(\w+)'\]\.size\(\)\[(\d+)\]")
_GUARD = re.compile(r"L\['([A-Za-z_][A-Za-z0-9_]*)'\]\.size\(\)\[(\d+)\] (>=|<=|>|<|==|!=) (-?\d+)")


def _narrow_by_guards(ranges: dict[str, symdims.DimRange], guards: Sequence[str],
                      dims: DynamicDims) -> None:
    """torch.export traces a dynamic size as >= 2 and keeps a condition the model placed on
    sizes (`if x.shape[0] > 1`) as a guard on the inputs, not in `range_constraints`: such a
    guard on a dynamic dim narrows its range (so size 1 is refused, not run on a graph traced
    for 2 and more). A guard this cannot read as a bound is a CaptureError. The guard is text
    that torch made: it is matched by a regex, never evaluated."""
    def symbol(name: str, dim: str) -> str | None:
        r = dims.per_leaf.get(dims.names.get(name, -1), {}).get(int(dim))
        return r.name if r is not None else None

    for guard in guards:
        if ".size()" not in guard:
            continue
        same = _SAME.fullmatch(guard.strip())
        if same is not None and symbol(*same.group(1, 2)) is not None \
                and symbol(*same.group(1, 2)) == symbol(*same.group(3, 4)):
            continue  # two dims named alike: one symbol already
        m = _GUARD.fullmatch(guard.strip())
        per_dim = dims.per_leaf.get(dims.names.get(m.group(1), -1), {}) if m else {}
        r = per_dim.get(int(m.group(2))) if m else None
        if m is not None and r is None:
            continue  # a static dim
        if m is None:
            raise CaptureError(f"the model holds only where `{guard}` (torch.export's guard on "
                               "input sizes), which fxforge cannot keep as a range; give "
                               "dynamic= ranges inside which it always holds")
        now = ranges[r.name]
        lo, hi, c = now.min, now.max, int(m.group(4))
        op = m.group(3)
        if op in (">", ">="):
            lo = max(lo, c + (op == ">"))
        elif op in ("<", "<="):
            hi = min(hi, c - (op == "<"))
        elif op == "==":
            lo, hi = max(lo, c), min(hi, c)
        elif c in (lo, hi):
            lo, hi = (lo + 1, hi) if c == lo else (lo, hi - 1)
        elif lo <= c <= hi:
            raise CaptureError(f"the model does not run {r.name} = {c} (`{guard}`), inside "
                               f"{now}; give dynamic= a range without it")
        if lo > hi:
            raise CaptureError(f"no size of {now} meets `{guard}`")
        ranges[r.name] = symdims.DimRange(r.name, lo, hi, now.multiple_of)
