"""Saving and loading compiled models (`CompiledModel.save`, `fxforge.load`, `fxforge inspect`).

Loaded models must give bit-identical outputs to the compiled model before saving (same IR, same
constants, same backend: no tolerance), in this process and in a fresh one, and every kind of
tampered or malformed archive must be refused with `ArchiveError` before anything runs.
"""

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxforge
from fxforge import ArchiveError, InputError, zoo
from fxforge.__main__ import main
from fxforge.kernels.triton import jit


def _saved(tmp_path, target="cpu", model_name="digits", batch=4, **options):
    model, example = zoo.build(model_name, batch)
    compiled = fxforge.compile(model, target, **options)
    expected = compiled(*example)
    path = compiled.save(tmp_path / f"{model_name}-{target}.fxf")
    return model, example, compiled, expected, path


def _rewrite(path, out, change):
    """Copy the archive at `path` to `out`, with `change(members)` applied to its member dict."""
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    change(members)
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out


def _rehash(members, name):
    """Update the manifest's record of `name` to match its (changed) bytes: what a careful
    attacker would do, so the check behind the hash is what must refuse the archive."""
    manifest = json.loads(members["manifest.json"])
    data = members[name]
    manifest["entries"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    members["manifest.json"] = json.dumps(manifest).encode()


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["reference", "cpu", "cpu-int8"])
def test_loaded_outputs_are_bit_identical(tmp_path, target):
    options = {"calibration": zoo.calibration_data("digits", 4)} if target == "cpu-int8" else {}
    _, example, compiled, expected, path = _saved(tmp_path, target, **options)
    loaded = fxforge.load(path)
    got = loaded(*example)
    assert torch.equal(got, expected)
    assert torch.equal(loaded(*example), expected)  # the fast path of the second call too
    assert loaded.target == target
    assert str(loaded.graph) == str(compiled.graph)
    assert max(loaded.check(*example).values()) <= (1e-4 if target != "cpu-int8" else 0.2)


def test_dynamic_int8_and_report_survive(tmp_path):
    _, example, compiled, expected, path = _saved(tmp_path, "cpu-int8")
    loaded = fxforge.load(path)
    assert torch.equal(loaded(*example), expected)
    assert "quantize" in str(loaded.report) and "saved report" in str(loaded.report)
    assert loaded.report.to_dict()["target"] == "cpu-int8"


def test_every_signature_is_saved_and_others_are_refused(tmp_path):
    model, _ = zoo.build("mlp", 1)
    compiled = fxforge.compile(model, "cpu")
    xs = [torch.randn(n, 64) for n in (1, 3)]
    expected = [compiled(x) for x in xs]
    loaded = fxforge.load(compiled.save(tmp_path / "mlp.fxf"))
    for x, y in zip(xs, expected):
        assert torch.equal(loaded(x), y)
    with pytest.raises(InputError, match=r"mlp.fxf.*f32\[1,64\]; f32\[3,64\].*got f32\[5,64\]"):
        loaded(torch.randn(5, 64))
    assert loaded.report.captures == 2


class Structured(nn.Module):
    """Keyword inputs with a default, a non-tensor output and a nested output structure."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, bias=None, scale: int = 2):
        h = self.fc(x) * scale
        if bias is not None:
            h = h + bias
        return {"h": h, "pair": (h.relu(), [x, None]), "n": scale}


def test_keywords_defaults_and_output_structure(tmp_path):
    torch.manual_seed(0)
    model = Structured().eval()
    compiled = fxforge.compile(model, "cpu")
    x, b = torch.randn(2, 4), torch.randn(3)
    expected = compiled(x, bias=b)
    loaded = fxforge.load(compiled.save(tmp_path / "s.fxf"))
    got = loaded(x, bias=b)
    assert set(got) == {"h", "pair", "n"} and got["n"] == 2 and got["pair"][1][1] is None
    assert torch.equal(got["h"], expected["h"]) and torch.equal(got["pair"][0],
                                                                expected["pair"][0])
    assert torch.equal(loaded(x, b)["h"], expected["h"])  # positional binds the same way


def test_transformer_with_integer_inputs(tmp_path):
    model, example = zoo.build("transformer", 2)
    compiled = fxforge.compile(model, "cpu", example_inputs=example)
    expected = compiled(*example)
    loaded = fxforge.load(compiled.save(tmp_path / "t.fxf"))
    got = loaded(*example)
    assert example[0].dtype == torch.int64 and set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_save_leaves_the_model_alone_and_needs_a_signature(tmp_path):
    model, example = zoo.build("digits", 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = fxforge.compile(model, "cpu")
    with pytest.raises(ArchiveError, match="no compiled signature"):
        compiled.save(tmp_path / "x.fxf")
    compiled(*example)
    compiled.save(tmp_path / "x.fxf")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training


def test_saving_over_a_symlink_replaces_the_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "model.fxf"
    link.symlink_to(victim)
    _, example, compiled, expected, _ = _saved(tmp_path)
    compiled.save(link)
    assert victim.read_text() == "keep me" and not link.is_symlink()
    assert torch.equal(fxforge.load(link)(*example), expected)


def test_fresh_process_loads_without_the_model(tmp_path):
    options = {"calibration": zoo.calibration_data("digits", 4)}
    _, example, _, expected, path = _saved(tmp_path, "cpu-int8", **options)
    np.save(tmp_path / "x.npy", example[0].numpy())
    script = textwrap.dedent(f"""
        import numpy as np, torch, fxforge
        loaded = fxforge.load({str(path)!r})
        y = loaded(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))
        np.save({str(tmp_path / 'y.npy')!r}, y.numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    got = np.load(tmp_path / "y.npy")
    assert np.array_equal(got, expected.numpy())


@pytest.mark.skipif(not (jit.interpreting() or torch.cuda.is_available()),
                    reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_kernel_configs_are_saved_and_reused(tmp_path, monkeypatch):
    from fxforge.kernels.triton import autotune

    monkeypatch.setenv("FXFORGE_CACHE_DIR", str(tmp_path / "cache"))
    tuner = autotune.Tuner(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(autotune, "_DEFAULT", [tuner])
    model, example = zoo.build("mlp", 2)
    compiled = fxforge.compile(model, "cuda", autotune=True)
    expected = compiled(*example)
    path = compiled.save(tmp_path / "mlp-cuda.fxf")
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert len(manifest["kernel_configs"]) == 3  # three GEMMs tuned
    fresh = autotune.Tuner(cache_dir=tmp_path / "other-cache")
    monkeypatch.setattr(autotune, "_DEFAULT", [fresh])
    loaded = fxforge.load(path)
    assert torch.equal(loaded(*example), expected)  # the same configs, so the same sums
    assert fresh.log == [] and fresh.hits >= 3  # nothing was timed again


# --- hostile and damaged archives ----------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archive")
    return _saved(tmp, "cpu")[4]


def _refused(tmp_path, archive, change, match):
    bad = _rewrite(archive, tmp_path / "bad.fxf", change)
    with pytest.raises(ArchiveError, match=match):
        fxforge.load(bad)


def test_changed_ir_is_refused(tmp_path, archive):
    def change(m):
        m["graphs/0.ir"] = m["graphs/0.ir"].replace(b"relu", b"sigmoid", 1)

    _refused(tmp_path, archive, change, "graphs/0.ir.*does not match the sha256")


def test_changed_ir_with_a_matching_hash_must_still_verify(tmp_path, archive):
    def change(m):
        m["graphs/0.ir"] = m["graphs/0.ir"].replace(b"f32[4,10]", b"f32[4,11]")
        _rehash(m, "graphs/0.ir")

    _refused(tmp_path, archive, change, "graphs/0.ir")


def test_changed_constant_is_refused(tmp_path, archive):
    def flip(m):
        data = bytearray(m["constants.npz"])
        data[len(data) // 2] ^= 0xFF
        m["constants.npz"] = bytes(data)

    _refused(tmp_path, archive, flip, "constants.npz.*does not match the sha256")

    def flip_and_rehash(m):
        flip(m)
        _rehash(m, "constants.npz")

    _refused(tmp_path, archive, flip_and_rehash, "constants.npz")


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/fxforge-archive-pwned",))


def test_pickle_is_never_loaded(tmp_path, archive):
    payload = pickle.dumps(Boom())

    def add_member(m):
        m["data.pkl"] = payload

    _refused(tmp_path, archive, add_member, "'data.pkl' is not part of the archive format")

    def replace_constants(m):  # an object array in place of the store, hash updated
        buffer = io.BytesIO()
        np.savez(buffer, w=np.array([Boom()], dtype=object))
        m["constants.npz"] = buffer.getvalue()
        _rehash(m, "constants.npz")

    _refused(tmp_path, archive, replace_constants, "constants.npz")
    assert not os.path.exists("/tmp/fxforge-archive-pwned")


@pytest.mark.parametrize("name", ["../evil.ir", "graphs/../../evil.ir", "/etc/passwd",
                                  "graphs/0.ir/../x", "graphs/01.ir", "Manifest.json"])
def test_names_outside_the_format_are_refused(tmp_path, archive, name):
    def add(m):
        m[name] = b"x"

    _refused(tmp_path, archive, add, "is not part of the archive format")


def test_version_and_format_are_checked(tmp_path, archive):
    def newer(m):
        manifest = json.loads(m["manifest.json"])
        manifest["version"] = 99
        m["manifest.json"] = json.dumps(manifest).encode()

    _refused(tmp_path, archive, newer, "format version 99 .*cannot be read")

    def not_ours(m):
        m["manifest.json"] = b'{"format": "something-else"}'

    _refused(tmp_path, archive, not_ours, "not an fxforge archive")

    def not_json(m):
        m["manifest.json"] = b"{not json"

    _refused(tmp_path, archive, not_json, "not valid JSON")

    def missing(m):
        del m["graphs/0.ir"]

    _refused(tmp_path, archive, missing, "'graphs/0.ir' is missing")


@pytest.mark.parametrize("field,value", [("signatures", "x"), ("target", "gpu-9000"),
                                         ("forward", [{"name": "import os", "kind": "x"}]),
                                         ("pipeline", [1])])
def test_malformed_manifest_fields_are_refused(tmp_path, archive, field, value):
    def change(m):
        manifest = json.loads(m["manifest.json"])
        manifest[field] = value
        m["manifest.json"] = json.dumps(manifest).encode()

    _refused(tmp_path, archive, change, field if field != "forward" else "forward")


def test_malformed_signature_records_are_refused(tmp_path, archive):
    def leaf_out_of_range(m):
        manifest = json.loads(m["manifest.json"])
        manifest["signatures"][0]["input_leaves"] = [7]
        m["manifest.json"] = json.dumps(manifest).encode()

    _refused(tmp_path, archive, leaf_out_of_range, "input leaf")

    def bad_spec(m):
        manifest = json.loads(m["manifest.json"])
        manifest["signatures"][0]["out_spec"] = '[1, {"type": "os.system"}]'
        m["manifest.json"] = json.dumps(manifest).encode()

    _refused(tmp_path, archive, bad_spec, "out_spec")


def test_not_an_archive(tmp_path, archive):
    with pytest.raises(ArchiveError, match="no such file"):
        fxforge.load(tmp_path / "missing.fxf")
    (tmp_path / "junk.fxf").write_bytes(b"\x00" * 100)
    with pytest.raises(ArchiveError, match="not a readable zip"):
        fxforge.load(tmp_path / "junk.fxf")
    data = archive.read_bytes()
    (tmp_path / "cut.fxf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError):
        fxforge.load(tmp_path / "cut.fxf")


def test_oversized_members_are_refused_before_reading(tmp_path, archive, monkeypatch):
    from fxforge import archive as archive_module

    monkeypatch.setattr(archive_module, "MAX_TEXT_BYTES", 100)
    with pytest.raises(ArchiveError, match="over the limit"):
        fxforge.load(archive)


# --- the CLI -------------------------------------------------------------------------------------


def test_inspect_prints_manifest_and_ir_summary(tmp_path, archive, capsys):
    assert main(["inspect", str(archive), "--report"]) == 0
    out = capsys.readouterr().out
    for expected in ("fxforge-archive v1", "model         DigitsCNN", "target        cpu",
                     "signature 0   (float32[4,1,8,8])", "constants.npz", "fused_conv2d",
                     "saved report"):
        assert expected in out
    bad = _rewrite(archive, tmp_path / "bad.fxf", lambda m: m.update({"x.pkl": b""}))
    assert main(["inspect", str(bad)]) == 2
    assert "x.pkl" in capsys.readouterr().err


def test_compile_cli_saves(tmp_path, capsys):
    path = tmp_path / "cli.fxf"
    assert main(["compile", "zoo:mlp", "--repeats", "0", "--save", str(path)]) == 0
    assert "saved to" in capsys.readouterr().out
    model, example = zoo.build("mlp", 1)
    assert torch.allclose(fxforge.load(path)(*example), model(*example), rtol=1e-4, atol=1e-5)
