"""nn.Module -> torch.export -> fxforge IR.

The model is exported in inference mode (eval, no grad; its training flags are restored after),
functionalized with `run_decompositions({})` so in-place ops and views become plain SSA, and each
aten op is lowered by its converter in `compiler/aten.py`. Parameters and buffers are copied
into constants, so the compiled model never aliases, nor later sees changes to, the user's
weights. Ops without a converter become opaque `torch_op` nodes listed as fallbacks.
"""

from __future__ import annotations

import operator
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind, TensorArgument

from fxforge import dtypes, ops, symdims
from fxforge.aten import CONVERTERS, IGNORED, Unconvertible
from fxforge.dynamic import DynamicDims, SymbolMap, export_inputs, torch_dynamic_shapes
from fxforge.errors import CaptureError, UnsupportedModelError
from fxforge.ir import Attrs, ConstData, Graph, NameGenerator, Node, Provenance, TensorType, Value
from fxforge.kernels import opaque
from fxforge.shadow import ShadowTree, flat_inputs


@dataclass(frozen=True)
class Fallback:
    """An aten op that became an opaque torch_op, and why."""

    value: str
    module: str
    aten: str
    reason: str


@dataclass
class Captured:
    graph: Graph
    input_leaves: tuple[int, ...]  # flat call leaf feeding each graph input
    output_leaves: tuple[tuple[str, Any], ...]  # ("value", graph output index) or ("const", obj)
    out_spec: Any
    fallbacks: list[Fallback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    export_seconds: float = 0.0
    convert_seconds: float = 0.0


def sanitize_name(name: str) -> str:
    """A value name made only of [A-Za-z0-9_] (model-derived names may contain anything)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned or "v"


# ---------------------------------------------------------------------------------------------
# Export


_ITEM_HINT = ("the model turns a tensor into a Python number (.item(), int(t), float(t)); keep "
              "it a tensor (x * x.max() instead of x * x.max().item())")
_HINTS = [
    (("data-dependent", "GuardOnDataDependent"),
     "the model branches on tensor values (e.g. `if x.sum() > 0`); make the branch depend only "
     "on shapes, or express it with torch.where / torch.cond"),
    (("item()", "_local_scalar_dense", "Tensor.item"), _ITEM_HINT),
    (("numpy",), "the model calls .numpy() or numpy functions on tensors; use torch ops instead"),
    (("Constraints violated",), "the model does not run every size of a range given in "
     "dynamic=: narrow the range to what torch found (above)"),
]


def _module_in_traceback(tree: ShadowTree, exc: BaseException) -> str | None:
    """The module path of the innermost forward of the model's submodules in the traceback."""
    paths = {id(m): tree.real_names(name) for name, m in tree.root.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in paths and tb.tb_frame.f_code.co_name == "forward":
            code = tb.tb_frame.f_code
            found = (f"{paths[id(owner)] or '<top>'} ({type(owner).__name__}.forward, "
                     f"{code.co_filename}:{tb.tb_lineno})")
        tb = tb.tb_next
    return found


def capture_error(tree: ShadowTree, model_name: str, exc: BaseException) -> CaptureError:
    text = tree.real_names(str(exc).strip())
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = _module_in_traceback(tree, exc)
    hint = next((h for keys, h in _HINTS if any(k in text or k in type(exc).__name__
                                                   for k in keys)),
                "see the torch.export error above; common causes are Python side effects, "
                "data-dependent control flow and non-tensor outputs torch cannot trace")
    message = (f"torch.export could not capture {model_name}: "
               f"{type(exc).__name__}: {first}")
    if "Constraints violated" in first:  # torch's guard and its suggested Dim say which sizes
        found = [line.strip() for line in text.splitlines()
                 if line.strip().startswith(("- Not all values", "- You marked"))
                 or re.match(r"\s*\w+ = Dim\(", line)]
        message += "".join(f"\n  {line}" for line in found[:8])
    if where:
        message += f"\n  in module {where}"
    message += f"\n  hint: {hint}"
    return CaptureError(message)


# torch.export keeps global state (fake modes, dynamo config) while it traces: one at a time.
EXPORT_LOCK = threading.RLock()


def export(model: torch.nn.Module, args: tuple, kwargs: dict,
           dynamic: DynamicDims | None = None) -> tuple[ExportedProgram, ShadowTree]:
    """torch.export in inference mode, functionalized, of a shadow of `model` (see
    `fxforge.shadow`): the user's module, its flags and its tensors are never touched.
    `dynamic`: the symbolic dims (fxforge.dynamic), as torch.export's `dynamic_shapes`."""
    tree = ShadowTree(model)
    with EXPORT_LOCK:
        try:
            if dynamic is not None:
                args, kwargs = export_inputs(dynamic, args, kwargs)
            exported, flat_args, flat_kwargs = flat_inputs(tree.root, args, kwargs)
            shapes = None
            if dynamic is not None:
                flat = exported is not tree.root
                names = _parameter_names(tree.root, len(args)) if kwargs and not flat else None
                shapes = torch_dynamic_shapes(dynamic, args, kwargs, names, flat)
            exported.eval()
            with torch.no_grad(), warnings.catch_warnings(), _size_oblivious(dynamic):
                warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
                program = torch.export.export(exported, flat_args, flat_kwargs, strict=False,
                                              dynamic_shapes=shapes)
                return program.run_decompositions({}), tree
        except Exception as exc:
            raise capture_error(tree, type(model).__name__, exc) from exc


def _size_oblivious(dynamic: DynamicDims | None):
    """For a dynamic capture, torch's `backed_size_oblivious`: a branch on a dynamic size being
    1 becomes a guard (fxforge.dynamic narrows the range by it) or an error, instead of being
    decided silently for sizes >= 2 (torch's 0/1 specialization)."""
    import contextlib

    config = getattr(torch.fx.experimental, "_config", None)
    if dynamic is None or not hasattr(config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return config.patch(backed_size_oblivious=True)


def _parameter_names(module: torch.nn.Module, n: int) -> list[str]:
    """The names of the first `n` parameters of `module.forward` (dynamic_shapes by name)."""
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < n:
        raise CaptureError(f"forward takes {len(params)} positional inputs, got {n}")
    return [p.name for p in params[:n]]


# ---------------------------------------------------------------------------------------------
# Lowering


def _tensor_type(val: Any, where: str, symbols: SymbolMap | None = None) -> TensorType:
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
        raise CaptureError(f"{where}: produces a Python number ({type(val).__name__}), which a "
                           f"compiled graph cannot hold\n  hint: {_ITEM_HINT}")
    if not isinstance(val, torch.Tensor):
        raise CaptureError(f"{where}: expected a tensor, found {type(val).__name__}")
    try:
        shape = tuple(int(d) if symbols is None else symbols.dim(d) for d in val.shape)
    except Exception as e:  # noqa: BLE001 - a size only known at run time (a boolean mask)
        raise CaptureError(f"{where}: its shape depends on the data ({type(e).__name__})\n  "
                           "hint: boolean-mask indexing (x[mask]), nonzero() and unique() give a "
                           "size known only at run time; keep the shape, e.g. with "
                           "torch.where(mask, x, 0)") from None
    try:
        return TensorType(shape, dtypes.from_torch(val.dtype))
    except dtypes.DTypeError as e:
        raise CaptureError(f"{where}: {e}") from None


class Lowering:
    """Builds the IR for one exported program; the context that converters talk to."""

    def __init__(self, real_names: Callable[[str], str] = str) -> None:
        self.real_names = real_names  # module paths as the user named them (see shadow.py)
        self.nodes: list[Node] = []
        self.env: dict[torch.fx.Node, Any] = {}
        self.names = NameGenerator()
        self.fallbacks: list[Fallback] = []
        self.warnings: list[str] = []
        self.current: torch.fx.Node | None = None
        self.symbols: SymbolMap | None = None  # a dynamic capture's sizes (fxforge.dynamic)

    # --- the converter API ---

    @property
    def provenance(self) -> Provenance:
        n = self.current
        if n is None:
            return Provenance()
        stack = n.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        return Provenance(self.real_names(str(module)), opaque.target_name(n.target))

    def value(self, arg: Any) -> Value:
        found = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(found, Value):
            raise Unconvertible(f"expected a tensor argument, got {arg!r}")
        return found

    def sizes(self, shape: Any) -> tuple:
        """torch's sizes (ints, or SymInts of a dynamic capture) as the IR's dims."""
        if self.symbols is None:
            return tuple(int(d) for d in shape)
        try:
            return tuple(self.symbols.dim(d) for d in shape)
        except ValueError as e:
            raise Unconvertible(str(e)) from None

    def size_arg(self, arg: Any) -> Any:
        """An op's int argument: a number, or (a dynamic capture) a size computed from the
        inputs' shapes (an fx node holding a SymInt), as an IR dim."""
        if isinstance(arg, torch.fx.Node):
            found = self.env.get(arg)
            if found is None or isinstance(found, Value):
                raise Unconvertible(f"expected a size argument, got {arg!r}")
            return found
        return arg

    def dtype_name(self, dtype: torch.dtype) -> str:
        return dtypes.from_torch(dtype)

    def const(self, array: np.ndarray, name: str, provenance: Provenance) -> Value:
        data = ConstData(array)
        out = Value(self.names.claim(sanitize_name(name)),
                    TensorType(array.shape, dtypes.from_numpy(array.dtype)))
        self.nodes.append(Node("const", (), (out,), Attrs({"value": data}), provenance))
        return out

    def scalar(self, x: Any, like: Value | None, dtype: str | None = None) -> Value:
        """A python scalar as a 0-d constant whose dtype makes promotion behave like torch's."""
        if dtype is None:
            if isinstance(x, bool):
                dtype = "bool"
            elif isinstance(x, int):
                dtype = "i64"
            elif isinstance(x, float):
                dtype = "f64" if like is not None and like.type.dtype == "f64" else "f32"
            else:
                raise Unconvertible(f"scalar of type {type(x).__name__}")
        array = np.array(x, dtype=dtypes.to_numpy(dtype))
        return self.const(array, self.names.fresh("c"), self.provenance)

    def filled(self, value: float, shape: tuple[int, ...], like: Value) -> Value:
        array = np.full(shape, value, dtype=dtypes.to_numpy(like.type.dtype))
        return self.const(array, self.names.fresh("c"), self.provenance)

    def operands(self, a: Any, b: Any) -> tuple[Value, Value]:
        va = self.value(a) if isinstance(a, torch.fx.Node) else None
        vb = self.value(b) if isinstance(b, torch.fx.Node) else None
        if va is None and vb is None:
            raise Unconvertible("no tensor operand")
        return (va or self.scalar(a, vb), vb or self.scalar(b, va))

    def emit(self, op: str, inputs: list[Value], n_outputs: int = 1, **attrs: Any):
        names = [self.names.claim(op) for _ in range(n_outputs)]
        node = ops.build_node(op, inputs, attrs, names, self.provenance)
        self.nodes.append(node)
        return node.outputs[0] if n_outputs == 1 else node.outputs

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.provenance.describe()}: {message}")

    # --- driving the conversion ---

    def convert(self, n: torch.fx.Node) -> None:
        self.current = n
        mark = len(self.nodes)
        converter = CONVERTERS.get(n.target)
        reason = None
        if converter is None:
            reason = "no IR op for this aten op"
        else:
            try:
                result = converter(self, n)
                self._check_types(result, n.meta.get("val"))
                self.env[n] = result
            except Exception as e:  # a converter that cannot do it exactly falls back
                reason = f"{type(e).__name__}: {e}"
        if reason is not None:
            del self.nodes[mark:]
            self.env[n] = self._opaque(n, reason)
        self.current = None

    def _check_types(self, result: Any, val: Any) -> None:
        if isinstance(val, (tuple, list)):
            if not isinstance(result, tuple) or len(result) != len(val):
                raise Unconvertible("converter returned the wrong number of results")
            for r, v in zip(result, val):
                if r is not None:
                    self._check_types(r, v)
            return
        expected = _tensor_type(val, "converter check", self.symbols)
        got = result.type
        if (got.shape, got.dtype) != (expected.shape, expected.dtype):
            raise Unconvertible(f"inferred {got} but torch computes {expected}")

    def _opaque(self, n: torch.fx.Node, reason: str) -> Any:
        inputs: list[Value] = []

        def tensor_index(arg: Any) -> int | None:
            if isinstance(arg, torch.fx.Node):
                found = self.env.get(arg)
                if isinstance(found, Value):
                    inputs.append(found)
                    return len(inputs) - 1
            return None

        def plain(arg: Any) -> Any:  # fx nodes that stand for python values (specialized ints)
            if isinstance(arg, torch.fx.Node) and not isinstance(self.env.get(arg), Value):
                return self.env.get(arg)
            if isinstance(arg, (list, tuple)):
                return type(arg)(plain(a) for a in arg)
            return arg

        where = f"{self.provenance.describe()}"
        try:
            args = opaque.encode(tuple(plain(a) for a in n.args), tensor_index)
            kwargs = {k: opaque.encode(plain(v), tensor_index) for k, v in n.kwargs.items()}
        except opaque.OpaqueOpError as e:
            raise CaptureError(f"cannot represent {n.target} at {where}: {e}") from None
        val = n.meta.get("val")
        vals = list(val) if isinstance(val, (tuple, list)) else [val]
        types = [_tensor_type(v, f"{n.target} at {where}", self.symbols) for v in vals]
        base = sanitize_name(str(n.target).split(".")[1])
        outs = tuple(Value(self.names.claim(base), t) for t in types)
        attrs = ops.complete_attrs(ops.get("torch_op"), {
            "target": opaque.target_name(n.target), "args": args, "kwargs": kwargs})
        self.nodes.append(Node("torch_op", tuple(inputs), outs, attrs, self.provenance))
        self.fallbacks.append(Fallback(outs[0].name, self.provenance.module,
                                       opaque.target_name(n.target), reason))
        return outs if isinstance(val, (tuple, list)) else outs[0]


def _state_tensor(program: ExportedProgram, target: str) -> torch.Tensor:
    if target in program.state_dict:
        return program.state_dict[target]
    return program.constants[target]


def to_ir(program: ExportedProgram, real_names: Callable[[str], str] = str,
          dynamic: DynamicDims | None = None) -> Captured:
    """Lower an exported program. Placeholders become graph inputs or constants; with
    `dynamic`, torch's symbolic sizes become the IR's symbols (fxforge.symdims), and shape
    inference knows their declared ranges (a buffer sliced to a sequence length fits)."""
    with symdims.assume(dynamic.ranges if dynamic is not None else ()):
        return _lower(program, real_names, dynamic)


def _lower(program: ExportedProgram, real_names: Callable[[str], str],
           dynamic: DynamicDims | None) -> Captured:
    low = Lowering(real_names)
    if dynamic is not None:
        low.symbols = SymbolMap()
    signature = program.graph_signature
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    inputs: list[Value] = []
    input_leaves: list[int] = []
    user_index = 0
    for node, spec in zip(placeholders, signature.input_specs):
        if spec.kind == InputKind.USER_INPUT:
            if isinstance(spec.arg, TensorArgument):
                if dynamic is not None and user_index in dynamic.per_leaf:
                    low.symbols.learn(node.meta["val"].shape, dynamic.per_leaf[user_index],
                                      f"input {node.name}")
                t = _tensor_type(node.meta["val"], f"input {node.name}", low.symbols)
                v = Value(low.names.claim(sanitize_name(node.name)), t)
                inputs.append(v)
                input_leaves.append(user_index)
                low.env[node] = v
            elif isinstance(spec.arg, ConstantArgument):
                low.env[node] = spec.arg.value
            else:
                raise CaptureError(f"input {node.name}: {type(spec.arg).__name__} inputs are "
                                   "not supported; pass tensors or plain Python constants")
            user_index += 1
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            if not node.users:
                continue
            tensor = _state_tensor(program, spec.target)
            try:
                array = tensor.detach().cpu().contiguous().numpy().copy()
            except TypeError as e:
                raise CaptureError(
                    f"{spec.kind.name.lower()} {real_names(spec.target)}: {e}; fxforge holds "
                    "weights as numpy arrays (bfloat16 is not supported)") from None
            source = spec.kind.name.lower()
            provenance = Provenance(real_names(spec.target or ""), source)
            low.env[node] = low.const(array, node.name, provenance)
        else:
            raise UnsupportedModelError(f"input {node.name} of kind {spec.kind.name} is not "
                                        "supported (custom objects, tokens)")

    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            container = low.env[node.args[0]]
            item = container[node.args[1]]
            if item is None and node.users:
                raise CaptureError(f"{node.name}: result {node.args[1]} of {node.args[0].target} "
                                   "is only available in training")
            low.env[node] = item
        elif node.target in IGNORED or not node.users:
            continue
        elif low.symbols is not None and isinstance(node.meta.get("val"), torch.SymInt):
            try:  # sym_size and arithmetic on sizes: a python value that shape args read
                low.env[node] = low.symbols.dim(node.meta["val"])
            except ValueError as e:
                raise CaptureError(f"{node.name}: {e}") from None
        else:
            low.convert(node)

    output_node = next(n for n in program.graph.nodes if n.op == "output")
    graph_outputs: list[Value] = []
    leaves: list[tuple[str, Any]] = []
    for arg, spec in zip(output_node.args[0], signature.output_specs):
        if spec.kind != OutputKind.USER_OUTPUT:
            raise UnsupportedModelError(
                f"forward mutates {real_names(spec.target)!r} ({spec.kind.name}); a compiled "
                "inference graph cannot update model state. Move the update out of forward, or "
                "compile a wrapper that does not perform it")
        if isinstance(arg, torch.fx.Node) and isinstance(low.env.get(arg), Value):
            leaves.append(("value", len(graph_outputs)))
            graph_outputs.append(low.env[arg])
        else:
            value = low.env.get(arg) if isinstance(arg, torch.fx.Node) else arg
            leaves.append(("const", value))
    dims = low.symbols.ranges(program, dynamic) if low.symbols is not None else ()
    graph = Graph(tuple(inputs), tuple(low.nodes), tuple(graph_outputs), dims)
    return Captured(graph, tuple(input_leaves), tuple(leaves), program.call_spec.out_spec,
                    low.fallbacks, low.warnings)


def capture(model: torch.nn.Module, args: tuple, kwargs: dict,
            dynamic: DynamicDims | None = None) -> Captured:
    start = time.perf_counter()
    program, tree = export(model, args, kwargs, dynamic)
    middle = time.perf_counter()
    captured = to_ir(program, tree.real_names, dynamic)
    if model.training:
        captured.warnings.insert(0, "the model is in training mode; it was compiled for "
                                    "inference, as after model.eval() (dropout off, batch norm "
                                    "with running statistics)")
    captured.export_seconds = middle - start
    captured.convert_seconds = time.perf_counter() - middle
    return captured
