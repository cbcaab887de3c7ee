"""Target name -> backend, precision and default pipeline.

A target's pipeline is a plain list here, not branches on flags elsewhere. Targets that are
designed but not built yet are listed so users can see them; compiling for one raises
NotImplementedError that says which piece is missing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # reference | torch | ort | triton
    precision: str
    pipeline: tuple[str, ...]
    description: str
    missing: str | None = None  # why it cannot be used yet; None when it can


# Float pipeline: cleanup first so patterns see one spelling, then folding, then cleanup again.
# fuse comes last: the channel analysis reads plain conv/linear/elementwise nodes.
_FLOAT = ("canonicalize", "fold-constants", "cse", "fold-batchnorm", "remove-pruned-channels",
          "canonicalize", "fuse", "dce")

# int8: the float pipeline, then quantize (see passes/quantize.py) and a last cleanup. smooth
# does nothing unless calibration was asked to smooth (compile(..., smooth=0.5)).
_INT8 = (*_FLOAT, "smooth", "quantize", "dce")

# cuda: the same pipelines, then activations channels-last between the graph's edges.
_CUDA = (*_FLOAT, "layout-nhwc")
_CUDA_FP16 = (*_FLOAT, "to-fp16", "layout-nhwc")
_CUDA_INT8 = (*_INT8, "layout-nhwc")
_CUDA_INT4 = (*_FLOAT, "quantize-int4", "dce", "layout-nhwc")

_TARGETS = [
    Target("reference", "reference", "fp32", _FLOAT,
           "numpy interpreter: the executable specification, slow, for checking"),
    Target("cpu", "torch", "fp32", _FLOAT, "torch ops on the CPU (also runs CUDA tensors)"),
    Target("reference-int8", "reference", "int8", _INT8, "numpy interpreter of quantized IR"),
    Target("cpu-int8", "torch", "int8", _INT8,
           "int8 arithmetic: oneDNN int8 kernels where they sum exactly on this CPU (7-bit "
           "weights without VNNI), else an exact generic path"),
    Target("ort", "ort", "fp32", _FLOAT,
           "fxforge's passes, then ONNX Runtime (CPU) runs the exported graph"),
    Target("ort-int8", "ort", "int8", _INT8,
           "fxforge's passes and int8 quantization, then ONNX Runtime runs the QDQ export"),
    Target("cuda", "triton", "fp32", _CUDA,
           "generated Triton kernels (GEMM, NHWC conv, fused elementwise, norms), torch fallback"),
    Target("cuda-fp16", "triton", "fp16", _CUDA_FP16,
           "Triton kernels computing in fp16 (inputs and outputs stay fp32)"),
    Target("cuda-int8", "triton", "int8", _CUDA_INT8,
           "Triton int8 GEMM / implicit-GEMM conv with fused epilogues"),
    Target("cuda-int4", "triton", "int4 weight-only", _CUDA_INT4,
           "Triton int4 weight-only GEMM (linear layers), the rest as cuda"),
]

TARGET_INFO: dict[str, Target] = {t.name: t for t in _TARGETS}
TARGETS: tuple[str, ...] = tuple(TARGET_INFO)


def get_target(name: str) -> Target:
    if not isinstance(name, str) or name not in TARGET_INFO:
        raise ValueError(f"unknown target {name!r}; fxforge.TARGETS = {', '.join(TARGETS)}")
    target = TARGET_INFO[name]
    if target.missing:
        ready = ", ".join(t.name for t in _TARGETS if not t.missing)
        raise NotImplementedError(f"target {name!r} is not implemented yet: {target.missing}. "
                                  f"Implemented targets: {ready}")
    return target
