"""Structured channel pruning that `compile` can cash in.

    pruned = fxforge.prune_channels(model, 0.5, example_inputs=x)   # channels now produce 0
    ...fine-tune `pruned` (keep the zeroed rows at zero, e.g. with a mask, or prune again)...
    fast = fxforge.compile(pruned, "cpu")                           # and are removed here

`prune_channels` never touches the model it is given: it prunes a deep copy. It captures the copy
with torch.export and runs the channel analysis of `remove-pruned-channels` (`passes/channels.py`)
on the captured graph, before batch norms are folded, so that every weight, batch-norm scale and
shift in the graph still names its module parameter. The analysis gives the dependency groups:

* a *space* is a set of values whose channels must go together (a conv and the batch norms,
  activations, residual adds, pooling and depthwise convs that follow it); `cat`, `split` and
  flatten-into-features join single channel *positions* across spaces, so linked spaces form one
  group whose units are position components;
* a group is pruned only when none of its spaces is blocked (graph inputs and outputs, opaque
  ops, grouped convs), every space is produced by droppable sources (conv2d with groups=1,
  linear) or links, and every reader is an op the analysis sees through or a droppable sink.

In each such group the `amount` fraction of the units with the lowest importance is chosen
("l1": the L1 norm of each source's filter, divided by that source's mean filter norm, summed
over the group's sources; "bn": the sum of |gamma| of the group's batch norms), keeping at least
one, and with `round_to=r` the number kept is rounded up to a multiple of r (never above the
total). Rounding is done per source space where the sources' spaces partition the group (the two
branches of a `cat`, the conv before a flatten), else over the whole group.

A chosen channel is made to produce exactly zero: its rows (and bias entries) are zeroed in every
source and depthwise conv of the group, gamma and beta are zeroed in every batch norm (so the
output is 0 whatever the running mean), and per-channel parameter operands of add / sub /
maximum / minimum are zeroed. The plan is then checked with the analysis itself on the graph
with those zeros: every value of the group must hold 0 in the chosen channels wherever a layer
(conv2d / linear) reads it, and a constant everywhere else (sigmoid(0) = 0.5 inside a
squeeze-excite gate whose product is 0 is fine), and `remove-pruned-channels` must be able to
remove them. A group that fails (a per-channel constant that is not a parameter, an affine-free
batch norm, an activation with f(0) != 0 feeding a layer, a parameter shared with another
layer) is left alone, and `PruningPlan.skipped` says why.

The summary: `pruning_plan(...)` returns the `PruningPlan` (which layers go from how many output
channels to how many, which parameter entries are zeroed, what was skipped) without changing
anything; `plan.apply(copy.deepcopy(model))` gives the same model as `prune_channels`, which is
`pruning_plan` + `apply` on a copy. No attribute is attached to the returned module.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fxforge.ir import ConstData, Graph, Node
from fxforge.passes.channels import (
    BINARY_SAFE,
    HANDLERS,
    UNARY_SAFE,
    ChannelAnalysis,
    UnionFind,
    analyze,
)

IMPORTANCE = ("l1", "bn")
_ZEROED_OPERANDS = {"add", "sub", "maximum", "minimum"}  # x + p is p where x is 0: zero p too


@dataclass(frozen=True)
class Edit:
    """Zero `indices` along `axis` of the parameter (or buffer) `name` of shape `shape`."""

    name: str
    axis: int
    indices: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PrunedGroup:
    """One dependency group that was pruned: its sources' output channels before and after."""

    layers: dict[str, tuple[int, int]]  # source layer -> (output channels, channels left)
    zeroed: dict[str, tuple[int, ...]]  # source layer -> its zeroed output channels
    units: int  # channel positions in the group (one per channel of a plain space)
    pruned: int  # positions chosen


@dataclass
class PruningPlan:
    amount: float
    importance: str
    round_to: int
    groups: list[PrunedGroup] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # groups with sources left alone, and why

    @property
    def layers(self) -> dict[str, tuple[int, int]]:
        """Source layer (conv2d / linear module path) -> (output channels, channels left)."""
        return {k: v for g in self.groups for k, v in g.layers.items()}

    @property
    def zeroed(self) -> dict[str, tuple[int, ...]]:
        """Source layer -> the output channels that now produce zero."""
        return {k: v for g in self.groups for k, v in g.zeroed.items()}

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Zero the plan's parameter entries of `model` in place (it must have the parameter
        names and shapes of the model the plan was made for); returns `model`."""
        tensors = dict(model.named_buffers(remove_duplicate=False))
        tensors.update(model.named_parameters(remove_duplicate=False))
        for edit in self.edits:
            t = tensors.get(edit.name)
            if t is None or tuple(t.shape) != edit.shape:
                found = "missing" if t is None else f"of shape {tuple(t.shape)}"
                raise ValueError(f"the plan zeroes {edit.name} of shape {edit.shape}, which is "
                                 f"{found} in this {type(model).__name__}")
        with torch.no_grad():
            for edit in self.edits:
                t = tensors[edit.name]
                t.index_fill_(edit.axis, torch.tensor(edit.indices, device=t.device), 0)
        return model

    def __str__(self) -> str:
        lines = [f"prune {self.amount:g} by {self.importance} (round_to={self.round_to}): "
                 f"{len(self.groups)} group(s) pruned, {len(self.skipped)} left alone"]
        for layer, (before, after) in self.layers.items():
            lines.append(f"  {layer}: {before} -> {after}")
        lines += [f"  skipped: {reason}" for reason in self.skipped]
        return "\n".join(lines)


# --- arguments ----------------------------------------------------------------------------------


def _check_arguments(model: Any, amount: Any, importance: Any, round_to: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"prune_channels() expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a number in [0, 1), got {type(amount).__name__}")
    if not 0.0 <= float(amount) < 1.0:  # also false for NaN
        raise ValueError(f"amount must be in [0, 1) (the fraction of channels pruned in each "
                         f"group), got {amount!r}")
    if importance not in IMPORTANCE:
        raise ValueError(f"unknown importance {importance!r}; use 'l1' (L1 norm of the "
                         "filters) or 'bn' (batch-norm scale |gamma|)")
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral):
        raise TypeError(f"round_to must be an int >= 1, got {type(round_to).__name__}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1 (1 = no rounding, 8 or 16 suit tensor cores), "
                         f"got {round_to}")


def kept_count(total: int, amount: float, round_to: int) -> int:
    """Channels kept of `total`: prune floor(amount * total), keep at least one, round the kept
    count up to a multiple of `round_to`, never above `total`."""
    pruned = math.floor(amount * total + 1e-9)
    keep = max(1, total - pruned)
    return min(total, -(-keep // round_to) * round_to)


# --- the groups ---------------------------------------------------------------------------------


@dataclass
class _Group:
    roots: list[str]
    units: list[list[tuple[str, int]]]  # position component -> its (space root, channel)s
    importance: np.ndarray | None = None
    chosen: list[int] = field(default_factory=list)
    edits: dict[str, set[tuple[int, int]]] = field(default_factory=dict)  # const -> (axis, c)
    problem: str | None = None


class _Planner:
    def __init__(self, graph: Graph, analysis: ChannelAnalysis):
        self.graph = graph
        self.a = analysis
        self.members = analysis.members()
        self.sources = analysis.space_sources()
        self.blocked = analysis.blocked_spaces()
        self.linked = {r for pair in analysis.linked_spaces() for r in pair}

    # --- naming ---

    def const_node(self, name: str) -> Node | None:
        node = self.graph.producers.get(name)
        return node if node is not None and node.op == "const" else None

    def layer(self, node: Node) -> str:
        w = self.const_node(node.inputs[1].name)
        if w is not None and w.provenance.source in ("parameter", "buffer") \
                and "." in w.provenance.module:
            return w.provenance.module.rsplit(".", 1)[0]
        return node.provenance.module or "<top>"

    def where(self, root: str) -> str:
        layers = [self.layer(s) for s in self.sources.get(root, [])]
        if layers:
            return ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
        producer = self.graph.producers.get(root)
        return producer.describe() if producer is not None else f"%{root}"

    # --- grouping ---

    def groups(self) -> tuple[list[_Group], list[str]]:
        joined = UnionFind()
        for root in self.members:
            joined.find(root)
        for ra, rb in self.a.linked_spaces():
            joined.union(ra, rb)
        by_group: dict[str, list[str]] = defaultdict(list)
        for root in self.members:
            by_group[joined.find(root)].append(root)
        groups, skipped = [], []
        for roots in by_group.values():
            if not any(r in self.sources for r in roots):
                continue  # nothing in it can drop channels: not a pruning candidate at all
            name = "; ".join(self.where(r) for r in roots if r in self.sources)
            blocked = [r for r in roots if r in self.blocked]
            if blocked:
                skipped.append(f"{name}: reaches {self._blocker(blocked[0])}")
                continue
            orphan = [r for r in roots if r not in self.sources and r not in self.linked]
            if orphan:
                skipped.append(f"{name}: {self.where(orphan[0])} is not produced by a "
                               "droppable conv2d / linear")
                continue
            units: dict[Any, list[tuple[str, int]]] = defaultdict(list)
            for r in roots:
                for c in range(self._channels(r)):
                    units[self.a.positions.find((r, c))].append((r, c))
            groups.append(_Group(roots, list(units.values())))
        return groups, skipped

    def _channels(self, root: str) -> int:
        return len(self.a.consts[root])

    def _blocker(self, root: str) -> str:
        """Why a space is blocked, in words."""
        names = set(self.members[root])
        if any(v.name in names for v in self.graph.inputs):
            return "a graph input"
        if any(v.name in names for v in self.graph.outputs):
            return "a graph output"
        for node in self.graph.nodes:
            if node.op == "const" or not any(
                    v.name in names for v in (*node.inputs, *node.outputs)):
                continue
            grouped = node.op == "conv2d" and 1 < node.attrs["groups"] and not (
                node.attrs["groups"] == node.inputs[0].type.shape[1] == node.output.type.shape[1])
            if grouped or (node.op not in HANDLERS and node.op not in UNARY_SAFE | BINARY_SAFE):
                return f"{node.describe()}, which fixes its channels"
        return "an op that fixes its channels"

    # --- importance and choice ---

    def score(self, group: _Group, importance: str) -> None:
        per_space: dict[str, np.ndarray] = {}
        for root in group.roots:
            total = np.zeros(self._channels(root))
            if importance == "l1":
                for src in self.sources.get(root, []):
                    w = np.abs(self.graph.constant(src.inputs[1]).astype(np.float64))
                    norms = w.reshape(w.shape[0], -1).sum(axis=1)
                    mean = norms.mean()
                    total += norms / mean if mean > 0 else norms
            else:
                for gamma in self._bn_scales(root):
                    total += np.abs(gamma.astype(np.float64))
            per_space[root] = total
        if importance == "bn" and not any(self._bn_scales(r) for r in group.roots):
            layers = "; ".join(self.where(r) for r in group.roots if r in self.sources)
            raise ValueError(f"importance='bn' needs a batch norm in every pruned group, and the "
                             f"group of {layers} has none; use importance='l1'")
        group.importance = np.array([sum(per_space[r][c] for r, c in unit)
                                     for unit in group.units])

    def _bn_scales(self, root: str) -> list[np.ndarray]:
        """gamma of each batch norm in the space (the analysis tracks them only when constant)."""
        nodes = [self.graph.producers.get(name) for name in self.members[root]]
        return [self.graph.constant(n.inputs[1]) for n in nodes
                if n is not None and n.op == "batch_norm"]

    def choose(self, group: _Group, amount: float, round_to: int) -> None:
        primary = [r for r in group.roots if r in self.sources]
        owner = []
        for unit in group.units:
            mine = [r for r, _ in unit if r in primary]
            owner.append(mine[0] if len(mine) == 1 else None)
        if None in owner:  # the sources' spaces overlap: one choice over the whole group
            owner = [None] * len(group.units)
        parts: dict[Any, list[int]] = defaultdict(list)
        for i, key in enumerate(owner):
            parts[key].append(i)
        chosen = []
        for indices in parts.values():
            drop = len(indices) - kept_count(len(indices), amount, round_to)
            order = sorted(indices, key=lambda i: (group.importance[i], i))
            chosen += order[:drop]
        group.chosen = sorted(chosen)

    # --- making the chosen channels zero ---

    def collect_edits(self, group: _Group) -> None:
        edits: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for i in group.chosen:
            for root, c in group.units[i]:
                for name in self.members[root]:
                    node = self.graph.producers.get(name)
                    if node is None or name != node.outputs[0].name:
                        continue
                    problem = self._edits_for(node, c, edits)
                    if problem:
                        group.problem = problem
                        return
        for name in edits:
            users = self.graph.users.get(name, ())
            if len(users) > 1:
                const = self.const_node(name)
                group.problem = (f"{const.provenance.module} is shared by "
                                 f"{len(users)} ops ({', '.join(u.op for u in users)})")
                return
        group.edits = dict(edits)

    def _param(self, name: str, parameters_only: bool = False) -> bool:
        node = self.const_node(name)
        allowed = ("parameter",) if parameters_only else ("parameter", "buffer")
        return node is not None and node.provenance.source in allowed and bool(
            node.provenance.module)

    def _edits_for(self, node: Node, c: int, edits: dict) -> str | None:
        op = node.op
        if op in ("conv2d", "linear"):  # a source, or a depthwise conv inside the space
            for v in node.inputs[1:]:
                if not self._param(v.name):
                    return (f"the weights of {node.describe()} are not module parameters or "
                            "buffers")
                edits[v.name].add((0, c))
        elif op == "batch_norm":
            for v in node.inputs[1:3]:  # gamma and beta; an affine-free norm has constants
                if self._param(v.name):
                    edits[v.name].add((0, c))
        elif op in _ZEROED_OPERANDS:
            out = node.output
            for v in node.inputs:
                array = self.graph.constant(v)
                if array is None or not self._param(v.name, parameters_only=True):
                    continue
                axis = 1 - (out.type.ndim - array.ndim)
                if 0 <= axis < array.ndim and array.shape[axis] == out.type.shape[1] > 1:
                    edits[v.name].add((axis, c))
        return None

    # --- checking, with the analysis itself ---

    def check(self, groups: list[_Group]) -> list[_Group]:
        """The groups whose chosen channels, once the edits are made, are exactly zero wherever
        a layer reads them and constant everywhere, so that `remove-pruned-channels` removes
        them (asked of its own analysis); the others get a `problem`."""
        after = analyze(_zeroed_graph(self.graph, [g.edits for g in groups]))
        read_by = {s.value.name: s.node for s in after.sinks}
        good = []
        for g in groups:
            g.problem = next((p for i in g.chosen for root, c in g.units[i]
                              for name in self.members[root]
                              if (p := self._why_kept(after, read_by, name, c))), None)
            if g.problem is None:
                good.append(g)
        return good

    def _why_kept(self, after: ChannelAnalysis, read_by: dict[str, Node], name: str,
                  c: int) -> str | None:
        value = after.consts[name][c]
        node = self.graph.producers.get(name)
        at = node.describe() if node is not None else f"%{name}"
        if np.isnan(value):
            return f"channel {c} of {at} would still depend on the input"
        if value != 0 and name in read_by:
            return (f"channel {c} of {at} would be {value:g}, not 0, where "
                    f"{read_by[name].describe()} reads it (a constant that is not a parameter, "
                    "a batch norm without affine parameters, an activation with f(0) != 0)")
        if c not in after.removable.get(name, ()):
            return f"remove-pruned-channels could not remove channel {c} of {at}"
        return None


def _zeroed_graph(graph: Graph, edit_sets: list[dict[str, set[tuple[int, int]]]]) -> Graph:
    merged: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for edits in edit_sets:
        for name, where in edits.items():
            merged[name] |= where
    nodes = []
    for node in graph.nodes:
        if node.op == "const" and node.output.name in merged:
            array = np.array(node.attrs["value"].array, copy=True)
            for axis, c in merged[node.output.name]:
                index = [slice(None)] * array.ndim
                index[axis] = c
                array[tuple(index)] = 0
            node = Node("const", (), node.outputs, node.attrs.replace(value=ConstData(array)),
                        node.provenance)
        nodes.append(node)
    return Graph(graph.inputs, tuple(nodes), graph.outputs, graph.dims)


def plan_for_graph(graph: Graph, amount: float, importance: str = "l1",
                   round_to: int = 1) -> PruningPlan:
    """The pruning plan for a captured graph (constants that still name their parameters)."""
    planner = _Planner(graph, analyze(graph))
    groups, skipped = planner.groups()
    plan = PruningPlan(float(amount), importance, int(round_to), skipped=skipped)
    for g in groups:
        planner.score(g, importance)
        planner.choose(g, float(amount), int(round_to))
    candidates = [g for g in groups if g.chosen]
    for g in candidates:
        planner.collect_edits(g)
    candidates = [g for g in candidates if g.problem is None]
    while candidates:  # groups are independent, but re-check until every survivor is exact
        good = planner.check(candidates)
        if len(good) == len(candidates):
            break
        candidates = good
    for g in groups:
        if g.problem is not None:
            where = "; ".join(planner.where(r) for r in g.roots if r in planner.sources)
            plan.skipped.append(f"{where}: {g.problem}")
    plan.skipped = list(dict.fromkeys(plan.skipped))
    for g in candidates:
        plan.groups.append(_summary(planner, g))
        for name, where in sorted(g.edits.items()):
            const = planner.const_node(name)
            by_axis: dict[int, list[int]] = defaultdict(list)
            for axis, c in where:
                by_axis[axis].append(c)
            for axis, indices in sorted(by_axis.items()):
                plan.edits.append(Edit(const.provenance.module, axis, tuple(sorted(indices)),
                                       tuple(const.output.type.shape)))
    return plan


def _summary(planner: _Planner, g: _Group) -> PrunedGroup:
    gone: dict[str, set[int]] = defaultdict(set)
    for i in g.chosen:
        for root, c in g.units[i]:
            gone[root].add(c)
    layers, zeroed = {}, {}
    for root in g.roots:
        for src in planner.sources.get(root, []):
            name = planner.layer(src)
            total = src.output.type.shape[1]
            layers[name] = (total, total - len(gone[root]))
            zeroed[name] = tuple(sorted(gone[root]))
    return PrunedGroup(layers, zeroed, len(g.units), len(g.chosen))


# --- the API ------------------------------------------------------------------------------------


def pruning_plan(model: torch.nn.Module, amount: float, example_inputs: Any,
                 importance: str = "l1", round_to: int = 1) -> PruningPlan:
    """What `prune_channels` would zero, without changing anything (the model is only read,
    as `compile` reads it)."""
    from fxforge.api import _normalize_example
    from fxforge.capture import capture

    _check_arguments(model, amount, importance, round_to)
    args, kwargs = _normalize_example(example_inputs)
    captured = capture(model, args, kwargs)
    return plan_for_graph(captured.graph, amount, importance, round_to)


def prune_channels(model: torch.nn.Module, amount: float, example_inputs: Any,
                   importance: str = "l1", round_to: int = 1) -> torch.nn.Module:
    """A copy of `model` in which, in every dependency group that can shrink, the `amount`
    fraction of channels with the lowest importance produce exactly zero.

    amount: fraction of channels pruned per group, in [0, 1); at least one channel is kept.
    example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    importance: "l1" (L1 norm of the filters) or "bn" (|gamma| of the batch norms).
    round_to: channels kept per group are rounded up to a multiple of this (8 or 16 suit
        tensor cores).

    The input model is not modified. Fine-tune the result (keeping the zeroed entries at zero),
    then `compile` it: `remove-pruned-channels` removes the zero channels. For the list of what
    was pruned, use `pruning_plan` (and `plan.apply(copy.deepcopy(model))`).
    """
    _check_arguments(model, amount, importance, round_to)
    pruned = copy.deepcopy(model)
    return pruning_plan(pruned, amount, example_inputs, importance, round_to).apply(pruned)
