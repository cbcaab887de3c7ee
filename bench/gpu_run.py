"""The state of one GPU-check run, `Check`: its deadline (the budget, SIGALRM, SIGTERM), the rows
measured so far, and the JSON + markdown files, rewritten after every row so that a run killed
from outside still leaves what it measured. gpu_check.py makes the one `Check` and hands it to
each section runner (gpu_verify.py, gpu_sections.py), which add rows through it."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxforge.bench import triton_gpu
from fxforge.bench.gpu_report import goals, markdown
from fxforge.bench.gpu_sizes import FULL, SMOKE
from fxforge.bench.timing import machine

SCHEMA = "fxforge-gpu-check/1"


class BudgetExceeded(BaseException):
    """The run's time is up (its budget, or SIGTERM). A BaseException, so that the `except
    Exception` of a step (or of the autotuner skipping a failing config) does not swallow it."""


def _plain(obj: Any) -> Any:
    """JSON for what json cannot write itself (numpy scalars, dtypes, ...)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Size, tuple, set)):
        return list(obj)
    return str(obj)


def traceback_head(e: BaseException) -> list[str]:
    """The exception and the last frames of its traceback, short."""
    frames = traceback.extract_tb(e.__traceback__)[-4:]
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames] + [
        f"{type(e).__name__}: {str(e)[:400]}"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _versions(cuda: bool) -> dict[str, str]:
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda),
           "python": sys.version.split()[0]}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "not installed"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, " \
                     f"{props.multi_processor_count} SMs, sm_{props.major}{props.minor}"
    return out


class Check(triton_gpu.Bench):
    """triton_gpu's Bench with a deadline: rows are written out as they come, steps ask
    `allow` before they start, and the deadline (or SIGTERM) interrupts the step in flight."""

    def __init__(self, args: argparse.Namespace, out: Path):
        super().__init__(args)
        self.sizes = SMOKE if self.smoke else FULL
        self.budget_s = float(args.budget_s)
        self.started = time.monotonic()
        self.deadline = self.started + self.budget_s
        self.sections: dict[str, dict[str, Any]] = {}
        self.stopped: str | None = None
        self.finished = False
        self._writing = False
        self._pending: str | None = None
        self._saved: dict[int, Any] = {}
        self.device_name = torch.cuda.get_device_name() if self.cuda else "cpu-interpreter"
        self.versions = _versions(self.cuda)
        self.machine = machine()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"gpu-check-{slug}-{stamp}.json"
        self.md_path = self.json_path.with_suffix(".md")

    # -- time --

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, what: str, need_s: float) -> bool:
        return self.stopped is None and self.left() >= need_s

    def _interrupt(self, why: str) -> None:
        if self.stopped is not None:
            return  # already stopping: a second signal changes nothing
        self.stopped = why
        if self._writing:
            self._pending = why  # raised when the write is done: files stay whole
        else:
            raise BudgetExceeded(why)

    def arm(self) -> None:
        """SIGALRM at the deadline and SIGTERM raise BudgetExceeded in the main thread."""
        if threading.current_thread() is not threading.main_thread() \
                or not hasattr(signal, "setitimer"):
            return
        for sig, why in ((signal.SIGALRM, "budget"), (signal.SIGTERM, "SIGTERM")):
            self._saved[sig] = signal.signal(sig, lambda *_, why=why: self._interrupt(why))
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))

    def disarm(self) -> None:
        if not self._saved:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    # -- rows --

    def add(self, section: str, **row: Any) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        print(json.dumps(row, default=_plain), flush=True)
        self.write()

    def skip_status(self) -> str:
        return "skipped: budget" if self.stopped in (None, "budget") else \
            f"skipped: {self.stopped}"

    def skip(self, section: str, case: str | None, need_s: float) -> None:
        self.add(section, **({"case": case} if case else {}), status=self.skip_status(),
                 need_s=need_s, left_s=round(max(self.left(), 0.0), 1))

    def error(self, section: str, case: str, e: BaseException) -> None:
        self.add(section, case=case, status="error", error=f"{type(e).__name__}: {e}"[:500],
                 traceback=traceback_head(e))
        self.recover()

    def recover(self) -> None:
        """After a failed step: wait for the device and give memory back (OOM); a sticky CUDA
        error stays, and every later step reports it."""
        if self.cuda:
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:  # the error was recorded with its step
                pass

    def case(self, section: str, label: str, need_s: float, fn: Callable[[], object]) -> None:
        """Run one step of a section unless too little time is left; an exception is recorded
        as the step's error row and the section goes on."""
        if not self.allow(label, need_s):
            self.skip(section, label, need_s)
            return
        try:
            fn()
        except Exception as e:  # a failing step is reported, never fatal
            self.error(section, label, e)

    # -- output --

    def document(self) -> dict[str, Any]:
        verify = [r for r in self.rows if r["section"] == "verify" and "status" not in r]
        return {"schema": SCHEMA, "device": self.device_name, "versions": self.versions,
                "machine": self.machine, "smoke": self.smoke, "autotune": self.autotune,
                "repeats": self.repeats, "budget_s": self.budget_s,
                "elapsed_s": round(time.monotonic() - self.started, 1),
                "finished": self.finished, "stopped": self.stopped, "sections": self.sections,
                "verify": {"passed": sum(bool(r["ok"]) for r in verify),
                           "failed": sum(not r["ok"] for r in verify)},
                "goals": goals(self.rows, self.sizes), "rows": self.rows}

    def write(self) -> None:
        self._writing = True
        try:
            doc = self.document()
            _write_atomic(self.json_path, json.dumps(doc, indent=1, default=_plain))
            try:
                text = markdown(doc)
            except Exception as e:  # the JSON has it all; say why, go on
                text = f"# fxforge GPU check: {self.device_name}\n\nThe markdown could not " \
                       f"be made ({type(e).__name__}: {e}); see {self.json_path.name}.\n"
            _write_atomic(self.md_path, text)
        finally:
            self._writing = False
        if self._pending is not None:
            why, self._pending = self._pending, None
            raise BudgetExceeded(why)
