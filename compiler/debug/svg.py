"""One stage's graph as inline SVG, for the HTML viewer (`fxforge.debug.html`).

Layout comes from graphviz when its `dot` binary is installed and from a small layered layout of
our own otherwise, so the viewer works on any machine. dot is only asked for coordinates
(`-Tplain` of a graph whose nodes are numbered, fixed-size and unlabeled): no name from the model
ever reaches dot, and both layouts are drawn by the same code here, which escapes every string.

The own layout is the classic layered (Sugiyama) scheme, kept simple: longest-path layers with
constants pulled down next to their first user, dummy points on long edges, barycenter sweeps to
reduce crossings, and a few relaxation rounds to pull nodes over their neighbours. It is linear
enough in the graph size for the few thousand nodes the viewer draws at most.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from fxforge.ir import Graph, Node, printable
from fxforge.printer import format_node, format_type

CHAR_W = 6.6  # px per character of the 11px monospace font the boxes use
LINE_H = 14.0
PAD_X, PAD_Y = 8.0, 5.0
GAP_X, GAP_Y = 18.0, 34.0  # between boxes in a layer, between layers
MARGIN = 12.0
MAX_CHARS = 44  # longer lines are cut with an ellipsis; the tooltip has the whole text
MAX_TITLE = 2000
DOT_TIMEOUT_S = 10.0
DOT_MAX_BOXES = 400
SWEEPS = 4  # barycenter ordering sweeps
RELAX = 8  # rounds pulling boxes over their neighbours
MAX_CONSTS = 6  # constants listed in an op's box


@dataclass
class Box:
    """A drawn node: a graph input, an op (with the constants it reads), a constant nobody
    reads, or the return."""

    kind: str  # input | op | const | output
    lines: list[tuple[str, str]]  # (text, css class: "" | "sub" | "cst")
    title: str
    module: int | None = None  # index into the page's module table, for highlighting
    new: bool = False  # not in the previous stage
    w: float = 0.0
    h: float = 0.0
    x: float = 0.0  # centre
    y: float = 0.0


@dataclass
class Layout:
    boxes: list[Box]
    edges: list[tuple[int, int]]
    paths: list[str] = field(default_factory=list)  # SVG path data per edge, after layout
    width: float = 0.0
    height: float = 0.0


# --- boxes and edges ------------------------------------------------------------------------------


def _cut(text: str) -> str:
    """Model names can hold anything; a box shows one short printable line of it."""
    text = printable(text)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1] + "\u2026"


def _const_line(node: Node) -> str:
    return f"%{node.outputs[0].name}: {format_type(node.outputs[0].type)}"


def _node_box(node: Node, consts: list[Node], module_ids: Mapping[str, int], new: bool) -> Box:
    """An op's box: result and op, type, module path, then the constants it reads (weights
    drawn inside their user, as model viewers do, rather than as boxes of their own)."""
    if node.op == "const":
        lines = [(_const_line(node), "")]
    else:
        types = format_type(node.outputs[0].type) if node.outputs else ""
        if len(node.outputs) > 1:
            types += f" (+{len(node.outputs) - 1})"
        names = ", ".join(f"%{v.name}" for v in node.outputs)
        lines = [(f"{names} = {node.op}", ""), (types, "sub")]
    if node.provenance.module:
        lines.append((node.provenance.module, "sub"))
    lines += [("\u25e6 " + _const_line(c), "cst") for c in consts[:MAX_CONSTS]]
    if len(consts) > MAX_CONSTS:
        lines.append((f"\u25e6 ... {len(consts) - MAX_CONSTS} more constants", "cst"))
    title = "\n".join(printable(format_node(n).strip()) for n in [node, *consts])[:MAX_TITLE]
    return Box("const" if node.op == "const" else "op", [(_cut(t), c) for t, c in lines], title,
               module_ids.get(node.provenance.module), new)


def build_layout(graph: Graph, module_ids: Mapping[str, int],
                 previous: Graph | None = None) -> Layout:
    """Boxes (inputs, ops, return) in topological order and producer -> user edges,
    deduplicated. Constants are listed inside the box of each op that reads them: a shared
    constant (cse merges equal zero biases) drawn once would send edges across the graph."""
    old = set(previous.nodes) if previous is not None else None
    is_new = lambda n: old is not None and n not in old  # noqa: E731
    boxes = [Box("input", [(_cut(f"%{v.name}: {format_type(v.type)}"), "")],
                 printable(f"input %{v.name}")) for v in graph.inputs]
    where = {v.name: i for i, v in enumerate(graph.inputs)}
    consts: dict[str, Node] = {}
    used: set[str] = set()
    edges: dict[tuple[int, int], None] = {}
    for node in graph.nodes:
        if node.op == "const":
            consts.update((v.name, node) for v in node.outputs)
            continue
        read = list({v.name: consts[v.name] for v in node.inputs if v.name in consts}.values())
        used.update(c.outputs[0].name for c in read)
        me = len(boxes)
        boxes.append(_node_box(node, read, module_ids, is_new(node)))
        edges.update(((where[v.name], me), None) for v in node.inputs if v.name in where)
        where.update((v.name, me) for v in node.outputs)
    for name, node in consts.items():  # constants no op reads: returned, or dead
        if name not in used:
            where[name] = len(boxes)
            boxes.append(_node_box(node, [], module_ids, is_new(node)))
    ret = len(boxes)
    boxes.append(Box("output", [("return", "")], printable("return " + ", ".join(
        f"%{v.name}" for v in graph.outputs))[:MAX_TITLE]))
    edges.update(((where[v.name], ret), None) for v in graph.outputs if v.name in where)
    for box in boxes:
        box.w = max(len(t) for t, _ in box.lines) * CHAR_W + 2 * PAD_X
        box.h = len(box.lines) * LINE_H + 2 * PAD_Y
    return Layout(boxes, list(edges))


# --- the own layered layout ----------------------------------------------------------------------


def _layers(layout: Layout) -> list[int]:
    """Longest path from the inputs; a box with no inputs of its own that is not a graph input (a
    returned constant, an `arange`) sits one layer above its first user rather than at the top,
    where its edges would cross the whole drawing."""
    n = len(layout.boxes)
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in layout.edges:
        preds[b].append(a)
        succs[a].append(b)
    layer = [0] * n
    for i in range(n):  # boxes are in topological order
        if preds[i]:
            layer[i] = max(layer[p] for p in preds[i]) + 1
    for i in range(n):
        if not preds[i] and succs[i] and layout.boxes[i].kind != "input":
            layer[i] = max(0, min(layer[s] for s in succs[i]) - 1)
    return layer


def _chains(layout: Layout, layer: list[int]) -> tuple[list[list[int]], int]:
    """Each edge as a chain of vertex ids, with dummy vertices (ids past the boxes) on every layer
    it crosses; returns the chains and the vertex count. Dummies are capped, since a value used
    far down many times (an attention mask) would otherwise add a vertex per layer per use."""
    count = len(layout.boxes)
    budget = 4 * count + 200
    chains = []
    for a, b in layout.edges:
        span = layer[b] - layer[a]
        if 1 < span <= budget:
            chain = [a, *range(count, count + span - 1), b]
            count += span - 1
            budget -= span - 1
        else:
            chain = [a, b]
        chains.append(chain)
    return chains, count


def _order(layer_of: list[int], chains: list[list[int]]) -> list[list[int]]:
    """Vertices per layer, ordered by barycenter sweeps (down, then up) to cut crossings."""
    depth = max(layer_of) + 1
    rows: list[list[int]] = [[] for _ in range(depth)]
    for v, lay in enumerate(layer_of):
        rows[lay].append(v)
    up: list[list[int]] = [[] for _ in layer_of]
    down: list[list[int]] = [[] for _ in layer_of]
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
    pos = [0.0] * len(layer_of)
    for row in rows:
        for i, v in enumerate(row):
            pos[v] = i
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        for lay in (range(1, depth) if downward else range(depth - 2, -1, -1)):
            near = up if downward else down
            row = rows[lay]
            key = {v: (sum(pos[u] for u in near[v]) / len(near[v]) if near[v] else pos[v])
                   for v in row}
            row.sort(key=lambda v: key[v])
            for i, v in enumerate(row):
                pos[v] = i
    return rows


def _place_row(row: list[int], want: list[float], widths: list[float]) -> list[float]:
    """Centres as close to `want` as the order and the gaps allow: pushed right where boxes
    would overlap, then the row is shifted back so that it is centred on what it wanted."""
    xs = []
    right = -1e18
    for v, x in zip(row, want):
        x = max(x, right + widths[v] / 2)
        xs.append(x)
        right = x + widths[v] / 2 + GAP_X
    shift = (sum(want) - sum(xs)) / len(xs) if xs else 0.0
    return [x + shift for x in xs]


def _coordinates(rows: list[list[int]], chains: list[list[int]], widths: list[float]
                 ) -> list[float]:
    """x of every vertex: packed rows, then rounds pulling each vertex over its neighbours."""
    n = len(widths)
    x = [0.0] * n
    for row in rows:
        left = 0.0
        for v in row:
            x[v] = left + widths[v] / 2
            left += widths[v] + GAP_X
    near: list[list[int]] = [[] for _ in range(n)]
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            near[a].append(b)
            near[b].append(a)
    for _ in range(RELAX):
        for row in rows:
            want = [sum(x[u] for u in near[v]) / len(near[v]) if near[v] else x[v] for v in row]
            for v, xv in zip(row, _place_row(row, want, widths)):
                x[v] = xv
    return x


def _curve(points: list[tuple[float, float]]) -> str:
    """A path through `points` with vertical tangents: S-curves between layers."""
    (x0, y0), rest = points[0], points[1:]
    parts = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        mid = (y0 + y1) / 2
        parts.append(f"C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(parts)


def own_layout(layout: Layout) -> Layout:
    """Positions boxes and routes edges with the layered scheme of the module docstring."""
    boxes = layout.boxes
    layer = _layers(layout)
    chains, count = _chains(layout, layer)
    layer_of = layer + [0] * (count - len(boxes))
    for chain in chains:
        a = chain[0]
        for k, d in enumerate(chain[1:-1], start=1):
            layer_of[d] = layer[a] + k
    widths = [b.w for b in boxes] + [4.0] * (count - len(boxes))
    rows = _order(layer_of, chains)
    x = _coordinates(rows, chains, widths)
    heights = [max((boxes[v].h for v in row if v < len(boxes)), default=LINE_H) for row in rows]
    tops = [0.0]
    for h in heights:
        tops.append(tops[-1] + h + GAP_Y)
    y = [tops[layer_of[v]] + heights[layer_of[v]] / 2 for v in range(count)]
    left = min(x[v] - widths[v] / 2 for v in range(count))
    for v, box in enumerate(boxes):
        box.x, box.y = x[v] - left + MARGIN, y[v] + MARGIN
    for chain in chains:
        a, b = boxes[chain[0]], boxes[chain[-1]]
        points = [(a.x, a.y + a.h / 2)]
        points += [(x[d] - left + MARGIN, y[d] + MARGIN) for d in chain[1:-1]]
        points.append((b.x, b.y - b.h / 2 - 2))
        layout.paths.append(_curve(points))
    layout.width = max(x[v] + widths[v] / 2 for v in range(count)) - left + 2 * MARGIN
    layout.height = tops[-1] - GAP_Y + 2 * MARGIN
    return layout


# --- graphviz ------------------------------------------------------------------------------------


def dot_source(layout: Layout) -> str:
    """A graph of numbered, fixed-size, unlabeled nodes: dot sees sizes and edges, no names."""
    lines = ["digraph g {", "graph [rankdir=TB, nodesep=0.25, ranksep=0.45, mclimit=0.5, "
             "nslimit=2, nslimit1=2];",
             'node [shape=box, fixedsize=true, label=""];']
    lines += [f"n{i} [width={b.w / 72:.3f}, height={b.h / 72:.3f}];"
              for i, b in enumerate(layout.boxes)]
    lines += [f"n{a} -> n{b};" for a, b in layout.edges]
    lines.append("}")
    return "\n".join(lines)


def _parse_plain(text: str, layout: Layout) -> Layout:
    """Reads `dot -Tplain`: inches, y pointing up; edges are B-spline control points."""
    height = 0.0
    edge_paths: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "graph":
            layout.width, height = float(f[2]) * 72, float(f[3]) * 72
        elif f[0] == "node":
            box = layout.boxes[int(f[1][1:])]
            box.x, box.y = float(f[2]) * 72 + MARGIN, height - float(f[3]) * 72 + MARGIN
        elif f[0] == "edge":
            n = int(f[3])
            pts = [(float(f[4 + 2 * i]) * 72 + MARGIN, height - float(f[5 + 2 * i]) * 72 + MARGIN)
                   for i in range(n)]
            d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f} C" + " ".join(
                f"{px:.1f},{py:.1f}" for px, py in pts[1:])
            edge_paths[(int(f[1][1:]), int(f[2][1:]))] = d
    if len(edge_paths) != len(layout.edges):
        raise ValueError("dot left out edges")
    layout.paths = [edge_paths[e] for e in layout.edges]
    layout.width += 2 * MARGIN
    layout.height = height + 2 * MARGIN
    return layout


def dot_layout(layout: Layout, dot: str) -> Layout:
    """Positions from graphviz; raises (OSError, subprocess errors, ValueError) when it fails."""
    done = subprocess.run([dot, "-Tplain"], input=dot_source(layout), capture_output=True,
                          text=True, timeout=DOT_TIMEOUT_S, check=True)
    return _parse_plain(done.stdout, layout)


class Engine:
    """The layout for the stages of one page: dot while it is installed, the graph has at most
    `DOT_MAX_BOXES` boxes and dot has not failed on this page (its crossing minimization can
    take minutes on a large graph with long edges, and one slow stage predicts the next);
    our own otherwise. `used` counts the stages each one drew."""

    def __init__(self, prefer: str = "auto"):
        self.dot = shutil.which("dot") if prefer in ("auto", "dot") else None
        self.used = {"dot": 0, "own": 0}

    def place(self, layout: Layout) -> tuple[Layout, str]:
        if self.dot is not None and len(layout.boxes) <= DOT_MAX_BOXES:
            try:
                return self._count(dot_layout(layout, self.dot), "dot")
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                self.dot = None
                layout.paths = []
        return self._count(own_layout(layout), "own")

    def _count(self, layout: Layout, name: str) -> tuple[Layout, str]:
        self.used[name] += 1
        return layout, name


def place(layout: Layout, engine: str = "auto") -> tuple[Layout, str]:
    """Lays out with dot when asked or available (`auto`) and the graph is small enough, else
    (or when dot fails) with our own; returns the layout and the engine that made it."""
    return Engine(engine).place(layout)


# --- drawing -------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _class(name: str) -> str:
    return f' class="{name}"' if name else ""


def _draw_box(box: Box) -> str:
    cls = f"nd {box.kind}" + (" new" if box.new else "")
    data = f' data-m="{box.module}"' if box.module is not None else ""
    left, top = box.x - box.w / 2, box.y - box.h / 2
    texts = "".join(
        f'<text x="{left + PAD_X:.1f}" y="{top + PAD_Y + LINE_H * (i + 0.78):.1f}"'
        f'{_class(c)}>{_esc(t)}</text>' for i, (t, c) in enumerate(box.lines))
    return (f'<g class="{cls}"{data}><title>{_esc(box.title)}</title>'
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" '
            f'rx="4"/>{texts}</g>')


def render_svg(layout: Layout, uid: str) -> str:
    """The drawing; `uid` (digits and letters only) keeps the arrow marker's id unique on a
    page of many SVGs."""
    marker = (f'<defs><marker id="{uid}-arrow" viewBox="0 0 8 8" refX="7" refY="4" '
              'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
              '<path d="M0,0 L8,4 L0,8 z"/></marker></defs>')
    edges = "".join(f'<path class="ed" d="{d}" marker-end="url(#{uid}-arrow)"/>'
                    for d in layout.paths)
    boxes = "".join(_draw_box(b) for b in layout.boxes)
    w, h = layout.width, layout.height
    return (f'<svg class="graph" id="{uid}" width="{w:.0f}" height="{h:.0f}" '
            f'viewBox="0 0 {w:.1f} {h:.1f}" role="img">{marker}<g class="edges">{edges}</g>'
            f'{boxes}</svg>')


def graph_svg(graph: Graph, uid: str, module_ids: Mapping[str, int] | None = None,
              previous: Graph | None = None, engine: Engine | None = None) -> str:
    """`graph` drawn as an <svg>; boxes carry `data-m` (their module's index in `module_ids`) for
    the page's highlighting, and nodes absent from `previous` are marked new."""
    layout, _ = (engine or Engine()).place(build_layout(graph, module_ids or {}, previous))
    return render_svg(layout, uid)
