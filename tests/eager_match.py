"""Compile a module, insist that nothing fell back to torch_op, and compare with eager."""

from __future__ import annotations

import torch
import torch.nn as nn

import fxforge


def compiled_matches(model: nn.Module, inputs: tuple, target: str) -> fxforge.CompiledModel:
    """Compile for `target` with `inputs` as the example, insist that nothing fell back, and
    compare every output with eager: floats at fp32 tolerance (rtol 1e-4, atol 1e-5), integers
    and bools exactly (dtypes always)."""
    model = model.eval()
    compiled = fxforge.compile(model, target, example_inputs=inputs)
    assert compiled.report.fallbacks == [], compiled.report.fallbacks
    with torch.no_grad():
        want = model(*inputs)
    got = compiled(*inputs)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        exact = not w.is_floating_point()
        torch.testing.assert_close(g, w, rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5)
    return compiled
