"""`fxforge.compile` of an ONNX model (an `.onnx` path or an `onnx.ModelProto`).

    fast = fxforge.compile("model.onnx", "cpu-int8", calibration=data)
    y = fast(x)                      # torch tensors, positionally in the ONNX input order
    y = fast(**{"input.1": x})       # or by ONNX input name
    a, b = fast(x)                   # several outputs: a tuple in the ONNX output order

The file is read and checked once, when `compile` is called (malformed protobufs, unsafe
external data and unsupported ops are errors then, not at the first call); each new input
signature imports the graph with the call's shapes (`fxforge.onnx_import`), which is what
capture does for a torch module. Symbolic dims (`dim_param`) are specialized to the call's sizes,
one import per signature, and the report says so.
"""

from __future__ import annotations

import inspect
import keyword
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from fxforge.api import CompiledModel
from fxforge.capture import Captured
from fxforge.errors import InputError


def is_onnx_model(model: Any) -> bool:
    """Whether `compile` should read `model` as an ONNX model: a path, or a ModelProto."""
    if isinstance(model, (str, Path)):
        return True
    try:
        import onnx
    except ImportError:
        return False
    return isinstance(model, onnx.ModelProto)


class OnnxSource:
    """An ONNX model read once: its checked proto, where its external data lives, and the names
    and declared shapes of its real inputs and its outputs."""

    def __init__(self, model: Any):
        from fxforge.onnx_safety import Limits, read_model

        self.model = model
        proto, _, self.label = read_model(model, Limits())
        graph = proto.graph
        initializers = {t.name for t in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in initializers]
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in graph.output]
        self.name = (Path(model).stem if isinstance(model, (str, Path)) else graph.name) \
            or "onnx-model"
        # check the whole model now (ops, types, external data) with its declared shapes where
        # they are static, so a bad file fails at compile() rather than at the first call
        self.static_shapes = self._static_shapes()
        if self.static_shapes is not None:
            self.import_graph(self.static_shapes)

    def _static_shapes(self) -> dict[str, tuple[int, ...]] | None:
        shapes = {}
        for i in self.inputs:
            dims = i.type.tensor_type.shape.dim
            if not i.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value")
                                                               for d in dims):
                return None
            shapes[i.name] = tuple(d.dim_value for d in dims)
        return shapes

    def import_graph(self, shapes: dict[str, tuple[int, ...]]) -> Any:
        from fxforge.onnx_import import import_onnx

        return import_onnx(self.model, input_shapes=shapes)

    def signature(self) -> inspect.Signature | None:
        """The inputs as keyword-or-positional parameters, when every name is an identifier."""
        if not all(n.isidentifier() and not keyword.iskeyword(n) for n in self.input_names):
            return None
        return inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                  for n in self.input_names])


class OnnxCompiledModel(CompiledModel):
    """A CompiledModel whose captures are ONNX imports; calls bind ONNX input names."""

    def __init__(self, source: OnnxSource, *args: Any, **kwargs: Any):
        self._source = source
        super().__init__(torch.nn.Module(), *args, **kwargs)
        self._init_calls(source.signature(), source.name)

    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        names = self._source.input_names
        if len(args) > len(names):
            raise InputError(f"{self._name} has {len(names)} input(s) ({', '.join(names)}); "
                             f"got {len(args)} positional")
        bound = list(args) + [None] * (len(names) - len(args))
        for key, value in kwargs.items():
            if key not in names:
                raise InputError(f"{self._name} has no input named {key!r}; its inputs are "
                                 f"{', '.join(map(repr, names))}")
            i = names.index(key)
            if i < len(args):
                raise InputError(f"input {key!r} of {self._name} given twice")
            bound[i] = value
        missing = [n for n, v in zip(names, bound) if v is None]
        if missing:
            raise InputError(f"{self._name}: missing input(s) {', '.join(map(repr, missing))}")
        for name, value in zip(names, bound):
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {name!r} of {self._name} must be a torch.Tensor, got "
                                 f"{type(value).__name__}")
        return tuple(bound), {}

    def _leaf_names(self, args: tuple, kwargs: dict) -> list[str]:
        return list(self._source.input_names)

    def _capture(self, args: tuple, kwargs: dict) -> Captured:
        args, _ = self._bind(args, kwargs)
        shapes = {n: tuple(x.shape) for n, x in zip(self._source.input_names, args)}
        for name, x in zip(self._source.input_names, args):
            self._check_declared(name, x)
        imported = self._source.import_graph(shapes)
        n_out = len(imported.graph.outputs)
        outputs = tuple(("value", i) for i in range(n_out))
        spec = pytree.tree_flatten(tuple(range(n_out)) if n_out != 1 else 0)[1]
        picks = tuple(self._source.input_names.index(n) for n in imported.input_names)
        captured = Captured(imported.graph, picks, outputs, spec)
        captured.warnings.extend(imported.notes)
        return captured

    def _check_declared(self, name: str, x: torch.Tensor) -> None:
        """The call's shape against the ONNX declaration (static dims must match)."""
        info = self._source.inputs[self._source.input_names.index(name)]
        if not info.type.tensor_type.HasField("shape"):
            return
        dims = info.type.tensor_type.shape.dim
        want = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
        if len(want) != x.dim() or any(isinstance(w, int) and w != g
                                       for w, g in zip(want, x.shape)):
            shown = ",".join(map(str, want))
            raise InputError(f"input {name!r} of {self._name}: the model declares shape "
                             f"[{shown}], got [{','.join(map(str, x.shape))}]")
