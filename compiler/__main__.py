"""The `fxforge` command line (also `python -m fxforge`).

    fxforge ir path/to/model.py:make_model --input 1x3x32x32      # captured and optimized IR
    fxforge compile zoo:resnet18 --target reference                # report + match against eager
    fxforge demo                                                   # the bundled default
    fxforge demo --workflow                # prune, distill, int8, save, load: digits CNN
    fxforge targets | fxforge ops                                  # what exists
    fxforge bench [--quick] [--models m,..] [--systems s,..]       # side-by-side benchmark
    fxforge replay|bisect|reduce BUNDLE, fxforge view DUMP_DIR     # debugging a pass
    fxforge compile zoo:digits --save d.fxf; fxforge inspect d.fxf # saved models
    fxforge compile model.onnx --target cpu-int8 --calibrate 8     # an ONNX model
    fxforge export zoo:resnet18 --target cpu-int8 -o r18.onnx      # the optimized graph as ONNX
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from fxforge import dtypes, zoo
from fxforge.api import compile as fx_compile
from fxforge.errors import FxforgeError
from fxforge.ops import OPS
from fxforge.pipeline import DebugOptions
from fxforge.printer import print_graph
from fxforge.targets import TARGET_INFO, TARGETS

DEMO_MODEL = "resnet18"


class CliError(FxforgeError):
    """A command-line usage problem (bad spec, bad --input)."""


# --- loading models ----------------------------------------------------------------------------


def load_spec(spec: str, batch: int = 1) -> tuple[torch.nn.Module, tuple | None]:
    """`zoo:NAME` or `path/to/file.py:factory` -> (module, example inputs or None).

    The factory returns a module, or a (module, example_inputs) pair. Running it executes the
    user's own file, as `python file.py` would; nothing else is ever executed."""
    if spec.startswith("zoo:"):
        try:
            return zoo.build(spec[4:], batch)
        except KeyError as e:
            raise CliError(str(e.args[0])) from None
    if spec.endswith(".onnx"):
        from fxforge.onnx_cli import load_onnx_spec

        return load_onnx_spec(spec, batch)
    path, sep, factory = spec.rpartition(":")
    if not sep or not path or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", factory):
        raise CliError(f"model spec {spec!r} must be `path/to/file.py:factory` or `zoo:NAME` "
                       f"(zoo: {', '.join(zoo.ZOO)})")
    file = Path(path)
    if not file.is_file():
        raise CliError(f"model file {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"fxforge_user_{file.stem}", file)
    if module_spec is None or module_spec.loader is None:
        raise CliError(f"cannot load {file} as Python")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise CliError(f"{file} has no function {factory!r}")
    result = fn()
    if isinstance(result, torch.nn.Module):
        return result, None
    if (isinstance(result, tuple) and len(result) == 2
            and isinstance(result[0], torch.nn.Module)):
        inputs = result[1]
        return result[0], inputs if isinstance(inputs, tuple) else (inputs,)
    raise CliError(f"{spec} returned {type(result).__name__}; expected an nn.Module or a "
                   "(module, example_inputs) pair")


def parse_input(text: str, int_high: int) -> torch.Tensor:
    """`1x3x32x32` (float32 normal) or `2x16:i64` (integers in [0, int_high))."""
    shape_text, _, dtype = text.partition(":")
    if not re.fullmatch(r"\d+(x\d+)*", shape_text):
        raise CliError(f"--input {text!r}: expected a shape like 1x3x32x32, optionally :dtype")
    shape = tuple(int(d) for d in shape_text.split("x"))
    dtype = dtype or "f32"
    try:
        torch_dtype = dtypes.to_torch(dtype)
    except dtypes.DTypeError as e:
        raise CliError(f"--input {text!r}: {e}") from None
    if dtypes.is_float(dtype):
        return torch.randn(shape).to(torch_dtype)
    if dtype == "bool":
        return torch.randint(0, 2, shape).bool()
    return torch.randint(0, int_high, shape).to(torch_dtype)


def _inputs(args: argparse.Namespace, example: tuple | None) -> tuple:
    if args.input:
        torch.manual_seed(args.seed)
        return tuple(parse_input(text, args.int_high) for text in args.input)
    if example is None:
        raise CliError("the model spec gives no example inputs: pass --input SHAPE[:dtype] for "
                       "each input, e.g. --input 1x3x32x32")
    return example


def _debug(args: argparse.Namespace) -> DebugOptions:
    debug: dict[str, Any] = {}
    for key in ("print_before", "print_after", "dump_dir", "repro_dir"):
        if getattr(args, key):
            debug[key] = getattr(args, key)
    for key in ("print_changed", "print_diff", "check_each"):
        if getattr(args, key):
            debug[key] = True
    if args.verify:
        debug["verify_each"] = True
    if args.bisect_limit is not None:
        debug["bisect_limit"] = args.bisect_limit
    return DebugOptions.make(debug)


# --- commands ----------------------------------------------------------------------------------


def cmd_ir(args: argparse.Namespace) -> int:
    model, example = load_spec(args.spec, args.batch)
    inputs = _inputs(args, example)
    compiled = fx_compile(model, args.target, example_inputs=inputs, passes=args.passes,
                          debug=_debug(args))
    print("// captured IR")
    print(print_graph(compiled.captured_graph, inline_constants=args.inline_constants))
    print(f"\n// optimized IR (target {args.target}, passes: "
          f"{', '.join(compiled.report.pipeline) or 'none'})")
    print(print_graph(compiled.graph, inline_constants=args.inline_constants))
    return 0


def _max_errors(expected: Any, got: Any) -> list[tuple[str, float]]:
    rows = []
    for (path, a), b in zip(pytree.tree_flatten_with_path(expected)[0], pytree.tree_leaves(got)):
        if isinstance(a, torch.Tensor):
            err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            rows.append((pytree.keystr(path) or "output", err))
    return rows


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms else float(torch.equal(a, b))


def _median_ms(fn, inputs: tuple, repeats: int) -> float:
    fn(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _summarize(compiled, model, inputs: tuple, repeats: int) -> None:
    graph = compiled.graph
    counts = collections.Counter(n.op for n in graph.nodes)
    print(f"IR: {len(graph.nodes)} nodes, {len(graph.inputs)} input(s), "
          f"{len(graph.outputs)} output(s)")
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in counts.most_common()))
    lines = print_graph(graph).splitlines()
    shown = [line for line in lines if " = const " not in line]
    print("\n".join(shown[:12] + (["  ..."] if len(shown) > 13 else []) + shown[-2:]))
    print()
    print(compiled.report)
    if isinstance(model, str):  # an ONNX file: ONNX Runtime on it is the reference
        from fxforge.onnx_cli import OnnxRuntimeReference

        model = OnnxRuntimeReference(model)
    reference = getattr(model, "reference_name", "eager PyTorch")
    with torch.no_grad():
        expected = model(*inputs)
    got = compiled(*inputs)
    int8 = TARGET_INFO[compiled.target].precision == "int8"
    print(f"\nmatch against {reference} " + ("(int8: cosine similarity >= 0.99):" if int8 else
                                             "(float32; tolerance rtol 1e-4, atol 1e-5):"))
    ok = True
    for (name, err), a, b in zip(_max_errors(expected, got), pytree.tree_leaves(expected),
                                 pytree.tree_leaves(got)):
        close = _cosine(a, b) >= 0.99 if int8 else torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        ok &= close
        print(f"  {name:30} max |error| = {err:.3e}   {'ok' if close else 'MISMATCH'}")
    if repeats:
        with torch.no_grad():
            eager_ms = _median_ms(model, inputs, repeats)
        ours_ms = _median_ms(compiled, inputs, repeats)
        short = "ONNX Runtime" if reference != "eager PyTorch" else "eager"
        print(f"\nlatency, median of {repeats} after warm-up, this machine, this run: {short} "
              f"{eager_ms:.2f} ms, fxforge {compiled.target} {ours_ms:.2f} ms "
              f"(ratio {eager_ms / ours_ms:.2f}x)")
    if not ok:
        raise FxforgeError(f"compiled outputs do not match {reference}")


def _quant_options(args: argparse.Namespace, zoo_name: str | None, inputs: tuple) -> dict:
    """compile() options from the command line: for int8 targets `--calibrate N` batches (the
    digits model's training images, else random inputs shaped like the example); for Triton
    targets `--no-autotune` and `--no-cuda-graphs`."""
    options: dict[str, Any] = {}
    if TARGET_INFO[args.target].backend == "triton" and getattr(args, "no_autotune", False):
        options["autotune"] = False
    if TARGET_INFO[args.target].backend == "triton" and getattr(args, "no_cuda_graphs", False):
        options["cuda_graphs"] = False
    if TARGET_INFO[args.target].precision != "int8":
        return options
    options.update(calibration_method=args.calibration_method, min_sqnr=args.min_sqnr)
    if args.calibrate:
        if zoo_name is not None:
            options["calibration"] = zoo.calibration_data(zoo_name, args.batch, args.calibrate)
        else:
            generator = torch.Generator().manual_seed(args.seed + 1)
            options["calibration"] = [
                tuple(torch.randn(x.shape, generator=generator) if x.is_floating_point() else x
                      for x in inputs) for _ in range(args.calibrate)]
    return options


def compile_spec(args: argparse.Namespace) -> tuple[Any, Any, tuple]:
    """(compiled, model, inputs) for the CLI's SPEC, --target, --input and int8 options (zoo
    models calibrate on their own data); shared by `compile` and `export`."""
    model, example = load_spec(args.spec, args.batch)
    inputs = _inputs(args, example)
    name = args.spec.removeprefix("zoo:")
    zoo_name = name if args.spec.startswith("zoo:") and name in zoo.ZOO else None
    compiled = fx_compile(model, args.target, example_inputs=inputs, passes=args.passes,
                          debug=_debug(args), **_quant_options(args, zoo_name, inputs))
    return compiled, model, inputs


def cmd_compile(args: argparse.Namespace) -> int:
    compiled, model, inputs = compile_spec(args)
    _summarize(compiled, model, inputs, args.repeats)
    if args.save:
        print(f"\nsaved to {compiled.save(args.save)} (fxforge inspect / fxforge.load)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.workflow:
        from fxforge.workflow import run

        run(amount=args.prune, epochs=args.epochs, out=args.out, repeats=args.repeats or 30,
            progress=sys.stderr.isatty())
        return 0
    model, inputs = zoo.build(args.model, args.batch)
    print(f"fxforge demo: {args.model} ({zoo.ZOO[args.model].description}), batch {args.batch}, "
          f"target {args.target}\n")
    compiled = fx_compile(model, args.target, example_inputs=inputs,
                          **_quant_options(args, args.model, inputs))
    _summarize(compiled, model, inputs, args.repeats)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "bench_missing", None):
        raise CliError(f"the bench package is not importable ({args.bench_missing}): run from "
                       "the repository root, or install fxforge with its bench extra")
    from fxforge.bench.harness import main as bench_main

    return bench_main(args)


def cmd_targets(args: argparse.Namespace) -> int:
    print(f"{'target':16}{'backend':11}{'precision':18}status")
    for name in TARGETS:
        t = TARGET_INFO[name]
        print(f"{name:16}{t.backend:11}{t.precision:18}{'ready' if not t.missing else t.missing}")
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    for name, opdef in OPS.items():
        attrs = ", ".join(opdef.attrs)
        print(f"{name:30} {opdef.kind:12} [{attrs}]\n    {opdef.doc}")
    return 0


# --- argument parsing --------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path/to/file.py:factory (returns a module, or (module, "
                                "example_inputs)), zoo:NAME, or model.onnx")
    p.add_argument("--input", action="append", metavar="SHAPE[:DTYPE]",
                   help="one per positional input, e.g. 1x3x32x32 or 2x16:i64 (repeatable)")
    p.add_argument("--target", default="cpu", choices=TARGETS, help="compile target")
    p.add_argument("--passes", help="comma-separated pipeline instead of the target's default")
    p.add_argument("--batch", type=int, default=1, help="batch size for zoo models")
    p.add_argument("--seed", type=int, default=0, help="seed for random --input tensors")
    p.add_argument("--int-high", type=int, default=100, help="integer inputs are in [0, N)")
    p.add_argument("--print-before", metavar="PASSES|all", help="print IR before these passes")
    p.add_argument("--print-after", metavar="PASSES|all", help="print IR after these passes")
    p.add_argument("--print-changed", action="store_true",
                   help="with --print-after: only when the pass changed the IR")
    p.add_argument("--print-diff", action="store_true", help="print a diff instead of the IR")
    p.add_argument("--dump-dir", metavar="DIR", help="write every stage as DIR/NN-pass.ir")
    p.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    p.add_argument("--check-each", action="store_true",
                   help="run every stage on the numpy reference; stop at the first pass that "
                        "changes what the graph computes (MiscompileError + reproducer)")
    p.add_argument("--bisect-limit", type=int, metavar="N",
                   help="apply only the first N rewrites (each logged as a BISECT line)")
    p.add_argument("--repro-dir", metavar="DIR",
                   help="write failure reproducers here (default: the temp dir; 'off': none)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("int8 targets")
    g.add_argument("--calibrate", type=int, default=8, metavar="N",
                   help="calibrate on N batches (zoo:digits: training images; else random inputs "
                        "shaped like the example); 0: dynamic quantization")
    g.add_argument("--calibration-method", default="minmax",
                   choices=("minmax", "percentile", "entropy", "mse"))
    g.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="keep layers whose own output SQNR is below DB in float")
    g = p.add_argument_group("cuda targets (Triton kernels)")
    g.add_argument("--no-autotune", action="store_true",
                   help="use each kernel's default config instead of timing its candidates")
    g.add_argument("--no-cuda-graphs", action="store_true",
                   help="launch kernels one by one instead of replaying a CUDA graph")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    try:
        from fxforge.bench.harness import add_arguments
    except ImportError as e:  # run from outside the repository without the bench package
        p.set_defaults(bench_missing=str(e))
        return
    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxforge", description="fxforge: compile PyTorch models through an inspectable IR.",
        epilog="Environment: FXFORGE_PRINT_AFTER=all, FXFORGE_PRINT_BEFORE, "
               "FXFORGE_PRINT_CHANGED=1, FXFORGE_PRINT_DIFF=1, FXFORGE_DUMP_DIR=dir, "
               "FXFORGE_VERIFY=1, FXFORGE_CHECK_EACH=1, FXFORGE_BISECT_LIMIT=N, "
               "FXFORGE_REPRO_DIR=dir apply to every compile.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("ir", help="print the captured and the optimized IR of a model")
    _add_model_args(p)
    p.add_argument("--inline-constants", action="store_true",
                   help="print every constant's values instead of a digest")
    p.set_defaults(fn=cmd_ir)
    p = sub.add_parser("compile", help="compile a model; print IR summary, report and the "
                                       "match against eager")
    _add_model_args(p)
    p.add_argument("--repeats", type=int, default=20, help="timed runs (0: no timing)")
    p.add_argument("--save", metavar="PATH", help="save the compiled model to this archive")
    _add_quant_args(p)
    p.set_defaults(fn=cmd_compile)
    p = sub.add_parser("demo", help="compile a bundled zoo model and show what happened")
    p.add_argument("--model", default=DEMO_MODEL, choices=list(zoo.ZOO))
    p.add_argument("--target", default="cpu", choices=TARGETS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20, help="timed runs (0: no timing)")
    g = p.add_argument_group("the optimization workflow (--workflow)")
    g.add_argument("--workflow", action="store_true",
                   help="digits CNN: prune, distill, int8, save, load in a fresh process; "
                        "accuracy, size and speed at every step")
    g.add_argument("--prune", type=float, default=0.5, help="fraction of channels pruned")
    g.add_argument("--epochs", type=int, default=15, help="distillation epochs")
    g.add_argument("--out", metavar="DIR", help="where the archive goes (default: a temp dir)")
    _add_quant_args(p)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("bench", help="benchmark fxforge targets against eager PyTorch, "
                                     "torch.compile and ONNX Runtime: JSON, markdown, plots")
    _add_bench_args(p)
    p.set_defaults(fn=cmd_bench)
    from fxforge.archive_cli import add_commands as add_archive_commands
    from fxforge.debug.cli import add_commands
    from fxforge.onnx_cli import add_commands as add_onnx_commands

    add_commands(sub)
    add_archive_commands(sub)
    add_onnx_commands(sub, _add_model_args, _add_quant_args)
    sub.add_parser("targets", help="list compile targets").set_defaults(fn=cmd_targets)
    sub.add_parser("ops", help="list the IR's ops").set_defaults(fn=cmd_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except (FxforgeError, NotImplementedError, ValueError, TypeError) as e:
        print(f"fxforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
