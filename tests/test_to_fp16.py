"""The `to-fp16` pass (passes/to_fp16.py): an f32 graph computed in f16 behind an f32 interface.

BEFORE/AFTER IR text of small graphs (casts at the edges, f16 constants, dtype attributes, fused
cast steps, an opaque op kept in f32, integer and quantized graphs untouched); then captured
models (an MLP, a conv net with batch norm folded, a tiny transformer block) checked for: the
verifier, every internal float value f16 with f32 inputs/outputs, provenance kept, and numerics.
Numerics: the numpy reference of the f16 graph against eager `model.half()` on half inputs,
within rtol 1e-2 / atol 1e-2 (fp16 has an 11-bit significand; these nets are 2-6 layers deep
with O(1) activations), and the torch CPU backend of the same graph against the reference.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from passes_util import canonical, dedent_ir, run_pass
from torch import nn

from fxforge import compile, dtypes, parse_ir, verify
from fxforge.capture import capture
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Graph
from fxforge.passes import registry as passes

FP16 = {"rtol": 1e-2, "atol": 1e-2}
CLEANUP = ("canonicalize", "fold-constants", "cse", "fold-batchnorm", "canonicalize")


def _assert_ir(graph: Graph, expected: str) -> None:
    assert canonical(graph) == dedent_ir(expected)


# --- IR text ------------------------------------------------------------------------------------


def test_two_node_graph_casts_at_the_edges_and_halves_the_constant():
    after, stats = run_pass("to-fp16", """
    graph(%x: f32[2,3]) {
      %w = const f32[3] [1.0, 2.5, -3.0]
      %y = mul %x, %w : f32[2,3]
      return %y
    }""", **FP16)
    _assert_ir(after, """
    graph(%0: f32[2,3]) {
      %1 = cast[dtype="f16"] %0 : f16[2,3]
      %2 = const f16[3] [1.0, 2.5, -3.0]
      %3 = mul %1, %2 : f16[2,3]
      %4 = cast[dtype="f32"] %3 : f32[2,3]
      return %4
    }""")
    assert stats == {"cast_inputs": 1, "cast_outputs": 1, "constants_f16": 1}
    assert parse_ir(str(after)) == after


def test_dtype_attributes_become_f16_and_integers_stay():
    after, stats = run_pass("to-fp16", """
    graph(%x: f32[3], %i: i64[3]) {
      %f = cast[dtype="f32"] %i : f32[3]
      %r = arange[start=0.0, end=3.0, step=1.0, dtype="f32"] : f32[3]
      %n = arange[start=0.0, end=3.0, step=1.0, dtype="i64"] : i64[3]
      %o = full[shape=[3], value=0.5, dtype="f32"] : f32[3]
      %m = gt %x, %o : bool[3]
      %s = add %x, %f : f32[3]
      %z = where %m, %s, %r : f32[3]
      %k = add %n, %i : i64[3]
      return %z, %k, %x
    }""", **FP16)
    _assert_ir(after, """
    graph(%0: f32[3], %1: i64[3]) {
      %2 = cast[dtype="f16"] %0 : f16[3]
      %3 = cast[dtype="f16"] %1 : f16[3]
      %4 = arange[start=0.0, end=3.0, step=1.0, dtype="f16"] : f16[3]
      %5 = arange[start=0.0, end=3.0, step=1.0, dtype="i64"] : i64[3]
      %6 = full[shape=[3], value=0.5, dtype="f16"] : f16[3]
      %7 = gt %2, %6 : bool[3]
      %8 = add %2, %3 : f16[3]
      %9 = where %7, %8, %4 : f16[3]
      %10 = add %5, %1 : i64[3]
      %11 = cast[dtype="f32"] %9 : f32[3]
      return %11, %10, %0
    }""")
    assert stats == {"cast_inputs": 1, "cast_outputs": 1, "constants_f16": 0}


def test_fused_cast_steps_name_f16():
    after, _ = run_pass("to-fp16", """
    graph(%x: f32[2,4], %i: i64[2,4]) {
      %w = const f32[3,4] [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
      %e = fused_elementwise[steps=[{"op": "cast", "args": [1], "attrs": {"dtype": "f32"}}, {"op": "add", "args": [0, 2]}, {"op": "relu", "args": [3]}]] %x, %i : f32[2,4]
      %y = fused_linear[has_bias=false, epilogue=[{"op": "cast", "attrs": {"dtype": "f32"}}, {"op": "tanh"}]] %e, %w : f32[2,3]
      return %y
    }""", **FP16)  # noqa: E501
    _assert_ir(after, """
    graph(%0: f32[2,4], %1: i64[2,4]) {
      %2 = cast[dtype="f16"] %0 : f16[2,4]
      %3 = const f16[3,4] [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
      %4 = fused_elementwise[steps=[{"op": "cast", "args": [1], "attrs": {"dtype": "f16"}}, {"op": "add", "args": [0, 2]}, {"op": "relu", "args": [3]}]] %2, %1 : f16[2,4]
      %5 = fused_linear[has_bias=false, epilogue=[{"op": "cast", "attrs": {"dtype": "f16"}}, {"op": "tanh"}]] %4, %3 : f16[2,3]
      %6 = cast[dtype="f32"] %5 : f32[2,3]
      return %6
    }""")  # noqa: E501


def test_opaque_op_keeps_f32_behind_casts():
    after, stats = run_pass("to-fp16", """
    graph(%x: f32[2,3]) {
      %t = torch_op[target="aten.flip.default", args=[{"$input": 0}, [0]], kwargs={}] %x : f32[2,3]
      %y = relu %t : f32[2,3]
      return %y
    }""", **FP16)
    _assert_ir(after, """
    graph(%0: f32[2,3]) {
      %1 = cast[dtype="f16"] %0 : f16[2,3]
      %2 = cast[dtype="f32"] %1 : f32[2,3]
      %3 = torch_op[target="aten.flip.default", args=[{"$input": 0}, [0]], kwargs={}] %2 : f32[2,3]
      %4 = cast[dtype="f16"] %3 : f16[2,3]
      %5 = relu %4 : f16[2,3]
      %6 = cast[dtype="f32"] %5 : f32[2,3]
      return %6
    }""")
    assert len(stats["kept_f32"]) == 1 and "torch_op" in stats["kept_f32"][0]


@pytest.mark.parametrize("text", [
    """
    graph(%i: i64[4], %b: bool[4]) {
      %n = arange[start=0.0, end=4.0, step=1.0, dtype="i64"] : i64[4]
      %s = add %i, %n : i64[4]
      %z = where %b, %s, %i : i64[4]
      return %z
    }""",
    """
    graph(%x: f32[1,4]) {
      %q = quantize[scale=0.05, zero_point=0] %x : i8[1,4]{scale=[0.05], zero_point=[0], axis=none}
      %d = dequantize[scale=0.05, zero_point=0] %q : f32[1,4]
      return %d
    }""",
])
def test_integer_and_quantized_graphs_are_left_alone(text):
    graph = parse_ir(text)
    after, stats = passes.PASSES["to-fp16"](graph)
    assert after == graph
    assert stats == {"cast_inputs": 0, "cast_outputs": 0, "constants_f16": 0}


# --- captured models ----------------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.SiLU(),
                                 nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                                   nn.ReLU6())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.block(y)
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Block(nn.Module):
    """Pre-norm attention and MLP, written out (layer norm, softmax, gelu)."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in (q, k, v))
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _pipeline(graph: Graph, names) -> Graph:
    for name in names:
        graph, _ = passes.PASSES[name](graph)
        verify(graph)
    return graph


MODELS = {
    "mlp": (Mlp, (4, 16)),
    "convnet-bn-folded": (lambda: _randomize_bn(ConvNet()), (2, 3, 8, 8)),
    "transformer-block": (Block, (2, 6, 32)),
}


@functools.cache
def _captured(name: str) -> tuple[nn.Module, torch.Tensor, Graph]:
    """Each model is exported once (torch.export is most of this file's time)."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    return model, x, _pipeline(capture(model, (x,), {}).graph, CLEANUP)


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_compute_like_eager_half(name, fuse):
    model, x, graph = _captured(name)
    graph = _pipeline(graph, ("fuse",) if fuse else ())
    if name == "convnet-bn-folded":
        assert not any(n.op == "batch_norm" for n in graph.nodes)
    half, stats = passes.PASSES["to-fp16"](graph)
    verify(half)
    assert stats["cast_inputs"] == 1 and stats["cast_outputs"] == 1
    assert stats["constants_f16"] == sum(
        n.op == "const" and n.output.type.dtype == "f32" for n in graph.nodes)
    assert "kept_f32" not in stats
    _check_types(half)
    _check_provenance(graph, half)

    got = run_reference(half, [x.numpy()])[0]
    with torch.no_grad():
        eager = copy.deepcopy(model).half()(x.half()).float().numpy()
        on_torch = TorchProgram(half, torch.device("cpu"))([x])[0].numpy()
    assert got.dtype == np.float32 and got.shape == eager.shape
    np.testing.assert_allclose(got, eager, **FP16)
    np.testing.assert_allclose(on_torch, got, **FP16)


def _check_types(graph: Graph) -> None:
    """f32 at the edges, f16 for every float value in between."""
    assert all(v.type.dtype == "f32" for v in graph.inputs + graph.outputs)
    edge = {v.name for v in graph.outputs}
    for node in graph.nodes:
        for v in node.outputs:
            if dtypes.is_float(v.type.dtype) and v.name not in edge:
                assert v.type.dtype == "f16", node.describe()


def _check_provenance(before: Graph, after: Graph) -> None:
    old = {v.name: n.provenance for n in before.nodes for v in n.outputs}
    for node in after.nodes:
        for v in node.outputs:
            if v.name in old:
                assert node.provenance == old[v.name], node.describe()


def test_compile_with_to_fp16_keeps_the_f32_signature():
    torch.manual_seed(0)
    model, x = Mlp().eval(), torch.randn(4, 16)
    fast = compile(model, "cpu", passes="canonicalize,fold-constants,fuse,to-fp16,dce")
    with torch.no_grad():
        y = fast(x)
        eager = copy.deepcopy(model).half()(x.half()).float()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, eager, **FP16)
    assert sum(n.op == "cast" for n in fast.graph.nodes) == 2
    assert all(v.type.dtype == "f16" for n in fast.graph.nodes if n.op != "cast"
               for v in n.outputs)
