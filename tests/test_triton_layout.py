"""The Triton backend's layout kernels (kernels/triton/layout.py) and their lowering rules
(kernels/triton/lower_layout.py), plus the constant-pow rewrite and the bitwise ops of the
elementwise table. Triton runs on its CPU interpreter here (tests/conftest.py), so tensors are
tiny.

- Kernel level: copy / contiguous / memory_format / reshape / cat / pad / index / take / gather
  / check_positions against torch eager, exactly (torch.equal, NaN-aware where a fill is NaN), in
  several dtypes and storage orders; the merged-dims limit (MAX_RANK) and the 64-bit offset path.
- Lowering level: small modules through `fxforge.compile(..., "cuda", autotune=False)` against
  eager, with the report saying every layout node ran as a kernel or a view; graphs built node by
  node against the numpy reference (`run_reference`).
- A seeded property test: permute -> reshape -> cat -> pad over random shapes.

Two tests hold bugs found while writing this file, now fixed: a 7-D reshape the copy kernel
cannot do was claimed and failed at run time, and `int ** 2.0` was rewritten to an integer mul
that wrapped.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from graph_builder import GraphBuilder

import fxforge
from fxforge.errors import ExecutionError
from fxforge.execute import run_reference
from fxforge.ir import Graph, TensorType, Value
from fxforge.kernels.triton import jit, layout
from fxforge.kernels.triton.lower import lower
from fxforge.kernels.triton.lowered import Context, Lowered
from fxforge.kernels.triton.program import TritonProgram

pytestmark = pytest.mark.skipif(not jit.interpreting(),
                                reason="runs the kernels on CPU tensors (TRITON_INTERPRET=1)")

DTYPES = [torch.float32, torch.float16, torch.int8, torch.int64, torch.bool]
ALL_VIEWS_LINE = "every IR op runs as a generated kernel or a view"


def _make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Exact equality, dtype and shape included; NaN equals NaN, -0.0 differs from 0.0."""
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.dtype.is_floating_point:
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        got = torch.where(torch.isnan(got), 0.0, got).to(got.dtype)
        want = torch.where(torch.isnan(want), 0.0, want).to(want.dtype)
        assert torch.equal(torch.signbit(got), torch.signbit(want))
    assert torch.equal(got, want), (got, want)


def _strided_variants(dtype):
    """(name, tensor) pairs of non-contiguous tensors: permuted, sliced with step 2, expanded
    (stride 0) and channels-last."""
    base = _make((2, 3, 4, 5), dtype)
    return [
        ("permuted", base.permute(3, 1, 0, 2)),
        ("sliced", _make((4, 6, 5), dtype)[:, ::2, 1:]),
        ("expanded", _make((3, 1, 4), dtype).expand(3, 5, 4)),
        ("expanded-0d", _make((1,), dtype).expand(2, 3)),
        ("channels_last", base.contiguous(memory_format=torch.channels_last)),
        ("transposed-slice", base[:, :, ::2].transpose(1, 3)),
    ]


# --- copy / contiguous ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contiguous_of_strided_tensors(dtype):
    for name, x in _strided_variants(dtype):
        assert not x.is_contiguous(), name
        before = x.clone()
        y = layout.contiguous(x)
        assert y.is_contiguous(), name
        assert y.data_ptr() != x.data_ptr(), name
        _same(y, x.contiguous())
        _same(x, before)  # the source is untouched


def test_contiguous_of_contiguous_is_the_same_tensor():
    x = torch.randn(3, 4)
    assert layout.contiguous(x) is x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_copy_into_a_strided_destination(dtype):
    src = _make((3, 4), dtype, seed=1).t()  # [4, 3], transposed
    buf = torch.zeros(4, 7, dtype=dtype)
    dst = buf[:, 1::2]  # [4, 3] at stride (7, 2)
    out = layout.copy(src, dst)
    assert out is dst
    want = torch.zeros(4, 7, dtype=dtype)
    want[:, 1::2] = src
    _same(buf, want)  # written where dst is, nothing else


def test_copy_refuses_other_shapes_and_dtypes():
    with pytest.raises(ValueError, match="shapes"):
        layout.copy(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="float16"):
        layout.copy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16))


def test_copy_of_empty_tensors_launches_nothing():
    dst = torch.empty(0, 3)
    assert layout.copy(torch.empty(3, 0).t(), dst) is dst


# --- memory_format ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.bool], ids=str)
def test_memory_format_both_ways(dtype):
    x = _make((2, 3, 4, 5), dtype)
    nhwc = layout.memory_format(x, "nhwc")
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    _same(nhwc, x)
    assert layout.memory_format(nhwc, "nhwc") is nhwc  # already so: no copy
    nchw = layout.memory_format(nhwc, "nchw")
    assert nchw.is_contiguous()
    _same(nchw, x)
    # from a permuted view (neither order) to channels-last
    odd = x.permute(0, 1, 3, 2)
    cl = layout.memory_format(odd, "nhwc")
    assert cl.is_contiguous(memory_format=torch.channels_last)
    _same(cl, odd.contiguous())


def test_memory_format_of_non_4d_is_contiguous():
    x = torch.randn(3, 4, 5).transpose(0, 2)
    y = layout.memory_format(x, "nhwc")
    assert y.is_contiguous()
    _same(y, x.contiguous())


# --- reshape ------------------------------------------------------------------------------------


def test_reshape_is_a_view_when_strides_allow():
    x = torch.randn(4, 6, 5)
    for src, shape in [(x, (24, 5)), (x, (-1,)), (x[1:3], (2, 30)), (x[:, 2], (2, 2, 5)),
                       (x.transpose(0, 1)[:, :, None], (6, 4, 5))]:
        y = layout.reshape(src, shape)
        assert y.data_ptr() == src.data_ptr(), shape
        assert y._base is (src if src._base is None else src._base), shape
        _same(y, src.reshape(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool], ids=str)
def test_reshape_copies_when_no_view_can(dtype):
    x = _make((3, 4, 5), dtype)
    for src, shape in [(x.permute(2, 0, 1), (15, 4)), (x.transpose(1, 2), (-1,)),
                       (x[:, ::2], (3, 10)), (x[:, :1].expand(3, 4, 5), (12, 5))]:
        before = src.clone()
        y = layout.reshape(src, shape)
        assert y.data_ptr() != src.data_ptr(), shape
        assert y.is_contiguous()
        _same(y, src.reshape(shape))
        _same(src, before)


# --- cat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1])
def test_cat_along_each_dim_with_empty_pieces_and_mixed_orders(dim):
    d = dim % 4
    shape = [2, 3, 4, 5]

    def piece(n, seed):
        s = list(shape)
        s[d] = n
        return _make(tuple(s), torch.float32, seed)

    a = piece(2, 1)  # contiguous
    empty = piece(0, 2)
    b = piece(3, 3).contiguous(memory_format=torch.channels_last)
    c = piece(1, 4).transpose(2, 3).contiguous().transpose(2, 3)  # a permuted storage
    xs = [a, empty, b, c, empty]
    out = layout.cat(xs, dim)
    _same(out, torch.cat(xs, dim))
    assert out.is_contiguous()  # the first input is contiguous
    first_cl = [b, a, empty, c]
    out = layout.cat(first_cl, dim)
    _same(out, torch.cat(first_cl, dim))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cat_dtypes_and_views(dtype):
    x = _make((3, 4), dtype)
    xs = [x, x.t()[:3], x[:, ::2].expand(3, 2).contiguous(), x[:, :0]]
    _same(layout.cat(xs, 1), torch.cat(xs, 1))


def test_cat_all_empty_and_errors():
    xs = [torch.empty(2, 0), torch.empty(2, 0)]
    _same(layout.cat(xs, 1), torch.cat(xs, 1))
    with pytest.raises(ValueError, match="no tensors"):
        layout.cat([], 0)
    with pytest.raises(ValueError, match="does not stack"):
        layout.cat([torch.zeros(2, 3), torch.zeros(3, 3)], 1)
    with pytest.raises(ValueError, match="does not stack"):
        layout.cat([torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16)], 0)


# --- pad ----------------------------------------------------------------------------------------

PAD_CASES = [
    # (shape, pads, mode) - F.pad's own rules for each mode
    ((2, 3, 5), (1, 2), "constant"),
    ((2, 3, 5), (0, 0, 2, 1), "constant"),
    ((2, 3, 5), (1, 0, 0, 0, 2, 3), "constant"),
    ((2, 3, 4, 5), (0, 0, 1, 1, 0, 0, 1, 0), "constant"),
    ((2, 3, 4, 5), (3, 0), "constant"),
    ((2, 3, 5), (2, 3), "reflect"),
    ((2, 3, 5), (0, 4), "reflect"),
    ((2, 3, 4, 5), (1, 2, 3, 0), "reflect"),
    ((2, 3, 4, 5), (0, 0, 2, 3), "reflect"),
    ((2, 3, 5), (3, 4), "replicate"),
    ((2, 3, 4, 5), (2, 0, 0, 3), "replicate"),
    ((2, 3, 4, 1), (2, 2, 1, 1), "replicate"),
]


@pytest.mark.parametrize("shape,pads,mode", PAD_CASES)
def test_pad_matches_f_pad(shape, pads, mode):
    for dtype in (torch.float32, torch.float16):
        x = _make(shape, dtype, seed=3)
        value = 1.5 if mode == "constant" else 0.0
        want = F.pad(x, pads, mode=mode, value=value) if mode == "constant" else \
            F.pad(x, pads, mode=mode)
        _same(layout.pad(x, pads, mode, value), want)
        # the same from a strided view
        xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        _same(layout.pad(xt, pads, mode, value), want)


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), float("inf"), -0.0, 1e30])
def test_pad_constant_special_fill_values(value):
    x = torch.randn(2, 3, 4)
    pads = (1, 2, 0, 0, 1, 0)
    _same(layout.pad(x, pads, "constant", value), F.pad(x, pads, value=value))
    h = x.half()
    if not math.isfinite(value) or abs(value) < 6e4:  # torch refuses 1e30 in f16
        _same(layout.pad(h, pads, "constant", value), F.pad(h, pads, value=value))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool], ids=str)
def test_pad_constant_integer_and_bool(dtype):
    x = _make((2, 3, 4), dtype)
    for value in (0.0, 1.0, 7.0):
        _same(layout.pad(x, (2, 1, 1, 0), "constant", value),
              F.pad(x, (2, 1, 1, 0), value=value))


def test_pad_keeps_channels_last_and_pads_empty():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    y = layout.pad(x, (1, 1, 2, 0), "replicate")
    _same(y, F.pad(x, (1, 1, 2, 0), mode="replicate"))
    assert y.is_contiguous(memory_format=torch.channels_last)
    e = torch.empty(2, 0)
    _same(layout.pad(e, (1, 2), "constant", 3.0), F.pad(e, (1, 2), value=3.0))
    _same(layout.pad(torch.empty(0, 3), (1, 1)), F.pad(torch.empty(0, 3), (1, 1)))
    with pytest.raises(ValueError, match="empty"):
        layout.pad(e, (1, 1), "replicate")


def test_pad_refusals():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="smaller than the dim"):
        layout.pad(x, (4, 0), "reflect")
    with pytest.raises(ValueError, match="smaller than the dim"):
        layout.pad(x, (0, 0, 0, 3), "reflect")
    with pytest.raises(RuntimeError):  # torch agrees that it is invalid
        F.pad(x, (4, 0), mode="reflect")
    with pytest.raises(ValueError, match="mode"):
        layout.pad(x, (1, 1), "circular")
    with pytest.raises(ValueError, match="pads"):
        layout.pad(x, (1,))
    with pytest.raises(ValueError, match="pads"):
        layout.pad(x, (1, -1))
    with pytest.raises(ValueError, match="pads"):
        layout.pad(x, (1,) * 8)


# --- check_positions / take / gather ------------------------------------------------------------


def test_check_positions():
    ok = torch.tensor([0, 4, 2])
    layout.check_positions(ok, 5, "what", negative=False)
    layout.check_positions(torch.tensor([-5, -1, 4]), 5, "what", negative=True)
    layout.check_positions(torch.empty(0, dtype=torch.int64), 0, "what", negative=False)
    with pytest.raises(IndexError, match=r"idx-node: position 5 is out of range.*size 5"):
        layout.check_positions(torch.tensor([1, 5, 0]), 5, "idx-node", negative=False)
    with pytest.raises(IndexError, match="position 5 "):
        layout.check_positions(torch.tensor([1, 5, 0]), 5, "idx-node", negative=True)
    with pytest.raises(IndexError, match="position -1 "):
        layout.check_positions(torch.tensor([[2, -1]]), 5, "w", negative=False)
    with pytest.raises(IndexError, match="position -6 "):
        layout.check_positions(torch.tensor([-6, 0]), 5, "w", negative=True)
    with pytest.raises(IndexError, match="position 7 "):
        layout.check_positions(torch.tensor([7], dtype=torch.int32), 3, "w", negative=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool],
                         ids=str)
def test_take_on_every_dim_with_negative_and_2d_positions(dtype):
    x = _make((3, 4, 5), dtype, seed=5)
    for src in (x, x.transpose(0, 2).contiguous().transpose(0, 2)):
        for dim in range(3):
            n = x.shape[dim]
            for positions in (torch.tensor([0, n - 1, -1, -n, 1]),
                              torch.tensor([[1, -2], [0, n - 1], [-1, -1]]),
                              torch.tensor([-1], dtype=torch.int32),
                              torch.empty(0, dtype=torch.int64)):
                want = src[(slice(None),) * dim + (positions,)]
                _same(layout.take(src, dim, positions), want)
                _same(layout.take(src, dim - 3, positions), want)


def test_index_with_several_broadcast_position_tensors():
    x = torch.randn(3, 4, 5, 6).transpose(1, 3)  # [3, 6, 5, 4], strided
    i = torch.tensor([[0, -1, 2]]).T  # [3, 1]
    j = torch.tensor([1, -2])  # [2]: broadcast with i to [3, 2]
    for dim in range(3):
        want = x[(slice(None),) * dim + (i, j)]
        _same(layout.index(x, dim, [i, j]), want)
    t = torch.tensor([[0, 1], [2, 3]]).t()  # strided positions
    _same(layout.index(x, 1, [t, t, t]), x[:, t, t, t])
    _same(layout.index(x, 1, [torch.tensor(2), torch.tensor([1, 0])]),
          x[:, torch.tensor(2), torch.tensor([1, 0])])
    _same(layout.index(x, 0, [torch.tensor(-1)]), x[torch.tensor(-1)])
    with pytest.raises(ValueError, match="position tensors"):
        layout.index(x, 2, [i, j, j])


def test_take_embedding_like_and_refusals():
    weight = torch.randn(10, 6)
    ids = torch.tensor([[1, 9, 0], [4, 4, 2]])
    _same(layout.take(weight, 0, ids), F.embedding(ids, weight))
    with pytest.raises(ValueError, match="int32 or int64"):
        layout.take(weight, 0, ids.float())


def test_gather_matches_torch():
    g = torch.Generator().manual_seed(7)
    x2 = torch.randn(3, 5, generator=g)
    for dim in (0, 1, -1):
        pos = torch.randint(0, x2.shape[dim], (2, 4) if dim == 0 else (3, 7), generator=g)
        _same(layout.gather(x2, dim, pos), torch.gather(x2, dim, pos))
    x4 = torch.randn(3, 4, 5, 6, generator=g)
    for dim in range(4):
        pos = torch.randint(0, x4.shape[dim], (2, 3, 3, 4), generator=g)
        _same(layout.gather(x4, dim, pos), torch.gather(x4, dim, pos))
    # strided input and positions, int32 positions, integer data
    xt = x4.transpose(1, 3)
    pos = torch.randint(0, xt.shape[2], (2, 7, 5, 3), generator=g).transpose(1, 2)
    _same(layout.gather(xt, 2, pos), torch.gather(xt, 2, pos))
    xi = torch.arange(60, dtype=torch.int64).reshape(3, 4, 5)
    pos32 = torch.randint(0, 4, (3, 6, 2), generator=g, dtype=torch.int32)
    _same(layout.gather(xi, 1, pos32), torch.gather(xi, 1, pos32.long()))
    empty = torch.empty(3, 0, dtype=torch.int64)
    _same(layout.gather(x2, 1, empty), torch.gather(x2, 1, empty))


# --- merging dims, wide offsets -----------------------------------------------------------------


def test_more_than_six_dims_work_when_they_merge():
    x = torch.randn(2, 3, 2, 2, 2, 2, 2, 2)
    p = x.transpose(0, 1)  # dims 2.. merge into one: 3 dims after merging
    _same(layout.contiguous(p), p.contiguous())
    y = torch.randn(2, 1, 2, 1, 3, 1, 2, 1, 2)
    q = y.permute(8, 6, 4, 2, 0, 1, 3, 5, 7)  # size-1 dims are dropped: 5 dims
    _same(layout.contiguous(q), q.contiguous())
    e = torch.randn(2, 1, 3, 1, 1, 1, 1).expand(2, 2, 3, 2, 2, 2, 2)
    _same(layout.contiguous(e), e.contiguous())
    _same(layout.pad(x, (1, 1)), F.pad(x, (1, 1)))


def test_more_than_six_dims_that_do_not_merge():
    """copy and pad refuse them by name; contiguous, which GEMM / conv / scan wrappers call on
    inputs of any rank, falls back to torch's copy for them."""
    x = torch.randn(*[2] * 7)
    p = x.permute(6, 4, 2, 0, 5, 3, 1)
    with pytest.raises(ValueError, match=f"7 dims after merging; the kernel takes "
                                         f"{layout.MAX_RANK}"):
        layout.copy(p, torch.empty(p.shape))
    assert not layout.fits(p, torch.empty(p.shape))
    _same(layout.contiguous(p), p.contiguous())
    _same(layout.memory_format(p[..., 0, 0, 0], "nhwc"), p[..., 0, 0, 0])
    with pytest.raises(ValueError, match="dims after merging"):
        layout.pad(torch.randn(*[2] * 7), (1, 1) * 7)


def test_wide_offsets_path_gives_the_same_results(monkeypatch):
    """Past 2**31 elements (or a reach that far) the kernel computes offsets in 64 bits; with the
    limit lowered every launch here takes that path and must give the same results."""
    wide_flags = []
    real_kernel = layout._kernel

    def spy(rank, modes, dtype, wide, *rest):
        wide_flags.append(wide)
        return real_kernel(rank, modes, dtype, wide, *rest)

    monkeypatch.setattr(layout, "_kernel", spy)
    monkeypatch.setattr(layout, "_INT32_LIMIT", 8)
    x = torch.randn(3, 4, 5)
    _same(layout.contiguous(x.permute(2, 0, 1)), x.permute(2, 0, 1).contiguous())
    _same(layout.pad(x, (1, 2, 0, 1), "reflect"), F.pad(x, (1, 2, 0, 1), mode="reflect"))
    pos = torch.tensor([[-1, 0], [2, 1]])
    _same(layout.take(x, 1, pos), x[:, pos])
    g = torch.randint(0, 5, (3, 4, 2))
    _same(layout.gather(x, 2, g), torch.gather(x, 2, g))
    assert wide_flags and all(wide_flags)


# --- lowering: whole modules through compile(..., "cuda") ---------------------------------------


class _Layout(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 6)
        self.register_buffer("idx", torch.tensor([3, 0, -1, 2]))

    def forward(self, x, ids, pos):
        a = x.permute(0, 2, 1, 3)  # [2, 4, 3, 5]
        b = a.reshape(2, 4, 15)  # not a view of x: the copy kernel
        c = b.transpose(1, 2)  # [2, 15, 4]
        d = c[:, ::2, 1:]  # [2, 8, 3]
        e = d.unsqueeze(1).squeeze(1)
        f = e[:, :1, :].expand(2, 8, 3)
        g1, g2 = torch.split(d, [5, 3], dim=1)
        h1, h2 = torch.chunk(f, 2, dim=1)
        k = torch.cat([g1, h2, g2, h1], dim=1)  # [2, 16, 3]
        padded = F.pad(k, (1, 2, 0, 1), value=-1.5)
        reflected = F.pad(k, (2, 1), mode="reflect")
        picked = x[:, :, self.idx]  # [2, 3, 4, 5], a negative position
        first = x[:, 0]  # select
        return (padded, reflected, picked, self.emb(ids), torch.gather(x, 3, pos), first)


VIEW_OPS = {"permute", "slice", "select", "squeeze", "unsqueeze", "expand", "split"}


def _layout_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 5, generator=g)
    ids = torch.tensor([[1, 9, 0], [4, 4, 2]])
    pos = torch.randint(0, 5, (2, 3, 4, 2), generator=g)
    return x, ids, pos


@pytest.fixture(scope="module")
def layout_model():
    model = _Layout().eval()
    return model, fxforge.compile(model, "cuda", autotune=False)


def _assert_all_close(got, want, exact=False):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if exact or not b.dtype.is_floating_point:
            _same(a, b)
        else:
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layout_module_runs_on_kernels_and_views(layout_model):
    model, fast = layout_model
    for seed in (0, 1):  # the second call runs the generated straight-line code
        inputs = _layout_inputs(seed)
        with torch.no_grad():
            _assert_all_close(fast(*inputs), model(*inputs), exact=True)
    kernels = fast.report.latest.kernels
    ops = {k.op for k in kernels}
    assert {"reshape", "cat", "pad", "index", "embedding", "gather"} <= ops, ops
    assert VIEW_OPS <= ops, ops
    on_torch = [k for k in kernels if k.kernel is None]
    assert not on_torch, on_torch
    for k in kernels:
        if k.op in VIEW_OPS:
            assert k.kernel.startswith("view"), k
        else:
            assert not k.kernel.startswith("view"), k
    assert {k.kernel for k in kernels if k.op == "pad"} == {"pad (constant, copy kernel)",
                                                            "pad (reflect, copy kernel)"}
    text = str(fast.report)
    assert ALL_VIEWS_LINE in text
    assert "0 on the torch backend" in text


def test_embedding_out_of_range_raises_naming_the_position(layout_model):
    model, fast = layout_model
    x, ids, pos = _layout_inputs()
    bad = torch.tensor([[1, 10, 0], [4, 4, 2]])
    for _ in range(2):  # the straight-line code's error, then the loop's, are the same
        with pytest.raises(ExecutionError, match=r"embedding.*position 10 is out of range"):
            fast(x, bad, pos)
        fast(x, ids, pos)
    negative = torch.tensor([[1, -1, 0], [4, 4, 2]])
    with pytest.raises(ExecutionError, match="position -1 is out of range"):
        fast(x, negative, pos)
    with pytest.raises(IndexError):  # what eager says
        model(x, bad, pos)


def test_gather_out_of_range_positions_raise(layout_model):
    _, fast = layout_model
    x, ids, pos = _layout_inputs()
    bad = pos.clone()
    bad[1, 2, 3, 0] = 5
    with pytest.raises(ExecutionError, match=r"gather.*position 5 is out of range"):
        fast(x, ids, bad)


class _RuntimeIndex(nn.Module):
    def forward(self, x, idx):
        return x[:, idx] * 2


def test_index_by_a_computed_tensor_checks_at_run_time():
    model = _RuntimeIndex()
    x = torch.randn(3, 5)
    fast = fxforge.compile(model, "cuda", autotune=False)
    idx = torch.tensor([[4, -5], [0, -1]])
    _assert_all_close(fast(x, idx), model(x, idx), exact=True)
    assert all(k.kernel is not None for k in fast.report.latest.kernels)
    with pytest.raises(ExecutionError, match="position -6 is out of range"):
        fast(x, torch.tensor([[4, -6], [0, -1]]))
    with pytest.raises(ExecutionError, match="position 5 is out of range"):
        fast(x, torch.tensor([[5, 0], [0, -1]]))


class _TwoIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("i", torch.tensor([[0], [-1]]))
        self.register_buffer("j", torch.tensor([2, 1, -3]))

    def forward(self, x, k):
        return x[:, self.i, self.j], x[k, k]


def test_index_by_two_tensors_runs_on_the_kernel():
    model = _TwoIndices()
    x = torch.randn(2, 3, 4)
    k = torch.tensor([1, 0, -1])
    fast = fxforge.compile(model, "cuda", autotune=False)
    _assert_all_close(fast(x, k), model(x, k), exact=True)
    kernels = fast.report.latest.kernels
    assert [k_.op for k_ in kernels] == ["index", "index"]
    assert all(k_.kernel is not None and k_.kernel.startswith("index") for k_ in kernels)
    with pytest.raises(ExecutionError, match="position 2 is out of range for a dim of size 2"):
        fast(x, torch.tensor([2, 0]))


class _ConvLayout(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        z = torch.cat([y, x], 1)
        return F.pad(z, (1, 1, 2, 0), mode="replicate"), z.permute(0, 2, 3, 1).reshape(2, -1, 6)


def test_channels_last_graph_uses_memory_format_kernels():
    model = _ConvLayout().eval()
    x = torch.randn(2, 2, 5, 5)
    fast = fxforge.compile(model, "cuda", autotune=False)
    with torch.no_grad():
        _assert_all_close(fast(x), model(x))
    kernels = fast.report.latest.kernels
    formats = [k for k in kernels if k.op == "memory_format"]
    assert formats and all(k.kernel.startswith("storage order to") for k in formats)
    assert all(k.kernel is not None for k in kernels), kernels
    assert ALL_VIEWS_LINE in str(fast.report)


class _SevenDims(nn.Module):
    def forward(self, x):
        return x.permute(6, 4, 2, 0, 5, 3, 1).reshape(-1) + 1


class _SevenDimsMerging(nn.Module):
    def forward(self, x):
        return x.transpose(0, 1).reshape(-1) + 1


def test_seven_dim_reshape_that_merges_compiles():
    model = _SevenDimsMerging()
    x = torch.randn(2, 3, 2, 2, 2, 2, 2)
    fast = fxforge.compile(model, "cuda", autotune=False)
    _assert_all_close(fast(x), model(x), exact=True)


def test_seven_dim_reshape_that_cannot_merge_still_runs():
    model = _SevenDims()
    x = torch.randn(*[2] * 7)
    fast = fxforge.compile(model, "cuda", autotune=False)
    _assert_all_close(fast(x), model(x), exact=True)


# --- lowering: node by node, against the numpy reference ----------------------------------------


def test_ir_graph_of_layout_nodes_matches_the_reference():
    b = GraphBuilder()
    x = Value("x", TensorType((3, 4, 5), "f32"))
    ids = Value("ids", TensorType((2, 3), "i64"))
    w = b.const(np.arange(24, dtype=np.float32).reshape(6, 4))
    positions = b.const(np.array([[-1, 0], [2, -4]], dtype=np.int64))
    gpos = b.const(np.array([[[4, 0], [1, 1]], [[-0, 3], [2, 4]]], dtype=np.int64))
    t = b("permute", [x], dims=(2, 0, 1))  # [5, 3, 4]
    r = b("reshape", [t], shape=(15, 4))
    taken = b("index", [x, positions], dim=1)  # [3, 2, 2, 5]
    emb = b("embedding", [w, ids])  # [2, 3, 4]
    gat = b("gather", [x, gpos], dim=2)  # [2, 2, 2]
    padded = b("pad", [t], pads=(1, 2, 2, 0), mode="reflect", value=0.0)
    rep = b("pad", [emb], pads=(0, 1, 1, 1), mode="replicate", value=0.0)
    cat = b("cat", [r, r], dim=0)
    graph = Graph((x, ids), tuple(b.nodes), (taken, gat, padded, rep, cat))
    program = TritonProgram(graph, torch.device("cpu"), autotune=False)
    assert all(a.kernel is not None for a in program.assignments), program.assignments
    xs = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    ids_v = np.array([[5, 0, 1], [3, 3, 2]], dtype=np.int64)
    want = run_reference(graph, [xs, ids_v])
    got = program([torch.from_numpy(xs), torch.from_numpy(ids_v)])
    for g, r_ in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), r_)


def _node(op, inputs, **attrs):
    b = GraphBuilder()
    b(op, inputs, **attrs)
    return b.nodes[-1]


def test_constant_positions_are_checked_when_lowered():
    b = GraphBuilder()
    x = Value("x", TensorType((3, 4), "f32"))
    c = b.const(np.array([0, 4], dtype=np.int64))
    b("index", [x, c], dim=1)
    why = lower(b.nodes[-1], Context({c.name: torch.tensor([0, 4])}))
    assert isinstance(why, str) and "position 4 is out of range" in why  # torch says it again
    ok = lower(b.nodes[-1], Context({c.name: torch.tensor([0, -4])}))
    assert isinstance(ok, Lowered) and ok.kernel.startswith("index")


def test_layout_rules_decline_what_they_cannot_do():
    w = Value("w", TensorType((5, 3), "f32"))
    i16 = Value("i16", TensorType((2,), "i16"))
    why = lower(_node("embedding", [w, i16]), Context({}))
    assert isinstance(why, str) and "i16" in why
    why = lower(_node("gather", [w, Value("g", TensorType((5, 3), "i16"))], dim=0), Context({}))
    assert isinstance(why, str) and "i16" in why
    xf = Value("xf", TensorType((3, 4), "f32"))
    xh = Value("xh", TensorType((3, 4), "f16"))
    mixed = _node("cat", [xf, xh], dim=0)  # the IR promotes to f32; the kernel copies as is
    why = lower(mixed, Context({}))
    assert isinstance(why, str) and "dtypes" in why


# --- pow by a constant --------------------------------------------------------------------------


class _Pows(nn.Module):
    def forward(self, x):
        pos = x.abs() + 0.1
        rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x.pow(2).mean(-1), pos ** 0.5, x ** 1, rms, torch.pow(x, 2.0)


def test_pow_by_2_half_and_1_run_on_kernels():
    """x ** 2 and x ** 1 become mul / identity steps; x ** 0.5 stays pow (on torch), since sqrt
    differs from the reference's pow at -inf and -0.0."""
    model = _Pows()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    fast = fxforge.compile(model, "cuda", autotune=False)
    got, want = fast(x), model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    kernels = fast.report.latest.kernels
    on_torch = [k for k in kernels if k.kernel is None]
    assert len(on_torch) == 1 and "pow" in on_torch[0].reason, on_torch
    labels = " ".join(k.kernel for k in kernels if k.kernel)
    assert "pow" not in labels and "identity" in labels and "mul" in labels


class _Cube(nn.Module):
    def forward(self, x):
        return x ** 3


def test_pow_by_3_stays_on_torch_with_a_reason():
    model = _Cube()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    fast = fxforge.compile(model, "cuda", autotune=False)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-6, atol=1e-7)
    on_torch = [k for k in fast.report.latest.kernels if k.kernel is None]
    assert on_torch and all("pow" in k.reason for k in on_torch), on_torch
    assert ALL_VIEWS_LINE not in str(fast.report)


class _IntPow(nn.Module):
    def forward(self, x):
        return x ** 2, x ** 0.5, x ** 1.0


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt")
def test_integer_pow_by_an_integer_matches_eager():
    model = _IntPow()
    x = torch.tensor([3, 50000, -46341, 7, 0], dtype=torch.int32)
    fast = fxforge.compile(model, "cuda", autotune=False)
    got, want = fast(x), model(x)
    _same(got[0], want[0])  # int32 ** 2 wraps as torch's does
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=0, equal_nan=True)
    _same(got[2], want[2])


class _IntPowFloat(nn.Module):
    def forward(self, x):
        return x ** 2.0


def test_integer_pow_by_a_float_two_matches_eager():
    model = _IntPowFloat()
    x = torch.tensor([3, 50000, -46341, 7], dtype=torch.int32)
    fast = fxforge.compile(model, "cuda", autotune=False)
    want = model(x)
    assert want.dtype == torch.float32
    _same(fast(x), want)


def test_pow_rewrite_needs_a_constant_scalar():
    x = Value("x", TensorType((4,), "f32"))
    # not 0.5: sqrt differs from pow at -inf and -0.0
    for value, rewritten in [(2.0, "mul"), (0.5, None), (1.0, "identity"), (3.0, None),
                             (-1.0, None)]:
        b = GraphBuilder()
        c = b.const(np.array(value, dtype=np.float32))
        b("pow", [x, c])
        got = lower(b.nodes[-1], Context({c.name: torch.tensor(value)}))
        if rewritten is None:
            assert isinstance(got, str) and "pow" in got, got
        else:
            assert isinstance(got, Lowered) and rewritten in got.kernel, got
    # an exponent that is not a constant, or not one number
    y = Value("y", TensorType((), "f32"))
    assert isinstance(lower(_node("pow", [x, y]), Context({})), str)
    b = GraphBuilder()
    c = b.const(np.array([2.0, 2.0, 2.0, 2.0], dtype=np.float32))
    b("pow", [x, c])
    assert isinstance(lower(b.nodes[-1], Context({c.name: torch.full((4,), 2.0)})), str)


# --- bitwise ops --------------------------------------------------------------------------------


class _Bitwise(nn.Module):
    def forward(self, a, b, i, j):
        m1, m2 = a > 0, b > 0
        return (m1 & m2, m1 | m2, m1 ^ m2, ~m1, (m1 & ~m2) | (m2 ^ (a > b)),
                i & j, i | j, i ^ j, ~i, torch.logical_and(m1, m2))


def test_bitwise_on_bool_masks_and_int32_run_on_kernels():
    model = _Bitwise()
    g = torch.Generator().manual_seed(4)
    args = (torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g),
            torch.randint(-100, 100, (4, 5), generator=g, dtype=torch.int32),
            torch.randint(-(2**31), 2**31 - 1, (4, 5), generator=g, dtype=torch.int32))
    fast = fxforge.compile(model, "cuda", autotune=False)
    _assert_all_close(fast(*args), model(*args), exact=True)
    kernels = fast.report.latest.kernels
    assert all(k.kernel is not None for k in kernels), kernels
    ops = {k.op for k in kernels}
    assert {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not"} <= ops or \
        "fused_elementwise" in ops, ops


# --- property: permute -> reshape -> cat -> pad -------------------------------------------------


def _case(rng: random.Random):
    rank = rng.randint(2, 4)
    shape = [rng.randint(1, 4) for _ in range(rank)]
    perm = list(range(rank))
    rng.shuffle(perm)
    dtype = rng.choice([torch.float32, torch.float16, torch.int64, torch.bool])
    # reshape: merge a random run of adjacent dims of the permuted shape (or split the last)
    permuted = [shape[p] for p in perm]
    if rng.random() < 0.25 and permuted[-1] % 2 == 0:
        new = [*permuted[:-1], 2, permuted[-1] // 2]
    else:
        lo = rng.randrange(rank - 1)
        hi = rng.randint(lo + 1, rank - 1)
        merged = 1
        for z in permuted[lo:hi + 1]:
            merged *= z
        new = [*permuted[:lo], merged, *permuted[hi + 1:]]
    cat_dim = rng.randrange(len(new))
    other = list(new)
    other[cat_dim] = rng.randint(0, 3)
    mode = rng.choice(["constant", "constant", "reflect", "replicate"])
    nd = len(new)
    # F.pad's non-constant modes pad the last k dims of a (k+1)- or (k+2)-D input, k <= 3
    ks = [k for k in (1, 2, 3) if nd - 2 <= k <= nd - 1] if mode != "constant" else \
        list(range(1, nd + 1))
    if not ks:
        mode, ks = "constant", list(range(1, nd + 1))
    k = rng.choice(ks)
    return shape, perm, dtype, new, cat_dim, other, mode, k


@pytest.mark.parametrize("seed", range(30))
def test_property_permute_reshape_cat_pad(seed):
    rng = random.Random(seed)
    shape, perm, dtype, new, cat_dim, other, mode, k = _case(rng)
    x = _make(tuple(shape), dtype, seed)
    y = _make(tuple(other), dtype, seed + 100)
    if rng.random() < 0.5 and y.dim() >= 2:  # the other piece in another storage order
        y = y.transpose(0, -1).contiguous().transpose(0, -1)
    want = torch.cat([x.permute(perm).reshape(new), y], cat_dim)
    got = layout.cat([layout.reshape(x.permute(perm), new), y], cat_dim)
    _same(got, want)
    pads = []
    for d in range(k):
        size = want.shape[want.dim() - 1 - d]
        limit = size - 1 if mode == "reflect" else 3
        pads += [rng.randint(0, max(limit, 0)), rng.randint(0, max(limit, 0))]
    if mode != "constant" and 0 in want.shape:
        mode = "constant"
    if mode == "constant" and dtype == torch.bool:
        value = rng.choice([0.0, 1.0])
    elif mode == "constant":
        value = rng.choice([0.0, -2.0, 3.0]) if not dtype.is_floating_point else \
            rng.choice([0.0, -2.5, float("-inf"), float("nan")])
    else:
        value = 0.0
    if mode == "constant":
        expected = F.pad(want, pads, mode=mode, value=value)
    elif dtype == torch.bool:  # torch's reflect / replicate take no bool: pad it as uint8
        expected = F.pad(want.to(torch.uint8), pads, mode=mode).bool()
    else:
        expected = F.pad(want, pads, mode=mode)
    _same(layout.pad(got, pads, mode, value), expected)
