"""One adapter per system, one interface.

    system.check(device)  -> None, or why the system cannot run at all on this machine
    system.skip(case)     -> None, or why it is not run for this model (e.g. too slow)
    system.prepare(case)  -> Prepared: compiles/exports/loads; raises Unavailable(reason) when
                             the system turns out to be missing, anything else is a failure
    system.describe()     -> dict for the JSON report

Prepared.run() does one inference on the case's inputs (what is timed); Prepared.call(*inputs)
returns the first output as a tensor (errors, accuracy). Every system sees the same float32
module and the same inputs; each keeps its own copy of the weights in its own format.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from fxforge.bench.metrics import files_bytes, first_tensor, state_dict_bytes
from fxforge.bench.models import BenchModel
from fxforge.errors import DeviceUnavailableError

NO_CUDA = "no CUDA device"


class Unavailable(Exception):
    """The system cannot run here; the message says why (reported, never fatal)."""


def unavailable(reason: str) -> Unavailable:
    return Unavailable(reason)


@dataclass
class Case:
    """One model at one batch size on one device."""

    spec: BenchModel
    batch: int
    model: torch.nn.Module
    inputs: tuple
    device: torch.device
    workdir: Path  # scratch space for exported files (inside the run's output folder)

    @property
    def key(self) -> str:
        return f"{self.spec.name}@{self.batch}"


@dataclass
class Prepared:
    run: Callable[[], Any]
    call: Callable[..., torch.Tensor]
    size_bytes: Callable[[], int] | None = None  # measured outside the timed preparation
    size_what: str = ""
    notes: list[str] = field(default_factory=list)
    extra_compile_s: float = 0.0  # work done earlier for this system (a shared export)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class System:
    name = ""
    kind = ""
    precision = "fp32"
    description = ""
    has_compile_cache = False  # a second compile in the process reuses work (warm != cold)

    def check(self, device: torch.device) -> str | None:
        return None

    def skip(self, case: Case) -> str | None:
        return None

    def prepare(self, case: Case) -> Prepared:
        raise NotImplementedError

    def release(self, case_model: str) -> None:
        """Drop what was kept for a model (called after its last batch size)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "precision": self.precision,
                "description": self.description}


# --- eager PyTorch -----------------------------------------------------------------------------


class Eager(System):
    kind = "eager"

    def __init__(self, precision: str = "fp32"):
        self.precision = precision
        self.name = f"eager-{precision}"
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
        self.description = (f"PyTorch {torch.__version__} eager, {precision}, torch.no_grad"
                            + (" (model.half(), float inputs cast)" if precision == "fp16"
                               else ""))

    def check(self, device: torch.device) -> str | None:
        if self.precision == "fp16" and device.type != "cuda":
            return f"{NO_CUDA} (eager fp16 is run on GPU only)"
        return None

    def prepare(self, case: Case) -> Prepared:
        model, inputs = case.model, case.inputs
        if self.dtype != torch.float32:
            model = copy.deepcopy(model).to(self.dtype)
            inputs = tuple(x.to(self.dtype) if x.is_floating_point() else x for x in inputs)
        cast = self.dtype

        def call(*xs: torch.Tensor) -> torch.Tensor:
            xs = tuple(x.to(cast) if x.is_floating_point() else x for x in xs)
            with torch.no_grad():
                return first_tensor(model(*xs)).float()

        call(*inputs)
        _sync(case.device)
        return Prepared(lambda: model(*inputs), call, lambda: state_dict_bytes(model),
                        "torch.save(state_dict)")


# --- torch.compile -----------------------------------------------------------------------------


class TorchCompile(System):
    kind = "torch.compile"
    has_compile_cache = True

    def __init__(self, mode: str = "default", gpu_only: bool = False):
        self.mode, self.gpu_only = mode, gpu_only
        self.name = "torch-compile" if mode == "default" else f"torch-compile-{mode}"
        self.description = (f"torch.compile(mode={mode!r}, dynamic=False), inductor; one "
                            "compile per batch size; warm = after torch._dynamo.reset(), with "
                            "this run's fresh inductor cache (measured after the timing: the "
                            "reset drops every compiled case)")

    def check(self, device: torch.device) -> str | None:
        if self.gpu_only and device.type != "cuda":
            return f"{NO_CUDA} (mode {self.mode!r} is run on GPU only)"
        try:
            import torch._dynamo as dynamo

            if not dynamo.is_dynamo_supported():
                return "torch.compile is not supported on this Python/platform"
        except Exception as e:  # any import problem means "not available"
            return f"torch.compile cannot be imported: {e}"
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler on PATH (inductor's CPU backend needs one)"
        return None

    def prepare(self, case: Case) -> Prepared:
        model, inputs = case.model, case.inputs
        compiled = torch.compile(model, mode=None if self.mode == "default" else self.mode,
                                 dynamic=False)

        def call(*xs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return first_tensor(compiled(*xs)).float()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(*inputs)
        _sync(case.device)
        return Prepared(lambda: compiled(*inputs), call, lambda: state_dict_bytes(model),
                        "torch.save(state_dict)")

    @staticmethod
    def reset() -> None:
        torch._dynamo.reset()


# --- ONNX Runtime ------------------------------------------------------------------------------


class _Flat(torch.nn.Module):
    """The model with its output flattened to a tuple of tensors (what ONNX can return)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *xs):
        return tuple(pytree.tree_leaves(self.model(*xs)))


@contextlib.contextmanager
def _quiet():
    """Keep exporters' and quantizers' prints, warnings and log lines off the progress bar."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript",
                                              "root", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: torch.nn.Module, inputs: tuple, path: Path) -> str:
    """torch.onnx.export with a dynamic batch axis: the dynamo exporter (torch.export), or the
    TorchScript exporter when that fails. Returns which exporter and why."""
    names = [f"input{i}" for i in range(len(inputs))]
    flat = _Flat(model).eval()
    errors = []
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with _quiet():
            torch.onnx.export(flat, inputs, str(path), dynamo=True, input_names=names,
                              dynamic_shapes=tuple({0: batch} for _ in inputs),
                              external_data=False, verbose=False)
        return "torch.onnx.export(dynamo=True), dynamic batch"
    except Exception as e:  # fall back to the other exporter, report both
        errors.append(f"dynamo exporter: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    with _quiet():
        torch.onnx.export(flat, inputs, str(path), dynamo=False, input_names=names,
                          dynamic_axes={n: {0: "batch"} for n in names}, opset_version=17)
    return "torch.onnx.export(dynamo=False), dynamic batch (" + "; ".join(errors) + ")"


class _CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of input tuples."""

    def __init__(self, names: list[str], batches: list[tuple]):
        self._feeds = iter([{n: x.cpu().numpy() for n, x in zip(names, b)} for b in batches])

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self) -> None:  # not needed by MinMax calibration
        pass


_EXPORTS: dict[str, tuple[Path, str, float]] = {}  # model -> (float32 .onnx, how, seconds)


def _shared_export(case: Case) -> tuple[Path, str, float, bool]:
    """The model's float32 ONNX file, exported once (dynamic batch) and shared by the ONNX
    Runtime systems: (path, how, export seconds, reused)."""
    entry = _EXPORTS.get(case.spec.name)
    if entry is not None:
        return (*entry, True)
    path = case.workdir / f"{case.spec.name}.onnx"
    start = time.perf_counter()
    how = _export(case.model, tuple(x.cpu() for x in case.inputs), path)
    _EXPORTS[case.spec.name] = (path, how, time.perf_counter() - start)
    return (*_EXPORTS[case.spec.name], False)


class OnnxRuntime(System):
    kind = "onnxruntime"

    def __init__(self, precision: str = "fp32"):
        self.precision = precision
        self.name = f"onnxruntime-{precision}"
        self._quantized: dict[str, Path] = {}  # model -> int8 file
        self._counted: set[str] = set()  # models whose shared export this system has counted
        ort = self._ort()
        version = f" {ort.__version__}" if ort is not None else ""
        common = ("exported once per model with a dynamic batch axis; intra-op threads = torch's, "
                  "spinning off (an idle spinning pool steals the CPU from the next system in "
                  "the interleaved rounds)")
        if precision == "int8":
            self.description = (f"ONNX Runtime{version} CPU, quantize_static: QDQ, activations "
                                "uint8 per-tensor, weights int8 per-channel, MinMax calibration "
                                "on 4 random inputs like the benchmark's (digits: 128 training "
                                f"images); {common}")
        else:
            self.description = (f"ONNX Runtime{version}, float32, ORT_ENABLE_ALL graph "
                                f"optimizations; {common}")

    def _ort(self):
        try:
            import onnxruntime
        except ImportError:
            return None
        return onnxruntime

    def check(self, device: torch.device) -> str | None:
        ort = self._ort()
        if ort is None:
            return "onnxruntime is not installed (pip install 'fxforge[bench]')"
        if device.type == "cuda":
            if self.precision == "int8":
                return ("int8 QDQ models run on ONNX Runtime's CPU provider here; on GPU they "
                        "need the TensorRT provider, not benchmarked")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return None

    def release(self, case_model: str) -> None:
        self._counted.discard(case_model)
        for path in (self._quantized.pop(case_model, None),
                     _EXPORTS.pop(case_model, (None,))[0]):
            if path is not None:
                for p in path.parent.glob(path.name + "*"):
                    p.unlink()

    def prepare(self, case: Case) -> Prepared:
        ort = self._ort()
        key = case.spec.name
        fp32, how, export_s, reused = _shared_export(case)
        notes = [how]
        extra = 0.0
        if reused and key not in self._counted:
            extra = export_s  # this system's compile time includes the export it reuses
            notes.append(f"compile time includes the shared float32 export ({export_s:.1f} s)")
        elif reused:
            notes.append("reuses the ONNX file exported at the model's first batch size "
                         "(dynamic batch axis)")
        self._counted.add(key)
        path = fp32
        if self.precision == "int8":
            if key not in self._quantized:
                self._quantized[key] = fp32.with_suffix(".int8.onnx")
                self._quantize(case, fp32, self._quantized[key])
            path = self._quantized[key]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = (["CUDAExecutionProvider"] if case.device.type == "cuda"
                     else ["CPUExecutionProvider"])
        session = ort.InferenceSession(str(path), options, providers=providers)
        names = [i.name for i in session.get_inputs()]
        feed = {n: x.cpu().numpy() for n, x in zip(names, case.inputs)}

        def call(*xs: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {n: x.cpu().numpy() for n, x in zip(names, xs)})
            return torch.from_numpy(np.asarray(out[0])).float()

        session.run(None, feed)
        size = files_bytes(path, *path.parent.glob(path.name + ".data"))
        return Prepared(lambda: session.run(None, feed), call, lambda: size, "ONNX file", notes,
                        extra_compile_s=extra)

    def _quantize(self, case: Case, fp32: Path, out: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        names = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
        calibration = (case.spec.calibration(case.inputs) if case.spec.calibration
                       else [case.inputs])
        reader = _CalibrationReader(names, calibration)
        with _quiet():
            quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True)


# --- fxforge -----------------------------------------------------------------------------------


def _needs_cuda(target: str) -> bool:
    from fxforge.targets import TARGET_INFO

    return TARGET_INFO[target].backend == "triton" or target.startswith("cuda")


class Fxforge(System):
    kind = "fxforge"

    def __init__(self, target: str):
        from fxforge.targets import TARGET_INFO

        info = TARGET_INFO[target]
        self.target = target
        self.name = f"fxforge-{target}"
        self.precision = info.precision
        self.description = f"fxforge compile(target={target!r}): {info.description}"
        if info.backend == "reference":
            self.description += " (numpy's BLAS limited to one thread during the run)"

    def check(self, device: torch.device) -> str | None:
        from fxforge import compile as fx_compile

        missing = None
        try:  # what compile() itself says about the target
            fx_compile(torch.nn.Identity(), self.target)
        except (NotImplementedError, DeviceUnavailableError) as e:
            missing = None if _needs_cuda(self.target) else str(e)
        if _needs_cuda(self.target) and device.type != "cuda":
            return NO_CUDA + (f"; and: {missing}" if missing else "")
        if missing:
            return missing
        if self.target.startswith("reference") and device.type == "cuda":
            return "the numpy reference interpreter runs on the CPU only (use --device cpu)"
        return None

    def skip(self, case: Case) -> str | None:
        if self.target.startswith("reference") and not case.spec.reference_ok:
            return ("too slow for this model size (the numpy reference interpreter "
                    "is the executable specification, for checking; run in --quick)")
        return None

    def prepare(self, case: Case) -> Prepared:
        from fxforge import compile as fx_compile

        calibration = None
        if self.precision.startswith("int"):
            calibration = (case.spec.calibration(case.inputs) if case.spec.calibration
                           else None)
        try:
            compiled = fx_compile(case.model, self.target, example_inputs=case.inputs,
                                  calibration=calibration)
        except NotImplementedError as e:
            raise Unavailable(str(e)) from None
        inputs = case.inputs

        def call(*xs: torch.Tensor) -> torch.Tensor:
            return first_tensor(compiled(*xs)).float()

        call(*inputs)
        _sync(case.device)
        notes = []
        if compiled.report.fallbacks:
            notes.append(f"{len(compiled.report.fallbacks)} op(s) fall back to torch_op")
        return Prepared(lambda: compiled(*inputs), call, lambda: _ir_bytes(compiled),
                        "IR text + constants (.npz)", notes)


def _ir_bytes(compiled) -> int:
    """Bytes of what fxforge would ship: the optimized IR as text and its constants as .npz."""
    from fxforge.printer import print_graph

    graph = compiled.graph
    arrays = {}
    for i, node in enumerate(graph.nodes):
        if node.op == "const" and node.attrs["value"].array is not None:
            arrays[f"c{i}"] = np.asarray(node.attrs["value"].array)
    with tempfile.TemporaryDirectory() as tmp:
        text, data = os.path.join(tmp, "model.ir"), os.path.join(tmp, "constants.npz")
        Path(text).write_text(print_graph(graph))
        np.savez(data, **arrays)
        return files_bytes(text, data)


# --- the registry ------------------------------------------------------------------------------


def all_systems() -> list[System]:
    """Every system the harness knows, in report order: eager first (the baseline)."""
    from fxforge.targets import TARGETS

    systems: list[System] = [Eager("fp32"), Eager("fp16"), TorchCompile("default"),
                             TorchCompile("max-autotune", gpu_only=True),
                             OnnxRuntime("fp32"), OnnxRuntime("int8")]
    systems += [Fxforge(t) for t in TARGETS]
    return systems


BASELINE = "eager-fp32"
