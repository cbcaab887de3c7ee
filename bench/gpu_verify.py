"""The verify section of the GPU check: every kernel family of kernels/triton run on the device
and compared with the numpy reference (kernels/reference*.py, computed on the CPU from the same
inputs). VERIFY lists the checks (gpu_verify_matmul.py, gpu_verify_ops.py) in the order they run;
a failing check is recorded as its row (max error or exception) and the run goes on."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fxforge.bench.gpu_run import Check, traceback_head
from fxforge.bench.gpu_verify_matmul import (
    v_conv_configs,
    v_conv_f16,
    v_conv_f32,
    v_conv_grouped_f32,
    v_depthwise_f16,
    v_depthwise_f32,
    v_depthwise_int8,
    v_gemm_configs,
    v_int4,
    v_linear_f16_epilogue,
    v_linear_f32,
    v_qconv_acc,
    v_qconv_grouped_acc,
    v_qconv_grouped_i8,
    v_qconv_i8,
    v_qlinear_acc,
    v_qlinear_dynamic_f32,
    v_qlinear_f16,
    v_qlinear_static_i8,
)
from fxforge.bench.gpu_verify_ops import (
    v_adaptive_pool,
    v_attention_bool_mask,
    v_attention_configs,
    v_attention_f16_causal,
    v_attention_f32,
    v_attention_float_mask,
    v_avg_pool,
    v_dynamic_quant,
    v_elementwise_f16,
    v_elementwise_f32,
    v_layer_norm,
    v_layout_cat_pad,
    v_layout_copy,
    v_layout_take,
    v_max_pool,
    v_quant,
    v_reduce,
    v_softmax,
)
from fxforge.bench.gpu_verify_tools import Verify, check_result

VERIFY: tuple[tuple[str, str, Callable[[Verify], dict]], ...] = (
    ("gemm", "linear f32 + bias: big M and split-K small M", v_linear_f32),
    ("gemm", "linear f16 + bias + gelu + residual (fused epilogue)", v_linear_f16_epilogue),
    ("gemm", "qlinear int32 accumulator, zero point -3, both paths", v_qlinear_acc),
    ("gemm", "qlinear static + bias + relu (+ residual) -> int8, both paths",
     v_qlinear_static_i8),
    ("gemm", "qlinear dynamic per-row scale + bias + gelu + residual -> f32",
     v_qlinear_dynamic_f32),
    ("gemm", "qlinear split-K + bias -> f16", v_qlinear_f16),
    ("int4_gemm", "linear_int4 f32 group 32 (one-group path), f16 group 6 (gather path)",
     v_int4),
    ("conv", "conv2d f32 3x3 + bias + relu", v_conv_f32),
    ("conv", "conv2d f16 3x3 stride 2 + bias", v_conv_f16),
    ("conv", "grouped conv2d f32 (groups 4) + bias + relu", v_conv_grouped_f32),
    ("conv", "qconv2d int32 accumulator, zero point 7, padding", v_qconv_acc),
    ("conv", "grouped qconv2d int32 accumulator (groups 4)", v_qconv_grouped_acc),
    ("conv", "qconv2d + bias + relu -> int8", v_qconv_i8),
    ("conv", "grouped qconv2d + bias + relu -> int8", v_qconv_grouped_i8),
    ("depthwise", "depthwise f32 3x3 + bias + relu", v_depthwise_f32),
    ("depthwise", "depthwise f16 3x3 stride 2 + bias + relu", v_depthwise_f16),
    ("depthwise", "depthwise int8: int32 accumulator exact, -> int8", v_depthwise_int8),
    ("elementwise", "fused chain mul + add + gelu, broadcast operands (f32)", v_elementwise_f32),
    ("elementwise", "fused chain exp + add + div + sigmoid (f16)", v_elementwise_f16),
    ("reduce", "softmax / log_softmax f32 (long rows, -inf), softmax f16", v_softmax),
    ("reduce", "layer_norm f32 and f16", v_layer_norm),
    ("reduce", "sum / mean / amax f32", v_reduce),
    ("quant", "quantize / dequantize (exact, ties to even)", v_quant),
    ("quant", "dynamic_quantize row and tensor (exact)", v_dynamic_quant),
    ("attention", "f32, head dim 32", v_attention_f32),
    ("attention", "f16, head dim 64, causal", v_attention_f16_causal),
    ("attention", "f16, head dim 128, bool padding mask", v_attention_bool_mask),
    ("attention", "float masks: f32 d64 with -inf; f16 d32 causal + mask",
     v_attention_float_mask),
    ("pool", "max_pool2d 3x3 s2 p1: f32 NHWC / NCHW, int8", v_max_pool),
    ("pool", "avg_pool2d 3x3 s2 p1 ceil, no pad count: f32, f16", v_avg_pool),
    ("pool", "adaptive_avg_pool2d: global 1x1, 5x3 from 13x10", v_adaptive_pool),
    ("layout", "contiguous copy of a permuted view; to channels-last", v_layout_copy),
    ("layout", "cat (f16); pad constant / reflect / replicate", v_layout_cat_pad),
    ("layout", "take (negative positions) and gather", v_layout_take),
    ("gemm", "qlinear int32 with every autotuner config", v_gemm_configs),
    ("attention", "f16 head dim 64 with every autotuner config", v_attention_configs),
    ("conv", "qconv2d int32 with every autotuner config", v_conv_configs),
)


def run_verify(b: Check) -> None:
    v = Verify(b.device, b.smoke, b.sizes.configs)
    for kernel, case, fn in VERIFY:
        if not b.allow(case, 2.0):
            b.skip("verify", f"{kernel}: {case}", 2.0)
            continue
        start = time.perf_counter()
        try:
            result = fn(v)
            if b.cuda:
                torch.cuda.synchronize()
        except Exception as e:  # a kernel that raises fails its check; the run goes on
            result = check_result(False, None, "-", error=f"{type(e).__name__}: {e}"[:500],
                                  traceback=traceback_head(e))
            b.recover()
        b.add("verify", kernel=kernel, case=case, **result,
              s=round(time.perf_counter() - start, 3))
