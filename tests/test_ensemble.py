"""Ensembles (`fxforge.ensemble`), horizontal conv fusion in `fuse`, and `merge_weights`.

- Ensembles of three CNNs on one input compile to one graph whose first convs are one merged
  conv, for every combine, and match the eager ensemble: fp32 targets rtol 1e-4 / atol 1e-5.
- int8: cpu-int8 against reference-int8 of the same quantized IR within 1% of the output range
  (the kernels agree in int32 and by design differ by at most 1 LSB of an int8 activation, about
  0.4% of its range); against eager within 5% of the output range (8-bit weights and activations
  through three layers measure about 0.7% here; a broken layer errs by the order of the range).
  A vote is compared only on rows where every member's top-2 logit gap exceeds twice that 5%,
  where int8 cannot flip a member's argmax.
- Expected values come from plain torch (hand-written means, one-hot votes, state-dict
  averages), never from the code under test.
- Conv sibling merging as IR text (BEFORE / AFTER), including what must not merge.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graph_builder import GraphBuilder
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuse import CONV, _fuses_to_the_same_values, check, unchanged
from torch import nn

from fxforge import CaptureError, OptionError, compile, parse_ir, zoo
from fxforge.ensemble import EnsembleError, ensemble, merge_weights
from fxforge.execute import run_reference
from fxforge.ir import Graph, TensorType, Value
from fxforge.kernels.triton import jit
from fxforge.passes.fuse import fuse
from fxforge.passes.quantize import quantize

RTOL, ATOL = 1e-4, 1e-5
COMBINES = ("mean", "vote", "stack")
CONVS = ("conv2d", "fused_conv2d", "qconv2d")


def small_cnn(seed: int, width: int = 8) -> nn.Module:
    """conv-BN-ReLU x2, pooling, a linear head; BNs with non-trivial statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(zoo.conv_bn(3, width, 3), zoo.conv_bn(width, 16, 3, stride=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return zoo.randomize_norms(model)


@pytest.fixture(scope="module")
def cnns() -> list[nn.Module]:
    return [small_cnn(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def digits() -> tuple[list[nn.Module], list[torch.Tensor], torch.Tensor]:
    """Three DigitsCNNs: the zoo's trained one with 5% noise on every weight (three seeds), as
    three fine-tuned runs would differ; calibration batches and held-out images."""
    pytest.importorskip("sklearn")
    base, _ = zoo.build("digits")
    members = []
    for seed in (1, 2, 3):
        model = copy.deepcopy(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05 * p.std())
        members.append(model.eval())
    data = zoo.digits_data()
    calibration = [data.x_train[i:i + 32] for i in range(0, 128, 32)]
    return members, calibration, data.x_test[:48]


def _eager(model: nn.Module, *args):
    with torch.no_grad():
        return model(*args)


def _hand_combine(outs: list[torch.Tensor], combine: str) -> torch.Tensor:
    """What each combine means, written independently with plain torch."""
    if combine == "mean":
        return (outs[0] + outs[1] + outs[2]) / 3
    if combine == "vote":
        counts = sum(F.one_hot(o.argmax(-1), o.shape[-1]) for o in outs)
        return counts.to(torch.float32) / 3
    return torch.stack(outs, dim=1)


def _first_convs(graph: Graph) -> list:
    """Conv nodes that read the graph's first input (directly, or through its quantize /
    memory-format node)."""
    x = graph.inputs[0].name
    sources = {x} | {n.outputs[0].name for n in graph.nodes
                     if n.op in ("quantize", "dynamic_quantize", "memory_format")
                     and n.inputs[0].name == x}
    return [n for n in graph.nodes if n.op in CONVS and n.inputs[0].name in sources]


def _fuse_stats(compiled) -> dict:
    return next(p.stats for p in compiled.report.latest.passes if p.name == "fuse")


def _assert_one_merged_first_conv(compiled, channels: int) -> None:
    first = _first_convs(compiled.graph)
    assert len(first) == 1
    assert first[0].outputs[0].type.shape[1] == channels
    assert _fuse_stats(compiled)["merged-convs"] == 1
    text = str(compiled.report)
    assert "merged-convs=1" in text
    assert f"3 conv2d + relu merged into one ({channels} output channels)" in text
    assert compiled.report.latest.fallbacks == []
    assert compiled.report.captures == 1


# ---------------------------------------------------------------------------------------------
# ensembles: eager semantics


def test_eager_combines_match_their_definitions(cnns):
    x = torch.randn(5, 3, 8, 8)
    outs = [_eager(m, x) for m in cnns]
    for combine in COMBINES:
        got = _eager(ensemble(cnns, combine), x)
        torch.testing.assert_close(got, _hand_combine(outs, combine), rtol=0, atol=1e-7)
    stacked = _eager(ensemble(cnns, "stack"), x)
    assert stacked.shape == (5, 3, 10)  # the model axis right after the batch
    for i, out in enumerate(outs):
        assert torch.equal(stacked[:, i], out)


def _fixed(*logits: float) -> nn.Module:
    """A classifier whose logits do not depend on its input."""
    lin = nn.Linear(4, len(logits))
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor(logits))
    return lin.eval()


@pytest.mark.parametrize("target", [None, "reference", "cpu"])
def test_vote_fractions_and_ties_go_to_the_lowest_class(target):
    # member 3 ties between classes 0 and 2 within itself and votes 0 (its first maximum)
    members = [_fixed(0.0, 0.0, 1.0), _fixed(1.0, 0.0, 0.5), _fixed(2.0, -1.0, 2.0),
               _fixed(0.0, 3.0, 1.0)]
    ens = ensemble(members, "vote")
    x = torch.randn(2, 4)
    got = _eager(ens, x) if target is None else compile(ens, target)(x)
    expected = torch.tensor([[0.5, 0.25, 0.25]] * 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    two = ensemble(members[:2], "vote")  # one vote each for classes 2 and 0: a tie
    out = _eager(two, x) if target is None else compile(two, target)(x)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0, 0.5]] * 2), rtol=0, atol=0)
    assert out.argmax(-1).tolist() == [0, 0]


def test_members_are_copies_and_keep_their_mode(cnns):
    a, b = copy.deepcopy(cnns[0]), copy.deepcopy(cnns[1]).train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    ens = ensemble([a, b], "mean")
    assert ens.models[0] is not a and ens.models[1] is not b
    assert not ens.models[0].training and ens.models[1].training
    assert all(not m.training for m in ens.models[0].modules())
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(1.0)
    ens(torch.randn(2, 3, 8, 8))  # member 1 in train mode updates its copy's BN statistics
    for m, saved in zip((a, b), before):
        state = m.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert not a.training and b.training


def test_nested_outputs_combine_per_tensor():
    class Two(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return {"a": self.a(x), "b": (self.b(x),)}

    members = [Two(s) for s in range(3)]
    x = torch.randn(2, 4)
    outs = [_eager(m, x) for m in members]
    got = _eager(ensemble(members, "mean"), x)
    torch.testing.assert_close(got["a"], _hand_combine([o["a"] for o in outs], "mean"))
    torch.testing.assert_close(got["b"][0], _hand_combine([o["b"][0] for o in outs], "mean"))
    compiled = compile(ensemble(members, "stack"), "reference")(x)
    torch.testing.assert_close(compiled["b"][0], torch.stack([o["b"][0] for o in outs], 1),
                               rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# ensembles: validation


def test_bad_arguments_raise_option_errors(cnns):
    with pytest.raises(OptionError, match="at least 2 models, got 1"):
        ensemble(cnns[:1])
    with pytest.raises(OptionError, match="list of nn.Module"):
        ensemble(cnns[0])
    with pytest.raises(OptionError, match=r"models\[1\] is a str"):
        ensemble([cnns[0], "resnet"])
    with pytest.raises(OptionError, match="combine='median' is not one of"):
        ensemble(cnns, "median")


def test_outputs_of_different_shapes_name_the_model_and_both_shapes():
    members = [nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 5)]
    ens = ensemble(members)
    x = torch.randn(2, 4)
    with pytest.raises(EnsembleError, match=r"model 2 returns shape \(2, 5\).*model 0 returns "
                                            r"\(2, 3\)"):
        ens(x)
    with pytest.raises(CaptureError, match=r"model 2 returns shape \(2, 5\)") as info:
        compile(ens, "cpu")(x)
    causes, exc = [], info.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, EnsembleError) for e in causes)


def test_outputs_of_different_structure_are_rejected():
    class Pair(nn.Linear):
        def forward(self, x):
            return super().forward(x), x

    with pytest.raises(EnsembleError, match="model 1 returns"):
        ensemble([nn.Linear(4, 3), Pair(4, 3)])(torch.randn(2, 4))


def test_vote_needs_a_class_dim():
    class Total(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(EnsembleError, match="model 0 returns a scalar; a vote needs a class dim"):
        ensemble([Total(), Total()], "vote")(torch.randn(2, 4))
    stacked = _eager(ensemble([Total(), Total()], "stack"), torch.ones(2, 4))
    assert stacked.tolist() == [8.0, 8.0]  # scalars stack along dim 0


# ---------------------------------------------------------------------------------------------
# ensembles: compiled


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_ensemble_of_digits_cnns_is_one_graph_with_a_merged_stem(digits, target, combine):
    members, _, x = digits
    ens = ensemble(members, combine)
    compiled = compile(ens, target)
    got = compiled(x)
    expected = _hand_combine([_eager(m, x) for m in members], combine)
    torch.testing.assert_close(_eager(ens, x), expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    _assert_one_merged_first_conv(compiled, 3 * 16)


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_ensemble_of_conv_bn_cnns_matches_eager(cnns, target, combine):
    x = torch.randn(4, 3, 8, 8)
    compiled = compile(ensemble(cnns, combine), target)
    expected = _hand_combine([_eager(m, x) for m in cnns], combine)
    torch.testing.assert_close(compiled(x), expected, rtol=RTOL, atol=ATOL)
    _assert_one_merged_first_conv(compiled, 3 * 8)
    assert "split" in [n.op for n in compiled.graph.nodes]


@pytest.mark.parametrize("combine", ["mean", "stack"])
def test_int8_ensemble_is_close(cnns, combine):
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(4)]
    x = torch.cat(calibration)  # static ranges: inside what calibration saw
    ens = ensemble(cnns, combine)
    expected = _eager(ens, x)
    scale = float(expected.abs().max())
    fast = compile(ens, "cpu-int8", calibration=calibration)
    ref = compile(ens, "reference-int8", calibration=calibration)
    got = fast(x)
    torch.testing.assert_close(got, ref(x), rtol=0, atol=0.01 * scale)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05 * scale)
    _assert_one_merged_first_conv(fast, 3 * 8)
    merged = _first_convs(fast.graph)[0]
    assert merged.op == "qconv2d"  # 27 products per output: worth int8
    assert fast.graph.constant(merged.inputs[2]).shape == (24,)  # a scale per output channel
    splits = [n for n in fast.graph.nodes if n.op == "split"]
    assert [v.type.dtype for v in splits[0].outputs] == ["i8"] * 3  # int8 through the split,
    assert not any("dequantize" in line for line in str(fast.report).splitlines()  # no round
                   if "%" in line and "split" in line)  # trip for it
    dynamic = compile(ens, "cpu-int8")  # no calibration: dynamic activation scales
    torch.testing.assert_close(dynamic(x), expected, rtol=0, atol=0.05 * scale)
    _assert_one_merged_first_conv(dynamic, 3 * 8)


@pytest.mark.parametrize("calibrated", [True, False])
def test_int8_vote_agrees_where_int8_cannot_flip_a_member(digits, calibrated):
    members, calibration, x = digits
    logits = torch.stack([_eager(m, x) for m in members], 1)  # [batch, member, class]
    top2 = logits.topk(2, dim=-1).values
    gaps = (top2[..., 0] - top2[..., 1]).amin(1)
    decisive = gaps > 2 * 0.05 * float(logits.abs().max())
    assert decisive.float().mean() >= 0.5  # trained members on held-out images
    compiled = compile(ensemble(members, "vote"), "cpu-int8",
                       calibration=calibration if calibrated else None)
    got = compiled(x)
    expected = _hand_combine(list(logits.unbind(1)), "vote")
    torch.testing.assert_close(got[decisive], expected[decisive], rtol=0, atol=1e-6)
    assert torch.all((got * 3 - (got * 3).round()).abs() < 1e-5)  # thirds
    torch.testing.assert_close(got.sum(-1), torch.ones(len(x)))
    _assert_one_merged_first_conv(compiled, 3 * 16)


def test_ensemble_of_mlps_merges_first_linears_with_their_relu():
    def mlp(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()

    members = [mlp(s) for s in range(3)]
    x = torch.randn(3, 8)
    compiled = compile(ensemble(members, "mean"), "cpu")
    torch.testing.assert_close(compiled(x), _hand_combine([_eager(m, x) for m in members],
                                                          "mean"), rtol=RTOL, atol=ATOL)
    assert _fuse_stats(compiled)["merged-linears"] == 1
    readers = [n for n in compiled.graph.nodes if compiled.graph.inputs[0] in n.inputs]
    assert [n.op for n in readers] == ["fused_linear"]
    assert readers[0].attrs["epilogue"] == ({"op": "relu"},)


@pytest.mark.skipif(not (jit.interpreting() or torch.cuda.is_available()),
                    reason="needs CUDA or TRITON_INTERPRET=1")
def test_merged_conv_and_split_on_triton(cnns):
    x = torch.randn(2, 3, 8, 8)
    compiled = compile(ensemble(cnns, "mean"), "cuda")
    torch.testing.assert_close(compiled(x), _hand_combine([_eager(m, x) for m in cnns], "mean"),
                               rtol=RTOL, atol=ATOL)
    _assert_one_merged_first_conv(compiled, 3 * 8)
    kernels = {k.op: k.kernel for k in compiled.report.latest.kernels
               if k.node.startswith(f"%{_first_convs(compiled.graph)[0].outputs[0].name} ")}
    assert "implicit-GEMM conv" in kernels["fused_conv2d"]


# ---------------------------------------------------------------------------------------------
# conv sibling merging as IR text (check: fuse(BEFORE) == AFTER, verified, same numbers on the
# reference and torch as BEFORE; unchanged: fuse leaves the graph as it is)

CONV1 = CONV.replace("padding=[1, 1]", "padding=[0, 0]")  # 1x1 convs


def test_sibling_convs_with_the_same_relu_merge_with_it():
    result = check(f"""
graph(%x: f32[1,2,3,3]) {{
  %w0 = const f32[1,2,1,1] [1.0, 2.0]  # m.0.stem.weight
  %b0 = const f32[1] [0.5]  # m.0.stem.bias
  %w1 = const f32[2,2,1,1] [3.0, -4.0, 5.0, 6.0]  # m.1.stem.weight
  %b1 = const f32[2] [-0.5, 1.5]  # m.1.stem.bias
  %y0 = {CONV1} %x, %w0, %b0 : f32[1,1,3,3]  # m.0.stem (aten.conv2d.default)
  %r0 = relu %y0 : f32[1,1,3,3]  # m.0.act (aten.relu.default)
  %y1 = {CONV1} %x, %w1, %b1 : f32[1,2,3,3]  # m.1.stem (aten.conv2d.default)
  %r1 = relu %y1 : f32[1,2,3,3]  # m.1.act (aten.relu.default)
  %s = sigmoid %r1 : f32[1,2,3,3]
  return %r0, %r1, %s
}}""", """
graph(%x: f32[1,2,3,3]) {
  %c0 = const f32[3,2,1,1] [1.0, 2.0, 3.0, -4.0, 5.0, 6.0]  # m (aten.conv2d.default)
  %c1 = const f32[3] [0.5, -0.5, 1.5]  # m (aten.conv2d.default)
  %merged1 = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=true, epilogue=[{"op": "relu"}]] %x, %c0, %c1 : f32[1,3,3,3]  # m (aten.conv2d.default)
  %r0, %r1 = split[sizes=[1, 2], dim=1] %merged1 : f32[1,1,3,3], f32[1,2,3,3]  # m (aten.conv2d.default)
  %s = sigmoid %r1 : f32[1,2,3,3]
  return %r0, %r1, %s
}""", {"merged-convs": 1, "fused_conv2d": 1, "epilogue-steps": 1, "merged": [  # noqa: E501
        "2 conv2d + relu merged into one (3 output channels): m.0.stem, m.1.stem"]})
    assert fuse(result) == (result, {})  # a fixed point


def test_a_longer_chain_is_a_different_chain():
    """relu vs relu + sigmoid: merging on the common relu would leave the sigmoid as a kernel of
    its own after the split; each conv keeps its whole chain as an epilogue instead."""
    check(f"""
graph(%x: f32[1,2,3,3]) {{
  %w0 = const f32[1,2,1,1] [1.0, 2.0]
  %w1 = const f32[2,2,1,1] [3.0, -4.0, 5.0, 6.0]
  %y0 = {CONV1} %x, %w0 : f32[1,1,3,3]
  %r0 = relu %y0 : f32[1,1,3,3]
  %y1 = {CONV1} %x, %w1 : f32[1,2,3,3]
  %r1 = relu %y1 : f32[1,2,3,3]
  %s = sigmoid %r1 : f32[1,2,3,3]
  return %r0, %s
}}""", """
graph(%x: f32[1,2,3,3]) {
  %w0 = const f32[1,2,1,1] [1.0, 2.0]
  %w1 = const f32[2,2,1,1] [3.0, -4.0, 5.0, 6.0]
  %r0 = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "relu"}]] %x, %w0 : f32[1,1,3,3]
  %s = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "relu"}, {"op": "sigmoid"}]] %x, %w1 : f32[1,2,3,3]
  return %r0, %s
}""", {"fused_conv2d": 2, "epilogue-steps": 3})  # noqa: E501


def test_three_convs_without_epilogue_and_a_shared_two_step_chain():
    check(f"""
graph(%x: f32[1,1,2,2]) {{
  %w0 = const f32[1,1,1,1] [2.0]
  %w1 = const f32[1,1,1,1] [-3.0]
  %w2 = const f32[2,1,1,1] [0.5, 4.0]
  %w3 = const f32[1,1,1,1] [1.5]
  %w4 = const f32[1,1,1,1] [-1.5]
  %a = {CONV1} %x, %w0 : f32[1,1,2,2]
  %b = {CONV1} %x, %w1 : f32[1,1,2,2]
  %c = {CONV1} %x, %w2 : f32[1,2,2,2]
  %d = {CONV1} %x, %w3 : f32[1,1,2,2]
  %dr = relu %d : f32[1,1,2,2]
  %dc = clamp[min=0.0, max=1.0] %dr : f32[1,1,2,2]
  %e = {CONV1} %x, %w4 : f32[1,1,2,2]
  %er = relu %e : f32[1,1,2,2]
  %ec = clamp[min=0.0, max=1.0] %er : f32[1,1,2,2]
  %t = exp %b : f32[1,1,2,2]
  return %a, %t, %c, %b, %dc, %ec
}}""", """
graph(%x: f32[1,1,2,2]) {
  %c0 = const f32[4,1,1,1] [2.0, -3.0, 0.5, 4.0]
  %merged0 = conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1] %x, %c0 : f32[1,4,2,2]
  %a, %b, %c = split[sizes=[1, 1, 2], dim=1] %merged0 : f32[1,1,2,2], f32[1,1,2,2], f32[1,2,2,2]
  %c1 = const f32[2,1,1,1] [1.5, -1.5]
  %merged3 = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "relu"}, {"op": "clamp", "attrs": {"min": 0.0, "max": 1.0}}]] %x, %c1 : f32[1,2,2,2]
  %dc, %ec = split[sizes=[1, 1], dim=1] %merged3 : f32[1,1,2,2], f32[1,1,2,2]
  %t = exp %b : f32[1,1,2,2]
  return %a, %t, %c, %b, %dc, %ec
}""")  # noqa: E501


def test_different_epilogues_and_a_residual_keep_their_vertical_fusion():
    check(f"""
graph(%x: f32[1,1,2,2], %res: f32[1,1,2,2]) {{
  %w0 = const f32[1,1,1,1] [2.0]
  %w1 = const f32[1,1,1,1] [-3.0]
  %w2 = const f32[1,1,1,1] [0.5]
  %w3 = const f32[1,1,1,1] [4.0]
  %a = {CONV1} %x, %w0 : f32[1,1,2,2]
  %ar = relu %a : f32[1,1,2,2]
  %b = {CONV1} %x, %w1 : f32[1,1,2,2]
  %bs = sigmoid %b : f32[1,1,2,2]
  %c = {CONV1} %x, %w2 : f32[1,1,2,2]
  %cr = relu %c : f32[1,1,2,2]
  %cs = add %cr, %res : f32[1,1,2,2]
  %d = {CONV1} %x, %w3 : f32[1,1,2,2]
  %dr = relu %d : f32[1,1,2,2]
  return %ar, %bs, %cs, %dr
}}""", """
graph(%x: f32[1,1,2,2], %res: f32[1,1,2,2]) {
  %w1 = const f32[1,1,1,1] [-3.0]
  %w2 = const f32[1,1,1,1] [0.5]
  %c0 = const f32[2,1,1,1] [2.0, 4.0]
  %merged1 = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "relu"}]] %x, %c0 : f32[1,2,2,2]
  %ar, %dr = split[sizes=[1, 1], dim=1] %merged1 : f32[1,1,2,2], f32[1,1,2,2]
  %bs = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "sigmoid"}]] %x, %w1 : f32[1,1,2,2]
  %cs = fused_conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, has_bias=false, epilogue=[{"op": "relu"}, {"op": "add", "operand": 2, "side": "right"}]] %x, %w2, %res : f32[1,1,2,2]
  return %ar, %bs, %cs, %dr
}""")  # noqa: E501


_W3 = "[" + ", ".join(["1.0"] * 9) + "]"
_SIBLING = "%w1 = const f32[1,1,1,1] [2.0]\n  %b = {conv1} %x, %w1 : f32[1,1,4,4]"
NOT_MERGED = {
    "different-stride": (
        "%w0 = const f32[1,1,1,1] [1.0]\n  "
        "%a = conv2d[stride=[2, 2], padding=[0, 0], dilation=[1, 1], groups=1] %x, %w0 "
        ": f32[1,1,2,2]", _SIBLING, ""),
    "different-padding": (
        "%w0 = const f32[1,1,1,1] [1.0]\n  "
        "%a = conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1] %x, %w0 "
        ": f32[1,1,6,6]", _SIBLING, ""),
    "different-kernel-size": (
        f"%w0 = const f32[1,1,3,3] {_W3}\n  "
        "%a = conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1] %x, %w0 "
        ": f32[1,1,4,4]", _SIBLING, ""),
    "different-dilation": (
        f"%w0 = const f32[1,1,3,3] {_W3}\n  "
        "%a = conv2d[stride=[1, 1], padding=[2, 2], dilation=[2, 2], groups=1] %x, %w0 "
        ": f32[1,1,4,4]",
        f"%w1 = const f32[1,1,3,3] {_W3}\n  "
        "%b = conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1] %x, %w1 "
        ": f32[1,1,4,4]", ""),
    "weight-not-constant": (
        "%a = {conv1} %x, %wx : f32[1,1,4,4]", _SIBLING, ", %wx: f32[1,1,1,1]"),
    "one-bias-one-not": (
        "%w0 = const f32[1,1,1,1] [1.0]\n  %b0 = const f32[1] [0.5]\n  "
        "%a = {conv1} %x, %w0, %b0 : f32[1,1,4,4]", _SIBLING, ""),
}


@pytest.mark.parametrize("case", list(NOT_MERGED))
def test_convs_that_must_not_merge(case: str):
    first, second, extra_input = NOT_MERGED[case]
    body = f"{first}\n  {second}".replace("{conv1}", CONV1)
    unchanged(f"""
graph(%x: f32[1,1,4,4]{extra_input}) {{
  {body}
  return %a, %b
}}""")


def test_grouped_convs_do_not_merge():
    unchanged("""
graph(%x: f32[1,2,3,3]) {
  %w0 = const f32[2,1,1,1] [1.0, 2.0]
  %w1 = const f32[2,1,1,1] [3.0, 4.0]
  %a = conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=2] %x, %w0 : f32[1,2,3,3]
  %b = conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=2] %x, %w1 : f32[1,2,3,3]
  return %a, %b
}""")


def test_convs_reading_different_inputs_do_not_merge():
    unchanged(f"""
graph(%x: f32[1,1,2,2], %y: f32[1,1,2,2]) {{
  %w0 = const f32[1,1,1,1] [1.0]
  %w1 = const f32[1,1,1,1] [2.0]
  %a = {CONV1} %x, %w0 : f32[1,1,2,2]
  %b = {CONV1} %y, %w1 : f32[1,1,2,2]
  return %a, %b
}}""")


CHAINS = {"none": (), "relu": (("relu", {}),), "relu-sigmoid": (("relu", {}), ("sigmoid", {})),
          "clamp": (("clamp", {"min": 0.0, "max": 1.0}),)}


@st.composite
def sibling_convs(draw) -> tuple[Graph, int]:
    """2-5 convs reading one input, mostly with the same attributes, each with a unary chain
    from CHAINS, some ending in a per-channel scale (a binary epilogue op), their results read
    by the graph output and sometimes by an exp as well. Also returns the number of merges the
    rules in passes/merge_siblings.py call for: one per group of at least two convs with the
    same stride, bias-ness and chain, leaving out those that end in the scale."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cin, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
    k, pad = draw(st.sampled_from([(1, 0), (3, 1), (3, 0)]))
    b = GraphBuilder()
    x = Value("x", TensorType((2, cin, h, w), "f32"))
    outputs: list[Value] = []
    groups: dict[tuple, int] = {}
    for _ in range(draw(st.integers(2, 5))):
        cout = draw(st.integers(1, 3))
        stride = draw(st.sampled_from([1, 1, 1, 2]))
        inputs = [x, b.const(rng.standard_normal((cout, cin, k, k)).astype(np.float32))]
        bias = draw(st.booleans())
        if bias:
            inputs.append(b.const(rng.standard_normal(cout).astype(np.float32)))
        y = b("conv2d", inputs, stride=(stride, stride), padding=(pad, pad), dilation=(1, 1),
              groups=1)
        chain = draw(st.sampled_from(sorted(CHAINS)))
        for op, attrs in CHAINS[chain]:
            y = b(op, [y], **attrs)
        ending = draw(st.sampled_from(["output", "output-and-exp", "scale"]))
        if ending == "scale":
            y = b("mul", [y, b.const(rng.uniform(0.5, 2, (cout, 1, 1)).astype(np.float32))])
        else:
            groups[(stride, bias, chain)] = groups.get((stride, bias, chain), 0) + 1
        if ending == "output-and-exp":
            outputs.append(b("exp", [y]))
        outputs.append(y)
    merges = sum(n >= 2 for n in groups.values())
    return Graph((x,), tuple(b.nodes), tuple(outputs)), merges


@settings(max_examples=60, deadline=None, database=None)
@given(sibling_convs())
def test_random_sibling_convs_merge_as_the_rules_say_and_compute_the_same(case):
    graph, merges = case
    fused, stats = fuse(graph)
    assert stats.get("merged-convs", 0) == merges
    assert len(stats.get("merged", [])) == merges
    assert sum(n.op == "split" for n in fused.nodes) == merges
    _fuses_to_the_same_values(graph)  # verified, round trip, fixed point, reference and torch


def test_quantizing_a_merged_conv_is_quantizing_each_sibling():
    """Per-output-channel int8 weights make merging and quantizing commute: the merged qconv's
    weights and scales are the siblings' (computed here by hand: scale = max|w_c| / 127), and
    its outputs are those of the siblings quantized unmerged."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1 = (rng.standard_normal((2, 3, 3, 3)) * 10).astype(np.float32)
    b0, b1 = rng.standard_normal(4).astype(np.float32), rng.standard_normal(2).astype(np.float32)

    def const(name, a):
        return f"%{name} = const f32[{','.join(map(str, a.shape))}] " \
               f"[{', '.join(repr(float(v)) for v in a.ravel())}]"

    graph = parse_ir(f"""
graph(%x: f32[2,3,5,5]) {{
  {const("w0", w0)}
  {const("b0", b0)}
  {const("w1", w1)}
  {const("b1", b1)}
  %y0 = {CONV} %x, %w0, %b0 : f32[2,4,5,5]
  %r0 = relu %y0 : f32[2,4,5,5]
  %y1 = {CONV} %x, %w1, %b1 : f32[2,2,5,5]
  %r1 = relu %y1 : f32[2,2,5,5]
  return %r0, %r1
}}""")
    merged, _ = fuse(graph)
    quantized, stats = quantize(merged)
    assert stats["quantized"] == 1
    (q,) = [n for n in quantized.nodes if n.op == "qconv2d"]
    w = np.concatenate([w0, w1])
    scale = np.abs(w).reshape(6, -1).max(1) / 127
    np.testing.assert_allclose(quantized.constant(q.inputs[2]), scale, rtol=1e-6)
    expected_q = np.clip(np.rint(w / scale[:, None, None, None]), -127, 127)
    assert np.array_equal(quantized.constant(q.inputs[1]), expected_q.astype(np.int8))
    unmerged, _ = quantize(graph)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    for a, b in zip(run_reference(quantized, [x]), run_reference(unmerged, [x]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# merge_weights


def _fine_tuned(base: nn.Module, seed: int, steps: int) -> nn.Module:
    """A copy of `base` after `steps` SGD steps on random data (train mode: BN statistics and
    num_batches_tracked move too), back in eval mode."""
    model = copy.deepcopy(base).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tuned() -> tuple[nn.Module, nn.Module]:
    base = small_cnn(7)
    return _fine_tuned(base, 1, 2), _fine_tuned(base, 2, 3)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("weights", [None, [3.0, 1.0]])
def test_merge_weights_is_the_hand_average(tuned, weights):
    m1, m2 = tuned
    s1, s2 = _snapshot(m1), _snapshot(m2)
    assert s1["0.1.num_batches_tracked"] != s2["0.1.num_batches_tracked"]
    soup = merge_weights([m1, m2], weights)
    hand = {}
    for k in s1:
        if not s1[k].is_floating_point():
            hand[k] = s1[k]  # integer buffers: the first model's
        elif weights is None:
            hand[k] = (s1[k] + s2[k]) / 2
        else:
            hand[k] = 0.75 * s1[k] + 0.25 * s2[k]
    got = soup.state_dict()
    assert got.keys() == hand.keys()
    for k in hand:
        assert got[k].dtype == hand[k].dtype
        torch.testing.assert_close(got[k], hand[k], rtol=1e-6, atol=1e-7)
    assert not torch.equal(got["0.0.weight"], s1["0.0.weight"])
    # the inputs are untouched and the soup shares no tensor with them
    for m, saved in ((m1, s1), (m2, s2)):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in saved.items())
        assert not m.training
    assert soup is not m1 and not soup.training
    ptrs = {p.data_ptr() for m in (m1, m2) for p in m.state_dict().values()}
    assert not ptrs & {p.data_ptr() for p in got.values()}
    # and it runs like a model holding the hand average
    reference = copy.deepcopy(m1)
    reference.load_state_dict(hand)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(_eager(soup, x), _eager(reference, x), rtol=1e-5, atol=1e-6)


def test_merge_weights_of_three_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    models = [Tied(s) for s in range(3)]
    soup = merge_weights(models, weights=[1, 1, 2])
    hand = (models[0].a.weight + models[1].a.weight + 2 * models[2].a.weight) / 4
    torch.testing.assert_close(soup.a.weight.detach(), hand.detach(), rtol=1e-6, atol=1e-7)
    assert soup.b.weight is soup.a.weight


def _variant(**changes) -> nn.Module:
    """small_cnn with one layer (by index) replaced."""
    model = small_cnn(0)
    for index, layer in changes.items():
        model[int(index.lstrip("_"))] = layer
    return model


MISMATCHES = {
    # later layers differ too (the widths), but the first difference is named
    "shape": (lambda: small_cnn(0, width=12),
              "model 1 differs from model 0: module '0.0': parameter 'weight' has shape "
              "(12, 3, 3, 3), in model 0 (8, 3, 3, 3)"),
    "type": (lambda: _variant(_2=nn.AdaptiveMaxPool2d(1)),
             "module '2' has type AdaptiveMaxPool2d, in model 0 AdaptiveAvgPool2d"),
    "missing-bias": (lambda: _variant(_4=nn.Linear(16, 10, bias=False)),
                     "module '4' lacks parameter 'bias'"),
    "dtype": (lambda: small_cnn(0).double(),
              "module '0.0': parameter 'weight' has dtype torch.float64, in model 0 "
              "torch.float32"),
    "extra-module": (lambda: nn.Sequential(*small_cnn(0), nn.ReLU()),
                     "module '5' (ReLU) is not in model 0"),
    "buffer": (lambda: _variant(_0=nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False),
                                                 nn.BatchNorm2d(8, track_running_stats=False),
                                                 nn.ReLU())),
               "module '0.1' lacks buffer 'running_mean', buffer 'running_var', buffer "
               "'num_batches_tracked'"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_merge_weights_names_the_first_mismatch(case: str):
    build, message = MISMATCHES[case]
    models = [small_cnn(0), small_cnn(1), build()]
    message = message.replace("model 1 differs", "model 2 differs")
    with pytest.raises(EnsembleError) as info:
        merge_weights(models)
    assert message in str(info.value)
    assert "model 2 differs from model 0" in str(info.value)


def test_merge_weights_untied_against_tied_is_a_mismatch():
    a = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    b = copy.deepcopy(a)
    a[1].weight = a[0].weight
    with pytest.raises(EnsembleError, match="module '1': parameter 'weight' is not tied, in "
                                            "model 0 tied to 'weight' of module '0'"):
        merge_weights([a, b])


@pytest.mark.parametrize("weights, message", [
    ([1.0], "1 weights for 2 models"),
    ([1.0, -0.5], r"weights\[1\] = -0.5 is not a finite number >= 0"),
    ([float("nan"), 1.0], r"weights\[0\] = nan"),
    ([0.0, 0.0], "sum to 0"),
    ("ab", "must be a list of 2 numbers"),
])
def test_merge_weights_bad_weights(cnns, weights, message):
    with pytest.raises(OptionError, match=message):
        merge_weights(cnns[:2], weights)


def test_merge_weights_needs_two_modules(cnns):
    with pytest.raises(OptionError, match="at least 2 models"):
        merge_weights(cnns[:1])
    with pytest.raises(OptionError, match=r"models\[1\] is a OrderedDict, not an nn.Module"):
        merge_weights([cnns[0], cnns[1].state_dict()])
