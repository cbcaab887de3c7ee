"""ONNX's node conformance tests through `import_onnx` and fxforge's executors.

    python -m fxforge.bench.onnx_conformance                    # all, numpy reference
    python -m fxforge.bench.onnx_conformance --target cpu       # also the torch CPU backend
    python -m fxforge.bench.onnx_conformance --ops Conv,Resize  # some op types only

The onnx wheel ships no `onnx/backend/test/data/node` folder, so the cases are generated in
memory with `onnx.backend.test.case.node.collect_testcases()`: each has a one-node model (or,
for `*_expanded*` cases, the op's function body as several nodes), its inputs and its expected
outputs, and ONNX's tolerances (rtol 1e-3, atol 1e-7, as ONNX's own backend runner uses them;
integer and bool outputs must be equal, and every output's dtype and shape must match).

A case is *claimed* when the importer has a converter for every op in its graph at the model's
opset and every input and output is a tensor of a dtype the IR has (float8, int4, strings,
uint16..64, bfloat16 and sequences are not). Claimed cases run: an import error, a run error or
a numeric mismatch is a failure with its reason. Inputs that the IR needs at import time (a
Reshape's shape, a TopK's K) are bound to the case's values (`constants=`), as a static-shape
compiler specializes at its first call; the report counts the cases where this happened.

Writes `docs/onnx-coverage.md` (or `--out`): totals, the pass rate on claimed cases, the claimed
share of all node tests, and a table per op type with every failure and its reason.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from fxforge.execute import TorchProgram, run_reference
from fxforge.onnx_import import NeedsConstantError, OnnxImportError, import_onnx, lookup
from fxforge.onnx_safety import ir_dtype

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "onnx-coverage.md"


@dataclass
class Case:
    name: str
    op_type: str  # the op under test (an expanded case counts for the op it expands)
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    rtol: float
    atol: float
    expanded: bool


@dataclass
class Result:
    case: Case
    status: str  # pass | unclaimed | import | run | mismatch
    detail: str = ""
    bound: bool = False
    seconds: float = 0.0


_CASES: list[Case] | None = None


def collect() -> list[Case]:
    """Every node test case of the installed onnx, in onnx's order (generated once)."""
    global _CASES  # noqa: PLW0603 - onnx's generator is itself global and runs once
    if _CASES is not None:
        return _CASES
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            raw = collect_testcases()
    by_name = {c.name: c for c in raw}
    cases = []
    for c in raw:
        if c.model is None or not c.data_sets:
            continue
        expanded = "_expanded" in c.name
        base = by_name.get(c.name.split("_expanded")[0]) if expanded else c
        nodes = (base or c).model.graph.node
        op_type = nodes[0].op_type if len(nodes) else "?"
        if len(nodes) > 1 and not expanded:
            op_type = _named_op(c.name, nodes)
        inputs, outputs = (list(map(_array, d)) for d in c.data_sets[0])
        cases.append(Case(c.name, op_type, c.model, inputs, outputs, c.rtol, c.atol, expanded))
    _CASES = cases
    return cases


def _array(x) -> np.ndarray:
    """A test value: an array, or a TensorProto (some Cast cases)."""
    if isinstance(x, onnx.TensorProto):
        from onnx import numpy_helper

        return numpy_helper.to_array(x)
    return x


def _named_op(name: str, nodes) -> str:
    """For a multi-node case that is not an expansion, the op its name is about."""
    key = name.removeprefix("test_").replace("_", "").lower()
    for n in nodes:
        if key.startswith(n.op_type.lower()):
            return n.op_type
    return nodes[-1].op_type


def _graph_ops(graph: onnx.GraphProto) -> set[tuple[str, str]]:
    ops = set()
    for n in graph.node:
        ops.add((n.domain, n.op_type))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                ops |= _graph_ops(a.g)
            for g in a.graphs:
                ops |= _graph_ops(g)
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                ops.add(("", "<subgraph>"))
    return ops


def claim(case: Case) -> str:
    """'' if the importer claims the case, else why not."""
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version
              for o in case.model.opset_import}
    missing = []
    for domain, op in sorted(_graph_ops(case.model.graph)):
        domain = "" if domain in ("", "ai.onnx") else domain
        fn, _ = lookup(op, domain, opsets.get(domain, 0)) if domain in opsets else (None, "")
        if fn is None:
            missing.append(op if not domain else f"{domain}.{op}")
    if missing:
        return "op " + ", ".join(sorted(set(missing)))
    for info in [*case.model.graph.input, *case.model.graph.output]:
        if info.type.WhichOneof("value") != "tensor_type":
            return f"dtype {info.type.WhichOneof('value') or 'untyped'}"
        elem = info.type.tensor_type.elem_type
        if ir_dtype(elem) is None:
            return f"dtype {onnx.TensorProto.DataType.Name(elem)}"
    return ""


def _import(case: Case):
    """import_onnx, binding the inputs the IR needs at import time to the case's values."""
    names = [i.name for i in case.model.graph.input
             if i.name not in {t.name for t in case.model.graph.initializer}]
    values = dict(zip(names, case.inputs))
    constants: dict[str, np.ndarray] = {}
    for _ in range(8):
        try:
            return import_onnx(case.model, constants=constants), bool(constants)
        except NeedsConstantError as e:
            new = [n for n in e.inputs if n in values and n not in constants]
            if not new:
                raise
            constants.update({n: values[n] for n in new})
    raise OnnxImportError("too many rounds of constant binding")


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {list(got.shape)} vs expected {list(want.shape)}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} vs expected {want.dtype}"
    if got.dtype.kind in "fc":
        with np.errstate(all="ignore"):
            ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            diff = np.where(ok, 0, np.where(np.isnan(diff), np.inf, diff))
            worst = np.unravel_index(np.nanargmax(diff), diff.shape) if diff.size else ()
            return (f"{int((~ok).sum())} of {ok.size} elements differ; worst at "
                    f"{tuple(int(i) for i in worst)}: {got[worst]!r} vs {want[worst]!r}")
        return ""
    if not np.array_equal(got, want):
        return f"{int((got != want).sum())} of {got.size} elements differ"
    return ""


def run_case(case: Case, target: str = "reference") -> Result:
    reason = claim(case)
    if reason:
        return Result(case, "unclaimed", reason)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imported, bound = _import(case)
    except Exception as e:  # noqa: BLE001 - the failure is the result
        return Result(case, "import", f"{type(e).__name__}: {_first_line(e)}",
                      seconds=time.perf_counter() - start)
    feed = dict(zip([i.name for i in case.model.graph.input
                     if i.name not in {t.name for t in case.model.graph.initializer}],
                    case.inputs))
    inputs = [feed[n] for n in imported.input_names]
    try:
        if target == "reference":
            outs = run_reference(imported.graph, inputs)
        else:
            import torch

            program = TorchProgram(imported.graph, torch.device("cpu"))
            outs = [t.numpy() for t in program([torch.from_numpy(np.array(x)) for x in inputs])]
    except Exception as e:  # noqa: BLE001
        return Result(case, "run", f"{type(e).__name__}: {_first_line(e)}", bound,
                      time.perf_counter() - start)
    for k, (got, want) in enumerate(zip(outs, case.outputs)):
        problem = _compare(got, want, case.rtol, case.atol)
        if problem:
            return Result(case, "mismatch", f"output {k}: {problem}", bound,
                          time.perf_counter() - start)
    return Result(case, "pass", "", bound, time.perf_counter() - start)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    if len(text) > 1 and line.endswith(":"):
        line += " " + text[1].strip()
    return line[:300]


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Totals:
    all: int = 0
    claimed: int = 0
    passed: int = 0
    bound: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)


def totals(results: Sequence[Result]) -> Totals:
    t = Totals(all=len(results))
    for r in results:
        if r.status == "unclaimed":
            continue
        t.claimed += 1
        t.bound += r.bound
        if r.status == "pass":
            t.passed += 1
        else:
            t.failures[r.status] += 1
    return t


def report(results: Sequence[Result], target: str, seconds: float) -> str:
    t = totals(results)
    by_op: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_op[r.case.op_type].append(r)
    claimed_ops = {op for op, rs in by_op.items() if any(r.status != "unclaimed" for r in rs)}
    strict = [r for r in results if r.case.op_type in claimed_ops]
    strict_pass = sum(r.status == "pass" for r in strict)
    unclaimed = collections.Counter(r.detail.split(" ")[0] for r in results
                                    if r.status == "unclaimed")
    rate = 100.0 * t.passed / max(t.claimed, 1)
    lines = [
        "# ONNX node conformance",
        "",
        "Generated by `python -m fxforge.bench.onnx_conformance"
        f"{' --target ' + target if target != 'reference' else ''}` "
        f"(onnx {onnx.__version__}, opsets up to {onnx.defs.onnx_opset_version()}; "
        f"{seconds:.0f} s). Each of ONNX's node test cases (generated in memory by "
        "`onnx.backend.test.case.node.collect_testcases()`, `*_expanded*` cases being the op's "
        "function body) is imported with `fxforge.onnx_import.import_onnx` and run on "
        f"`{'fxforge.execute.run_reference' if target == 'reference' else 'TorchProgram (cpu)'}`"
        "; outputs must match ONNX's expected ones in dtype, shape and value (ONNX's per-case "
        "tolerances, rtol 1e-3 and atol 1e-7; integers and bools exactly).",
        "",
        "A case is *claimed* when the importer has a converter for every op in its graph at the "
        "model's opset and all its inputs and outputs are tensors of dtypes the IR has. Inputs "
        "that the IR needs at import time (shape-like inputs, which ONNX's tests feed as graph "
        "inputs) are bound to the case's values with `constants=` (static specialization).",
        "",
        "## Totals",
        "",
        "| | cases | share |",
        "|---|---:|---:|",
        f"| all node tests | {t.all} | 100% |",
        f"| claimed | {t.claimed} | {100.0 * t.claimed / max(t.all, 1):.1f}% of all |",
        f"| passed | {t.passed} | **{rate:.1f}% of claimed** |",
        f"| failed: import error | {t.failures['import']} | |",
        f"| failed: run error | {t.failures['run']} | |",
        f"| failed: numeric mismatch | {t.failures['mismatch']} | |",
        f"| claimed with inputs bound as constants | {t.bound} | |",
        "",
        f"Strict view: counting every case of a claimed op type (also those refused for a dtype "
        f"the IR lacks) as claimed, {strict_pass} of {len(strict)} pass "
        f"({100.0 * strict_pass / max(len(strict), 1):.1f}%), {len(strict)} cases "
        f"({100.0 * len(strict) / max(t.all, 1):.1f}% of all).",
        "",
        f"Unclaimed cases: {sum(unclaimed.values())} ({unclaimed['op']} for an op the importer "
        f"lacks, {unclaimed['dtype']} for a dtype the IR lacks).",
        "",
        "## Unclaimed, by reason",
        "",
        "| reason | cases |",
        "|---|---:|",
        *[f"| {reason} | {n} |" for reason, n in collections.Counter(
            r.detail for r in results if r.status == "unclaimed").most_common(25)],
        "",
        "## Per op type",
        "",
        "Cases count for the op they test (an expanded case for the op it expands). "
        "*claimed / passed / failed* count claimed cases, *bound* those among them that needed "
        "inputs bound as constants; *unclaimed* says why the others are not.",
        "",
        "| op type | cases | claimed | passed | failed | bound | unclaimed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for op in sorted(by_op):
        rs = by_op[op]
        c = [r for r in rs if r.status != "unclaimed"]
        p = sum(r.status == "pass" for r in c)
        why = collections.Counter(r.detail for r in rs if r.status == "unclaimed")
        why_text = "; ".join(f"{d} ({n})" for d, n in why.most_common(3))
        if len(why) > 3:
            why_text += "; ..."
        bound = sum(r.bound for r in c)
        lines.append(f"| {op} | {len(rs)} | {len(c)} | {p} | {len(c) - p} | {bound} | "
                     f"{why_text} |")
    failures = [r for r in results if r.status not in ("pass", "unclaimed")]
    lines += ["", "## Failures", "",
              "Every claimed case that fails, with its kind (import error, run error, numeric "
              "mismatch) and the first line of the reason.", "",
              "| case | op type | kind | reason |", "|---|---|---|---|"]
    for r in sorted(failures, key=lambda r: (r.case.op_type, r.case.name)):
        detail = r.detail.replace("|", "\\|")
        lines.append(f"| {r.case.name} | {r.case.op_type} | {r.status} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=("reference", "cpu"), default="reference")
    parser.add_argument("--ops", default="", help="comma-separated op types to run")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown report ('-': none)")
    parser.add_argument("--verbose", action="store_true", help="print every failure")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cases = collect()
    if args.ops:
        wanted = set(args.ops.split(","))
        cases = [c for c in cases if c.op_type in wanted]
    results = [run_case(c, args.target) for c in cases]
    seconds = time.perf_counter() - start
    t = totals(results)
    print(f"{t.all} cases, {t.claimed} claimed ({100.0 * t.claimed / max(t.all, 1):.1f}%), "
          f"{t.passed} passed ({100.0 * t.passed / max(t.claimed, 1):.1f}% of claimed), "
          f"{dict(t.failures)} in {seconds:.0f} s")
    if args.verbose:
        for r in results:
            if r.status not in ("pass", "unclaimed"):
                print(f"{r.case.name}: {r.status}: {r.detail}")
    if args.out != "-":
        Path(args.out).write_text(report(results, args.target, seconds), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
