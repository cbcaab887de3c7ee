"""`fxforge inspect ARCHIVE`: what a saved model archive holds, read as `fxforge.load` reads it.

The archive is fully checked first (hashes, format version, IR, constants), so `inspect` also
answers "will this file load here?"; a bad archive prints the same error `load` raises, exit 2.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from fxforge.archive import load, read_manifest
from fxforge.report import count_flops, count_params


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g}"


def _leaf(item: list) -> str:
    if item and item[0] == "tensor":
        return f"{item[2].removeprefix('torch.')}[{','.join(map(str, item[1]))}]"
    return f"{item[1]} {item[2]}" if len(item) == 3 else str(item)


def describe(path: str, show_ir: bool = False) -> str:
    """The manifest and a summary of each saved graph, as text."""
    manifest = read_manifest(path)
    model = load(path)
    v = manifest.get("versions", {})
    lines = [f"fxforge archive {path}",
             f"  format        {manifest['format']} v{manifest['version']}, written "
             f"{manifest.get('created', '?')} by fxforge {v.get('fxforge', '?')} "
             f"(torch {v.get('torch', '?')}, numpy {v.get('numpy', '?')}, "
             f"python {v.get('python', '?')})",
             f"  model         {manifest['model']}",
             f"  target        {manifest['target']}",
             f"  pipeline      {', '.join(manifest['pipeline']) or 'none'}"]
    options = manifest.get("options") or {}
    if options:
        lines.append("  options       " + ", ".join(f"{k}={v}" for k, v in options.items()))
    forward = manifest.get("forward")
    if forward:
        lines.append("  forward       (" + ", ".join(p["name"] for p in forward) + ")")
    if manifest.get("kernel_configs"):
        lines.append(f"  kernel configs {len(manifest['kernel_configs'])} autotuned pick(s)")
    lines.append("  members")
    for name, info in manifest["entries"].items():
        lines.append(f"    {name:16}{_si(info['bytes']) + 'B':>12}  sha256 {info['sha256'][:16]}")
    for i, (record, graph) in enumerate(zip(manifest["signatures"], model.graphs)):
        inputs = ", ".join(_leaf(x) for x in record["leaves"])
        ops = collections.Counter(n.op for n in graph.nodes if n.op != "const")
        lines += [f"  signature {i}   ({inputs})",
                  f"    {len(graph.nodes)} nodes, {_si(count_params(graph))} params, "
                  f"{_si(count_flops(graph))} FLOPs",
                  "    ops: " + ", ".join(f"{op} x{n}" for op, n in ops.most_common())]
        if show_ir:
            lines += ["", str(graph), ""]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    print(describe(args.archive, show_ir=args.ir))
    if args.report:
        print()
        print(load(args.archive).report)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("inspect", help="print what a saved model archive (CompiledModel.save) "
                                       "holds, after checking it as fxforge.load does")
    p.add_argument("archive", help="the archive's path")
    p.add_argument("--ir", action="store_true", help="also print each saved graph's IR")
    p.add_argument("--report", action="store_true", help="also print the saved compile report")
    p.set_defaults(fn=cmd_inspect)
