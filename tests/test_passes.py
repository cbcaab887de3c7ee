"""BEFORE/AFTER IR-text tests of the cleanup, batch-norm folding and channel-removal passes.

Every case also runs both graphs with the numpy reference on random inputs (run_pass):
folding within rtol 1e-4 / atol 1e-5, channel removal within rtol 1e-6 / atol 1e-7 (exact up
to the last bit of float32 rounding).
"""

import numpy as np
import pytest
import torch
from passes_util import canonical, dedent_ir, run_pass

from fxforge import compile, parse_ir, zoo
from fxforge.execute import run_reference

CONV1 = "conv2d[stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1]"
CONV3 = "conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1]"
DEPTHWISE3 = "conv2d[stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=3]"
EXACT = {"rtol": 1e-6, "atol": 1e-7}


def _assert_ir(graph, expected: str) -> None:
    assert canonical(graph) == dedent_ir(expected)


# --- cleanup ------------------------------------------------------------------------------------


def test_canonicalize_drops_identities_and_folds_prune_masks():
    after, stats = run_pass("canonicalize", f"""
    graph(%x: f32[1,2,2,2]) {{
      %w_orig = const f32[2,2,1,1] [1.0, 2.0, 3.0, 4.0]
      %mask = const f32[2,2,1,1] [1.0, 1.0, 0.0, 0.0]
      %w = mul %w_orig, %mask : f32[2,2,1,1]
      %d = dropout[p=0.1] %x : f32[1,2,2,2]
      %i = identity %d : f32[1,2,2,2]
      %c = cast[dtype="f32"] %i : f32[1,2,2,2]
      %y = {CONV1} %c, %w : f32[1,2,2,2]
      %r1 = reshape[shape=[1, 8]] %y : f32[1,8]
      %r2 = reshape[shape=[2, 4]] %r1 : f32[2,4]
      %p = permute[dims=[0, 1]] %r2 : f32[2,4]
      %s = slice[dim=1, start=0, end=4, step=1] %p : f32[2,4]
      return %s
    }}""")
    _assert_ir(after, f"""
    graph(%0: f32[1,2,2,2]) {{
      %1 = const f32[2,2,1,1] [1.0, 2.0, 0.0, 0.0]
      %2 = {CONV1} %0, %1 : f32[1,2,2,2]
      %3 = reshape[shape=[2, 4]] %2 : f32[2,4]
      return %3
    }}""")
    assert stats == {"drop-identity": 2, "drop-noop-cast": 1, "drop-noop-layout": 1,
                     "drop-noop-permute": 1, "reshape-chain": 1, "fold-weight-mask": 1}


def test_canonicalize_keeps_real_permutes_and_casts():
    text = """
    graph(%x: f32[2,2]) {
      %p = permute[dims=[1, 0]] %x : f32[2,2]
      %c = cast[dtype="f16"] %p : f16[2,2]
      return %c
    }"""
    after, stats = run_pass("canonicalize", text)
    assert after == parse_ir(text) and stats == {}


def test_canonicalize_turns_a_matmul_by_a_constant_into_a_linear():
    # GPT-2's Conv1D is addmm(bias, x, W) with W [K, N]: as linear(x, W.T) it fuses and quantizes
    text = """
    graph(%x: f32[3,2], %y: f32[2,3]) {
      %w = const f32[2,3] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
      %m = matmul %x, %w : f32[3,3]
      %n = matmul %x, %y : f32[3,3]
      %s = add %m, %n : f32[3,3]
      return %s
    }"""
    after, stats = run_pass("canonicalize", text)
    _assert_ir(after, """
    graph(%0: f32[3,2], %1: f32[2,3]) {
      %2 = const f32[3,2] [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
      %3 = linear %0, %2 : f32[3,3]
      %4 = matmul %0, %1 : f32[3,3]
      %5 = add %3, %4 : f32[3,3]
      return %5
    }""")
    assert stats == {"matmul-to-linear": 1}
    x, y = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    inputs = [x, y.T.copy()]
    np.testing.assert_allclose(run_reference(after, inputs)[0],
                               run_reference(parse_ir(text), inputs)[0], rtol=1e-6, atol=1e-6)


def test_canonicalize_folds_a_constant_vector_into_a_bias_less_linear():
    # addmm(bias, x, W) captures as matmul + add: the add becomes the linear's bias
    text = """
    graph(%x: f32[3,2]) {
      %w = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
      %b = const f32[2] [0.5, -0.5]
      %m = linear %x, %w : f32[3,2]
      %y = add %b, %m : f32[3,2]
      return %y
    }"""
    after, stats = run_pass("canonicalize", text)
    _assert_ir(after, """
    graph(%0: f32[3,2]) {
      %1 = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
      %2 = const f32[2] [0.5, -0.5]
      %3 = linear %0, %1, %2 : f32[3,2]
      return %3
    }""")
    assert stats == {"linear-bias": 1}


def test_canonicalize_leaves_an_add_that_is_not_a_bias():
    text = """
    graph(%x: f32[3,2]) {
      %w = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
      %b = const f32[3,1] [0.5, -0.5, 1.0]
      %m = linear %x, %w : f32[3,2]
      %y = add %m, %b : f32[3,2]
      %z = add %m, %y : f32[3,2]
      return %z
    }"""
    after, stats = run_pass("canonicalize", text)
    assert after == parse_ir(text) and stats == {}


def test_canonicalize_drops_a_zero_pad_and_makes_a_whole_window_pool_global():
    # HF EfficientNet pools with AvgPool2d(hidden_dim, ceil_mode=True) on a 2x2 map
    pool = ("avg_pool2d[kernel=[5, 5], stride=[5, 5], padding=[0, 0], ceil_mode=true, "
            "count_include_pad=true, divisor_override=none]")
    after, stats = run_pass("canonicalize", f"""
    graph(%x: f32[1,3,2,2]) {{
      %p = pad[pads=[0, 0, 0, 0], mode="constant", value=0.0] %x : f32[1,3,2,2]
      %y = {pool} %p : f32[1,3,1,1]
      return %y
    }}""")
    _assert_ir(after, """
    graph(%0: f32[1,3,2,2]) {
      %1 = adaptive_avg_pool2d[output_size=[1, 1]] %0 : f32[1,3,1,1]
      return %1
    }""")
    assert stats == {"drop-noop-pad": 1, "whole-window-pool": 1}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_canonicalize_recognizes_gelu_written_as_its_formula(approximate):
    # GPT-2's NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
    if approximate == "none":
        inner = """
      %c = const f32[] [0.7071067690849304]
      %u = mul %x, %c : f32[2,3]
      %t = erf %u : f32[2,3]"""
    else:
        inner = """
      %k = const f32[] [0.044715]
      %three = const f32[] [3.0]
      %s = const f32[] [0.7978845834732056]
      %x3 = pow %x, %three : f32[2,3]
      %kx3 = mul %k, %x3 : f32[2,3]
      %in = add %x, %kx3 : f32[2,3]
      %u = mul %s, %in : f32[2,3]
      %t = tanh %u : f32[2,3]"""
    after, stats = run_pass("canonicalize", f"""
    graph(%x: f32[2,3]) {{
      %half = const f32[] [0.5]
      %one = const f32[] [1.0]{inner}
      %p = add %one, %t : f32[2,3]
      %h = mul %half, %x : f32[2,3]
      %y = mul %h, %p : f32[2,3]
      return %y
    }}""")
    _assert_ir(after, f"""
    graph(%0: f32[2,3]) {{
      %1 = gelu[approximate="{approximate}"] %0 : f32[2,3]
      return %1
    }}""")
    assert stats == {"gelu": 1}


def test_fold_constants_folds_sources_but_not_opaque_or_growing_nodes():
    after, stats = run_pass("fold-constants", """
    graph(%x: f32[4]) {
      %r = arange[start=0.0, end=4.0, step=1.0, dtype="f32"] : f32[4]
      %two = const f32[] 2.0
      %s = mul %r, %two : f32[4]
      %y = add %x, %s : f32[4]
      %small = const f32[1] [1.0]
      %big = expand[shape=[70000]] %small : f32[70000]
      %k = const f32[4] [1.0, 2.0, 3.0, 4.0]
      %t = torch_op[target="aten.flip.default", args=[{"$input": 0}, [0]], kwargs={}] %k : f32[4]
      %z = sum[dims=[0], keepdim=false] %big : f32[]
      %o = add %y, %z : f32[4]
      return %o, %t
    }""", seeds=1)
    text = canonical(after)
    assert "const f32[4] [0.0, 2.0, 4.0, 6.0]" in text
    assert "expand" in text and "torch_op" in text and "arange" not in text
    assert stats == {"folded": 2}


def test_cse_merges_duplicate_nodes_and_constants():
    after, stats = run_pass("cse", """
    graph(%x: f32[3]) {
      %a = const f32[] 2.0
      %b = const f32[] 2.0
      %m1 = mul %x, %a : f32[3]
      %m2 = mul %x, %b : f32[3]
      %s = add %m1, %m2 : f32[3]
      return %s
    }""")
    _assert_ir(after, """
    graph(%0: f32[3]) {
      %1 = const f32[] 2.0
      %2 = mul %0, %1 : f32[3]
      %3 = add %2, %2 : f32[3]
      return %3
    }""")
    assert stats == {"merged": 2}


# --- fold-batchnorm -----------------------------------------------------------------------------
# scale = gamma / sqrt(var + eps); with var 3 and eps 1 the square root is exactly 2.

BN_PARAMS = """
      %g = const f32[1] [{gamma}]
      %be = const f32[1] [1.0]
      %m = const f32[1] [0.5]
      %v = const f32[1] [3.0]"""


@pytest.mark.parametrize("conv_bias, folded_bias", [(None, "0.5"), ("1.5", "2.0")])
def test_fold_conv_bn(conv_bias, folded_bias):
    bias_def = f"\n      %cb = const f32[1] [{conv_bias}]" if conv_bias else ""
    bias_use = ", %cb" if conv_bias else ""
    after, stats = run_pass("fold-batchnorm", f"""
    graph(%x: f32[1,1,3,3]) {{
      %w = const f32[1,1,1,1] [2.0]{bias_def}{BN_PARAMS.format(gamma=2.0)}
      %y = {CONV1} %x, %w{bias_use} : f32[1,1,3,3]
      %z = batch_norm[eps=1.0] %y, %g, %be, %m, %v : f32[1,1,3,3]
      return %z
    }}""")
    _assert_ir(after, f"""
    graph(%0: f32[1,1,3,3]) {{
      %1 = const f32[1,1,1,1] [2.0]
      %2 = const f32[1] [{folded_bias}]
      %3 = {CONV1} %0, %1, %2 : f32[1,1,3,3]
      return %3
    }}""")
    assert stats == {"folded": 1}


def test_fold_never_changes_a_shared_weight_in_place():
    after, _ = run_pass("fold-batchnorm", f"""
    graph(%x: f32[1,1,3,3]) {{
      %w = const f32[1,1,1,1] [2.0]{BN_PARAMS.format(gamma=4.0)}
      %y1 = {CONV1} %x, %w : f32[1,1,3,3]
      %z1 = batch_norm[eps=1.0] %y1, %g, %be, %m, %v : f32[1,1,3,3]
      %y2 = {CONV1} %x, %w : f32[1,1,3,3]
      %s = add %z1, %y2 : f32[1,1,3,3]
      return %s
    }}""")
    _assert_ir(after, f"""
    graph(%0: f32[1,1,3,3]) {{
      %1 = const f32[1,1,1,1] [2.0]
      %2 = const f32[1,1,1,1] [4.0]
      %3 = const f32[1] [0.0]
      %4 = {CONV1} %0, %2, %3 : f32[1,1,3,3]
      %5 = {CONV1} %0, %1 : f32[1,1,3,3]
      %6 = add %4, %5 : f32[1,1,3,3]
      return %6
    }}""")


def test_fold_linear_bn():
    after, _ = run_pass("fold-batchnorm", """
    graph(%x: f32[3,2]) {
      %w = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
      %b = const f32[2] [0.5, 0.5]
      %g = const f32[2] [2.0, 4.0]
      %be = const f32[2] [1.0, 1.0]
      %m = const f32[2] [0.0, 0.0]
      %v = const f32[2] [3.0, 3.0]
      %y = linear %x, %w, %b : f32[3,2]
      %z = batch_norm[eps=1.0] %y, %g, %be, %m, %v : f32[3,2]
      return %z
    }""")
    _assert_ir(after, """
    graph(%0: f32[3,2]) {
      %1 = const f32[2,2] [1.0, 2.0, 6.0, 8.0]
      %2 = const f32[2] [1.5, 2.0]
      %3 = linear %0, %1, %2 : f32[3,2]
      return %3
    }""")


def test_unfoldable_bn_becomes_scale_and_shift_and_says_why():
    after, stats = run_pass("fold-batchnorm", """
    graph(%x: f32[1,2,2,2]) {
      %g = const f32[2] [2.0, 4.0]
      %be = const f32[2] [1.0, 1.0]
      %m = const f32[2] [0.0, 0.0]
      %v = const f32[2] [3.0, 3.0]
      %r = relu %x : f32[1,2,2,2]
      %z = batch_norm[eps=1.0] %r, %g, %be, %m, %v : f32[1,2,2,2]  # block.bn
      return %z
    }""")
    _assert_ir(after, """
    graph(%0: f32[1,2,2,2]) {
      %1 = relu %0 : f32[1,2,2,2]
      %2 = const f32[2,1,1] [1.0, 2.0]
      %3 = const f32[2,1,1] [1.0, 1.0]
      %4 = mul %1, %2 : f32[1,2,2,2]
      %5 = add %4, %3 : f32[1,2,2,2]
      return %5
    }""")
    assert stats["to-scale-shift"] == 1
    assert stats["not-folded"] == ["block.bn: its input comes from relu, not conv2d/linear"]


def test_bn_after_a_conv_with_two_readers_is_not_folded():
    _, stats = run_pass("fold-batchnorm", f"""
    graph(%x: f32[1,1,3,3]) {{
      %w = const f32[1,1,1,1] [2.0]{BN_PARAMS.format(gamma=2.0)}
      %y = {CONV1} %x, %w : f32[1,1,3,3]
      %z = batch_norm[eps=1.0] %y, %g, %be, %m, %v : f32[1,1,3,3]
      %s = add %z, %y : f32[1,1,3,3]
      return %s
    }}""")
    assert stats["to-scale-shift"] == 1 and "other readers" in stats["not-folded"][0]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2"])
def test_no_batch_norm_survives_the_default_pipeline(name):
    model, (x,) = zoo.build(name, 1)
    fast = compile(model, "cpu", example_inputs=x)
    assert any(n.op == "batch_norm" for n in fast.captured_graph.nodes)
    assert not any(n.op == "batch_norm" for n in fast.graph.nodes)
    fold = next(p for p in fast.report.latest.passes if p.name == "fold-batchnorm")
    assert fold.stats["folded"] == sum(n.op == "batch_norm" for n in fast.captured_graph.nodes)


# --- remove-pruned-channels ---------------------------------------------------------------------


def _conv_weights(graph):
    return [graph.constant(n.inputs[1]) for n in graph.nodes if n.op == "conv2d"]


def test_residual_add_with_one_pruned_branch_removes_nothing():
    text = f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[2,2,1,1] [1.0, 1.0, 0.0, 0.0]
      %w2 = const f32[2,2,1,1] [1.0, 0.5, 0.5, 1.0]
      %w3 = const f32[3,2,1,1] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
      %a = {CONV1} %x, %w1 : f32[1,2,4,4]
      %b = {CONV1} %x, %w2 : f32[1,2,4,4]
      %s = add %a, %b : f32[1,2,4,4]
      %y = {CONV1} %s, %w3 : f32[1,3,4,4]
      return %y
    }}"""
    after, stats = run_pass("remove-pruned-channels", text, **EXACT)
    assert after == parse_ir(text) and stats["channels-removed"] == 0


def test_residual_add_with_both_branches_pruned_removes_the_channel():
    after, stats = run_pass("remove-pruned-channels", f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[2,2,1,1] [1.0, 1.0, 0.0, 0.0]
      %w2 = const f32[2,2,1,1] [1.0, 0.5, 0.0, 0.0]
      %w3 = const f32[3,2,1,1] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
      %a = {CONV1} %x, %w1 : f32[1,2,4,4]
      %b = {CONV1} %x, %w2 : f32[1,2,4,4]
      %s = add %a, %b : f32[1,2,4,4]
      %r = relu %s : f32[1,2,4,4]
      %y = {CONV1} %r, %w3 : f32[1,3,4,4]
      return %y
    }}""", **EXACT)
    _assert_ir(after, f"""
    graph(%0: f32[1,2,4,4]) {{
      %1 = const f32[1,2,1,1] [1.0, 1.0]
      %2 = {CONV1} %0, %1 : f32[1,1,4,4]
      %3 = const f32[1,2,1,1] [1.0, 0.5]
      %4 = {CONV1} %0, %3 : f32[1,1,4,4]
      %5 = add %2, %4 : f32[1,1,4,4]
      %6 = relu %5 : f32[1,1,4,4]
      %7 = const f32[3,1,1,1] [1.0, 3.0, 5.0]
      %8 = {CONV1} %6, %7 : f32[1,3,4,4]
      return %8
    }}""")
    assert stats["channels-removed"] == 2


class _EmptyPieces(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, x[:, :0]], 1) * 2, torch.cumsum(x[:0], 0)


def test_a_value_with_no_channels_is_left_alone():
    """A 0-size piece (cat with an empty slice, a scan of an empty slice) has no channel to keep
    or drop; the pass used to index its first channel and fail."""
    import fxforge

    x = torch.randn(2, 3)
    got = fxforge.compile(_EmptyPieces(), "cpu")(x)
    want = _EmptyPieces()(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert got[1].shape == (0, 3)


def test_concat_of_a_pruned_and_an_unpruned_branch_maps_indices():
    w3 = np.arange(12, dtype=np.float32) + 1
    after, _ = run_pass("remove-pruned-channels", f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[2,2,1,1] [1.0, 1.0, 0.0, 0.0]
      %w2 = const f32[2,2,1,1] [1.0, 0.5, 1.0, 0.5]
      %w3 = const f32[3,4,1,1] [{", ".join(map(str, w3.tolist()))}]
      %a = {CONV1} %x, %w1 : f32[1,2,4,4]
      %b = {CONV1} %x, %w2 : f32[1,2,4,4]
      %c = cat[dim=1] %a, %b : f32[1,4,4,4]
      %y = {CONV1} %c, %w3 : f32[1,3,4,4]
      return %y
    }}""", **EXACT)
    wa, wb, wy = _conv_weights(after)
    assert wa.shape == (1, 2, 1, 1)  # a loses its zero channel 1 (cat position 1)
    assert wb.shape == (2, 2, 1, 1)  # the unpruned branch keeps both
    cat = next(n for n in after.nodes if n.op == "cat")
    assert cat.output.type.shape[1] == 3
    np.testing.assert_array_equal(wy.reshape(3, -1), w3.reshape(3, 4)[:, [0, 2, 3]])


def test_concat_keeps_a_channel_of_a_branch_that_is_all_zero():
    after, _ = run_pass("remove-pruned-channels", f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[1,2,1,1] [0.0, 0.0]
      %w2 = const f32[2,2,1,1] [1.0, 0.0, 1.0, 0.5]
      %w3 = const f32[2,3,1,1] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
      %a = {CONV1} %x, %w1 : f32[1,1,4,4]
      %b = {CONV1} %x, %w2 : f32[1,2,4,4]
      %c = cat[dim=1] %a, %b : f32[1,3,4,4]
      %y = {CONV1} %c, %w3 : f32[1,2,4,4]
      return %y
    }}""", **EXACT)
    assert [w.shape[0] for w in _conv_weights(after)] == [1, 2, 2]  # no empty tensors


@pytest.mark.parametrize("dw_bias, removed", [("0.0", True), ("0.25", True)])
def test_depthwise_conv_after_a_pruned_conv(dw_bias, removed):
    wd = ", ".join(["0.5"] * 27)
    after, stats = run_pass("remove-pruned-channels", f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[3,2,1,1] [1.0, 2.0, 0.0, 0.0, 3.0, 1.0]
      %wd = const f32[3,1,3,3] [{wd}]
      %bd = const f32[3] [0.1, {dw_bias}, 0.3]
      %w3 = const f32[2,3,1,1] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
      %a = {CONV1} %x, %w1 : f32[1,3,4,4]
      %d = {DEPTHWISE3} %a, %wd, %bd : f32[1,3,4,4]
      %y = {CONV1} %d, %w3 : f32[1,2,4,4]
      return %y
    }}""", **EXACT)
    depthwise = next(n for n in after.nodes if n.op == "conv2d" and n.attrs["groups"] > 1)
    assert depthwise.attrs["groups"] == 2 and depthwise.output.type.shape[1] == 2
    last = [n for n in after.nodes if n.op == "conv2d"][-1]
    bias = after.constant(last.inputs[2]) if len(last.inputs) == 3 else np.zeros(2)
    # the removed depthwise channel is the constant 0.25 (its bias): the 1x1 conv absorbs
    # 0.25 * w3[:, 1] = [0.5, 1.25] into its bias
    np.testing.assert_allclose(bias, [0.0, 0.0] if dw_bias == "0.0" else [0.5, 1.25])
    assert stats["channels-removed"] == 1


def test_flatten_into_linear_maps_spatial_positions():
    wl = np.arange(24, dtype=np.float32).reshape(3, 8) / 8
    after, _ = run_pass("remove-pruned-channels", f"""
    graph(%x: f32[1,2,2,2]) {{
      %w1 = const f32[2,2,1,1] [0.0, 0.0, 1.0, -1.0]
      %wl = const f32[3,8] [{", ".join(map(str, wl.reshape(-1).tolist()))}]
      %bl = const f32[3] [0.5, 0.5, 0.5]
      %a = {CONV1} %x, %w1 : f32[1,2,2,2]
      %r = relu %a : f32[1,2,2,2]
      %f = reshape[shape=[1, 8]] %r : f32[1,8]
      %l = linear %f, %wl, %bl : f32[1,3]
      return %l
    }}""", **EXACT)
    reshape = next(n for n in after.nodes if n.op == "reshape")
    linear = next(n for n in after.nodes if n.op == "linear")
    assert reshape.attrs["shape"] == (1, 4)
    np.testing.assert_array_equal(after.constant(linear.inputs[1]), wl[:, 4:])


def _bn_then_conv(shift: float, consumer: str, kernel: int) -> str:
    w3 = ", ".join(["0.5"] * (2 * 2 * kernel * kernel))
    return f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[2,2,1,1] [1.0, -1.0, 0.0, 0.0]
      %g = const f32[2] [1.0, 1.0]
      %be = const f32[2] [0.0, {shift}]
      %m = const f32[2] [0.0, 0.0]
      %v = const f32[2] [1.0, 1.0]
      %w3 = const f32[2,2,{kernel},{kernel}] [{w3}]
      %a = {CONV1} %x, %w1 : f32[1,2,4,4]
      %n = batch_norm[eps=0.0] %a, %g, %be, %m, %v : f32[1,2,4,4]
      %r = relu %n : f32[1,2,4,4]
      %y = {consumer} %r, %w3 : f32[1,2,4,4]
      return %y
    }}"""


@pytest.mark.parametrize("shift, consumer, kernel, removed", [
    (1.0, CONV3, 3, 1),    # constant 1 next to zero padding: removed, borders kept by a bias map
    (-1.0, CONV3, 3, 1),   # relu makes the channel exactly zero: padding is harmless
    (1.0, CONV1, 1, 1),    # no padding: the constant folds exactly into the bias
])
def test_zeroed_channel_with_a_batch_norm_shift(shift, consumer, kernel, removed):
    graph = parse_ir(_bn_then_conv(shift, consumer, kernel))
    folded, _ = run_pass("fold-batchnorm", graph)
    after, stats = run_pass("remove-pruned-channels", folded, **EXACT)
    assert stats["channels-removed"] == removed
    assert _conv_weights(after)[0].shape[0] == 2 - removed


def test_constant_channel_into_a_padded_conv_becomes_a_bias_map():
    # channel 1 of %r is relu(2) = 2 everywhere; the 3x3 conv reads it with zero padding, so
    # its contribution is 2 * (the sum of the taps that stay inside the image) at each position:
    # 2 * (5+6+8+9) = 56 at the top-left corner, 2 * 45 = 90 in the middle
    taps = ", ".join(f"{i}.0" for i in range(1, 10))
    text = f"""
    graph(%x: f32[1,1,3,3]) {{
      %w1 = const f32[2,1,1,1] [1.0, 0.0]
      %b1 = const f32[2] [0.0, 2.0]
      %w3 = const f32[1,2,3,3] [{", ".join(["1.0"] * 9)}, {taps}]
      %a = {CONV1} %x, %w1, %b1 : f32[1,2,3,3]
      %r = relu %a : f32[1,2,3,3]
      %y = {CONV3} %r, %w3 : f32[1,1,3,3]
      return %y
    }}"""
    after, stats = run_pass("remove-pruned-channels", text, **EXACT)
    _assert_ir(after, f"""
    graph(%0: f32[1,1,3,3]) {{
      %1 = const f32[1,1,1,1] [1.0]
      %2 = const f32[1] [0.0]
      %3 = {CONV1} %0, %1, %2 : f32[1,1,3,3]
      %4 = relu %3 : f32[1,1,3,3]
      %5 = const f32[1,1,3,3] [{", ".join(["1.0"] * 9)}]
      %6 = {CONV3} %4, %5 : f32[1,1,3,3]
      %7 = const f32[1,1,3,3] [56.0, 78.0, 48.0, 66.0, 90.0, 54.0, 32.0, 42.0, 24.0]
      %8 = add %6, %7 : f32[1,1,3,3]
      return %8
    }}""")
    assert stats["channels-removed"] == 1 and stats["bias-maps"] == 1
    fused, _ = run_pass("fuse", after)  # the map joins the conv's epilogue
    _assert_ir(fused, f"""
    graph(%0: f32[1,1,3,3]) {{
      %1 = const f32[1,1,1,1] [1.0]
      %2 = const f32[1] [0.0]
      %3 = fused_{CONV1[:-1]}, has_bias=true, epilogue=[{{"op": "relu"}}]] %0, %1, %2 : \
f32[1,1,3,3]
      %4 = const f32[1,1,3,3] [{", ".join(["1.0"] * 9)}]
      %5 = const f32[1,1,3,3] [56.0, 78.0, 48.0, 66.0, 90.0, 54.0, 32.0, 42.0, 24.0]
      %6 = fused_{CONV3[:-1]}, has_bias=false, epilogue=[{{"op": "add", "operand": 2, \
"side": "right"}}]] %3, %4, %5 : f32[1,1,3,3]
      return %6
    }}""")


def test_constant_channel_whose_taps_never_reach_the_padding_folds_into_the_bias():
    # only the centre tap reads the constant channel: its contribution is the same everywhere
    text = f"""
    graph(%x: f32[1,1,3,3]) {{
      %w1 = const f32[2,1,1,1] [1.0, 0.0]
      %b1 = const f32[2] [0.0, 2.0]
      %w3 = const f32[1,2,3,3] [{", ".join(["1.0"] * 9)}, {", ".join(["0.0"] * 4)}, 3.0, \
{", ".join(["0.0"] * 4)}]
      %a = {CONV1} %x, %w1, %b1 : f32[1,2,3,3]
      %r = relu %a : f32[1,2,3,3]
      %y = {CONV3} %r, %w3 : f32[1,1,3,3]
      return %y
    }}"""
    after, stats = run_pass("remove-pruned-channels", text, **EXACT)
    last = after.nodes[-1]
    assert last.op == "conv2d" and after.constant(last.inputs[2]).tolist() == [6.0]
    assert stats["channels-removed"] == 1 and "bias-maps" not in stats


@pytest.mark.parametrize("stride, dilation, size", [(2, 1, 5), (1, 2, 6), (2, 2, 7)])
def test_bias_map_of_strided_and_dilated_convs_is_exact(stride, dilation, size):
    rng = np.random.default_rng(stride * 10 + dilation)
    w3 = ", ".join(f"{v:.3f}" for v in rng.uniform(-1, 1, 3 * 3 * 3 * 3))
    conv = (f"conv2d[stride=[{stride}, {stride}], padding=[2, 1], dilation=[{dilation}, "
            f"{dilation}], groups=1]")
    out = [(size + 2 * p - dilation * 2 - 1) // stride + 1 for p in (2, 1)]
    text = f"""
    graph(%x: f32[1,1,{size},{size}]) {{
      %w1 = const f32[3,1,1,1] [1.0, 0.0, 0.0]
      %b1 = const f32[3] [0.0, 0.5, -1.5]
      %w3 = const f32[3,3,3,3] [{w3}]
      %a = {CONV1} %x, %w1, %b1 : f32[1,3,{size},{size}]
      %y = {conv} %a, %w3 : f32[1,3,{out[0]},{out[1]}]
      return %y
    }}"""
    # the map is exact in float64; atol 1e-6 covers float32 rounding of sums near 5 (ulp 5e-7)
    # that cancel to near 0 in a different order than the unpruned conv's
    after, stats = run_pass("remove-pruned-channels", text, rtol=1e-6, atol=1e-6)
    assert stats["channels-removed"] == 2 and stats["bias-maps"] == 1


def test_graph_inputs_and_outputs_keep_their_shapes():
    text = f"""
    graph(%x: f32[1,2,4,4]) {{
      %w1 = const f32[2,2,1,1] [1.0, 1.0, 0.0, 0.0]
      %a = {CONV1} %x, %w1 : f32[1,2,4,4]
      return %a
    }}"""
    after, stats = run_pass("remove-pruned-channels", text, **EXACT)
    assert after == parse_ir(text) and stats["channels-removed"] == 0


def test_pruned_resnet_compiles_smaller_and_exact():
    model, (x,) = zoo.build("resnet18", 2)
    with torch.no_grad():  # zero every other channel of each block's first conv and its BN
        for name, module in model.named_modules():
            if name.endswith("conv1") and name.startswith("layer"):
                bn = model.get_submodule(name[:-len("conv1")] + "bn1")
                idx = torch.arange(0, module.out_channels, 2)
                module.weight[idx] = 0
                bn.weight[idx] = 0
                bn.bias[idx] = 0
        expected = model(x)
    for target in ("reference", "cpu"):
        fast = compile(model, target)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
    record = fast.report.latest
    assert record.params_after < 0.6 * record.params_before
    removal = next(p for p in record.passes if p.name == "remove-pruned-channels")
    assert "layer1.0.conv1: 16 -> 8" in removal.stats["layers"]
