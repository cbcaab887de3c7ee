"""Microbenchmark: one int8 layer of `cpu-int8` against the float32 layer it replaces.

    .venv/bin/python -m fxforge.bench.int8_kernels [--repeats 15] [--only bert|resnet] [--batch 32]
                                           [--threads N] [--no-generic]

Per layer shape (BERT-base linears at batch 32 x 128 tokens, ResNet-50/18 convolutions at batch
32), each timed interleaved with the others (`bench.timing`) and reported as medians:

- `fp32`: eager float32, `F.linear` / `F.conv2d` with bias on contiguous (NCHW) tensors.
- `int8 i8->i8`: the prepared int8 layer as it runs inside a model where int8 flows between
  layers: int8 in, bias + relu (gelu for the BERT FFN up-projection) and requantization fused,
  int8 out.
- `q+int8+f32`: the layer standing alone: quantize the float32 input, int8 layer, float32 out
  (for convolutions a channels-last float32 input, as int8 layers write it inside a model; an
  NCHW one would add an int8 NCHW -> NHWC transpose, about as costly as the quantize).
- `generic`: the same standalone layer on the generic path (`torch._int_mm` where it is exact
  and fast here, else float32 K-slices; im2col for convolutions).

Times print as "median (min)" in ms.

Ratios are fp32 time / int8 time, the median of per-round ratios (each round runs every
variant once, back to back), so drift in a shared machine's load cancels. Absolute times on a
shared machine are noisy; compare ratios.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fxforge.bench.timing import interleaved_samples
from fxforge.kernels import int8_scheme
from fxforge.kernels import torch_int8 as ti

CPU = torch.device("cpu")


def _attrs(out_dtype: str, epilogue: tuple, conv: dict | None = None) -> dict:
    attrs = dict(has_bias=True, dynamic=False, x_scale=0.02, x_zero_point=3,
                 out_dtype=out_dtype, out_scale=0.05 if out_dtype == "i8" else None,
                 out_zero_point=-2 if out_dtype == "i8" else 0, epilogue=epilogue)
    return {**(conv or {}), **attrs}


def _variants(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, act: str,
              conv: dict | None) -> dict[str, Callable[[], object]]:
    """fp32 and the int8 variants of one layer; x, w are float32."""
    cout = w.shape[0]
    w_q = torch.randint(-127, 128, w.shape, dtype=torch.int8)
    w_scale = torch.rand(cout) * 0.01 + 1e-3
    x_q = ti.quantize(x, scale=0.02, zero_point=3)
    if conv is None:
        fp32 = lambda: F.linear(x, w, bias)  # noqa: E731
        prepare, generic = ti.prepare_qlinear, ti.qlinear
    else:
        geo = (conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
        fp32 = lambda: F.conv2d(x, w, bias, *geo)  # noqa: E731
        prepare, generic = ti.prepare_qconv2d, ti.qconv2d
    step = {"op": act} if act == "relu" else {"op": "gelu", "attrs": {"approximate": "none"}}
    chain = _attrs("i8", (step,), conv)
    alone = _attrs("f32", (), conv)
    if conv is not None:  # inside a model, int8 activations come channels-last from a qconv
        x_q = x_q.contiguous(memory_format=torch.channels_last)
    inputs = (x_q, w_q, w_scale, bias)
    consts = [None, w_q, w_scale, bias]
    run_chain = prepare(consts, chain, CPU)
    run_alone = prepare(consts, alone, CPU)

    # float32 tensors between int8 layers are channels-last too (the layers write it)
    x_f = x if conv is None else x.contiguous(memory_format=torch.channels_last)

    def standalone(run, attrs):
        return lambda: run(ti.quantize(x_f, scale=0.02, zero_point=3), *inputs[1:], **attrs)

    return {"fp32": fp32,
            "int8 i8->i8": lambda: run_chain(*inputs, **chain),
            "q+int8+f32": standalone(run_alone, alone),
            "generic": standalone(lambda *a, **k: generic(*a, **k), alone)}


def bert_layers(batch: int) -> list[tuple[str, dict]]:
    m = batch * 128
    return [(f"linear M={m} K={k} N={n}", dict(m=m, k=k, n=n, act=act))
            for k, n, act in ((768, 768, "relu"), (768, 3072, "gelu"), (3072, 768, "relu"))]


def resnet_layers(batch: int) -> list[tuple[str, dict]]:
    shapes = [  # cin, cout, hw, k, stride: ResNet-50 bottleneck / ResNet-18 basic-block convs
        (256, 64, 56, 1, 1), (64, 64, 56, 3, 1), (64, 256, 56, 1, 1), (128, 128, 56, 3, 2),
        (512, 128, 28, 1, 1), (256, 256, 14, 3, 1), (512, 512, 7, 3, 1), (512, 1024, 28, 1, 2),
    ]
    return [(f"conv {cin}->{cout} {hw}x{hw} k{k} s{s}",
             dict(b=batch, cin=cin, cout=cout, hw=hw, k=k, s=s, act="relu"))
            for cin, cout, hw, k, s in shapes]


def _make(spec: dict) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    if "m" in spec:
        x = torch.randn(spec["m"], spec["k"])
        w = torch.randn(spec["n"], spec["k"]) / spec["k"] ** 0.5
        return _variants(x, w, torch.randn(spec["n"]), spec["act"], None)
    x = torch.randn(spec["b"], spec["cin"], spec["hw"], spec["hw"])
    w = torch.randn(spec["cout"], spec["cin"], spec["k"], spec["k"])
    conv = dict(stride=(spec["s"],) * 2, padding=(spec["k"] // 2,) * 2, dilation=(1, 1),
                groups=1)
    return _variants(x, w, torch.randn(spec["cout"]), spec["act"], conv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--only", choices=("bert", "resnet"))
    p.add_argument("--no-generic", action="store_true", help="skip the slow generic path")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = []
    if args.only != "resnet":
        layers += bert_layers(args.batch)
    if args.only != "bert":
        layers += resnet_layers(args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN int8 path: "
          f"{ti.onednn_available(CPU)}; int8 scheme {int8_scheme.detect().describe()}")
    print(f"medians of {args.repeats} interleaved rounds (ms); ratio = fp32 / variant, median "
          "of per-round ratios; (min) = fastest round")
    head = f"{'layer':<31}{'fp32':>16}"
    names = ["int8 i8->i8", "q+int8+f32"] + ([] if args.no_generic else ["generic"])
    for name in names:
        head += f"{name:>17}{'ratio':>7}"
    print(head)
    for title, spec in layers:
        systems = _make(spec)
        if args.no_generic:
            systems.pop("generic")
        samples = interleaved_samples(systems, repeats=args.repeats, warmup=2)
        row = f"{title:<31}{_ms(samples['fp32']):>16}"
        for name in names:
            ratio = statistics.median(f / s for f, s in zip(samples["fp32"], samples[name]))
            row += f"{_ms(samples[name]):>17}{ratio:>7.2f}"
        print(row, flush=True)


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.2f} ({min(times) * 1e3:.2f})"


if __name__ == "__main__":
    main()
