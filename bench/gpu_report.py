"""What the rows of a GPU check add up to: the goals (each measured ratio against its target:
PASS, FAIL or not measured) and the markdown report (the goals table first, then one table per
section). Functions of the rows alone, so the tests can feed them the rows of a real run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fxforge.bench import triton_gpu
from fxforge.bench.gpu_sizes import Sizes


@dataclass(frozen=True)
class Goal:
    key: str
    what: str
    target: float


GOALS = (
    Goal("gemm-4096", "int8 GEMM at 4096^3 vs `torch._int_mm`", 1.05),
    Goal("fused-epilogue", "fused-epilogue GEMM (4096^3) vs `_int_mm` + torch epilogue", 1.3),
    Goal("small-m", "int8 GEMM at M <= 16 vs the best of `_int_mm` and fp16 matmul", 1.3),
    Goal("resnet50", "ResNet-50 `cuda-int8` batch 64 vs torch.compile fp16 max-autotune", 1.8),
    Goal("bert-base", "BERT-base `cuda-int8` batch 128 vs torch.compile fp16 max-autotune",
         1.6),
)


def _measured(rows: list[dict], section: str) -> list[dict]:
    return [r for r in rows if r["section"] == section and "status" not in r]


def _goal_ratio(goal: Goal, rows: list[dict], z: Sizes) -> tuple[float | None, str]:
    """(measured ratio, what it was measured on / why not)."""
    peer = triton_gpu.peer_ms
    if goal.key == "gemm-4096":
        for r in _measured(rows, "gemm"):
            if r["m"] == r["n"] == z.gemm_big:
                base = peer(r["ms"], "torch._int_mm")
                if not r["exact_vs_int_mm"]:
                    return 0.0, "result not exact: fails"
                return (base / r["ms"]["fxforge int8"] if base else None,
                        f"M = N = K = {z.gemm_big}")
    elif goal.key == "fused-epilogue":
        m, nk = z.epilogue[0]
        for r in _measured(rows, "epilogue"):
            if (r["m"], r["n"]) == (m, nk):
                if r["max_lsb_diff"] > 1:
                    return 0.0, "int8 output off by more than 1 LSB: fails"
                return r["speedup"], f"M {m}, N = K = {nk}"
    elif goal.key == "small-m":
        found = [r for r in _measured(rows, "gemm")
                 if r["m"] <= 16 and r["n"] == z.gemm_small_nk]
        if found:
            if not all(r["exact_vs_int_mm"] for r in found):
                return 0.0, "result not exact: fails"
            parts = {}
            for r in found:
                peers = [v for v in (peer(r["ms"], "torch._int_mm"), r["ms"].get("fp16 matmul"))
                         if v]
                parts[r["m"]] = min(peers) / r["ms"]["fxforge int8"] if peers else None
            if all(v is not None for v in parts.values()):
                worst = min(parts.values())
                return worst, "worst of " + ", ".join(
                    f"M {m}: {v:.2f}x" for m, v in sorted(parts.items())) + \
                    f" (N = K = {z.gemm_small_nk})"
    else:
        for r in _measured(rows, "e2e"):
            if r["model"] == goal.key:
                ours = r["ms"].get("fxforge cuda-int8")
                base = r["ms"].get("torch.compile fp16 max-autotune")
                if ours and base:
                    return base / ours, f"batch {r['batch']}"
                why = {**r.get("failed", {}), **r.get("skipped", {})}
                missing = [s for s in ("cuda-int8", "torch.compile max-autotune")
                           if s in why]
                return None, "; ".join(f"{s}: {why[s]}" for s in missing)[:200] or \
                    "torch.compile is not run in smoke runs"
    return None, "not run"


def goals(rows: list[dict], z: Sizes) -> list[dict[str, Any]]:
    out = []
    for goal in GOALS:
        try:
            ratio, detail = _goal_ratio(goal, rows, z)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # an odd row
            ratio, detail = None, f"could not compute: {type(e).__name__}: {e}"[:200]
        status = "not measured" if ratio is None else \
            "PASS" if ratio >= goal.target else "FAIL"
        out.append({"goal": goal.key, "what": goal.what, "target": goal.target,
                    "measured": None if ratio is None else round(ratio, 3), "status": status,
                    "detail": detail})
    return out


# --- markdown --------------------------------------------------------------------------------


def _fmt(d: dict | None, digits: int = 3) -> str:
    return "; ".join(f"{k} {v:.{digits}g}" for k, v in (d or {}).items()
                     if isinstance(v, (int, float))) or "–"


def _cell(value: Any) -> str:
    text = "–" if value is None else str(value)
    return text.replace("|", "/").replace("\n", " ")


def markdown(doc: dict) -> str:
    v, m = doc["versions"], doc["machine"]
    lines = [f"# fxforge GPU check: {doc['device']}", "",
             f"{m['date']}; torch {v['torch']}; Triton {v['triton']}; CUDA {v['cuda']}; "
             f"commit {m['commit'] or '?'}; autotune {doc['autotune']}; medians of "
             f"{doc['repeats']} interleaved rounds; budget {doc['budget_s']:g} s, elapsed "
             f"{doc['elapsed_s']:g} s" + (f"; {v['gpu']}" if "gpu" in v else ""), ""]
    if doc["smoke"]:
        lines += ["**SMOKE RUN**: Triton's CPU interpreter at tiny sizes; times mean nothing, "
                  "goals are computed from stand-in rows.", ""]
    if not doc["finished"]:
        lines += ["**Run in progress or killed**: this file is rewritten after every row.", ""]
    if doc["stopped"]:
        lines += [f"**Stopped early ({doc['stopped']})**: later work was skipped.", ""]
    lines += ["## Goals", "", "| goal | target | measured | status | measured on |",
              "|--|--:|--:|--|--|"]
    lines += [f"| {g['what']} | {g['target']:g}x | "
              f"{'–' if g['measured'] is None else format(g['measured'], '.2f') + 'x'} | "
              f"**{g['status']}** | {_cell(g['detail'])} |" for g in doc["goals"]]
    lines += ["", "## Sections", "", "| section | status | seconds |", "|--|--|--:|"]
    lines += [f"| {name} | {s['status']} | "
              f"{format(s['seconds'], '.1f') if 'seconds' in s else '–'} |"
              for name, s in doc["sections"].items()]
    lines.append("")
    rows = doc["rows"]
    verify = _measured(rows, "verify")
    if verify:
        lines += ["## Verify: kernels on the device vs the numpy reference", "",
                  f"{doc['verify']['passed']} passed, {doc['verify']['failed']} failed.", "",
                  "| kernel | case | result | max error | tolerance | s |",
                  "|--|--|--|--:|--|--:|"]
        for r in verify:
            err = "–" if r["max_err"] is None else f"{r['max_err']:.3g}"
            result = "pass" if r["ok"] else f"**FAIL** {_cell(r.get('error', ''))}"[:300]
            lines.append(f"| {r['kernel']} | {r['case']} | {result} | {err} | {r['tol']} | "
                         f"{r['s']:.2f} |")
        lines.append("")
    lines += triton_gpu.section_tables([r for r in rows if r["section"] in (
        "gemm", "epilogue")])
    att = _measured(rows, "attention")
    if att:
        lines += ["## Fused attention vs `F.scaled_dot_product_attention`", "",
                  "| B x H x L x D | causal | dtype | max diff vs SDPA | ms | TFLOPS | speedup |",
                  "|--|--|--|--:|--|--|--:|"]
        lines += [f"| {r['shape']} | {r['causal']} | {r['dtype']} | "
                  f"{r['max_abs_diff_vs_sdpa']:.2g} | {_fmt(r['ms'])} | {_fmt(r['tflops'])} | "
                  f"{r['speedup']:.2f}x |" for r in att]
        lines.append("")
    graphs = _measured(rows, "graphs")
    if graphs:
        lines += ["## CUDA graphs vs plain launches (batch 1)", "",
                  "| model | target | graph status | kernels | ms | speedup | max diff |",
                  "|--|--|--|--:|--|--:|--:|"]
        lines += [f"| {r['model']} | {r['target']} | {_cell(r['graph'])} | {r['kernels']} | "
                  f"{_fmt(r['ms'])} | {r['speedup']:.2f}x | {r['max_abs_diff']:.2g} |"
                  for r in graphs]
        lines.append("")
    lines += triton_gpu.section_tables([r for r in rows if r["section"] in ("e2e", "conv")])
    tune = _measured(rows, "autotune")
    if tune:
        lines += ["## Autotune (cold cache)", "",
                  "| kernel | problem | timed / offered | picked | best ms | default ms | "
                  "gain | tune s |", "|--|--|--|--|--:|--:|--:|--:|"]
        for r in tune:
            if r["kernel"] == "shared tuner":
                continue
            gain = "–" if r["gain_vs_default"] is None else f"{r['gain_vs_default']:.2f}x"
            best = "–" if r["best_ms"] is None else f"{r['best_ms']:.3g}"
            lines.append(f"| {r['kernel']} | {r['problem']} | {r['timed']} / {r['offered']} | "
                         f"{_cell(json.dumps(r['picked'], sort_keys=True))} | {best} | "
                         f"{r['default_ms']:.3g} | {gain} | {r['tune_s']:.1f} |")
        shared = [r for r in tune if r["kernel"] == "shared tuner"]
        if shared:
            s = shared[-1]
            lines += ["", f"Shared tuner before this section: {s['timed']} configs timed, "
                          f"{s['hits']} picks from cache (enabled: {s['enabled']})."]
        lines.append("")
    other = [r for r in rows if "status" in r]
    if other:
        lines += ["## Skipped, stopped and failed steps", ""]
        for r in other:
            what = f"{r['section']}" + (f" / {r['case']}" if r.get("case") else "")
            extra = f": {_cell(r['error'])}" if r.get("error") else ""
            lines.append(f"- {what}: {r['status']}{extra}")
        lines.append("")
    return "\n".join(lines)
