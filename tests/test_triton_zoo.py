"""The cuda targets on the real-architecture zoo (transformers classes, small random configs) and
on fxforge's own zoo, through Triton's interpreter: what is left to the torch backend, and the
results against eager (float) or against the numpy reference on the same IR (int8).

Every model here has only IR ops (no opaque torch_op), and each of them runs as a generated
kernel or a view: a node left to the torch backend fails these tests with its reason.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch

import fxforge
from fxforge import zoo
from fxforge.sensitivity import relative_error

pytest.importorskip("transformers")
from fxforge import zoo_hf  # noqa: E402

# float32 kernels: IEEE dots, so the error against eager is float rounding only (measured <= 7e-7
# relative to the largest output on 2026-12-08)
FP32_RTOL = 1e-5
FP16_RTOL = 5e-3  # f16 storage of activations and weights (measured <= 1.9e-3)
INT8_RTOL = 1e-4  # int8 kernels against the reference on the same IR: exact but for f32 steps


def _left(fast) -> dict[str, list[str]]:
    left = collections.defaultdict(list)
    for a in fast.report.latest.kernels:
        if a.kernel is None:
            left[a.op].append(a.reason)
    return left


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def _compile(model, target, inputs, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fxforge.compile(model, target, autotune=False, **options)
        return fast, zoo_hf.call(fast, inputs)


def _against_eager(name: str, target: str, rtol: float):
    """Compile zoo model `name` for `target`; its error against eager is within rtol (relative
    to the largest output) and no node is left to torch. Returns the compiled model."""
    model, inputs = zoo_hf.build(name, 1)
    with torch.no_grad():
        want = zoo_hf.call(model, inputs)
    fast, got = _compile(model, target, inputs)
    assert relative_error(got, want) <= rtol
    assert not _left(fast), dict(_left(fast))
    return fast


@pytest.mark.parametrize("name", list(zoo_hf.HF_ZOO))
def test_hf_zoo_cuda_fp32(name):
    fast = _against_eager(name, "cuda", FP32_RTOL)
    report = str(fast.report)
    assert "every IR op runs as a generated kernel or a view" in report
    assert "CUDA graphs: off" in report  # the interpreter: nothing to capture


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "swin", "resnet", "regnet",
                                  "mobilenet-v2", "wav2vec2"])
def test_hf_zoo_cuda_int8_matches_reference_on_same_ir(name):
    model, inputs = zoo_hf.build(name, 1)
    positional = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
    fast, got = _compile(model, "cuda-int8", inputs, calibration=[positional])
    assert not _left(fast), dict(_left(fast))
    scale = float(_first(got).abs().max())
    errors = fast.check(**inputs) if isinstance(inputs, dict) else fast.check(*inputs)
    assert errors and max(errors.values()) <= INT8_RTOL * scale, errors
    kernels = [a.kernel for a in fast.report.latest.kernels if a.kernel]
    assert any(k.startswith("int8") for k in kernels)


@pytest.mark.parametrize("name", ["bert", "vit", "convnext", "regnet"])
def test_hf_zoo_cuda_fp16(name):
    _against_eager(name, "cuda-fp16", FP16_RTOL)


def test_grouped_convs_and_attention_are_kernels():
    """The cases the issue names: RegNet's grouped convs and the fused attention."""
    model, inputs = zoo_hf.build("regnet", 1)
    fast, _ = _compile(model, "cuda", inputs)
    grouped = [a for a in fast.report.latest.kernels if "groups" in (a.kernel or "")]
    assert len(grouped) >= 4
    model, inputs = zoo_hf.build("gpt2", 1)
    fast, _ = _compile(model, "cuda", inputs)
    attention = [a for a in fast.report.latest.kernels
                 if a.op == "scaled_dot_product_attention"]
    assert attention and all((a.kernel or "").startswith("fused attention") for a in attention)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_own_zoo_cuda_fp32_all_kernels(name):
    model, x = zoo.build(name, 2)
    with torch.no_grad():
        want = model(*x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fxforge.compile(model, "cuda", autotune=False)
        got = fast(*x)
    assert relative_error(got, want) <= FP32_RTOL
    assert not _left(fast)


def test_cuda_graphs_option_is_checked_and_reported():
    model, x = zoo.build("mlp", 2)
    with pytest.raises(fxforge.OptionError, match="cuda_graphs"):
        fxforge.compile(model, "cuda", cuda_graphs="yes")
    with pytest.raises(TypeError, match="unknown option"):
        fxforge.compile(model, "cpu", cuda_graphs=True)
    fast = fxforge.compile(model, "cuda", autotune=False, cuda_graphs=False)
    fast(*x)
    assert fast.report.latest.cuda_graphs == "not asked"
    assert "CUDA graphs: not asked" in str(fast.report)


def test_cuda_graphs_off_where_positions_are_checked_on_the_host():
    """Token ids are range-checked on the host before the embedding's copy kernel reads them (a
    synchronisation, which capture forbids); a CNN's graph has no such node."""
    from fxforge.kernels.triton.cuda_graph import why_not

    model, inputs = zoo_hf.build("bert", 1)
    fast, _ = _compile(model, "cuda", inputs)
    assert "embedding takes computed positions" in why_not(fast.graph)
    model, x = zoo.build("resnet18", 1)
    fast = fxforge.compile(model, "cuda", autotune=False)
    fast(*x)
    assert why_not(fast.graph) is None
