"""`fxforge replay | bisect | reduce | view`: the debugging commands.

Exit codes say one thing each, so scripts can use them:

| command | 0 | 1 | 2 |
|---|---|---|---|
| replay BUNDLE | the same failure happened | it did not (other failure / none) | unusable |
| bisect BUNDLE | the first failing rewrite found | the failure does not happen | unusable |
| reduce BUNDLE | a reduced bundle written | the failure does not happen | unusable |
| view SOURCE | the page written | - | unusable |

(unusable: the bundle, the source or a flag.)

A user's pass named in a bundle (`user:NAME`) is supplied with `--pass user:NAME=module:function`:
the module is imported because the person running the command named it, never because a bundle
did.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from fxforge.errors import FxforgeError


def _user_passes(specs: list[str] | None) -> dict[str, Any]:
    passes = {}
    for spec in specs or ():
        name, sep, target = spec.partition("=")
        module, colon, attr = target.partition(":")
        if not sep or not colon or not name or not module or not attr:
            raise FxforgeError(f"--pass {spec!r}: expected NAME=module:function, e.g. "
                               "user:my_pass=my_passes:my_pass")
        try:
            passes[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise FxforgeError(f"--pass {spec!r}: {type(e).__name__}: {e}") from e
    return passes


def cmd_replay(args: argparse.Namespace) -> int:
    from fxforge.debug.bundle import replay

    result = replay(args.bundle, _user_passes(args.user_pass))
    print(result.describe())
    return 0 if result.reproduced else 1


def _bundle_predicate(bundle, user_passes):
    """Does the bundle's failing pass (alone) still fail the same way on a candidate?"""
    from fxforge.debug.bundle import matches, resolve_pipeline, run_bundle

    first = resolve_pipeline(bundle.pipeline[:1], user_passes)

    def predicate(graph, samples) -> bool:
        outcome = run_bundle(bundle, graph, samples, pipeline=first)
        return matches(bundle.signature, outcome.signature)

    return predicate


def cmd_bisect(args: argparse.Namespace) -> int:
    from fxforge.debug.bisect import bisect
    from fxforge.debug.bundle import load_bundle, matches, run_bundle

    bundle = load_bundle(args.bundle)
    user = _user_passes(args.user_pass)

    def fails(limit):
        outcome = run_bundle(bundle, bisect_limit=limit, keep_budget=True, user_passes=user)
        return matches(bundle.signature, outcome.signature, strict=False), outcome.budget

    try:
        result = bisect(fails)
    except ValueError as e:
        print(f"fxforge bisect: {e}")
        return 1
    if result.index == 0:
        print(f"the failure happens with no rewrite applied ({result.total} in all, "
              f"{result.runs} runs): the pass's input already fails")
    else:
        print(f"first failing application: {result.index} of {result.total} "
              f"({result.runs} runs)\n{result.line}")
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    from fxforge.debug.bundle import Bundle, load_bundle, write_bundle
    from fxforge.debug.reducer import reduce

    bundle = load_bundle(args.bundle)
    predicate = _bundle_predicate(bundle, _user_passes(args.user_pass))
    if not predicate(bundle.graph, bundle.samples):
        print("fxforge reduce: the bundle's failure does not happen: nothing to reduce")
        return 1
    start = time.perf_counter()
    result = reduce(bundle.graph, predicate, bundle.samples, time_limit=args.time_limit)
    reduced = Bundle(result.graph, bundle.pipeline[:1], bundle.options, result.samples,
                     bundle.signature, bundle.check_each, bundle.rtol, bundle.atol,
                     bundle.versions)
    out = write_bundle(reduced, args.out or Path(args.bundle).parent)
    print(f"reduced {result.nodes_before} -> {result.nodes_after} nodes in "
          f"{time.perf_counter() - start:.1f} s ({result.evaluations} tries"
          f"{', interrupted: best so far' if result.interrupted else ''})\n{out}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from fxforge.debug.html import write_html

    path = write_html(args.source, args.out)
    print(path)
    return 0


def add_commands(sub: Any) -> None:
    def bundle_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("bundle", help="a reproducer folder (written on a pass failure)")
        p.add_argument("--pass", dest="user_pass", action="append", metavar="NAME=module:fn",
                       help="supply a user's pass the bundle names (repeatable)")
        return p

    p = bundle_parser("replay", "rerun a reproducer bundle; exit 0 if the same failure happens")
    p.set_defaults(fn=cmd_replay)
    p = bundle_parser("bisect", "find the first rewrite application that brings the failure")
    p.set_defaults(fn=cmd_bisect)
    p = bundle_parser("reduce", "shrink a bundle's graph while the same failure holds")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this long with the best so far (Ctrl-C does too)")
    p.add_argument("--out", metavar="DIR", help="where the reduced bundle goes "
                                                "(default: beside the input)")
    p.set_defaults(fn=cmd_reduce)
    p = sub.add_parser("view", help="one self-contained HTML page of every stage of a dump dir")
    p.add_argument("source", help="a dump dir (compile with --dump-dir DIR)")
    p.add_argument("--out", default="fxforge-view.html", help="the HTML file to write")
    p.set_defaults(fn=cmd_view)

