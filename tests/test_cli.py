"""The `fxforge` command line, run as a user would."""

import subprocess
import sys
import textwrap

import pytest

from fxforge import parse_ir
from fxforge.__main__ import main

MODEL_FILE = textwrap.dedent("""
    import torch
    import torch.nn as nn

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()

    def make_with_inputs():
        return make(), (torch.randn(3, 8),)

    def not_a_model():
        return 42
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def _sections(out: str) -> tuple[str, str]:
    captured, optimized = out.split("// optimized IR")
    return captured.split("// captured IR")[1], optimized.split("\n", 1)[1]


def test_ir_prints_captured_and_optimized_ir(model_file, capsys):
    assert main(["ir", f"{model_file}:make", "--input", "2x8"]) == 0
    captured, optimized = _sections(capsys.readouterr().out)
    graph = parse_ir(optimized)
    assert [n.op for n in parse_ir(captured).nodes if n.op != "const"] == ["linear", "relu",
                                                                           "linear"]
    assert [n.op for n in graph.nodes if n.op != "const"] == ["fused_linear", "linear"]
    assert graph.inputs[0].type.shape == (2, 8)
    assert parse_ir(captured).outputs[0].type.shape == (2, 4)


def test_ir_uses_the_factorys_example_inputs(model_file, capsys):
    assert main(["ir", f"{model_file}:make_with_inputs"]) == 0
    _, optimized = _sections(capsys.readouterr().out)
    assert parse_ir(optimized).inputs[0].type.shape == (3, 8)


def test_ir_zoo_model_with_int_inputs_and_debug_flags(tmp_path, capsys):
    code = main(["ir", "zoo:transformer", "--input", "2x16:i64", "--print-after", "all",
                 "--dump-dir", str(tmp_path), "--verify", "--inline-constants"])
    assert code == 0
    captured = capsys.readouterr()
    assert "IR after dce" in captured.err
    assert (tmp_path / "01-canonicalize.ir").exists()
    _, optimized = _sections(captured.out)
    graph = parse_ir(optimized)  # inline constants: the text carries the data
    assert graph.inputs[0].type.dtype == "i64"
    assert all(n.attrs["value"].array is not None for n in graph.nodes if n.op == "const")


@pytest.mark.parametrize("argv, message", [
    (["ir", "nonexistent.py:make", "--input", "1x2"], "does not exist"),
    (["ir", "zoo:nope"], "no zoo model 'nope'"),
    (["ir", "just_a_name"], "must be `path/to/file.py:factory`"),
    (["ir", "{file}:missing"], "has no function 'missing'"),
    (["ir", "{file}:not_a_model"], "returned int"),
    (["ir", "{file}:make"], "pass --input"),
    (["ir", "{file}:make", "--input", "2by8"], "expected a shape like"),
    (["ir", "{file}:make", "--input", "2x8:f99"], "unknown dtype 'f99'"),
    (["ir", "{file}:make", "--input", "2x9"], "could not capture"),
    (["ir", "{file}:make", "--input", "2x8", "--passes", "dce,bogus"], "unknown pass"),
])
def test_errors_are_one_clear_line(model_file, capsys, argv, message, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = [a.replace("{file}", str(model_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxforge: error: ")
    assert message in err


def test_targets_ops_and_help(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "cuda-int8" in out and "ready" in out
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "scaled_dot_product_attention" in out
    assert main([]) == 0
    assert "ir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "FXFORGE_PRINT_AFTER" in capsys.readouterr().out


def test_compile_command_reports_match_against_eager(capsys):
    assert main(["compile", "zoo:mlp", "--target", "reference", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "fxforge report: target reference" in out
    assert "ok" in out and "MISMATCH" not in out
    assert "latency, median of 2" in out


def test_compile_command_cuda_options(capsys):
    """--no-autotune and --no-cuda-graphs reach compile (the kernels run under the interpreter,
    which tests/conftest.py turns on)."""
    assert main(["compile", "zoo:mlp", "--target", "cuda", "--no-autotune", "--no-cuda-graphs",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "CUDA graphs: not asked" in out
    assert "every IR op runs as a generated kernel or a view" in out


def test_console_script_and_module_entry_points():
    for cmd in ([sys.executable, "-m", "compiler", "targets"],
                [str(__import__("pathlib").Path(sys.executable).parent / "fxforge"), "targets"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "cpu" in result.stdout


def test_compile_int8_prints_the_per_layer_sqnr_table(capsys):
    code = main(["compile", "zoo:digits", "--batch", "16", "--target", "cpu-int8",
                 "--calibrate", "2", "--calibration-method", "mse", "--min-sqnr", "10",
                 "--repeats", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "int8 accuracy on 2 calibration sample(s), mse calibration" in out
    assert "qconv2d" in out and "head" in out and "kept in float by min_sqnr=10 dB" in out
    assert "cosine similarity >= 0.99" in out and "MISMATCH" not in out
