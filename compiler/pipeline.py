"""The PassManager: runs a pipeline of named passes with debugging instruments.

Instruments (all off by default), reachable from Python (`compile(..., debug=...)`), the
environment and the CLI:

| instrument             | Python (`DebugOptions`) | environment             | CLI              |
|------------------------|-------------------------|-------------------------|------------------|
| print IR before passes | `print_before="all"`    | `FXFORGE_PRINT_BEFORE`  | `--print-before` |
| print IR after passes  | `print_after="dce"`     | `FXFORGE_PRINT_AFTER`   | `--print-after`  |
| only when IR changed   | `print_changed=True`    | `FXFORGE_PRINT_CHANGED` | `--print-changed`|
| print a diff instead   | `print_diff=True`       | `FXFORGE_PRINT_DIFF`    | `--print-diff`   |
| dump every stage       | `dump_dir="out/"`       | `FXFORGE_DUMP_DIR`      | `--dump-dir`     |
| verify after each pass | `verify_each=True`      | `FXFORGE_VERIFY`        | `--verify`       |
| check each on reference| `check_each=True`       | `FXFORGE_CHECK_EACH`    | `--check-each`   |
| first N rewrites only  | `bisect_limit=N`        | `FXFORGE_BISECT_LIMIT`  | `--bisect-limit` |
| reproducers go here    | `repro_dir="d"`/"off"   | `FXFORGE_REPRO_DIR`     | `--repro-dir`    |

Dumps are `00-input.ir`, `01-<pass>.ir`, ... with constants elided to digests, plus
`constants.npz` (keyed by digest, loadable without pickle) so `load_dump` restores runnable IR;
`fxforge/dumps.py` says how dumps are written and read safely. check_each, bisect and the
reproducer bundles a failing pass writes are `fxforge.debug`'s (docs/debugging.md); the
environment's FXFORGE_REPRO_DIR applies to every PassManager, one built directly included.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from fxforge import symdims
from fxforge.dumps import DumpWarning, DumpWriter, load_dump  # noqa: F401 - re-exported here
from fxforge.errors import MiscompileError, OptionError, PipelineError
from fxforge.ir import Graph
from fxforge.passes import registry as pass_registry  # PASSES read at call time
from fxforge.printer import print_graph
from fxforge.verify import IRVerificationError, verify

ALL = "all"


# A pipeline entry: a registered pass name, or a callable `Graph -> Graph` or
# `Graph -> (Graph, stats)` (a pass under development, run with every instrument).
PassSpec = str | Callable[..., Any]


def parse_pipeline(spec: str | Sequence[PassSpec]) -> tuple[PassSpec, ...]:
    """`"dce, fuse"` or `["dce", my_pass, "fuse"]` -> validated tuple of names and callables."""
    if isinstance(spec, str):
        entries: list[PassSpec] = [s.strip() for s in spec.split(",")]
    elif callable(spec):
        entries = [spec]
    else:
        try:
            entries = [e.strip() if isinstance(e, str) else e for e in spec]
        except TypeError:
            raise PipelineError(f"passes must be names or callables, got {spec!r}") from None
    entries = [e for e in entries if e != ""]
    bad = [e for e in entries if not isinstance(e, str) and not callable(e)]
    if bad:
        raise PipelineError(f"pass {bad[0]!r} is neither a registered pass name nor a callable "
                            "Graph -> Graph")
    unknown = [e for e in entries if isinstance(e, str) and e not in pass_registry.PASSES]
    if unknown:
        raise PipelineError(f"unknown pass(es) {', '.join(map(repr, unknown))}; "
                            f"known passes: {', '.join(sorted(pass_registry.PASSES))}")
    return tuple(entries)


def pass_name(entry: PassSpec) -> str:
    """The name a pipeline entry is shown, selected and dumped under: a registered pass's own
    name; for a callable, `user:` and its qualified name (characters outside [A-Za-z0-9_.<>-]
    become `_`, so the name is safe in a file name and a report)."""
    if isinstance(entry, str):
        return entry
    name = getattr(entry, "__qualname__", None) or type(entry).__name__
    return "user:" + re.sub(r"[^A-Za-z0-9_.<>-]", "_", str(name))[:80]


def pass_names(pipeline: Sequence[PassSpec]) -> tuple[str, ...]:
    return tuple(pass_name(e) for e in pipeline)


def _call_pass(entry: PassSpec, graph: Graph, options: Mapping[str, Any]
               ) -> tuple[Graph, Mapping[str, Any]]:
    """Run one pipeline entry; a callable may return the graph alone or (graph, stats)."""
    fn = pass_registry.PASSES[entry] if isinstance(entry, str) else entry
    with symdims.assume(graph.dims):  # a pass's inference knows the graph's declared ranges
        result = fn(graph, **options)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Graph):
        new, stats = result
    else:
        new, stats = result, {}
    if not isinstance(new, Graph):
        raise TypeError(f"returned {type(new).__name__}, not a Graph (or a (Graph, stats) pair)")
    if not isinstance(stats, Mapping):
        raise TypeError(f"returned stats of type {type(stats).__name__}, not a dict")
    return new, stats


def _selection(value: Any) -> frozenset[str] | str | None:
    if value in (None, "", False):
        return None
    if value is True or value == ALL:
        return ALL
    names = value.split(",") if isinstance(value, str) else list(value)
    return frozenset(n.strip() for n in names if n.strip())


def _limit(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise OptionError(f"bisect limit {value!r}: expected a whole number >= 0") from None
    if limit < 0 or isinstance(value, bool):
        raise OptionError(f"bisect limit {value!r}: expected a whole number >= 0")
    return limit


@dataclass(frozen=True)
class DebugOptions:
    print_before: frozenset[str] | str | None = None  # pass names, or "all"
    print_after: frozenset[str] | str | None = None
    print_changed: bool = False
    print_diff: bool = False
    dump_dir: str | None = None
    verify_each: bool = False
    check_each: bool = False  # fxforge.debug.check: each stage against the one before
    check_rtol: float = 1e-4
    check_atol: float = 1e-5
    bisect_limit: int | None = None  # fxforge.debug.bisect: apply only the first N rewrites
    repro_dir: str | None = None  # bundles of failures go here; None: the temp dir; "off": none
    stream: TextIO | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DebugOptions:
        env = os.environ if env is None else env
        flag = lambda name: env.get(name, "").strip().lower() in ("1", "true", "yes", "on")  # noqa: E731
        return cls(print_before=_selection(env.get("FXFORGE_PRINT_BEFORE")),
                   print_after=_selection(env.get("FXFORGE_PRINT_AFTER")),
                   print_changed=flag("FXFORGE_PRINT_CHANGED"),
                   print_diff=flag("FXFORGE_PRINT_DIFF"),
                   dump_dir=env.get("FXFORGE_DUMP_DIR") or None,
                   verify_each=flag("FXFORGE_VERIFY"),
                   check_each=flag("FXFORGE_CHECK_EACH"),
                   bisect_limit=_limit(env.get("FXFORGE_BISECT_LIMIT")),
                   repro_dir=env.get("FXFORGE_REPRO_DIR") or None)

    @classmethod
    def make(cls, debug: Any = None, env: Mapping[str, str] | None = None) -> DebugOptions:
        """Environment settings, overridden by `debug`: None, True (verify each pass), a
        DebugOptions, or a dict of its fields (`{"print_after": "all", "dump_dir": "out"}`)."""
        base = cls.from_env(env)
        if debug is None or debug is False:
            return base
        if debug is True:
            return replace(base, verify_each=True)
        if isinstance(debug, DebugOptions):
            return debug
        if isinstance(debug, Mapping):
            unknown = set(debug) - set(cls.__dataclass_fields__)
            if unknown:
                raise TypeError(f"unknown debug option(s) {sorted(unknown)}; known: "
                                f"{sorted(cls.__dataclass_fields__)}")
            changes = dict(debug)
            for key in ("print_before", "print_after"):
                if key in changes:
                    changes[key] = _selection(changes[key])
            if "bisect_limit" in changes:
                changes["bisect_limit"] = _limit(changes["bisect_limit"])
            return replace(base, **changes)
        raise TypeError(f"debug must be None, a bool, a dict or DebugOptions, got {debug!r}")

    def wants(self, selection: frozenset[str] | str | None, name: str) -> bool:
        return selection == ALL or (selection is not None and name in selection)


@dataclass(frozen=True)
class PassRecord:
    name: str
    seconds: float
    changed: bool
    nodes_before: int
    nodes_after: int
    stats: Mapping[str, Any]  # counts, or lists of short notes


class PassManager:
    def __init__(self, pipeline: str | Sequence[PassSpec], debug: DebugOptions | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None):
        self.names = parse_pipeline(pipeline)
        self.debug = debug or DebugOptions()
        # keyword options of individual passes, by pass name (quantize: ranges, keep_float)
        self.options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options or {}).items()}

    def _emit(self, title: str, text: str) -> None:
        stream = self.debug.stream or sys.stderr
        stream.write(f"// ----- {title} -----\n{text}\n")
        stream.flush()

    def run(self, graph: Graph, dump_subdir: str = "", *,
            samples: Sequence[Sequence[Any]] | None = None,
            on_stage: Callable[[int, str, Graph, PassRecord | None], None] | None = None
            ) -> tuple[Graph, list[PassRecord]]:
        """Run the pipeline on `graph`. `samples` (lists of arrays, one per graph input) feed
        `check_each` and go into reproducer bundles; without them those use seeded inputs.
        `on_stage(index, name, graph, record)` sees the input (0, "input", graph, None) and the
        graph after every pass."""
        from fxforge.debug import bisect

        debug = self.debug
        dumps = DumpWriter(Path(debug.dump_dir), dump_subdir) if debug.dump_dir else None
        if dumps is not None:
            dumps.write(0, "input", graph)
        if on_stage is not None:
            on_stage(0, "input", graph, None)
        checker = self._checker(graph, samples) if debug.check_each else None
        budget = bisect.current()
        if budget is None and debug.bisect_limit is not None:
            budget = bisect.Budget(debug.bisect_limit, debug.stream or sys.stderr)
        records = []
        with bisect.active(budget):
            for index, entry in enumerate(self.names, start=1):
                name = pass_name(entry)
                before = graph
                graph, record = self._run_pass(index, entry, name, graph, samples, budget)
                if checker is not None:
                    self._check(checker, index, name, before, graph, samples)
                if dumps is not None:
                    dumps.write(index, name, graph)
                if on_stage is not None:
                    on_stage(index, name, graph, record)
                records.append(record)
        return graph, records

    def _run_pass(self, index: int, entry: PassSpec, name: str, graph: Graph, samples,
                  budget) -> tuple[Graph, PassRecord]:
        debug = self.debug
        if debug.wants(debug.print_before, name):
            self._emit(f"IR before {name}", print_graph(graph))
        start = time.perf_counter()
        counted = budget.count if budget is not None else 0
        if budget is not None:
            budget.pass_name = name
        try:
            new, stats = _call_pass(entry, graph, self.options.get(name, {}))
        except OptionError:  # an option the user gave is wrong: theirs to fix, not the pass's
            raise
        except Exception as e:
            error = PipelineError(f"pass {name!r} failed: {type(e).__name__}: {e}")
            error.pass_name = name
            self._attach_bundle(error, e, index, graph, samples)
            raise error from e
        seconds = time.perf_counter() - start
        if graph.dims and not new.dims:  # passes rebuild graphs from parts: keep the ranges
            new = replace(new, dims=graph.dims)
        changed = new != graph
        if changed and budget is not None and budget.count == counted \
                and not budget.allow("whole pass", "the graph"):
            new, changed = graph, False  # bisecting: this pass's change is past the limit
        if debug.verify_each:
            try:
                verify(new)
            except IRVerificationError as e:
                raise PipelineError(f"IR is invalid after pass {name!r}: {e}") from e
        if debug.wants(debug.print_after, name) and (changed or not debug.print_changed):
            if debug.print_diff:
                diff = difflib.unified_diff(print_graph(graph).splitlines(),
                                            print_graph(new).splitlines(),
                                            "before", "after", lineterm="")
                self._emit(f"IR diff of {name}", "\n".join(diff) or "(no change)")
            else:
                self._emit(f"IR after {name}", print_graph(new))
        return new, PassRecord(name, seconds, changed, len(graph.nodes), len(new.nodes),
                               dict(stats))

    # --- check_each and reproducers ---

    def _checker(self, graph: Graph, samples):
        from fxforge.debug.check import StageChecker, default_samples

        checker = StageChecker([list(s) for s in samples] if samples else default_samples(graph),
                               self.debug.check_rtol, self.debug.check_atol)
        try:
            checker.start(graph)
        except Exception as e:
            raise PipelineError(f"check_each: the pipeline's input graph does not run on the "
                                f"reference: {type(e).__name__}: {e}") from e
        return checker

    def _check(self, checker, index: int, name: str, before: Graph, after: Graph,
               samples) -> None:
        from fxforge.debug.check import describe

        divergence = checker.check(name, before, after)
        if divergence is None:
            return
        error = MiscompileError(
            describe(name, divergence), pass_name=name, value=divergence.value,
            op=divergence.op, module=divergence.module, error=divergence.error,
            tolerance=divergence.tolerance.describe())
        self._attach_bundle(error, error, index, before, checker.samples)
        raise error

    def _attach_bundle(self, error: Exception, cause: BaseException, index: int, graph: Graph,
                       samples) -> None:
        """Write the failure's reproducer (unless repro_dir is "off") and name it in the
        error's message. Writing it never hides the failure: its own error becomes a note."""
        where = self.debug.repro_dir or os.environ.get("FXFORGE_REPRO_DIR") or None
        if where == "off":
            return
        from fxforge.debug.bundle import Bundle, signature_of, write_bundle
        from fxforge.debug.check import default_samples

        name = pass_name(self.names[index - 1])
        try:
            bundle = Bundle(graph, list(pass_names(self.names[index - 1:])),
                            {k: v for k, v in self.options.items()
                             if k in pass_names(self.names[index - 1:])},
                            [list(s) for s in samples] if samples else default_samples(graph),
                            signature_of(cause, name), self.debug.check_each,
                            self.debug.check_rtol, self.debug.check_atol)
            if samples:
                bundle.samples_from = "the inputs the model was called with (and calibration)"
            path = write_bundle(bundle, where)
        except Exception as e:  # a full disk must not replace the pass's own error
            error.args = (f"{error.args[0]} (no reproducer: {type(e).__name__}: {e})",)
            return
        error.bundle = str(path)
        error.args = (f"{error.args[0]}\nreproducer: {path} (fxforge replay {path})",)
