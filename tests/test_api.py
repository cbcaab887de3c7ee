"""compile() as a user meets it: structure of inputs and outputs, signatures, errors, report."""

import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxforge
from fxforge import (
    TARGETS,
    CaptureError,
    InputError,
    PipelineError,
    UnsupportedModelError,
    compile,
    zoo,
)
from fxforge.errors import DeviceUnavailableError
from fxforge.targets import TARGET_INFO

RTOL, ATOL = 1e-4, 1e-5


class Nested(nn.Module):
    """Keyword inputs with defaults, a non-tensor input and a nested output structure."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, y=None, scale: int = 2):
        h = self.fc(x) * scale
        if y is not None:
            h = h + y
        return {"h": h, "pair": (h.relu(), [x, None]), "n": scale}


def _assert_same(got, expected):
    assert type(got) is type(expected)
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for k in expected:
            _assert_same(got[k], expected[k])
    elif isinstance(expected, (tuple, list)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_same(a, b)
    else:
        assert got == expected


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_nested_inputs_and_outputs_keep_the_users_structure(target):
    torch.manual_seed(0)
    model = Nested().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    fast = compile(model, target)
    for call in [((x,), {}), ((x, y), {}), ((x,), {"y": y}), ((x,), {"y": y, "scale": 3}),
                 ((), {"x": x, "scale": 5})]:
        args, kwargs = call
        with torch.no_grad():
            expected = model(*args, **kwargs)
        _assert_same(fast(*args, **kwargs), expected)
    # keyword and positional spellings of the same call share a capture; each new value of the
    # non-tensor input `scale` and the presence of `y` are new signatures
    assert fast.report.captures == 4


def test_capture_is_cached_per_signature():
    model, _ = zoo.build("mlp")
    fast = compile(model, "cpu")
    for batch in (1, 4, 1, 4, 2):
        x = torch.randn(batch, 64)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert fast.report.captures == 3
    assert len(fast.graphs) == 3
    assert fast.graph.inputs[0].type.shape == (2, 64)  # the most recent signature
    fast(torch.randn(3, 64))  # a fourth shape is a fourth capture
    assert fast.report.captures == 4


def test_new_dtype_is_a_new_capture():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2 + 1

    fast = compile(Scale(), "cpu")
    a = fast(torch.ones(3))
    b = fast(torch.ones(3, dtype=torch.float64))
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    assert fast.report.captures == 2
    assert {g.inputs[0].type.dtype for g in fast.graphs} == {"f32", "f64"}


def test_example_inputs_fix_the_signature():
    model, (x,) = zoo.build("resnet18", 2)
    fast = compile(model, "cpu", example_inputs=x)
    assert fast.report.captures == 1
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(InputError, match=r"input 'x'.*f32\[2,3,32,32\].*f64\[2,3,32,32\]"):
        fast(x.double())
    with pytest.raises(InputError, match=r"f32\[2,3,32,32\].*f32\[1,3,32,32\]"):
        fast(x[:1])
    with pytest.raises(InputError, match=r"ResNet.forward\(x\): too many positional arguments"):
        fast(x, x)
    with pytest.raises(InputError, match="missing a required argument"):
        fast()
    assert fast.report.captures == 1


def test_example_inputs_as_tuple_and_dict():
    model = Nested().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    by_tuple = compile(model, "cpu", example_inputs=(x, y))
    by_dict = compile(model, "cpu", example_inputs={"x": x, "y": y})
    with torch.no_grad():
        expected = model(x, y)
    _assert_same(by_tuple(x, y), expected)
    _assert_same(by_dict(x, y=y), expected)
    with pytest.raises(TypeError, match="example_inputs must be"):
        compile(model, "cpu", example_inputs=3)


def test_compile_leaves_the_model_untouched():
    model, (x,) = zoo.build("resnet18", 2)
    model.train()
    model.layer2.eval()  # mixed flags must come back exactly as they were
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}

    def hooks():
        return {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                       len(m._state_dict_hooks), len(m._load_state_dict_pre_hooks))
                for name, m in model.named_modules()}

    before_hooks = hooks()
    fast = compile(model, "cpu")
    fast(x)
    fast(x[:1])
    fast.check(x)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert hooks() == before_hooks
    for k, v in model.state_dict().items():
        old, ptr = state[k]
        assert v.data_ptr() == ptr, k
        assert torch.equal(v, old), k


def test_compiled_model_does_not_alias_the_weights():
    model, (x,) = zoo.build("mlp", 2)
    fast = compile(model, "cpu", example_inputs=x)
    before = fast(x)
    with torch.no_grad():
        model.fc1.weight.add_(1.0)  # the user changes their model after compiling
    torch.testing.assert_close(fast(x), before, rtol=0, atol=0)


def test_training_mode_model_is_compiled_for_inference_and_says_so():
    model, (x,) = zoo.build("mlp", 4)
    model.train()
    fast = compile(model, "cpu")
    got = fast(x)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=RTOL, atol=ATOL)
    assert "training mode" in str(fast.report)


def test_not_a_module():
    with pytest.raises(TypeError, match="expects a torch.nn.Module, an .onnx path or an "
                                        "onnx.ModelProto, got function"):
        compile(lambda x: x)


def test_unknown_targets():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown target 'gpu'") as info:
        compile(model, "gpu")
    for name in TARGETS:
        assert name in str(info.value)
    assert fxforge.TARGETS == TARGETS
    assert {"reference", "cpu", "reference-int8", "cpu-int8", "ort", "ort-int8", "cuda",
            "cuda-fp16", "cuda-int8", "cuda-int4"} == set(TARGETS)


def test_unknown_option_and_pass():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="unknown option.*'fast'"):
        compile(model, "cpu", fast=True)
    with pytest.raises(PipelineError, match="unknown pass.*'fold-everything'.*known passes:.*dce"):
        compile(model, "cpu", passes="dce,fold-everything")


def test_calibration_for_a_float_target_warns():
    with pytest.warns(UserWarning, match="only used by int8 targets"):
        compile(nn.Linear(2, 2), "cpu", calibration=[torch.randn(1, 2)])


class Inner(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x * 2
        return x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = nn.Sequential(nn.Linear(4, 4), Inner())

    def forward(self, x):
        return self.blk(x)


def test_uncapturable_model_names_the_module_and_suggests_a_fix():
    fast = compile(Outer(), "cpu")
    with pytest.raises(CaptureError) as info:
        fast(torch.randn(2, 4))
    message = str(info.value)
    assert "could not capture Outer" in message
    assert "in module blk.1 (Inner.forward" in message
    assert "torch.cond" in message or "torch.where" in message


def test_model_that_mutates_a_buffer_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x + self.calls

    with pytest.raises(UnsupportedModelError, match="mutates 'calls'"):
        compile(Counter(), "cpu", example_inputs=torch.ones(2))


def test_graph_before_capture_has_a_helpful_error():
    fast = compile(nn.Linear(2, 2), "cpu")
    with pytest.raises(RuntimeError, match="not captured yet"):
        _ = fast.graph
    assert "not captured yet" in str(fast.report)


def test_unsupported_op_falls_back_to_torch_and_is_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return torch.cummax(self.fc(x), dim=1).values.flip(0)

    torch.manual_seed(0)
    model = Odd().eval()
    x = torch.randn(3, 5)
    for target in ("reference", "cpu"):
        fast = compile(model, target)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
        fallbacks = {f.aten for f in fast.report.fallbacks}
        assert fallbacks == {"aten.cummax.default", "aten.flip.default"}
        assert "aten.cummax.default" in str(fast.report)
        ops = [n.op for n in fast.graph.nodes]
        assert ops.count("torch_op") == 2 and "linear" in ops


def test_report_contents_and_dict():
    model, (x,) = zoo.build("resnet18", 2)
    fast = compile(model, "cpu", example_inputs=x)
    report = fast.report
    data = report.to_dict()
    json.dumps(data)  # plain data all the way down
    record = data["records"][0]
    assert data["target"] == "cpu" and data["captures"] == 1
    assert record["signature"] == "x: f32[2,3,32,32]"
    assert record["params_before"] == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if "num_batches" not in name)
    # conv FLOPs (2 * MACs), counted independently with forward hooks on eager convs
    conv_flops: list[int] = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: conv_flops.append(2 * out.numel() * mod.weight[0].numel()))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    graph_conv_flops = sum(2 * n.output.type.numel * n.inputs[1].type.numel
                           // n.inputs[1].type.shape[0]
                           for n in fast.captured_graph.nodes if n.op == "conv2d")
    assert graph_conv_flops == sum(conv_flops) > 0
    assert record["flops_before"] > sum(conv_flops)
    assert [p["name"] for p in record["passes"]] == list(TARGET_INFO["cpu"].pipeline)
    text = str(report)
    for needle in ("target cpu", "captures: 1", "params", "FLOPs", "fold-batchnorm", "folded=20",
                   "fallbacks: none"):
        assert needle in text


def test_check_reports_error_per_named_output():
    model, (ids,) = zoo.build("transformer", 2)
    errors = compile(model, "cpu").check(ids)
    assert set(errors) == {"['logits']", "['hidden']"}
    assert all(0 <= e < 1e-4 for e in errors.values())


def test_reference_target_runs_tensors_and_returns_tensors():
    model, (x,) = zoo.build("mlp", 3)
    fast = compile(model, "reference")
    out = fast(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


def test_warnings_do_not_leak_from_capture():
    model, (x,) = zoo.build("mlp", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        compile(model, "cpu")(x)


def test_relu6_hardtanh_and_scalars_follow_torch_promotion():
    class Mixed(nn.Module):
        def forward(self, x, n):
            return F.relu6(x * 7) + F.hardtanh(x), (n + 1.5), (n * 2), x.half() + 0.1

    x, n = torch.randn(4), torch.arange(4)
    model = Mixed()
    for target in ("reference", "cpu"):
        got = compile(model, target)(x, n)
        expected = model(x, n)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype
            torch.testing.assert_close(g, e, rtol=1e-3 if e.dtype == torch.half else RTOL,
                                       atol=1e-3 if e.dtype == torch.half else ATOL)


HOSTILE = "evil' # ) %x = import\\os; ü"


def _hostile(name):
    class Hostile(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(name, nn.Linear(3, 3))

        def forward(self, x):
            return getattr(self, name)(x).relu()

    return Hostile().eval()


def test_names_torch_export_cannot_print_compile_under_stand_ins():
    # torch.export writes names into code it executes; fxforge captures under stand-in names
    # (fxforge/shadow.py) and keeps the real ones for provenance
    for name in ('a"b', "a\nb", "a\rb"):
        model = _hostile(name)
        fast = compile(model, "cpu", example_inputs=torch.randn(2, 3))
        linear = next(n for n in fast.graph.nodes if n.op in ("linear", "fused_linear"))
        assert linear.provenance.module == name
        x = torch.randn(2, 3)
        torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


def test_hostile_module_names_are_carried_safely():
    torch.manual_seed(0)
    model = _hostile(HOSTILE)
    fast = compile(model, "cpu", example_inputs=torch.randn(2, 3))
    graph = fast.graph
    text = str(graph)
    assert fxforge.parse_ir(text) == graph
    assert len(text.splitlines()) == len(graph.nodes) + 3  # no name broke a line
    linear = next(n for n in graph.nodes if n.op in ("linear", "fused_linear"))
    assert linear.provenance.module == HOSTILE
    assert all(c.isalnum() or c == "_" for n in graph.nodes for v in n.outputs for c in v.name)
    x = torch.randn(2, 3)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("target", ["cuda", "cuda-fp16", "cuda-int8", "cuda-int4"])
def test_cuda_targets_without_a_gpu_say_what_to_do(target, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(DeviceUnavailableError, match="TRITON_INTERPRET=1") as info:
        compile(nn.Linear(2, 2), target)
    assert target in str(info.value) and "cpu" in str(info.value)
