"""Shared test setup: Triton kernels run on the CPU interpreter when no CUDA device is present.

Kernels are made when a graph is prepared (kernels/triton/jit.py), and Triton reads
TRITON_INTERPRET when a kernel is made, so setting it here, before any test runs, is enough.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
