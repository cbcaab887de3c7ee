"""Model ensembles and weight averaging ("model soups").

    ens = fxforge.ensemble([m1, m2, m3], combine="mean")   # one nn.Module: compiles to one graph
    soup = fxforge.merge_weights([m1, m2], weights=[0.7, 0.3])  # one model, averaged parameters

An ensemble is an ordinary module whose forward runs every member on the same inputs, so
`fxforge.compile(ens, target)` captures all of them as one graph. Members that start with the
same kind of layer on the input (the first conv of each CNN) then merge horizontally in the
`fuse` pass: one wider conv instead of one per member (see passes/merge_siblings.py). Every
combine uses ops the IR has (add, div, argmax, arange, eq, cast, cat), so nothing falls back to
an opaque `torch_op`.

`merge_weights` is the other way to use several fine-tuned copies of one architecture: one
model whose floating parameters and buffers are the (weighted) average of theirs, as fast as one
member.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from fxforge.errors import FxforgeError, OptionError

COMBINES = ("mean", "vote", "stack")
STACK_DIM = 1  # "stack": the model axis comes right after the batch axis


class EnsembleError(FxforgeError, ValueError):
    """Models that do not fit together: an ensemble whose members' outputs differ in structure
    or shape, or `merge_weights` models whose architectures differ. The message names the model
    (by its index in the list) and the first difference."""


def _check_models(models: Sequence[nn.Module], what: str) -> list[nn.Module]:
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise OptionError(f"{what}: models must be a list of nn.Module, got "
                          f"{type(models).__name__}")
    models = list(models)
    if len(models) < 2:
        raise OptionError(f"{what}: needs at least 2 models, got {len(models)}")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise OptionError(f"{what}: models[{i}] is a {type(m).__name__}, not an nn.Module")
    return models


# --- ensemble -----------------------------------------------------------------------------------


def _votes(logits: torch.Tensor) -> torch.Tensor:
    """One member's vote: 1 at the argmax of the last dim (its lowest index on ties), else 0, as
    a float tensor of the logits' shape. Written as argmax == arange: one_hot has no IR op."""
    classes = torch.arange(logits.shape[-1], device=logits.device)
    hit = logits.argmax(dim=-1, keepdim=True) == classes
    return hit.to(logits.dtype if logits.is_floating_point() else torch.float32)


class Ensemble(nn.Module):
    """Runs every member on the same inputs and combines their outputs (see `ensemble`).

    `models` is an nn.ModuleList of the members (copies of the ones given), `combine` the mode.
    Outputs may be tensors or equal nested structures of tensors (tuples, dicts); the combine
    applies to each tensor leaf."""

    def __init__(self, models: Sequence[nn.Module], combine: str = "mean"):
        super().__init__()
        models = _check_models(models, "ensemble")
        if combine not in COMBINES:
            raise OptionError(f"ensemble: combine={combine!r} is not one of "
                              f"{', '.join(map(repr, COMBINES))}")
        # one deepcopy of the list keeps modules the members share shared, and each member's
        # training flag as it was; the wrapper is in training mode only if some member is
        self.models = nn.ModuleList(copy.deepcopy(models))
        self.combine = combine
        self.training = any(m.training for m in models)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [m(*args, **kwargs) for m in self.models]
        leaves0, spec0 = pytree.tree_flatten(outputs[0])
        columns: list[list[torch.Tensor]] = [[] for _ in leaves0]
        for i, out in enumerate(outputs):
            leaves, spec = pytree.tree_flatten(out)
            if spec != spec0:
                raise EnsembleError(f"ensemble: model {i} returns {spec}, model 0 returns "
                                    f"{spec0}; members must return the same structure")
            for k, (a, b) in enumerate(zip(leaves0, leaves)):
                where = f" (output {k})" if len(leaves0) > 1 else ""
                if not isinstance(b, torch.Tensor):
                    raise EnsembleError(f"ensemble: model {i} returns a {type(b).__name__}"
                                        f"{where}, not a tensor")
                if a.shape != b.shape:
                    raise EnsembleError(
                        f"ensemble: model {i} returns shape {tuple(b.shape)}{where} but model 0 "
                        f"returns {tuple(a.shape)}; members must agree")
                if self.combine == "vote" and b.dim() == 0:
                    raise EnsembleError(f"ensemble: model {i} returns a scalar{where}; a vote "
                                        "needs a class dim (the last)")
                columns[k].append(b)
        combined = [self._combine(column) for column in columns]
        return pytree.tree_unflatten(combined, spec0)

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        n = len(outs)
        if self.combine == "mean":
            return functools.reduce(operator.add, outs) / n
        if self.combine == "vote":
            # whole counts add exactly; one division rounds each fraction once
            return functools.reduce(operator.add, (_votes(o) for o in outs)) / n
        dim = min(STACK_DIM, outs[0].dim())
        return torch.cat([o.unsqueeze(dim) for o in outs], dim=dim)


def ensemble(models: Sequence[nn.Module], combine: str = "mean") -> Ensemble:
    """An nn.Module that runs each of `models` on the same input(s) and combines the outputs.

    The models are deep-copied (the ones given are never modified; each copy keeps its
    train/eval mode). Every member must return the same structure of tensors with equal shapes,
    else calling the ensemble raises `EnsembleError` naming the model index and both shapes
    (through `fxforge.compile` as the `__cause__` of a CaptureError that repeats its message).

    combine:
      "mean"   the average of the outputs (sum, then divided by the number of models).
      "vote"   majority vote by argmax over the last dim: for each class, the fraction of models
               whose argmax it is; the shape and (float) dtype of one member's logits, rows
               sum to 1.
               `out.argmax(-1)` is the majority class, ties going to the lowest class index
               (as does each member's own argmax). Differentiable nowhere; for inference.
      "stack"  the outputs stacked along a new dim 1, right after the batch (`[batch, models,
               ...]`; dim 0 for scalar outputs), for a downstream combiner.

    Raises OptionError for fewer than 2 models, a member that is not an nn.Module or an unknown
    combine.
    """
    return Ensemble(models, combine)


# --- weight averaging ---------------------------------------------------------------------------


def _tensors(module: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) of the module's own parameters, then its own buffers."""
    return ([("parameter", n, p) for n, p in module.named_parameters(recurse=False)]
            + [("buffer", n, b) for n, b in module.named_buffers(recurse=False)])


def _flat(model: nn.Module) -> list[tuple[str, str, str, torch.Tensor]]:
    """(module path, kind, name, tensor) of every module's own tensors, in module order."""
    return [(path, kind, name, t) for path, mod in model.named_modules()
            for kind, name, t in _tensors(mod)]


def _ties(flat: list[tuple[str, str, str, torch.Tensor]]) -> list[int]:
    """For each tensor, the index of its first occurrence (tied weights appear twice)."""
    first: dict[int, int] = {}
    return [first.setdefault(id(t), k) for k, (*_, t) in enumerate(flat)]


def _tie(flat: list[tuple[str, str, str, torch.Tensor]], k: int, first: int) -> str:
    return "not tied" if first == k else f"tied to {flat[first][2]!r} of {_where(flat[first][0])}"


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the top module"


def _first_mismatch(ref: nn.Module, other: nn.Module) -> str | None:
    """The first difference in architecture between two models, in module order, or None."""
    mods_a, mods_b = list(ref.named_modules()), list(other.named_modules())
    for k in range(max(len(mods_a), len(mods_b))):
        if k >= len(mods_a):
            return f"{_where(mods_b[k][0])} ({type(mods_b[k][1]).__name__}) is not in model 0"
        if k >= len(mods_b):
            return f"{_where(mods_a[k][0])} ({type(mods_a[k][1]).__name__}) is missing"
        (path_a, a), (path_b, b) = mods_a[k], mods_b[k]
        if path_a != path_b:
            return f"{_where(path_b)} stands where model 0 has {_where(path_a)}"
        if type(a) is not type(b):
            return (f"{_where(path_a)} has type {type(b).__name__}, in model 0 "
                    f"{type(a).__name__}")
        ta, tb = _tensors(a), _tensors(b)
        names_a, names_b = [(kind, n) for kind, n, _ in ta], [(kind, n) for kind, n, _ in tb]
        if names_a != names_b:
            missing = [f"{kind} {n!r}" for kind, n in names_a if (kind, n) not in names_b]
            extra = [f"{kind} {n!r}" for kind, n in names_b if (kind, n) not in names_a]
            diff = "; ".join(filter(None, (missing and "lacks " + ", ".join(missing),
                                           extra and "has extra " + ", ".join(extra))))
            return f"{_where(path_a)} {diff or 'orders its tensors differently'}"
        for (kind, name, x), (_, _, y) in zip(ta, tb):
            if x.shape != y.shape:
                return (f"{_where(path_a)}: {kind} {name!r} has shape {tuple(y.shape)}, in "
                        f"model 0 {tuple(x.shape)}")
            if x.dtype != y.dtype:
                return (f"{_where(path_a)}: {kind} {name!r} has dtype {y.dtype}, in model 0 "
                        f"{x.dtype}")
    flat_a, flat_b = _flat(ref), _flat(other)
    for k, (tie_a, tie_b) in enumerate(zip(_ties(flat_a), _ties(flat_b))):
        if tie_a != tie_b:
            path, kind, name, _ = flat_a[k]
            return (f"{_where(path)}: {kind} {name!r} is {_tie(flat_b, k, tie_b)}, in model 0 "
                    f"{_tie(flat_a, k, tie_a)}")
    return None


def _normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise OptionError(f"merge_weights: weights must be a list of {n} numbers, got "
                          f"{weights!r}") from None
    if len(values) != n:
        raise OptionError(f"merge_weights: {len(values)} weights for {n} models")
    bad = [i for i, w in enumerate(values) if not (w >= 0 and w != float("inf"))]
    if bad:
        raise OptionError(f"merge_weights: weights[{bad[0]}] = {values[bad[0]]} is not a finite "
                          "number >= 0")
    total = sum(values)
    if total <= 0:
        raise OptionError("merge_weights: the weights sum to 0")
    return [w / total for w in values]


def merge_weights(models: Sequence[nn.Module], weights: Sequence[float] | None = None
                  ) -> nn.Module:
    """One model whose floating parameters and buffers are the weighted average of `models`'
    (a "model soup" of fine-tuned copies of one architecture).

    Returns a deep copy of `models[0]` (its train/eval mode and requires_grad flags too) holding
    the averages; the models given are never modified. `weights` default to uniform; they must
    be finite and >= 0 with a positive sum, and are normalized to sum to 1 (so [2, 1] means
    2/3 and 1/3). The sums run in float64 and are rounded once to each tensor's dtype. Integer
    and bool buffers (a BatchNorm's num_batches_tracked) are not averaged: they come from
    `models[0]`.

    The architectures must match: the same module types at the same paths, and in each module
    the same parameter and buffer names with the same shapes and dtypes. Otherwise raises
    `EnsembleError` naming the model index, the module path and what differs (the first
    difference, in module order). Raises OptionError for fewer than 2 models, a non-module or
    bad weights.
    """
    models = _check_models(models, "merge_weights")
    shares = _normalized(weights, len(models))
    for i, other in enumerate(models[1:], 1):
        mismatch = _first_mismatch(models[0], other)
        if mismatch is not None:
            raise EnsembleError(f"merge_weights: model {i} differs from model 0: {mismatch}")
    soup = copy.deepcopy(models[0])
    per_model = [[t for *_, t in _flat(m)] for m in models]
    targets = [t for *_, t in _flat(soup)]
    done: set[int] = set()
    with torch.no_grad():
        for k, target in enumerate(targets):
            if id(target) in done or not (target.is_floating_point() or target.is_complex()):
                continue  # a tensor shared by two modules; integer buffers stay model 0's
            done.add(id(target))
            wide = torch.complex128 if target.is_complex() else torch.float64
            total = sum(share * tensors[k].detach().to(device=target.device, dtype=wide)
                        for share, tensors in zip(shares, per_model))
            target.copy_(total)
    return soup
