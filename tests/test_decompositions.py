"""aten ops that capture decomposes into existing IR ops (compiler/aten_decompose.py): conv1d,
group norm, weight norm, diff, adaptive_avg_pool1d, roll, bilinear and nearest upsampling,
triu/tril, pixel (un)shuffle, logsumexp and instance norm. Each must compile with no opaque
fallback and agree with eager torch; a decomposition that gets a shape or dtype wrong shows up as
a fallback (capture compares each converter's result type with torch's), so `fallbacks == []` is
the sharp check here.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from eager_match import compiled_matches

import fxforge

FLOAT_TARGETS = ["reference", "cpu"]


def _ops(compiled) -> list[str]:
    return [n.op for n in compiled.graph.nodes]


# --- conv1d -------------------------------------------------------------------------------------

CONV1D_VARIANTS = {
    "plain": {},
    "stride": dict(stride=2),
    "padding": dict(padding=2),
    "dilation": dict(dilation=2, padding=1),
    "groups": dict(groups=2),
    "depthwise": dict(groups=4, padding=1),
    "no-bias": dict(bias=False, stride=3),
    "same": dict(padding="same", dilation=2),
    "valid": dict(padding="valid"),
}


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("variant", CONV1D_VARIANTS)
def test_conv1d_module_becomes_conv2d(variant, target):
    torch.manual_seed(0)
    out_channels = 4 if variant == "depthwise" else 6
    model = nn.Conv1d(4, out_channels, 3, **CONV1D_VARIANTS[variant])
    compiled = compiled_matches(model, (torch.randn(2, 4, 17),), target)
    assert any(op in ("conv2d", "fused_conv2d") for op in _ops(compiled)), _ops(compiled)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_conv1d_on_an_unbatched_input(target):
    torch.manual_seed(0)
    compiled_matches(nn.Conv1d(3, 5, 3, padding=1), (torch.randn(3, 11),), target)


class FunctionalConv1d(nn.Module):
    """The weight is an input, not a constant: the unsqueeze of the weight stays in the graph."""

    def forward(self, x, w):
        return F.conv1d(x, w, stride=2, padding=1, groups=2)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_conv1d_with_a_weight_computed_at_run_time(target):
    torch.manual_seed(0)
    inputs = (torch.randn(2, 4, 15), torch.randn(6, 2, 3))
    compiled_matches(FunctionalConv1d(), inputs, target)


class RawConvolution(nn.Module):
    """aten.convolution itself, with 1-D stride/padding lists."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, 4))
        self.bias = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return torch.convolution(x, self.weight, self.bias, [2], [1], [1], False, [0], 1)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_one_dimensional_aten_convolution(target):
    torch.manual_seed(0)
    compiled_matches(RawConvolution(), (torch.randn(2, 3, 12),), target)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_asymmetric_same_padding_still_falls_back_and_runs():
    """"same" with an even kernel pads one more on the right: no conv2d padding says that."""
    torch.manual_seed(0)
    model = nn.Conv1d(2, 3, 4, padding="same").eval()
    x = torch.randn(1, 2, 9)
    compiled = fxforge.compile(model, "cpu", example_inputs=(x,))
    assert [f.aten for f in compiled.report.fallbacks] == ["aten.conv1d.padding"]
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 16, 5, stride=2, padding=2)
        self.b = nn.Conv1d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_conv1d_is_quantized_as_a_conv2d_on_cpu_int8():
    torch.manual_seed(0)
    model = Conv1dNet().eval()
    x = torch.randn(4, 4, 32)
    compiled = fxforge.compile(model, "cpu-int8", calibration=[x], example_inputs=(x,))
    assert compiled.report.fallbacks == []
    assert _ops(compiled).count("qconv2d") == 2, _ops(compiled)
    assert len(compiled.report.latest.quantization.layers) == 2
    with torch.no_grad():
        want = model(x)
    error = (compiled(x) - want).abs().max()
    assert error < 0.05 * (want.max() - want.min()), error


# --- group norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("shape", [(2, 8, 13), (2, 8, 5, 6)], ids=["3d", "4d"])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_group_norm(groups, shape, target):
    torch.manual_seed(0)
    model = nn.GroupNorm(groups, 8)
    with torch.no_grad():  # not the identity affine of a fresh module
        model.weight.normal_()
        model.bias.normal_()
    x = torch.randn(*shape) * 3 + 1
    compiled_matches(model, (x,), target)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_group_norm_without_affine(target):
    torch.manual_seed(0)
    compiled_matches(nn.GroupNorm(3, 6, affine=False, eps=1e-3), (torch.randn(3, 6, 7),), target)


class FunctionalGroupNorm(nn.Module):
    def forward(self, x, weight, bias):
        return F.group_norm(x, 4, weight, bias)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_group_norm_with_run_time_affine(target):
    torch.manual_seed(0)
    inputs = (torch.randn(2, 8, 10), torch.randn(8), torch.randn(8))
    compiled_matches(FunctionalGroupNorm(), inputs, target)


# --- weight norm --------------------------------------------------------------------------------


class WeightNormedConv(nn.Module):
    def __init__(self, dim, parametrized=False):
        super().__init__()
        conv = nn.Conv1d(4, 6, 3, padding=1)
        if parametrized:
            self.conv = nn.utils.parametrizations.weight_norm(conv, dim=dim)
        else:
            self.conv = nn.utils.weight_norm(conv, dim=dim)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The tensor attribute self.conv.weight was assigned")
@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("dim", [0, 2, None])
@pytest.mark.parametrize("parametrized", [False, True], ids=["old-style", "parametrizations"])
def test_weight_norm_folds_into_the_weight(parametrized, dim, target):
    torch.manual_seed(0)
    model = WeightNormedConv(dim, parametrized)
    compiled = compiled_matches(model, (torch.randn(2, 4, 9),), target)
    assert "sqrt" not in _ops(compiled)  # v and g are constants: the norm is folded away


class RawWeightNorm(nn.Module):
    """v and g as inputs, so the decomposition itself runs rather than constant folding."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, v, g):
        return torch._weight_norm(v, g, self.dim)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_weight_norm_computed_at_run_time(dim, target):
    torch.manual_seed(0)
    v = torch.randn(5, 3, 4)
    g_shape = () if dim == -1 else tuple(s if i == dim else 1 for i, s in enumerate(v.shape))
    compiled_matches(RawWeightNorm(dim), (v, torch.rand(g_shape) + 0.5), target)


# --- diff ---------------------------------------------------------------------------------------


class Diff(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return torch.diff(x, **self.kwargs)


class DiffWithPrepend(nn.Module):
    """What transformers' packed-sequence mask code does with position ids."""

    def forward(self, positions):
        return torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1)


class DiffWithBoth(nn.Module):
    def forward(self, x, before, after):
        return torch.diff(x, n=2, dim=0, prepend=before, append=after)


def _diff_input(dtype):
    torch.manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(3, 7) > 0.5
    if dtype == torch.int64:
        return torch.randint(-50, 50, (3, 7))
    return torch.randn(3, 7)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool],
                         ids=["f32", "i64", "bool"])
@pytest.mark.parametrize("kwargs", [dict(dim=-1), dict(dim=0), dict(n=2), dict(n=9, dim=0)],
                         ids=["last", "first", "twice", "beyond-length"])
def test_diff(kwargs, dtype, target):
    x = _diff_input(dtype)
    compiled_matches(Diff(**kwargs), (x,), target)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_diff_with_prepend_as_in_the_mask_code(target):
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]])
    compiled_matches(DiffWithPrepend(), (positions,), target)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_diff_with_prepend_and_append(target):
    torch.manual_seed(0)
    inputs = (torch.randn(4, 3), torch.randn(2, 3), torch.randn(1, 3))
    compiled_matches(DiffWithBoth(), inputs, target)


# --- adaptive_avg_pool1d (Swin's pooler) ---------------------------------------------------------


class AdaptivePool1d(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.adaptive_avg_pool1d(x, self.size)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("size", [1, 3, 7, 10])
@pytest.mark.parametrize("shape", [(2, 4, 7), (4, 7)], ids=["batched", "unbatched"])
def test_adaptive_avg_pool1d(shape, size, target):
    torch.manual_seed(0)
    compiled = compiled_matches(AdaptivePool1d(size), (torch.randn(*shape),), target)
    assert "adaptive_avg_pool2d" in _ops(compiled)


# --- roll (Swin's shifted windows) -------------------------------------------------------------


class Roll(nn.Module):
    def __init__(self, shifts, dims):
        super().__init__()
        self.shifts, self.dims = shifts, dims

    def forward(self, x):
        return torch.roll(x, self.shifts, self.dims)


ROLLS = {"swin": ((-2, -2), (1, 2)), "back": ((2, 2), (1, 2)), "one-dim": (3, -1),
         "beyond-length": (13, 2), "zero": (0, 1), "whole-length": (5, 3),
         "flattened": (7, None)}


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("roll", ROLLS)
def test_roll(roll, target):
    torch.manual_seed(0)
    shifts, dims = ROLLS[roll]
    model = Roll(shifts, dims) if dims is not None else Roll(shifts, ())
    compiled_matches(model, (torch.randn(2, 6, 6, 5),), target)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_roll_integers(target):
    compiled_matches(Roll((1, -3), (0, 1)), (torch.arange(20).reshape(4, 5),), target)


# --- upsampling (Segformer's and MobileViT's bilinear resize, nearest) -------------------------


class Interpolate(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs)


RESIZES = {
    "size-up": dict(size=(12, 17)), "size-down": dict(size=(3, 4)), "to-one": dict(size=(1, 1)),
    "one-dim-kept": dict(size=(5, 13)), "same": dict(size=(5, 7)),
    "x2": dict(scale_factor=2), "x0.5": dict(scale_factor=0.5),
    "x2.3": dict(scale_factor=2.3), "x1/3": dict(scale_factor=1 / 3),
    "x1.1-keeps-size": dict(scale_factor=(1.1, 1.7)),
    "recomputed": dict(scale_factor=2.3, recompute_scale_factor=True),
}


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("align_corners", [False, True], ids=["centres", "corners"])
@pytest.mark.parametrize("resize", RESIZES)
def test_upsample_bilinear(resize, align_corners, target):
    torch.manual_seed(0)
    model = Interpolate(mode="bilinear", align_corners=align_corners, **RESIZES[resize])
    compiled_matches(model, (torch.randn(2, 3, 5, 7),), target)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("resize", RESIZES)
def test_upsample_nearest_is_exact(resize, mode, target):
    torch.manual_seed(0)
    model = Interpolate(mode=mode, **RESIZES[resize])
    x = torch.randn(2, 3, 5, 7)
    compiled = fxforge.compile(model, target, example_inputs=(x,))
    assert compiled.report.fallbacks == []
    assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_upsample_bilinear_in_double(target):
    torch.manual_seed(0)
    model = Interpolate(scale_factor=1.7, mode="bilinear")
    compiled_matches(model, (torch.randn(1, 2, 6, 5, dtype=torch.float64),), target)


class RawUpsample(nn.Module):
    """The non-.vec overloads, with per-dim scales: nearest's reach capture, bilinear's come
    decomposed by torch.export (into aten._unsafe_index, converted as index, and arithmetic)."""

    def forward(self, x):
        return torch.ops.aten.upsample_bilinear2d.default(x, [8, 11], False, 1.5, 1.6), \
            torch.ops.aten.upsample_bilinear2d.default(x, [8, 11], True), \
            torch.ops.aten.upsample_nearest2d.default(x, [8, 11], 1.5, 1.6), \
            torch.ops.aten._upsample_nearest_exact2d.default(x, [8, 11])


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_upsample_default_overloads(target):
    torch.manual_seed(0)
    compiled = compiled_matches(RawUpsample(), (torch.randn(2, 3, 5, 7),), target)
    assert "index" in _ops(compiled)


def test_antialiased_bilinear_still_falls_back():
    x = torch.randn(1, 2, 9, 9)
    model = Interpolate(size=(4, 4), mode="bilinear", antialias=True)
    compiled = fxforge.compile(model, "cpu", example_inputs=(x,))
    assert [f.aten for f in compiled.report.fallbacks] == ["aten._upsample_bilinear2d_aa.vec"]
    torch.testing.assert_close(compiled(x), model(x))


# --- triu / tril, pixel shuffle, logsumexp, instance norm --------------------------------------


class Triangles(nn.Module):
    def forward(self, x, scores):
        causal = torch.triu(torch.full_like(scores, float("-inf")), diagonal=1)
        return torch.triu(x), torch.tril(x, -1), torch.triu(x, 2), torch.tril(x > 0, 1), \
            scores + causal


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_triu_tril(target):
    torch.manual_seed(0)
    compiled_matches(Triangles(), (torch.randn(2, 4, 6), torch.randn(2, 5, 5)), target)


class Shuffles(nn.Module):
    def forward(self, x):
        return F.pixel_shuffle(x, 2), F.pixel_unshuffle(x, 2), F.pixel_shuffle(x[0], 2)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_pixel_shuffle_and_unshuffle(target):
    torch.manual_seed(0)
    compiled = compiled_matches(Shuffles(), (torch.randn(2, 8, 4, 6),), target)
    assert "permute" in _ops(compiled)


class LogSumExp(nn.Module):
    def forward(self, x):
        return torch.logsumexp(x, -1), torch.logsumexp(x, (0, 2), keepdim=True), \
            torch.logsumexp(x * 100, 1)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_logsumexp(target):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5)
    x[0, 0] = float("-inf")  # a whole row of -inf: torch takes the max as 0, giving -inf
    compiled_matches(LogSumExp(), (x,), target)


class InstanceNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.InstanceNorm2d(4)
        self.affine = nn.InstanceNorm1d(4, affine=True)
        self.tracked = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        with torch.no_grad():
            self.affine.weight.normal_()
            self.affine.bias.normal_()
            self.tracked.running_mean.normal_()
            self.tracked.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.plain(x), self.affine(x.flatten(2)), self.tracked(x)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_instance_norm(target):
    torch.manual_seed(0)
    compiled_matches(InstanceNorms(), (torch.randn(2, 4, 5, 6) * 3 + 1,), target)
