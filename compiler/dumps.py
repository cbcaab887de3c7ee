"""Writing and reading IR dumps (`debug={"dump_dir": ...}`, `load_dump`).

Dumps are a debugging aid, so they never cost the compile: a dump dir that cannot be written (read
only, a file in its place, a full disk) gives one `DumpWarning` naming the path and the OS error,
and the compile goes on without dumps; an old `constants.npz` that cannot be read gives a
`DumpWarning` and is replaced by a fresh store. Writes never follow a symlink: each file is
written to a temp file in its folder and `os.replace`d over the name (replacing a symlink there,
never writing through it), and a subfolder (`capture-2`) that is a symlink or not a directory is
refused. The dump dir itself is the path the user named, symlinks in it included. Files are
created private (0600), as `tempfile.mkstemp` makes them: they hold the model's weights.

`load_dump` treats a dump as untrusted input: anything wrong with the .ir file or the store (not a
zip, a single .npy, truncated, an array of a dtype the IR has no numpy type for, data that does not
match its digest key, a constant the IR references but the store lacks) is a `PipelineError` (or,
for bad IR text, the parser's `IRParseError`) whose message names the file. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import lzma
import math
import os
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fxforge import dtypes
from fxforge.errors import PipelineError
from fxforge.ir import Graph, digest_of
from fxforge.parser import IRParseError, parse_ir
from fxforge.printer import print_graph

STORE = "constants.npz"


class DumpWarning(UserWarning):
    """A dump could not be written, or an old constants store had to be replaced; the compile
    went on. Its own class so that `warnings.filterwarnings("ignore", category=DumpWarning)`
    silences exactly these."""


# --- writing dumps -------------------------------------------------------------------------------


class DumpWriter:
    """The dumps of one `run` into `root/subdir`.

    The constants store is read once (the first dump) and then kept in memory, so each stage only
    rewrites it when it brings constants the store lacks. The first OSError turns dumping off for
    the rest of the run with one DumpWarning: dumps are a debugging aid, the compile goes on.
    """

    def __init__(self, root: Path, subdir: str):
        self.root = root
        self.folder = root / subdir
        self.subdir = subdir
        self.arrays: dict[str, np.ndarray] | None = None  # read at the first write
        self.stored = False  # whether the store on disk holds every key of `arrays`
        self.off = False

    def write(self, index: int, name: str, graph: Graph) -> None:
        if self.off:
            return
        target: Path | None = None  # while None, the OSError names the dir it is about
        try:
            if self.arrays is None:
                self._open()
            target = self.folder / f"{index:02d}-{name}.ir"
            text = (print_graph(graph) + "\n").encode("utf-8")
            _replace_atomically(target, lambda f: f.write(text))
            target = self.folder / STORE
            self._store(graph)
        except OSError as e:
            self.off = True
            where = target or e.filename or self.folder
            warnings.warn(f"fxforge: cannot write IR dumps to {where}: {e.strerror or e}; "
                          "the compile goes on without dumps", DumpWarning, stacklevel=3)

    def _open(self) -> None:
        """Make the folder (refusing a subfolder that is a symlink or a file) and read the old
        store, if any."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root
        for part in Path(self.subdir).parts:
            folder = folder / part
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "a symlink or a file is in the place of "
                                         "the dump subfolder; it is not followed", str(folder))
        self.arrays = self._old_store()
        self.stored = bool(self.arrays)

    def _old_store(self) -> dict[str, np.ndarray]:
        """The arrays of an existing store; a bad one (or a symlink) is warned about and then
        replaced by a fresh store at the next write, so that it cannot fail the compile."""
        store = self.folder / STORE
        if not os.path.lexists(store):
            return {}
        try:
            return _read_store(store, follow_symlinks=False)
        except PipelineError as e:
            warnings.warn(f"fxforge: {e}; starting a fresh store in its place", DumpWarning,
                          stacklevel=4)
            return {}

    def _store(self, graph: Graph) -> None:
        assert self.arrays is not None
        new = {n.attrs["value"].digest: n.attrs["value"].array for n in graph.nodes
               if n.op == "const" and n.attrs["value"].array is not None}
        new = {k: v for k, v in new.items() if k not in self.arrays}
        if not new and self.stored:
            return
        self.arrays.update(new)
        arrays = self.arrays
        _replace_atomically(self.folder / STORE, lambda f: np.savez(f, **arrays))
        self.stored = True


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a private temp file beside `path`, then os.replace it over `path`: a symlink at
    `path` is replaced, never written through, and readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- reading dumps -------------------------------------------------------------------------------

# What zipfile and numpy raise on malformed bytes: BadZipFile, EOFError, zlib/lzma errors and
# OSError (bz2) from a damaged member, NotImplementedError (an unknown compression method) and
# RuntimeError (an encrypted member), ValueError from a bad .npy header, struct.error, ...
UNREADABLE = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, RuntimeError,
               OverflowError, MemoryError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
               struct.error)
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _read_store(store: Path, follow_symlinks: bool = True) -> dict[str, np.ndarray]:
    """digest -> array of a constants store; PipelineError naming `store` for anything that is
    not an .npz of numeric/bool arrays of the IR's dtypes, each keyed by its own digest."""
    try:
        if not stat.S_ISREG(os.stat(store, follow_symlinks=follow_symlinks).st_mode):
            kind = "a symlink" if os.path.islink(store) else "not a regular file"
            raise ValueError(f"it is {kind}")
        with open(store, "rb") as f:
            return read_constants(f)
    except UNREADABLE as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if not isinstance(e, ValueError) or isinstance(e, UnicodeError):
            detail = f"{type(e).__name__}: {detail}"
        raise PipelineError(f"cannot read the constants store {store}: {detail}") from e


def read_constants(f: BinaryIO) -> dict[str, np.ndarray]:
    """digest -> array of an .npz store read from the seekable file `f`, each member checked by
    `_read_member`; raises one of `UNREADABLE` on anything malformed."""
    if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
        raise ValueError("it is a single .npy array, not an .npz archive")
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        names = [info.filename for info in archive.infolist()]
        if len(set(names)) != len(names):
            raise ValueError("it holds a member name twice")
        return dict(_read_member(archive, info) for info in archive.infolist())


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, np.ndarray]:
    """One `<digest>.npy` member, checked: dtype, size, and that the key is its digest. The
    header is read first, so no object array is ever unpickled and no size is trusted."""
    name = info.filename
    if not name.endswith(".npy"):
        raise ValueError(f"member {name!r} is not an .npy array")
    with archive.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version not in _HEADER_READERS:
            raise ValueError(f"member {name!r} has .npy format version {version}")
        shape, fortran, dtype = _HEADER_READERS[version](fp)
        _check_dtype(dtype, name)
        if any(d < 0 for d in shape):
            raise ValueError(f"member {name!r} has a negative dimension in its shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise ValueError(f"member {name!r} is truncated: its shape {shape} needs {nbytes} "
                             f"bytes, it holds {info.file_size}")
        data = fp.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"member {name!r} is truncated: {len(data)} of {nbytes} bytes")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if dtype == np.bool_ and np.frombuffer(data, dtype=np.uint8).max(initial=0) > 1:
        raise ValueError(f"member {name!r} holds booleans that are not 0 or 1")
    if digest_of(array) != name[:-4]:
        raise ValueError(f"member {name!r}: its data does not match its key (the digest of "
                         "the data)")
    return name[:-4], array


def _check_dtype(dtype: np.dtype, name: str) -> None:
    """Only the numpy dtypes of the IR (native byte order): no strings, objects, records."""
    try:
        dtypes.from_numpy(dtype)
    except dtypes.DTypeError:
        raise ValueError(f"member {name!r} has dtype {dtype}, which is not one of the IR's "
                         "numeric/bool dtypes") from None


def _read_ir_text(path: Path) -> str:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PipelineError(f"cannot read the dump {path}: it is not a regular file")
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise PipelineError(f"cannot read the dump {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PipelineError(f"cannot read the dump {path}: it is not UTF-8 text ({e})") from e


def load_dump(path: str | Path) -> Graph:
    """A dumped stage as a runnable graph (constants from the sibling constants.npz).

    A dump is input like any file: every problem with it is a PipelineError (IRParseError for
    bad IR text) that names the file, never a raw numpy/zipfile error."""
    path = Path(path)
    text = _read_ir_text(path)
    store = path.parent / STORE
    arrays = _read_store(store) if os.path.lexists(store) else {}
    try:
        graph = parse_ir(text, constants=arrays)
    except IRParseError as e:
        raise IRParseError(f"{path}: {e}") from e
    missing = [f"%{n.outputs[0].name} (@{n.attrs['value'].digest})" for n in graph.nodes
               if n.op == "const" and n.attrs["value"].array is None]
    if missing:
        lacks = f"{store} does not hold" if os.path.lexists(store) else f"there is no {store} for"
        raise PipelineError(f"{path} references constants whose data {lacks}: "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return graph
