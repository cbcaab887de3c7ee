"""prune_channels: structured pruning whose zero channels `compile` removes exactly."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune

import fxforge
from fxforge import compile, prune_channels, zoo
from fxforge.passes.registry import PASSES
from fxforge.pruning import kept_count, pruning_plan
from fxforge.report import count_flops, count_params

RTOL, ATOL = 1e-4, 1e-5


def zero_rows(t: torch.Tensor) -> tuple[int, ...]:
    """Indices along axis 0 where the tensor is all zero."""
    flat = t.detach().reshape(t.shape[0], -1)
    return tuple(torch.nonzero((flat == 0).all(dim=1)).flatten().tolist())


def eager(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def without_removal(compiled) -> tuple[int, int]:
    """Params and FLOPs of the same pipeline without `remove-pruned-channels`."""
    graph = compiled.captured_graph
    for name in compiled.report.pipeline:
        if name != "remove-pruned-channels":
            graph, _ = PASSES[name](graph)
    return count_params(graph), count_flops(graph)


def check_compiles_smaller(pruned, inputs):
    """The compiled pruned model matches it in eager mode and lost parameters and FLOPs."""
    compiled = compile(pruned, "cpu", example_inputs=inputs)
    torch.testing.assert_close(compiled(*inputs), eager(pruned, inputs), rtol=RTOL, atol=ATOL)
    params, flops = without_removal(compiled)
    record = compiled.report.latest
    assert record.params_after < params and record.flops_after < flops
    return compiled


def conv_widths(graph) -> dict[str, int]:
    return {n.provenance.module: n.inputs[1].type.shape[0] for n in graph.nodes
            if n.op in ("conv2d", "fused_conv2d")}


# --- ResNet-18 at 0.5 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    model, x = zoo.build("resnet18", 2)
    calls = []
    hook = model.layer1.register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for name, m in model.named_modules()}
    pruned = prune_channels(model, 0.5, x)
    original = compile(model, "cpu", example_inputs=x)
    compiled = compile(pruned, "cpu", example_inputs=x)
    yield dict(model=model, x=x, pruned=pruned, before=before, hooks=hooks, original=original,
               compiled=compiled)
    hook.remove()


def test_resnet18_half_pruned_matches_and_compiles_much_smaller(resnet18):
    x, pruned, compiled = resnet18["x"], resnet18["pruned"], resnet18["compiled"]
    torch.testing.assert_close(compiled(*x), eager(pruned, x), rtol=RTOL, atol=ATOL)
    # pruning changed the function: the model is now a different (to be fine-tuned) one
    assert not torch.allclose(eager(pruned, x), eager(resnet18["model"], x))
    full, small = resnet18["original"].report.latest, compiled.report.latest
    assert small.params_after <= 0.55 * full.params_after, (small.params_after, full.params_after)
    assert small.flops_after <= 0.55 * full.flops_after, (small.flops_after, full.flops_after)
    widths = conv_widths(compiled.graph)
    full_widths = conv_widths(resnet18["original"].graph)
    assert widths["stem.0"] == 8 and widths["layer4.1.conv1"] == 64
    assert all(widths[k] == full_widths[k] // 2 for k in full_widths)


def test_resnet18_input_model_untouched(resnet18):
    model = resnet18["model"]
    state = model.state_dict()
    assert state.keys() == resnet18["before"].keys()
    for k, v in resnet18["before"].items():
        assert torch.equal(state[k], v), k
    assert not any(m.training for m in model.modules())
    assert not any(m.training for m in resnet18["pruned"].modules())
    for name, m in model.named_modules():
        assert (dict(m._forward_hooks), dict(m._forward_pre_hooks)) == resnet18["hooks"][name]
    assert resnet18["pruned"] is not model
    pruned_params = {id(p) for p in resnet18["pruned"].parameters()}
    assert not pruned_params & {id(p) for p in model.parameters()}


def test_resnet18_residual_chain_shares_zeroed_channels(resnet18):
    p = resnet18["pruned"]
    # everything added into one residual chain: the stem and each block's last conv and BN
    chains = [
        [p.stem[0], p.layer1[0].conv2, p.layer1[1].conv2],
        [p.layer2[0].downsample[0], p.layer2[0].conv2, p.layer2[1].conv2],
        [p.layer3[0].downsample[0], p.layer3[0].conv2, p.layer3[1].conv2],
        [p.layer4[0].downsample[0], p.layer4[0].conv2, p.layer4[1].conv2],
    ]
    norms = [
        [p.stem[1], p.layer1[0].bn2, p.layer1[1].bn2],
        [p.layer2[0].downsample[1], p.layer2[0].bn2, p.layer2[1].bn2],
        [p.layer3[0].downsample[1], p.layer3[0].bn2, p.layer3[1].bn2],
        [p.layer4[0].downsample[1], p.layer4[0].bn2, p.layer4[1].bn2],
    ]
    for convs, bns in zip(chains, norms):
        zeroed = zero_rows(convs[0].weight)
        assert len(zeroed) == convs[0].out_channels // 2
        for conv in convs:
            assert zero_rows(conv.weight) == zeroed
        for bn in bns:
            assert zero_rows(bn.weight) == zeroed and zero_rows(bn.bias) == zeroed
    # a block's inner conv is a group of its own, pruned by its own importance
    inner = p.layer2[1].conv1
    assert len(zero_rows(inner.weight)) == 16
    assert zero_rows(p.layer2[1].bn1.bias) == zero_rows(inner.weight)


def test_resnet18_plan_summary_matches_the_model(resnet18):
    plan = pruning_plan(resnet18["model"], 0.5, resnet18["x"])
    assert plan.layers["layer3.0.conv1"] == (64, 32)
    assert plan.layers["stem.0"] == (16, 8)
    assert "fc" not in plan.layers and any(s.startswith("fc:") for s in plan.skipped)
    pruned = resnet18["pruned"]
    for layer, channels in plan.zeroed.items():
        assert zero_rows(pruned.get_submodule(layer).weight) == channels, layer
    again = plan.apply(copy.deepcopy(resnet18["model"]))
    for (k, a), b in zip(again.state_dict().items(), pruned.state_dict().values()):
        assert torch.equal(a, b), k


# --- round_to -----------------------------------------------------------------------------------


def test_kept_count_rounds_up_and_keeps_one():
    assert kept_count(16, 0.5, 1) == 8
    assert kept_count(32, 0.3, 8) == 24  # 32 - 9 = 23 -> 24
    assert kept_count(16, 0.3, 8) == 16  # 12 -> 16: nothing pruned
    assert kept_count(12, 0.5, 8) == 8
    assert kept_count(6, 0.5, 8) == 6  # never above the total
    assert kept_count(3, 0.9, 1) == 1  # never empty
    assert kept_count(10, 0.0, 4) == 10


def test_round_to_8_keeps_conv_widths_multiples_of_8():
    model, x = zoo.build("resnet18", 2)
    pruned = prune_channels(model, 0.3, x, round_to=8)
    compiled = compile(pruned, "cpu", example_inputs=x)
    torch.testing.assert_close(compiled(*x), eager(pruned, x), rtol=RTOL, atol=ATOL)
    full = {name: m.out_channels for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}
    widths = conv_widths(compiled.graph)
    assert widths.keys() == full.keys()
    for name, width in widths.items():
        assert width % 8 == 0 or width == full[name], (name, width)
        assert width == kept_count(full[name], 0.3, 8), (name, width)
    assert sum(widths.values()) < sum(full.values())


# --- dependency groups in other shapes ----------------------------------------------------------


def test_mobilenetv2_depthwise_follows_its_producer():
    model, x = zoo.build("mobilenetv2", 2)
    pruned = prune_channels(model, 0.5, x)
    compiled = check_compiles_smaller(pruned, x)
    blocks = [m for m in pruned.modules() if isinstance(m, zoo.InvertedResidual)]
    expanded = [b for b in blocks if len(b.conv) == 3]
    assert expanded
    for block in expanded:
        expand, depthwise = block.conv[0][0], block.conv[1][0]
        assert depthwise.groups == depthwise.in_channels > 1
        zeroed = zero_rows(expand.weight)
        assert len(zeroed) == expand.out_channels // 2
        assert zero_rows(depthwise.weight) == zeroed
        for bn in (block.conv[0][1], block.conv[1][1]):
            assert zero_rows(bn.weight) == zeroed and zero_rows(bn.bias) == zeroed
    # the depthwise convs were narrowed with their producers
    for n in compiled.graph.nodes:
        if n.op in ("conv2d", "fused_conv2d") and n.provenance.module.endswith("conv.1.0"):
            block = pruned.get_submodule(n.provenance.module.rsplit(".conv", 1)[0])
            if len(block.conv) == 3:
                assert n.attrs["groups"] == n.inputs[1].type.shape[0] == \
                    block.conv[1][0].out_channels // 2


class CatBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
        self.head = nn.Conv2d(24, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = torch.cat([self.a(h), self.b(h)], dim=1)
        return self.fc(F.relu(self.head(h)).mean((2, 3)))


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(self.conv(x), 1))))


def _small(cls):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.randomize_norms(cls())
        return model, (torch.randn(2, 3, 8, 8),)


def test_cat_of_two_branches_prunes_each_branch():
    model, x = _small(CatBranches)
    pruned = prune_channels(model, 0.5, x)
    compiled = check_compiles_smaller(pruned, x)
    assert len(zero_rows(pruned.a[0].weight)) == 8 and len(zero_rows(pruned.b[0].weight)) == 4
    assert zero_rows(pruned.a[1].weight) == zero_rows(pruned.a[0].weight)
    head = next(n for n in compiled.graph.nodes if n.provenance.module == "head")
    assert head.inputs[1].type.shape[:2] == (8, 12)  # 8 + 4 channels left of the cat


def test_flatten_into_linear_prunes_features():
    model, x = _small(FlattenHead)
    pruned = prune_channels(model, 0.5, x)
    compiled = check_compiles_smaller(pruned, x)
    assert len(zero_rows(pruned.conv[0].weight)) == 8
    assert len(zero_rows(pruned.fc1.weight)) == 16
    fc1 = next(n for n in compiled.graph.nodes if n.provenance.module == "fc1")
    assert fc1.inputs[1].type.shape == (16, 8 * 4 * 4)


# --- importance ---------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """Filter norms grow with the channel index, batch-norm scales shrink with it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(1.0, 9.0)[:, None, None, None]
                                   * torch.ones(8, 3, 3, 3))
            self.bn.weight.copy_(torch.arange(8.0, 0.0, -1.0))
            self.bn.bias.fill_(0.1)
            self.bn.running_mean.fill_(0.3)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))))


def test_bn_importance_follows_the_scales_not_the_filters():
    model, x = ConvBN().eval(), (torch.randn(2, 3, 6, 6),)
    by_l1 = prune_channels(model, 0.5, x)
    by_bn = prune_channels(model, 0.5, x, importance="bn")
    assert zero_rows(by_l1.conv.weight) == (0, 1, 2, 3)
    assert zero_rows(by_bn.conv.weight) == (4, 5, 6, 7)
    assert zero_rows(by_bn.bn.weight) == zero_rows(by_bn.bn.bias) == (4, 5, 6, 7)
    check_compiles_smaller(by_bn, x)


def test_bn_importance_needs_a_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError, match="importance='bn' needs a batch norm"):
        prune_channels(model, 0.5, torch.randn(1, 3, 6, 6), importance="bn")


def test_training_mode_and_requires_grad_are_kept():
    model, x = ConvBN().train(), (torch.randn(2, 3, 6, 6),)
    model.head.weight.requires_grad_(False)
    pruned = prune_channels(model, 0.5, x)
    assert model.training and all(m.training for m in pruned.modules())
    assert not pruned.head.weight.requires_grad and pruned.conv.weight.requires_grad
    assert zero_rows(model.conv.weight) == ()


def test_constant_that_is_not_a_parameter_leaves_its_group_alone():
    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.register_buffer("offset", torch.linspace(0.1, 0.8, 8)[:, None, None])
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(F.relu(self.conv(x) + self.offset))

    model, x = Offset().eval(), (torch.randn(1, 3, 6, 6),)
    plan = pruning_plan(model, 0.5, x)
    assert plan.edits == [] and any(s.startswith("conv:") for s in plan.skipped)
    pruned = plan.apply(copy.deepcopy(model))
    torch.testing.assert_close(eager(pruned, x), eager(model, x))


class SqueezeExcite(nn.Module):
    """A gate multiplies the main path: sigmoid(0) = 0.5 inside, zero where a layer reads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.excite = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3), keepdim=True)))))
        return self.head(h * gate)


def test_squeeze_excite_gate_is_pruned_with_its_path():
    model, x = _small(SqueezeExcite)
    plan = pruning_plan(model, 0.5, x)
    assert plan.layers == {"conv": (8, 4), "excite": (8, 4), "squeeze": (4, 2)}
    pruned = plan.apply(copy.deepcopy(model))
    assert zero_rows(pruned.conv.weight) == zero_rows(pruned.excite.weight)
    check_compiles_smaller(pruned, x)


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"amount": 1.0}, ValueError, r"amount must be in \[0, 1\)"),
    ({"amount": -0.1}, ValueError, r"amount must be in \[0, 1\)"),
    ({"amount": math.nan}, ValueError, r"amount must be in \[0, 1\)"),
    ({"amount": "half"}, TypeError, "amount must be a number"),
    ({"importance": "l2"}, ValueError, "unknown importance 'l2'"),
    ({"round_to": 0}, ValueError, "round_to must be >= 1"),
    ({"round_to": 2.5}, TypeError, "round_to must be an int"),
    ({"model": "resnet"}, TypeError, "expects a torch.nn.Module, got str"),
    ({"example_inputs": 3}, TypeError, "example_inputs must be"),
])
def test_bad_arguments_are_refused_clearly(kwargs, error, match):
    args = {"model": nn.Conv2d(3, 4, 1), "amount": 0.5, "example_inputs": torch.randn(1, 3, 4, 4),
            **kwargs}
    with pytest.raises(error, match=match):
        fxforge.prune_channels(**args)


# --- torch.nn.utils.prune, compiled -------------------------------------------------------------


class ZeroedFilters(nn.Module):
    """conv -> BN -> activation -> conv with random geometry; `ln_structured`-style zeroed
    filters in the first conv (its BN untouched), so the second conv reads nonzero constants."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def pick(*options):
            return options[int(torch.randint(len(options), (1,), generator=g))]

        k2 = pick(1, 3, 5)
        self.conv1 = nn.Conv2d(3, 8, pick(1, 3), padding="same", bias=pick(True, False))
        self.bn = nn.BatchNorm2d(8)
        self.act = pick(nn.ReLU(), nn.Identity(), nn.Hardswish(), nn.Sigmoid())
        self.conv2 = nn.Conv2d(8, 5, k2, stride=pick(1, 2), padding=pick(0, k2 // 2, k2 - 1),
                               dilation=pick(1, 2))
        self.size = pick(9, 10, 13)  # >= the largest dilated kernel, 9
        zoo.randomize_norms(self)
        with torch.no_grad():
            self.conv1.weight[torch.randperm(8, generator=g)[:5]] = 0
            if self.conv1.bias is not None:
                self.conv1.bias.uniform_(-1, 1, generator=g)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


@pytest.mark.parametrize("seed", range(12))
def test_zeroed_filters_before_any_conv_geometry_are_removed_exactly(seed):
    torch.manual_seed(seed)
    model = ZeroedFilters(seed)
    x = (torch.randn(2, 3, model.size, model.size),)
    compiled = compile(model, "cpu", example_inputs=x)
    torch.testing.assert_close(compiled(*x), eager(model, x), rtol=RTOL, atol=ATOL)
    assert conv_widths(compiled.graph)["conv1"] == 3  # the five zeroed filters are gone


@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")
def test_ln_structured_resnet50_bottlenecks_compile_narrower():
    model, x = zoo.build("resnet50", 2)
    original = compile(model, "cpu", example_inputs=x)
    pruned = copy.deepcopy(model)
    convs = {}
    for name, block in pruned.named_modules():
        if isinstance(block, zoo.Bottleneck):
            torch_prune.ln_structured(block.conv2[0], "weight", amount=0.5, n=1, dim=0)
            convs[f"{name}.conv2.0"] = block.conv2[0].out_channels
    compiled = compile(pruned, "cpu", example_inputs=x)
    torch.testing.assert_close(compiled(*x), eager(pruned, x), rtol=RTOL, atol=ATOL)
    assert compiled.report.latest.params_after < original.report.latest.params_after
    assert compiled.report.latest.flops_after < original.report.latest.flops_after
    widths = conv_widths(compiled.graph)
    assert len(convs) == 16
    for name, full in convs.items():
        assert widths[name] == full // 2, name


@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")
def test_ln_structured_resnet18_first_convs_removed_with_bias_maps():
    """Issue #3: `ln_structured(0.5)` on the first conv of every basic block zeroes filters but
    not the batch norm, so each pruned channel is the constant relu(BN shift) where the block's
    zero-padded second conv reads it; removing it is exact with a per-position bias map, which
    `fuse` takes into that conv's epilogue. Outputs within rtol 1e-4 / atol 1e-5 of eager."""
    model, x = zoo.build("resnet18", 2)
    original = compile(model, "cpu", example_inputs=x)
    pruned = copy.deepcopy(model)
    blocks = {name: block for name, block in pruned.named_modules()
              if isinstance(block, zoo.BasicBlock)}
    for block in blocks.values():
        torch_prune.ln_structured(block.conv1, "weight", amount=0.5, n=1, dim=0)
    assert len(blocks) == 8
    # the batch norms are untouched: most pruned channels are nonzero constants after ReLU
    shifts = [torch.relu(b.bn1.bias - b.bn1.running_mean * b.bn1.weight
                         / torch.sqrt(b.bn1.running_var + b.bn1.eps))[list(zero_rows(
                             b.conv1.weight))] for b in blocks.values()]
    assert sum(int((s != 0).sum()) for s in shifts) > 0.3 * sum(s.numel() for s in shifts)
    compiled = compile(pruned, "cpu", example_inputs=x)
    torch.testing.assert_close(compiled(*x), eager(pruned, x), rtol=RTOL, atol=ATOL)
    full, small = original.report.latest, compiled.report.latest
    assert small.params_after <= 0.55 * full.params_after, (small.params_after, full.params_after)
    assert small.flops_after <= 0.55 * full.flops_after, (small.flops_after, full.flops_after)
    removal = next(p for p in small.passes if p.name == "remove-pruned-channels")
    assert removal.stats["bias-maps"] == 8
    widths = conv_widths(compiled.graph)
    full_widths = conv_widths(original.graph)
    for name in blocks:
        assert widths[f"{name}.conv1"] == full_widths[f"{name}.conv1"] // 2, name
        assert widths[f"{name}.conv2"] == full_widths[f"{name}.conv2"], name
    # each second conv carries its bias map, the residual add and the ReLU in its epilogue
    second = [n for n in compiled.graph.nodes if n.provenance.module.endswith("conv2")]
    assert len(second) == 8 and not any(n.op in ("add", "relu") for n in compiled.graph.nodes)
    for node in second:
        assert node.op == "fused_conv2d"
        assert [s["op"] for s in node.attrs["epilogue"]] == ["add", "add", "relu"]
        bias_map = node.inputs[node.attrs["epilogue"][0]["operand"]]
        assert bias_map.type.shape == (1, *node.output.type.shape[1:])
