"""A persistent autotuner for the generated Triton kernels.

Why persistent: timing every meta-parameter config of every kernel is most of what a compile for
a cuda target costs, and the answer only depends on the kernel, the problem shape, the GPU and
the Triton version. So the winner is kept in memory and on disk, and a second compile of the same
model (a new process, the same cache dir) times nothing.

Why so careful with the disk: the cache is read back into kernel launches, so a file someone else
could write must not steer them. The cache dir is made private (0700; files 0600) and a dir that
is not the user's own, or that group/others can reach, is not used at all (a warning says why).
Entries are JSON, never pickle; an entry is used only when its config is exactly one of the
configs offered now, so a stale or tampered file can at worst cost a retune, never an exception:
a file is read with a size limit and without following a symlink, any error of reading or parsing
it (RecursionError from deep nesting, ValueError, UnicodeDecodeError, OSError, ...) makes it a
miss, and every entry is checked field by field (types and ranges of the key, of each config value
that becomes a launch parameter, of the timing) before it is compared with anything. A retune
rewrites the file, replacing the bad one (a symlink in its place is replaced, not followed).

Layout: one file per (kernel, device name, Triton version), named by a sha256 of those three,
holding {"schema": 1, "kernel", "device", "triton", "entries": [{"key", "config", "ms"}]}.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fxforge.errors import FxforgeError
from fxforge.kernels.triton.jit import interpreting

SCHEMA = 1
MAX_FILE_BYTES = 1 << 20  # an entry file is a few KiB; anything far larger is not ours
# Bounds of what a cached entry may hold: a launch parameter is a small non-negative int (a block
# size, warps, stages) or a short name (PRECISION); a key item is a shape string or an int.
MAX_LAUNCH_INT = 1 << 31
MAX_NAME_CHARS = 256
MAX_ITEMS = 64
# A parse or a check of a cached file fails with one of these; each means "not a usable entry".
_BAD_FILE = (OSError, ValueError, TypeError, OverflowError, RecursionError)


class AutotuneError(FxforgeError, RuntimeError):
    """Every config offered for a kernel failed to run; the message names the kernel and key."""


class TuneRecord(NamedTuple):
    """One timed config, for the compile report."""

    kernel: str
    key: tuple
    config: dict
    ms: float


# --- environment --------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$FXFORGE_CACHE_DIR/autotune, else ~/.cache/fxforge/autotune."""
    root = os.environ.get("FXFORGE_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "fxforge"
    return base / "autotune"


def _on_gpu() -> bool:
    return torch.cuda.is_available() and not interpreting()


def device_name() -> str:
    """The name timings belong to: the GPU's model, or where the interpreter runs."""
    if _on_gpu():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "triton-interpreter" if interpreting() else "cpu"


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return str(triton.__version__)


def _canonical(obj: Any) -> str:
    """One spelling per JSON value, so `1` and `1.0` or reordered keys never pass for equal."""
    return json.dumps(obj, sort_keys=True, allow_nan=False)


# --- the cache dir ------------------------------------------------------------------------------


def _make_private_dirs(path: Path) -> None:
    """mkdir -p with mode 0700 for every dir this call creates (parents too), chmod'ed after
    because the umask may have taken bits away; dirs that already exist are not touched."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by a concurrent process: checked like any existing dir
        os.chmod(d, 0o700)


def _why_untrusted(path: Path) -> str | None:
    """None when `path` is a dir of the current user that no one else can reach."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid != getuid():
        return f"it is owned by uid {st.st_uid}, not by the current user (uid {getuid()})"
    if st.st_mode & 0o077:
        return (f"its mode {stat.S_IMODE(st.st_mode):04o} lets group/others in "
                "(it must be 0700)")
    return None


def _entry_file(directory: Path, kernel: str, device: str, triton: str) -> Path:
    digest = hashlib.sha256(_canonical([kernel, device, triton]).encode()).hexdigest()
    return directory / f"{digest}.json"


def _read_entries(path: Path, kernel: str, device: str, triton: str) -> list[dict]:
    """The well-formed entries of a file that is what its name says; [] for anything else,
    whatever the bytes (the promise: a bad file costs a retune, never an exception)."""
    try:
        doc = json.loads(_read_small(path).decode("utf-8"), parse_constant=_no_constant)
        if not isinstance(doc, dict) or type(doc.get("schema")) is not int \
                or doc["schema"] != SCHEMA or doc.get("kernel") != kernel \
                or doc.get("device") != device or doc.get("triton") != triton:
            return []
        entries = doc.get("entries")
        return [e for e in entries if _well_formed(e)] if isinstance(entries, list) else []
    except _BAD_FILE:
        return []


def _read_small(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, opened without following a
    symlink or blocking on a FIFO; OSError or ValueError for anything else."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise ValueError(f"{path} is not a regular file")
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is not a regular file of at most {MAX_FILE_BYTES} bytes")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} grew past {MAX_FILE_BYTES} bytes")
    return data


def _no_constant(name: str) -> Any:
    """json's parse_constant: NaN and Infinity are not JSON, and no field may hold them."""
    raise ValueError(f"{name} is not allowed in an autotune cache file")


def _well_formed(entry: Any) -> bool:
    """An entry whose every field has the type and range `pick` and the kernels expect."""
    if not isinstance(entry, dict) or set(entry) != {"key", "config", "ms"}:
        return False
    ms, key, config = entry["ms"], entry["key"], entry["config"]
    return (_valid_ms(ms) and isinstance(key, list) and len(key) <= MAX_ITEMS
            and all(_small_scalar(item, signed=True) for item in key)
            and isinstance(config, dict) and 0 < len(config) <= MAX_ITEMS
            and all(isinstance(k, str) and 0 < len(k) <= MAX_NAME_CHARS
                    and _small_scalar(v, signed=False) for k, v in config.items()))


def _valid_ms(ms: Any) -> bool:
    """A finite non-negative time (an int too large for a float is not one)."""
    if type(ms) is int:
        return 0 <= ms < MAX_LAUNCH_INT
    return type(ms) is float and math.isfinite(ms) and ms >= 0


def _small_scalar(value: Any, signed: bool) -> bool:
    """A short str (a shape like "256x512", "" for a scalar's; a name like "ieee"), or an int,
    never a bool or float, in the range a launch parameter takes: 0 <= value < MAX_LAUNCH_INT
    (a key item, a problem size, may also be negative)."""
    if isinstance(value, str):
        return len(value) <= MAX_NAME_CHARS
    low = -MAX_LAUNCH_INT if signed else 0
    return type(value) is int and low <= value < MAX_LAUNCH_INT


def _write_atomic(path: Path, doc: dict) -> None:
    """Write via a private temp file in the same dir and os.replace: readers see the old file
    or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- timing -------------------------------------------------------------------------------------


def time_ms(run: Callable[[dict], object], config: dict) -> float:
    """Milliseconds of one launch: CUDA events via do_bench (warm-up, median) on a GPU; one
    perf_counter-timed call under the interpreter or on the CPU, where only the order matters."""
    if _on_gpu():
        from triton.testing import do_bench

        return float(do_bench(lambda: run(config), return_mode="median"))
    start = time.perf_counter()
    run(config)
    return (time.perf_counter() - start) * 1e3


# --- the tuner ----------------------------------------------------------------------------------


class Tuner:
    """Picks the fastest config per (kernel, key) once, remembering it in memory and on disk.

    `log` holds a TuneRecord per config timed (the winner of a pick is its fastest record);
    `hits` counts picks answered from memory or disk without timing anything.
    """

    def __init__(self, cache_dir: str | Path | None = None, enabled: bool = True):
        self.enabled = enabled
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None \
            else default_cache_dir()
        self.log: list[TuneRecord] = []
        self.hits = 0
        self._memory: dict[tuple[str, str, str, str], dict] = {}
        self._disk: bool | None = None  # decided at the first pick that needs the disk
        self._lock = threading.RLock()

    def pick(self, kernel: str, key: tuple, configs: Sequence[dict],
             run: Callable[[dict], object]) -> dict:
        """The fastest of `configs` for `kernel` at problem `key`; `run(config)` launches once.

        A config that raises is skipped; when all do, AutotuneError carries the last error.
        With one config, or when disabled, the first config is returned and nothing runs.
        """
        configs = [dict(c) for c in configs]
        if not configs:
            raise ValueError(f"autotune: no configs offered for kernel {kernel[:16]}")
        if not self.enabled or len(configs) == 1:
            return configs[0]
        key_json = _key_json(key)
        offered = [_config_json(c, kernel) for c in configs]
        device, triton = device_name(), triton_version()
        mkey = (kernel, device, triton, _canonical(key_json))
        with self._lock:
            found = _among(self._memory.get(mkey), offered, configs)
            path = None
            entries: list[dict] = []
            if found is None and self._disk_ok():
                path = _entry_file(self.cache_dir, kernel, device, triton)
                entries = _read_entries(path, kernel, device, triton)
                mine = [e for e in entries if _canonical(e["key"]) == mkey[3]]
                found = _among(mine[-1]["config"] if mine else None, offered, configs)
            if found is not None:
                self.hits += 1
                self._memory[mkey] = found
                return dict(found)
            best, ms = self._tune(kernel, tuple(key), configs, run)
            self._memory[mkey] = best
            if path is not None:
                self._store(path, kernel, device, triton, entries, key_json, best, ms)
            return dict(best)

    def remembered(self, kernels: Collection[str]) -> list[dict]:
        """The picks in memory for these kernel identities, as plain JSON records (what a saved
        model archive keeps, so that loading it on the same GPU and Triton times nothing)."""
        with self._lock:
            return [{"kernel": k, "device": d, "triton": t, "key": json.loads(key),
                     "config": dict(config)}
                    for (k, d, t, key), config in self._memory.items() if k in kernels]

    def remember(self, records: Sequence[Any]) -> int:
        """Take picks from `remembered` records (an archive's: untrusted, so each is checked as a
        cache file entry is, and a pick is still only used when it is one of the configs offered
        at that time). Returns how many were taken."""
        taken = 0
        with self._lock:
            for r in records:
                if not isinstance(r, dict) or set(r) != {"kernel", "device", "triton", "key",
                                                         "config"}:
                    continue
                names = (r["kernel"], r["device"], r["triton"])
                if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names):
                    continue
                if not _well_formed({"key": r["key"], "config": r["config"], "ms": 0.0}):
                    continue
                self._memory[(*names, _canonical(r["key"]))] = dict(r["config"])
                taken += 1
        return taken

    # -- internals --

    def _disk_ok(self) -> bool:
        if self._disk is None:
            try:
                _make_private_dirs(self.cache_dir)
                reason = _why_untrusted(self.cache_dir)
            except OSError as e:
                reason = f"it cannot be created ({e.strerror or e})"
            if reason is not None:
                warnings.warn(f"fxforge autotune: not using the cache dir {self.cache_dir}: "
                              f"{reason}; tuning goes on without a disk cache", stacklevel=3)
            self._disk = reason is None
        return self._disk

    def _tune(self, kernel: str, key: tuple, configs: list[dict],
              run: Callable[[dict], object]) -> tuple[dict, float]:
        best: tuple[dict, float] | None = None
        last: BaseException | None = None
        for config in configs:
            try:
                ms = time_ms(run, config)
            except Exception as e:  # out of shared memory, too many registers, ...
                last = e
                continue
            self.log.append(TuneRecord(kernel, key, dict(config), ms))
            if best is None or ms < best[1]:
                best = (config, ms)
        if best is None:
            raise AutotuneError(
                f"autotune: all {len(configs)} configs of kernel {kernel[:16]} failed for key "
                f"{key}; the last one ({configs[-1]}) raised {type(last).__name__}: {last}"
            ) from last
        return best

    def _store(self, path: Path, kernel: str, device: str, triton: str, entries: list[dict],
               key_json: list, config: dict, ms: float) -> None:
        kept = [e for e in entries if _canonical(e["key"]) != _canonical(key_json)]
        kept.append({"key": key_json, "config": config, "ms": float(ms)})
        doc = {"schema": SCHEMA, "kernel": kernel, "device": device, "triton": triton,
               "entries": kept}
        try:
            _write_atomic(path, doc)
        except OSError as e:
            warnings.warn(f"fxforge autotune: could not write {path}: {e}", stacklevel=3)


def _key_json(key: tuple) -> list:
    items = list(key)
    for item in items:
        if not isinstance(item, (int, str)):
            raise TypeError(f"autotune key items must be ints or strs, got {item!r} in {key!r}")
    return items


def _config_json(config: dict, kernel: str) -> str:
    try:
        return _canonical(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"autotune: a config of kernel {kernel[:16]} is not plain JSON "
                        f"({config!r}): {e}") from None


def _among(config: Any, offered: list[str], configs: list[dict]) -> dict | None:
    """The offered config that `config` is exactly (same keys, same JSON values), or None."""
    if not isinstance(config, dict):
        return None
    try:
        text = _canonical(config)
    except (TypeError, ValueError, RecursionError):
        return None
    return configs[offered.index(text)] if text in offered else None


_DEFAULT: list[Tuner] = []
_DEFAULT_LOCK = threading.Lock()


def default_tuner() -> Tuner:
    """The process's shared tuner; FXFORGE_AUTOTUNE=0 turns tuning off (first config)."""
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            off = os.environ.get("FXFORGE_AUTOTUNE", "1").lower() in ("0", "false", "no", "off")
            _DEFAULT.append(Tuner(enabled=not off))
        return _DEFAULT[0]
