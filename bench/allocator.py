"""glibc malloc told to keep freed memory while the benchmark times (`mallopt`).

Why: eager PyTorch on CPU has no caching allocator; every call mallocs and frees its
activations. With glibc's defaults, blocks above the (dynamic) mmap threshold come straight
from the kernel and freed memory at the top of the heap goes back to it, so each eager
MobileNetV2 call took ~2400 fresh pages (~10 MB) from the kernel. On this project's VM those page
faults cost 10-50% of the call and their cost varies between processes and over time (eager
MobileNetV2 median 20.8-30.3 ms in four fresh processes; 18.2-20.6 ms with memory kept, 0 faults
per call; 2026-11-22). ONNX Runtime has its own arena and pays nothing, so the page faults made
ratios both unfair and unstable. Keeping freed memory is what a deployment gets from
jemalloc/tcmalloc (PyTorch's CPU performance guide recommends them); here it needs no extra
library and applies to every system alike.

Only timed slices run with it: memory figures (resident-set peaks) are measured outside them,
with glibc's default thresholds held fixed for the whole run (`fix_defaults`), so that memory
a system freed is not counted as held, and the first case is measured like the last.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

# mallopt parameters, from <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT = 128 * 1024  # default of all three (the mmap threshold then grows dynamically)

KEEP = {M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # glibc's maximum: below it, blocks come from heap
        M_TRIM_THRESHOLD: 1024 * 1024 * 1024,  # never return the top of the heap while timing
        M_TOP_PAD: 64 * 1024 * 1024}  # grow the heap in large steps


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None


def describe_kept() -> str:
    return (f"glibc malloc keeps freed memory while timing (mallopt: mmap threshold "
            f"{KEEP[M_MMAP_THRESHOLD] >> 20} MiB, trim threshold {KEEP[M_TRIM_THRESHOLD] >> 20} "
            f"MiB, top pad {KEEP[M_TOP_PAD] >> 20} MiB)")


def fix_defaults(enabled: bool = True) -> bool:
    """glibc's default thresholds, fixed (its mmap threshold otherwise grows with the largest
    block freed): leaving `keep_freed_memory` sets them so, because glibc cannot switch the
    dynamic threshold back on, so a run starts that way too. False when nothing was set."""
    libc = _glibc() if enabled else None
    if libc is None:
        return False
    return all(libc.mallopt(param, GLIBC_DEFAULT) == 1 for param in KEEP)


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[str]:
    """Inside: freed memory stays in the process. Yields a sentence for the report saying what
    the allocator did. On exit the trim threshold and top pad go back to glibc's defaults and
    the kept memory is returned (malloc_trim); the mmap threshold stays fixed at its default
    start value (glibc cannot switch its dynamic adjustment back on)."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield ("system malloc with its default settings" if not enabled else
               "system malloc with its default settings (not glibc: no mallopt)")
        return
    applied = all(libc.mallopt(param, value) == 1 for param, value in KEEP.items())
    try:
        yield describe_kept() if applied else "glibc mallopt refused the settings: defaults"
    finally:
        for param in KEEP:
            libc.mallopt(param, GLIBC_DEFAULT)
        libc.malloc_trim(0)
