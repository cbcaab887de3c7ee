"""The PassManager and its instruments, from Python, the environment and compile()."""

import io

import numpy as np
import pytest
import torch

from fxforge import DebugOptions, PassManager, PipelineError, compile, parse_ir, zoo
from fxforge.execute import run_reference
from fxforge.ir import Graph
from fxforge.passes import registry as passes
from fxforge.pipeline import load_dump, parse_pipeline

DEAD_CODE = """
graph(%x: f32[2,3]) {
  %a = relu %x : f32[2,3]
  %dead = sigmoid %x : f32[2,3]
  %dead2 = tanh %dead : f32[2,3]
  return %a
}
"""


def test_parse_pipeline_accepts_lists_and_strings():
    assert parse_pipeline("dce, dce") == ("dce", "dce")
    assert parse_pipeline(["dce"]) == ("dce",)
    assert parse_pipeline("") == ()
    with pytest.raises(PipelineError, match="unknown pass.*'nope'"):
        parse_pipeline("dce,nope")


def test_pass_records_time_change_and_stats():
    graph = parse_ir(DEAD_CODE)
    result, records = PassManager("dce,dce").run(graph)
    assert [n.op for n in result.nodes] == ["relu"]
    first, second = records
    assert first.changed and first.stats == {"removed": 2}
    assert (first.nodes_before, first.nodes_after) == (3, 1)
    assert not second.changed and second.stats == {"removed": 0}
    assert first.seconds >= 0


def test_print_after_all_and_only_when_changed():
    stream = io.StringIO()
    debug = DebugOptions(print_after="all", print_changed=True, stream=stream)
    PassManager("dce,dce", debug).run(parse_ir(DEAD_CODE))
    text = stream.getvalue()
    assert text.count("IR after dce") == 1  # the second dce changed nothing
    assert "%dead" not in text.split("IR after dce")[1]


def test_print_before_named_passes_and_diff():
    stream = io.StringIO()
    debug = DebugOptions(print_before=frozenset({"dce"}), print_after="dce", print_diff=True,
                         stream=stream)
    PassManager("dce", debug).run(parse_ir(DEAD_CODE))
    text = stream.getvalue()
    assert "IR before dce" in text and "%dead2 = tanh" in text
    assert "IR diff of dce" in text
    assert "-  %dead = sigmoid %x : f32[2,3]" in text


def test_environment_switches_instruments_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FXFORGE_PRINT_AFTER", "all")
    monkeypatch.setenv("FXFORGE_DUMP_DIR", str(tmp_path))
    monkeypatch.setenv("FXFORGE_VERIFY", "1")
    options = DebugOptions.from_env()
    assert options.print_after == "all" and options.verify_each
    model, (x,) = zoo.build("mlp", 2)
    fast = compile(model, "cpu", example_inputs=x)
    assert "IR after dce" in capsys.readouterr().err
    files = sorted(p.name for p in tmp_path.iterdir())
    stages = [f"{i:02d}-{name}.ir" for i, name in enumerate(fast.report.pipeline, 1)]
    assert files == sorted(["00-input.ir", *stages, "constants.npz"])
    graph = load_dump(tmp_path / stages[-1])
    assert graph == fast.graph
    (out,) = run_reference(graph, [x.numpy()])
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_compile_debug_dict_and_second_capture_dumps_to_a_subfolder(tmp_path):
    model, _ = zoo.build("mlp")
    fast = compile(model, "cpu", passes="dce", debug={"dump_dir": str(tmp_path),
                                                     "print_after": None})
    fast(torch.randn(1, 64))
    fast(torch.randn(2, 64))
    assert (tmp_path / "01-dce.ir").exists()
    assert (tmp_path / "capture-2" / "01-dce.ir").exists()
    assert "f32[2,64]" in (tmp_path / "capture-2" / "00-input.ir").read_text()


def test_debug_options_reject_unknown_fields():
    with pytest.raises(TypeError, match="unknown debug option.*print_everything"):
        DebugOptions.make({"print_everything": True})
    assert DebugOptions.make(True).verify_each


def test_verify_each_names_the_pass_that_broke_the_ir(monkeypatch):
    def broken(graph):
        node = graph.nodes[0]
        stale = node.outputs[0].__class__(node.outputs[0].name, node.inputs[0].type.__class__(
            (9, 9), "f32"))
        bad = node.__class__(node.op, node.inputs, (stale,), node.attrs, node.provenance)
        return Graph(graph.inputs, (bad,), (stale,)), {}

    monkeypatch.setitem(passes.PASSES, "broken", broken)
    graph = parse_ir(DEAD_CODE)
    with pytest.raises(PipelineError, match="invalid after pass 'broken'.*declared types"):
        PassManager("broken", DebugOptions(verify_each=True)).run(graph)
    PassManager("broken").run(graph)  # without the instrument nobody checks


def test_a_pass_that_raises_is_named(monkeypatch):
    def explodes(graph):
        raise RuntimeError("boom")

    monkeypatch.setitem(passes.PASSES, "explodes", explodes)
    with pytest.raises(PipelineError, match="pass 'explodes' failed: RuntimeError: boom"):
        PassManager("explodes").run(parse_ir(DEAD_CODE))
