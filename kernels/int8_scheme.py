"""Which int8 scheme this CPU gets: measured, not assumed from the ISA name.

oneDNN's int8 kernels multiply uint8 activations by int8 weights. With VNNI (`vpdpbusd`) or AMX
the products are summed in int32 and the accumulators are exact. Without it (AVX2, AVX-512
without VNNI) the kernels use `vpmaddubsw`, which adds each pair of u8 x s8 products in 16 bits
and saturates: 2 * 255 * 127 = 64770 does not fit, and a conv's accumulator can be off by tens
of thousands. `torch._int_mm` runs on oneDNN too and can saturate the same way.

So the first int8 program of a process runs each kernel family once on inputs built to
saturate (every activation at 255 as uint8, weights at the extremes of their range) and compares
with the exact sum. What passes decides the scheme:

- `s8`: oneDNN is exact with 8-bit weights (VNNI / AMX): the fast kernels for every layer.
- `s8-w7`: oneDNN is exact only with weights in [-63, 63] (2 * 255 * 63 = 32130 fits 16 bits):
  `cpu-int8` quantizes weights to 7 bits (`w_bits=7` on each qlinear / qconv2d in the IR, so
  the reference computes the same thing) and keeps the fast kernels.
- `generic`: neither (or no oneDNN in this torch build): every layer takes the generic path,
  whose int32 accumulators come from `torch._int_mm` where the probe found it exact and faster,
  else from float32 GEMMs of the integer values split along K so that every partial sum stays
  below 2**24 (exact in float32 in any order).

`ONEDNN_MAX_CPU_ISA=AVX2` (read by oneDNN when it starts) makes a VNNI machine behave like an
AVX2-only one: the tests use it to check the `s8-w7` path on any x86 CPU.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass

import torch

# CPU flags (Linux /proc/cpuinfo names) that decide how oneDNN sums int8 products
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
W7_MAX = 63  # |w| <= 63: a pair of u8 x s7 products fits 16 bits
SCHEMES = ("s8", "s8-w7", "generic")


@dataclass(frozen=True)
class Int8Scheme:
    """The outcome of the probe, and the facts the report shows about it."""

    name: str  # s8 | s8-w7 | generic
    weight_bits: int  # what cpu-int8 quantizes weights to on this machine
    onednn_w8: bool  # oneDNN int8 linear + conv exact with 8-bit weights
    onednn_w7: bool  # ... with weights in [-63, 63]
    int_mm: bool  # the generic path uses torch._int_mm: exact here, and faster than float32
    cpu: str  # model name and the int8-relevant flags
    isa_cap: str | None  # ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, when set

    @property
    def reason(self) -> str:
        cap = f", oneDNN capped at {self.isa_cap}" if self.isa_cap else ""
        if self.name == "s8":
            return f"oneDNN int8 kernels sum in int32 here ({self.cpu}{cap})"
        if self.name == "s8-w7":
            return (f"oneDNN int8 kernels sum pairs of products in 16 bits here ({self.cpu}{cap})"
                    ": weights limited to 7 bits so the sums cannot saturate")
        how = "torch._int_mm" if self.int_mm else "float32 GEMMs of the integer values"
        return f"no exact oneDNN int8 kernel here ({self.cpu}{cap}): {how}"

    def describe(self) -> str:
        return f"{self.name} ({self.weight_bits}-bit weights): {self.reason}"


def cpu_description() -> str:
    """'<model name>; <flags>' from /proc/cpuinfo where there is one, else platform's words."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if key == "" and flags:
                    break
    except OSError:
        pass
    have = [f for f in INT8_FLAGS if f in flags]
    return f"{model}; {' '.join(have) if have else 'no AVX2'}"


def _isa_cap() -> str | None:
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def _extreme_weights(n: int, k: int, w_max: int) -> torch.Tensor:
    """Rows all +w_max, all -w_max and alternating: each saturates a 16-bit pair sum."""
    w = torch.full((n, k), w_max, dtype=torch.int8)
    w[1::3] = -w_max
    w[2::3, 1::2] = -w_max
    return w


def _saturating_input(m: int, k: int) -> torch.Tensor:
    """int8 127 (uint8 255 after oneDNN's +128 shift) with a few -128 rows."""
    x = torch.full((m, k), 127, dtype=torch.int8)
    x[::5] = -128
    return x


# unit scales, no bias, float32 out: the layer's output is its int32 accumulator itself
UNIT_ATTRS = {"has_bias": False, "dynamic": False, "x_scale": 1.0, "x_zero_point": 0,
              "out_dtype": "f32", "out_scale": None, "out_zero_point": 0, "epilogue": ()}


def _linear_exact(w_max: int) -> bool:
    from fxforge.kernels import torch_int8 as ti

    for m, k, n in ((64, 64, 16), (128, 256, 48)):
        x, w = _saturating_input(m, k), _extreme_weights(n, k, w_max)
        attrs = dict(UNIT_ATTRS)
        layer = ti._OnednnLinear(w, attrs)
        y = layer(x, w, torch.ones(n), **attrs)
        exact = x.double() @ w.double().t()
        if not torch.equal(y.double(), exact):
            return False
    return True


def _conv_exact(w_max: int) -> bool:
    """A 3x3 conv, a strided one and a depthwise one (oneDNN picks a kernel for each)."""
    from fxforge.kernels import torch_int8 as ti

    for cin, cout, kernel, stride, groups in ((32, 16, 3, 1, 1), (24, 8, 3, 2, 1),
                                              (16, 16, 3, 1, 16)):
        w = _extreme_weights(cout, cin // groups * kernel * kernel, w_max)
        w = w.reshape(cout, cin // groups, kernel, kernel)
        x = _saturating_input(2 * cin, 10 * 10).reshape(2, cin, 10, 10)
        attrs = {**UNIT_ATTRS, "stride": (stride, stride), "padding": (1, 1),
                 "dilation": (1, 1), "groups": groups}
        layer = ti._OnednnConv(w, torch.ones(cout), attrs)
        y = layer(x, w, torch.ones(cout), **attrs)
        exact = torch.nn.functional.conv2d(x.double(), w.double(), None, stride, 1, 1, groups)
        if not torch.equal(y.double(), exact):
            return False
    return True


def _int_mm_exact() -> bool:
    a, b = _saturating_input(64, 256), _extreme_weights(48, 256, 127).t()
    try:
        got = torch._int_mm(a, b)
    except RuntimeError:
        return False
    return torch.equal(got.double(), a.double() @ b.double())


def _int_mm_faster() -> bool:
    """Whether `_int_mm` beats the float32 path on a mid-sized GEMM (best of 3 each): on some
    CPUs without VNNI it is exact but runs a slow loop (2-3 GOPS, ~50x below float32)."""
    from fxforge.kernels import torch_int8 as ti

    a = torch.randint(-128, 128, (256, 512), dtype=torch.int8)
    b = torch.randint(-128, 128, (512, 256), dtype=torch.int8)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch._int_mm) <= best(ti.float_int_mm)


@functools.cache
def detect() -> Int8Scheme:
    """Probe once per process (a few milliseconds); `FXFORGE_INT8_SCHEME` forces a scheme."""
    from fxforge.kernels import torch_int8 as ti

    onednn = ti.onednn_built()
    with torch.no_grad():
        w8 = onednn and _linear_exact(127) and _conv_exact(127)
        w7 = w8 or (onednn and _linear_exact(W7_MAX) and _conv_exact(W7_MAX))
        int_mm = _int_mm_exact() and _int_mm_faster()
    name = "s8" if w8 else "s8-w7" if w7 else "generic"
    forced = os.environ.get("FXFORGE_INT8_SCHEME")
    if forced:
        if forced not in SCHEMES:
            raise ValueError(f"FXFORGE_INT8_SCHEME must be one of {', '.join(SCHEMES)}, "
                             f"got {forced!r}")
        if (forced == "s8" and not w8) or (forced == "s8-w7" and not w7):
            raise ValueError(f"FXFORGE_INT8_SCHEME={forced}: oneDNN's int8 kernels are not "
                             f"exact for it on this CPU ({cpu_description()})")
        name = forced
    return Int8Scheme(name, 7 if name == "s8-w7" else 8, w8, w7, int_mm, cpu_description(),
                      _isa_cap())



def onednn_takes(weight: torch.Tensor) -> bool:
    """Whether oneDNN's int8 kernels compute this layer's accumulators exactly here: always
    where they sum in int32, for weights within 7 bits where they sum pairs in 16 bits. Read
    from the weight itself, not from `w_bits`, so an IR quantized elsewhere is safe too."""
    scheme = detect()
    if scheme.name == "generic":
        return False
    if scheme.onednn_w8:
        return True
    return weight.numel() == 0 or int(weight.to(torch.int16).abs().max()) <= W7_MAX
