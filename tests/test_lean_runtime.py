"""The lean call path of the torch backend: a seen call of plain tensors skips binding and
flattening, and the graph runs as generated straight-line code. Results must be identical to
the node-by-node loop (bitwise: the same torch ops in the same order), an error must still name
the node and module path, and the generated source must hold only generated identifiers."""

from __future__ import annotations

import io
import re
import tokenize

import pytest
import torch

import fxforge
from fxforge import zoo, zoo_hf
from fxforge.errors import ExecutionError, InputError
from fxforge.execute import TorchProgram


def _program(compiled) -> TorchProgram:
    (program,) = compiled._latest.programs.values()
    return program


@pytest.mark.parametrize("name", ["mlp", "digits", "resnet18", "mobilenetv2", "vit"])
@pytest.mark.parametrize("target", ["cpu", "cpu-int8"])
def test_straight_line_code_gives_the_loops_results_bitwise(name, target):
    model, (x,) = zoo.build(name, 2)
    compiled = fxforge.compile(model, target)
    first = compiled(x)  # the loop runs, then the code is generated
    program = _program(compiled)
    assert program._fast is not None
    second = compiled(x)
    looped = program._interpret([x], None, None)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(second, looped[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bert", "gpt2", "swin", "whisper-encoder"])
def test_transformers_models_through_the_fast_path(name):
    pytest.importorskip("transformers")
    model, inputs = zoo_hf.build(name, 2)
    positional = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
    compiled = fxforge.compile(model, "cpu")
    with torch.no_grad():
        want = model(*positional)
    first = compiled(*positional)
    assert compiled._fast_calls, "a call of plain tensors is remembered"
    again = compiled(*positional)
    for got in (first, again):
        leaves = torch.utils._pytree.tree_leaves
        for g, w in zip(leaves(got), leaves(want)):
            if isinstance(w, torch.Tensor) and w.is_floating_point():
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert type(again) is type(first)


def test_multi_output_ops_and_casts_in_generated_code():
    class Model(torch.nn.Module):
        def forward(self, x, ids):
            values, indices = torch.topk(x, 3, dim=-1)
            a, b = x.split([2, 6], dim=-1)
            return values * 2, indices, (ids + 1) / 2, a.sum() + b.mean()

    model = Model()
    x, ids = torch.randn(4, 8), torch.arange(8).reshape(2, 4)
    compiled = fxforge.compile(model, "cpu")
    first = compiled(x, ids)
    source = _program(compiled)._fast.source
    assert re.search(r"^\s+v\d+, v\d+ = f\d+\(", source, re.M)  # a multi-output step
    again = compiled(x, ids)
    want = model(x, ids)
    for g, f, w in zip(again, first, want):
        torch.testing.assert_close(g, f, rtol=0, atol=0)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        assert g.dtype == w.dtype


def test_generated_source_holds_only_generated_identifiers():
    class Hostile(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleDict({
                'x"); import os; os_system("echo pwned': torch.nn.Linear(4, 4),
                "del\nreturn": torch.nn.ReLU()})

        def forward(self, x):
            for layer in self.layers.values():
                x = layer(x)
            return x

    compiled = fxforge.compile(Hostile(), "cpu")
    x = torch.randn(2, 4)
    compiled(x)
    source = _program(compiled)._fast.source
    names = {t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.NAME}
    allowed = re.compile(r"(def|run|return|del|to|[ivfcd]\d+(_\d+)?)")
    assert all(allowed.fullmatch(n) for n in names), names
    assert not [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.STRING]


def test_a_run_time_error_still_names_the_node(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Softmax(dim=-1), torch.nn.Tanh())  # nothing fuses
    compiled = fxforge.compile(model, "cpu")
    x = torch.randn(2, 4)
    compiled(x)
    assert _program(compiled)._fast is not None

    def tanh_refusing_nan(t):
        if torch.isnan(t).any():
            raise ValueError("NaN input")
        return torch.tanh(t)

    program = _program(compiled)
    program._fast = None  # regenerate with the patched op: the program binds ops at build
    program.steps = [(n, tanh_refusing_nan if n.op == "tanh" else fn, a, e, d)
                     for n, fn, a, e, d in program.steps]
    compiled(x)
    assert program._fast is not None
    assert any(n.op == "tanh" for n, *_ in program.steps)
    with pytest.raises(ExecutionError, match=r"failed at .*tanh at 1 .*ValueError: NaN input"):
        compiled(torch.full((2, 4), float("nan")))


def test_what_the_fast_path_leaves_to_the_slow_one():
    model = torch.nn.Linear(4, 2)
    compiled = fxforge.compile(model, "cpu")
    x = torch.randn(3, 4)
    compiled(x)
    assert len(compiled._fast_calls) == 1
    compiled(input=x)  # keywords: the slow path, which binds them
    compiled(torch.nn.Parameter(x))  # a tensor subclass: the slow path
    compiled(x.double().float())  # same shape, dtype and device: the fast path
    assert len(compiled._fast_calls) == 1
    y = torch.randn(5, 4)
    torch.testing.assert_close(compiled(y), model(y), rtol=1e-4, atol=1e-5)  # a new capture
    assert len(compiled._fast_calls) == 2 and len(compiled.graphs) == 2
    fixed = fxforge.compile(model, "cpu", example_inputs=x)
    fixed(x)
    with pytest.raises(InputError, match="compiled for f32"):
        fixed(y)


def test_the_loop_stays_for_observers_and_can_be_switched_off(monkeypatch):
    model, (x,) = zoo.build("mlp", 2)
    compiled = fxforge.compile(model, "cpu")
    compiled(x)
    program = _program(compiled)
    seen = []
    program([x], observe=lambda name, t: seen.append(name))
    assert len(seen) >= len(program.steps)
    monkeypatch.setattr(TorchProgram, "straight_line", False)
    fresh = TorchProgram(compiled.graph, torch.device("cpu"))
    fresh([x])
    fresh([x])
    assert fresh._fast is None
