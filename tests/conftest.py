"""Shared test setup: Triton kernels run on Triton's CPU interpreter (TRITON_INTERPRET=1).

The kernel tests build CPU tensors and check every kernel against the numpy reference, so they
run the interpreter on any machine, a GPU machine included (where CPU tensors cannot go to a real
kernel). On a GPU, `python -m fxforge.bench.triton_gpu` checks the same kernels on the device
before it times them. Kernels are made when a graph is prepared (kernels/triton/jit.py), and
Triton reads TRITON_INTERPRET when a kernel is made, so setting it here, before any test runs, is
enough; an explicit TRITON_INTERPRET in the environment wins.

Reproducer bundles that tests provoke (a pass made to crash) go to one temp folder of this test
run, removed at its end, not into the system's temp dir; tests of bundles name their own folder.
"""

import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")

if "FXFORGE_REPRO_DIR" not in os.environ:
    _REPRO_DIR = tempfile.mkdtemp(prefix="fxforge-test-repros-")
    os.environ["FXFORGE_REPRO_DIR"] = _REPRO_DIR

    def pytest_unconfigure(config):
        shutil.rmtree(_REPRO_DIR, ignore_errors=True)
