"""bench/gpu_check.py, the one time-boxed GPU check, is ready to run on a GPU: its smoke mode runs
every section through Triton's CPU interpreter at tiny sizes, every kernel check passes, and the
JSON (with the goals table) and the markdown are written; the budget skips or interrupts
sections and still leaves both files; without a GPU the real run says so and exits 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fxforge.bench import gpu_check, triton_gpu

KERNELS = {"gemm", "int4_gemm", "conv", "depthwise", "elementwise", "reduce", "quant",
           "attention", "pool", "layout"}
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter overflows
main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="the deadline is a signal, which only the main thread receives")


def _doc(out: Path) -> tuple[dict, str]:
    (path,) = out.glob("gpu-check-cpu-interpreter-*.json")
    md = path.with_suffix(".md")
    assert md.exists() and not list(out.glob("*.tmp"))
    return json.loads(path.read_text()), md.read_text()


def test_smoke_runs_every_section(tmp_path, capsys):
    start = time.monotonic()
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert time.monotonic() - start < 90  # about 16 s on 2 cores; the margin is for busy CI
    doc, md = _doc(tmp_path)
    assert doc["schema"] == gpu_check.SCHEMA and doc["smoke"] and doc["finished"]
    assert doc["stopped"] is None and doc["device"] == "cpu-interpreter"
    assert {"torch", "triton", "cuda"} <= set(doc["versions"])
    assert list(doc["sections"]) == list(gpu_check.SECTIONS)
    assert all(s["status"] == "done" for s in doc["sections"].values()), doc["sections"]
    rows = doc["rows"]
    assert not [r for r in rows if "status" in r], "no step skipped or failed"

    verify = [r for r in rows if r["section"] == "verify"]
    assert len(verify) == len(gpu_check.VERIFY)
    assert {r["kernel"] for r in verify} == KERNELS
    failed = [r for r in verify if not r["ok"]]
    assert not failed, failed
    assert doc["verify"] == {"passed": len(verify), "failed": 0}
    assert all(r["max_err"] is not None for r in verify)

    for section in gpu_check.SECTIONS[1:]:
        assert [r for r in rows if r["section"] == section], f"no {section} rows"
    gemm = [r for r in rows if r["section"] == "gemm"]
    assert [r["m"] for r in gemm] == [64, 1, 16] and all(r["exact_vs_int_mm"] for r in gemm)
    assert all(r["close"] for r in rows if r["section"] == "attention")
    graphs = [r for r in rows if r["section"] == "graphs"]
    assert {r["target"] for r in graphs} == {"cuda-int8", "cuda"}
    assert all(r["max_abs_diff"] == 0 and r["graph"].startswith("off: ") for r in graphs)
    (e2e,) = [r for r in rows if r["section"] == "e2e"]
    assert set(e2e["ms"]) == {"fxforge cuda-int8", "fxforge cuda-fp16"} and not e2e["failed"]
    tuned = [r for r in rows if r["section"] == "autotune" and r["kernel"] != "shared tuner"]
    assert {r["kernel"] for r in tuned} == {"gemm", "conv", "attention"}
    assert all(r["timed"] == r["offered"] and r["picked"] for r in tuned)

    goals = {g["goal"]: g for g in doc["goals"]}
    assert list(goals) == [g.key for g in gpu_check.GOALS]
    assert goals["fused-epilogue"]["status"] in ("PASS", "FAIL")
    assert goals["fused-epilogue"]["measured"] is not None
    for key in ("resnet50", "bert-base"):  # torch.compile is not run in smoke runs
        assert goals[key]["status"] == "not measured" and goals[key]["measured"] is None

    assert "SMOKE RUN" in md and "## Goals" in md and "**not measured**" in md
    for title in ("## Verify", "## int8 GEMM", "## Fused epilogue", "## Fused attention",
                  "## CUDA graphs", "## End to end", "## int8 conv", "## Autotune"):
        assert title in md
    assert "wrote " in capsys.readouterr().out


def test_no_budget_skips_every_section_and_still_writes(tmp_path):
    assert gpu_check.main(["--smoke", "--budget-s", "0", "--only", "verify,gemm,e2e",
                           "--out", str(tmp_path)]) == 0
    doc, md = _doc(tmp_path)
    assert list(doc["sections"]) == ["verify", "gemm", "e2e"]
    assert all(s["status"] == "skipped: budget" for s in doc["sections"].values())
    assert [r["status"] for r in doc["rows"]] == ["skipped: budget"] * 3
    assert all(g["status"] == "not measured" for g in doc["goals"])
    assert doc["finished"] and "skipped: budget" in md and "## Goals" in md


@main_thread_only
def test_deadline_interrupts_a_section_and_skips_the_rest(tmp_path, monkeypatch):
    """A section still running at the deadline is stopped (SIGALRM), those after it are
    skipped, and what was measured before stays in both files."""
    def slow(b):
        triton_gpu._gemm_case(b, 16, 64)  # a real row (well under a second), then a hang
        time.sleep(30)

    monkeypatch.setitem(gpu_check.RUNNERS, "gemm", slow)
    start = time.monotonic()
    assert gpu_check.main(["--smoke", "--budget-s", "4", "--only", "gemm,epilogue",
                           "--out", str(tmp_path)]) == 0
    assert time.monotonic() - start < 20
    doc, md = _doc(tmp_path)
    assert doc["stopped"] == "budget"
    assert doc["sections"]["gemm"]["status"] == "stopped: budget"
    assert doc["sections"]["epilogue"]["status"] == "skipped: budget"
    assert doc["rows"][0]["m"] == 16 and doc["rows"][0]["exact_vs_int_mm"]
    assert [r.get("status") for r in doc["rows"][1:]] == ["stopped: budget", "skipped: budget"]
    assert "Stopped early (budget)" in md
    assert signal.getsignal(signal.SIGTERM) is not None  # the handlers were put back


@main_thread_only
def test_sigterm_stops_the_run_and_keeps_the_results(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)

    def killed(b):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setitem(gpu_check.RUNNERS, "epilogue", killed)
    assert gpu_check.main(["--smoke", "--only", "gemm,epilogue,conv",
                           "--out", str(tmp_path)]) == 0
    doc, _ = _doc(tmp_path)
    assert doc["sections"]["gemm"]["status"] == "done"
    assert doc["sections"]["epilogue"]["status"] == "stopped: SIGTERM"
    assert doc["sections"]["conv"]["status"] == "skipped: SIGTERM"
    assert [r for r in doc["rows"] if r["section"] == "gemm" and "status" not in r]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fxforge.bench.gpu_check", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--smoke" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--smoke", "--only", "verify,nope"])
    assert "nope" in capsys.readouterr().err


def _gemm_row(m, nk, ours, int_mm, fp16, exact=True):
    peer = "torch._int_mm" + (" (M padded to 32)" if m <= 16 else "")
    return {"section": "gemm", "m": m, "n": nk, "k": nk, "exact_vs_int_mm": exact,
            "ms": {"fxforge int8": ours, peer: int_mm, "fp16 matmul": fp16}}


def test_goals_from_full_size_rows():
    """The goals table reads the rows of a real run: ratios of the named peers, the worst of the
    M <= 16 rows, a failed check fails its goal, a missing peer is "not measured"."""
    z = gpu_check.FULL
    rows = [_gemm_row(4096, 4096, 1.0, 1.1, 2.0), _gemm_row(1, 8192, 0.02, 0.05, 0.04),
            _gemm_row(16, 8192, 0.03, 0.05, 0.05), _gemm_row(8192, 8192, 9.0, 1.0, 1.0),
            {"section": "epilogue", "m": 4096, "n": 4096, "max_lsb_diff": 1, "speedup": 1.25,
             "ms": {"fxforge fused": 0.8, "_int_mm + torch epilogue": 1.0}},
            {"section": "e2e", "model": "resnet50", "batch": 64,
             "ms": {"fxforge cuda-int8": 10.0, "torch.compile fp16 max-autotune": 20.0},
             "speedup_vs_eager_fp16": None, "failed": {}, "skipped": {}},
            {"section": "e2e", "model": "bert-base", "batch": 128,
             "ms": {"fxforge cuda-int8": 10.0}, "speedup_vs_eager_fp16": None, "failed": {},
             "skipped": {"torch.compile max-autotune": "budget"}},
            {"section": "gemm", "case": "M 4096", "status": "error", "error": "boom"}]
    got = {g["goal"]: g for g in gpu_check.goals(rows, z)}
    assert got["gemm-4096"]["measured"] == 1.1 and got["gemm-4096"]["status"] == "PASS"
    assert got["fused-epilogue"]["status"] == "FAIL"
    assert got["small-m"]["measured"] == pytest.approx(5 / 3, abs=1e-3)  # M 16: 0.05 / 0.03
    assert got["small-m"]["status"] == "PASS" and "M 1: 2.00x" in got["small-m"]["detail"]
    assert got["resnet50"]["measured"] == 2.0 and got["resnet50"]["status"] == "PASS"
    assert got["bert-base"]["status"] == "not measured"
    assert "budget" in got["bert-base"]["detail"]
    rows[0]["exact_vs_int_mm"] = False
    assert gpu_check.goals(rows, z)[0]["status"] == "FAIL"
    md = gpu_check.markdown({
        "device": "NVIDIA H100", "versions": {"torch": "x", "triton": "y", "cuda": "12"},
        "machine": {"date": "today", "commit": "abc"}, "smoke": False, "autotune": True,
        "repeats": 30, "budget_s": 460, "elapsed_s": 1, "finished": True, "stopped": None,
        "sections": {"gemm": {"status": "done", "seconds": 3.0}},
        "verify": {"passed": 0, "failed": 0}, "goals": gpu_check.goals(rows, z), "rows": rows})
    assert "| 4096 | 4096 | False |" in md and "gemm / M 4096: error: boom" in md
    assert "SMOKE" not in md and "**FAIL**" in md
