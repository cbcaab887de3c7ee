"""Triton kernels of the cuda targets, generated from the IR (see DESIGN.md, "Kernel files").

Every kernel is made from generated source (`jit.build`) when a graph is prepared, never at
import: Triton binds a kernel to the GPU or to its CPU interpreter (`TRITON_INTERPRET=1`) when it
is decorated, so a kernel made at import would keep the mode of that moment.
"""
