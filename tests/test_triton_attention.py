"""The fused attention kernel (kernels/triton/attention.py) against the numpy reference.

Runs on Triton's CPU interpreter (conftest.py), so sizes stay small: batch * heads <= 4 and
lengths <= 40, chosen so that Lq != Lk and neither is a multiple of the blocks (16 or 32), which
leaves partial key blocks for the online softmax and partial query tiles. The oracle is
`fxforge.kernels.reference.scaled_dot_product_attention` (float64, torch's safe softmax).
Tolerances: f32 inputs rtol 1e-4 / atol 1e-5 (f32 dots in "ieee" precision and f32 softmax
statistics); f16 inputs rtol 2e-3 / atol 2e-3 against the reference on the same f16 values
widened (p is rounded to f16 for p @ v, and the output to f16: 2**-11 relative each).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxforge import symdims
from fxforge.ir import TensorType
from fxforge.kernels import reference as ref
from fxforge.kernels.triton import attention as att

F32_TOL = dict(rtol=1e-4, atol=1e-5)
F16_TOL = dict(rtol=2e-3, atol=2e-3)
SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}  # several key blocks


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(abs(hash(repr(key))) % 2**32)


def _qkv(rng, batch, lq, lk, d, dv=None, dtype=np.float32):
    q = rng.standard_normal((*batch, lq, d)).astype(dtype)
    k = rng.standard_normal((*batch, lk, d)).astype(dtype)
    v = rng.standard_normal((*batch, lk, dv or d)).astype(dtype)
    return q, k, v


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _check(q, k, v, mask=None, *, is_causal=False, scale=None, config=None, tol=None):
    """Run the kernel on numpy inputs and compare with the reference; returns the result."""
    out = att.attention(_t(q), _t(k), _t(v), None if mask is None else _t(mask),
                        is_causal=is_causal, scale=scale, config=config)
    assert out.dtype == _t(q).dtype
    want = ref.scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, scale=scale)
    assert tuple(out.shape) == want.shape
    got = out.numpy().astype(np.float64)
    assert np.isfinite(got).all()
    tol = tol or (F16_TOL if q.dtype == np.float16 else F32_TOL)
    np.testing.assert_allclose(got, want, **tol)
    return got


# --- plain attention ----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [16, 32, 64, 80, 128])
@pytest.mark.parametrize("config", [None, SMALL])
def test_f32_head_dims(d, config):
    q, k, v = _qkv(_rng("f32", d), (2, 2), 37, 29, d)
    _check(q, k, v, config=config)


@pytest.mark.parametrize("d", [16, 32, 64, 80, 128])
def test_f16_head_dims(d):
    q, k, v = _qkv(_rng("f16", d), (1, 2), 21, 40, d, dtype=np.float16)
    _check(q, k, v, config=SMALL)


@pytest.mark.parametrize("lq, lk", [(1, 1), (1, 33), (33, 1), (40, 17), (17, 40)])
def test_lengths(lq, lk):
    q, k, v = _qkv(_rng("len", lq, lk), (1, 2), lq, lk, 16)
    _check(q, k, v, config=SMALL)


def test_value_dim_differs_and_wide_head():
    q, k, v = _qkv(_rng("dv"), (1, 1), 19, 23, 24, dv=48)  # d 24, dv 48: both padded
    _check(q, k, v, config=SMALL)
    q, k, v = _qkv(_rng("d256"), (1, 1), 9, 18, 256, dv=200)
    _check(q, k, v, config=SMALL)


def test_scale():
    q, k, v = _qkv(_rng("scale"), (2, 1), 25, 31, 32)
    a = _check(q, k, v, scale=0.37, config=SMALL)
    b = _check(q, k, v, scale=None, config=SMALL)
    assert np.abs(a - b).max() > 1e-3  # the scale reaches the kernel
    _check(q, k, v, scale=2.5, config=SMALL)


def test_ranks_and_batch_broadcast():
    rng = _rng("ranks")
    q, k, v = _qkv(rng, (3,), 20, 27, 16)
    _check(q, k, v, config=SMALL)  # rank 3: [B, L, D]
    q, k, v = _qkv(rng, (), 20, 27, 16)
    _check(q, k, v, config=SMALL)  # rank 2
    q = rng.standard_normal((2, 2, 20, 16)).astype(np.float32)
    k = rng.standard_normal((2, 1, 27, 16)).astype(np.float32)  # shared over heads
    v = rng.standard_normal((1, 2, 27, 16)).astype(np.float32)  # shared over batch
    _check(q, k, v, config=SMALL)


def test_empty():
    q, k, v = _qkv(_rng("empty"), (1, 2), 0, 5, 16)
    assert tuple(att.attention(_t(q), _t(k), _t(v)).shape) == (1, 2, 0, 16)
    q, k, v = _qkv(_rng("empty"), (1, 2), 6, 0, 16)
    out = att.attention(_t(q), _t(k), _t(v)).numpy()  # no key at all: zeros, as the reference
    np.testing.assert_array_equal(out, np.zeros((1, 2, 6, 16), np.float32))


# --- causal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lq, lk", [(37, 37), (21, 38), (38, 21)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_causal(lq, lk, dtype):
    q, k, v = _qkv(_rng("causal", lq, lk), (1, 2), lq, lk, 32, dtype=dtype)
    got = _check(q, k, v, is_causal=True, config=SMALL)
    # top-left aligned: query 0 sees only key 0, so its output is v[0]
    np.testing.assert_allclose(got[:, :, 0], v[:, :, 0].astype(np.float64), rtol=2e-3,
                               atol=2e-3)


def test_causal_default_config():
    q, k, v = _qkv(_rng("causal-default"), (2, 2), 40, 40, 16)
    _check(q, k, v, is_causal=True)


# --- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["full", "padding", "square", "row", "keys"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bool_masks(shape, dtype):
    b, h, lq, lk = 2, 2, 23, 35
    rng = _rng("bool", shape)
    q, k, v = _qkv(rng, (b, h), lq, lk, 16, dtype=dtype)
    if shape == "full":
        mask = rng.random((b, h, lq, lk)) < 0.6
    elif shape == "padding":  # [B, 1, 1, Lk]: the last keys of each sequence are padding
        mask = np.arange(lk)[None, None, None, :] < np.array([30, 12])[:, None, None, None]
    elif shape == "square":
        mask = rng.random((lq, lk)) < 0.5
    elif shape == "row":  # [B, 1, Lq, 1]: whole query rows masked
        mask = rng.random((b, 1, lq, 1)) < 0.7
    else:
        mask = rng.random(lk) < 0.5
    _check(q, k, v, mask, config=SMALL)


def test_float_masks_with_inf_and_large_negatives():
    b, h, lq, lk = 1, 2, 26, 33
    rng = _rng("float-mask")
    q, k, v = _qkv(rng, (b, h), lq, lk, 32)
    mask = rng.standard_normal((b, h, lq, lk)).astype(np.float32)
    mask[rng.random(mask.shape) < 0.2] = -np.inf
    mask[rng.random(mask.shape) < 0.2] = -1e9
    mask[rng.random(mask.shape) < 0.1] = np.finfo(np.float32).min
    _check(q, k, v, mask, config=SMALL)
    pad = np.where(np.arange(lk) < 20, 0.0, -np.inf).astype(np.float32)[None, None, None, :]
    _check(q, k, v, pad, config=SMALL)  # [1, 1, 1, Lk], read with stride 0


def test_f16_float_mask():
    rng = _rng("f16-mask")
    q, k, v = _qkv(rng, (2, 1), 17, 39, 64, dtype=np.float16)
    mask = (rng.standard_normal((17, 39)) * 3).astype(np.float16)
    mask[:, ::4] = np.finfo(np.float16).min
    _check(q, k, v, mask, config=SMALL)


def test_fully_masked_rows_are_zero():
    b, h, lq, lk = 1, 2, 20, 27
    rng = _rng("fully-masked")
    q, k, v = _qkv(rng, (b, h), lq, lk, 16)
    bool_mask = rng.random((lq, lk)) < 0.5
    bool_mask[[0, 7, 19]] = False
    float_mask = np.where(bool_mask, 0.0, -np.inf).astype(np.float32)
    for mask in (bool_mask, float_mask):
        for config in (None, SMALL):
            got = _check(q, k, v, mask, config=config)
            np.testing.assert_array_equal(got[:, :, [0, 7, 19]], 0.0)
            assert np.abs(got[:, :, 1]).max() > 0


def test_rows_of_only_finfo_min_average_their_keys():
    """A row masked with finfo.min everywhere (as Hugging Face masks padding) is no -inf row:
    the scores stay finite and the softmax is uniform, so the output is the mean of v."""
    rng = _rng("finfo-min")
    q, k, v = _qkv(rng, (1, 1), 9, 21, 16)
    mask = np.zeros((9, 21), np.float32)
    mask[4] = np.finfo(np.float32).min
    got = _check(q, k, v, mask, config=SMALL)
    np.testing.assert_allclose(got[0, 0, 4], v[0, 0].mean(axis=0), **F32_TOL)


def test_causal_with_mask():
    rng = _rng("causal-mask")
    q, k, v = _qkv(rng, (1, 2), 24, 30, 16)
    mask = rng.random((1, 1, 24, 30)) < 0.7
    mask[..., 5, :] = False
    got = _check(q, k, v, mask, is_causal=True, config=SMALL)
    np.testing.assert_array_equal(got[:, :, 5], 0.0)


# --- layouts and configs ------------------------------------------------------------------------


def test_non_contiguous_inputs():
    b, lq, lk, h, d = 2, 19, 34, 2, 32
    rng = _rng("strides")
    qa = torch.from_numpy(rng.standard_normal((b, lq, h, d)).astype(np.float32))
    ka = torch.from_numpy(rng.standard_normal((b, h, d, lk)).astype(np.float32))
    va = torch.from_numpy(rng.standard_normal((b, h, 2 * lk, 3 * d)).astype(np.float32))
    ma = torch.from_numpy(rng.random((lk, lq)) < 0.6)
    q = qa.permute(0, 2, 1, 3)          # [B, L, H, D] -> [B, H, L, D]
    k = ka.transpose(-1, -2)            # D not contiguous
    v = va[:, :, ::2, 1::3]             # strided rows and columns
    mask = ma.t()                       # [Lq, Lk] transposed
    assert not any(t.is_contiguous() for t in (q, k, v, mask))
    for is_causal, m in ((False, mask), (True, None)):
        out = att.attention(q, k, v, m, is_causal=is_causal, config=SMALL).numpy()
        want = ref.scaled_dot_product_attention(
            q.numpy(), k.numpy(), v.numpy(), None if m is None else m.numpy(),
            is_causal=is_causal, scale=None)
        np.testing.assert_allclose(out, want, **F32_TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_configs_agree(dtype):
    rng = _rng("configs", dtype)
    q, k, v = _qkv(rng, (1, 2), 37, 40, 32, dtype=dtype)
    mask = rng.random((1, 1, 37, 40)) < 0.8
    picks = [c for c in att.CONFIGS if c["BLOCK_M"] * c["BLOCK_N"] <= 64 * 64]
    assert len(picks) >= 3
    results = [_check(q, k, v, mask, config=c) for c in [att.DEFAULT_CONFIG, SMALL, *picks]]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], **(F16_TOL if dtype == np.float16 else
                                                     dict(rtol=1e-5, atol=1e-6)))


def test_configs_for_head_dims():
    assert att.configs(64) == att.CONFIGS
    wide = att.configs(256)
    assert wide and all(c["BLOCK_M"] <= 64 and c["BLOCK_N"] <= 64 for c in wide)
    assert att.DEFAULT_CONFIG["BLOCK_M"] >= 16 and att.DEFAULT_CONFIG["BLOCK_N"] >= 16


# --- what the kernel refuses --------------------------------------------------------------------


def _tt(shape, dtype="f32"):
    return TensorType(tuple(shape), dtype)


def test_supports_accepts():
    q, k, v = _tt((2, 4, 7, 80)), _tt((2, 4, 9, 80)), _tt((2, 4, 9, 64))
    assert att.supports(q, k, v, None, {"is_causal": True, "scale": None}) is None
    assert att.supports(q, k, v, _tt((2, 1, 1, 9), "bool"), {}) is None
    assert att.supports(q, k, v, _tt((7, 9), "f16"), {"scale": 0.5}) is None
    assert att.supports(_tt((7, 16), "f16"), _tt((9, 16), "f16"), _tt((9, 16), "f16"), None,
                        {}) is None


@pytest.mark.parametrize("case, words", [
    ("f64", "f32 or f16"),
    ("mixed", "share a dtype"),
    ("rank5", "rank"),
    ("rank1", "rank"),
    ("head_dim", "head dims"),
    ("value_dim", "head dims"),
    ("symbolic", "symbolic"),
    ("batch", "broadcast"),
    ("mask_dtype", "mask must be"),
    ("mask_shape", "does not broadcast"),
    ("mask_rank", "does not broadcast"),
    ("disagree", "do not agree"),
    ("scale", "finite"),
])
def test_supports_refuses(case, words):
    q, k, v, mask, attrs = _tt((2, 3, 8, 32)), _tt((2, 3, 5, 32)), _tt((2, 3, 5, 32)), None, {}
    if case == "f64":
        q, k, v = (_tt(t.shape, "f64") for t in (q, k, v))
    elif case == "mixed":
        k = _tt(k.shape, "f16")
    elif case == "rank5":
        q, k, v = (_tt((1, *t.shape)) for t in (q, k, v))
    elif case == "rank1":
        q, k, v = _tt((32,)), _tt((32,)), _tt((32,))
    elif case == "head_dim":
        q, k = _tt((2, 3, 8, 512)), _tt((2, 3, 5, 512))
    elif case == "value_dim":
        v = _tt((2, 3, 5, 300))
    elif case == "symbolic":
        q = _tt((2, 3, symdims.sym("S"), 32))
    elif case == "batch":
        k, v = _tt((2, 2, 5, 32)), _tt((2, 2, 5, 32))
    elif case == "mask_dtype":
        mask = _tt((8, 5), "i64")
    elif case == "mask_shape":
        mask = _tt((8, 4), "bool")
    elif case == "mask_rank":
        mask = _tt((1, 2, 3, 8, 5), "bool")
    elif case == "disagree":
        v = _tt((2, 3, 6, 32))
    else:
        attrs = {"scale": float("inf")}
    why = att.supports(q, k, v, mask, attrs)
    assert why is not None and words in why


def test_attention_refuses_bad_inputs_and_configs():
    q, k, v = (_t(a) for a in _qkv(_rng("bad"), (1, 1), 4, 4, 16))
    with pytest.raises(ValueError, match="f32 or f16"):
        att.attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="mask must be"):
        att.attention(q, k, v, torch.zeros(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="below 16"):
        att.attention(q, k, v, config={"BLOCK_M": 8, "BLOCK_N": 16})
    with pytest.raises(ValueError, match="power of two"):
        att.attention(q, k, v, config={"BLOCK_M": 24, "BLOCK_N": 16})
