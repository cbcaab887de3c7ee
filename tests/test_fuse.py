"""The `fuse` pass and the fused ops it makes.

BEFORE/AFTER IR text for each fusion and for what must stay unfused; the fused ops' type
inference rejecting bad epilogues and steps; print/parse round trips and the verifier; zoo models
through the pass on the reference and cpu targets against eager PyTorch; a property test on
random graphs. Numerics: float32 rtol 1e-4 / atol 1e-5 against the unfused graph's reference;
epilogues and elementwise chains are checked bit-exact on the reference, since a fused op rounds
to the dtype each intermediate had (`fxforge.ops.stage_types`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from random_graphs import random_graphs, random_inputs

from fxforge import compile, ops, parse_ir, verify, zoo
from fxforge.execute import TorchProgram, run_reference
from fxforge.ir import Graph, TensorType
from fxforge.passes import registry as passes
from fxforge.passes.fuse import fuse
from fxforge.printer import print_graph
from fxforge.shapes import OpTypeError

RTOL, ATOL = 1e-4, 1e-5
CPU = torch.device("cpu")
PIPELINE = "canonicalize,fold-constants,cse,fold-batchnorm,fuse,dce"


def _inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for v in graph.inputs:
        if v.type.dtype == "bool":
            a = rng.random(v.type.shape) < 0.6
            a[..., 0] = True  # every attention row keeps a key (see the pass's docstring)
        else:
            a = rng.standard_normal(v.type.shape).astype(np.float32)
        arrays.append(a)
    return arrays


def _same_outputs(before: Graph, after: Graph, inputs: list[np.ndarray], exact: bool) -> None:
    expected = run_reference(before, inputs)
    got = run_reference(after, inputs)
    on_torch = TorchProgram(after, CPU)([torch.from_numpy(np.array(a)) for a in inputs])
    for e, g, t in zip(expected, got, on_torch):
        assert g.dtype == e.dtype and g.shape == e.shape
        if exact:
            np.testing.assert_array_equal(g, e)
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(t.numpy(), e, rtol=RTOL, atol=ATOL)


def check(before: str, after: str, stats: dict[str, int] | None = None,
          exact: bool = True) -> Graph:
    """fuse(BEFORE) prints as AFTER (constants inline), verifies, round-trips through text and
    computes what BEFORE computes."""
    graph = parse_ir(before)
    verify(graph)
    result, got_stats = fuse(graph)
    verify(result)
    assert print_graph(result, inline_constants=True) == print_graph(parse_ir(after), True)
    assert parse_ir(str(result)) == result
    if stats is not None:
        assert got_stats == stats
    _same_outputs(graph, result, _inputs(graph), exact)
    return result


def unchanged(text: str) -> None:
    graph = parse_ir(text)
    result, stats = fuse(graph)
    assert stats == {}
    assert result == graph


# ---------------------------------------------------------------------------------------------
# conv2d / linear epilogues

CONV = "conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1]"
FCONV = "fused_conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1"


def test_conv_relu():
    check(f"""
graph(%x: f32[1,2,5,5], %w: f32[3,2,3,3], %b: f32[3]) {{
  %y = {CONV} %x, %w, %b : f32[1,3,5,5]  # stem.0 (aten.conv2d.default)
  %r = relu %y : f32[1,3,5,5]  # stem.1 (aten.relu.default)
  return %r
}}""", f"""
graph(%x: f32[1,2,5,5], %w: f32[3,2,3,3], %b: f32[3]) {{
  %r = {FCONV}, has_bias=true, epilogue=[{{"op": "relu"}}]] %x, %w, %b : f32[1,3,5,5]  # stem.0 (aten.conv2d.default)
  return %r
}}""", {"fused_conv2d": 1, "epilogue-steps": 1})  # noqa: E501


def test_conv_residual_add_relu_resnet_block_end():
    check(f"""
graph(%x: f32[2,3,4,4], %w: f32[3,3,3,3], %b: f32[3]) {{
  %y = {CONV} %x, %w, %b : f32[2,3,4,4]  # layer1.0.conv2 (aten.conv2d.default)
  %s = add %y, %x : f32[2,3,4,4]  # layer1.0 (aten.add.Tensor)
  %r = relu %s : f32[2,3,4,4]  # layer1.0.relu (aten.relu.default)
  return %r
}}""", f"""
graph(%x: f32[2,3,4,4], %w: f32[3,3,3,3], %b: f32[3]) {{
  %r = {FCONV}, has_bias=true, epilogue=[{{"op": "add", "operand": 0, "side": "right"}}, {{"op": "relu"}}]] %x, %w, %b : f32[2,3,4,4]  # layer1.0.conv2 (aten.conv2d.default)
  return %r
}}""", {"fused_conv2d": 1, "epilogue-steps": 2})  # noqa: E501


def test_conv_residual_on_the_left_and_per_channel_scale_keep_operand_order():
    check(f"""
graph(%x: f32[1,2,4,4], %w: f32[2,2,3,3], %res: f32[1,2,4,4]) {{
  %y = {CONV} %x, %w : f32[1,2,4,4]
  %s = const f32[2,1,1] [0.5, -2.0]
  %m = div %y, %s : f32[1,2,4,4]
  %d = sub %res, %m : f32[1,2,4,4]
  return %d
}}""", f"""
graph(%x: f32[1,2,4,4], %w: f32[2,2,3,3], %res: f32[1,2,4,4]) {{
  %s = const f32[2,1,1] [0.5, -2.0]
  %d = {FCONV}, has_bias=false, epilogue=[{{"op": "div", "operand": 2, "side": "right"}}, {{"op": "sub", "operand": 3, "side": "left"}}]] %x, %w, %s, %res : f32[1,2,4,4]
  return %d
}}""")  # noqa: E501


def test_conv_relu6_clamp():
    check("""
graph(%x: f32[1,4,6,6], %w: f32[4,1,3,3], %b: f32[4]) {
  %y = conv2d[stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=4] %x, %w, %b : f32[1,4,3,3]
  %r = clamp[min=0.0, max=6.0] %y : f32[1,4,3,3]  # features.1 (aten.hardtanh.default)
  return %r
}""", """
graph(%x: f32[1,4,6,6], %w: f32[4,1,3,3], %b: f32[4]) {
  %r = fused_conv2d[stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=4, has_bias=true, epilogue=[{"op": "clamp", "attrs": {"min": 0.0, "max": 6.0}}]] %x, %w, %b : f32[1,4,3,3]
  return %r
}""")  # noqa: E501


def test_linear_gelu():
    check("""
graph(%x: f32[2,3,4], %w: f32[5,4], %b: f32[5]) {
  %y = linear %x, %w, %b : f32[2,3,5]  # mlp.0 (aten.linear.default)
  %g = gelu[approximate="tanh"] %y : f32[2,3,5]  # mlp.1 (aten.gelu.default)
  return %g
}""", """
graph(%x: f32[2,3,4], %w: f32[5,4], %b: f32[5]) {
  %g = fused_linear[has_bias=true, epilogue=[{"op": "gelu", "attrs": {"approximate": "tanh"}}]] %x, %w, %b : f32[2,3,5]  # mlp.0 (aten.linear.default)
  return %g
}""", {"fused_linear": 1, "epilogue-steps": 1})  # noqa: E501


def test_linear_residual_add_transformer_style():
    check("""
graph(%h: f32[2,4], %x: f32[2,6], %w: f32[4,6], %b: f32[4]) {
  %y = linear %x, %w, %b : f32[2,4]  # mlp.2 (aten.linear.default)
  %s = add %h, %y : f32[2,4]  # layers.0 (aten.add.Tensor)
  %t = tanh %s : f32[2,4]
  return %t
}""", """
graph(%h: f32[2,4], %x: f32[2,6], %w: f32[4,6], %b: f32[4]) {
  %t = fused_linear[has_bias=true, epilogue=[{"op": "add", "operand": 3, "side": "left"}, {"op": "tanh"}]] %x, %w, %b, %h : f32[2,4]  # mlp.2 (aten.linear.default)
  return %t
}""")  # noqa: E501


# ---------------------------------------------------------------------------------------------
# elementwise chains


def test_elementwise_chain():
    check("""
graph(%x: f32[2,3], %y: f32[3]) {
  %a = mul %x, %y : f32[2,3]  # act (aten.mul.Tensor)
  %c = const f32[] 0.5
  %b = add %a, %c : f32[2,3]
  %s = sigmoid %b : f32[2,3]
  %d = sub %s, %x : f32[2,3]
  return %d
}""", """
graph(%x: f32[2,3], %y: f32[3]) {
  %c = const f32[] 0.5
  %d = fused_elementwise[steps=[{"op": "mul", "args": [0, 1]}, {"op": "add", "args": [3, 2]}, {"op": "sigmoid", "args": [4]}, {"op": "sub", "args": [5, 0]}]] %x, %y, %c : f32[2,3]  # act (aten.mul.Tensor)
  return %d
}""", {"fused_elementwise": 1, "elementwise-steps": 3})  # noqa: E501


def test_elementwise_producers_on_both_sides_join():
    check("""
graph(%x: f32[4], %y: f32[4]) {
  %a = exp %x : f32[4]
  %b = neg %y : f32[4]
  %c = mul %a, %b : f32[4]
  return %c
}""", """
graph(%x: f32[4], %y: f32[4]) {
  %c = fused_elementwise[steps=[{"op": "exp", "args": [0]}, {"op": "neg", "args": [1]}, {"op": "mul", "args": [2, 3]}]] %x, %y : f32[4]
  return %c
}""")  # noqa: E501


# ---------------------------------------------------------------------------------------------
# attention

_QKV = "%q: f32[2,3,4], %k: f32[2,5,4], %v: f32[2,5,6]"


def test_attention_mul_scale():
    check(f"""
graph({_QKV}) {{
  %kt = permute[dims=[0, 2, 1]] %k : f32[2,4,5]  # attn (aten.transpose.int)
  %s = matmul %q, %kt : f32[2,3,5]  # attn (aten.matmul.default)
  %c = const f32[] 0.5
  %m = mul %s, %c : f32[2,3,5]
  %p = softmax[dim=-1] %m : f32[2,3,5]
  %o = matmul %p, %v : f32[2,3,6]  # attn (aten.matmul.default)
  return %o
}}""", f"""
graph({_QKV}) {{
  %o = scaled_dot_product_attention[is_causal=false, scale=0.5] %q, %k, %v : f32[2,3,6]  # attn (aten.matmul.default)
  return %o
}}""", {"attention": 1}, exact=False)  # noqa: E501


def test_attention_div_by_sqrt_and_additive_mask():
    check(f"""
graph({_QKV}, %mask: f32[3,5]) {{
  %kt = permute[dims=[0, -1, -2]] %k : f32[2,4,5]
  %s = matmul %q, %kt : f32[2,3,5]
  %c = const f32[] 2.0
  %d = div %s, %c : f32[2,3,5]
  %a = add %mask, %d : f32[2,3,5]
  %p = softmax[dim=2] %a : f32[2,3,5]
  %o = matmul %p, %v : f32[2,3,6]
  return %o
}}""", f"""
graph({_QKV}, %mask: f32[3,5]) {{
  %o = scaled_dot_product_attention[is_causal=false, scale=0.5] %q, %k, %v, %mask : f32[2,3,6]
  return %o
}}""", exact=False)


def test_attention_without_scale_passes_scale_one():
    check(f"""
graph({_QKV}) {{
  %kt = permute[dims=[0, 2, 1]] %k : f32[2,4,5]
  %s = matmul %q, %kt : f32[2,3,5]
  %p = softmax[dim=-1] %s : f32[2,3,5]
  %o = matmul %p, %v : f32[2,3,6]
  return %o
}}""", f"""
graph({_QKV}) {{
  %o = scaled_dot_product_attention[is_causal=false, scale=1.0] %q, %k, %v : f32[2,3,6]
  return %o
}}""", exact=False)


def test_attention_masked_fill_of_a_negated_bool_mask():
    check(f"""
graph({_QKV}, %keep: bool[2,1,5]) {{
  %kt = permute[dims=[0, 2, 1]] %k : f32[2,4,5]
  %s = matmul %q, %kt : f32[2,3,5]
  %c = const f32[] 0.5
  %m = mul %c, %s : f32[2,3,5]
  %drop = torch_op[target="aten.bitwise_not.default", args=[{{"$input": 0}}], kwargs={{}}] %keep : bool[2,1,5]
  %ninf = const f32[] -inf
  %f = where %drop, %ninf, %m : f32[2,3,5]  # attn (aten.masked_fill.Scalar)
  %p = softmax[dim=-1] %f : f32[2,3,5]
  %o = matmul %p, %v : f32[2,3,6]
  return %o
}}""", f"""
graph({_QKV}, %keep: bool[2,1,5]) {{
  %o = scaled_dot_product_attention[is_causal=false, scale=0.5] %q, %k, %v, %keep : f32[2,3,6]
  return %o
}}""", exact=False)  # noqa: E501


def test_attention_where_keep_mask_and_negated_mask_without_bitwise_not():
    check(f"""
graph({_QKV}, %keep: bool[3,5], %drop: bool[3,5]) {{
  %kt = permute[dims=[0, 2, 1]] %k : f32[2,4,5]
  %s = matmul %q, %kt : f32[2,3,5]
  %ninf = const f32[] -inf
  %f = where %keep, %s, %ninf : f32[2,3,5]
  %p = softmax[dim=-1] %f : f32[2,3,5]
  %o = matmul %p, %v : f32[2,3,6]
  %kt2 = permute[dims=[0, 2, 1]] %k : f32[2,4,5]
  %s2 = matmul %q, %kt2 : f32[2,3,5]
  %f2 = where %drop, %ninf, %s2 : f32[2,3,5]
  %p2 = softmax[dim=-1] %f2 : f32[2,3,5]
  %o2 = matmul %p2, %v : f32[2,3,6]
  return %o, %o2
}}""", f"""
graph({_QKV}, %keep: bool[3,5], %drop: bool[3,5]) {{
  %o = scaled_dot_product_attention[is_causal=false, scale=1.0] %q, %k, %v, %keep : f32[2,3,6]
  %c0 = const bool[] false
  %eq0 = eq %drop, %c0 : bool[3,5]
  %o2 = scaled_dot_product_attention[is_causal=false, scale=1.0] %q, %k, %v, %eq0 : f32[2,3,6]
  return %o, %o2
}}""", {"attention": 2}, exact=False)


# ---------------------------------------------------------------------------------------------
# horizontal merge


def test_qkv_linears_merge():
    check("""
graph(%x: f32[3,2]) {
  %wq = const f32[2,2] [1.0, 2.0, 3.0, 4.0]  # attn.q
  %bq = const f32[2] [0.5, -0.5]  # attn.q
  %wk = const f32[2,2] [5.0, 6.0, 7.0, 8.0]  # attn.k
  %bk = const f32[2] [1.5, -1.5]  # attn.k
  %wv = const f32[1,2] [-1.0, -2.0]  # attn.v
  %bv = const f32[1] [2.5]  # attn.v
  %q = linear %x, %wq, %bq : f32[3,2]  # attn.q (aten.linear.default)
  %k = linear %x, %wk, %bk : f32[3,2]  # attn.k (aten.linear.default)
  %v = linear %x, %wv, %bv : f32[3,1]  # attn.v (aten.linear.default)
  %kt = permute[dims=[1, 0]] %k : f32[2,3]
  %s = matmul %q, %kt : f32[3,3]
  %o = matmul %s, %v : f32[3,1]
  return %o
}""", """
graph(%x: f32[3,2]) {
  %c0 = const f32[5,2] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -1.0, -2.0]  # attn (aten.linear.default)
  %c1 = const f32[5] [0.5, -0.5, 1.5, -1.5, 2.5]  # attn (aten.linear.default)
  %merged0 = linear %x, %c0, %c1 : f32[3,5]  # attn (aten.linear.default)
  %q, %k, %v = split[sizes=[2, 2, 1], dim=-1] %merged0 : f32[3,2], f32[3,2], f32[3,1]  # attn (aten.linear.default)
  %kt = permute[dims=[1, 0]] %k : f32[2,3]
  %s = matmul %q, %kt : f32[3,3]
  %o = matmul %s, %v : f32[3,1]
  return %o
}""", {"merged-linears": 1, "merged": [  # noqa: E501
    "3 linear merged into one (5 output channels): attn.q, attn.k, attn.v"]}, exact=False)


def test_linear_feeding_an_epilogue_fuses_vertically_instead_of_merging():
    check("""
graph(%x: f32[3,2]) {
  %wq = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
  %wk = const f32[2,2] [5.0, 6.0, 7.0, 8.0]
  %q = linear %x, %wq : f32[3,2]
  %k = linear %x, %wk : f32[3,2]
  %r = relu %k : f32[3,2]
  %o = mul %q, %r : f32[3,2]
  return %o
}""", """
graph(%x: f32[3,2]) {
  %wq = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
  %wk = const f32[2,2] [5.0, 6.0, 7.0, 8.0]
  %r = fused_linear[has_bias=false, epilogue=[{"op": "relu"}]] %x, %wk : f32[3,2]
  %o = fused_linear[has_bias=false, epilogue=[{"op": "mul", "operand": 2, "side": "right"}]] %x, %wq, %r : f32[3,2]
  return %o
}""")  # noqa: E501


# ---------------------------------------------------------------------------------------------
# what must not fuse


def test_intermediate_with_two_readers_is_not_fused():
    check(f"""
graph(%x: f32[1,2,4,4], %w: f32[2,2,3,3]) {{
  %y = {CONV} %x, %w : f32[1,2,4,4]
  %r = relu %y : f32[1,2,4,4]
  %s = add %r, %y : f32[1,2,4,4]
  return %s
}}""", f"""
graph(%x: f32[1,2,4,4], %w: f32[2,2,3,3]) {{
  %y = {CONV} %x, %w : f32[1,2,4,4]
  %s = fused_elementwise[steps=[{{"op": "relu", "args": [0]}}, {{"op": "add", "args": [1, 0]}}]] %y : f32[1,2,4,4]
  return %s
}}""", {"fused_elementwise": 1, "elementwise-steps": 1})  # noqa: E501


def test_graph_output_counts_as_a_reader():
    unchanged("""
graph(%x: f32[2,4], %w: f32[3,4]) {
  %y = linear %x, %w : f32[2,3]
  %r = relu %y : f32[2,3]
  %e = exp %x : f32[2,4]
  %n = neg %e : f32[2,4]
  return %y, %r, %e, %n
}""")


def test_broadcast_that_grows_the_result_is_not_fused():
    unchanged(f"""
graph(%x: f32[1,2,4,4], %w: f32[2,2,3,3], %big: f32[3,1,2,4,4]) {{
  %y = {CONV} %x, %w : f32[1,2,4,4]
  %s = add %y, %big : f32[3,1,2,4,4]
  return %s
}}""")


def test_dtype_change_is_not_an_epilogue():
    unchanged("""
graph(%x: f32[2,4], %w: f32[3,4], %d: f64[2,3]) {
  %y = linear %x, %w : f32[2,3]
  %s = mul %y, %d : f64[2,3]
  return %s
}""")


ATTENTION_LOOKALIKES = {
    "not-a-transpose-of-the-last-two-dims": ("[1, 0, 2]", "f32[4,2,5]", "%q: f32[4,3,2]", "-1",
                                             "f32[4,3,5]", "%v: f32[4,5,6]", "f32[4,3,6]", ""),
    "softmax-not-over-the-keys": ("[0, 2, 1]", "f32[2,4,5]", "%q: f32[2,3,4]", "1", "f32[2,3,5]",
                                  "%v: f32[2,5,6]", "f32[2,3,6]", ""),
    "scores-read-twice": ("[0, 2, 1]", "f32[2,4,5]", "%q: f32[2,3,4]", "-1", "f32[2,3,5]",
                          "%v: f32[2,5,6]", "f32[2,3,6]", ", %s"),
}


@pytest.mark.parametrize("case", list(ATTENTION_LOOKALIKES))
def test_attention_lookalikes_are_not_fused(case: str):
    kt_dims, kt_type, q, dim, s_type, v, o_type, extra = ATTENTION_LOOKALIKES[case]
    unchanged(f"""
graph({q}, %k: f32[2,4,5], {v}) {{
  %kt = permute[dims={kt_dims}] %k : {kt_type}
  %s = matmul %q, %kt : {s_type}
  %p = softmax[dim={dim}] %s : {s_type}
  %o = matmul %p, %v : {o_type}
  return %o{extra}
}}""")


# ---------------------------------------------------------------------------------------------
# the fused ops: inference rejects, verifier, text round trip


def _t(*shape: int, dtype: str = "f32") -> TensorType:
    return TensorType(shape, dtype)


_RELU = {"op": "relu"}
REJECTED = [
    ("not-elementwise", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": ({"op": "softmax", "attrs": {"dim": 1}},)}),
    ("unknown-op", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": ({"op": "frobnicate"},)}),
    ("nested-fused", "fused_elementwise", [_t(3)],
     {"steps": ({"op": "fused_elementwise", "args": (0,), "attrs": {"steps": ()}},)}),
    ("operand-out-of-range", "fused_linear", [_t(2, 4), _t(3, 4), _t(3)],
     {"has_bias": True, "epilogue": ({"op": "add", "operand": 3, "side": "right"},)}),
    ("operand-grows-the-output", "fused_linear", [_t(2, 4), _t(3, 4), _t(3), _t(5, 2, 3)],
     {"has_bias": True, "epilogue": ({"op": "add", "operand": 3, "side": "right"},)}),
    ("operand-not-broadcastable", "fused_conv2d", [_t(1, 2, 4, 4), _t(3, 2, 1, 1), _t(2, 1, 1)],
     {"has_bias": False, "epilogue": ({"op": "mul", "operand": 2, "side": "right"},)}),
    ("binary-without-side", "fused_linear", [_t(2, 4), _t(3, 4), _t(2, 3)],
     {"has_bias": False, "epilogue": ({"op": "add", "operand": 2},)}),
    ("unary-with-operand", "fused_linear", [_t(2, 4), _t(3, 4), _t(2, 3)],
     {"has_bias": False, "epilogue": ({"op": "relu", "operand": 2, "side": "right"},)}),
    ("three-input-step", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": ({"op": "where", "operand": 0, "side": "right"},)}),
    ("step-attrs-not-all-given", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": ({"op": "clamp", "attrs": {"min": 0.0}},)}),
    ("unknown-step-key", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": ({"op": "relu", "alpha": 1},)}),
    ("epilogue-not-a-list", "fused_linear", [_t(2, 4), _t(3, 4)],
     {"has_bias": False, "epilogue": _RELU}),
    ("bias-missing", "fused_conv2d", [_t(1, 2, 4, 4), _t(3, 2, 1, 1)], {"has_bias": True}),
    ("base-op-shapes", "fused_conv2d", [_t(1, 2, 4, 4), _t(3, 5, 1, 1)], {"has_bias": False}),
    ("arg-is-a-later-step", "fused_elementwise", [_t(3)],
     {"steps": ({"op": "neg", "args": (1,)},)}),
    ("wrong-arity", "fused_elementwise", [_t(3), _t(3)],
     {"steps": ({"op": "add", "args": (0,)},)}),
    ("no-steps", "fused_elementwise", [_t(3)], {"steps": ()}),
    ("step-type-rule", "fused_elementwise", [_t(3, dtype="i64")],
     {"steps": ({"op": "gelu", "args": (0,), "attrs": {"approximate": "none"}},)}),
]


@pytest.mark.parametrize("op, types, attrs", [r[1:] for r in REJECTED],
                         ids=[r[0] for r in REJECTED])
def test_fused_inference_rejects(op: str, types: list[TensorType], attrs: dict[str, Any]):
    opdef = ops.get(op)
    with pytest.raises(OpTypeError):
        ops.infer_types(opdef, types, ops.complete_attrs(opdef, attrs))


def test_stage_types_are_the_unfused_intermediates():
    attrs = ops.complete_attrs(ops.get("fused_elementwise"), {"steps": (
        {"op": "gt", "args": (0, 1)}, {"op": "cast", "args": (2,), "attrs": {"dtype": "i64"}},
        {"op": "div", "args": (3, 1)})})
    stages = ops.stage_types("fused_elementwise", [_t(2, 3), _t(3)], attrs)
    assert stages == [_t(2, 3, dtype="bool"), _t(2, 3, dtype="i64"), _t(2, 3)]


def test_fused_flops_are_the_base_op_plus_one_per_element_per_step():
    x, w, b = _t(2, 8), _t(4, 8), _t(4)
    attrs = ops.complete_attrs(ops.get("fused_linear"), {"has_bias": True, "epilogue": (
        {"op": "relu"}, {"op": "mul", "operand": 2, "side": "right"})})
    out = (_t(2, 4),)
    assert ops.infer_types(ops.get("fused_linear"), [x, w, b], attrs) == out
    plain = ops.get("linear").count_flops([x, w, b], out, ops.Attrs())
    assert ops.get("fused_linear").count_flops([x, w, b], out, attrs) == plain + 2 * 8


def test_verifier_rejects_a_stale_fused_type():
    text = """
graph(%x: f32[2,4], %w: f32[3,4]) {
  %y = fused_linear[has_bias=false, epilogue=[{"op": "relu"}]] %x, %w : f32[2,4]
  return %y
}"""
    with pytest.raises(ValueError, match="inference gives"):
        verify(parse_ir(text))


# ---------------------------------------------------------------------------------------------
# whole models


def _compile_fused(monkeypatch, name: str, target: str, batch: int = 2):
    monkeypatch.setitem(passes.PASSES, "fuse", fuse)
    model, inputs = zoo.build(name, batch)
    with torch.no_grad():
        expected = model(*inputs)
    compiled = compile(model, target, passes=PIPELINE, debug={"verify_each": True})
    got = compiled(*inputs)
    exp_leaves, exp_spec = pytree.tree_flatten(expected)
    got_leaves, got_spec = pytree.tree_flatten(got)
    assert got_spec == exp_spec
    for e, g in zip(exp_leaves, got_leaves):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)
    graph = compiled.graph
    assert parse_ir(str(graph)) == graph
    assert fuse(graph) == (graph, {})
    return graph


def _epilogues(graph: Graph, op: str) -> list[tuple[str, ...]]:
    return [tuple(s["op"] for s in n.attrs["epilogue"]) for n in graph.nodes if n.op == op]


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_resnet18(monkeypatch, target: str):
    graph = _compile_fused(monkeypatch, "resnet18", target)
    epilogues = _epilogues(graph, "fused_conv2d")
    assert epilogues.count(("add", "relu")) == 8  # every basic block ends in one kernel
    assert epilogues.count(("relu",)) == 9  # the stem and every block's first conv
    assert not any(n.op in ("relu", "add") for n in graph.nodes)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_transformer(monkeypatch, target: str):
    graph = _compile_fused(monkeypatch, "transformer", target)
    ops_ = [n.op for n in graph.nodes]
    assert ops_.count("scaled_dot_product_attention") == 2  # one captured, one recognized
    assert "softmax" not in ops_ and "matmul" not in ops_
    epilogues = _epilogues(graph, "fused_linear")
    assert epilogues.count(("gelu",)) == 2 and epilogues.count(("add",)) == 4


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_bert(monkeypatch, target: str):
    graph = _compile_fused(monkeypatch, "bert", target)
    splits = [n for n in graph.nodes if n.op == "split" and len(n.outputs) == 3]
    assert len(splits) == 2  # Q, K and V of both layers are one linear each
    assert {"fused_linear", "fused_elementwise"} <= {n.op for n in graph.nodes}


def test_mobilenetv2_relu6_and_residuals(monkeypatch):
    graph = _compile_fused(monkeypatch, "mobilenetv2", "cpu", batch=1)
    epilogues = _epilogues(graph, "fused_conv2d")
    assert ("clamp",) in epilogues and ("add",) in epilogues


def test_fuse_reports_its_fusions():
    model, inputs = zoo.build("resnet18", 1)
    plain = compile(model, "reference", passes="canonicalize,fold-constants,cse,fold-batchnorm,dce",
                    example_inputs=inputs).graph
    _, stats = fuse(plain)
    assert stats == {"fused_conv2d": 17, "epilogue-steps": 25}


# ---------------------------------------------------------------------------------------------
# random graphs


def _fuses_to_the_same_values(g: Graph) -> None:
    fused, _ = fuse(g)
    verify(fused)
    assert parse_ir(str(fused)) == fused
    assert fuse(fused) == (fused, {})  # a fixed point
    inputs = random_inputs(g, 0)
    expected = run_reference(g, inputs)
    for e, got in zip(expected, run_reference(fused, inputs)):
        np.testing.assert_allclose(got, e, rtol=RTOL, atol=ATOL)
    on_torch = TorchProgram(fused, CPU)([torch.from_numpy(np.array(a)) for a in inputs])
    for e, got in zip(expected, on_torch):
        np.testing.assert_allclose(got.numpy(), e, rtol=RTOL, atol=ATOL)


@settings(max_examples=75, deadline=None, database=None)
@given(random_graphs(max_ops=12, max_inputs=2))
def test_random_graphs_compute_the_same(g: Graph):
    _fuses_to_the_same_values(g)


FUSIBLE = ("conv2d", "relu", "relu6", "clamp", "sigmoid", "hardswish", "gelu", "add", "mul",
           "linear", "flatten")


@settings(max_examples=75, deadline=None, database=None)
@given(random_graphs(max_ops=10, max_inputs=2, ops=FUSIBLE))
def test_random_fusible_graphs_compute_the_same(g: Graph):
    _fuses_to_the_same_values(g)
