"""The passes of the cuda targets: layout-nhwc (IR text + storage order on the torch backend)
and quantize-int4 (weights group-wise int4; epilogues moved into a fused chain).

layout-nhwc only inserts storage-order nodes, so both graphs agree exactly (rtol 1e-6 /
atol 1e-7); quantize-int4 is checked against the float model whose weights are replaced by their
dequantized int4 values, so only float32 rounding differs (rtol 1e-4 / atol 1e-5).
"""

import numpy as np
import torch
import torch.nn as nn
from passes_util import canonical, dedent_ir, run_pass

from fxforge import compile, verify
from fxforge.execute import TorchProgram, run_reference
from fxforge.kernels.reference_quant import dequantize_int4
from fxforge.passes.quantize_int4 import quantize_int4
from fxforge.quant_math import quantize_int4_groupwise

CONV1 = "conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1]"
EXACT = {"rtol": 1e-6, "atol": 1e-7}


def test_layout_nhwc_converts_at_the_edges_only():
    after, stats = run_pass("layout-nhwc", f"""
    graph(%x: f32[1,2,4,4], %v: f32[3]) {{
      %w = const f32[2,2,1,1] [1.0, -2.0, 3.0, 0.5]
      %y = {CONV1} %x, %w : f32[1,2,4,4]
      %r = relu %y : f32[1,2,4,4]
      %s = sum[dims=[2, 3], keepdim=false] %r : f32[1,2]
      return %r, %s, %v
    }}""", **EXACT)
    assert canonical(after) == dedent_ir(f"""
    graph(%0: f32[1,2,4,4], %1: f32[3]) {{
      %2 = memory_format[layout="nhwc"] %0 : f32[1,2,4,4]
      %3 = const f32[2,2,1,1] [1.0, -2.0, 3.0, 0.5]
      %4 = {CONV1} %2, %3 : f32[1,2,4,4]
      %5 = relu %4 : f32[1,2,4,4]
      %6 = sum[dims=[2, 3], keepdim=false] %5 : f32[1,2]
      %7 = memory_format[layout="nchw"] %5 : f32[1,2,4,4]
      return %7, %6, %1
    }}""")
    assert stats == {"inputs_converted": 1, "outputs_converted": 1}


def test_layout_nhwc_leaves_graphs_without_convolutions_alone():
    text = """
    graph(%x: f32[1,2,4,4]) {
      %r = relu %x : f32[1,2,4,4]
      return %r
    }"""
    after, stats = run_pass("layout-nhwc", text, **EXACT)
    assert canonical(after) == canonical(run_pass("dce", text)[0])
    assert stats == {"inputs_converted": 0, "outputs_converted": 0}


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.max_pool2d(self.b(y) + y, 2)


def test_layout_nhwc_on_the_torch_backend_keeps_values_and_returns_nchw():
    model = _ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    fast = compile(model, "cpu", passes="fuse,layout-nhwc", example_inputs=(x,))
    ops = [n.op for n in fast.graph.nodes]
    assert ops.count("memory_format") == 2
    seen = {}
    program = TorchProgram(fast.graph, torch.device("cpu"))
    (y,) = program([x], observe=lambda name, t: seen.__setitem__(name, t))
    conv_outputs = [n.outputs[0].name for n in fast.graph.nodes if n.op == "fused_conv2d"]
    # in between the edges, activations are channels-last; the graph's result is NCHW again
    assert all(seen[name].is_contiguous(memory_format=torch.channels_last)
               for name in conv_outputs)
    assert y.is_contiguous()
    torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 96)
        self.b = nn.Linear(96, 10)
        self.odd = nn.Linear(10, 6)  # K = 10: no group size divides it, stays float

    def forward(self, x):
        h = torch.relu(self.a(x)) + x.sum(-1, keepdim=True)
        return self.odd(self.b(h))


def _dequantized_copy(model: _Mlp) -> _Mlp:
    """The model with a's and b's weights replaced by their int4 round trip."""
    twin = _Mlp()
    twin.load_state_dict(model.state_dict())
    for layer in (twin.a, twin.b):
        w = layer.weight.detach().numpy()
        group = next(g for g in (128, 64, 32, 16) if w.shape[1] % g == 0)
        packed, scales = quantize_int4_groupwise(w, group)
        layer.weight.data = torch.from_numpy(dequantize_int4(packed, scales, group))
    return twin.eval()


def test_quantize_int4_replaces_linear_layers_and_keeps_their_epilogues():
    model = _Mlp().eval()
    x = torch.randn(5, 64)
    fused = compile(model, "reference", passes="fuse", example_inputs=(x,)).graph
    after, stats = quantize_int4(fused)
    verify(after)
    ops = [n.op for n in after.nodes]
    assert ops.count("linear_int4") == 2 and "fused_elementwise" in ops
    assert stats["quantized"] == 2 and stats["layers"] == ["a", "b"]
    assert len(stats["kept_float"]) == 1 and stats["kept_float"][0].startswith("odd: K = 10")
    (got,) = run_reference(after, [x.numpy()])
    with torch.no_grad():
        expected = _dequantized_copy(model)(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_quantize_int4_keep_float_by_module_path():
    model = _Mlp().eval()
    x = torch.randn(2, 64)
    fused = compile(model, "reference", passes="fuse", example_inputs=(x,)).graph
    after, stats = quantize_int4(fused, keep_float=["b"])
    assert stats["layers"] == ["a"]
    assert any(k.startswith("b: kept in float") for k in stats["kept_float"])
