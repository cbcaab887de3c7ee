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

Dumps are `00-input.ir`, `01-<pass>.ir`, ... with constants elided to digests, plus
`constants.npz` (keyed by digest, loadable without pickle) so `load_dump` restores runnable IR;
`fxforge/dumps.py` says how dumps are written and read safely.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from fxforge.dumps import DumpWarning, DumpWriter, load_dump  # noqa: F401 - re-exported here
from fxforge.errors import OptionError, PipelineError
from fxforge.ir import Graph
from fxforge.passes import registry as pass_registry  # PASSES read at call time
from fxforge.printer import print_graph
from fxforge.verify import IRVerificationError, verify

ALL = "all"


def parse_pipeline(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"dce, fuse"` or `["dce", "fuse"]` -> validated tuple of pass names."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in pass_registry.PASSES]
    if unknown:
        raise PipelineError(f"unknown pass(es) {', '.join(map(repr, unknown))}; "
                            f"known passes: {', '.join(sorted(pass_registry.PASSES))}")
    return tuple(names)


def _selection(value: Any) -> frozenset[str] | str | None:
    if value in (None, "", False):
        return None
    if value is True or value == ALL:
        return ALL
    names = value.split(",") if isinstance(value, str) else list(value)
    return frozenset(n.strip() for n in names if n.strip())


@dataclass(frozen=True)
class DebugOptions:
    print_before: frozenset[str] | str | None = None  # pass names, or "all"
    print_after: frozenset[str] | str | None = None
    print_changed: bool = False
    print_diff: bool = False
    dump_dir: str | None = None
    verify_each: bool = False
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
                   verify_each=flag("FXFORGE_VERIFY"))

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
    def __init__(self, pipeline: str | Sequence[str], debug: DebugOptions | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None):
        self.names = parse_pipeline(pipeline)
        self.debug = debug or DebugOptions()
        # keyword options of individual passes, by pass name (quantize: ranges, keep_float)
        self.options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options or {}).items()}

    def _emit(self, title: str, text: str) -> None:
        stream = self.debug.stream or sys.stderr
        stream.write(f"// ----- {title} -----\n{text}\n")
        stream.flush()

    def run(self, graph: Graph, dump_subdir: str = "") -> tuple[Graph, list[PassRecord]]:
        debug = self.debug
        dumps = DumpWriter(Path(debug.dump_dir), dump_subdir) if debug.dump_dir else None
        if dumps is not None:
            dumps.write(0, "input", graph)
        records = []
        for index, name in enumerate(self.names, start=1):
            if debug.wants(debug.print_before, name):
                self._emit(f"IR before {name}", print_graph(graph))
            start = time.perf_counter()
            try:
                new, stats = pass_registry.PASSES[name](graph, **self.options.get(name, {}))
            except OptionError:  # an option the user gave is wrong: theirs to fix, not the pass's
                raise
            except Exception as e:
                raise PipelineError(f"pass {name!r} failed: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - start
            changed = new != graph
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
            if dumps is not None:
                dumps.write(index, name, new)
            records.append(PassRecord(name, seconds, changed, len(graph.nodes), len(new.nodes),
                                      dict(stats)))
            graph = new
        return graph, records
