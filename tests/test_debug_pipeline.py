"""Debugging a pass on real models: user passes in the pipeline, check_each naming the pass and
the value, reproducer bundles that replay in a fresh process, bisect naming the rewrite.

The bugs are the deliberately wrong passes of tests/debug_broken_passes.py (a sign flip in one
rewrite rule, a dropped channel, a wrong folded constant, a crash on one op), injected into the
pipeline of transformers zoo models."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import debug_broken_passes as broken
import numpy as np
import pytest
import torch

import fxforge
import fxforge.debug
from fxforge import zoo_hf
from fxforge.debug import bundle as bundles
from fxforge.debug.bisect import Budget, bisect
from fxforge.errors import MiscompileError, OptionError, PipelineError
from fxforge.targets import TARGET_INFO

pytest.importorskip("transformers")

CPU = list(TARGET_INFO["cpu"].pipeline)
TESTS = Path(__file__).parent


def _compile_with(name: str, bug, tmp_path: Path, position: int = 1, **debug):
    model, inputs = zoo_hf.build(name, 2)
    passes = [*CPU[:position], bug, *CPU[position:]]
    compiled = fxforge.compile(model, "cpu", passes=passes,
                               debug={"check_each": True, "repro_dir": str(tmp_path), **debug})
    return compiled, inputs


def _fail(name: str, bug, tmp_path: Path, **kw):
    compiled, inputs = _compile_with(name, bug, tmp_path, **kw)
    with pytest.raises((MiscompileError, PipelineError)) as info:
        zoo_hf.call(compiled, inputs)
    return info.value


# --- user passes ---


def test_user_passes_run_with_the_instruments_and_are_reported():
    seen = []

    def count_nodes(graph):
        seen.append(len(graph.nodes))
        return graph

    def with_stats(graph):
        return graph, {"looked": 1}

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    stream = io.StringIO()
    compiled = fxforge.compile(model, "cpu", passes=["canonicalize", count_nodes, with_stats],
                               debug={"print_after": "all", "stream": stream})
    x = torch.randn(2, 8)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    names = [r.name for r in compiled.report.latest.passes]
    assert names[1].startswith("user:") and "count_nodes" in names[1]
    assert compiled.report.latest.passes[2].stats == {"looked": 1}
    assert seen and "IR after user:" in stream.getvalue()
    assert "user:" in str(compiled.report)


def test_a_user_pass_returning_junk_is_a_pipeline_error(tmp_path):
    model = torch.nn.Linear(4, 4)
    compiled = fxforge.compile(model, "cpu", passes=[lambda g: 42],
                               debug={"repro_dir": str(tmp_path)})
    with pytest.raises(PipelineError, match="returned int, not a Graph"):
        compiled(torch.randn(1, 4))
    with pytest.raises(PipelineError, match="neither a registered pass name nor a callable"):
        fxforge.compile(model, "cpu", passes=["dce", 3])


# --- check_each ---


@pytest.mark.parametrize("bug, model, value, op, module", [
    (broken.flip_scale, "llama", "cat_1", "cat", "rotary_emb"),
    (broken.drop_channel, "bert", "linear", "linear", "encoder.layer.0.attention.self.query"),
    (broken.wrong_fold, "bert", "layer_norm", "layer_norm", "embeddings.LayerNorm"),
])
def test_check_each_names_the_pass_and_the_first_wrong_value(bug, model, value, op, module,
                                                              tmp_path):
    error = _fail(model, bug, tmp_path)
    assert isinstance(error, MiscompileError)
    assert error.pass_name == f"user:{bug.__name__}"
    assert (error.value, error.op, error.module) == (value, op, module)
    assert error.error > 1e-3
    assert f"%{value}" in str(error) and module in str(error) and "tolerance" in str(error)
    assert error.bundle and Path(error.bundle).is_dir()


def test_check_each_passes_every_zoo_model_through_the_real_pipelines(tmp_path):
    """No false alarms: the registered passes keep what the graph computes (int8 within the
    quantize pass's stated tolerance)."""
    for name in ("bert", "llama", "mobilenet-v2", "swin"):
        model, inputs = zoo_hf.build(name, 2)
        positional = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
        for target, extra in (("cpu", {}), ("cpu-int8", {"calibration": [positional]})):
            compiled = fxforge.compile(model, target, debug={"check_each": True,
                                                             "repro_dir": "off"}, **extra)
            zoo_hf.call(compiled, inputs)
    assert not list(tmp_path.iterdir())


def test_a_crash_names_the_pass_and_writes_a_bundle(tmp_path):
    error = _fail("swin", broken.crash_on_layer_norm, tmp_path, check_each=False)
    assert isinstance(error, PipelineError) and not isinstance(error, MiscompileError)
    assert "user:crash_on_layer_norm" in str(error) and "NotImplementedError" in str(error)
    manifest = json.loads((Path(error.bundle) / "manifest.json").read_text())
    assert manifest["signature"] == {"kind": "crash", "pass": "user:crash_on_layer_norm",
                                     "exception": "NotImplementedError",
                                     "message": "no rule for layer_norm over # dims"}
    assert manifest["pipeline"][0] == "user:crash_on_layer_norm"
    assert manifest["pipeline"][1:] == CPU[1:]
    assert set(manifest["versions"]) >= {"fxforge", "torch", "numpy", "triton", "onnx"}
    assert manifest["samples_from"].startswith("the inputs the model was called with")
    assert len(manifest["samples"]) == 1  # swin's one call


def test_repro_dir_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    error = _fail("bert", broken.drop_channel, tmp_path, repro_dir="off")
    assert error.bundle is None and "reproducer" not in str(error)
    assert not list(tmp_path.iterdir())


def test_bisect_limit_must_be_a_whole_number():
    with pytest.raises(OptionError, match="bisect limit"):
        fxforge.compile(torch.nn.Linear(2, 2), "cpu", debug={"bisect_limit": -1})
    with pytest.raises(OptionError, match="bisect limit"):
        fxforge.compile(torch.nn.Linear(2, 2), "cpu", debug={"bisect_limit": "many"})


# --- bundles and replay ---


def _replay_in_fresh_process(bundle: Path, name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run(
        [sys.executable, "-m", "fxforge", "replay", str(bundle),
         "--pass", f"user:{name}=debug_broken_passes:{name}"],
        capture_output=True, text=True, env=env, timeout=300, cwd=bundle.parent)


@pytest.mark.parametrize("bug, model", [(broken.flip_scale, "llama"),
                                        (broken.crash_on_layer_norm, "swin")])
def test_replay_reproduces_in_a_fresh_process(bug, model, tmp_path):
    error = _fail(model, bug, tmp_path)
    done = _replay_in_fresh_process(Path(error.bundle), bug.__name__)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("reproduced:") and f"user:{bug.__name__}" in done.stdout


def test_replay_says_when_the_failure_is_gone(tmp_path):
    error = _fail("bert", broken.drop_channel, tmp_path)
    fixed = lambda graph: graph  # noqa: E731 - the "fixed" pass
    result = bundles.replay(error.bundle, {"user:drop_channel": fixed})
    assert not result.reproduced and "did not reproduce" in result.describe()
    assert "ran clean" in result.describe()
    done = subprocess.run([sys.executable, "-m", "fxforge", "replay", error.bundle],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "user's pass: supply it" in done.stderr


def test_bundles_are_checked_input(tmp_path):
    error = _fail("bert", broken.drop_channel, tmp_path)
    folder = Path(error.bundle)
    manifest = json.loads((folder / "manifest.json").read_text())
    for broken_manifest, message in [
        ({**manifest, "format": "other"}, "not an fxforge reproducer"),
        ({**manifest, "pipeline": ["rm -rf"]}, "not a registered pass"),
        ({**manifest, "samples": [["0" * 16]]}, "lack"),
        ({**manifest, "signature": {"kind": "exec"}}, "malformed 'signature'"),
    ]:
        (folder / "manifest.json").write_text(json.dumps(broken_manifest))
        with pytest.raises(PipelineError, match=message):
            bundles.replay(folder, {"user:drop_channel": broken.drop_channel})
    (folder / "manifest.json").write_text("[" * 100000)
    with pytest.raises(PipelineError, match="not JSON|not an fxforge"):
        bundles.load_bundle(folder)


def test_signatures_tell_failures_apart():
    crash = {"kind": "crash", "pass": "fuse", "exception": "ValueError", "message": "bad #"}
    assert bundles.matches(crash, dict(crash))
    assert not bundles.matches(crash, {**crash, "exception": "KeyError"})
    assert not bundles.matches(crash, {**crash, "pass": "dce"})
    assert bundles.matches(crash, {**crash, "message": "other"}, strict=False)
    assert not bundles.matches(crash, None)
    wrong = {"kind": "miscompile", "pass": "fuse", "op": "add"}
    assert not bundles.matches(wrong, crash) and not bundles.matches(wrong, {**wrong, "op": "mul"})
    assert bundles._normalize("shape [2, 64] vs [2, 65]\nmore") == "shape [#, #] vs [#, #]"


# --- bisect ---


def test_bisect_names_the_first_wrong_rule_application(tmp_path):
    """The pipeline canonicalizes first (its rule applications come before the bug's), then runs
    the buggy pass: bisect must skip every earlier application and name flip-scale's first."""
    model, inputs = zoo_hf.build("llama", 2)
    passes = ["canonicalize", broken.flip_scale, *CPU[1:]]

    def fails(limit):
        budget = Budget(limit)
        from fxforge.debug.bisect import active

        with active(budget):
            compiled = fxforge.compile(model, "cpu", passes=passes,
                                       debug={"check_each": True, "repro_dir": "off"})
            try:
                zoo_hf.call(compiled, inputs)
            except MiscompileError as e:
                return e.pass_name == "user:flip_scale", budget
        return False, budget

    result = bisect(fails, stream=io.StringIO())
    assert result.index > 1  # canonicalize's applications came first and were innocent
    assert "user:flip_scale: rule flip-scale at %mul" in result.line
    assert result.line.startswith(f"BISECT: apply ({result.index})")
    ok, _ = fails(result.index - 1)
    assert not ok


def test_bisect_limit_logs_and_stops_applying():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(), torch.nn.ReLU())
    stream = io.StringIO()
    compiled = fxforge.compile(model, "cpu", debug={"bisect_limit": 0, "stream": stream})
    x = torch.randn(2, 8)
    torch.testing.assert_close(compiled(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("BISECT: NOT applying (") for line in lines)
    assert not any(n.op == "fused_linear" for n in compiled.graph.nodes)  # fuse did not run
    full = fxforge.compile(model, "cpu")
    full(x)
    assert any(n.op == "fused_linear" for n in full.graph.nodes)


def test_cli_bisect_on_a_bundle(tmp_path):
    error = _fail("llama", broken.flip_scale, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    done = subprocess.run([sys.executable, "-m", "fxforge", "bisect", error.bundle, "--pass",
                           "user:flip_scale=debug_broken_passes:flip_scale"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "first failing application: 1 of" in done.stdout
    assert "rule flip-scale at %mul" in done.stdout


def test_default_samples_are_valid_inputs():
    from fxforge.debug.check import default_samples

    model, inputs = zoo_hf.build("bert", 2)
    compiled = fxforge.compile(model, "cpu")
    zoo_hf.call(compiled, inputs)
    samples = default_samples(compiled.graph, seed=3, count=2)
    assert len(samples) == 2
    for v, a in zip(compiled.graph.inputs, samples[0]):
        assert a.shape == tuple(v.type.shape)
    assert not np.array_equal(samples[0][0], samples[1][0]) or samples[0][0].dtype.kind != "f"


def test_a_bundle_on_request_replays_clean(tmp_path):
    model, inputs = zoo_hf.build("bert", 2)
    compiled = fxforge.compile(model, "cpu")
    zoo_hf.call(compiled, inputs)
    path = fxforge.debug.bundle_before(compiled, "fuse", tmp_path)
    bundle = bundles.load_bundle(path)
    assert bundle.pipeline == CPU[CPU.index("fuse"):]
    assert bundle.signature == {"kind": "clean", "pass": "fuse"}
    assert bundles.replay(path).reproduced
    with pytest.raises(OptionError, match="no pass 'nope'"):
        fxforge.debug.bundle_before(compiled, "nope", tmp_path)


# --- reduce ---


@pytest.mark.parametrize("bug", [broken.crash_on_layer_norm, broken.drop_channel])
def test_reduce_a_zoo_model_bundle_to_a_few_nodes_that_replay(bug, tmp_path):
    """The bug runs first, on Swin as captured (300+ nodes); `fxforge reduce` shrinks the
    bundle to at most 10 nodes with the same failure signature, and the reduced bundle replays
    in a fresh process."""
    error = _fail("swin", bug, tmp_path / "first", position=0)
    original = bundles.load_bundle(error.bundle)
    assert len(original.graph.nodes) >= 200
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    spec = f"user:{bug.__name__}=debug_broken_passes:{bug.__name__}"
    done = subprocess.run([sys.executable, "-m", "fxforge", "reduce", error.bundle, "--pass",
                           spec, "--out", str(tmp_path / "reduced")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    reduced_path = Path(done.stdout.strip().splitlines()[-1])
    reduced = bundles.load_bundle(reduced_path)
    compute = [n for n in reduced.graph.nodes if n.op != "const"]
    assert 1 <= len(compute) <= 10, compute
    assert reduced.signature == original.signature
    assert "reduced" in done.stdout and "->" in done.stdout
    again = subprocess.run([sys.executable, "-m", "fxforge", "replay", str(reduced_path),
                            "--pass", spec], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("reproduced:"), again.stdout


def test_reduce_of_a_bundle_that_does_not_fail_says_so(tmp_path):
    error = _fail("bert", broken.drop_channel, tmp_path)
    done = subprocess.run([sys.executable, "-m", "fxforge", "reduce", error.bundle, "--pass",
                           "user:drop_channel=debug_broken_passes:crash_on_layer_norm"],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(TESTS)), timeout=300)
    assert done.returncode == 1 and "does not happen" in done.stdout
