"""Edge cases of the Triton backend's layout, pow and scan rules, the CUDA-graph report line and
the archive (each found by review; under the interpreter)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxforge
from fxforge import zoo
from fxforge.errors import ExecutionError
from fxforge.kernels import reference as ref
from fxforge.kernels.triton import jit, layout, reduce
from fxforge.report import CompileRecord, Report


def _cuda(model, *x):
    fast = fxforge.compile(model, "cuda", autotune=False)
    return fast, fast(*x)


def _left(fast) -> dict[str, str]:
    return {a.op: a.reason for a in fast.report.latest.kernels if a.kernel is None}


def test_int32_positions_take_64_bit_offsets_when_wide(monkeypatch):
    """int32 positions times a row stride can pass 2**31: on the wide path they are widened
    before the multiply (a large vocab x hidden table read by int32 token ids)."""
    monkeypatch.setattr(layout, "_INT32_LIMIT", 8)
    x = torch.randn(5, 6)
    positions = torch.tensor([4, 0, -1, 2], dtype=torch.int32)
    assert torch.equal(layout.take(x, 0, positions), x[positions.long()])
    sources = [s for s in jit.generated_sources() if "idx0" in s and "tl.int64" in s]
    assert any("p0 = p0.to(tl.int64)" in s for s in sources)


class _Pow(nn.Module):
    def __init__(self, exponent: torch.Tensor):
        super().__init__()
        self.register_buffer("e", exponent)

    def forward(self, x):
        return x ** self.e


@pytest.mark.parametrize(("x", "exponent"), [
    (torch.tensor([1.5, -2.0, 3.0]), torch.full((1, 1), 2.0)),  # broadcasts to [1, 3]
    (torch.tensor([300.0, 2.0], dtype=torch.float16), torch.tensor([2.0])),  # promotes to f32
    (torch.tensor([-float("inf"), -0.0, 4.0, -1.0]), torch.tensor(0.5)),  # sqrt would differ
    (torch.tensor([3, 50000, -46341], dtype=torch.int32), torch.tensor(2.0)),  # int: no wrap
])
def test_pow_by_a_constant_is_rewritten_only_where_exact(x, exponent):
    model = _Pow(exponent)
    fast, got = _cuda(model, x)
    want = model(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want) or torch.allclose(got, want, rtol=1e-6, equal_nan=True)
    assert "pow" in _left(fast)  # none of these is x * x of the same type: pow stays on torch


def test_pow_by_two_of_the_same_type_becomes_a_multiply():
    fast, got = _cuda(_Pow(torch.tensor(2.0)), torch.tensor([1.5, -2.0, 1e20]))
    assert torch.equal(got, torch.tensor([1.5, -2.0, 1e20]) ** 2)
    assert not _left(fast)


class _Linear7(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x.permute(6, 5, 4, 3, 2, 1, 0)).cumsum(0)


def test_linear_and_cumsum_of_a_seven_dim_permuted_input():
    torch.manual_seed(0)
    model, x = _Linear7(), torch.randn(3, 2, 2, 2, 2, 2, 2)
    _, got = _cuda(model, x)
    with torch.no_grad():
        assert torch.allclose(got, model(x), rtol=1e-5, atol=1e-6)


class _ConstIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("i", torch.tensor([0, 7]))

    def forward(self, x):
        return x[:, self.i]


def test_out_of_range_constant_positions_are_a_typed_error():
    fast = fxforge.compile(_ConstIndex(), "cuda", autotune=False)
    with pytest.raises(ExecutionError, match="out of"):
        fast(torch.randn(2, 5))


def test_f64_pad_fill_is_exact():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(layout.pad(x, (1, 2), "constant", 0.1), F.pad(x, (1, 2), value=0.1))
    h = torch.randn(2, 3, dtype=torch.float16)
    assert torch.equal(layout.pad(h, (1, 1), "constant", 1e-3), F.pad(h, (1, 1), value=1e-3))


def test_cumsum_bf16_and_a_bool_result():
    """bf16 values are summed wide, like the reference: exact with an f32 result. A bf16 result
    is within one bf16 step (2**-7 relative): Triton's interpreter truncates f32 to bf16 where
    a GPU rounds to nearest. A bool result has no scan kernel."""
    x = torch.randn(3, 17).to(torch.bfloat16)
    want = torch.from_numpy(ref.cumsum(x.float().numpy(), dim=1, dtype=None)).float()
    assert torch.equal(reduce.cumsum(x, 1, torch.float32), want)
    got = reduce.cumsum(x, 1, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, rtol=2**-7, atol=0)
    with pytest.raises(ValueError, match="bool"):
        reduce.cumsum(x, 1, torch.bool)


def test_report_graph_line_is_live_and_to_dict_is_plain_data():
    status = ["on"]
    record = CompileRecord("sig", 0.0, 0.0, [], 1, 1, 0, 0, 0, 0, cuda_graphs="on",
                           graph_status=lambda: status[0])
    report = Report("cuda", [])
    report.records.append(record)
    status[0] = "off: capture failed: RuntimeError: boom"
    assert "CUDA graphs: off: capture failed" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["records"][0]["cuda_graphs"] == status[0]


def test_archive_keeps_cuda_graphs_false(tmp_path):
    model, x = zoo.build("mlp", 2)
    fast = fxforge.compile(model, "cuda", autotune=False, cuda_graphs=False)
    fast(*x)
    loaded = fxforge.load(fast.save(tmp_path / "mlp.fxf"))
    assert loaded._cuda_graphs is False
    assert torch.allclose(loaded(*x), fast(*x), rtol=1e-6)
