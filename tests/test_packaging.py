"""The wheel as a user installs it: one top-level name (`fxforge`), package data inside, and it
sits beside `transformers` (whose dependency, Hugging Face's `kernels`, owns the top-level name
`kernels`) without breaking it, installed or uninstalled. From the repository root, where
Python puts the current directory first on its path, the checkout must not shadow it either.

The fresh venv holds the wheel, `transformers` and `kernels` in its own site-packages (where an
overwrite would happen); torch and the other heavy dependencies come from the dev venv through a
path file appended after them, so the test installs a few megabytes, not torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
SOURCE_DIRS = {"compiler": "fxforge", "passes": "fxforge/passes", "kernels": "fxforge/kernels",
               "bench": "fxforge/bench"}

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _clean_env() -> dict:
    """The environment without variables that would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources, so the checkout gets no build/ or egg-info."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
    for folder in SOURCE_DIRS:
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", str(out), str(src)], cwd=src)
    (found,) = out.glob("fxforge-*.whl")
    return found


def test_wheel_has_one_top_level_name_and_its_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fxforge", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "fxforge/bench/schema.json" in names
    assert not [n for n in names if "/results/" in n or "__pycache__" in n]
    # every module of the source folders is in the wheel, under its namespace path
    for folder, target in SOURCE_DIRS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).as_posix()
            assert f"{target}/{rel}" in names, f"{folder}/{rel} missing from the wheel"
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["fxforge"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip_alone(cmd: list[str], path_file: Path, cwd: Path) -> None:
    text = path_file.read_text()
    path_file.unlink()
    try:
        _run(cmd, cwd=cwd)
    finally:
        path_file.write_text(text)


def test_installed_wheel_lives_beside_transformers(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path).stdout.strip())
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    install = [*pip, "install", "--quiet", "--no-deps"]
    _run([*install, "-c", str(LOCK), "transformers", "kernels"], cwd=tmp_path)
    # torch, numpy, ... from the dev venv, searched after the fresh venv's own packages; pip
    # runs without it, so that it never sees (or touches) the dev venv's fxforge
    dev_packages = site / "zz_dev_packages.pth"
    dev_packages.write_text(sysconfig.get_path("purelib") + "\n")
    hf_kernels = site / "kernels" / "__init__.py"
    before = _sha(hf_kernels)
    import_bert = [str(py), "-c", "from transformers import BertModel; import kernels; "
                   "print(kernels.__file__)"]
    env = _clean_env()
    assert Path(_run(import_bert, cwd=tmp_path, env=env).stdout.strip()) == hf_kernels

    _pip_alone(install + [str(wheel)], dev_packages, tmp_path)
    installed = {p.name for p in site.iterdir()} - {"zz_dev_packages.pth", "__pycache__"}
    ours = {n for n in installed if n.startswith("fxforge")}
    assert {n for n in ours if not n.endswith(".dist-info")} == {"fxforge"}, installed
    assert _sha(hf_kernels) == before
    assert Path(_run(import_bert, cwd=tmp_path, env=env).stdout.strip()) == hf_kernels

    # the console script and `python -m fxforge`, from a directory that is not the checkout,
    # on our own MLP and on transformers' BERT
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo = _run([str(venv / "bin" / "fxforge"), "demo", "--model", "mlp", "--repeats", "0"],
                cwd=elsewhere, env=env)
    assert "ok" in demo.stdout and str(REPO) not in demo.stdout + demo.stderr
    where = _run([str(py), "-c", "import fxforge, fxforge.kernels.reference as r; "
                  "print(fxforge.__file__); print(r.__file__)"], cwd=elsewhere, env=env)
    assert all(Path(p).is_relative_to(site) for p in where.stdout.split()), where.stdout
    bert = _run([str(py), "-m", "fxforge", "demo", "--model", "bert", "--repeats", "0"],
                cwd=elsewhere, env=env)
    assert "ok" in bert.stdout

    _pip_alone([*pip, "uninstall", "--quiet", "--yes", "fxforge"], dev_packages, tmp_path)
    assert not (site / "fxforge").exists()
    assert _sha(hf_kernels) == before
    assert Path(_run(import_bert, cwd=tmp_path, env=env).stdout.strip()) == hf_kernels


def test_checkout_root_does_not_shadow_other_distributions():
    """`python -m fxforge demo --model bert` from the repository root, with Hugging Face's
    `kernels` installed: the folders kernels/, passes/, bench/ are no regular packages, so the
    installed distributions of those names win."""
    env = _clean_env()
    probe = _run([sys.executable, "-c", "import fxforge, kernels; print(kernels.__file__)"],
                 cwd=REPO, env=env)
    installed = Path(sysconfig.get_path("purelib")) / "kernels" / "__init__.py"
    assert Path(probe.stdout.strip()) == installed, probe.stdout
    for name in ("kernels", "passes", "bench"):
        assert not (REPO / name / "__init__.py").exists(), f"{name}/__init__.py shadows"
    bert = _run([sys.executable, "-m", "fxforge", "demo", "--model", "bert", "--repeats", "0"],
                cwd=REPO, env=env)
    assert "ok" in bert.stdout
