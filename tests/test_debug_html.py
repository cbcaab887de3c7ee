"""The HTML viewer (fxforge.debug.html): one self-contained page with every stage of a compile.

Pages are checked as text (one SVG per stage, diffs, pass table, SQNR colours, escaping of
hostile names, nothing fetched from outside) and, when a Chromium binary is installed, in a real
headless browser: the page's script runs under its own Content-Security-Policy, lays out every
SVG, highlights a module's nodes on hover, and the screenshot is not blank.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxforge
from fxforge.debug import html as viewer
from fxforge.debug import svg
from fxforge.debug.html import Stage, render_html, stages_from_dump, stages_of, write_html
from fxforge.ir import Graph, Node, Provenance, TensorType, Value
from fxforge.quantization import LayerAccuracy, QuantAnalysis

HOSTILE = "</script><script>alert(1)</script>"
BIDI = "\u202e"  # right-to-left override: would display text reversed


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def _cnn_compiled(debug=None):
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 16, 16)
    compiled = fxforge.compile(model, "cpu-int8", calibration=[x], debug=debug)
    compiled(x)
    return compiled


@pytest.fixture(scope="module")
def cnn():
    return _cnn_compiled()


@pytest.fixture(scope="module")
def cnn_page(cnn, tmp_path_factory):
    path = write_html(cnn, tmp_path_factory.mktemp("cnn") / "cnn.html")
    return path, path.read_text(encoding="utf-8")


def _svg_count(page: str) -> int:
    return page.count('<svg class="graph"')


def _stage_count(page: str) -> int:
    return len(re.findall(r'<section class="stage[^"]*" id="s\d+"', page))


def _assert_self_contained(page: str) -> None:
    """Nothing the browser could fetch: no URLs, no src/href to files, no imports."""
    assert "http://" not in page and "https://" not in page
    assert "src=" not in page
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only url(#marker) references inside the page
    assert not re.search(r'href="(?!#)', page)
    assert page.count("<script") == 1 and page.count("</script>") == 1


def _hostile_graph() -> Graph:
    """Every string of a graph that a model can choose, hostile."""
    t = TensorType((2, 3), "f32")
    x = Value(f'in"{HOSTILE}', t)
    names = [f"a{BIDI}b", "q'\"&amp;<b>", "line\nbreak", "unicod\u00e9_\u540d\u524d_\U0001f642"]
    nodes, last = [], x
    for i, name in enumerate(names):
        out = Value(name, t)
        nodes.append(Node("relu", (last,), (out,), provenance=Provenance(
            f"layer{i}.{HOSTILE}", f'aten."{HOSTILE}\'{BIDI}')))
        last = out
    nodes.append(Node("reshape", (last,), (Value("r", TensorType((6,), "f32")),),
                      {"shape": (6,), "note": HOSTILE}, Provenance(HOSTILE + "\u2066x")))
    return Graph((x,), tuple(nodes), (nodes[-1].output,))


# --- pages as text --------------------------------------------------------------------------------


def test_cnn_page_has_every_stage_drawn_diffed_and_tabled(cnn, cnn_page):
    _, page = cnn_page
    stages = stages_of(cnn)
    assert [s.name for s in stages] == ["input", *cnn._manager.names]
    assert stages[0].graph == cnn.captured_graph and stages[-1].graph == cnn.graph
    assert all(s.record is not None for s in stages[1:])
    assert _stage_count(page) == _svg_count(page) == len(stages)
    for s in stages:
        assert f'<svg class="graph" id="g{s.index}"' in page
    assert '<pre class="diff">' in page
    assert '<span class="add">+' in page and '<span class="del">-' in page
    assert page.count('<pre class="ir">') == len(stages)
    assert all("\n".join(viewer._ir_lines(s.graph)) == str(s.graph) for s in stages)
    rows = re.findall(r"<tr class=\"(?:chg|same)\"><td>(\d+)</td>", page)
    assert rows == [str(s.index) for s in stages[1:]]
    assert "fold-batchnorm" in page and "merged=" in page  # cse's stats
    assert "<summary>layers (3)</summary><ul><li>" in page  # quantize's list stats, as a list
    assert "int8 SQNR per layer" in page and re.search(r'class="num q-good">\d', page)
    for layer in cnn.report.records[-1].quantization.layers:
        assert f">{layer.module}</td>" in page
    _assert_self_contained(page)


def test_module_index_links_nodes_in_every_stage(cnn_page):
    _, page = cnn_page
    entry = re.search(r'<li id="mod-(\d+)" class="mod" data-cover="([\d ]+)" '
                      r'data-path="stem.0"', page)
    assert entry, "stem.0 is in the module index"
    k = entry.group(1)
    assert k in entry.group(2).split()
    boxes = re.findall(rf'<g class="nd [^"]*" data-m="{k}">', page)
    assert len(boxes) >= len(stages_of_page(page))  # the conv's box in every stage
    assert re.search(rf'<span class="l" data-m="{k}">  %', page)  # and its IR lines
    parent = re.search(r'data-cover="([\d ]+)" data-path="stem"', page)
    assert set(entry.group(2).split()) <= set(parent.group(1).split())


def stages_of_page(page: str) -> list[str]:
    return re.findall(r'<section class="stage[^"]*" id="s(\d+)"', page)


def test_sqnr_cells_are_coloured_by_threshold():
    layers = [LayerAccuracy(f"m{i}", "qlinear", "static", "f32", db, db)
              for i, db in enumerate([50.0, 35.0, 30.0, 25.0, 10.0, math.nan, math.inf])]
    q = QuantAnalysis(4, "minmax", layers, [], [{"sqnr_db": 33.0, "cosine": 0.99,
                                                  "max_abs_error": 0.1}])
    page = render_html([Stage(0, "input", _hostile_graph(), None)], title="q", quantization=q)
    cells = re.findall(r'<td class="num (q-\w+)">([^<]*)</td>', page)
    assert [c for c, _ in cells[::2]] == ["q-good", "q-good", "q-fair", "q-fair", "q-bad",
                                          "q-na", "q-good"]
    assert '<span class="q-fair">33.0 dB</span>' in page


def test_bert_page_from_the_transformers_zoo(tmp_path):
    pytest.importorskip("transformers")
    from fxforge import zoo_hf

    torch.manual_seed(0)
    model, inputs = zoo_hf.build("bert", 2)
    compiled = fxforge.compile(model, "cpu-int8")
    zoo_hf.call(compiled, inputs)
    page = write_html(compiled, tmp_path / "bert.html").read_text(encoding="utf-8")
    stages = len(compiled._manager.names) + 1
    assert _stage_count(page) == _svg_count(page) == stages
    assert 'data-path="encoder.layer.0.attention.self"' in page
    assert "scaled_dot_product_attention" in page and "qlinear" in page
    _assert_self_contained(page)


def test_page_from_a_dump_dir_matches_the_rerun(tmp_path):
    compiled = _cnn_compiled(debug={"dump_dir": str(tmp_path / "dumps")})
    dumped = stages_from_dump(tmp_path / "dumps")
    rerun = stages_of(compiled)
    assert [(s.index, s.name) for s in dumped] == [(s.index, s.name) for s in rerun]
    assert [s.graph for s in dumped] == [s.graph for s in rerun]
    assert all(s.record is None for s in dumped)
    page = write_html(tmp_path / "dumps", tmp_path / "dump.html").read_text(encoding="utf-8")
    assert _stage_count(page) == _svg_count(page) == len(dumped)
    assert "&mdash;" in page  # dumps hold no timings
    assert '<span class="add">+' in page
    _assert_self_contained(page)


def test_hostile_names_only_ever_appear_escaped():
    graph = _hostile_graph()
    stages = [Stage(0, "input", graph, None), Stage(1, f"user:{HOSTILE}", graph, None)]
    q = QuantAnalysis(1, "minmax", [LayerAccuracy(HOSTILE, "qlinear", "static", "f32", 1.0,
                                                  1.0)], [HOSTILE], [], notes=[HOSTILE])
    kernels = [SimpleNamespace(node=f"%r = reshape  # {HOSTILE}", op="reshape", kernel=None,
                               reason=HOSTILE)]
    page = render_html(stages, title=HOSTILE, quantization=q, kernels=kernels)
    assert HOSTILE not in page and "<script>alert" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1
    script = page[page.index("<script>") + 8:page.index("</script>")]
    assert script == viewer._JS  # the script is a constant: no string of the model in it
    assert "<b>" not in page and "\"&amp;<b>" not in page
    for invisible in (BIDI, "\u2066", "\nbreak"):
        assert invisible not in page
    assert page.count("line\\nbreak = relu") == 3 * 2  # box, its tooltip, IR text; per stage
    assert "\\u202e" in page  # shown, not obeyed
    assert "unicod\u00e9_\u540d\u524d_\U0001f642" in page  # ordinary unicode stays readable
    assert _svg_count(page) == 2
    assert all(attr.count('"') == 2 for attr in re.findall(r'data-path="[^"]*"', page))
    _assert_self_contained(page.replace("src=", ""))  # no `src=` but in escaped text


def test_kernels_link_to_their_modules(cnn):
    stages = stages_of(cnn)
    conv = next(n for n in stages[-1].graph.nodes if n.op == "qconv2d")
    where = f"%{conv.outputs[0].name} = qconv2d  # {conv.provenance.module}"
    kernels = [SimpleNamespace(node=where, op="qconv2d", kernel="conv2d_igemm_int8", reason=""),
               SimpleNamespace(node="%linear = linear  # fc", op="linear", kernel=None,
                               reason="no rule")]
    page = render_html(stages, title="k", kernels=kernels)
    k = re.search(rf'id="mod-(\d+)" class="mod" data-cover="[\d ]+" '
                  rf'data-path="{re.escape(conv.provenance.module)}"', page).group(1)
    assert f'<tr data-m="{k}"><td class="mono">' in page
    assert "conv2d_igemm_int8" in page and "torch backend" in page
    assert "1 node(s) on generated Triton kernels, 1 on the torch backend" in page


def test_kernels_table_of_a_triton_compile(tmp_path):
    jit = pytest.importorskip("fxforge.kernels.triton.jit")
    if not (jit.interpreting() or torch.cuda.is_available()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    torch.manual_seed(0)
    compiled = fxforge.compile(SmallCNN().eval(), "cuda", example_inputs=torch.randn(2, 3, 8, 8),
                               autotune=False)
    page = write_html(compiled, tmp_path / "cuda.html").read_text(encoding="utf-8")
    kernels = compiled.report.latest.kernels
    assert kernels and any(k.kernel for k in kernels)
    stem = re.search(r'id="mod-(\d+)" class="mod" data-cover="[\d ]+" data-path="stem.0"',
                     page).group(1)
    for k in kernels:
        assert f'<td class="mono">{viewer._esc(k.node)}</td>' in page
    assert re.search(rf'<tr data-m="{stem}"><td class="mono">%[^<]*# stem.0</td>', page)
    _assert_self_contained(page)


def test_large_graph_is_listed_as_text_in_reasonable_time():
    t = TensorType((4,), "f32")
    x = Value("x", t)
    nodes, last = [], x
    for i in range(viewer.MAX_DRAWN * 2):
        out = Value(f"v{i}", t)
        nodes.append(Node("relu", (last,), (out,), provenance=Provenance(f"m{i // 50}")))
        last = out
    big = Graph((x,), tuple(nodes), (last,))
    small = Graph((x,), tuple(nodes[:viewer.MAX_DRAWN - 1]), (nodes[viewer.MAX_DRAWN - 2].output,))
    start = time.perf_counter()
    page = render_html([Stage(0, "input", big, None), Stage(1, "cut", small, None)], title="big")
    assert time.perf_counter() - start < 30
    assert _svg_count(page) == 1  # the small one
    assert f"{len(nodes)} nodes: above the {viewer.MAX_DRAWN} this page draws" in page
    assert page.count('<pre class="ir">') == 2


def test_write_html_needs_a_captured_model(tmp_path):
    compiled = fxforge.compile(SmallCNN().eval(), "cpu")
    with pytest.raises(RuntimeError, match="not captured yet"):
        write_html(compiled, tmp_path / "x.html")
    with pytest.raises(FileNotFoundError):
        stages_from_dump(tmp_path)


# --- layout ---------------------------------------------------------------------------------------


def _rects(drawing: str) -> list[tuple[float, float, float, float]]:
    return [tuple(map(float, m)) for m in re.findall(
        r'<rect x="([-\d.]+)" y="([-\d.]+)" width="([\d.]+)" height="([\d.]+)"', drawing)]


def _overlap(a, b) -> bool:
    return (a[0] < b[0] + b[2] - 0.5 and b[0] < a[0] + a[2] - 0.5
            and a[1] < b[1] + b[3] - 0.5 and b[1] < a[1] + a[3] - 0.5)


@pytest.mark.parametrize("engine", ["own", "dot"])
def test_layout_boxes_do_not_overlap_and_stay_inside(cnn, engine):
    if engine == "dot" and shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed: the viewer uses its own layout")
    graph = stages_of(cnn)[0].graph
    layout, used = svg.place(svg.build_layout(graph, {}), engine)
    assert used == engine
    drawing = svg.render_svg(layout, "t")
    rects = _rects(drawing)
    assert len(rects) == len(layout.boxes) == len(graph.inputs) + 1 + sum(
        n.op != "const" for n in graph.nodes)
    assert len(re.findall(r'<path class="ed"', drawing)) == len(layout.edges)
    for i, a in enumerate(rects):
        assert a[0] >= 0 and a[1] >= 0
        assert a[0] + a[2] <= layout.width + 0.5 and a[1] + a[3] <= layout.height + 0.5
        assert not any(_overlap(a, b) for b in rects[i + 1:])
    for a, b in layout.edges:  # edges point down the page
        assert layout.boxes[a].y < layout.boxes[b].y


def test_dot_sees_no_names():
    source = svg.dot_source(svg.build_layout(_hostile_graph(), {}))
    assert "script" not in source and "layer" not in source and "relu" not in source
    assert set(re.findall(r"[A-Za-z_]+", source)) <= {
        "digraph", "g", "graph", "rankdir", "TB", "nodesep", "ranksep", "node", "shape", "box",
        "fixedsize", "true", "label", "width", "height", "n", "mclimit", "nslimit"}


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1400,1000"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("no chromium binary found (apt-get install chromium); the headless-browser "
                "checks of the HTML viewer are skipped")


def _browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()], capture_output=True, timeout=180)


def _dom(page: Path, tmp_path: Path) -> str:
    done = _browse(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode("utf-8")


def _screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    png = tmp_path / f"{page.stem}.png"
    done = _browse(page, tmp_path, f"--screenshot={png}")
    assert done.returncode == 0 and png.exists(), done.stderr.decode(errors="replace")[-2000:]
    return decode_png(png.read_bytes())


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG decoder (8-bit, non-interlaced; zlib + the five row filters), so that the
    screenshot can be checked without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (0, 2, 4, 6), header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    stride = width * channels
    rows = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(height):
        out[y] = prev = _unfilter(int(rows[y, 0]), rows[y, 1:].astype(np.int64), prev, channels)
    return out.reshape(height, width, channels)


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    if kind == 0:
        return line
    if kind == 1:  # sub: a running sum along each channel
        return np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
    if kind == 2:  # up
        return (line + prev) % 256
    cur = line.tolist()
    up = prev.tolist()
    for x in range(len(cur)):
        a = cur[x - bpp] if x >= bpp else 0
        if kind == 3:  # average
            cur[x] = (cur[x] + (a + up[x]) // 2) % 256
            continue
        b, c = up[x], up[x - bpp] if x >= bpp else 0  # paeth
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
    return np.array(cur, np.int64)


def test_png_decoder_on_a_known_image():
    pixels = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3) * 7
    for kind in range(5):  # the same image with each row filter
        raw = b""
        prev = np.zeros(9, np.int64)
        for row in pixels.reshape(4, 9).astype(np.int64):
            left = np.concatenate([np.zeros(3, np.int64), row[:-3]])
            upleft = np.concatenate([np.zeros(3, np.int64), prev[:-3]])
            pred = [np.zeros(9, np.int64), left, prev, (left + prev) // 2,
                    _paeth(left, prev, upleft)][kind]
            raw += bytes([kind]) + bytes(((row - pred) % 256).astype(np.uint8))
            prev = row
        png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 4, 8, 2, 0, 0, 0))
        png += _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
        assert (decode_png(png) == pixels).all(), kind


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_chromium_runs_the_script_and_lays_out_every_svg(cnn_page, tmp_path):
    path, page = cnn_page
    dom = _dom(path, tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    stages = _stage_count(page)
    assert 'data-ready="1"' in body, "the script ran (its CSP hash matches)"
    assert f'data-graphs="{stages}"' in body and f'data-drawn="{stages}"' in body
    assert dom.count('<svg class="graph"') == stages


def test_chromium_screenshot_is_not_blank_and_shows_the_graph(cnn, cnn_page, tmp_path):
    path, _ = cnn_page
    full = _screenshot(path, tmp_path)
    assert full.shape[:2] == (1000, 1400)
    colours = np.unique(full[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50
    assert (full[..., :3] < 200).any(axis=-1).mean() > 0.01  # text, lines: not a white page
    # the last stage alone, so that its graph is on the first screen: boxes in the op colour
    one = tmp_path / "final.html"
    one.write_text(render_html(stages_of(cnn)[-1:], title="final"), encoding="utf-8")
    shot = _screenshot(one, tmp_path)
    op_fill = (np.abs(shot[..., :3].astype(int) - (0xDD, 0xF4, 0xFF)).max(axis=-1) <= 2).sum()
    assert op_fill > 2000, f"{op_fill} pixels of the op boxes' fill"


HARNESS = """
(function () {
  var entry = document.querySelector('li.mod[data-path="stem.0"]');
  entry.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  var lit = document.querySelectorAll("svg.graph g.nd.hl").length;
  var fill = lit ? getComputedStyle(document.querySelector("svg.graph g.nd.hl rect")).fill : "";
  document.body.setAttribute("data-lit", String(lit));
  document.body.setAttribute("data-fill", fill);
})();
"""


def test_chromium_hover_on_a_module_lights_its_nodes(cnn_page, tmp_path):
    """The page's own CSP admits only its script; the test's harness script is admitted by
    adding its hash to a copy of the page."""
    _, page = cnn_page
    csp = viewer._CSP.replace("script-src ", f"script-src {viewer._csp_hash(HARNESS)} ")
    test_page = tmp_path / "harness.html"
    test_page.write_text(page.replace(viewer._CSP, csp).replace(
        "</body>", f"<script>{HARNESS}</script></body>"), encoding="utf-8")
    body = re.search(r"<body([^>]*)>", _dom(test_page, tmp_path)).group(1)
    cover = re.search(r'class="mod" data-cover="([\d ]+)" data-path="stem.0"', page).group(1)
    boxes = sum(len(re.findall(rf'<g class="nd [^"]*" data-m="{k}">', page))
                for k in cover.split())  # stem.0 and the modules under it (stem.0.weight)
    assert f'data-lit="{boxes}"' in body
    assert 'data-fill="rgb(255, 229, 143)"' in body  # the highlight colour


def test_chromium_runs_nothing_from_hostile_names(tmp_path):
    pwn = "<script>document.body.setAttribute('data-pwned','1')</script>"
    graph = _hostile_graph()
    graph = Graph(graph.inputs, (*graph.nodes[:-1], Node(
        graph.nodes[-1].op, graph.nodes[-1].inputs, graph.nodes[-1].outputs,
        graph.nodes[-1].attrs, Provenance(f"{pwn}<img src=x onerror=\"{pwn}\">"))),
        graph.outputs)
    path = tmp_path / "hostile.html"
    path.write_text(render_html([Stage(0, "input", graph, None)], title=pwn), encoding="utf-8")
    dom = _dom(path, tmp_path)
    assert "data-pwned" not in re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in dom and "<img" not in dom
