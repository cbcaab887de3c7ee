"""The problem sizes of a GPU check, in one record: FULL for a real run (written for an H100),
SMOKE for Triton's CPU interpreter (tiny, so that every section runs in seconds). The sections,
the verify checks (how many autotuner configs) and the goals table all read `Check.sizes`."""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.bench import triton_gpu


@dataclass(frozen=True)
class Sizes:
    gemm_big: int                      # M = N = K of the goal GEMM
    gemm_small_nk: int                 # N = K at M <= 16
    gemm_small_ms: tuple[int, ...]
    gemm_extra: tuple[tuple[int, int], ...]   # (M, N = K) when time allows
    epilogue: tuple[tuple[int, int], ...]     # (M, N = K), the first is the goal's
    attention: tuple[tuple[int, int, int, int], ...]  # (B, H, L, D)
    conv_batch: int
    conv_layers: tuple[tuple[int, int, int, int, int], ...]
    e2e: tuple[tuple[str, int], ...]   # (model, batch)
    graphs: tuple[str, ...]            # quick-zoo models, batch 1
    configs: int | None                # autotuner / every-config checks: all, or the first n


FULL = Sizes(4096, 8192, (1, 16), ((8192, 8192),), ((4096, 4096), (8192, 8192)),
             ((32, 12, 128, 64), (32, 12, 512, 64)), 64, tuple(triton_gpu.RESNET_LAYERS),
             (("resnet50", 64), ("bert-base", 128)), ("resnet18", "mlp", "bert-base"), None)
SMOKE = Sizes(64, 64, (1, 16), (), ((40, 64),), ((1, 2, 16, 16), (1, 2, 40, 16)), 2,
              ((8, 16, 6, 3, 1), (16, 8, 5, 1, 2)), (("mlp", 4),), ("mlp",), 2)
