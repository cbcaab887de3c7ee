"""bench/triton_gpu.py is ready to run on a GPU: its smoke mode runs every section on tiny shapes
through the CPU interpreter and writes JSON and markdown; every kernel result it times is first
checked (exact int32 accumulators, int8 within 1 LSB) and the check is in the JSON."""

import json

import pytest
import torch

from fxforge.bench import triton_gpu


def test_smoke_run_checks_kernels_and_writes_results(tmp_path):
    assert triton_gpu.main(["--smoke", "--only", "gemm,epilogue,conv", "--out",
                            str(tmp_path)]) == 0
    (path,) = tmp_path.glob("triton-gpu-cpu-interpreter-*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "fxforge-triton-gpu/1" and doc["smoke"] is True
    rows = doc["rows"]
    gemm = [r for r in rows if r["section"] == "gemm"]
    assert [r["m"] for r in gemm] == [1, 16, 40]
    assert all(r["exact_vs_int_mm"] for r in gemm)
    assert all(r["max_lsb_diff"] <= 1 for r in rows if r["section"] == "epilogue")
    conv = [r for r in rows if r["section"] == "conv"]
    assert len(conv) == 2 and all(r["exact"] for r in conv)
    assert all(set(r["ms"]) == {"fxforge int8", "cudnn fp16"} for r in conv)
    text = path.with_suffix(".md").read_text()
    assert "SMOKE RUN" in text and "## int8 conv vs cuDNN fp16 channels-last" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_says_so(capsys):
    assert triton_gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
