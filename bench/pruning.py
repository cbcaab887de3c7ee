"""Pruned ResNets on the CPU: does removing pruned channels make the model faster?

Cases, each timed interleaved in one process at one batch size as eager unpruned, eager pruned
(zeros still computed) and fxforge `cpu` of the pruned model:

- a ResNet-18-style CNN pruned with `fxforge.prune_channels(amount=0.5)`;
- the same CNN with `torch.nn.utils.prune.ln_structured` on the first conv of every basic block
  (`--ln-amounts`). Only the conv is zeroed, not its batch norm: a pruned channel is the constant
  relu(BN shift), read by the block's zero-padded second conv, which `remove-pruned-channels`
  absorbs exactly as a per-position bias map;
- a ResNet-50-style CNN with `ln_structured` on the 3x3 conv of every bottleneck
  (`--ln50-amounts`; its constant channels reach a 1x1 conv, absorbed into the bias).

Speedups are medians of per-round ratios (round r times every system once, so a ratio compares
runs that saw the same machine load). Each row says whether it meets issue #3's bar: at least
45% fewer params and FLOPs, at least 1.6x faster than eager unpruned, no slower than eager pruned.
Prints a table and writes bench/results/pruning-cpu-<date>.json.

    .venv/bin/python bench/pruning.py [--batch 32] [--repeats 30] [--width 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune

from fxforge import compile, prune_channels, zoo
from fxforge.bench.timing import interleaved_samples, machine, summarize

SYSTEMS = ("eager unpruned", "eager pruned", "fxforge cpu pruned")
BAR = {"reduction": 0.45, "vs_unpruned": 1.6, "vs_pruned": 1.0}  # issue #3


def _paired_speedup(samples: dict[str, list[float]], base: str) -> float:
    return statistics.median(b / f for b, f in zip(samples[base], samples[SYSTEMS[2]]))


def _case(name: str, original: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor,
          repeats: int) -> dict:
    with torch.no_grad():
        expected = pruned(x)
    fast_unpruned = compile(original, "cpu", example_inputs=x)
    fast = compile(pruned, "cpu", example_inputs=x)
    got = fast(x)
    max_err = float((got - expected).abs().max())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), max_err
    base, after = fast_unpruned.report.latest, fast.report.latest
    removal = next(p for p in after.passes if p.name == "remove-pruned-channels")
    samples = interleaved_samples(dict(zip(SYSTEMS, (
        lambda: original(x), lambda: pruned(x), lambda: fast(x)))), repeats=repeats)
    result = {
        "case": name, "batch": x.shape[0], "max_abs_error_vs_eager_pruned": max_err,
        "params_unpruned": base.params_after, "params_pruned_compiled": after.params_after,
        "flops_unpruned": base.flops_after, "flops_pruned_compiled": after.flops_after,
        "params_reduction": 1 - after.params_after / base.params_after,
        "flops_reduction": 1 - after.flops_after / base.flops_after,
        "channels_removed": removal.stats.get("channels-removed", 0),
        "bias_maps": removal.stats.get("bias-maps", 0),
        "times": {k: summarize(v) for k, v in samples.items()},
        "samples_s": samples,
        "speedup_vs_eager_unpruned": _paired_speedup(samples, SYSTEMS[0]),
        "speedup_vs_eager_pruned": _paired_speedup(samples, SYSTEMS[1]),
    }
    result["meets_issue_3"] = (
        min(result["params_reduction"], result["flops_reduction"]) >= BAR["reduction"]
        and result["speedup_vs_eager_unpruned"] >= BAR["vs_unpruned"]
        and result["speedup_vs_eager_pruned"] >= BAR["vs_pruned"])
    return result


def _with_width(name: str, width: int) -> torch.nn.Module:
    block, layers = {"resnet18": (zoo.BasicBlock, [2, 2, 2, 2]),
                     "resnet50": (zoo.Bottleneck, [3, 4, 6, 3])}[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.ResNet(block, layers, width=width)
    return zoo.randomize_norms(model)


def ln_pruned(model: torch.nn.Module, amount: float, conv_of_block) -> torch.nn.Module:
    """A copy with `ln_structured(amount, n=1, dim=0)` on `conv_of_block(block)` of every
    residual block (masks and forward pre-hooks, as torch leaves them); eval mode."""
    pruned = copy.deepcopy(model)
    for module in pruned.modules():
        if isinstance(module, (zoo.BasicBlock, zoo.Bottleneck)):
            torch_prune.ln_structured(conv_of_block(module), "weight", amount=amount, n=1, dim=0)
    return pruned.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--ln-amounts", type=float, nargs="*", default=[0.5, 0.75],
                        help="ln_structured amounts for the ResNet-18-style case")
    parser.add_argument("--ln50-amounts", type=float, nargs="*", default=[0.75],
                        help="ln_structured amounts for the ResNet-50-style case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    # torch.export on a module whose weights prune's pre-hooks assign as plain attributes
    warnings.filterwarnings("ignore", "The tensor attributes", UserWarning)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)

    resnet18 = _with_width("resnet18", args.width)
    results = [_case("resnet18 prune_channels(0.5)", resnet18,
                     prune_channels(resnet18, 0.5, x[:2]), x, args.repeats)]
    for amount in args.ln_amounts:
        results.append(_case(f"resnet18 ln_structured({amount}) on every basic block's conv1",
                             resnet18, ln_pruned(resnet18, amount, lambda b: b.conv1), x,
                             args.repeats))
    resnet50 = _with_width("resnet50", args.width // 2)
    for amount in args.ln50_amounts:
        results.append(_case(f"resnet50 ln_structured({amount}) on bottleneck 3x3 convs",
                             resnet50, ln_pruned(resnet50, amount, lambda b: b.conv2[0]), x,
                             args.repeats))
    report = {"benchmark": "pruning", "device": "cpu", "machine": machine(),
              "options": vars(args), "bar": BAR, "results": results}
    print(f"pruning benchmark, {report['machine']['date']}, {report['machine']['cpu']}, "
          f"{report['machine']['threads']} threads, batch {args.batch}, {args.repeats} "
          "interleaved rounds (times: medians; speedups: medians of per-round ratios)")
    print("| case | params -% | FLOPs -% | eager unpruned ms | eager pruned ms | fxforge ms | "
          "x vs unpruned | x vs pruned | meets #3 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["times"]
        print(f"| {r['case']} | {r['params_reduction']:.1%} | {r['flops_reduction']:.1%} | "
              + " | ".join(f"{t[s]['median_s'] * 1e3:.1f}" for s in SYSTEMS)
              + f" | {r['speedup_vs_eager_unpruned']:.2f} | {r['speedup_vs_eager_pruned']:.2f} | "
              f"{'yes' if r['meets_issue_3'] else 'no'} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pruning-cpu-{report['machine']['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
