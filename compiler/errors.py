"""The exceptions a user of fxforge can meet. Each message names the problem and where it is."""

from __future__ import annotations


class FxforgeError(Exception):
    """Base of fxforge's own errors."""


class CaptureError(FxforgeError):
    """torch.export could not capture the model, or its graph could not become IR."""


class UnsupportedModelError(CaptureError):
    """The model exports, but does something a compiled inference graph cannot reproduce."""


class InputError(FxforgeError, TypeError):
    """A call whose inputs do not fit the compiled model (number, dtype, shape)."""


class ExecutionError(FxforgeError, RuntimeError):
    """A node failed while running; the message names the node and its module path."""


class PipelineError(FxforgeError, ValueError):
    """An unknown pass name, or a pass that broke the IR (named, with the verifier's message)."""


class CalibrationError(FxforgeError, ValueError):
    """Calibration data or statistics that cannot give int8 ranges (names the sample and input)."""


class DeviceUnavailableError(FxforgeError, RuntimeError):
    """A target whose kernels need a device (CUDA) or library (Triton) this machine lacks; the
    message says which target to use instead."""


class MissingDependencyError(FxforgeError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra."""


class OptionError(FxforgeError, ValueError):
    """A `compile()` option with a value it cannot take; the message names the option."""


class MiscompileError(FxforgeError):
    """A pass whose output graph computes something else than its input graph on the numpy
    reference (`debug={"check_each": True}`). Names the pass, the first diverging value (in the
    input graph's order), its module path and the error; `bundle` is the reproducer's path."""

    def __init__(self, message: str, *, pass_name: str, value: str, op: str, module: str,
                 error: float, tolerance: str, bundle: str | None = None):
        super().__init__(message)
        self.pass_name, self.value, self.op, self.module = pass_name, value, op, module
        self.error, self.tolerance, self.bundle = error, tolerance, bundle
