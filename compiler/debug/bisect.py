"""Bisecting rewrites: apply only the first N, find the first one that brings a failure.

Like LLVM's `-opt-bisect-limit`: every rewrite the pipeline makes is numbered in order, and with
`debug={"bisect_limit": N}` (env `FXFORGE_BISECT_LIMIT`, CLI `--bisect-limit`) applications 1..N
happen and the later ones do not. What counts as one application:

- each rule application of the rewrite driver (`passes/rewrite.py`): canonicalize's and fuse's
  rules, one node at a time; a refused application is as if the rule had not matched;
- each pass that changes the graph without going through the driver (fold-batchnorm, quantize,
  a user's pass, ...): the whole pass is one application, refused by keeping its input graph.

Each is logged as `BISECT: apply (N) <pass>: <rule> at <node>` or `BISECT: NOT applying (N) ...`.
Because applications before N happen the same way whatever the limit, the numbering is a prefix
order and `bisect` can binary-search it: the first N at which a failure predicate holds names the
rewrite that introduced the failure.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Budget:
    """The applications of one pipeline run: numbered, allowed up to `limit` (None: all)."""

    limit: int | None = None
    stream: TextIO | None = None  # where BISECT lines go as they happen; None: kept only
    count: int = 0
    lines: list[str] = field(default_factory=list)
    pass_name: str = ""

    def allow(self, what: str, where: str) -> bool:
        self.count += 1
        ok = self.limit is None or self.count <= self.limit
        verb = "apply" if ok else "NOT applying"
        line = f"BISECT: {verb} ({self.count}) {self.pass_name}: {what} at {where}"
        self.lines.append(line)
        if self.stream is not None:
            self.stream.write(line + "\n")
        return ok

    def line(self, n: int) -> str:
        """The log line of application `n` (1-based), as an applying run prints it."""
        return self.lines[n - 1].replace("NOT applying", "apply", 1)


_ACTIVE: ContextVar[Budget | None] = ContextVar("fxforge_bisect_budget", default=None)


def allow(what: str, where: str) -> bool:
    """May this rewrite happen? Always, unless a bisect budget is active and spent."""
    budget = _ACTIVE.get()
    return True if budget is None else budget.allow(what, where)


def current() -> Budget | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def active(budget: Budget | None) -> Iterator[Budget | None]:
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


@dataclass
class BisectResult:
    index: int  # the first application at which the failure holds; 0: it holds with none
    total: int  # applications the whole pipeline makes
    line: str  # that application's BISECT line ("" for index 0)
    runs: int  # pipeline runs the search took


def bisect(fails: Callable[[int | None], tuple[bool, Budget]], *, stream: TextIO | None = None
           ) -> BisectResult:
    """Binary-search the first application at which `fails(limit)` holds.

    `fails(limit)` runs the pipeline with that bisect limit (None: no limit) and returns whether
    the failure holds and the run's Budget. The failure must hold without a limit; if it also
    holds with limit 0, no rewrite is to blame (index 0)."""
    out = stream if stream is not None else sys.stderr
    failed, full = fails(None)
    runs = 1
    if not failed:
        raise ValueError("the failure does not happen with every rewrite applied: nothing to "
                         "bisect")
    total = full.count
    failed, _ = fails(0)
    runs += 1
    if failed:
        return BisectResult(0, total, "", runs)
    lo, hi = 1, total  # the failure holds at hi, not at lo - 1
    while lo < hi:
        mid = (lo + hi) // 2
        failed, _ = fails(mid)
        runs += 1
        out.write(f"bisect: limit {mid}: {'fails' if failed else 'passes'}\n")
        if failed:
            hi = mid
        else:
            lo = mid + 1
    return BisectResult(lo, total, full.line(lo), runs)
