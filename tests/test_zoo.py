"""Every zoo model compiles for `reference` and `cpu` and matches eager PyTorch.

Tolerance: float32, rtol 1e-4 and atol 1e-5, at batch 1 and batch 8, every output leaf.
"""

import pytest
import torch
import torch.utils._pytree as pytree

from fxforge import compile, zoo

RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_matches_eager(name, target, batch):
    model, inputs = zoo.build(name, batch)
    with torch.no_grad():
        expected = model(*inputs)
    compiled = compile(model, target)
    got = compiled(*inputs)

    assert type(got) is type(expected)
    exp_leaves, exp_spec = pytree.tree_flatten(expected)
    got_leaves, got_spec = pytree.tree_flatten(got)
    assert got_spec == exp_spec
    for e, g in zip(exp_leaves, got_leaves):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)
    assert compiled.report.fallbacks == [], compiled.report.fallbacks
    assert compiled.report.captures == 1


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "transformer"])
def test_check_against_reference_is_small(name):
    model, inputs = zoo.build(name, 2)
    errors = compile(model, "cpu").check(*inputs)
    assert errors and all(err < 1e-4 for err in errors.values()), errors


def test_zoo_models_have_the_advertised_structure():
    graphs = {}
    for name in ("resnet18", "mobilenetv2", "transformer"):
        model, inputs = zoo.build(name, 1)
        graphs[name] = compile(model, "cpu", example_inputs=inputs).captured_graph
    ops_of = {name: {n.op for n in g.nodes} for name, g in graphs.items()}
    assert {"conv2d", "batch_norm", "add", "relu", "max_pool2d"} <= ops_of["resnet18"]
    assert {"conv2d", "batch_norm", "clamp", "add"} <= ops_of["mobilenetv2"]
    depthwise = [n for n in graphs["mobilenetv2"].nodes
                 if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert depthwise and all(n.attrs["groups"] == n.inputs[0].type.shape[1] for n in depthwise)
    assert {"layer_norm", "scaled_dot_product_attention", "softmax", "matmul", "gelu",
            "embedding"} <= ops_of["transformer"]
