"""Host-side helpers shared by the kernel wrappers: operands as 2-D row views, argument and
config checks, launch options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fxforge import dtypes


def rows_view(t: torch.Tensor, out_shape: Sequence[int], channels_last: bool
              ) -> tuple[torch.Tensor, int, int]:
    """An epilogue operand broadcast to the node's output, seen as the kernel's [M, N] rows:
    (tensor, stride of a row, stride of a column). Rows are all dims but the last (linear) or
    B, H, W of an NCHW output stored channels-last (conv; N = channels). A broadcast dim has
    stride 0, so a per-channel vector is read without being expanded in memory; an operand whose
    rows cannot be one stride is copied (channels-last for conv)."""
    full = t.expand(*out_shape)
    if channels_last:
        full = full.permute(0, 2, 3, 1)  # [B, H, W, C]
    lead, n_stride = full.shape[:-1], full.stride(-1)
    strides = [s for d, s in zip(lead, full.stride()[:-1]) if d != 1]
    dims = [d for d in lead if d != 1]
    # one stride for all the row dims: every dim's stride = next stride * next size (or all 0)
    if all(s == 0 for s in strides):
        return full, 0, n_stride
    ok = all(strides[i] == strides[i + 1] * dims[i + 1] for i in range(len(dims) - 1))
    if ok:
        return full, strides[-1], n_stride
    dense = full.contiguous()
    return dense, dense.stride(-2) if dense.dim() > 1 else 0, dense.stride(-1)


def dtype_name(dtype: str | torch.dtype) -> str:
    return dtypes.from_torch(dtype) if isinstance(dtype, torch.dtype) else dtypes.check(dtype)


def check_matrix(t: object, what: str, allowed: tuple[str, ...]) -> torch.Tensor:
    """A 2-D tensor of an allowed dtype whose last dim is contiguous (the kernels step along K
    with stride 1; callers reshape [..., K] activations to [M, K] themselves)."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what} must be a 2-D tensor (reshape [..., K] to [M, K] first), "
                         f"got {shape}")
    if dtypes.from_torch(t.dtype) not in allowed:
        raise ValueError(f"{what} must be {' or '.join(allowed)}, got {t.dtype}")
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{what} must be contiguous in its last dim (stride 1), got strides "
                         f"{t.stride()}; call .contiguous() first")
    if t.numel() >= 2**31:
        raise ValueError(f"{what} has {t.numel()} elements; int32 offsets allow < 2**31")
    return t


def check_vector(t: object, n: int, what: str) -> torch.Tensor:
    """An f32 [n] tensor, made contiguous."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (n,):
        got = f"{t.dtype}{list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what} must be a float32 tensor of shape [{n}], got {got}")
    return t.contiguous()


def check_config(config: Mapping | None, default: Mapping, keys: tuple[str, ...],
                 min_k: int) -> dict:
    """The launch config (default when None): power-of-two blocks, >= 16 on the dot dims
    (tl.dot's smallest tile) and BLOCK_K >= min_k (int8 MMA reduces 32 at a time)."""
    cfg = dict(default if config is None else config)
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"config lacks {missing}; it needs {list(keys)}")
    for k in keys:
        v = cfg[k]
        if not isinstance(v, int) or v < 1 or (k.startswith("BLOCK") and v & (v - 1)):
            raise ValueError(f"config {k} must be a positive int (a power of two for blocks), "
                             f"got {v!r}")
    for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        if k in keys and cfg[k] < (min_k if k == "BLOCK_K" else 16):
            raise ValueError(f"config {k} = {cfg[k]} is below {min_k if k == 'BLOCK_K' else 16}, "
                             "the smallest tile tl.dot takes here")
    return cfg


def launch_options(cfg: Mapping, a: str | None = None) -> dict:
    """num_warps / num_stages; for f32 operands the dot's PRECISION, "ieee" unless the config
    says "tf32x3" (three TF32 tensor-core products: about f32 accuracy, much faster on H100); for
    int8 no float contraction, so that the epilogue rounds each product and sum as the
    reference does (FMA would round f32(acc) * m + bias once)."""
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    if a == "f32":
        opts["PRECISION"] = cfg.get("PRECISION", "ieee")
        if opts["PRECISION"] not in ("ieee", "tf32x3"):
            raise ValueError(f"config PRECISION must be ieee or tf32x3, got {opts['PRECISION']!r}")
    if a == "i8":
        opts["enable_fp_fusion"] = False
    return opts


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
