"""A missing optional package ends in one line that names the extra to install, from Python and
from the command line; an installed package that fails to import keeps its own error."""

from __future__ import annotations

import importlib
import sys

import pytest

import fxforge
from fxforge import zoo
from fxforge.__main__ import main
from fxforge.bench import report
from fxforge.errors import FxforgeError, MissingDependencyError
from fxforge.optional import require


def _hide(monkeypatch, name: str) -> None:
    """Make `import name` (and of its submodules) fail as for a package that is not installed."""
    for loaded in [m for m in sys.modules if m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, name, None)


def test_missing_transformers_names_the_zoo_extra(monkeypatch):
    _hide(monkeypatch, "transformers")
    with pytest.raises(MissingDependencyError) as e:
        zoo.build("bert")
    message = str(e.value)
    assert 'pip install "fxforge[zoo]"' in message and "transformers" in message
    assert "\n" not in message
    assert isinstance(e.value, ImportError) and isinstance(e.value, FxforgeError)


def test_missing_sklearn_names_the_zoo_extra(monkeypatch):
    zoo.digits_data.cache_clear()
    _hide(monkeypatch, "sklearn")
    try:
        with pytest.raises(MissingDependencyError, match=r'scikit-learn.*fxforge\[zoo\]'):
            zoo.digits_data()
    finally:
        zoo.digits_data.cache_clear()


def test_missing_matplotlib_names_the_bench_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingDependencyError, match=r'fxforge\[bench\].*|--no-plots'):
        report._pyplot()


def test_cli_says_it_in_one_line(monkeypatch, capsys):
    _hide(monkeypatch, "transformers")
    assert main(["demo", "--model", "bert", "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("fxforge: error:") and 'pip install "fxforge[zoo]"' in err


def test_a_broken_installed_package_keeps_its_own_error(monkeypatch):
    """sklearn is there but one of its modules fails: not a missing extra."""
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError) as e:
        require("sklearn.datasets", "the digits model")
    assert not isinstance(e.value, MissingDependencyError)


def test_public_names_are_one_namespace():
    assert fxforge.zoo is zoo
    for name in ("compile", "prune_channels", "parse_ir", "verify", "TARGETS"):
        assert hasattr(fxforge, name)
    registry = importlib.import_module("fxforge.passes.registry")
    reference = importlib.import_module("fxforge.kernels.reference")
    assert "fold-batchnorm" in registry.PASSES and fxforge.passes.registry is registry
    assert reference.__name__ == "fxforge.kernels.reference"
