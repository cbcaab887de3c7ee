"""`compile()` and `CompiledModel`: the user-facing API.

The compiled model keeps the user's module only to read its forward signature and to capture it
again for a new input signature; it never modifies it (training flags are restored after export,
weights are copied into the IR). Calls are matched on their input signature (tree structure,
shapes, dtypes and non-tensor values): one capture per signature, cached.

Threads: a compiled model may be called from many threads at once. The first call of a new
signature captures under the process-wide export lock and then the model's lock (always in that
order, so nested compiled models cannot deadlock) while the others wait for it (then find the
entry); calls of a known signature take no lock (programs keep no per-call state).
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from fxforge import dtypes, symdims
from fxforge.capture import EXPORT_LOCK, Captured, capture
from fxforge.dynamic import check_option as check_dynamic
from fxforge.dynamic import resolve as resolve_dynamic
from fxforge.errors import InputError, OptionError
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Graph
from fxforge.kernels import int8_scheme
from fxforge.passes.smooth import check_alpha
from fxforge.pipeline import DebugOptions, PassManager, parse_pipeline, pass_names
from fxforge.quant_math import WEIGHT_BITS
from fxforge.quantization import (
    Quantization,
    QuantOptions,
    check_keep_float,
    check_min_sqnr,
)
from fxforge.report import CompileRecord, Report, count_flops, count_params
from fxforge.targets import Target, get_target


@dataclass
class _Entry:
    """One input signature: what was captured and the graph after the pipeline."""

    captured: Captured
    graph: Graph
    leaf_types: tuple[Any, ...]
    in_spec: Any = None  # the pytree spec of the call's (args, kwargs), for saving
    programs: dict[str, TorchProgram] = field(default_factory=dict)
    constants: dict = field(default_factory=dict)  # (digest, device) -> tensor, see _specialized


def _outside_a_range(graph: Graph, shapes: list[tuple]) -> bool:
    """Whether a size given for a bare symbol of `graph` is outside that symbol's range."""
    ranges = {r.name: r for r in graph.dims}
    return any(symdims.is_sym(d) and d.is_Symbol and d.name in ranges
               and not ranges[d.name].contains(int(n))
               for v, shape in zip(graph.inputs, shapes) for d, n in zip(v.type.shape, shape))


def _leaf_key(leaf: Any) -> tuple:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), str(leaf.dtype), leaf.device.type)
    return ("const", type(leaf).__name__, repr(leaf))


def _fast_key(args: tuple) -> tuple | None:
    """The key of a call made of plain tensors only (None otherwise): its pytree is the
    positional tuple, so shapes, dtypes and devices are all that decide its compiled entry."""
    key = []
    for a in args:
        if type(a) is not torch.Tensor:
            return None
        key.append((a.shape, a.dtype, a.device))
    return tuple(key)


def _describe_leaf(key: tuple) -> str:
    if key[0] == "tensor":
        try:
            dtype = dtypes.from_torch(getattr(torch, key[2].split(".")[-1]))
        except (AttributeError, dtypes.DTypeError):
            dtype = key[2]
        return f"{dtype}[{','.join(map(str, key[1]))}]" + ("" if key[3] == "cpu" else f"@{key[3]}")
    return f"{key[1]} {key[2]}"


def _normalize_example(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    raise TypeError("example_inputs must be a tensor, a tuple of positional inputs or a dict of "
                    f"keyword inputs, got {type(example).__name__}")


class CompiledModel:
    """A model compiled by fxforge: call it like the original module."""

    def __init__(self, model: torch.nn.Module, target: Target, pipeline: tuple[str, ...],
                 debug: DebugOptions, quant: QuantOptions | None = None,
                 autotune: bool | None = None):
        self._model = model
        self._autotune = autotune
        self._device = None
        if target.backend == "triton":
            from fxforge.kernels.triton.jit import check_device

            self._device = check_device(target.name)
        self._quant = None
        if quant is not None and "quantize" in pipeline:
            float_passes = pipeline[:pipeline.index("quantize")]
            self._quant = Quantization(self._capture, quant, float_passes, debug)
        self.target = target.name
        self._target = target
        self._manager = PassManager(pipeline, debug)
        self.report = Report(target.name, pass_names(pipeline))
        if quant is not None:
            self.report.int8 = f"{quant.weight_bits}-bit weights"
            if target.backend == "torch":
                self.report.int8 += f"; this CPU's scheme: {int8_scheme.detect().describe()}"
        try:
            signature: inspect.Signature | None = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None
        self._init_calls(signature, type(model).__name__)

    def _init_calls(self, signature: inspect.Signature | None, name: str) -> None:
        """The state calls use, shared with models loaded from an archive (fxforge.archive)."""
        self._entries: dict[tuple, _Entry] = {}
        self._lock = threading.RLock()  # one capture at a time; see the module docstring
        self._latest: _Entry | None = None
        self._fast_calls: dict[tuple, Callable[[tuple], Any]] = {}  # see _remember_fast
        self._fixed = False  # True when compiled for example_inputs only
        self._loaded_from: str | None = None  # the archive's path, for a loaded model
        self._saved_options: dict[str, Any] = {}  # a loaded model's compile options
        self._signature = signature
        self._name = name
        self._dynamic: Any = None  # compile(dynamic=...): see fxforge.dynamic
        self._cuda_graphs: bool | None = None  # compile(cuda_graphs=...): kernels/triton
        self._symbolic: list[_Entry] = []  # dynamic captures, after the pipeline
        self._dynamic_captured: list[tuple[tuple, Captured]] = []  # (structure, capture)

    # --- inputs ---

    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Canonical (args, kwargs): as positional as the forward signature allows."""
        if self._signature is None:
            return args, kwargs
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InputError(f"{self._name}.forward{self._signature}: {e}") from None
        return tuple(bound.args), dict(bound.kwargs)

    def _leaf_names(self, args: tuple, kwargs: dict) -> list[str]:
        params = list(self._signature.parameters) if self._signature is not None else []
        names = []
        for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]:
            head, rest = path[0], path[1:]
            if head.idx == 0 and rest:
                i = rest[0].idx
                name = params[i] if i < len(params) else f"args[{i}]"
                rest = rest[1:]
            elif rest:
                name, rest = str(rest[0].key), rest[1:]
            else:
                name = "?"
            names.append(name + pytree.keystr(tuple(rest)))
        return names

    def _key(self, args: tuple, kwargs: dict) -> tuple[tuple, list]:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        return (repr(spec), tuple(_leaf_key(x) for x in leaves)), leaves

    def _mismatch(self, args: tuple, kwargs: dict, key: tuple) -> InputError:
        if self._loaded_from is not None:
            saved = "; ".join(self._describe(leaves) for _, leaves in self._entries)
            return InputError(f"{self._name} loaded from {self._loaded_from} runs the input "
                              f"signature(s) it was saved with ({saved}); got "
                              f"{self._describe(key[1])}. Save it after calling it with every "
                              "signature it must serve")
        expected_spec, expected = next(iter(self._entries))
        names = self._leaf_names(args, kwargs)
        if key[0] != expected_spec or len(key[1]) != len(expected):
            return InputError(f"{self._name} was compiled for {len(expected)} input(s) "
                              f"({self._describe(expected)}); got {len(key[1])} "
                              f"({self._describe(key[1])})")
        for name, want, got in zip(names, expected, key[1]):
            if want != got:
                return InputError(
                    f"input {name!r} of {self._name}: compiled for {_describe_leaf(want)}, got "
                    f"{_describe_leaf(got)}. compile() without example_inputs to specialize on "
                    "each new input signature")
        return InputError("inputs differ from the compiled signature")

    @staticmethod
    def _describe(keys: tuple) -> str:
        return ", ".join(_describe_leaf(k) for k in keys)

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[_Entry, list]:
        args, kwargs = self._bind(args, kwargs)
        key, leaves = self._key(args, kwargs)
        entry = self._entries.get(key)
        if entry is None and self._symbolic:
            entry = self._specialize_for(key, leaves)
        if entry is None:
            if self._fixed:
                raise self._mismatch(args, kwargs, key)
            entry = self._compile_for(args, kwargs, key)
        self._latest = entry
        return entry, leaves

    # --- dynamic dims (fxforge.dynamic) ---

    @staticmethod
    def _structure(key: tuple) -> tuple:
        """What a dynamic graph fixes about a call: the pytree, each tensor's dtype, device and
        rank, and every non-tensor input's value; the sizes are what it leaves open."""
        return (key[0], tuple(("tensor", len(k[1]), k[2], k[3]) if k[0] == "tensor" else k
                              for k in key[1]))

    def _specialize_for(self, key: tuple, leaves: list) -> _Entry | None:
        """The entry for a call that a dynamic graph admits: that graph with the call's sizes
        substituted (no capture, no passes). None when none admits it; with example_inputs
        (nothing else may be captured) the DimError (an InputError) naming the input, dim and
        range a size breaks."""
        structure = self._structure(key)
        refused: symdims.DimError | None = None
        for symbolic in self._symbolic:
            if self._structure((key[0], symbolic.leaf_types)) != structure:
                continue
            shapes = [tuple(leaves[i].shape) for i in symbolic.captured.input_leaves]
            try:
                values = symdims.bind(symbolic.graph, shapes)
            except symdims.DimError as e:
                if _outside_a_range(symbolic.graph, shapes):
                    raise  # a size the user's (or the model's) range excludes: not recaptured
                refused = refused or e  # a static dim differs: another graph, or a capture
                continue
            entry = self._specialized(symbolic, values, key[1])
            with self._lock:
                found = self._entries.setdefault(key, entry)
                if found is entry:
                    self.report.specializations.append(
                        ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
            return found
        if refused is not None and self._fixed:
            raise refused
        return None

    @staticmethod
    def _specialized(symbolic: _Entry, values: dict[str, int], leaf_types: tuple) -> _Entry:
        """`symbolic` at these sizes: the static graph, output sizes the model returns as
        numbers evaluated, and the weights shared with every other size (one copy per device,
        not one per size)."""
        captured = symbolic.captured
        leaves = tuple((kind, int(symdims.evaluate(ref, values))
                        if kind == "const" and symdims.is_sym(ref) else ref)
                       for kind, ref in captured.output_leaves)
        if leaves != captured.output_leaves:
            captured = dataclasses.replace(captured, output_leaves=leaves)
        return _Entry(captured, symdims.specialize(symbolic.graph, values), leaf_types,
                      symbolic.in_spec, constants=symbolic.constants)

    def _dynamic_capture(self, args: tuple, kwargs: dict) -> Captured:
        """One capture per call structure: a later call (a calibration sample, the first call
        after calibrating) whose sizes the captured graph admits reuses it."""
        key, leaves = self._key(args, kwargs)
        for structure, captured in self._dynamic_captured:
            if structure == self._structure(key):
                try:
                    symdims.bind(captured.graph,
                                 [tuple(leaves[i].shape) for i in captured.input_leaves])
                    return captured
                except symdims.DimError:
                    break
        params = list(self._signature.parameters.values()) if self._signature else []
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
        named = set(positional) | {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        if len(args) > len(positional) or any(k not in named for k in kwargs):
            raise OptionError(f"dynamic= needs the inputs of {self._name}.forward named; this "
                              "call passes some through *args or **kwargs")
        dims = resolve_dynamic(self._dynamic, args, kwargs, positional[:len(args)])
        captured = capture(self._model, args, kwargs, dims)
        self._dynamic_captured.append((self._structure(key), captured))
        self.report.dynamic = ", ".join(r.describe() for r in captured.graph.dims)
        return captured

    # --- compiling ---

    def _compile_for(self, args: tuple, kwargs: dict, key: tuple | None = None) -> _Entry:
        if key is None:
            args, kwargs = self._bind(args, kwargs)
            key, _ = self._key(args, kwargs)
        # the process-wide export lock first, always: a forward that calls another compiled
        # model while being captured must not hold this model's lock against that one's
        with EXPORT_LOCK, self._lock:
            entry = self._entries.get(key)  # another thread may have captured it meanwhile
            if entry is None and self._symbolic:  # or a dynamic graph that admits this call
                entry = self._specialize_for(key, pytree.tree_flatten((args, kwargs))[0])
            return entry if entry is not None else self._capture_entry(args, kwargs, key)

    def _check_samples(self, captured: Captured, args: tuple, kwargs: dict) -> list | None:
        """What `check_each` runs each stage on and a failure's reproducer holds: these inputs,
        and up to two calibration samples of the same shapes (None when neither is wanted:
        converting costs a copy of the inputs, once per capture)."""
        debug = self._manager.debug
        if not debug.check_each and debug.repro_dir == "off":
            return None

        def arrays(a: tuple, k: dict) -> list[np.ndarray]:
            leaves = pytree.tree_flatten((a, k))[0]
            return [leaves[i].detach().cpu().numpy() for i in captured.input_leaves]

        try:
            samples = [arrays(args, kwargs)]
        except (TypeError, RuntimeError, AttributeError):  # bf16, fakes, ...: seeded ones then
            return None
        if self._quant is not None and not kwargs:
            shapes = [x.shape for x in samples[0]]
            for extra in self._quant._eval[:2]:
                try:
                    candidate = arrays(extra, {})
                except (TypeError, RuntimeError, AttributeError):
                    continue
                if [x.shape for x in candidate] == shapes:
                    samples.append(candidate)
        return samples

    def _capture_entry(self, args: tuple, kwargs: dict, key: tuple) -> _Entry:
        if self._quant is not None:
            self._quant.prepare(n_inputs=len(args), args=args if not kwargs else None)
            self.report.int8_choices = [c.describe() for c in self._quant.choices]
            if kwargs and self._quant.options.int8_layers == "measured" \
                    and not self._quant.choices:
                self.report.int8_choices = ["not measured: the first call passed keyword "
                                            "inputs, which the timing cannot replay; every "
                                            "layer that can be is int8"]
            self._manager.options.update(self._quant.pass_options())
        captured = None
        if self._quant is not None and not kwargs:
            captured = self._quant.captured_for(args)
        captured = captured or self._capture(args, kwargs)
        names = self._leaf_names(args, kwargs)
        signature = ", ".join(f"{n}: {_describe_leaf(k)}" for n, k in zip(names, key[1]))
        subdir = "" if not self._entries else f"capture-{len(self._entries) + 1}"
        graph, records = self._manager.run(captured.graph, dump_subdir=subdir,
                                           samples=self._check_samples(captured, args, kwargs))
        before = captured.graph
        values: dict[str, int] = {}
        if graph.dims:  # a dynamic graph: FLOPs and this call's run are at the call's sizes
            leaves = pytree.tree_flatten((args, kwargs))[0]
            values = symdims.bind(graph, [tuple(leaves[i].shape) for i in captured.input_leaves])
        self.report.records.append(CompileRecord(
            signature, captured.export_seconds, captured.convert_seconds, records,
            len(before.nodes), len(graph.nodes), count_params(before), count_params(graph),
            symdims.evaluate(count_flops(before), values),
            symdims.evaluate(count_flops(graph), values), list(captured.fallbacks),
            list(captured.warnings),
            self._quant.analysis if self._quant is not None else None))
        entry = _Entry(captured, graph, key[1], pytree.tree_flatten((args, kwargs))[1])
        if graph.dims:
            self._symbolic.append(entry)
            self.report.specializations.append(
                ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
            entry = self._specialized(entry, values, key[1])
        if self._device is not None:  # kernels are generated now, and listed in the report
            program = self._triton_program(entry.graph)
            entry.programs[str(self._device)] = program
            self.report.records[-1].kernels = list(program.assignments)
            self.report.records[-1].cuda_graphs = program.cuda_graph_status
            self.report.records[-1].graph_status = lambda: program.cuda_graph_status
        self._entries[key] = entry
        self._latest = entry
        return entry

    def _capture(self, args: tuple, kwargs: dict) -> Captured:
        """The model as IR for these inputs (an ONNX model imports instead: fxforge.onnx_model)."""
        if self._dynamic is not None:
            return self._dynamic_capture(args, kwargs)
        return capture(self._model, args, kwargs)

    # --- running ---

    def _graph_inputs(self, entry: _Entry, leaves: list) -> list[torch.Tensor]:
        return [leaves[i] for i in entry.captured.input_leaves]

    def _triton_program(self, graph: Graph) -> TorchProgram:
        from fxforge.kernels.triton.program import TritonProgram

        return TritonProgram(graph, self._device, autotune=self._autotune,
                             cuda_graphs=self._cuda_graphs)

    def _execute(self, entry: _Entry, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._device is not None:
            # generated kernels run on the target's device; results go back where inputs were
            home = inputs[0].device if inputs else self._device
            program = entry.programs.get(str(self._device))
            if program is None:
                program = entry.programs[str(self._device)] = self._triton_program(entry.graph)
            with torch.no_grad():
                outs = program([x.to(self._device) for x in inputs])
            return [o.to(home) for o in outs]
        if self._target.backend == "reference":
            device = inputs[0].device if inputs else torch.device("cpu")
            arrays = [x.detach().cpu().numpy() for x in inputs]
            outs = run_reference(entry.graph, arrays)
            return [torch.from_numpy(np.array(o)).to(device) for o in outs]
        device = inputs[0].device if inputs else torch.device("cpu")
        if self._target.backend == "ort":
            program = entry.programs.get("ort")
            if program is None:
                from fxforge.kernels.ort_backend import OrtProgram

                program = entry.programs["ort"] = OrtProgram(entry.graph, device)
            return [o.to(device) for o in program(inputs)]
        program = entry.programs.get(str(device))
        if program is None:
            program = entry.programs[str(device)] = TorchProgram(entry.graph, device,
                                                                 shared=entry.constants)
        with torch.no_grad():
            return program(inputs)

    def _restore(self, entry: _Entry, outputs: list) -> Any:
        leaves = [outputs[ref] if kind == "value" else ref
                  for kind, ref in entry.captured.output_leaves]
        return pytree.tree_unflatten(leaves, entry.captured.out_spec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs:
            fast = self._fast_calls.get(_fast_key(args))
            if fast is not None:
                return fast(args)
        entry, leaves = self._prepare(args, kwargs)
        result = self._restore(entry, self._execute(entry, self._graph_inputs(entry, leaves)))
        if not kwargs and self._target.backend in ("torch", "ort") and self._device is None:
            self._remember_fast(args, entry)
        return result

    def _remember_fast(self, args: tuple, entry: _Entry) -> None:
        """After a call of plain tensors only, the next such call with the same shapes, dtypes
        and devices skips binding, flattening and the signature key (see `_fast_key`): those
        decide nothing more for such a call. The torch program and the output structure are
        bound once here."""
        key = _fast_key(args)
        if key is None or key in self._fast_calls:
            return
        device = args[0].device if args else torch.device("cpu")
        program = entry.programs.get("ort" if self._target.backend == "ort" else str(device))
        if program is None or (self._target.backend == "ort" and device.type != "cpu"):
            return
        picks = tuple(entry.captured.input_leaves)
        single = (len(entry.captured.output_leaves) == 1
                  and entry.captured.output_leaves[0] == ("value", 0)
                  and entry.captured.out_spec.is_leaf())

        def run(call_args: tuple) -> Any:
            self._latest = entry
            with torch.no_grad():
                outs = program([call_args[i] for i in picks])
            return outs[0] if single else self._restore(entry, outs)

        self._fast_calls[key] = run

    def check(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Run this target and the numpy reference on the same IR and inputs; return the
        largest absolute difference per output, keyed by its path in the output structure."""
        entry, leaves = self._prepare(args, kwargs)
        inputs = self._graph_inputs(entry, leaves)
        ours = self._execute(entry, inputs)
        reference = run_reference(entry.graph, [x.detach().cpu().numpy() for x in inputs])
        names = output_names(entry.captured)
        errors = {}
        for name, a, b in zip(names, ours, reference):
            diff = np.abs(a.detach().cpu().numpy().astype(np.float64) - b.astype(np.float64))
            errors[name] = float(np.nanmax(diff)) if diff.size else 0.0
        return errors

    # --- inspection ---

    @property
    def graph(self) -> Graph:
        """The IR after the pipeline, for the most recent input signature."""
        if self._latest is None:
            raise RuntimeError(f"{self._name} is not captured yet: call it once, or compile with "
                               "example_inputs=...")
        return self._latest.graph

    def export_onnx(self, path: Any, **options: Any) -> Any:
        """Write the optimized graph of the latest input signature as ONNX: fp32 as plain ONNX,
        int8 as QDQ (fxforge.onnx_export); returns the onnx.ModelProto."""
        from fxforge.onnx_export import export_compiled

        return export_compiled(self, path, **options)

    def save(self, path: Any) -> Any:
        """Write every input signature compiled so far to one archive (IR text, `.npz`
        constants, options, report, manifest with versions and sha256s; no pickle) that
        `fxforge.load(path)` runs without the original model. Returns the path."""
        from fxforge.archive import save

        return save(self, path)

    @property
    def captured_graph(self) -> Graph:
        """The IR as captured, before any pass."""
        self.graph  # noqa: B018 - raises the same helpful error when nothing is captured
        if self._loaded_from is not None:
            raise RuntimeError(f"{self._name} was loaded from {self._loaded_from}, which holds "
                               "the optimized graph only")
        return self._latest.captured.graph

    @property
    def graphs(self) -> list[Graph]:
        """The optimized IR of every input signature seen so far."""
        return [e.graph for e in self._entries.values()]

    def __repr__(self) -> str:
        return (f"CompiledModel({self._name}, target={self.target!r}, "
                f"captures={self.report.captures})")


def output_names(captured: Captured) -> list[str]:
    """Paths of the tensor outputs in the user's output structure: `[0]`, `['logits']`, ..."""
    marks = [i for i, _ in enumerate(captured.output_leaves)]
    tree = pytree.tree_unflatten(marks, captured.out_spec)
    paths = pytree.tree_flatten_with_path(tree)[0]
    kinds = [kind for kind, _ in captured.output_leaves]
    return [pytree.keystr(path) or "output" for (path, _), kind in zip(paths, kinds)
            if kind == "value"]


def _weight_bits(target: Target, asked: int | None) -> int:
    if asked is None:  # ONNX Runtime's x86 int8 kernels add pairs of products as oneDNN's do
        return int8_scheme.detect().weight_bits if target.backend in ("torch", "ort") else 8
    if not isinstance(asked, numbers.Integral) or isinstance(asked, bool) \
            or int(asked) not in WEIGHT_BITS:
        raise OptionError(f"weight_bits must be one of {WEIGHT_BITS}, got {asked!r}")
    return int(asked)


def _int8_layers(value: Any, target: Target) -> str:
    from fxforge.int8_choice import check_layers

    layers = check_layers(value)
    if layers == "measured" and target.backend != "torch":
        raise OptionError(f"int8_layers='measured' times layers on the torch backend; target "
                          f"{target.name!r} runs on {target.backend}")
    return layers


def _smooth_alpha(smooth: Any, calibration: Any, pipeline: Sequence[str]) -> float | None:
    alpha = check_alpha(smooth)
    if alpha is not None and calibration is None:
        raise OptionError("smooth= needs calibration data: its scales come from the activations' "
                          "per-channel maxima")
    if alpha is not None and ("smooth" not in pipeline or "quantize" not in pipeline
                              or pipeline.index("smooth") > pipeline.index("quantize")):
        raise OptionError("smooth= needs the 'smooth' pass before 'quantize' in the pipeline")
    return alpha


def compile(model: torch.nn.Module, target: str = "cpu", *, example_inputs: Any = None,  # noqa: A001
            calibration: Any = None, calibration_method: str = "minmax",
            percentile: float = 99.99, min_sqnr: float | None = None,
            keep_float: Sequence[str] = (), weight_bits: int | None = None,
            smooth: float | bool | None = None, int8_layers: str = "all",
            passes: str | list[str] | None = None, debug: Any = None, dynamic: Any = None,
            **options: Any) -> CompiledModel:
    """Compile `model` for `target` (see `fxforge.TARGETS`).

    model: a torch.nn.Module, or an ONNX model (an `.onnx` path or an `onnx.ModelProto`), called
        with torch tensors positionally in the ONNX input order or by input name, returning its
        outputs in the ONNX output order (one output: the tensor; several: a tuple).
    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs. Given,
        the model is captured now and calls must match it (or, with `dynamic`, fit its ranges);
        omitted, the model is captured at the first call and again for each new input
        signature (with `dynamic`: once, for every size in range).
    dynamic: True makes dim 0 of every tensor input a batch size in 1..4096; a dict
        {input_name: {dim: (min, max) | name | torch.export.Dim}} names any dims (dim 0 is
        called B, dim 1 S: a batch and a sequence length shared by the inputs that name them).
        The model is captured once with these dims symbolic and the passes run once; each new
        size in range runs that graph with the size substituted. A size outside its range is an
        InputError naming the input, dim and range (see fxforge.dynamic, README).
    passes: the pipeline as a list or comma-separated string of pass names (default: the
        target's); a list may hold callables `Graph -> Graph` or `Graph -> (Graph, stats)`
        beside names (a pass under development gets every instrument). debug: instruments of
        the PassManager (see `fxforge.pipeline`): prints, dumps, verify_each, check_each
        (`fxforge.MiscompileError` at the first pass that changes what the graph computes),
        bisect_limit, repro_dir (where failure reproducers go).

    int8 targets (`cpu-int8`, `reference-int8`):
    calibration: an iterable of samples (a tensor, or a tuple/list with one tensor per positional
        input; a DataLoader over the inputs works) for static activation scales; None: dynamic
        quantization (scales computed at run time). calibration_method: minmax, percentile (at
        `percentile`), entropy (KL divergence) or mse. min_sqnr: layers whose own output SQNR on
        the calibration data is below this (dB) stay float. keep_float: module paths (or value
        names) to keep float. The report (`compiled.report`) has the per-layer SQNR table.
    weight_bits: 8 or 7 (weights in [-63, 63], declared `w_bits=7` in the IR). Default: 8, except
        on `cpu-int8`, which takes what this CPU's int8 kernels sum exactly (7 where oneDNN adds
        pairs of products in 16 bits, as on CPUs without VNNI); the report names the scheme.
    smooth: with calibration, SmoothQuant: activation outlier channels are divided out of the
        inputs of linear layers and into their weights (passes/smooth.py). "auto" picks the
        migration strength alpha per layer (or none) by simulated int8 error; a number in (0, 1]
        uses that alpha everywhere (True: 0.5). Helps transformers whose activations have
        channels far larger than the rest. The calibration data is read twice, so it must be a
        list or a DataLoader, not a generator.

    cuda targets (`cuda`, `cuda-fp16`, `cuda-int8`, `cuda-int4`) run generated Triton kernels on
    a CUDA device (or on the CPU under TRITON_INTERPRET=1); the report lists which nodes became
    which kernels. autotune: time each kernel's candidate configs at first run, cached on disk
    (default: on a GPU, off under the interpreter); False for quick compiles. cuda_graphs: replay
    each compiled signature as a CUDA graph after its first call (one launch instead of one per
    kernel; results are copies, never the graph's buffers). Default None: on a CUDA device
    wherever the graph allows it (no opaque torch_op, no symbolic dims, no embedding / index /
    gather of computed positions, which are range-checked on the host); False: plain launches.
    The report says which and why.
    """
    source = None
    if not isinstance(model, torch.nn.Module):
        from fxforge.onnx_model import OnnxSource, is_onnx_model

        if not is_onnx_model(model):
            raise TypeError(f"compile() expects a torch.nn.Module, an .onnx path or an "
                            f"onnx.ModelProto, got {type(model).__name__}")
        source = OnnxSource(model)
    info = get_target(target)
    autotune = options.pop("autotune", None) if info.backend == "triton" else None
    cuda_graphs = options.pop("cuda_graphs", None) if info.backend == "triton" else None
    if options:
        raise TypeError(f"compile() got unknown option(s) {sorted(options)} for target {target!r}"
                        + ("" if info.backend != "triton"
                           else "; Triton targets take autotune= and cuda_graphs="))
    if cuda_graphs not in (None, True, False):
        raise OptionError(f"cuda_graphs must be True, False or None (on where possible), got "
                          f"{cuda_graphs!r}")
    int8 = info.precision == "int8"
    if not int8 and (calibration is not None or min_sqnr is not None or keep_float
                     or weight_bits is not None or smooth not in (None, False)):
        warnings.warn(f"calibration, min_sqnr, keep_float, weight_bits and smooth are only used "
                      f"by int8 targets; target {target!r} ignores them", stacklevel=2)
    pipeline = info.pipeline if passes is None else parse_pipeline(passes)
    quant = None
    if int8:
        quant = QuantOptions(calibration, calibration_method, percentile,
                             check_min_sqnr(min_sqnr), check_keep_float(keep_float),
                             weight_bits=_weight_bits(info, weight_bits),
                             smooth=_smooth_alpha(smooth, calibration, pipeline),
                             int8_layers=_int8_layers(int8_layers, info))
    dynamic = check_dynamic(dynamic)
    if dynamic is not None and int8_layers == "measured":
        raise OptionError("int8_layers='measured' times each layer at one size; with dynamic= "
                          "use int8_layers='all'")
    if dynamic is not None and source is not None:
        raise OptionError("dynamic= is for torch modules; an ONNX model's symbolic dims "
                          "(dim_param) are specialized at each call's sizes")
    if source is None:
        compiled = CompiledModel(model, info, pipeline, DebugOptions.make(debug), quant, autotune)
        compiled._dynamic = dynamic
    else:
        from fxforge.onnx_model import OnnxCompiledModel

        compiled = OnnxCompiledModel(source, info, pipeline, DebugOptions.make(debug), quant,
                                     autotune)
    compiled._cuda_graphs = cuda_graphs
    if example_inputs is not None:
        args, kwargs = _normalize_example(example_inputs)
        compiled._compile_for(args, kwargs)
        compiled._fixed = True
    return compiled
