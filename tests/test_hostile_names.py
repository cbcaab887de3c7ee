"""Hostile module, parameter and buffer names through every CPU target, the IR round trip, the
report and the Triton source generator, with a file canary that must never appear.

torch writes these names into Python source that it executes while fxforge captures a model
(`run_decompositions`), escaping nothing but `\\n`: a carriage return or a quote in a name used
to run code during `compile`. fxforge now exports a shadow of the model under stand-in names
(compiler/shadow.py); these tests hold it to that, and to keeping the user's names everywhere a
person reads them.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import shutil
import tempfile
import types
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn as nn
from untouched import assert_untouched, snapshot

import fxforge
from fxforge import compile
from fxforge.ir import printable
from fxforge.shadow import ShadowTree, needs_stand_in

RTOL, ATOL = 1e-4, 1e-5  # fp32 targets against eager
INT8_TOL = 0.05  # int8 targets: a fraction of the output's range (the int8 suites are exact)

C0 = "".join(map(chr, range(0x00, 0x20)))
C1 = "".join(map(chr, range(0x7F, 0xA0)))
# every character Python, str.splitlines or a terminal takes as a line break
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
               "\u2029"]
FORMAT = "\u200b\u200e\u200f\u202a\u202e\u2066\u2069\ufeff"  # zero-width and bidi controls


def _injections(canary: str) -> list[str]:
    """Names that run `open(canary, "w")` if any code generator pastes them into source."""
    names = [f'x"){sep}open({canary!r},"w"){sep}def _f(self):{sep}    return getattr(self, "x'
             for sep in LINE_BREAKS]
    names += [f'x", open({canary!r},"w"), "', f"x', open({canary!r},'w'), '",
              f'x"); open({canary!r},"w"); ("', f"x\\\"); open({canary!r}, 'w') #",
              f'{{open({canary!r},"w")}}', f"getattr(__import__('os'), 'system')('touch {canary}')"]
    return names


def corpus(canary: str) -> list[str]:
    names = _injections(canary)
    names += ["a" + C0.replace("\x00", "") + "b", "a\x00b", "c" + C1 + "d", "f" + FORMAT + "g",
              "quote'\"`", "back\\slash\\", "per%cent %s %(x)s {0}", "hash # comment",
              "unicodé_名前_🙂", "ﬁ_ligature", "e\u0301_combining", "x" * 5000, " ", "0x",
              "fxforge_alias0_", "self", "__class__x", "%input", "@digest", "[1, 2]"]
    return names


class Holder(nn.Module):
    """One child, one parameter and one buffer under each hostile name, looked up by name."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(names)
        self.layers = nn.ModuleDict()
        for i, name in enumerate(self.names):
            self.layers[name] = nn.Linear(16, 16)
            self.register_parameter(name, nn.Parameter(torch.full((16,), 0.01 * i)))
            self.register_buffer(name + "_b", torch.full((16,), -0.01 * i))

    def forward(self, x):
        for name in self.names:
            x = torch.relu(self.layers[name](x) + getattr(self, name) + getattr(self, name + "_b"))
        return x


@pytest.fixture
def canary():
    """A file that only injected code would create (module names cannot hold a dot, so its
    path has none)."""
    folder = tempfile.mkdtemp(prefix="fxforge_canary_", dir="/tmp" if os.path.isdir("/tmp")
                              else None)
    path = os.path.join(folder, "PWNED")
    if "." in path:
        pytest.skip(f"the temp dir {folder} has a dot, which a module name cannot hold")
    yield path
    assert not os.path.exists(path), "a hostile name ran code"
    shutil.rmtree(folder, ignore_errors=True)


def _assert_close_int8(got: torch.Tensor, want: torch.Tensor) -> None:
    spread = float(want.max() - want.min()) or 1.0
    assert float((got - want).abs().max()) <= INT8_TOL * spread


@pytest.mark.parametrize("target", ["cpu", "reference", "cpu-int8", "reference-int8"])
def test_every_hostile_name_compiles_exactly_and_runs_no_code(target, canary):
    torch.manual_seed(0)
    names = corpus(canary)
    model = Holder(names).eval()
    x = torch.randn(3, 16)
    before = snapshot(model)
    int8 = target.endswith("int8")
    fast = compile(model, target, example_inputs=x, calibration=[x] if int8 else None)
    assert_untouched(model, before)
    want = model(x)
    if int8:
        _assert_close_int8(fast(x), want)
    else:
        torch.testing.assert_close(fast(x), want, rtol=RTOL, atol=ATOL)
    # provenance keeps the user's names (no stand-in leaks), and the IR text round-trips
    text = str(fast.graph)
    modules = {n.provenance.module for n in fast.captured_graph.nodes}
    assert not [m for m in modules if "fxforge_alias" in m.replace("fxforge_alias0_", "")]
    for name in names:
        assert f"layers.{name}" in modules or f"layers.{name}.weight" in modules, repr(name[:40])
    assert fxforge.parse_ir(text) == fast.graph
    assert len(text.splitlines()) == len(fast.graph.nodes) + 3  # no name broke a line
    report = str(fast.report)
    assert all(unicodedata.category(c) not in ("Cc", "Zl", "Zp") or c == "\n" for c in report)


@pytest.mark.parametrize("sep", LINE_BREAKS, ids=[f"U+{ord(s[-1]):04X}" for s in LINE_BREAKS])
def test_the_reported_injection_with_each_line_break(sep, canary):
    name = f'x"){sep}open({canary!r},"w"){sep}def _f(self):{sep}    return getattr(self, "x'
    model = nn.Sequential()
    model.add_module(name, nn.Linear(3, 3))
    x = torch.randn(2, 3)
    fast = compile(model, "cpu", example_inputs=x)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    assert list(model._modules) == [name]  # the user's model keeps its names


class DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, batch, scale=1, **extra):
        out = sum(self.fc(t) for t in batch.values()) * scale
        return {key: out + t for key, t in extra.items()}


@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_hostile_keys_of_input_and_output_dicts(target, canary):
    # torch writes input paths (`batch['<key>']`) into guard code it executes: this key closed
    # the string and ran `open` on every compile
    keys = [f'") or open({canary!r},"w") or ("', f"') or open({canary!r},'w') or ('",
            "a\rb", "ü", "x" * 300]
    model = DictInput()
    batch = {k: torch.randn(2, 4) for k in keys}
    extra = {f"o{i}{k}": torch.randn(2, 4) for i, k in enumerate(keys[:3])}
    before = snapshot(model)
    fast = compile(model, target)
    got = fast(batch, 3, **extra)
    want = model(batch, 3, **extra)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=RTOL, atol=ATOL)
    assert_untouched(model, before)
    assert "forward" not in model.__dict__  # the flat forward lives on the shadow only


def test_triton_sources_never_hold_a_name(canary):
    from fxforge.kernels.triton import jit

    if not (jit.interpreting() or torch.cuda.is_available()):
        pytest.skip("Triton needs TRITON_INTERPRET=1 or a GPU")
    names = _injections(canary)[:4] + ["unicodé 🙂", "a" + C0.replace("\x00", "") + "b"]
    model = Holder(names).eval()
    x = torch.randn(2, 16)
    fast = compile(model, "cuda", example_inputs=x, autotune=False)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)
    for source in jit.generated_sources():
        jit.check_identifiers(source)
        assert "open(" not in source and "PWNED" not in source


def test_keep_float_takes_a_hostile_name():
    name = "odd\r\u2028name"
    model = nn.Sequential()
    model.add_module(name, nn.Linear(64, 64))
    x = torch.randn(4, 64)
    fast = compile(model, "cpu-int8", example_inputs=x, calibration=[x], keep_float=[name])
    assert fast.report.latest.quantization.layers == []  # kept float: nothing quantized
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


def test_a_capture_error_names_the_real_module_path():
    class Item(nn.Module):
        def forward(self, x):
            return x * x.max().item()

    model = nn.Sequential()
    model.add_module("bad\rname", Item())
    with pytest.raises(fxforge.CaptureError) as info:
        compile(model, "cpu", example_inputs=torch.randn(3))
    assert ".item()" in str(info.value)


# --- the pieces ------------------------------------------------------------------------------


def test_names_torch_cannot_write_get_stand_ins_and_no_others():
    for name in ("weight", "_x1", "layer_3", "0", "box-reg", "a b", "ü", "1a", "%s", "名前"):
        assert not needs_stand_in(name), name
    for name in ("a\rb", 'a"b', "a'b", "a\\b", "ﬁ", "class", "None", "match", "graph", "code",
                 "x\u2028", "x\u202e", "fxforge_alias0_", "my_fxforge_alias2_x", "fxforge_root_"):
        assert needs_stand_in(name), name


def test_the_shadow_shares_tensors_and_answers_to_real_names():
    model = Holder(["a\rb", "ok"])
    tree = ShadowTree(model)
    shadow = tree.root
    assert shadow is not model and shadow.layers is not model.layers
    real = dict(model.named_parameters())
    mirrored = dict(shadow.named_parameters())
    parts = {part for key in mirrored for part in key.split(".")}
    assert all(re.fullmatch(r"fxforge_alias[0-9]+_", p) or not needs_stand_in(p) for p in parts)
    assert {tree.real_names(k) for k in mirrored} == set(real)
    assert all(mirrored[k] is real[tree.real_names(k)] for k in mirrored)  # no weights copied
    assert getattr(shadow, "a\rb") is model.get_parameter("a\rb")
    assert shadow.layers["a\rb"] is not model.layers["a\rb"]  # a shadow of the child
    shadow.eval()
    assert model.training  # flags live in the shadow's own __dict__


def test_printable_escapes_every_invisible_character():
    text = "a" + C0 + C1 + "".join(LINE_BREAKS) + FORMAT + "z"
    shown = printable(text)
    assert shown.isprintable()
    assert shown.startswith("a\\x00") and shown.endswith("\\ufeffz")
    assert printable("plain ü 名前") == "plain ü 名前"
    assert np.all([c.isprintable() for c in printable("\u2028\u2029")])


# --- what the shadow must keep working (a review of the first version found each) -----------


def _same_as_eager(model: nn.Module, *inputs, target: str = "cpu") -> nn.Module:
    before = snapshot(model)
    fast = compile(model, target)
    got = fast(*inputs)
    assert_untouched(model, before)
    with torch.no_grad():
        want = model(*inputs)
    if isinstance(want, dict):
        assert list(got) == list(want)
        got, want = list(got.values()), list(want.values())
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    return fast


def test_a_forward_iterating_a_module_dict_sees_its_real_keys():
    class MultiTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(8, 8)
            self.heads = nn.ModuleDict({"box-reg": nn.Linear(8, 4), "cls score": nn.Linear(8, 3)})

        def forward(self, x):
            h = self.trunk(x)
            return {name: head(h) for name, head in self.heads.items()}

    _same_as_eager(MultiTask().eval(), torch.randn(2, 8))


def test_modules_reached_through_plain_attributes_are_shadowed_too():
    class Ordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
                                         for _ in range(2)])
            self.order = list(self.blocks)[::-1]

        def forward(self, x):
            for block in self.order:
                x = block(x)
            return x

    model = Ordered()  # training mode: the originals must not be run, nor their stats updated
    fast = compile(model, "cpu", example_inputs=torch.randn(8, 4))
    assert int(model.blocks[0][1].num_batches_tracked) == 0 and model.training
    model.eval()
    x = torch.randn(8, 4)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


def test_an_instance_forward_bound_to_the_model_runs_on_the_shadow():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))  # training mode
    model._old_forward = model.forward  # as accelerate's hooks wrap a forward
    model.forward = functools.partial(lambda module, x: module._old_forward(x) * 2, model)
    x = torch.randn(4, 8)
    fast = compile(model, "cpu", example_inputs=x)
    assert fast.report.fallbacks == []  # no training-mode dropout reached the graph
    model.eval()
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


def test_flat_inputs_keep_the_instance_forward_and_the_hooks():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, d):
            return self.lin(d["a\rb"])

    d = {"a\rb": torch.randn(2, 3)}
    hooked = Keyed().eval()
    hooked.register_forward_pre_hook(lambda module, args: ({k: v * 2 for k, v in
                                                           args[0].items()},))
    _same_as_eager(hooked, d)
    rebound = Keyed().eval()
    rebound.forward = types.MethodType(lambda self, d: self.lin(d["a\rb"]) * 100, rebound)
    _same_as_eager(rebound, d)


def test_a_name_holding_the_stand_in_pattern_keeps_its_own_name():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("a b\r", nn.Linear(64, 64))
            self.add_module("fxforge_alias0_x", nn.Linear(64, 64))

        def forward(self, x):
            return self.fxforge_alias0_x(getattr(self, "a b\r")(x))

    fast = _same_as_eager(Both().eval(), torch.randn(2, 64))
    modules = {n.provenance.module for n in fast.captured_graph.nodes}
    assert {"a b\r", "fxforge_alias0_x"} <= modules


def test_slots_and_finalizers_of_the_model_survive_the_shadow():
    class Slot(nn.Linear):
        __slots__ = ("scale", "__private")

        def __init__(self):
            super().__init__(3, 3)
            self.scale = 2.0
            self.__private = 3.0

        def forward(self, x):
            return super().forward(x) * self.scale * self.__private

    _same_as_eager(Slot().eval(), torch.randn(2, 3))

    class Finalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.handle = self.lin.register_forward_hook(lambda module, i, o: o * 2)

        def forward(self, x):
            return self.lin(x)

        def __del__(self):
            self.handle.remove()

    model = Finalized().eval()
    fast = _same_as_eager(model, torch.randn(2, 3))
    gc.collect()
    assert len(model.lin._forward_hooks) == 1  # the shadow's collection removed nothing
    x = torch.randn(2, 3)
    torch.testing.assert_close(fast(x), model(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["class", "lambda", "None", "graph", "code", "meta"])
def test_keywords_and_graph_module_attributes_are_fine_names(name):
    model = nn.ModuleDict({name: nn.Linear(3, 2)})
    model.forward = types.MethodType(lambda self, x: self[name](x), model)
    _same_as_eager(model.eval(), torch.randn(2, 3))
