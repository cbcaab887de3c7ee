"""Hostile module, parameter and buffer names through every CPU target, the IR round trip, the
report and the Triton source generator, with a file canary that must never appear.

torch writes these names into Python source that it executes while fxforge captures a model
(`run_decompositions`), escaping nothing but `\\n`: a carriage return or a quote in a name used
to run code during `compile`. fxforge now exports a shadow of the model under stand-in names
(compiler/shadow.py); these tests hold it to that, and to keeping the user's names everywhere a
person reads them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn as nn
from untouched import assert_untouched, snapshot

import fxforge
from fxforge import compile
from fxforge.ir import printable
from fxforge.shadow import ShadowTree, is_safe_name

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


def test_safe_names_are_plain_ascii_identifiers_and_indices():
    for name in ("weight", "_x1", "layer_3", "0", "12"):
        assert is_safe_name(name)
    for name in ("a b", "a\rb", 'a"b', "ü", "ﬁ", "", "1a", "a-b", "a\\b"):
        assert not is_safe_name(name)


def test_the_shadow_shares_tensors_and_answers_to_real_names():
    model = Holder(["a\rb", "ok"])
    tree = ShadowTree(model)
    shadow = tree.root
    assert shadow is not model and shadow.layers is not model.layers
    real = dict(model.named_parameters())
    mirrored = dict(shadow.named_parameters())
    assert all(is_safe_name(part) for key in mirrored for part in key.split("."))
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
