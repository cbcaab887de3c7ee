"""The benchmark sections of the GPU check, each a runner `run_<section>(b: Check)` adding rows:
gemm and epilogue (int8 GEMMs, through bench/triton_gpu.py), attention (fused vs SDPA), graphs
(CUDA graphs vs plain launches), e2e (ResNet-50, BERT-base vs torch.compile), conv (int8 vs
cuDNN) and autotune (a cold tune). Each step goes through `Check.case`, so it is skipped when
too little time is left and its failure is a row, not the end of the run."""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fxforge.bench import triton_gpu
from fxforge.bench.gpu_run import Check
from fxforge.bench.metrics import first_tensor

# Estimated seconds of each end-to-end step (compile with autotuning, first call); a step starts
# only when this much is left. Guesses for a fresh H100 (no caches): the JSON records the real
# compile times (e2e rows, compile_s) to correct them.
E2E_NEED_S = {"resnet50": {"cuda-int8": 75, "torch.compile max-autotune": 150, "cuda-fp16": 75},
              "bert-base": {"cuda-int8": 45, "torch.compile max-autotune": 90, "cuda-fp16": 45}}
E2E_ORDER = ("cuda-int8", "torch.compile max-autotune", "cuda-fp16")
E2E_GOAL_SYSTEMS = ("cuda-int8", "torch.compile max-autotune")
ATTENTION_CLOSE = 1e-2  # |ours - SDPA| in f16: two f16 results, each ~1e-3 from the exact one


def run_gemm(b: Check) -> None:
    z = b.sizes
    cases = [(z.gemm_big, z.gemm_big)] + [(m, z.gemm_small_nk) for m in z.gemm_small_ms] + \
        list(z.gemm_extra)
    for m, nk in cases:
        b.case("gemm", f"M {m}, N = K {nk}", 5.0, lambda m=m, nk=nk: triton_gpu._gemm_case(
            b, m, nk))


def run_epilogue(b: Check) -> None:
    for m, nk in b.sizes.epilogue:
        b.case("epilogue", f"M {m}, N = K {nk}", 5.0,
               lambda m=m, nk=nk: triton_gpu._epilogue_case(b, m, nk))


def _attention_case(b: Check, batch: int, heads: int, length: int, dim: int,
                    causal: bool) -> None:
    from fxforge.kernels.triton import attention as att

    dtype = torch.float16 if b.cuda else torch.float32  # CPU SDPA: f32 in smoke runs
    q, k, v = (torch.randn(batch, heads, length, dim, device=b.device, dtype=dtype)
               for _ in range(3))

    def ours(config=None):
        return att.attention(q, k, v, is_causal=causal, config=config)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    shape = f"{batch}x{heads}x{length}x{dim}"
    cfg = b.config(att, f"{str(dtype)[6:]}:{shape}:{'causal' if causal else 'full'}", ours,
                   att.configs(dim))
    diff = (ours(cfg).float() - sdpa().float()).abs().max().item()
    times = b.time({"fxforge attention": lambda: ours(cfg), "torch sdpa": sdpa})
    flops = 4 * batch * heads * length * length * dim * (0.5 if causal else 1.0)
    b.add("attention", shape=shape, causal=causal, dtype=str(dtype)[6:], config=cfg,
          max_abs_diff_vs_sdpa=diff, close=diff <= ATTENTION_CLOSE,
          ms={n: t * 1e3 for n, t in times.items()},
          tflops={n: flops / t / 1e12 for n, t in times.items()},
          speedup=times["torch sdpa"] / times["fxforge attention"])


def run_attention(b: Check) -> None:
    for batch, heads, length, dim in b.sizes.attention:
        for causal in (False, True):
            b.case("attention", f"{batch}x{heads}x{length}x{dim} causal={causal}", 5.0,
                   lambda a=(batch, heads, length, dim, causal): _attention_case(b, *a))


def _graph_status(compiled) -> str:
    """The CUDA-graph status of the latest compiled program (live: a failed capture shows)."""
    try:
        program = compiled._latest.programs[str(compiled._device)]
        return program.cuda_graph_status
    except (AttributeError, KeyError, TypeError):
        return compiled.report.records[-1].cuda_graphs or "unknown"


def _graphs_case(b: Check, name: str, target: str) -> None:
    import fxforge
    from fxforge.bench.models import quick_models

    model, inputs = quick_models()[name].build(1)
    model = model.to(b.device).eval()
    inputs = tuple(x.to(b.device) for x in inputs)
    calib = [tuple(torch.randn_like(x) if x.is_floating_point() else x for x in inputs)] \
        if target == "cuda-int8" else None
    start = time.perf_counter()
    with torch.no_grad():
        # default configs: the comparison is of launches, and tuning would cost minutes
        on, off = (fxforge.compile(model, target, example_inputs=inputs, calibration=calib,
                                   autotune=False, cuda_graphs=graphs)
                   for graphs in (True, False))
        for _ in range(3):  # plain warm-up run, capture, replay
            y_on = first_tensor(on(*inputs)).float()
        y_off = first_tensor(off(*inputs)).float()
    compile_s = time.perf_counter() - start
    diff = (y_on - y_off).abs().max().item()
    times = b.time({"cuda graph": lambda: on(*inputs), "plain launches": lambda: off(*inputs)})
    kernels = sum(1 for a in on.report.records[-1].kernels if a.kernel)
    b.add("graphs", model=name, target=target, batch=1, autotune=False, graph=_graph_status(on),
          kernels=kernels, max_abs_diff=diff, compile_s=compile_s,
          ms={n: t * 1e3 for n, t in times.items()},
          speedup=times["plain launches"] / times["cuda graph"])


def run_graphs(b: Check) -> None:
    for name in b.sizes.graphs:
        for target in ("cuda-int8", "cuda"):
            b.case("graphs", f"{name} {target}", 10.0,
                   lambda name=name, target=target: _graphs_case(b, name, target))


def _e2e_models(b: Check) -> list[tuple[str, int, Callable[[int], tuple], str]]:
    from fxforge.bench import models

    if b.smoke:
        quick = models.quick_models()
        return [(name, batch, quick[name].build, "quick zoo") for name, batch in b.sizes.e2e]
    full = models.full_models()
    builds = {"resnet50": (models._seeded(models._hf_resnet([3, 4, 6, 3], "bottleneck", 224)),
                           "224x224"),
              "bert-base": (full["bert-base"].build, "sequence 128")}
    return [(name, batch, *builds[name]) for name, batch in b.sizes.e2e]


def run_e2e(b: Check) -> None:
    """Each model's goal systems (cuda-int8, torch.compile max-autotune) come first; its
    cuda-fp16 starts only when the goal systems of the models after it still fit."""
    systems = E2E_ORDER if b.cuda else ("cuda-int8", "cuda-fp16")
    todo = _e2e_models(b)
    for i, (name, batch, build, note) in enumerate(todo):
        later = sum(E2E_NEED_S.get(m, {}).get(s, 0.0) + 10.0 for m, *_ in todo[i + 1:]
                    for s in E2E_GOAL_SYSTEMS)
        need = {s: t + (0.0 if s in E2E_GOAL_SYSTEMS else later)
                for s, t in E2E_NEED_S.get(name, {}).items()}

        def one(name=name, batch=batch, build=build, note=note, need=need):
            model, inputs = build(batch)
            triton_gpu._e2e_case(b, name, model, inputs, systems, need_s=need, input=note)

        b.case("e2e", f"{name} batch {batch}", 20.0 if b.cuda else 0.0, one)
        if b.cuda:
            torch._dynamo.reset()  # compiled graphs and their CUDA-graph pools go
            gc.collect()
            torch.cuda.empty_cache()


def run_conv(b: Check) -> None:
    for layer in b.sizes.conv_layers:
        cin, cout, h, k, s = layer
        b.case("conv", f"{cin}->{cout} {h}x{h} k{k} s{s}", 5.0,
               lambda layer=layer: triton_gpu._conv_case(b, b.sizes.conv_batch, *layer))


def _tune_problems(b: Check) -> list[tuple[str, str, list[dict], Callable]]:
    """(kernel, problem, configs, run(config)) for a cold tune."""
    from fxforge.ir import TensorType
    from fxforge.kernels.triton import attention as att
    from fxforge.kernels.triton import conv, gemm
    from fxforge.kernels.triton.codegen import Epilogue

    z, dev = b.sizes, b.device
    big, small_nk = z.gemm_big, z.gemm_small_nk
    x, w = triton_gpu._int8((big, big), dev), triton_gpu._int8((big, big), dev)
    xs, ws = triton_gpu._int8((16, small_nk), dev), triton_gpu._int8((small_nk, small_nk), dev)
    ones, ones_s = torch.ones(big, device=dev), torch.ones(small_nk, device=dev)
    t = TensorType((big, big), "f32")
    relu = Epilogue(({"op": "relu"},), (t, t), ())
    cin, cout, h, k, s = z.conv_layers[0]
    cx = triton_gpu._int8((z.conv_batch, cin, h, h), dev).contiguous(
        memory_format=torch.channels_last)
    cw = conv.prepare_weight(triton_gpu._int8((cout, cin, k, k), dev))
    ones_c = torch.ones(cout, device=dev)
    bsz, heads, length, dim = z.attention[-1]
    dtype = torch.float16 if b.cuda else torch.float32
    q = torch.randn(bsz, heads, length, dim, device=dev, dtype=dtype)
    return [
        ("gemm", f"int8 {big}^3 -> int32", gemm.CONFIGS,
         lambda c: gemm.qlinear(x, w, ones, x_scale=1.0, out_dtype="i32", config=c)),
        ("gemm", f"int8 16x{small_nk}x{small_nk} -> int32 (split-K)", gemm.SMALL_M_CONFIGS,
         lambda c: gemm.qlinear(xs, ws, ones_s, x_scale=1.0, out_dtype="i32", config=c)),
        ("gemm", f"int8 {big}^3 + relu -> int8", gemm.CONFIGS,
         lambda c: gemm.qlinear(x, w, ones, x_scale=0.02, epilogue=relu, out_dtype="i8",
                                out_scale=0.5, config=c)),
        ("conv", f"int8 {cin}->{cout} {h}x{h} k{k} s{s} batch {z.conv_batch}", conv.CONFIGS,
         lambda c: conv.qconv2d(cx, cw, ones_c, kernel_size=(k, k), x_scale=0.02,
                                stride=(s, s), padding=(k // 2, k // 2), out_dtype="i32",
                                config=c)),
        ("attention", f"{str(dtype)[6:]} {bsz}x{heads}x{length}x{dim}", att.configs(dim),
         lambda c: att.attention(q, q, q, config=c)),
    ]


def run_autotune(b: Check) -> None:
    from fxforge.kernels.triton import autotune

    shared = autotune.default_tuner()
    b.add("autotune", kernel="shared tuner", problem="during this run",
          timed=len(shared.log), hits=shared.hits, enabled=shared.enabled and b.autotune,
          tune_ms=sum(r.ms for r in shared.log))
    cache = tempfile.mkdtemp(prefix="fxforge-gpu-check-tune-")
    try:
        tuner = autotune.Tuner(cache_dir=cache)  # cold: nothing remembered, on disk or in memory
        for kernel, problem, configs, run in _tune_problems(b):
            offered = list(configs) if b.sizes.configs is None else list(configs)[
                :b.sizes.configs]

            def one(kernel=kernel, problem=problem, offered=offered, run=run):
                before = len(tuner.log)
                start = time.perf_counter()
                picked = tuner.pick(f"gpu-check:{kernel}:{problem}", (problem,), offered, run)
                spent = time.perf_counter() - start
                timed = tuner.log[before:]
                best = min(r.ms for r in timed) if timed else None
                default = autotune.time_ms(run, None)
                b.add("autotune", kernel=kernel, problem=problem, offered=len(offered),
                      timed=len(timed), failed=len(offered) - len(timed), picked=picked,
                      best_ms=best, default_ms=default,
                      gain_vs_default=default / best if best else None, tune_s=spent)

            b.case("autotune", f"{kernel} {problem}", 5.0, one)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
