"""IR dumps against hostile files (issue #14, item 7): `load_dump` and the dump writer of the
PassManager (compiler/dumps.py).

A dump is input like any file. Checks: a constants.npz that is an .npy, holds strings, objects,
records or complex numbers, is truncated or garbage, or lacks a constant the IR references makes
`load_dump` raise a PipelineError naming the file (IRParseError for bad IR text); a compile whose
dump dir holds such a store warns (DumpWarning) and replaces it; symlinks in the dump dir (the .ir
files, the store, a subfolder) are never written through; a dump dir that cannot be written costs a
DumpWarning, not the compile. Two hypothesis fuzzers mutate valid dumps (bytes of the store,
hostile arrays, the IR text) and allow only fxforge's typed errors.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from graph_builder import GraphBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxforge
from fxforge import dtypes
from fxforge.errors import FxforgeError, PipelineError
from fxforge.ir import Graph
from fxforge.parser import IRParseError
from fxforge.pipeline import DebugOptions, DumpWarning, PassManager, load_dump

EXAMPLES = int(os.environ.get("FXFORGE_PROPERTY_EXAMPLES", "40"))
# IRParseError is the parser's (compiler/parser.py), a ValueError; listed here until it derives
# from FxforgeError like the verifier's IRVerificationError.
TYPED = (FxforgeError, IRParseError)
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _graph() -> Graph:
    """x + w, with constants of several of the IR's dtypes returned beside it."""
    b = GraphBuilder()
    x = b.const(np.zeros((2, 3), np.float32))  # replaced by an input below
    rng = np.random.default_rng(0)
    w = b.const(rng.standard_normal((2, 3)).astype(np.float32))
    idx = b.const(np.arange(6, dtype=np.int64).reshape(3, 2))
    mask = b.const(np.array([True, False, True]))
    half = b.const(rng.standard_normal(5).astype(np.float16))
    y = b("add", [x, w])
    nodes = tuple(b.nodes[1:])
    return Graph((x,), nodes, (y, idx, mask, half))


def _write_dump(folder: Path) -> Path:
    PassManager(["dce"], DebugOptions(dump_dir=str(folder))).run(_graph())
    return folder / "00-input.ir"


@pytest.fixture(scope="module")
def valid_dump(tmp_path_factory) -> Path:
    return _write_dump(tmp_path_factory.mktemp("dump"))


@pytest.fixture()
def dump(valid_dump, tmp_path) -> Path:
    """A private copy of the valid dump: (the .ir path; constants.npz beside it)."""
    for f in valid_dump.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / valid_dump.name


def _arrays(store: Path) -> dict[str, np.ndarray]:
    with np.load(store, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    return model, torch.randn(2, 4)


def _compile_with_dumps(folder: Path):
    """Compile the small model dumping into `folder`; the compiled output must equal eager."""
    model, x = _model()
    fast = fxforge.compile(model, "cpu", example_inputs=(x,), debug={"dump_dir": str(folder)})
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    return fast


# ------------------------------------------------------------------------------------------------
# the reported examples: a store that is an .npy, a string array, an object array


def _as_npy(store: Path) -> None:
    np.save(store.open("wb"), np.arange(3.0))


def _as_strings(store: Path) -> None:
    np.savez(store, **{k: v.astype(str) for k, v in _arrays(store).items()})


def _as_objects(store: Path) -> None:
    np.savez(store, **{k: np.array([object()] * v.size, dtype=object)
                       for k, v in _arrays(store).items()})


REPORTED = {"npy": _as_npy, "strings": _as_strings, "objects": _as_objects}


@pytest.mark.parametrize("how", sorted(REPORTED))
def test_load_dump_of_a_reported_bad_store_names_the_file(dump, how):
    store = dump.parent / "constants.npz"
    REPORTED[how](store)
    with pytest.raises(PipelineError, match=f"{store}.*" + {
            "npy": "single .npy array", "strings": "dtype <U", "objects": "dtype object"}[how]):
        load_dump(dump)


@pytest.mark.parametrize("how", sorted(REPORTED))
def test_compile_over_a_reported_bad_store_warns_and_replaces_it(tmp_path, how):
    store = tmp_path / "constants.npz"
    _write_dump(tmp_path)
    REPORTED[how](store)
    with pytest.warns(DumpWarning, match=f"{store}.*fresh store"):
        fast = _compile_with_dumps(tmp_path)
    loaded = load_dump(tmp_path / f"{len(fast.report.pipeline):02d}-dce.ir")
    assert loaded == fast.graph


# ------------------------------------------------------------------------------------------------
# the rest of the class: every bad store or IR file is a typed error naming the file


def _rewrite(edit):
    def apply(store: Path) -> None:
        np.savez(store, **edit(_arrays(store)))
    return apply


def _structured(arrays):
    return {k: np.zeros(v.shape, dtype=[("a", "f4")]) for k, v in arrays.items()}


def _swap_dtype(dtype):
    return _rewrite(lambda arrays: {k: v.astype(dtype) for k, v in arrays.items()})


BAD_STORES = {
    "numeric-strings": _swap_dtype(str),
    "bytes": _swap_dtype(bytes),
    "structured": _rewrite(_structured),
    "complex": _swap_dtype(np.complex64),
    "big-endian": _swap_dtype(">f4"),
    "datetime": _rewrite(lambda a: {k: np.zeros(v.shape, "M8[s]") for k, v in a.items()}),
    "wrong-digest-key": _rewrite(lambda a: {k: v + 1 if v.dtype.kind == "f" else v
                                            for k, v in a.items()}),
    "missing-constant": _rewrite(lambda a: dict(list(a.items())[1:])),
    "empty-archive": _rewrite(lambda a: {}),
    "bool-byte-2": _rewrite(lambda a: {k: np.frombuffer(np.where(v, 2, 0).astype(np.uint8)
                                                        .tobytes(), bool).reshape(v.shape)
                                       if v.dtype == bool else v for k, v in a.items()}),
    "truncated": lambda s: s.write_bytes(s.read_bytes()[: s.stat().st_size // 2]),
    "garbage": lambda s: s.write_bytes(b"\x00not a zip"),
    "empty-file": lambda s: s.write_bytes(b""),
    "directory": lambda s: (s.unlink(), s.mkdir()),
    "dangling-symlink": lambda s: (s.unlink(), s.symlink_to(s.parent / "nowhere")),
    "symlink-to-dev-null": lambda s: (s.unlink(), s.symlink_to("/dev/null")),
    "not-an-npy-member": lambda s: zipfile.ZipFile(s, "a").writestr("readme.txt", "hello"),
    "removed": lambda s: s.unlink(),
}


@pytest.mark.parametrize("how", sorted(BAD_STORES))
def test_load_dump_of_a_bad_store_is_a_pipeline_error_naming_it(dump, how):
    store = dump.parent / "constants.npz"
    BAD_STORES[how](store)
    with pytest.raises(PipelineError) as info:
        load_dump(dump)
    assert str(store) in str(info.value)


BAD_IR = {
    "not-utf8": lambda p: p.write_bytes(b"\xff\xfe graph"),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("how", sorted(BAD_IR))
def test_load_dump_of_an_unreadable_ir_file_names_it(dump, how):
    BAD_IR[how](dump)
    with pytest.raises(PipelineError, match=str(dump)):
        load_dump(dump)


def test_load_dump_of_bad_ir_text_is_an_ir_parse_error_naming_the_file(dump):
    dump.write_text(dump.read_text().replace("graph(", "graf(", 1))
    with pytest.raises(IRParseError, match=f"{dump}: line 1"):
        load_dump(dump)


def test_load_dump_of_a_valid_dump_round_trips(dump):
    assert load_dump(dump) == _graph()


# ------------------------------------------------------------------------------------------------
# the dump writer: symlinks are never written through, an unwritable dir costs only a warning


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    return outside


def test_symlinked_ir_file_and_store_are_replaced_not_written_through(tmp_path):
    outside, dumps = _outside(tmp_path), tmp_path / "dumps"
    dumps.mkdir()
    victims = {"00-input.ir": b"precious IR\n", "constants.npz": b"precious store"}
    for name, data in victims.items():
        (outside / name).write_bytes(data)
        (dumps / name).symlink_to(outside / name)
    canary = outside / "canary"
    (dumps / "01-canonicalize.ir").symlink_to(canary)  # dangling: writing through creates it
    with pytest.warns(DumpWarning, match="constants.npz.*symlink"):
        fast = _compile_with_dumps(dumps)
    for name, data in victims.items():
        assert (outside / name).read_bytes() == data
        assert not (dumps / name).is_symlink()
    assert not canary.exists() and not (dumps / "01-canonicalize.ir").is_symlink()
    assert load_dump(dumps / "00-input.ir").inputs == fast.graph.inputs


def test_symlinked_subfolder_is_refused(tmp_path):
    outside, dumps = _outside(tmp_path), tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.warns(DumpWarning, match=r"dumps/sub.*symlink"):
        PassManager(["dce"], DebugOptions(dump_dir=str(dumps))).run(_graph(), dump_subdir="sub")
    assert list(outside.iterdir()) == []


def test_a_file_in_place_of_the_dump_dir_costs_a_warning_not_the_compile(tmp_path):
    blocker = tmp_path / "dumps"
    blocker.write_text("not a dir")
    with pytest.warns(DumpWarning, match=f"cannot write IR dumps to {blocker}.*goes on"):
        _compile_with_dumps(blocker)
    assert blocker.read_text() == "not a dir"


def test_the_warning_is_given_once_per_run(tmp_path):
    blocker = tmp_path / "dumps"
    blocker.write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compile_with_dumps(blocker)
    assert [type(w.message) for w in caught] == [DumpWarning]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_read_only_dump_dir_costs_a_warning_not_the_compile(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    os.chmod(dumps, 0o500)
    try:
        with pytest.warns(DumpWarning, match=f"{dumps}.*Permission denied"):
            _compile_with_dumps(dumps)
        assert list(dumps.iterdir()) == []
    finally:
        os.chmod(dumps, 0o700)


# ------------------------------------------------------------------------------------------------
# fuzzers: mutated valid dumps; only fxforge's typed errors, each naming a file


def _check_load(ir: Path) -> None:
    try:
        load_dump(ir)
    except TYPED as e:
        store = ir.parent / "constants.npz"
        assert str(ir) in str(e) or str(store) in str(e), str(e)


def _fuzz_copy(valid_dump: Path):
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name)
    for f in valid_dump.parent.iterdir():
        shutil.copy(f, folder / f.name)
    return tmp, folder / valid_dump.name


_byte_edits = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "truncate"]),
                                 st.floats(0, 1), st.binary(min_size=1, max_size=8)),
                       min_size=1, max_size=6)


def _apply_byte_edits(data: bytes, edits) -> bytes:
    for kind, where, blob in edits:
        at = int(where * len(data))
        if kind == "set":
            data = data[:at] + blob + data[at + len(blob):]
        elif kind == "insert":
            data = data[:at] + blob + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(blob):]
        else:
            data = data[:at]
    return data


@FUZZ
@given(edits=_byte_edits)
def test_fuzz_store_bytes(valid_dump, edits):
    tmp, ir = _fuzz_copy(valid_dump)
    with tmp:
        store = ir.parent / "constants.npz"
        store.write_bytes(_apply_byte_edits(store.read_bytes(), edits))
        _check_load(ir)


HOSTILE_DTYPES = ["f4", "f8", "f2", "i8", "u1", "?", ">f4", ">i8", "U3", "S2", "c8", "M8[s]",
                  "m8[s]", "V4", "O", [("a", "<f4")], [("a", "<i8"), ("b", "?")], ("<f4", (2,))]


@st.composite
def _hostile_arrays(draw, keys: list[str]):
    """A store's arrays: some keys kept, some of a hostile dtype, shape or key."""
    count = draw(st.integers(0, len(keys) + 2))
    arrays = {}
    for i in range(count):
        key = keys[i] if i < len(keys) and draw(st.booleans()) else draw(
            st.text("0123456789abcdefgxyz_", min_size=1, max_size=20))
        dtype = np.dtype(draw(st.sampled_from(HOSTILE_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        arrays[key] = np.zeros(shape, dtype)
    return arrays


@FUZZ
@given(data=st.data())
def test_fuzz_store_arrays(valid_dump, data):
    tmp, ir = _fuzz_copy(valid_dump)
    with tmp:
        store = ir.parent / "constants.npz"
        arrays = data.draw(_hostile_arrays(sorted(_arrays(store))))
        buffer = io.BytesIO()
        (np.savez_compressed if data.draw(st.booleans()) else np.savez)(buffer, **arrays)
        store.write_bytes(buffer.getvalue())
        _check_load(ir)


_TOKENS = ["%", "@", "[", "]", "(", ")", "{", "}", ",", "=", ":", "#", "\n", "\x00", "nan", "-1",
           "999999999999999999999", "f32", "bf16", "const", "return", '"', "\\", "é"]
_char_edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6),
                                 st.sampled_from(_TOKENS) | st.text(max_size=4)),
                       min_size=1, max_size=5)
# whole-line edits keep the text parseable longer: a constant's dtype, shape or digest swapped
# for another, a line dropped or repeated
_line_edits = st.lists(st.tuples(st.integers(0, 7), st.sampled_from(
    ["dtype", "shape", "digest", "drop", "repeat"]), st.sampled_from(dtypes.DTYPES)),
    min_size=1, max_size=3)


def _edit_chars(text: str, edits) -> str:
    for where, cut, token in edits:
        at = int(where * len(text))
        text = text[:at] + token + text[at + cut:]
    return text


def _edit_lines(text: str, edits) -> str:
    lines = text.splitlines()
    digests = re.findall(r"@[0-9a-f]{16}", text)
    for index, kind, dtype in edits:
        i = index % len(lines)
        if kind == "dtype":
            lines[i] = re.sub(r"\b(?:f32|i64|bool|f16)\[", f"{dtype}[", lines[i], count=1)
        elif kind == "shape":
            lines[i] = re.sub(r"\[[0-9,]*\]", "[6]", lines[i], count=1)
        elif kind == "digest" and digests:
            lines[i] = re.sub(r"@[0-9a-f]{16}", digests[index % len(digests)], lines[i])
        elif kind == "drop":
            del lines[i]
        elif kind == "repeat":
            lines.insert(i, lines[i])
    return "\n".join(lines) + "\n"


@FUZZ
@given(chars=_char_edits | st.just([]), line_edits=_line_edits | st.just([]))
def test_fuzz_ir_text(valid_dump, chars, line_edits):
    tmp, ir = _fuzz_copy(valid_dump)
    with tmp:
        text = _edit_chars(_edit_lines(ir.read_text(), line_edits), chars)
        ir.write_text(text, encoding="utf-8")
        _check_load(ir)
