"""Shrink a failing graph while the same failure holds: fxforge's llvm-reduce / mlir-reduce.

A miscompile met on a 300-node model is debugged on a 3-node graph. `reduce(graph, predicate,
samples)` applies reductions greedily, keeping each one only if the predicate still holds on the
result, and repeats whole rounds of them until a round keeps nothing (delta debugging, as in
Zeller's ddmin and C-Reduce's fixed point over passes).

The predicate contract
----------------------
`predicate(graph, samples) -> bool` must be True iff the ORIGINAL failure holds on the candidate:
the same exception type and message from the same pass, the same op named in a mismatch, the
same output wrong beyond the same tolerance. "It still fails somehow" is not enough: a reducer
keeps every candidate that fails, so it drifts from the bug at hand to whatever failure is easiest
to keep (a shape error its own reductions provoke, an unrelated crash) and ends on a tiny graph
that shows another bug. Matching the signature is the caller's job; this module only guarantees
that every candidate it shows the predicate passes `verify()` (a candidate that does not, or
whose construction raises, is dropped unseen) and that its samples fit the candidate's inputs
(`samples[i][j]` is sample i's array for `graph.inputs[j]`, of that input's shape and dtype).
The predicate should be deterministic. One that raises has a bug, and the exception propagates;
a KeyboardInterrupt instead ends the reduction with the best graph so far, as do `time_limit`
and `max_evaluations` (the check of the input counts as one evaluation and always runs).

The strategies, in the order a round runs them (the biggest cuts first)
-----------------------------------------------------------------------
1. outputs: remove dead code; drop graph outputs (ddmin over the output list, one must stay); and
   return one earlier value instead (a binary search over values, by how many nodes each needs):
   a failure seen at one output rarely needs the others, and a bug early in a model does not
   need the layers after it.
2. cut: turn a node's results into new graph inputs, with per-sample arrays recorded by running
   the current graph on the numpy reference, so that everything only feeding them dies; a
   binary search over nodes by how many nodes the cut removes (the post-dominator subtree),
   biggest first: the layers before a bug are rarely part of it. A result that is the same small
   array in every sample becomes a constant instead, which keeps the reproducer's inputs few.
3. remove single nodes: cut one node, or bypass it (its result replaced by one of its inputs of
   the same type). The binary searches of 1 and 2 assume that removing more is likelier to lose
   the failure, which a DAG does not promise; this exhaustive pass catches what they miss.
4. remove graph inputs that nothing reads (and their arrays): cuts and bypasses leave them.
5. shrink dims: slice a dim of an input (first of all inputs that share that dim's size, as a
   batch is shared) to 1, or else to half, in its type and its samples, and rebuild every node
   with type inference: a bug seen at 8x3x224x224 reads better at 1x3x7x7. A size baked into an
   attribute (a reshape's target) makes the rebuild fail, and that candidate is dropped.
6. simplify constants: zeros, ones, or the values rounded to one decimal (only towards simpler:
   zeros < ones < rounded < anything else, which also makes the loop terminate).

Every candidate has its dead code removed. Surviving values keep their names (a signature may
name one) and their nodes' provenance; new inputs and constants get fresh names (`cut0`, ...)
never used in the input graph. No randomness: the same input gives the same steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from fxforge import dtypes
from fxforge.debug.reduce_steps import STRATEGIES, Candidate, Maker, Samples, _record, count_nodes
from fxforge.ir import Graph, NameGenerator
from fxforge.verify import IRVerificationError, verify

__all__ = ["Predicate", "Reduction", "Samples", "count_nodes", "reduce"]

Predicate = Callable[[Graph, Samples], bool]  # True iff the ORIGINAL failure holds on this graph


@dataclass
class Reduction:
    """What `reduce` made: the smallest graph found that keeps the failure, with its samples.
    When interrupted, `graph` is the best accepted so far (the input itself if the interrupt
    came during the check of the input, which then is not known to hold)."""

    graph: Graph
    samples: Samples
    nodes_before: int  # non-const nodes
    nodes_after: int
    seconds: float
    evaluations: int  # predicate calls, the check of the input included
    interrupted: bool  # KeyboardInterrupt, time_limit or max_evaluations: graph is the best so far
    steps: list[str] = field(default_factory=list)  # one line per accepted reduction


def reduce(graph: Graph, predicate: Predicate, samples: Samples, *,
           time_limit: float | None = None, max_evaluations: int | None = None,
           progress: bool | None = None) -> Reduction:
    """Shrink `graph` (and `samples`) while `predicate` holds; see the module docstring for the
    predicate contract. `progress` None shows a bar only on a terminal."""
    samples = _fit_samples(graph, samples)
    try:
        verify(graph)
    except IRVerificationError as e:
        raise ValueError(f"the input graph does not verify, so no candidate would: {e}") from e
    return _Reducer(graph, samples, predicate, time_limit, max_evaluations, progress).run()


def _fit_samples(graph: Graph, samples: Samples) -> Samples:
    """The samples as arrays of the inputs' declared dtypes; a wrong count or shape is refused
    now, not met as a confusing predicate failure later."""
    fitted = []
    for i, sample in enumerate(samples):
        if len(sample) != len(graph.inputs):
            raise ValueError(f"sample {i} has {len(sample)} arrays for the graph's "
                             f"{len(graph.inputs)} inputs")
        row = []
        for v, x in zip(graph.inputs, sample):
            array = np.asarray(x)
            if array.shape != v.type.shape:
                raise ValueError(f"sample {i}: array of shape {list(array.shape)} for {v} of "
                                 f"type {v.type}")
            row.append(array.astype(dtypes.to_numpy(v.type.dtype), copy=False))
        fitted.append(row)
    return fitted


class _Stop(Exception):
    """The budget is spent or the user interrupted: the best graph so far is the result."""


# ---------------------------------------------------------------------------------------------
# The driver


class _Reducer:
    """The current best graph and samples, the budget, and the one door to the predicate."""

    def __init__(self, graph: Graph, samples: Samples, predicate: Predicate,
                 time_limit: float | None, max_evaluations: int | None, progress: bool | None):
        self.graph, self.samples = graph, samples
        self.predicate = predicate
        self.taken = set(graph.value_names())  # names new values must avoid, accepted ones added
        self.started = time.monotonic()
        self.deadline = None if time_limit is None else self.started + time_limit
        self.max_evaluations = max_evaluations
        self.evaluations = 0
        self.steps: list[str] = []
        self.nodes_before = self.nodes = count_nodes(graph)
        self._records: list[dict[str, np.ndarray]] | None = None
        self.bar = tqdm(total=self.nodes_before, desc="reduce", unit="node",
                        disable=None if progress is None else not progress)

    def run(self) -> Reduction:
        interrupted = False
        try:
            if not self._call(self.graph, self.samples):
                raise ValueError("the predicate does not hold on the input graph and samples: it "
                                 "must be True for the failure being reduced")
            self._fixed_point()
        except (_Stop, KeyboardInterrupt):
            interrupted = True
        finally:
            self.bar.close()
        return Reduction(self.graph, self.samples, self.nodes_before, count_nodes(self.graph),
                         time.monotonic() - self.started, self.evaluations, interrupted,
                         self.steps)

    def _fixed_point(self) -> None:
        while True:
            accepted = len(self.steps)
            for strategy in STRATEGIES:
                strategy(self)
            if len(self.steps) == accepted:
                return

    # --- the predicate ---------------------------------------------------------------------

    def _check_budget(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Stop("time limit")
        if self.max_evaluations is not None and self.evaluations >= self.max_evaluations:
            raise _Stop("evaluation limit")

    def _call(self, graph: Graph, samples: Samples) -> bool:
        self.evaluations += 1
        self.bar.set_postfix_str(f"{self.nodes} nodes, {self.evaluations} evals", refresh=False)
        try:
            return bool(self.predicate(graph, [list(row) for row in samples]))
        except KeyboardInterrupt:
            raise _Stop("interrupted") from None

    def first_holding(self, makers: Sequence[Maker]) -> Candidate | None:
        """The first candidate that can be built, verifies and keeps the failure (None if none
        does). A candidate that cannot be built or does not verify is not a reduction, only a
        guess that did not type-check; the predicate never sees it."""
        for make in makers:
            self._check_budget()
            try:
                graph, samples = make()
            except Exception:  # noqa: BLE001 - one that cannot be built is no candidate
                continue
            try:
                verify(graph)
            except IRVerificationError:
                continue
            if self._call(graph, samples):
                return graph, samples
        return None

    def accept(self, candidate: Candidate, what: str) -> None:
        before = self.nodes
        self.graph, self.samples = candidate
        self._records = None
        self.taken.update(self.graph.value_names())
        after = self.nodes = count_nodes(self.graph)
        self.steps.append(f"{what}: {before} -> {after} nodes" if after != before else what)
        self.bar.update(before - after)

    def attempt(self, what: str, *makers: Maker) -> bool:
        candidate = self.first_holding(makers)
        if candidate is None:
            return False
        self.accept(candidate, what)
        return True

    def bisect(self, options: Sequence[tuple[str, Sequence[Maker]]]) -> bool:
        """Accept the first option that holds, found in log2(n) tries: `options` go from the one
        that removes the most to the one that removes the least, on the assumption (usual, not
        certain) that the failure is lost down to some point of that order and kept after it."""
        lo, hi, best = -1, len(options), None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            candidate = self.first_holding(options[mid][1])
            if candidate is None:
                lo = mid
            else:
                hi, best = mid, candidate
        if best is None:
            return False
        self.accept(best, options[hi][0])
        return True

    def names(self) -> NameGenerator:
        """Fresh names for one candidate: names of a rejected candidate may come back."""
        return NameGenerator(self.taken)

    def recorded(self) -> list[dict[str, np.ndarray]]:
        """Every value's array per sample on the current graph, computed once per accepted
        graph: all of a state's cuts read the same run (memory: every activation of every
        sample, the price of not re-running the graph per candidate)."""
        if self._records is None:
            self._records = [_record(self.graph, sample) for sample in self.samples]
        return self._records
