"""What is measured besides time: peak memory, size on disk, error against eager float32."""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

MB = 1024 * 1024


# --- peak memory -------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_hwm() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory above the level at entry, in bytes, of what runs inside `with`.

    CPU: the process's resident set (RSS), which sees what torch, ONNX Runtime and compilers
    allocate in C/C++ (tracemalloc would see only Python objects). On Linux the kernel's
    high-water mark is reset at entry (/proc/self/clear_refs) and read at exit (VmHWM);
    elsewhere a thread samples RSS every millisecond. CUDA: torch.cuda.max_memory_allocated
    above memory_allocated at entry (ONNX Runtime's CUDA arena is not seen)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ("cuda_max_memory_allocated" if device.type == "cuda"
                       else "rss_high_water_mark")
        self.peak_bytes: int | None = None

    def level(self) -> int | None:
        """Memory in use now: RSS, or CUDA memory allocated."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _rss_bytes()

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - base)
            return
        base = _rss_bytes()
        if _reset_hwm() and _status_kb("VmHWM") is not None:
            yield self
            self.peak_bytes = max(0, _status_kb("VmHWM") * 1024 - base)
            return
        self.method = "rss_sampled_1ms"
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()
            self.peak_bytes = max(0, max(peak[0], _rss_bytes()) - base)


# --- size on disk ------------------------------------------------------------------------------


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: what eager PyTorch ships (written to a
    temporary file and measured; never loaded back)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def files_bytes(*paths: str | Path) -> int:
    return sum(os.path.getsize(p) for p in paths if p and os.path.exists(p))


# --- outputs and errors ------------------------------------------------------------------------


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor leaf of a model output (tensor, tuple, dict, ModelOutput, ndarray)."""
    for leaf in pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor):
            return leaf
        if isinstance(leaf, np.ndarray):
            return torch.from_numpy(leaf)
    if hasattr(output, "to_tuple"):
        return first_tensor(output.to_tuple())
    raise TypeError(f"the model output ({type(output).__name__}) has no tensor")


def output_error(expected: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Max |error| and cosine similarity of `got` against `expected` (both flattened, float64)."""
    a = expected.detach().to("cpu", torch.float64).reshape(-1)
    b = got.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"output shape {tuple(got.shape)} differs from eager's "
                         f"{tuple(expected.shape)}")
    max_abs = float((a - b).abs().max()) if a.numel() else 0.0
    denom = float(a.norm() * b.norm())
    cosine = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    return {"max_abs": max_abs, "cosine": cosine}


# --- machine load ------------------------------------------------------------------------------


def _cpu_times() -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0.0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


class LoadMeter:
    """How busy the machine was during a run, besides this process: the load average at both
    ends, the share of CPU time the hypervisor gave to other machines (steal), and the share
    used by other processes (all CPU time used minus this process's and its children's)."""

    def __init__(self):
        import resource

        self._resource = resource
        self.start_cpu = _cpu_times()
        self.start_own = self._own()
        self.start_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    def _own(self) -> float:
        r = self._resource
        own = r.getrusage(r.RUSAGE_SELF)
        kids = r.getrusage(r.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def result(self) -> dict[str, float | None]:
        end_cpu = _cpu_times()
        out: dict[str, float | None] = {
            "loadavg_start": self.start_load,
            "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "steal_pct": None, "other_processes_pct": None}
        if self.start_cpu and end_cpu:
            busy, steal, total = (b - a for a, b in zip(self.start_cpu, end_cpu))
            if total > 0:
                hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
                own = (self._own() - self.start_own) * hz
                out["steal_pct"] = 100.0 * steal / total
                out["other_processes_pct"] = 100.0 * max(0.0, busy - own) / total
        return out
