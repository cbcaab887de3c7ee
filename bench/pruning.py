"""Pruned ResNet on the CPU: does removing pruned channels make the model faster?

Prunes a ResNet-18-style CNN with `compiler.prune_channels(amount=0.5)`, and a ResNet-50-style
CNN with `torch.nn.utils.prune.ln_structured` on the 3x3 conv of every bottleneck (whose zero
channels reach a 1x1 conv without padding through BN + ReLU, so they can be removed exactly),
and times, interleaved in one process, at one batch size:
  eager unpruned, eager pruned (zeros still computed), fxforge `cpu` of the pruned model.
Prints a table and writes bench/results/pruning-cpu-<date>.json.

    .venv/bin/python bench/pruning.py [--batch 32] [--repeats 30] [--width 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved, machine  # noqa: E402

from compiler import compile, prune_channels, zoo  # noqa: E402


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
    times = interleaved({
        "eager unpruned": lambda: original(x),
        "eager pruned": lambda: pruned(x),
        "fxforge cpu pruned": lambda: fast(x),
    }, repeats=repeats)
    unpruned_s = times["eager unpruned"]["median_s"]
    return {
        "case": name, "batch": x.shape[0], "max_abs_error_vs_eager_pruned": max_err,
        "params_unpruned": base.params_after, "params_pruned_compiled": after.params_after,
        "flops_unpruned": base.flops_after, "flops_pruned_compiled": after.flops_after,
        "params_reduction": 1 - after.params_after / base.params_after,
        "flops_reduction": 1 - after.flops_after / base.flops_after,
        "times": times,
        "speedup_vs_eager_unpruned": unpruned_s / times["fxforge cpu pruned"]["median_s"],
        "speedup_vs_eager_pruned": (times["eager pruned"]["median_s"]
                                    / times["fxforge cpu pruned"]["median_s"]),
    }


def _with_width(name: str, width: int) -> torch.nn.Module:
    block, layers = {"resnet18": (zoo.BasicBlock, [2, 2, 2, 2]),
                     "resnet50": (zoo.Bottleneck, [3, 4, 6, 3])}[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.ResNet(block, layers, width=width)
    return zoo.randomize_norms(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--ln-amounts", type=float, nargs="+", default=[0.5, 0.75],
                        help="ln_structured amounts for the ResNet-50-style case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)

    resnet18 = _with_width("resnet18", args.width)
    pruned18 = prune_channels(resnet18, 0.5, x[:2])

    resnet50 = _with_width("resnet50", args.width // 2).eval()
    results = [_case("resnet18 prune_channels(0.5)", resnet18, pruned18, x, args.repeats)]
    for amount in args.ln_amounts:
        ln_pruned = copy.deepcopy(resnet50)
        for module_name, module in ln_pruned.named_modules():
            if module_name.endswith("conv2") and isinstance(module, torch.nn.Sequential):
                torch_prune.ln_structured(module[0], "weight", amount=amount, n=1, dim=0)
        results.append(_case(f"resnet50 ln_structured({amount}) on bottleneck 3x3 convs",
                             resnet50, ln_pruned.eval(), x, args.repeats))
    report = {"benchmark": "pruning", "device": "cpu", "machine": machine(),
              "options": vars(args), "results": results}
    print(f"pruning benchmark, {report['machine']['date']}, {report['machine']['cpu']}, "
          f"{report['machine']['threads']} threads, batch {args.batch}, median of "
          f"{args.repeats} interleaved runs")
    print("| case | params -% | FLOPs -% | eager unpruned ms | eager pruned ms | fxforge ms | "
          "x vs unpruned | x vs pruned |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["times"]
        print(f"| {r['case']} | {r['params_reduction']:.1%} | {r['flops_reduction']:.1%} | "
              f"{t['eager unpruned']['median_s'] * 1e3:.1f} | "
              f"{t['eager pruned']['median_s'] * 1e3:.1f} | "
              f"{t['fxforge cpu pruned']['median_s'] * 1e3:.1f} | "
              f"{r['speedup_vs_eager_unpruned']:.2f} | {r['speedup_vs_eager_pruned']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pruning-cpu-{report['machine']['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
