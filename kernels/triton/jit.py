"""Generated kernel source -> a Triton kernel, in the mode of the moment (GPU or interpreter).

Why source text: epilogues and elementwise chains come from the IR, so each kernel is written out
by `codegen` and compiled here. The source is registered with `linecache` (Triton reads a
kernel's source through `inspect`), never written to or read from disk, and it only holds
identifiers made by the generator (`check_identifiers`): nothing from the model reaches it.
"""

from __future__ import annotations

import builtins
import io
import keyword
import linecache
import os
import threading
import tokenize
from collections.abc import Callable
from typing import Any

import torch

from fxforge.errors import DeviceUnavailableError

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str, bool], Any] = {}
_COUNT = [0]

# Builtins generated source may call; every other builtin name (eval, exec, open, getattr,
# __import__, ...) is refused, as are dunder names, string literals and comments.
ALLOWED_BUILTINS = frozenset(("float", "int", "min", "max", "range", "len", "abs"))
_BUILTINS = frozenset(dir(builtins))
_IMPORTS = ("import triton", "import triton.language as tl")


def interpreting() -> bool:
    """Whether Triton kernels run on its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_device(target: str, device: torch.device | str | None = None) -> torch.device:
    """The device kernels of `target` run on: CUDA, or the CPU under the interpreter; otherwise a
    clear error that says what to do instead."""
    if interpreting():
        return torch.device("cpu") if device is None else torch.device(device)
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise DeviceUnavailableError(f"target {target!r} needs Triton (pip install triton): "
                                     f"{e}") from None
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"target {target!r} runs generated Triton kernels and needs a CUDA device; none is "
            "available. Use a CPU target (cpu, cpu-int8), or set TRITON_INTERPRET=1 to run the "
            "kernels on the CPU through Triton's interpreter (slow: for testing)")
    return torch.device("cuda") if device is None else torch.device(device)


def check_identifiers(source: str) -> None:
    """Refuse source that could do anything but compute: string literals, comments, dunder
    names, builtins other than ALLOWED_BUILTINS, and imports other than Triton's. Generated names
    are free-form, but none of them can come from the model (codegen writes numbers and its own
    names only), and this check makes sure of it. Raises ValueError."""
    for line in source.splitlines():
        if line.lstrip().startswith(("import", "from")) and line.strip() not in _IMPORTS:
            raise ValueError(f"generated kernel source imports something else: {line.strip()!r}")
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        attribute, prev = prev is not None and prev.string == ".", tok  # tl.sum: no builtin
        if tok.type == tokenize.STRING:
            raise ValueError(f"generated kernel source holds a string literal: {tok.string!r}")
        if tok.type == tokenize.COMMENT:
            raise ValueError("generated kernel source holds a comment")
        if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string) and (
                tok.string.startswith("__")
                or (tok.string in _BUILTINS and tok.string not in ALLOWED_BUILTINS
                    and not attribute)):
            raise ValueError(f"generated kernel source uses the name {tok.string!r}")


def build(source: str, name: str) -> Any:
    """Compile generated `source` and return its function `name` as a Triton kernel (a
    JITFunction, or the interpreter's stand-in). Cached by source and mode."""
    check_identifiers(source)
    key = (source, name, interpreting())
    with _LOCK:
        kernel = _CACHE.get(key)
        if kernel is not None:
            return kernel
        import triton

        _COUNT[0] += 1
        filename = f"<fxforge-kernel-{_COUNT[0]}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace: dict[str, Any] = {}
        exec(compile(source, filename, "exec"), namespace)  # generated source only, checked above
        fn: Callable = namespace[name]
        kernel = _CACHE[key] = triton.jit(fn)
        return kernel


HEADER = "\n".join(_IMPORTS) + "\n\n\n"


def generated_sources() -> list[str]:
    """Every kernel source built in this process (for inspection and tests)."""
    with _LOCK:
        return [source for source, _, _ in _CACHE]
