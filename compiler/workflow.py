"""The optimization workflow end to end, on the digits CNN (`fxforge demo --workflow`).

    trained -> prune 50% of the channels -> distill from the original -> int8 -> save
            -> load in a fresh process

Each step prints held-out accuracy, size and speed, so the trade each step makes is visible:
pruning shrinks the model and costs accuracy, distillation wins the accuracy back without
growing it, int8 shrinks the weights again, and the archive loads in a new process (no model
class, no capture) with bit-identical outputs. Speeds are ratios against the eager trained
model, all timed in one interleaved run at the end (medians), so machine load hits every step
alike; absolute times are not comparable across machines.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxforge import zoo
from fxforge.api import CompiledModel
from fxforge.api import compile as fx_compile
from fxforge.archive import load
from fxforge.distill import distill
from fxforge.ir import Graph
from fxforge.pruning import prune_channels

BATCH = 64


@dataclass
class Step:
    name: str
    accuracy: float
    params: int
    weight_bytes: int
    run: Any  # the callable timed for the speed column
    speed: float = float("nan")  # eager trained model's time / this step's time
    note: str = ""


def _graph_bytes(graph: Graph) -> tuple[int, int]:
    """(parameter count, bytes) of a compiled graph's constants."""
    arrays = [n.attrs["value"].array for n in graph.nodes if n.op == "const"]
    arrays = [a for a in arrays if a is not None and a.size > 1]
    return sum(a.size for a in arrays), sum(a.nbytes for a in arrays)


def _module_bytes(model: torch.nn.Module) -> tuple[int, int]:
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def _test_batches() -> tuple[list[torch.Tensor], int]:
    """The held-out images in batches of BATCH (the last padded with zeros, as
    `zoo.digits_accuracy` does), and how many are real."""
    x = zoo.digits_data().x_test
    pad = -len(x) % BATCH
    x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    return list(x.split(BATCH)), len(zoo.digits_data().x_test)


def _logits(model: Any) -> np.ndarray:
    batches, n = _test_batches()
    with torch.no_grad():
        return torch.cat([model(x) for x in batches])[:n].numpy()


def _accuracy(logits: np.ndarray) -> float:
    return float((logits.argmax(1) == zoo.digits_data().y_test.numpy()).mean())


def _compiled_step(name: str, compiled: CompiledModel, note: str = "") -> Step:
    logits = _logits(compiled)
    params, nbytes = _graph_bytes(compiled.graph)
    x = _test_batches()[0][0]
    return Step(name, _accuracy(logits), params, nbytes, lambda: compiled(x), note=note)


def _fresh_process_logits(archive: Path, folder: Path) -> np.ndarray:
    """Load `archive` in a new Python process and run the held-out set through it there."""
    batches, n = _test_batches()
    np.save(folder / "inputs.npy", torch.stack(batches).numpy())
    script = textwrap.dedent(f"""
        import numpy as np, torch, fxforge
        model = fxforge.load({str(archive)!r})
        xs = np.load({str(folder / 'inputs.npy')!r})
        with torch.no_grad():
            out = torch.cat([model(torch.from_numpy(x)) for x in xs])
        np.save({str(folder / 'logits.npy')!r}, out.numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    return np.load(folder / "logits.npy")[:n]


def run(amount: float = 0.5, epochs: int = 15, out: str | Path | None = None,
        repeats: int = 30, progress: bool = True, log: Any = print) -> list[Step]:
    """Run the workflow, printing each step through `log`; returns the steps (speeds filled)."""
    from fxforge.bench.timing import cpu_name, interleaved

    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fxforge-workflow-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = zoo.digits_data()
    teacher, _ = zoo.build("digits", BATCH)
    example = (_test_batches()[0][0],)
    steps = [Step("trained (eager)", _accuracy(_logits(teacher)), *_module_bytes(teacher),
                  lambda: teacher(*example))]
    log(f"1. trained: accuracy {steps[0].accuracy:.2%}")

    pruned = prune_channels(teacher, amount, example_inputs=example)
    steps.append(_compiled_step(f"pruned {amount:.0%} (cpu)",
                                fx_compile(pruned, "cpu", example_inputs=example)))
    log(f"2. pruned {amount:.0%} of the channels: accuracy {steps[-1].accuracy:.2%}, "
        f"{steps[-1].params} params left of {steps[0].params}")

    train = [(data.x_train[i:i + BATCH], data.y_train[i:i + BATCH])
             for i in range(0, len(data.y_train), BATCH)]
    history: list = []
    student = distill(pruned, teacher, train, epochs=epochs, lr=1e-2, progress=progress,
                      history=history)
    steps.append(_compiled_step("distilled (cpu)",
                                fx_compile(student, "cpu", example_inputs=example),
                                note=f"{epochs} epochs from the trained model"))
    log(f"3. distilled for {epochs} epochs: accuracy {steps[-1].accuracy:.2%}")

    calibration = [data.x_train[i:i + BATCH] for i in range(0, 8 * BATCH, BATCH)]
    int8 = fx_compile(student, "cpu-int8", example_inputs=example, calibration=calibration)
    steps.append(_compiled_step("int8 (cpu-int8)", int8, note="calibrated on 8 batches"))
    log(f"4. int8: accuracy {steps[-1].accuracy:.2%}")

    archive = int8.save(folder / "digits-int8.fxf")
    here = _logits(int8)
    there = _fresh_process_logits(archive, folder)
    loaded = load(archive)
    same = np.array_equal(here, there)
    step = _compiled_step("saved, loaded in a new process", loaded,
                          note=f"archive {archive.stat().st_size / 1024:.1f} KiB; outputs "
                               f"{'bit-identical' if same else 'DIFFER'}")
    step.accuracy = _accuracy(there)
    steps.append(step)
    log(f"5. saved to {archive} and loaded in a fresh process: accuracy {step.accuracy:.2%}, "
        f"outputs {'bit-identical to' if same else 'DIFFERENT from'} the compiled model")

    log(f"\ntiming every step at batch {BATCH} ({repeats} interleaved rounds, medians) ...")
    times = interleaved({s.name: s.run for s in steps}, repeats=repeats)
    for s in steps:
        s.speed = times[steps[0].name]["median_s"] / times[s.name]["median_s"]
    log(f"\nheld-out accuracy, size and speed on {cpu_name()}, "
        f"{torch.get_num_threads()} thread(s):\n")
    log(table(steps))
    if not same:
        raise RuntimeError("the loaded model's outputs differ from the compiled model's")
    return steps


def table(steps: list[Step]) -> str:
    head = "| step | accuracy | of trained | params | weights | speed vs eager | note |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    base = steps[0].accuracy
    for s in steps:
        lines.append(f"| {s.name} | {s.accuracy:.2%} | {s.accuracy / base:.1%} | {s.params:,} "
                     f"| {s.weight_bytes / 1024:.1f} KiB | {s.speed:.2f}x | {s.note} |")
    return "\n".join(lines)
