"""Host-side helpers shared by the kernel wrappers: operands as 2-D row views, launch checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
