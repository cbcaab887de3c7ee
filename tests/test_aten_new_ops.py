"""aten ops that transformers models hit in their mask, position and rotary code (and MobileNet's
TF-style padding), each used the way those models use it: it must compile to IR ops with no
opaque fallback (issue #15) and agree with eager torch on the `reference` and `cpu` targets.
Capture compares each converter's result type with torch's, so a wrong shape or dtype shows up
as a fallback: `fallbacks == []` is the sharp check, the comparison with eager the other one.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from eager_match import compiled_matches

import fxforge

TARGETS = ["reference", "cpu"]


def _ops(compiled: fxforge.CompiledModel) -> set[str]:
    return {n.op for n in compiled.graph.nodes}


def _padded_mask(batch: int = 2, length: int = 8) -> torch.Tensor:
    """transformers' attention_mask: ones, the last row ending in padding."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length * 3 // 4:] = 0
    return mask


# --- bool mask logic (BERT, GPT-2, Llama: causal & padding masks) -------------------------------


class CausalAndPadding(nn.Module):
    """masking_utils: a causal mask and-ed with the padding mask, plus the other bool ops."""

    def forward(self, attention_mask):
        length = attention_mask.shape[1]
        padding = attention_mask.bool()[:, None, None, :]
        positions = torch.arange(length)
        causal = (positions[None, :] <= positions[:, None])[None, None]
        both = causal & padding
        either = causal | padding
        differ = torch.bitwise_xor(causal, padding)
        hidden = ~both
        keep = attention_mask[:, None, None, :]
        logic = torch.logical_and(keep, causal) | torch.logical_not(keep)
        return both, either, differ, hidden, logic, torch.logical_or(keep > 0, causal)


class IntegerBits(nn.Module):
    """Bitwise ops on integer tensors, with python numbers (Scalar overloads) on either side."""

    def forward(self, ids):
        return ids & 3, 6 | ids, ids ^ (ids * 3), ~ids, torch.bitwise_and(ids, True)


@pytest.mark.parametrize("target", TARGETS)
def test_bool_mask_logic(target):
    compiled = compiled_matches(CausalAndPadding(), (_padded_mask(),), target)
    assert {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not"} <= _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_integer_bitwise_ops(target):
    ids = torch.randint(-20, 20, (2, 7))
    compiled_matches(IntegerBits(), (ids,), target)


# --- position ids (RoBERTa, GPT-2's padded positions) -------------------------------------------


class PositionIds(nn.Module):
    """RoBERTa's create_position_ids_from_input_ids, GPT-2-style mask cumsum, and cumsum with
    dtype= on a bool mask (torch gives int64 without it)."""

    def forward(self, input_ids, attention_mask):
        mask = input_ids.ne(1).int()
        incremental = torch.cumsum(mask, dim=1).type_as(mask) * mask
        roberta = incremental.long() + 1
        gpt2 = torch.cumsum(attention_mask, dim=-1) * attention_mask - 1
        as_float = torch.cumsum(attention_mask.bool(), dim=1, dtype=torch.float32)
        return roberta, gpt2, as_float, torch.cumsum(attention_mask.bool(), 0)


@pytest.mark.parametrize("target", TARGETS)
def test_cumsum_position_ids(target):
    ids = torch.randint(0, 10, (2, 8))
    compiled = compiled_matches(PositionIds(), (ids, _padded_mask()), target)
    assert "cumsum" in _ops(compiled)


class RunningMean(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=-2) / torch.arange(1, x.shape[-2] + 1)[:, None]


@pytest.mark.parametrize("target", TARGETS)
def test_cumsum_float(target):
    compiled_matches(RunningMean(), (torch.randn(2, 5, 3),), target)


# --- advanced indexing ----------------------------------------------------------------------------


class TakeAlong(nn.Module):
    """x[:, :, idx] with a buffer of indices (negative ones wrap), x[..., idx], x[idx] and a 2-d
    index tensor."""

    def __init__(self):
        super().__init__()
        self.register_buffer("idx", torch.tensor([0, -1, 2, 2]))
        self.register_buffer("grid", torch.tensor([[2, 0], [-2, 1], [-3, 2]]))

    def forward(self, x):
        return x[:, :, self.idx], x[..., self.idx], x[self.idx], x[:, self.grid]


class MaskLookup(nn.Module):
    """masking_utils' padding_mask[batch_idx, kv_idx]: two index tensors that broadcast."""

    def forward(self, attention_mask):
        batch, length = attention_mask.shape
        batch_idx = torch.arange(batch)[:, None, None, None]
        kv_idx = torch.arange(length)[None, None, None, :]
        return attention_mask.bool()[batch_idx, kv_idx]


@pytest.mark.parametrize("target", TARGETS)
def test_index_one_tensor(target):
    compiled = compiled_matches(TakeAlong(), (torch.randn(5, 3, 6),), target)
    assert "index" in _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_index_mask_lookup(target):
    compiled = compiled_matches(MaskLookup(), (_padded_mask(),), target)
    assert "index" in _ops(compiled)


class SplitIndices(nn.Module):
    def forward(self, x, i):
        return x[i, :, i]  # torch moves the indexed dims to the front: not an IR index


def test_index_with_a_slice_between_falls_back():
    x, i = torch.randn(4, 3, 4), torch.tensor([0, 3])
    compiled = fxforge.compile(SplitIndices(), "cpu", example_inputs=(x, i))
    assert [f.aten for f in compiled.report.fallbacks] == ["aten.index.Tensor"]
    torch.testing.assert_close(compiled(x, i), x[i, :, i])


# --- padding (MobileNetV2's TF "same" padding, reflect and replicate) --------------------------


class Pads(nn.Module):
    def forward(self, x):
        return (F.pad(x, (0, 1, 0, 1)), F.pad(x, (1, 2, 0, 0), value=-1.5),
                F.pad(x, (2, 1, 1, 2), mode="reflect"), F.pad(x, (3, 0, 0, 4), mode="replicate"),
                F.pad(x[0], (1, 1), mode="reflect"), F.pad(x, (0, 0)),
                torch.constant_pad_nd(x, (1, 1, 1, 1, 1, 1), 0.5))


class TfSamePadConv(nn.Module):
    """MobileNetV2 (transformers, tf_padding=True): pad right/bottom, then a stride-2 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


@pytest.mark.parametrize("target", TARGETS)
def test_pad_modes(target):
    compiled = compiled_matches(Pads(), (torch.randn(2, 3, 5, 6),), target)
    assert "pad" in _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_tf_same_padding_before_conv(target):
    compiled_matches(TfSamePadConv(), (torch.randn(2, 3, 8, 8),), target)


class IntegerPad(nn.Module):
    def forward(self, ids):
        return F.pad(ids, (0, 2), value=0), F.pad(ids > 0, (1, 0), value=True)


@pytest.mark.parametrize("target", TARGETS)
def test_pad_integer_and_bool(target):
    compiled_matches(IntegerPad(), (torch.randint(-5, 5, (2, 6)),), target)


class Crop(nn.Module):
    def forward(self, x):
        return F.pad(x, (-1, 1))


def test_negative_pad_falls_back():
    x = torch.randn(2, 5)
    compiled = fxforge.compile(Crop(), "cpu", example_inputs=(x,))
    assert [f.aten for f in compiled.report.fallbacks] == ["aten.pad.default"]
    torch.testing.assert_close(compiled(x), F.pad(x, (-1, 1)))


# --- rotary embeddings (Llama, Qwen2) and T5's min --------------------------------------------


class Rotary(nn.Module):
    """Llama's rotary embedding: inv_freq outer positions, cat, cos/sin, rotate_half."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))

    def forward(self, q, position_ids):
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        half = q.shape[-1] // 2
        rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
        return q * cos + rotated * sin


@pytest.mark.parametrize("target", TARGETS)
def test_rotary_sin_cos(target):
    q = torch.randn(2, 4, 16, 8)
    positions = torch.arange(16)[None].expand(2, -1) + 500
    compiled = compiled_matches(Rotary(), (q, positions), target)
    assert {"sin", "cos"} <= _ops(compiled)


class MinMax(nn.Module):
    """T5's relative-position buckets: torch.min(a, b) / torch.max(a, b) (aten.min.other)."""

    def forward(self, x, buckets):
        large = torch.min(buckets, torch.full_like(buckets, 7))
        return torch.min(x, x * x), torch.max(x, torch.zeros_like(x)), large


@pytest.mark.parametrize("target", TARGETS)
def test_min_max_other(target):
    compiled = compiled_matches(MinMax(), (torch.randn(3, 5), torch.randint(0, 12, (4, 4))),
                                 target)
    assert {"minimum", "maximum"} <= _ops(compiled)
