"""The run's files: JSON (validated against bench/schema.json), a markdown table with ratios
against eager float32, and PNG plots (latency per model and system; speedup bars)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fxforge.optional import require

SCHEMA_NAME = "fxforge-bench"
SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
BASELINE = "eager-fp32"


# --- JSON --------------------------------------------------------------------------------------


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> None:
    """Raise ValueError when `doc` does not follow bench/schema.json (jsonschema when installed,
    else a check of the required keys and statuses)."""
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        _validate_light(doc, schema)
        return
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as e:
        path = "/".join(map(str, e.absolute_path))
        raise ValueError(f"bench JSON does not follow {SCHEMA_PATH.name} at /{path}: "
                         f"{e.message}") from None


def _validate_light(doc: dict, schema: dict) -> None:
    missing = [k for k in schema["required"] if k not in doc]
    result_schema = schema["$defs"]["result"]
    for row in doc.get("results", []):
        missing += [f"results[].{k}" for k in result_schema["required"] if k not in row]
        if row.get("status") not in ("ok", "unavailable", "skipped", "failed"):
            missing.append(f"results[].status={row.get('status')!r}")
        if row.get("status") != "ok" and not row.get("reason"):
            missing.append(f"results[{row.get('system')}].reason")
    if missing or doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"bench JSON does not follow {SCHEMA_PATH.name}: {missing}")


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(doc: dict, path: Path) -> None:
    clean = _clean(doc)
    validate(clean)
    path.write_text(json.dumps(clean, indent=1) + "\n")


def stem(doc: dict) -> str:
    date = doc["machine"]["date"].replace("-", "").replace(":", "").replace(" UTC", "")
    kind = "quick" if doc["options"]["quick"] else "bench"
    return f"{kind}-{doc['machine']['device']}-{date.replace(' ', '-')}"


def write(doc: dict, out: Path, plots: bool = True) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and (plots) <stem>-latency.png, <stem>-speedup.png."""
    base = out / stem(doc)
    paths = {"json": base.with_suffix(".json"), "markdown": base.with_suffix(".md")}
    write_json(doc, paths["json"])
    if plots:
        paths["latency_plot"] = Path(f"{base}-latency.png")
        paths["speedup_plot"] = Path(f"{base}-speedup.png")
        plot_latency(doc, paths["latency_plot"])
        plot_speedup(doc, paths["speedup_plot"])
    paths["markdown"].write_text(markdown(doc, {k: p.name for k, p in paths.items()}))
    return paths


# --- markdown ----------------------------------------------------------------------------------


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    if x == 0:
        return f"0{unit}"
    digits = 3 if abs(x) < 1 else 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0
    return f"{x:.{digits}f}{unit}"


def _err(x: float | None) -> str:
    return "–" if x is None else "0" if x == 0 else f"{x:.1e}"


def _cases(doc: dict) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    for r in doc["results"]:
        if (r["model"], r["batch"]) not in seen:
            seen.append((r["model"], r["batch"]))
    return seen


def _ran(doc: dict) -> list[str]:
    """Systems that were available on this machine, in report order."""
    return [s["name"] for s in doc["systems"] if s["available"]]


def _short(status: str) -> str:
    return {"skipped": "skipped", "failed": "failed", "unavailable": "n/a"}.get(status, status)


def speedup_table(doc: dict) -> str:
    """Speedup vs eager float32 per model and batch size (one line per case)."""
    systems = [s for s in _ran(doc) if s != BASELINE]
    rows = {(r["model"], r["batch"], r["system"]): r for r in doc["results"]}
    notes: list[str] = []
    head = (f"| model | batch | {BASELINE} ms | " + " | ".join(systems) + " |\n"
            + "|---|--:|--:|" + "--:|" * len(systems))
    lines = [head]
    for model, batch in _cases(doc):
        base = rows.get((model, batch, BASELINE))
        base_ms = base["latency_ms"]["median"] if base and base["latency_ms"] else None
        cells = []
        for s in systems:
            r = rows.get((model, batch, s))
            if r is None:
                cells.append("")
            elif r["status"] == "ok" and r["speedup_vs_eager"] is not None:
                cells.append(f"{r['speedup_vs_eager']:.2f}x")
            elif r["status"] == "ok":
                cells.append(_num(r["latency_ms"]["median"], " ms"))
            else:
                reason = r["reason"] or ""
                if reason not in notes:
                    notes.append(reason)
                cells.append(f"{_short(r['status'])} [{notes.index(reason) + 1}]")
        lines.append(f"| {model} | {batch} | {_num(base_ms)} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}  " for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def details_table(doc: dict) -> str:
    ran = set(_ran(doc))
    lines = ["| model | batch | system | median ms [p10–p90] | items/s | vs eager | compile s "
             "cold / warm | memory MiB prepare / held / run | size MiB | max abs err | cosine "
             "| accuracy |",
             "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in doc["results"]:
        if r["system"] not in ran:
            continue
        head = f"| {r['model']} | {r['batch']} | {r['system']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason']} |" + " |" * 8)
            continue
        lat = r["latency_ms"]
        c = r["compile_s"]
        compile_cell = "–"
        if c["cold"] is not None and r["system"] != BASELINE:
            warm = _num(c["warm"]) if c["warm"] is not None else "–"
            compile_cell = f"{_num(c['cold'])} / {warm}" if c["first_batch"] else (
                f"({_num(c['cold'])})")
        mem = r["memory_mb"] or {}
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        speed = "–" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        lines.append(
            f"{head} {_num(lat['median'])} [{_num(lat['p10'])}–{_num(lat['p90'])}] | "
            f"{_num(r['throughput_per_s'])} | {speed} | {compile_cell} | "
            f"{_num(mem.get('prepare_peak'))} / {_num(mem.get('held'))} / "
            f"{_num(mem.get('run_peak'))} | "
            f"{_num(r['size_mb'])} | {_err(r['error']['max_abs'])} | "
            f"{r['error']['cosine']:.6f} | {acc} |")
    return "\n".join(lines)


def machine_line(doc: dict) -> str:
    m = doc["machine"]
    libs = m["libraries"]
    gpu = f", GPU {m['gpu']} (CUDA {m['cuda']})" if m["gpu"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
    return (f"{m['date']}; {m['cpu']}, {m['cpu_count']} logical CPUs, {m['threads']} torch "
            f"threads{gpu}; Python {m['python']}, {versions}; commit {m['commit'] or '?'}"
            f"{' (with uncommitted changes)' if m['dirty'] else ''}")


def load_line(doc: dict) -> str:
    load = doc["machine"].get("load") or {}
    parts = []
    if load.get("other_processes_pct") is not None:
        parts.append(f"other processes used {load['other_processes_pct']:.0f}% of the CPU time")
    if load.get("steal_pct") is not None:
        parts.append(f"the hypervisor took {load['steal_pct']:.0f}% (steal)")
    if load.get("loadavg_start") is not None:
        parts.append(f"load average {load['loadavg_start']:.1f} at the start, "
                     f"{load['loadavg_end']:.1f} at the end")
    text = ("During the run: " + "; ".join(parts) + ".") if parts else ""
    busy = (load.get("other_processes_pct") or 0) + (load.get("steal_pct") or 0)
    if busy > 10:
        text += (f" **Warning: the machine was shared ({busy:.0f}% of its CPU time went "
                 "elsewhere); on few cores this distorts latencies (torch's OpenMP threads wait "
                 "for a descheduled peer on every op), so re-run on a quiet machine.**")
    return text


def markdown(doc: dict, files: dict[str, str] | None = None) -> str:
    o = doc["options"]
    device = doc["machine"]["device"]
    timer = "CUDA events" if device == "cuda" else "time.perf_counter"
    parts = [
        f"# fxforge bench ({'quick, ' if o['quick'] else ''}{device})",
        "",
        f"Machine: {machine_line(doc)}. {load_line(doc)}",
        "",
        f"Latency: median over interleaved rounds ({timer}; every round runs each system once, "
        f"in a rotated order; a sample is the mean of back-to-back calls filling "
        f"~{o['block_seconds'] * 1e3:g} ms, so sub-millisecond systems do not pay for the "
        f"previous runtime's threads on every call). Each case is timed in short slices spread "
        f"over the rest of the run: a slice of every case prepared so far after each "
        f"preparation, then {o['passes']} passes over all cases, so that each case samples the "
        f"machine's changing state; {o['warmup']} warm-up round(s) before a case's first "
        f"slice; {o['min_repeats']}–{o['max_repeats']} rounds per case, as many as fit "
        f"{o['case_seconds']:g} s x sqrt(round / 0.25 s) (0.6x–2x); p10–p90 over the rounds. "
        f"While "
        f"timing: {doc['machine'].get('allocator', 'default allocator')}. Speedup = median over "
        f"the rounds of {BASELINE}'s time / the system's time in the same round (paired, so "
        f"that a change of machine load between rounds cancels; >1: faster than eager). Run "
        f"took {doc['duration_s']:.0f} s.",
        "",
        "## Speedup vs eager float32",
        "",
        speedup_table(doc),
        "",
    ]
    if files and "latency_plot" in files:
        parts += [f"![latency]({files['latency_plot']})", "",
                  f"![speedup]({files['speedup_plot']})", ""]
    parts += ["## Details", "",
              "Compile: cold = first compile of the model in this process (the first model "
              "also pays each system's one-time initialisation), warm = the same compile again "
              "right after; (x) = compile for a later batch size of the model. Memory, as the "
              "increase of the process's "
              + ("CUDA allocated memory (torch.cuda.max_memory_allocated)" if device == "cuda"
                 else "resident set (RSS; high-water mark via /proc/self/clear_refs)")
              + ": prepare = peak while compiling and running once; held = what stays after "
              "(the system's copy of the weights, compiled code; eager uses the model's own "
              "weights: 0); run = peak of one more inference above what is already resident "
              "(0: served from memory the process holds). Size: what the system would ship "
              "(torch.save of the state_dict, the ONNX file, fxforge's IR text + constants as "
              ".npz). Error: first output against eager float32 (max |error|, cosine "
              "similarity). Accuracy: digits held-out set (360 images).", "",
              details_table(doc), ""]
    missing = [s for s in doc["systems"] if not s["available"]]
    if missing:
        parts += ["## Not run on this machine", "", "| system | reason |", "|---|---|"]
        parts += [f"| {s['name']} | {s['reason']} |" for s in missing]
        parts.append("")
    parts += ["## Models", "", "| model | source | description | params | inputs | batches |",
              "|---|---|---|--:|---|---|"]
    for m in doc["models"]:
        params = "–" if m["params"] is None else f"{m['params'] / 1e6:.2f} M"
        parts.append(f"| {m['name']} | {m['source']} | {m['description']} | {params} | "
                     f"{', '.join(m['inputs'] or [])} | {', '.join(map(str, m['batches']))} |")
    parts += ["", "## Systems", "", "| system | description |", "|---|---|"]
    parts += [f"| {s['name']} | {s['description']} |" for s in doc["systems"] if s["available"]]
    return "\n".join(parts) + "\n"


def summary(doc: dict) -> str:
    return (f"fxforge bench, {machine_line(doc)}\n{load_line(doc)}\n\nspeedup vs {BASELINE} "
            f"(median of per-round latency "
            f"ratios):\n\n{speedup_table(doc)}\n\nrun took {doc['duration_s']:.0f} s")


# --- plots -------------------------------------------------------------------------------------


def _pyplot():
    matplotlib = require("matplotlib", "the bench plots (or run with --no-plots)")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "the bench plots (or run with --no-plots)")


def _colors(systems: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(systems)}


def _ok(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if r["status"] == "ok" and r["latency_ms"]]


def plot_latency(doc: dict, path: Path) -> None:
    """One panel per model: median latency per batch size and system (log scale), p10–p90."""
    plt = _pyplot()
    rows = _ok(doc)
    models = list(dict.fromkeys(m for m, _ in _cases(doc)))
    systems = [s for s in _ran(doc) if any(r["system"] == s for r in rows)]
    colors = _colors(systems)
    cols = min(4, max(1, len(models)))
    nrows = math.ceil(max(1, len(models)) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows + 0.8),
                             squeeze=False)
    width = 0.8 / max(1, len(systems))
    for ax, model in zip(axes.flat, models):
        batches = sorted({r["batch"] for r in doc["results"] if r["model"] == model})
        for j, s in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for i, b in enumerate(batches):
                r = next((r for r in rows if (r["model"], r["batch"], r["system"])
                          == (model, b, s)), None)
                if r is None:
                    continue
                lat = r["latency_ms"]
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                ys.append(lat["median"])
                lo.append(max(0.0, lat["median"] - lat["p10"]))
                hi.append(max(0.0, lat["p90"] - lat["median"]))
            if xs:
                ax.bar(xs, ys, width, color=colors[s], yerr=[lo, hi], capsize=1.5,
                       error_kw={"elinewidth": 0.6}, label=s)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("ms (median, p10–p90)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", which="both", alpha=0.25)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[s]) for s in systems]
    fig.legend(handles, systems, loc="lower center", ncol=min(len(systems), 6), fontsize=8,
               frameon=False)
    fig.suptitle(f"fxforge bench latency, {doc['machine']['device']}, "
                 f"{doc['machine']['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_speedup(doc: dict, path: Path) -> None:
    """Speedup vs eager float32 per model@batch and system (log scale; 1 = eager)."""
    plt = _pyplot()
    rows = [r for r in _ok(doc) if r["system"] != BASELINE and r["speedup_vs_eager"]]
    cases = [c for c in _cases(doc) if any((r["model"], r["batch"]) == c for r in rows)]
    systems = [s for s in _ran(doc) if s != BASELINE and any(r["system"] == s for r in rows)]
    colors = _colors([BASELINE] + systems)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cases) + 2), 4.6))
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        xs, ys = [], []
        for i, c in enumerate(cases):
            r = next((r for r in rows if (r["model"], r["batch"], r["system"]) == (*c, s)), None)
            if r is not None:
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                ys.append(r["speedup_vs_eager"])
        ax.bar(xs, ys, width, color=colors[s], label=s)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xticks(range(len(cases)), [f"{m}\nbatch {b}" for m, b in cases], fontsize=8)
    ax.set_ylabel(f"speedup vs {BASELINE} (median of per-round ratios)", fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, ncol=min(6, max(1, len(systems))), frameon=False,
              loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_title(f"fxforge bench speedup vs eager float32, {doc['machine']['device']}, "
                 f"{doc['machine']['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
