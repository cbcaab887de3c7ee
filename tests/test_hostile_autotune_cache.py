"""The autotune cache against hostile entry files (issue #14, item 8; kernels/triton/autotune.py).

The module promises that a bad cache file costs at most a retune. Checks: deeply nested JSON
(which raised RecursionError on every call), NaN in a key, huge numbers, wrong types and ranges
of each field, truncated JSON, non-UTF-8 bytes, a file over the size limit, a directory or a
symlink in the entry's place: each is a miss, the configs are timed again, and the file is
replaced by a good one (a symlink's target is left alone). Two hypothesis fuzzers put random
JSON-like values into each field of a valid entry, and random bytes in place of the file.
The tuner is tested with fake `run` callables and a fake clock, as in test_triton_autotune.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxforge.kernels.triton import autotune
from fxforge.kernels.triton.autotune import Tuner

EXAMPLES = int(os.environ.get("FXFORGE_PROPERTY_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

KERNEL = "e" * 64
KEY = (256, 512, "f16")
CONFIGS = [{"BLOCK_M": 32, "num_warps": 4}, {"BLOCK_M": 64, "num_warps": 4, "PRECISION": "ieee"},
           {"BLOCK_M": 128, "num_warps": 8}]
FASTEST = CONFIGS[1]


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """FASTEST costs 1 ms, every other config 5 ms; the config still runs."""

    def timed(run, config):
        run(config)
        return 1.0 if config == FASTEST else 5.0

    monkeypatch.setattr(autotune, "time_ms", timed)


class Runs:
    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, config: dict) -> None:
        self.calls.append(config)


def _entry_file(directory: Path) -> Path:
    """The cache file of KERNEL on this device, holding a valid entry for KEY."""
    Tuner(directory).pick(KERNEL, KEY, CONFIGS, Runs())
    (path,) = directory.iterdir()
    return path


def _valid_doc() -> dict:
    return {"schema": 1, "kernel": KERNEL, "device": autotune.device_name(),
            "triton": autotune.triton_version(),
            "entries": [{"key": list(KEY), "config": dict(FASTEST), "ms": 1.0}]}


def _pick_is_a_miss(directory: Path) -> None:
    """A fresh tuner retunes (times every config), answers FASTEST, raises nothing."""
    tuner, runs = Tuner(directory), Runs()
    assert tuner.pick(KERNEL, KEY, CONFIGS, runs) == FASTEST
    assert runs.calls == CONFIGS and tuner.hits == 0


def _is_rewritten(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["kernel"] == KERNEL and doc["entries"][-1]["config"] == FASTEST


def _with_hole(raw: str) -> str:
    """The valid document's text with `raw` (any text) as the first entry's key."""
    doc = _valid_doc()
    doc["entries"][0]["key"] = "HOLE"
    return json.dumps(doc).replace('"HOLE"', raw)


# ------------------------------------------------------------------------------------------------
# the reported example, and the class around it


def test_deeply_nested_entry_costs_a_retune_not_a_recursion_error(tmp_path):
    path = _entry_file(tmp_path)
    path.write_text(_with_hole("[" * 100_000 + "]" * 100_000))
    _pick_is_a_miss(tmp_path)
    _is_rewritten(path)
    runs = Runs()  # and the rewritten file answers the next tuner
    assert Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, runs) == FASTEST and not runs.calls


def test_nan_in_a_key_costs_a_retune_not_a_value_error(tmp_path):
    path = _entry_file(tmp_path)
    path.write_text(_with_hole("[NaN]"))
    _pick_is_a_miss(tmp_path)
    _is_rewritten(path)


def _doc_edit(edit):
    def write(path: Path) -> None:
        doc = _valid_doc()
        edit(doc, doc["entries"][0])
        path.write_text(json.dumps(doc))
    return write


BAD_FILES = {
    "deep-nesting-900": lambda p: p.write_text(_with_hole("[" * 900 + "]" * 900)),
    "deep-nesting-in-config": lambda p: p.write_text(
        json.dumps(_valid_doc()).replace('"PRECISION": "ieee"', '"x": ' + "[" * 5000 + "]" * 5000)),
    "huge-int-key": lambda p: p.write_text(_with_hole("[" + "9" * 5000 + "]")),
    "huge-float-ms": lambda p: p.write_text(json.dumps(_valid_doc()).replace('"ms": 1.0',
                                                                            '"ms": 1e999')),
    "infinity-ms": lambda p: p.write_text(json.dumps(_valid_doc()).replace('"ms": 1.0',
                                                                          '"ms": Infinity')),
    "huge-int-ms": lambda p: p.write_text(json.dumps(_valid_doc()).replace('"ms": 1.0',
                                                                          '"ms": 1' + "0" * 400)),
    "negative-ms": _doc_edit(lambda d, e: e.update(ms=-1.0)),
    "bool-ms": _doc_edit(lambda d, e: e.update(ms=True)),
    "float-schema": _doc_edit(lambda d, e: d.update(schema=1.0)),
    "bool-schema": _doc_edit(lambda d, e: d.update(schema=True)),
    "key-of-floats": _doc_edit(lambda d, e: e.update(key=[256.0, 512.0, "f16"])),
    "key-of-lists": _doc_edit(lambda d, e: e.update(key=[[256], [512], ["f16"]])),
    "key-a-string": _doc_edit(lambda d, e: e.update(key="256,512,f16")),
    "config-huge-int": _doc_edit(lambda d, e: e["config"].update(BLOCK_M=2**64)),
    "config-negative": _doc_edit(lambda d, e: e["config"].update(num_warps=-4)),
    "config-bool": _doc_edit(lambda d, e: e["config"].update(num_warps=True)),
    "config-null": _doc_edit(lambda d, e: e["config"].update(PRECISION=None)),
    "config-list": _doc_edit(lambda d, e: e.update(config=[["BLOCK_M", 64]])),
    "config-empty": _doc_edit(lambda d, e: e.update(config={})),
    "entries-an-object": _doc_edit(lambda d, e: d.update(entries={"0": e})),
    "truncated": lambda p: p.write_text(json.dumps(_valid_doc())[:-7]),
    "non-utf8": lambda p: p.write_bytes(json.dumps(_valid_doc()).encode("utf-16")),
    "latin1-byte": lambda p: p.write_bytes(_with_hole('["\xe9"]').encode("latin-1")),
    "empty": lambda p: p.write_bytes(b""),
    "too-big": lambda p: p.write_text(json.dumps(_valid_doc()) + " " * autotune.MAX_FILE_BYTES),
}


@pytest.mark.parametrize("how", sorted(BAD_FILES))
def test_bad_file_costs_a_retune_and_is_replaced(tmp_path, how):
    path = _entry_file(tmp_path)
    BAD_FILES[how](path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pick_is_a_miss(tmp_path)
    _is_rewritten(path)


def test_symlink_in_place_of_the_file_is_not_followed_and_is_replaced(tmp_path):
    directory, outside = tmp_path / "cache", tmp_path / "outside.json"
    path = _entry_file(directory)
    valid = path.read_bytes()  # following the link would be a hit
    outside.write_bytes(valid)
    path.unlink()
    path.symlink_to(outside)
    _pick_is_a_miss(directory)
    assert not path.is_symlink() and outside.read_bytes() == valid
    _is_rewritten(path)


def test_directory_in_place_of_the_file_costs_a_retune_and_a_warning(tmp_path):
    path = _entry_file(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.warns(UserWarning, match="could not write"):
        _pick_is_a_miss(tmp_path)
    assert path.is_dir()


def test_fifo_in_place_of_the_file_does_not_block(tmp_path):
    path = _entry_file(tmp_path)
    path.unlink()
    os.mkfifo(path)
    _pick_is_a_miss(tmp_path)
    _is_rewritten(path)


def test_strict_checks_keep_what_the_tuner_writes_usable(tmp_path):
    """A scalar input's shape key is "" and a timing may be an int: both are cached."""
    for key in [("",), (0, -1, "x" * 200)]:
        Tuner(tmp_path).pick(KERNEL, key, CONFIGS, Runs())
        runs = Runs()
        assert Tuner(tmp_path).pick(KERNEL, key, CONFIGS, runs) == FASTEST and not runs.calls


# ------------------------------------------------------------------------------------------------
# fuzzers


def _json_values():
    scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


FIELDS = ["doc", "schema", "kernel", "device", "triton", "entries", "entry", "key", "config",
          "config-value", "ms", "extra"]


def _put(field: str, value) -> str:
    """The valid document's text with `value` in `field` (NaN/Infinity as JSON's extensions)."""
    doc = _valid_doc()
    entry = doc["entries"][0]
    if field == "doc":
        doc = value
    elif field in ("schema", "kernel", "device", "triton", "entries"):
        doc[field] = value
    elif field == "entry":
        doc["entries"][0] = value
    elif field == "config-value":
        entry["config"]["BLOCK_M"] = value
    elif field == "extra":
        entry["extra"] = value
    else:
        entry[field] = value
    return json.dumps(doc)


def _valid_in(field: str, value) -> bool:
    """Whether `value` in `field` still makes a usable entry (then a hit is right)."""
    good = _valid_doc()
    if field == "ms":
        return (type(value) is int and 0 <= value < 2**31) or (
            type(value) is float and value == value and 0 <= value < float("inf"))
    if field == "config":
        return any(json.dumps(value, sort_keys=True) == json.dumps(c, sort_keys=True)
                   for c in CONFIGS)
    if field == "config-value":
        return type(value) is int and value == FASTEST["BLOCK_M"]
    if field == "extra":
        return False
    original = good if field == "doc" else good["entries"][0] if field == "entry" else (
        good["entries"][0]["key"] if field == "key" else good[field])
    return json.dumps(value, sort_keys=True) == json.dumps(original, sort_keys=True)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=_json_values())
def test_fuzz_entry_fields(field, value):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = _entry_file(directory)
        path.write_text(_put(field, value))
        tuner, runs = Tuner(directory), Runs()
        picked = tuner.pick(KERNEL, KEY, CONFIGS, runs)
        if _valid_in(field, value):
            assert picked in CONFIGS and runs.calls == [] and tuner.hits == 1
        else:
            assert picked == FASTEST and runs.calls == CONFIGS and tuner.hits == 0
            _is_rewritten(path)


_raw = (st.binary(max_size=256)
        | st.integers(1, 60_000).map(lambda n: ("[" * n + "]" * n).encode())
        | st.integers(1, 60_000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode())
        | st.sampled_from(["1e999", "-1e999", "9" * 5000, "NaN", "[Infinity]", '"\\ud800"'])
        .map(lambda raw: _with_hole(raw).encode()))


@FUZZ
@given(raw=_raw, cut=st.integers(0, 300))
def test_fuzz_file_bytes(raw, cut):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = _entry_file(directory)
        path.write_bytes(raw[: max(len(raw) - cut, 0)] if cut % 2 else raw)
        _pick_is_a_miss(directory)
        _is_rewritten(path)
