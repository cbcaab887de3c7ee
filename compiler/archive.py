"""Saving a compiled model to one file and loading it back: `CompiledModel.save`, `fxforge.load`.

    fast = fxforge.compile(model, "cpu-int8", calibration=data)
    fast(x)                                  # every signature called so far is saved
    fast.save("model.fxf")
    ...
    fast = fxforge.load("model.fxf")         # another process: no model, no capture, no passes
    y = fast(x)

Why an archive of the optimized IR and not a pickled module: the IR is what the backends run, so
a loaded model gives the same outputs bit for bit without the original model class or its
source; and a model file is untrusted input, which the IR text and raw arrays can be read as
without running anything from the file.

An archive is a zip file with exactly these members (`ENTRY`):
- `manifest.json`: format and version, the versions of fxforge/torch/numpy/python that wrote it,
  the target and its pipeline, the compile options (calibration method, weight bits, ...), the
  forward signature, each input signature (the inputs' shapes and dtypes, which call leaves feed
  the graph, the output structure), Triton kernel assignments, and for every other member its
  size and sha256;
- `graphs/<i>.ir`: the optimized graph of signature i in the IR text format;
- `constants.npz`: every constant, keyed by the digest of its data (the dump store's format);
- `report.txt` / `report.json`: the compile report (per-pass statistics, the int8 table with the
  calibration results, fallbacks) as it was when saved.

Loading refuses, with `ArchiveError` naming the archive and the member: a file that is not a zip,
a member name outside that list (a pickle, `../x`, a second manifest), a member larger than the
limits, a sha256 that does not match, a format version this fxforge cannot read, manifest fields
of the wrong type, IR that does not parse or verify, a constant the IR needs and the store lacks.
Nothing is extracted to disk and nothing is unpickled: members are read into memory, the JSON
with a size limit, arrays through the dump store's checked reader, the output structure through
torch's JSON tree-spec format.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.utils._pytree as pytree

from fxforge.dumps import UNREADABLE, _replace_atomically, read_constants
from fxforge.errors import FxforgeError
from fxforge.parser import IRParseError, parse_ir
from fxforge.printer import print_graph
from fxforge.verify import IRVerificationError, verify

if TYPE_CHECKING:
    from fxforge.api import CompiledModel
    from fxforge.ir import Graph

FORMAT = "fxforge-archive"
VERSION = 1
READABLE_VERSIONS = (1,)
MANIFEST = "manifest.json"
CONSTANTS = "constants.npz"
REPORT_TEXT = "report.txt"
REPORT_DATA = "report.json"
_GRAPH = re.compile(r"graphs/(0|[1-9][0-9]{0,3})\.ir")
MAX_MANIFEST_BYTES = 8 << 20
MAX_TEXT_BYTES = 512 << 20  # IR text and the report
MAX_CONSTANT_BYTES = 64 << 30


class ArchiveError(FxforgeError, ValueError):
    """An archive that cannot be written or loaded; the message names the file and the member
    or field at fault."""


def is_entry(name: str) -> bool:
    """Whether `name` is one of the members an archive may hold."""
    return name in (MANIFEST, CONSTANTS, REPORT_TEXT, REPORT_DATA) or bool(_GRAPH.fullmatch(name))


# --- saving -------------------------------------------------------------------------------------


def _json_value(value: Any, what: str) -> Any:
    """`value` if JSON holds it exactly (None, bool, int, float, str), else ArchiveError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ArchiveError(f"cannot save {what}: a {type(value).__name__} is not one of None, bool, "
                       "int, float or str, which is all an archive holds outside tensors")


def _forward_parameters(compiled: CompiledModel) -> list[dict[str, Any]] | None:
    if compiled._signature is None:
        return None
    params = []
    for p in compiled._signature.parameters.values():
        item: dict[str, Any] = {"name": p.name, "kind": p.kind.name}
        if p.default is not p.empty:
            try:
                item["default"] = _json_value(p.default, f"the default of {p.name!r}")
            except ArchiveError:
                item["default_unsaved"] = type(p.default).__name__
        params.append(item)
    return params


def _signature_record(index: int, key: tuple, entry: Any) -> dict[str, Any]:
    spec_text, leaves = key
    captured = entry.captured
    outputs = []
    for kind, ref in captured.output_leaves:
        outputs.append(["value", ref] if kind == "value"
                       else ["const", _json_value(ref, "a non-tensor output")])
    try:
        out_spec = pytree.treespec_dumps(captured.out_spec)
        in_spec = pytree.treespec_dumps(entry.in_spec)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for unregistered types
        raise ArchiveError(f"cannot save the input/output structure of signature {index}: "
                           f"{type(e).__name__}: {e}. Return tensors, tuples, lists or dicts "
                           "from forward") from e
    return {"graph": f"graphs/{index}.ir", "leaves": [list(_jsonable_leaf(k)) for k in leaves],
            "input_leaves": list(captured.input_leaves), "output_leaves": outputs,
            "in_spec": in_spec, "out_spec": out_spec, "spec_repr": spec_text}


def _jsonable_leaf(key: tuple) -> list:
    return [list(x) if isinstance(x, tuple) else x for x in key]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _options(compiled: CompiledModel) -> dict[str, Any]:
    quant = compiled._quant
    if quant is None:
        return dict(compiled._saved_options)
    o = quant.options
    return {"calibrated": o.calibration is not None, "calibration_method": o.method,
            "percentile": o.percentile, "min_sqnr": o.min_sqnr, "keep_float": list(o.keep_float),
            "weight_bits": o.weight_bits, "smooth": o.smooth, "int8_layers": o.int8_layers}


def _kernel_configs(compiled: CompiledModel) -> list[dict]:
    """The autotuner's picks for this model's Triton kernels (empty on the CPU targets)."""
    kernels = {k for e in compiled._entries.values() for p in e.programs.values()
               for k in getattr(p, "tuned_kernels", ())}
    if not kernels:
        return []
    from fxforge.kernels.triton.autotune import default_tuner

    return default_tuner().remembered(kernels)


def save(compiled: CompiledModel, path: str | Path) -> Path:
    """Write every input signature `compiled` has seen to one archive at `path` (replaced
    atomically: a reader never sees half a file, a symlink there is replaced, not followed)."""
    from fxforge.debug.bundle import versions

    if not compiled._entries:
        raise ArchiveError(f"{compiled._name} has no compiled signature to save yet: call it "
                           "once, or compile with example_inputs=...")
    members: dict[str, bytes] = {}
    constants: dict[str, np.ndarray] = {}
    signatures = []
    for i, (key, entry) in enumerate(compiled._entries.items()):
        signatures.append(_signature_record(i, key, entry))
        members[f"graphs/{i}.ir"] = print_graph(entry.graph).encode("utf-8")
        constants.update({n.attrs["value"].digest: n.attrs["value"].array
                          for n in entry.graph.nodes if n.op == "const"})
    buffer = io.BytesIO()
    np.savez(buffer, **constants)
    members[CONSTANTS] = buffer.getvalue()
    members[REPORT_TEXT] = str(compiled.report).encode("utf-8")
    members[REPORT_DATA] = json.dumps(compiled.report.to_dict(), default=str).encode("utf-8")
    manifest = {
        "format": FORMAT, "version": VERSION, "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": compiled._name, "target": compiled.target,
        "pipeline": list(compiled.report.pipeline), "options": _options(compiled),
        "forward": _forward_parameters(compiled), "fixed": compiled._fixed,
        "signatures": signatures,
        "kernels": [[str(a.node), a.op, a.kernel, a.reason] for r in compiled.report.records
                    for a in r.kernels],
        "kernel_configs": _kernel_configs(compiled), "autotune": compiled._autotune,
        "cuda_graphs": compiled._cuda_graphs,
        "entries": {name: {"bytes": len(data), "sha256": _digest(data)}
                    for name, data in members.items()},
    }
    path = Path(path)

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w") as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1), zipfile.ZIP_DEFLATED)
            for name, data in members.items():
                method = zipfile.ZIP_STORED if name == CONSTANTS else zipfile.ZIP_DEFLATED
                archive.writestr(name, data, method)

    try:
        _replace_atomically(path, write)
    except OSError as e:
        raise ArchiveError(f"cannot write the archive {path}: {e.strerror or e}") from e
    return path


# --- reading ------------------------------------------------------------------------------------


class _Reader:
    """The members of one archive, each read at most once, size-limited and hash-checked."""

    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path, self.archive = path, archive
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            if not is_entry(info.filename):
                raise self.error(f"member {info.filename!r} is not part of the archive format "
                                 f"(expected {MANIFEST}, {CONSTANTS}, graphs/<n>.ir, "
                                 f"{REPORT_TEXT}, {REPORT_DATA})")
            if info.filename in self.infos:
                raise self.error(f"member {info.filename!r} appears twice")
            self.infos[info.filename] = info
        self.hashes: Mapping[str, Any] = {}

    def error(self, message: str) -> ArchiveError:
        return ArchiveError(f"{self.path}: {message}")

    def raw(self, name: str, limit: int) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise self.error(f"member {name!r} is missing")
        if info.file_size > limit:
            raise self.error(f"member {name!r} declares {info.file_size} bytes, over the limit "
                             f"of {limit}")
        try:
            with self.archive.open(info) as f:
                data = f.read(limit + 1)
        except UNREADABLE as e:
            raise self.error(f"member {name!r} cannot be read: {type(e).__name__}: {e}") from e
        if len(data) > limit:
            raise self.error(f"member {name!r} is over the limit of {limit} bytes")
        return data

    def checked(self, name: str, limit: int) -> bytes:
        """A member's bytes, after checking them against the manifest's size and sha256."""
        want = self.hashes.get(name)
        if not isinstance(want, Mapping) or not isinstance(want.get("sha256"), str):
            raise self.error(f"the manifest lists no sha256 for member {name!r}")
        data = self.raw(name, limit)
        if len(data) != want.get("bytes") or _digest(data) != want["sha256"]:
            raise self.error(f"member {name!r} does not match the sha256 in the manifest: the "
                             "archive was changed or damaged after it was written")
        return data


def _field(manifest: Mapping, key: str, kind: type | tuple, reader: _Reader) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise reader.error(f"manifest field {key!r} is missing or not of the right type")
    return value


def _manifest(reader: _Reader) -> dict[str, Any]:
    try:
        manifest = json.loads(reader.raw(MANIFEST, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise reader.error(f"{MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise reader.error(f"it is not an fxforge archive ({MANIFEST} lacks format {FORMAT!r})")
    version = manifest.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        written = manifest.get("versions", {}).get("fxforge", "?") \
            if isinstance(manifest.get("versions"), dict) else "?"
        raise reader.error(f"archive format version {version!r} (written by fxforge {written}) "
                           f"cannot be read by this fxforge, which reads versions "
                           f"{list(READABLE_VERSIONS)}; compile the model again")
    reader.hashes = _field(manifest, "entries", dict, reader)
    unlisted = sorted(set(reader.infos) - {MANIFEST} - set(reader.hashes))
    if unlisted:
        raise reader.error(f"member {unlisted[0]!r} is not listed in the manifest")
    return manifest


def _graph(reader: _Reader, name: str, constants: Mapping[str, np.ndarray]) -> Graph:
    text = reader.checked(name, MAX_TEXT_BYTES)
    try:
        graph = parse_ir(text.decode("utf-8"), constants=constants)
        verify(graph)
    except UnicodeDecodeError as e:
        raise reader.error(f"{name} is not UTF-8 text: {e}") from e
    except (IRParseError, IRVerificationError) as e:
        raise reader.error(f"{name}: {e}") from e
    missing = [n.outputs[0].name for n in graph.nodes
               if n.op == "const" and n.attrs["value"].array is None]
    if missing:
        raise reader.error(f"{name} needs constants that {CONSTANTS} lacks: %{missing[0]} ...")
    return graph


def _constants(reader: _Reader) -> dict[str, np.ndarray]:
    data = reader.checked(CONSTANTS, MAX_CONSTANT_BYTES)
    try:
        return read_constants(io.BytesIO(data))
    except UNREADABLE as e:
        raise reader.error(f"{CONSTANTS}: {type(e).__name__}: {e}") from e


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the archive at `path`, checked as `load` checks it (for `inspect`)."""
    with _open(Path(path)) as reader:
        return _manifest(reader)


class _open:
    """`with _open(path) as reader`: the zip, with every OS and zip error an ArchiveError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Reader:
        try:
            self.archive = zipfile.ZipFile(self.path)
        except FileNotFoundError as e:
            raise ArchiveError(f"{self.path}: no such file") from e
        except UNREADABLE as e:
            raise ArchiveError(f"{self.path}: not an fxforge archive (not a readable zip file: "
                               f"{type(e).__name__}: {e})") from e
        try:
            return _Reader(self.path, self.archive)
        except BaseException:
            self.archive.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.archive.close()


def load(path: str | Path) -> CompiledModel:
    """The compiled model saved at `path`: call it like the original (with the input signatures
    it was saved with); it needs neither the original model nor a new capture.

    Raises ArchiveError for anything wrong with the file (see the module docstring)."""
    from fxforge.archive_restore import restore

    path = Path(path)
    with _open(path) as reader:
        manifest = _manifest(reader)
        signatures = _field(manifest, "signatures", list, reader)
        if not signatures:
            raise reader.error("the manifest lists no input signature")
        constants = _constants(reader)
        graphs = []
        for i, record in enumerate(signatures):
            if not isinstance(record, dict) or record.get("graph") != f"graphs/{i}.ir":
                raise reader.error(f"signature {i} of the manifest does not name graphs/{i}.ir")
            graphs.append(_graph(reader, record["graph"], constants))
        report_text = reader.checked(REPORT_TEXT, MAX_TEXT_BYTES).decode("utf-8", "replace")
        try:
            report_data = json.loads(reader.checked(REPORT_DATA, MAX_TEXT_BYTES))
        except (ValueError, RecursionError) as e:
            raise reader.error(f"{REPORT_DATA} is not valid JSON: {e}") from e
        return restore(str(path), manifest, graphs, report_text, report_data, reader.error)
