"""One self-contained HTML page with every stage of a compile: "see it", like Go's ssa.html.

For each stage (the captured graph, then the graph after each pass): the graph drawn as inline
SVG (`fxforge.debug.svg`), its IR text and the diff from the stage before; above them the pass
table (time, nodes before -> after, stats), the module index (hover or click a module path to
light its nodes in every stage, its IR lines and its kernels), the int8 SQNR table and the
Triton kernel assignments when the compile has them.

The page is a file people open from a bug report, so it is built to be safe and to stand alone:
- no network: every style and the script are inline, nothing is fetched, and a
  Content-Security-Policy (`default-src 'none'`, script and style allowed by hash) makes the
  browser refuse anything else, should a name ever slip through;
- every string that comes from the model (value names, module paths, source ops, attribute
  strings, stats, kernel notes) is HTML-escaped, with control and bidi characters made visible
  (`ir.printable`); strings reach the script only through escaped `data-` attributes and
  `textContent`, never inside the <script> block, which is a constant;
- graphs above `MAX_DRAWN` nodes are listed as text only (the page says so), so a model of
  thousands of nodes still gives a page in seconds.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import html
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxforge.debug.svg import Engine, graph_svg
from fxforge.dumps import load_dump
from fxforge.ir import Graph, printable
from fxforge.pipeline import DebugOptions, PassManager, PassRecord
from fxforge.printer import format_node, format_type

MAX_DRAWN = 1500  # nodes; a larger stage is shown as IR text only
MAX_DIFF_LINES = 20000  # per side; difflib is quadratic in the worst case
SQNR_GOOD_DB, SQNR_FAIR_DB = 35.0, 25.0
_DUMP_NAME = re.compile(r"(\d+)-(.+)\.ir")


@dataclass(frozen=True)
class Stage:
    """A graph in the pipeline: index 0 is the input (record None), then one per pass."""

    index: int
    name: str
    graph: Graph
    record: PassRecord | None


# --- where stages come from ----------------------------------------------------------------------


def stages_of(compiled: Any) -> list[Stage]:
    """Every stage of the latest capture of a CompiledModel, by running its pipeline again (same
    pass names and options, no instruments) on the captured graph: the compile itself keeps only
    the final graph, and passes are pure, so the re-run gives the same stages."""
    entry = getattr(compiled, "_latest", None)
    if entry is None:
        raise RuntimeError("the model is not captured yet: call it once, or compile with "
                           "example_inputs=..., before asking for its stages")
    manager = compiled._manager
    rerun = PassManager(manager.names, DebugOptions(), options=manager.options)
    stages: list[Stage] = []

    def on_stage(index: int, name: str, graph: Graph, record: PassRecord | None) -> None:
        stages.append(Stage(index, name, graph, record))

    rerun.run(entry.captured.graph, on_stage=on_stage)
    return stages


def stages_from_dump(path: str | os.PathLike[str]) -> list[Stage]:
    """The stages of a dump dir (`00-input.ir`, `01-<pass>.ir`, ...), in index order. Dumps
    hold no timings or stats, so records are None; the page derives node counts itself."""
    folder = Path(path)
    found = []
    for file in folder.iterdir():
        match = _DUMP_NAME.fullmatch(file.name)
        if match and file.is_file():
            found.append((int(match.group(1)), match.group(2), file))
    if not found:
        raise FileNotFoundError(f"no NN-<pass>.ir dumps in {folder}")
    return [Stage(index, name, load_dump(file), None) for index, name, file in sorted(found)]


# --- small pieces --------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    """Escaped for HTML text and attribute values, control and bidi characters made visible."""
    return html.escape(printable(str(text)), quote=True)


def _modules(stages: Sequence[Stage], quantization: Any, kernel_modules: Iterable[str]
             ) -> dict[str, int]:
    """Every module path named anywhere on the page -> its index, the only thing about a module
    that the highlighting script sees."""
    paths = {n.provenance.module for s in stages for n in s.graph.nodes}
    if quantization is not None:
        paths.update(layer.module for layer in quantization.layers)
    paths.update(kernel_modules)
    paths.discard("")
    return {p: i for i, p in enumerate(sorted(paths))}


def _kernel_module(kernel: Any, graph: Graph | None) -> str:
    """A kernel assignment's module: that of the node whose value it names (`%v = op  # mod`),
    else the module written after its `#`."""
    match = re.match(r"%([^\s=,]+)", kernel.node)
    if graph is not None and match and match.group(1) in graph.producers:
        return graph.producers[match.group(1)].provenance.module
    return kernel.node.split("  # ", 1)[1] if "  # " in kernel.node else ""


def _sqnr_class(db: float) -> str:
    if math.isnan(db):
        return "q-na"
    return "q-good" if db >= SQNR_GOOD_DB else "q-fair" if db >= SQNR_FAIR_DB else "q-bad"


def _changed(stage: Stage, previous: Stage | None) -> bool:
    """Whether the pass changed the graph: its record says; a dumped stage is compared."""
    if previous is None:
        return True
    return stage.record.changed if stage.record is not None else stage.graph != previous.graph


def _data_m(module: str, ids: Mapping[str, int]) -> str:
    return f' data-m="{ids[module]}"' if module in ids else ""


# --- sections ------------------------------------------------------------------------------------


def _stat_html(value: Any) -> str:
    """A stat: a count as is, a list as a list (of notes, or of dicts as `key: value` pairs)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{_esc(k)}: {_stat_html(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "<ul>" + "".join(f"<li>{_stat_html(v)}</li>" for v in value) + "</ul>"
    return _esc(value)


def _stats_cell(stats: Mapping[str, Any]) -> str:
    counts = [f"{_esc(k)}={_esc(v)}" for k, v in stats.items()
              if not isinstance(v, (list, tuple, Mapping))]
    lists = [f'<details{" open" if len(v) <= 3 else ""}><summary>{_esc(k)} ({len(v)})</summary>'
             f"{_stat_html(v)}</details>"
             for k, v in stats.items() if isinstance(v, (list, tuple, Mapping)) and v]
    return " ".join(counts) + "".join(lists)


def _pass_table(stages: Sequence[Stage]) -> str:
    rows = []
    for prev, stage in zip(stages, stages[1:]):
        r = stage.record
        before, after = len(prev.graph.nodes), len(stage.graph.nodes)
        changed = _changed(stage, prev)
        ms = f"{r.seconds * 1e3:.2f}" if r is not None else "&mdash;"
        stats = _stats_cell(r.stats) if r is not None else ""
        rows.append(f'<tr class="{"chg" if changed else "same"}"><td>{stage.index}</td>'
                    f'<td><a href="#s{stage.index}">{_esc(stage.name)}</a></td>'
                    f'<td class="num">{ms}</td><td class="num">{before}&rarr;{after}</td>'
                    f'<td>{"yes" if changed else "no"}</td><td class="stats">{stats}</td></tr>')
    if not rows:
        return ""
    return ('<section id="passes"><h2>Passes</h2><table class="passes"><thead><tr><th>#</th>'
            "<th>pass</th><th>ms</th><th>nodes</th><th>changed</th><th>stats</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _module_index(ids: Mapping[str, int], stages: Sequence[Stage],
                  kernel_modules: Sequence[str]) -> str:
    """The module tree: each path and its parents (`encoder`, `encoder.layer.0`, ...), each
    entry covering the indices of the modules under it; node counts in the first and last
    stage, and kernels."""
    first = Counter(n.provenance.module for n in stages[0].graph.nodes) if stages else Counter()
    last = Counter(n.provenance.module for n in stages[-1].graph.nodes) if stages else Counter()
    kernels = Counter(kernel_modules)
    entries: dict[tuple[str, ...], list[int]] = {}
    for path, i in ids.items():
        parts = tuple(path.split("."))
        for depth in range(1, len(parts) + 1):
            entries.setdefault(parts[:depth], []).append(i)
    by_id = {i: p for p, i in ids.items()}
    items = []
    for parts in sorted(entries):
        path = ".".join(parts)
        cover = entries[parts]
        paths = [by_id[i] for i in cover]
        counts = [sum(table[p] for p in paths) for table in (first, last, kernels)]
        note = f"{counts[0]}&rarr;{counts[1]}" + (f", {counts[2]}k" if counts[2] else "")
        exact = f' id="mod-{ids[path]}"' if path in ids else ""
        items.append(f'<li{exact} class="mod" data-cover="{" ".join(map(str, cover))}" '
                     f'data-path="{_esc(path)}" title="{_esc(path)}">'
                     f'<span class="ind">{"&middot;&nbsp;" * (len(parts) - 1)}</span>'
                     f'{_esc(parts[-1])} <span class="cnt">{note}</span></li>')
    if not items:
        return '<p class="none">no module paths in the graph</p>'
    return (f'<input id="mod-filter" type="search" placeholder="filter modules" '
            f'aria-label="filter modules"><ul class="modules">{"".join(items)}</ul>')


def _sqnr_table(quantization: Any, ids: Mapping[str, int]) -> str:
    q = quantization
    rows = "".join(
        f'<tr><td class="mname"{_data_m(lay.module, ids)}>{_esc(lay.module) or "&lt;top&gt;"}'
        f"</td><td>{_esc(lay.op)}</td><td>{_esc(lay.mode)}</td><td>{_esc(lay.out)}</td>"
        f'<td class="num {_sqnr_class(lay.sqnr_local_db)}">{lay.sqnr_local_db:.1f}</td>'
        f'<td class="num {_sqnr_class(lay.sqnr_through_db)}">{lay.sqnr_through_db:.1f}</td></tr>'
        for lay in q.layers)
    outputs = "".join(
        f'<li>output {i}: SQNR <span class="{_sqnr_class(o["sqnr_db"])}">{o["sqnr_db"]:.1f} dB'
        f'</span>, cosine {o["cosine"]:.5f}, max abs error {o["max_abs_error"]:.3g}</li>'
        for i, o in enumerate(q.outputs))
    notes = "".join(f"<li>{_esc(n)}</li>" for n in q.notes)
    kept = "".join(f"<li>kept float by min_sqnr: {_esc(k)}</li>" for k in q.kept_by_min_sqnr)
    return (f'<section id="sqnr"><h2>int8 SQNR per layer</h2><p>{q.samples} calibration '
            f"sample(s), {_esc(q.method)} calibration; dB against the float model, higher is "
            f'better: <span class="q-good">&ge; {SQNR_GOOD_DB:g}</span> '
            f'<span class="q-fair">{SQNR_FAIR_DB:g}&ndash;{SQNR_GOOD_DB:g}</span> '
            f'<span class="q-bad">&lt; {SQNR_FAIR_DB:g}</span>. Local: the layer alone on the '
            "float model's input; through: in the quantized model.</p>"
            '<table class="sqnr"><thead><tr><th>layer</th><th>op</th><th>mode</th><th>out</th>'
            f"<th>local dB</th><th>through dB</th></tr></thead><tbody>{rows}</tbody></table>"
            f'<ul class="notes">{outputs}{kept}{notes}</ul></section>')


def _kernel_table(kernels: Sequence[Any], modules: Sequence[str], ids: Mapping[str, int]) -> str:
    rows = "".join(
        f'<tr{_data_m(m, ids)}><td class="mono">{_esc(k.node)}</td><td>{_esc(k.op)}</td>'
        f'<td class="{"kern" if k.kernel else "torch"}">{_esc(k.kernel or "torch backend")}</td>'
        f"<td>{_esc(k.reason)}</td></tr>"
        for k, m in zip(kernels, modules))
    claimed = sum(1 for k in kernels if k.kernel)
    return (f'<section id="kernels"><h2>Kernels</h2><p>{claimed} node(s) on generated Triton '
            f"kernels, {len(kernels) - claimed} on the torch backend.</p>"
            '<table class="kernels"><thead><tr><th>node</th><th>op</th><th>runs on</th>'
            f"<th>why torch</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _ir_lines(graph: Graph) -> list[str]:
    """The text of `print_graph`, kept one line per node (a name built in Python may hold a line
    break; the parser's never do) and made printable, so that lines, nodes and diffs match."""
    params = ", ".join(f"%{v.name}: {format_type(v.type)}" for v in graph.inputs)
    lines = [f"graph({params}) {{", *(format_node(n) for n in graph.nodes),
             "  return " + ", ".join(f"%{v.name}" for v in graph.outputs), "}"]
    return [printable(line) for line in lines]


def _ir_html(graph: Graph, lines: list[str], ids: Mapping[str, int]) -> str:
    """The IR text, one span per line; node lines carry their module for highlighting."""
    modules = ["", *(n.provenance.module for n in graph.nodes), "", ""]
    body = "".join(f'<span class="l"{_data_m(m, ids)}>{_esc(line)}\n</span>'
                   for line, m in zip(lines, modules))
    return f'<pre class="ir">{body}</pre>'


def _diff_html(before: list[str], after: list[str]) -> str:
    if before == after:
        return '<p class="none">no change</p>'
    if max(len(before), len(after)) > MAX_DIFF_LINES:
        return f'<p class="none">IR above {MAX_DIFF_LINES} lines: no diff shown</p>'
    out = []
    for line in list(difflib.unified_diff(before, after, "before", "after", lineterm=""))[2:]:
        cls = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "ctx")
        out.append(f'<span class="{cls}">{_esc(line)}\n</span>')
    return f'<pre class="diff">{"".join(out)}</pre>'


def _graph_html(stage: Stage, previous: Stage | None, ids: Mapping[str, int],
                engine: Engine) -> str:
    nodes = len(stage.graph.nodes)
    if nodes > MAX_DRAWN:
        return (f'<p class="toolarge">{nodes} nodes: above the {MAX_DRAWN} this page draws; '
                "the graph is listed as IR text only.</p>")
    return graph_svg(stage.graph, f"g{stage.index}", ids,
                     previous.graph if previous is not None else None, engine)


def _stage_html(stage: Stage, previous: Stage | None, lines: list[str],
                prev_lines: list[str] | None, ids: Mapping[str, int], engine: Engine) -> str:
    r = stage.record
    before = len(previous.graph.nodes) if previous is not None else None
    changed = _changed(stage, previous)
    meta = f"{len(stage.graph.nodes)} nodes"
    if before is not None:
        meta = f"{before} &rarr; {meta}, {'changed' if changed else 'no change'}"
    if r is not None:
        meta += f", {r.seconds * 1e3:.2f} ms"
    diff = ""
    if previous is not None and prev_lines is not None:
        diff = (f'<details class="diff"{" open" if changed else ""}><summary>diff from '
                f"{previous.index}. {_esc(previous.name)}</summary>"
                f"{_diff_html(prev_lines, lines)}</details>")
    ir = (f'<details class="ir"{"" if previous is not None else " open"}><summary>IR text '
          f"({len(lines)} lines)</summary>{_ir_html(stage.graph, lines, ids)}</details>")
    cls = "stage chg" if changed else "stage same"
    zoom = ('<button type="button" class="zoom" title="graph at actual size / fitted">1:1'
            "</button>" if len(stage.graph.nodes) <= MAX_DRAWN else "")
    return (f'<section class="{cls}" id="s{stage.index}"><h2>{stage.index}. '
            f'{_esc(stage.name)} <span class="meta">{meta}</span>{zoom}</h2><div class="cols">'
            f'<div class="graphbox">{_graph_html(stage, previous, ids, engine)}</div>'
            f'<div class="textbox">{diff}{ir}</div></div></section>')


def _nav(stages: Sequence[Stage]) -> str:
    items = []
    for prev, stage in zip([None, *stages], stages):
        cls = "chg" if _changed(stage, prev) else "same"
        items.append(f'<li class="{cls}"><a href="#s{stage.index}">{stage.index}. '
                     f"{_esc(stage.name)}</a> "
                     f'<span class="cnt">{len(stage.graph.nodes)}</span></li>')
    return f'<ul class="stages">{"".join(items)}</ul>'


# --- the page ------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;
 background:#fff;display:flex}
a{color:#0550ae;text-decoration:none}a:hover{text-decoration:underline}
#side{position:sticky;top:0;height:100vh;overflow:auto;width:290px;flex:none;
 border-right:1px solid #d0d7de;background:#f6f8fa;padding:10px 12px}
#side h1{font-size:15px;margin:0 0 6px;word-break:break-all}
#side h3{font-size:12px;text-transform:uppercase;color:#57606a;margin:14px 0 4px}
#main{flex:1;min-width:0;padding:12px 18px}
#main>h1{font-size:20px;margin:0 0 4px;word-break:break-all}
.summary{color:#57606a;margin:0 0 10px}
h2{font-size:15px;margin:18px 0 8px}
.meta,.cnt{color:#57606a;font-weight:normal;font-size:12px}
ul.stages,ul.modules{list-style:none;margin:0;padding:0}
ul.stages li{padding:1px 0}
ul.stages li.same a{color:#6e7781}
ul.stages li.chg::before{content:"\\25CF ";color:#1a7f37}
ul.stages li.same::before{content:"\\25CB ";color:#8c959f}
ul.modules li{padding:1px 4px;cursor:pointer;white-space:nowrap;overflow:hidden;
 text-overflow:ellipsis;border-radius:3px;font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:12px}
ul.modules li:hover{background:#ddf4ff}
ul.modules li.pin{background:#ffe58f}
.ind{color:#afb8c1}
#mod-filter{width:100%;margin:0 0 4px;padding:3px 6px;border:1px solid #d0d7de;border-radius:4px}
#hl-status{min-height:1.4em;color:#57606a;font-size:12px;word-break:break-all}
table{border-collapse:collapse;margin:0 0 8px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.same td{color:#6e7781}
td.stats ul{margin:2px 0;padding-left:18px}
td.stats details{margin:2px 0}
td.stats summary{cursor:pointer;color:#0550ae}
.mono,td.mname{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.q-good{background:#d1f7d6}.q-fair{background:#fff3b0}.q-bad{background:#ffd0cc}
.q-na{background:#eaeef2}
span.q-good,span.q-fair,span.q-bad{padding:0 4px;border-radius:3px}
td.kern{color:#1a7f37}td.torch{color:#9a6700}
section.stage{border-top:2px solid #d0d7de;padding-top:4px}
section.stage.same h2{color:#6e7781}
.cols{display:flex;gap:14px;align-items:flex-start}
.graphbox{flex:1 1 58%;min-width:0;max-height:78vh;overflow:auto;border:1px solid #d0d7de;
 border-radius:6px;background:#fbfcfd}
.textbox{flex:1 1 42%;min-width:0}
details>summary{cursor:pointer;font-weight:600;margin:2px 0}
pre{margin:4px 0 8px;padding:6px 8px;background:#f6f8fa;border:1px solid #d0d7de;
 border-radius:6px;overflow:auto;max-height:60vh;font:12px/1.35 ui-monospace,Menlo,Consolas,
 monospace}
pre span{display:block;white-space:pre}
pre .add{background:#dafbe1;color:#116329}pre .del{background:#ffebe9;color:#82071e}
pre .hunk{color:#8250df}pre .ctx{color:#57606a}
.none,.toolarge{color:#57606a;font-style:italic;margin:6px 8px}
svg.graph{display:block;margin:0 auto;max-width:100%;height:auto}
.graphbox.actual svg.graph{max-width:none}
button.zoom{font-size:11px;padding:0 6px;margin-left:6px;border:1px solid #d0d7de;
 border-radius:4px;background:#f6f8fa;cursor:pointer;vertical-align:middle}
svg.graph text{font:11px ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace;fill:#1f2328}
svg.graph text.sub{fill:#57606a}
svg.graph text.cst{fill:#6e7781;font-size:10px}
svg.graph path.ed{fill:none;stroke:#8c959f;stroke-width:1.2}
svg.graph marker path{fill:#8c959f}
svg.graph g.nd rect{stroke-width:1.2}
svg.graph g.op rect{fill:#ddf4ff;stroke:#54aeff}
svg.graph g.const rect{fill:#f6f8fa;stroke:#afb8c1}
svg.graph g.const text{fill:#57606a}
svg.graph g.input rect{fill:#dafbe1;stroke:#4ac26b}
svg.graph g.output rect{fill:#fff1e5;stroke:#fb8f44}
svg.graph g.new rect{stroke:#1a7f37;stroke-width:2.4}
svg.graph g.hl rect{fill:#ffe58f;stroke:#d4a72c;stroke-width:2.4}
[data-m]{cursor:pointer}
pre span.hl,tr.hl td,td.hl,li.hl{background:#ffe58f}
.legend{font-size:12px;color:#57606a}
.legend i{display:inline-block;width:12px;height:10px;border:1px solid;margin:0 3px 0 8px;
 vertical-align:middle}
.legend .lg-op{background:#ddf4ff;border-color:#54aeff}
.legend .lg-const{background:#f6f8fa;border-color:#afb8c1}
.legend .lg-input{background:#dafbe1;border-color:#4ac26b}
.legend .lg-output{background:#fff1e5;border-color:#fb8f44}
"""

# A constant: no string from the model is ever written into it. It reads module indices from
# `data-m` / `data-cover` (digits only) and copies a module's path from its index entry's
# `data-path` with textContent. It marks <body> ready with the number of graphs laid out, which
# the headless-browser test reads.
_JS = """
(function () {
  "use strict";
  var MIN_FIT = 0.6, byId = {}, lit = [], pinned = null;
  var status = document.getElementById("hl-status");
  document.querySelectorAll("[data-m]").forEach(function (el) {
    var k = el.getAttribute("data-m");
    (byId[k] = byId[k] || []).push(el);
  });
  function ids(el) {
    var s = el.getAttribute("data-cover") || el.getAttribute("data-m") || "";
    return s.split(" ").filter(function (k) { return /^[0-9]+$/.test(k); });
  }
  function clear() {
    lit.forEach(function (el) { el.classList.remove("hl"); });
    lit = [];
    status.textContent = "";
  }
  function light(el) {
    clear();
    var keys = ids(el);
    keys.forEach(function (k) {
      (byId[k] || []).forEach(function (e) { e.classList.add("hl"); lit.push(e); });
    });
    var entry = el.hasAttribute("data-cover") ? el :
      document.getElementById("mod-" + (keys[0] || ""));
    var path = entry ? entry.getAttribute("data-path") : "";
    status.textContent = path ? path + ": " + lit.length + " highlighted" : "";
  }
  function target(ev) {
    return ev.target.closest ? ev.target.closest("[data-m],[data-cover]") : null;
  }
  document.addEventListener("mouseover", function (ev) {
    if (pinned) { return; }
    var el = target(ev);
    if (el) { light(el); } else if (lit.length) { clear(); }
  });
  document.addEventListener("click", function (ev) {
    var zoom = ev.target.closest ? ev.target.closest("button.zoom") : null;
    if (zoom) {
      var box = zoom.closest("section").querySelector(".graphbox");
      if (box) { zoom.textContent = box.classList.toggle("actual") ? "fit" : "1:1"; }
      return;
    }
    var el = target(ev);
    if (!el) { return; }
    if (pinned) { pinned.classList.remove("pin"); }
    pinned = pinned === el ? null : el;
    if (pinned) { pinned.classList.add("pin"); light(el); } else { clear(); }
  });
  var filter = document.getElementById("mod-filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var want = filter.value.toLowerCase();
      document.querySelectorAll("ul.modules li").forEach(function (li) {
        var path = (li.getAttribute("data-path") || "").toLowerCase();
        li.hidden = want !== "" && path.indexOf(want) < 0;
      });
    });
  }
  document.querySelectorAll(".graphbox").forEach(function (box) {
    var svg = box.querySelector("svg.graph");
    if (svg && svg.width.baseVal.value * MIN_FIT > box.clientWidth) {
      box.classList.add("actual");  // fitted, its text would be too small to read
      box.scrollLeft = (box.scrollWidth - box.clientWidth) / 2;
      var button = box.closest("section").querySelector("button.zoom");
      if (button) { button.textContent = "fit"; }
    }
  });
  var graphs = document.querySelectorAll("svg.graph"), drawn = 0;
  graphs.forEach(function (svg) {
    var box = svg.getBBox();
    if (box.width > 0 && box.height > 0 && svg.querySelector("g.nd rect")) { drawn += 1; }
  });
  document.body.setAttribute("data-graphs", String(graphs.length));
  document.body.setAttribute("data-drawn", String(drawn));
  document.body.setAttribute("data-ready", "1");
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
        "base-uri 'none'; form-action 'none'")

_LEGEND = ('<p class="legend">boxes: <i class="lg-op"></i>op, with the constants it reads (&#9702;)'
           '<i class="lg-const"></i>constant no op reads <i class="lg-input"></i>input '
           '<i class="lg-output"></i>return; a thick green border marks a node new in that '
           "stage. Hover or click a module (left) to light its nodes everywhere.</p>")


def render_html(stages: Sequence[Stage], *, title: str, quantization: Any = None,
                kernels: Sequence[Any] | None = None) -> str:
    """The page for `stages` (see the module docstring). `quantization`: a QuantAnalysis for the
    SQNR table; `kernels`: Triton `Assignment`s (node, op, kernel, reason) of the last stage."""
    kernels = list(kernels or [])
    last = stages[-1].graph if stages else None
    kernel_modules = [_kernel_module(k, last) for k in kernels]
    ids = _modules(stages, quantization, kernel_modules)
    texts = [_ir_lines(s.graph) for s in stages]
    engine = Engine()
    sections = [_stage_html(s, stages[i - 1] if i else None, texts[i],
                            texts[i - 1] if i else None, ids, engine)
                for i, s in enumerate(stages)]
    first, final = (len(stages[0].graph.nodes), len(stages[-1].graph.nodes)) if stages else (0, 0)
    summary = (f"{len(stages)} stage(s); {first} &rarr; {final} nodes; graphs laid out by "
               f"graphviz dot: {engine.used['dot']}, by fxforge's own layered layout: "
               f"{engine.used['own']}; {sum(1 for s in stages if len(s.graph.nodes) > MAX_DRAWN)} "
               f"stage(s) above {MAX_DRAWN} nodes listed as text only")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f'<nav id="side"><h1>{_esc(title)}</h1><div id="hl-status" aria-live="polite"></div>',
        f"<h3>Stages</h3>{_nav(stages)}",
        f"<h3>Modules</h3>{_module_index(ids, stages, kernel_modules)}</nav>",
        f'<main id="main"><h1>{_esc(title)}</h1><p class="summary">{summary}</p>',
        _pass_table(stages),
        _sqnr_table(quantization, ids) if quantization is not None else "",
        _kernel_table(kernels, kernel_modules, ids) if kernels else "",
        '<h2 id="stages">Stages</h2>', _LEGEND, *sections,
        f"</main><script>{_JS}</script></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_html(source: Any, path: str | os.PathLike[str]) -> Path:
    """Writes the page for `source`, a CompiledModel (compiled at least once: its latest
    capture, with its SQNR table and kernels) or a dump dir, to `path`; returns the path."""
    if isinstance(source, (str, os.PathLike)):
        stages = stages_from_dump(source)
        page = render_html(stages, title=f"fxforge dump {Path(source).name}")
    else:
        record = source.report.records[-1] if source.report.records else None
        page = render_html(stages_of(source),
                           title=f"fxforge: {source._name} for {source.target}",
                           quantization=record.quantization if record is not None else None,
                           kernels=record.kernels if record is not None else None)
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out
