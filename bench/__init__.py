"""fxforge's benchmark harness: fxforge targets side by side with eager PyTorch, torch.compile and
ONNX Runtime, on a model zoo, at several batch sizes, interleaved in one process.

    fxforge bench [--quick] [--models a,b] [--systems a,b] [--batch 1,8] [--device cpu|cuda]
                  [--out DIR]

Modules: `models` (the bench zoo), `systems` (one adapter per system), `metrics` (memory, size,
errors), `harness` (the run), `report` (JSON schema, markdown, plots), `timing` (interleaved
medians and machine facts). `pruning.py` is a separate script.
"""
