"""How much error a model makes from int8-sized noise alone: its int8 noise floor.

int8 error has two parts: what quantizing any layer to about 37 dB SQNR costs this model (its
sensitivity, which no int8 implementation can avoid), and what the implementation adds
(calibration, rounding, kernels). `noise_floor` measures the first part: it runs a copy of the
model with Gaussian noise at `sqnr_db` added to the output of every layer with a weight (Linear,
Conv1d/2d, transformers' Conv1D) and returns the relative error that causes. An int8 result
within a small multiple of that floor is as good as int8 gets on this model; one far above it
points at the implementation.

Relative error, here and in the zoo's tables: the largest |error| over the largest |output|,
across the floating-point output leaves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

INT8_SQNR_DB = 37.0  # what per-channel int8 layers measure on real activations (30-45 dB)


def relative_error(got: Any, want: Any) -> float:
    """The largest |got - want| over the largest |want|, across floating-point leaves."""
    pairs = [(g, w) for g, w in zip(pytree.tree_flatten(got)[0], pytree.tree_flatten(want)[0])
             if isinstance(w, torch.Tensor) and w.is_floating_point()]
    if not pairs:
        raise ValueError("no floating-point output to compare")
    return max(float((g.float() - w.float()).abs().max()
                     / w.float().abs().max().clamp_min(1e-12)) for g, w in pairs)


def _has_weight_layer(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "weight")  # transformers GPT-2


def noise_floor(model: nn.Module, inputs: Any, call: Callable[[nn.Module, Any], Any],
                sqnr_db: float = INT8_SQNR_DB, seed: int = 0) -> float:
    """The relative error of `call(model, inputs)` when every layer with a weight gets
    Gaussian noise at `sqnr_db` on its output. `model` is not modified (a copy is run)."""
    noisy = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (-sqnr_db / 20.0)

    def add_noise(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        rms = out.detach().pow(2).mean().sqrt()
        return out + torch.randn(out.shape, generator=generator, dtype=out.dtype) * rms * scale

    layers = [m for m in noisy.modules() if _has_weight_layer(m)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear / Conv layer to add noise to")
    for m in layers:
        m.register_forward_hook(add_noise)
    with torch.no_grad():
        return relative_error(call(noisy, inputs), call(model, inputs))
