"""A `CompiledModel` rebuilt from a checked archive manifest and its graphs (`fxforge.load`).

Every manifest field is checked for type and range before it is used: the forward signature
becomes an `inspect.Signature` (identifiers and parameter kinds only), leaf keys must be the
shapes of tensors or the descriptions of constants that `CompiledModel` itself makes, the
input/output leaf maps must point inside the graph and the call, and the pytree specs are read
with torch's JSON tree-spec reader (registered container types only, never an import or an eval).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.utils._pytree as pytree

from fxforge.capture import Captured
from fxforge.errors import FxforgeError
from fxforge.ir import Graph
from fxforge.targets import get_target

_KINDS = {k.name: k for k in (inspect.Parameter.POSITIONAL_ONLY,
                              inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY,
                              inspect.Parameter.VAR_KEYWORD)}


@dataclass
class SavedReport:
    """The compile report as it was when the archive was written: `str()` gives its text,
    `to_dict()` its data (per-pass statistics, the int8 table, fallbacks, kernels)."""

    target: str
    pipeline: tuple[str, ...]
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    captures: int = 0
    records: list = field(default_factory=list)  # nothing is compiled after loading
    archive: str = ""

    @property
    def fallbacks(self) -> list:
        return []

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def __str__(self) -> str:
        return f"(saved report, from {self.archive})\n{self.text}"


class _Bad(FxforgeError):
    pass


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _int(value: Any, low: int, high: int, what: str) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and low <= value < high,
          f"{what} must be an integer in [{low}, {high}), got {value!r}")
    return value


def _signature(params: Any) -> inspect.Signature | None:
    if params is None:
        return None
    _need(isinstance(params, list), "field 'forward' must be a list of parameters")
    built = []
    for p in params:
        _need(isinstance(p, dict) and isinstance(p.get("name"), str)
              and p.get("kind") in _KINDS, f"forward parameter {p!r} is malformed")
        default = p.get("default", inspect.Parameter.empty)
        _need(default is inspect.Parameter.empty or default is None
              or isinstance(default, (bool, int, float, str)),
              f"forward parameter {p['name']!r} has a default of a type an archive cannot hold")
        try:
            built.append(inspect.Parameter(p["name"], _KINDS[p["kind"]], default=default))
        except ValueError as e:
            raise _Bad(f"forward parameter {p['name']!r}: {e}") from None
    try:
        return inspect.Signature(built)
    except ValueError as e:
        raise _Bad(f"field 'forward': {e}") from None


def _leaf(item: Any, i: int) -> tuple:
    if isinstance(item, list) and len(item) == 4 and item[0] == "tensor":
        _, shape, dtype, device = item
        _need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape),
              f"leaf {i}: the shape {shape!r} is not a list of sizes")
        _need(isinstance(dtype, str) and dtype.startswith("torch.") and isinstance(device, str),
              f"leaf {i}: dtype/device {dtype!r}/{device!r} malformed")
        return ("tensor", tuple(shape), dtype, device)
    _need(isinstance(item, list) and len(item) == 3 and item[0] == "const"
          and all(isinstance(x, str) for x in item[1:]), f"leaf {i} is malformed: {item!r}")
    return tuple(item)


def _spec(text: Any, leaves: int, what: str) -> Any:
    _need(isinstance(text, str), f"{what} must be a string")
    try:
        spec = pytree.treespec_loads(text)
    except Exception as e:  # noqa: BLE001 - torch's reader raises many kinds on bad input
        raise _Bad(f"{what} cannot be read: {type(e).__name__}: {e}") from None
    _need(spec.num_leaves == leaves, f"{what} has {spec.num_leaves} leaves, expected {leaves}")
    return spec


def _entry(record: Mapping[str, Any], graph: Graph, i: int) -> tuple[tuple, Any]:
    from fxforge.api import _Entry

    where = f"signature {i}"
    raw = record.get("leaves")
    _need(isinstance(raw, list), f"{where}: 'leaves' must be a list")
    leaves = tuple(_leaf(item, j) for j, item in enumerate(raw))
    picks = record.get("input_leaves")
    _need(isinstance(picks, list) and len(picks) == len(graph.inputs),
          f"{where}: 'input_leaves' must list one call leaf per graph input")
    picks = tuple(_int(j, 0, len(leaves), f"{where}: an input leaf") for j in picks)
    _need(all(leaves[j][0] == "tensor" for j in picks), f"{where}: a graph input is not a tensor")
    outputs = record.get("output_leaves")
    _need(isinstance(outputs, list), f"{where}: 'output_leaves' must be a list")
    out_leaves = []
    for item in outputs:
        _need(isinstance(item, list) and len(item) == 2 and item[0] in ("value", "const"),
              f"{where}: output leaf {item!r} is malformed")
        if item[0] == "value":
            out_leaves.append(("value", _int(item[1], 0, len(graph.outputs), f"{where}: output")))
        else:
            _need(item[1] is None or isinstance(item[1], (bool, int, float, str)),
                  f"{where}: a constant output of an unsupported type")
            out_leaves.append(("const", item[1]))
    in_spec = _spec(record.get("in_spec"), len(leaves), f"{where}: 'in_spec'")
    out_spec = _spec(record.get("out_spec"), len(out_leaves), f"{where}: 'out_spec'")
    captured = Captured(graph, picks, tuple(out_leaves), out_spec)
    key = (repr(in_spec), leaves)
    return key, _Entry(captured, graph, leaves, in_spec)


def restore(path: str, manifest: Mapping[str, Any], graphs: list[Graph], report_text: str,
            report_data: Any, error: Callable[[str], Exception]) -> Any:
    """The CompiledModel of a loaded archive; `error(message)` makes the archive's error."""
    from fxforge.api import CompiledModel

    try:
        target = get_target(manifest.get("target"))
    except Exception as e:  # noqa: BLE001 - an unknown target name is the archive's fault
        raise error(f"field 'target': {e}") from None
    try:
        signature = _signature(manifest.get("forward"))
        entries = dict(_entry(r, g, i) for i, (r, g) in enumerate(zip(manifest["signatures"],
                                                                      graphs)))
        pipeline = manifest.get("pipeline")
        _need(isinstance(pipeline, list) and all(isinstance(p, str) for p in pipeline),
              "field 'pipeline' must be a list of pass names")
        name = manifest.get("model")
        _need(isinstance(name, str), "field 'model' must be a string")
        options = manifest.get("options")
        _need(isinstance(options, dict), "field 'options' must be a map")
    except _Bad as e:
        raise error(f"manifest: {e}") from None
    model = CompiledModel.__new__(CompiledModel)
    model._init_calls(signature, name)
    model._loaded_from = path
    model._saved_options = dict(options)
    autotune = manifest.get("autotune")
    model.target, model._target, model._quant = target.name, target, None
    model._autotune = autotune if isinstance(autotune, bool) else None
    graphs = manifest.get("cuda_graphs")
    model._cuda_graphs = graphs if isinstance(graphs, bool) else None
    model._model = model._manager = None
    model._device = None
    if target.backend == "triton":
        from fxforge.kernels.triton.autotune import default_tuner
        from fxforge.kernels.triton.jit import check_device

        model._device = check_device(target.name)
        configs = manifest.get("kernel_configs")
        default_tuner().remember(configs if isinstance(configs, list) else [])
    model.report = SavedReport(target.name, tuple(pipeline), report_text,
                               report_data if isinstance(report_data, dict) else {},
                               len(entries), archive=model._loaded_from)
    model._entries = entries
    model._latest = next(iter(entries.values()))
    model._fixed = True
    return model
