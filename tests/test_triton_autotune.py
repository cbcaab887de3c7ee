"""The persistent autotuner (kernels/triton/autotune.py), with fake `run` callables: the tuner is
under test here, not a kernel.

Checks: the fastest config wins and is logged; the cache dir is made 0700 and entry files 0600;
a second Tuner on the same dir answers without running anything; tampered entries (garbage,
wrong schema, a config not offered now, another key, another device) are ignored and retuned
and the file rewritten; an untrusted dir (mode 0777, or another owner) gives a warning and is
not written; enabled=False runs nothing and writes nothing; failing configs are skipped and all
failing raises AutotuneError naming the kernel.
"""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest

from fxforge.kernels.triton import autotune
from fxforge.kernels.triton.autotune import AutotuneError, Tuner

KERNEL = "f" * 64  # a kernel identity: the sha256 of its source, in real use
KEY = (256, 512, "f16")
CONFIGS = [{"BLOCK_M": 32, "num_warps": 4}, {"BLOCK_M": 64, "num_warps": 4},
           {"BLOCK_M": 128, "num_warps": 8}]
FASTEST = CONFIGS[1]
REAL_TIME_MS = autotune.time_ms  # before the fake clock below replaces it


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """Timings are the tuner's input, not what is under test: FASTEST costs 1 ms, every other
    config 5 ms (a sleeping fake flaked on a loaded CI machine: a 0 ms call measured over 20 ms).
    The config still runs, so failing configs raise as they would."""

    def timed(run, config):
        run(config)
        return 1.0 if config == FASTEST else 5.0

    monkeypatch.setattr(autotune, "time_ms", timed)


class FakeKernel:
    """run(config) counts its calls and fails for the BLOCK_M values in `fail`."""

    def __init__(self, fail: tuple[int, ...] = ()):
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, config: dict) -> None:
        self.calls.append(config)
        if config["BLOCK_M"] in self.fail:
            raise RuntimeError(f"out of resources: shared memory for BLOCK_M={config['BLOCK_M']}")


def _files(directory) -> list:
    return sorted(p for p in directory.iterdir()) if directory.exists() else []


def _entry_path(directory):
    (path,) = _files(directory)
    return path


def test_picks_the_fastest_and_logs_each_timing(tmp_path):
    tuner, run = Tuner(tmp_path / "cache"), FakeKernel()
    assert tuner.pick(KERNEL, KEY, CONFIGS, run) == FASTEST
    assert run.calls == CONFIGS
    assert [r.config for r in tuner.log] == CONFIGS
    assert min(tuner.log, key=lambda r: r.ms).config == FASTEST
    assert all(r.kernel == KERNEL and r.key == KEY for r in tuner.log)
    # remembered in memory: the same pick again times nothing
    assert tuner.pick(KERNEL, KEY, CONFIGS, run) == FASTEST
    assert len(run.calls) == 3 and tuner.hits == 1


def test_dir_and_file_are_private_and_hold_the_documented_json(tmp_path):
    directory = tmp_path / "a" / "b" / "autotune"
    Tuner(directory).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    for d in (directory, directory.parent, directory.parent.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    path = _entry_path(directory)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.suffix == ".json" and len(path.stem) == 64
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and doc["kernel"] == KERNEL
    assert doc["device"] == autotune.device_name() and doc["triton"] == autotune.triton_version()
    (entry,) = doc["entries"]
    assert entry["key"] == list(KEY) and entry["config"] == FASTEST and entry["ms"] >= 0


def test_default_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FXFORGE_CACHE_DIR", str(tmp_path))
    assert autotune.default_cache_dir() == tmp_path / "autotune"
    assert Tuner().cache_dir == tmp_path / "autotune"


def test_second_tuner_on_the_same_dir_runs_nothing(tmp_path):
    Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    second, run = Tuner(tmp_path), FakeKernel()
    assert second.pick(KERNEL, KEY, CONFIGS, run) == FASTEST
    assert run.calls == [] and second.log == [] and second.hits == 1


def test_entries_of_other_keys_are_kept(tmp_path):
    tuner = Tuner(tmp_path)
    tuner.pick(KERNEL, KEY, CONFIGS, FakeKernel())
    tuner.pick(KERNEL, (1, 2, "f16"), CONFIGS, FakeKernel())
    doc = json.loads(_entry_path(tmp_path).read_text())
    assert [e["key"] for e in doc["entries"]] == [list(KEY), [1, 2, "f16"]]
    run = FakeKernel()
    assert Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, run) == FASTEST and run.calls == []


def _tamper_doc(edit):
    def tamper(path):
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return tamper


TAMPERS = {
    "garbage": lambda path: path.write_bytes(b"\x00not json{"),
    "not-an-object": lambda path: path.write_text("[1, 2, 3]"),
    "wrong-schema": _tamper_doc(lambda d: d.update(schema=2)),
    "wrong-kernel": _tamper_doc(lambda d: d.update(kernel="0" * 64)),
    "wrong-device": _tamper_doc(lambda d: d.update(device="NVIDIA Imaginary 9000")),
    "wrong-triton": _tamper_doc(lambda d: d.update(triton="0.0.1")),
    "config-not-offered": _tamper_doc(
        lambda d: d["entries"][0].update(config={"BLOCK_M": 4096, "num_warps": 4})),
    "config-float-not-int": _tamper_doc(
        lambda d: d["entries"][0].update(config={"BLOCK_M": 64.0, "num_warps": 4})),
    "config-extra-field": _tamper_doc(
        lambda d: d["entries"][0]["config"].update(evil="__import__('os')")),
    "wrong-key": _tamper_doc(lambda d: d["entries"][0].update(key=[256, 512, "f32"])),
    "entry-not-an-object": _tamper_doc(lambda d: d.update(entries=["x"])),
    "ms-not-a-number": _tamper_doc(lambda d: d["entries"][0].update(ms="fast")),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_tampered_entries_are_ignored_retuned_and_rewritten(tmp_path, how):
    Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    path = _entry_path(tmp_path)
    TAMPERS[how](path)
    tuner, run = Tuner(tmp_path), FakeKernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuner.pick(KERNEL, KEY, CONFIGS, run) == FASTEST
    assert run.calls == CONFIGS and tuner.hits == 0
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and doc["kernel"] == KERNEL
    assert doc["device"] == autotune.device_name()
    assert [e["config"] for e in doc["entries"] if e["key"] == list(KEY)] == [FASTEST]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_configs_offered_now_decide_what_a_cached_entry_may_return(tmp_path):
    Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    fewer = [c for c in CONFIGS if c != FASTEST]
    run = FakeKernel()
    picked = Tuner(tmp_path).pick(KERNEL, KEY, fewer, run)
    assert picked in fewer and run.calls == fewer


def test_another_device_has_its_own_file(tmp_path, monkeypatch):
    Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    monkeypatch.setattr(autotune, "device_name", lambda: "NVIDIA Imaginary 9000")
    run = FakeKernel()
    Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, run)
    assert run.calls == CONFIGS and len(_files(tmp_path)) == 2


def test_group_or_world_accessible_dir_is_not_used(tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o777)
    tuner, run = Tuner(directory), FakeKernel()
    with pytest.warns(UserWarning, match=r"shared.*0777.*group/others"):
        assert tuner.pick(KERNEL, KEY, CONFIGS, run) == FASTEST
    assert _files(directory) == [] and run.calls == CONFIGS
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o777  # not chmod'ed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per tuner; memory still answers
        assert tuner.pick(KERNEL, KEY, CONFIGS, run) == FASTEST


def test_dir_of_another_user_is_not_used(tmp_path, monkeypatch):
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(directory).st_uid + 1)
    with pytest.warns(UserWarning, match=r"theirs.*owned by uid"):
        Tuner(directory).pick(KERNEL, KEY, CONFIGS, FakeKernel())
    assert _files(directory) == []


def test_disabled_runs_nothing_and_touches_no_disk(tmp_path):
    directory = tmp_path / "never"
    tuner, run = Tuner(directory, enabled=False), FakeKernel()
    assert tuner.pick(KERNEL, KEY, CONFIGS, run) == CONFIGS[0]
    assert run.calls == [] and tuner.log == [] and not directory.exists()


def test_one_config_is_returned_without_timing(tmp_path):
    run = FakeKernel()
    assert Tuner(tmp_path / "c").pick(KERNEL, KEY, CONFIGS[:1], run) == CONFIGS[0]
    assert run.calls == [] and not (tmp_path / "c").exists()


def test_failing_configs_are_skipped(tmp_path):
    tuner, run = Tuner(tmp_path), FakeKernel(fail=(64,))
    picked = tuner.pick(KERNEL, KEY, CONFIGS, run)
    assert picked in (CONFIGS[0], CONFIGS[2]) and run.calls == CONFIGS
    assert [r.config for r in tuner.log] == [CONFIGS[0], CONFIGS[2]]


def test_all_failing_raises_a_clear_error(tmp_path):
    run = FakeKernel(fail=(32, 64, 128))
    with pytest.raises(AutotuneError, match=r"all 3 configs of kernel fff.*out of resources"):
        Tuner(tmp_path).pick(KERNEL, KEY, CONFIGS, run)
    assert _files(tmp_path) == []


def test_bad_arguments_are_refused(tmp_path):
    tuner = Tuner(tmp_path)
    with pytest.raises(ValueError, match="no configs"):
        tuner.pick(KERNEL, KEY, [], FakeKernel())
    with pytest.raises(TypeError, match="ints or strs"):
        tuner.pick(KERNEL, (1.5,), CONFIGS, FakeKernel())


def test_default_tuner_is_shared():
    assert autotune.default_tuner() is autotune.default_tuner()


def test_time_ms_times_one_call_off_the_gpu():
    calls = []
    ms = REAL_TIME_MS(calls.append, CONFIGS[0])
    assert calls == [CONFIGS[0]] and 0 <= ms < 1000
