"""What every verify check is made of: `Verify` (seeded numpy inputs put on the device), the
comparisons with the numpy reference (close, exact, within 1 LSB; `combine` joins a check's
parts), the test suite's tolerances, and the builders of fused epilogues. The checks themselves
are in gpu_verify_matmul.py and gpu_verify_ops.py; gpu_verify.py runs them."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

F32_TOL = dict(rtol=1e-4, atol=1e-5)
F16_TOL = dict(rtol=2e-3, atol=2e-3)
F16_GEMM_TOL = dict(rtol=4e-3, atol=4e-3)  # f16 inputs and output of a long dot product
POOL_TOL = dict(rtol=1e-5, atol=1e-6)
RELU = {"op": "relu"}
GELU = {"op": "gelu", "attrs": {"approximate": "none"}}


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_result(ok: bool, max_err: float | None, tol: str, **extra: Any) -> dict[str, Any]:
    """One check's outcome: the fields of its verify row."""
    return {"ok": bool(ok), "max_err": max_err, "tol": tol, **extra}


def close(got: torch.Tensor, want: np.ndarray, rtol: float, atol: float,
          scale_atol: bool = False) -> dict[str, Any]:
    """|got - want| <= atol + rtol * |want| everywhere (NaN where the reference has NaN);
    scale_atol: atol is relative to max |want|."""
    g = _host(got).astype(np.float64)
    w = np.asarray(want).astype(np.float64)
    if g.shape != w.shape:
        return check_result(False, None, "shape",
                            error=f"shape {list(g.shape)} != {list(w.shape)}")
    finite = np.abs(w[np.isfinite(w)])
    if scale_atol and finite.size:
        atol *= float(finite.max())
    ok = bool(np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True).all())
    with np.errstate(invalid="ignore"):
        err = np.abs(g - w)
    err = err[np.isfinite(err)]
    return check_result(ok, float(err.max()) if err.size else 0.0,
                        f"rtol {rtol:g}, atol {atol:.2g}")


def exact(got: torch.Tensor, want: np.ndarray) -> dict[str, Any]:
    g, w = _host(got), np.asarray(want)
    if g.shape != w.shape:
        return check_result(False, None, "exact",
                            error=f"shape {list(g.shape)} != {list(w.shape)}")
    diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
    ok = bool(np.array_equal(g, w, equal_nan=np.issubdtype(w.dtype, np.floating)))
    diff = diff[np.isfinite(diff)]
    return check_result(ok, float(diff.max()) if diff.size else 0.0, "exact")


def lsb(got: torch.Tensor, want: np.ndarray, min_exact: float) -> dict[str, Any]:
    """int8 outputs: within 1 LSB everywhere, and at least `min_exact` of them equal."""
    g, w = _host(got), np.asarray(want)
    if g.shape != w.shape or g.dtype != np.int8:
        return check_result(False, None, "1 LSB", error=f"{g.dtype}{list(g.shape)} != "
                            f"{w.dtype}{list(w.shape)}")
    diff = np.abs(g.astype(np.int32) - w.astype(np.int32))
    same = float(np.mean(diff == 0)) if diff.size else 1.0
    return check_result(diff.max(initial=0) <= 1 and same >= min_exact,
                        float(diff.max(initial=0)), f"1 LSB, >= {min_exact:.0%} exact",
                        exact_fraction=round(same, 5))


def combine(*results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    errs = [r["max_err"] for r in results if r["max_err"] is not None]
    out = check_result(all(r["ok"] for r in results), max(errs) if errs else None,
                       "; ".join(dict.fromkeys(r["tol"] for r in results)), **extra)
    problems = [r["error"] for r in results if "error" in r]
    if problems:
        out["error"] = "; ".join(problems)
    return out


def per_config(configs, tol: str, run) -> tuple[list[dict[str, Any]], list[dict]]:
    """`run(cfg)` (a check result) for each config; a config that raises is a failed check, named
    with its error. Returns (results, the configs that failed)."""
    out, bad = [], []
    for cfg in configs:
        try:
            r = run(cfg)
        except Exception as e:  # a config that does not run is a failure of the check
            r = check_result(False, None, tol, error=f"{cfg}: {type(e).__name__}: {e}"[:300])
        out.append(r)
        if not r["ok"]:
            bad.append(cfg)
    return out, bad


class Verify:
    """Inputs made with numpy, run on the device, compared on the host with the reference."""

    def __init__(self, device: torch.device, smoke: bool, configs: int | None):
        self.device, self.smoke, self.configs = device, smoke, configs
        self.big = not smoke

    def rng(self, *key: object) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(repr(key).encode()))

    def t(self, a: np.ndarray, channels_last: bool = False) -> torch.Tensor:
        a = np.ascontiguousarray(a).reshape(np.shape(a))  # (ascontiguousarray makes 0-d 1-d)
        t = torch.from_numpy(a).to(self.device)
        return t.contiguous(memory_format=torch.channels_last) \
            if channels_last and t.dim() == 4 else t

    def some(self, configs: list[dict]) -> list[dict]:
        return list(configs) if self.configs is None else list(configs)[:self.configs]


def tensor_types(arrays) -> list:
    from fxforge import dtypes
    from fxforge.ir import TensorType

    return [TensorType(np.shape(a), dtypes.from_numpy(np.asarray(a).dtype)) for a in arrays]


def float_epilogue(op: str, inputs: list, attrs: dict):
    """(Epilogue, completed attrs, stage types) of a fused_linear / fused_conv2d node."""
    from fxforge import ops
    from fxforge.kernels.triton.codegen import Epilogue

    attrs = ops.complete_attrs(ops.get(op), attrs)
    types = tensor_types(inputs)
    stages = ops.stage_types(op, types, attrs)
    return Epilogue(attrs["epilogue"], tuple(stages), tuple(types)), attrs, stages


def quant_epilogue(op: str, inputs: list, attrs: dict, reference: Callable):
    """(Epilogue, reference output) of a qlinear / qconv2d node."""
    from fxforge import ops
    from fxforge.ir import TensorType
    from fxforge.kernels.triton.codegen import Epilogue

    attrs = ops.complete_attrs(ops.get(op), attrs)
    want = reference(*inputs, **attrs)
    types = tensor_types(inputs)
    stages = ops.epilogue_types(TensorType(want.shape, "f32"), types, attrs["epilogue"])
    return Epilogue(attrs["epilogue"], tuple(stages), tuple(types)), attrs, want


def random_int8(rng, shape, lo=-128) -> np.ndarray:
    return rng.integers(lo, 128, size=shape).astype(np.int8)
