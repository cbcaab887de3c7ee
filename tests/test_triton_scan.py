"""cumsum's row-scan kernel and multi-tensor indexing (the last two ops of the transformers zoo
to get kernels): exact against the numpy reference and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxforge import dtypes
from fxforge.kernels import reference as ref
from fxforge.kernels.triton import layout, reduce


@pytest.mark.parametrize(("shape", "dim", "dtype", "out"), [
    ((3, 40), 1, torch.int32, torch.int64),       # RoBERTa's position ids
    ((5, 3000), 1, torch.float32, torch.float32),  # longer than one column chunk
    ((4, 7, 6), 0, torch.float16, torch.float16),  # a leading dim: rows are strided
    ((4, 7, 6), 1, torch.float32, torch.float16),  # dtype=: converted first, as torch does
    ((2, 9), -1, torch.bool, torch.int64),
    ((), 0, torch.float32, torch.float32),
])
def test_cumsum_matches_reference_exactly(shape, dim, dtype, out):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen) > 0.5 if dtype == torch.bool else \
        (torch.randn(shape, generator=gen) * 10).to(dtype)
    got = reduce.cumsum(x, dim, out)
    asked = None if out == torch.int64 and not x.dtype.is_floating_point else \
        dtypes.from_torch(out)
    want = ref.cumsum(x.numpy(), dim=dim, dtype=asked)
    assert got.dtype == out and got.shape == x.shape
    np.testing.assert_array_equal(got.numpy(), want.astype(got.numpy().dtype))
    assert torch.equal(got, torch.cumsum(x, dim, dtype=out))


def test_cumsum_refuses_a_bool_result():
    with pytest.raises(ValueError, match="bool"):
        reduce.cumsum(torch.ones(3, dtype=torch.bool), 0, torch.bool)


def test_index_with_two_position_tensors():
    x = torch.randn(3, 4, 5, 6)
    rows, cols = torch.tensor([[0], [2], [-1]]), torch.tensor([1, 3, -2, 0])
    assert torch.equal(layout.index(x, 1, [rows, cols]), x[:, rows, cols])
    assert torch.equal(layout.index(x, 0, [rows, cols]), x[rows, cols])
    # BERT's mask lookup: a bool [1, L] mask at [0-d-like, arange] positions
    mask = torch.rand(1, 16) > 0.3
    first, positions = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(16).view(1, 1, 1,
                                                                                        16)
    assert torch.equal(layout.index(mask, 0, [first, positions]), mask[first, positions])


def test_index_refuses_too_many_position_tensors():
    with pytest.raises(ValueError, match="position tensors"):
        layout.index(torch.zeros(2, 3), 1, [torch.tensor([0]), torch.tensor([0])])
