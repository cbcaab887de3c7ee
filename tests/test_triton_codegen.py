"""The elementwise expression table (kernels/triton/codegen.py) op by op, run as one-step Triton
kernels on the interpreter and compared with the numpy reference rounded to the declared dtype.

Inputs hold special values (NaN, +-inf, +-0, tiny and huge magnitudes where sigmoid / tanh / exp
saturate or overflow) next to random ones. Tolerances: f32 rtol 1e-4 / atol 1e-5; f16 rtol 1e-3
(one f16 ulp: the kernel rounds its f32 result once, the reference its f64 one) / atol 1e-5;
ops that are exact in f32 for f16 operands (add, sub, mul, neg, abs, relu, maximum, minimum,
clamp, where, comparisons, casts) and all integer / bool results are compared exactly. Also:
what the table refuses, and jit.check_identifiers on hostile and on generated source.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fxforge import dtypes, ops
from fxforge.ir import TensorType
from fxforge.kernels.triton import codegen, elementwise, jit, quant, reduce

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-7, -1e-3, 0.1, 0.5, -0.5, 1.0, -2.5,
           3.0, -3.0, 10.0, -10.0, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 3e38,
           -3e38]
# the interpreter runs blocks as numpy: special values warn (overflow in exp, inf * 0, ...)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
EXACT = {"identity", "dropout", "relu", "clamp", "neg", "abs", "add", "sub", "mul", "maximum",
         "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where", "cast"}


def _values(dtype: str, seed: int, n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(n) > 0.5
    if not dtypes.is_float(dtype):
        info = np.iinfo(dtypes.to_numpy(dtype))
        lo, hi = max(info.min, -1000), min(info.max, 1000)
        v = rng.integers(lo, hi, n, endpoint=True)
        v[:4] = [info.min, info.max, 0, -1 if info.min < 0 else 1]
        return v.astype(dtypes.to_numpy(dtype))
    v = np.concatenate([np.array(SPECIAL), rng.standard_normal(n - len(SPECIAL)) * 4])
    with np.errstate(over="ignore"):
        return rng.permutation(v).astype(dtypes.to_numpy(dtype)) if seed else \
            v.astype(dtypes.to_numpy(dtype))


def _run(op: str, attrs: dict, arrays: list[np.ndarray]) -> None:
    """Kernel vs reference for one op on `arrays`."""
    in_types = [TensorType(a.shape, dtypes.from_numpy(a.dtype)) for a in arrays]
    opdef = ops.get(op)
    full = dict(ops.complete_attrs(opdef, attrs))
    (out_type,) = ops.infer_types(opdef, in_types, full)
    assert codegen.supports_step(op, full, in_types, out_type)
    got = elementwise.elementwise(op, full, [torch.from_numpy(a.copy()) for a in arrays],
                                  in_types, out_type)
    assert got.dtype == dtypes.to_torch(out_type.dtype) and tuple(got.shape) == out_type.shape
    with np.errstate(all="ignore"):
        want = np.asarray(opdef.reference(*arrays, **full)).astype(
            dtypes.to_numpy(out_type.dtype))
    got = got.numpy()
    if not dtypes.is_float(out_type.dtype) or op in EXACT:
        np.testing.assert_array_equal(got, want, err_msg=f"{op} {attrs} {in_types}")
    elif out_type.dtype == "f16":
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=f"{op} f16")
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{op} f32")


UNARY_FLOAT = [
    ("identity", {}), ("dropout", {"p": 0.5}), ("relu", {}), ("sigmoid", {}), ("tanh", {}),
    ("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}), ("silu", {}),
    ("hardswish", {}), ("hardsigmoid", {}), ("sqrt", {}), ("rsqrt", {}), ("exp", {}),
    ("log", {}), ("erf", {}), ("neg", {}), ("abs", {}),
    ("clamp", {"min": -1.5, "max": 2.0}), ("clamp", {"min": None, "max": 0.25}),
    ("clamp", {"min": 0.0, "max": None}), ("clamp", {"min": None, "max": None}),
    ("clamp", {"min": -math.inf, "max": math.inf}), ("clamp", {"min": math.inf, "max": None}),
    ("clamp", {"min": None, "max": -math.inf}), ("clamp", {"min": 3.0, "max": -3.0}),
]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("op,attrs", UNARY_FLOAT, ids=lambda v: str(v))
def test_unary_float(op, attrs, dtype):
    _run(op, attrs, [_values(dtype, 0)])


def test_tanh_small_arguments_are_relatively_accurate():
    x = np.array([1e-8, -3e-6, 1e-4, -0.01, 0.1, 0.124, 0.126, -0.3], dtype=np.float32)
    t = TensorType(x.shape, "f32")
    got = elementwise.elementwise("tanh", {}, [torch.from_numpy(x)], [t], t).numpy()
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=2e-6, atol=0)


BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"]


@pytest.mark.parametrize("dtype", ["f32", "f16", "i32", "i64", "i8"])
@pytest.mark.parametrize("op", BINARY)
def test_binary(op, dtype):
    _run(op, {}, [_values(dtype, 0), _values(dtype, 1)])


@pytest.mark.parametrize("op", ["add", "mul", "maximum", "minimum", "eq", "ne", "lt", "ge"])
def test_bool_binary_is_logical(op):
    _run(op, {}, [_values("bool", 2), _values("bool", 3)])


@pytest.mark.parametrize("a,b", [("f16", "f32"), ("i64", "f32"), ("i32", "i64"), ("bool", "i8"),
                                 ("u8", "i8"), ("f16", "i64")])
@pytest.mark.parametrize("op", ["add", "mul", "div", "maximum", "lt", "eq"])
def test_mixed_dtypes_promote(op, a, b):
    _run(op, {}, [_values(a, 4), _values(b, 5)])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "lt", "maximum"])
def test_f32_scalar_rounds_to_f16_first(op):
    """torch's promotion: a 0-d f32 against an f16 tensor is f16; the scalar is rounded first."""
    x = (np.arange(48, dtype=np.float32) * 0.37 - 7).astype(np.float16)
    _run(op, {}, [x, np.array(0.1, dtype=np.float32)])
    _run(op, {}, [np.array(-2.3, dtype=np.float32), x])


@pytest.mark.parametrize("dtype", ["i8", "i32", "i64", "u8"])
@pytest.mark.parametrize("op,attrs", [("relu", {}), ("neg", {}), ("abs", {}),
                                      ("clamp", {"min": -7.0, "max": 100.0}),
                                      ("clamp", {"min": 5.0, "max": None}),
                                      ("clamp", {"min": -2.5, "max": 3.5}),
                                      ("sqrt", {}), ("exp", {}), ("sigmoid", {})])
def test_unary_int(op, attrs, dtype):
    if dtype == "u8" and attrs.get("min") == -7.0:  # the reference would wrap -7 to 249
        t = TensorType((48,), "u8")
        assert "range" in codegen.step_refusal(op, attrs, [t], t)
        return
    _run(op, attrs, [_values(dtype, 6)])


def test_integer_clamp_is_exact_past_2_24():
    x = np.array([2**40 + 1, -(2**40) - 3, 2**24 + 1, 5, -5], dtype=np.int64)
    _run("clamp", {"min": -(2.0**40), "max": 2.0**40}, [x])
    _run("clamp", {"min": 0.0, "max": None}, [x])


@pytest.mark.parametrize("dtype", ["f32", "f16", "i64", "bool"])
def test_where(dtype):
    cond = _values("bool", 7)
    _run("where", {}, [cond, _values(dtype, 8), _values(dtype, 9)])
    _run("where", {}, [cond, _values(dtype, 8), np.array(3, dtype=np.float32)])


@pytest.mark.parametrize("src,dst", [("f32", "f16"), ("f16", "f32"), ("f32", "i32"),
                                     ("i64", "f64"), ("f32", "bool"), ("bool", "f32"),
                                     ("i64", "i8"), ("bool", "i64"), ("f64", "f16")])
def test_cast(src, dst):
    x = _values(src, 10)
    if dtypes.is_float(src) and not dtypes.is_float(dst):
        x = x[np.isfinite(x) & (np.abs(x) < 1e6)]  # float -> int of NaN / inf is unspecified
    if src == "i64":
        x = x * np.int64(2**33) + 1  # past float32 precision
    _run("cast", {"dtype": dst}, [x])


def test_f64_math_stays_f64():
    x = np.array([1.0 + 2.0**-40, 1.0, 3.0], dtype=np.float64)
    y = np.array([1.0, 1.0, 3.0 + 2.0**-45], dtype=np.float64)
    _run("eq", {}, [x, y])
    _run("sub", {}, [x, y])


# --- what the table refuses -----------------------------------------------------------------------


def _types(*names):
    return [TensorType((4,), n) for n in names]


@pytest.mark.parametrize("op,attrs,ins,out", [
    ("pow", {}, ("f32", "f32"), "f32"),
    ("clamp", {"min": math.nan, "max": None}, ("f32",), "f32"),
    ("clamp", {"min": None, "max": math.nan}, ("f16",), "f16"),
    ("clamp", {"min": -1000.0, "max": None}, ("i8",), "i8"),
    ("sub", {}, ("bool", "bool"), "bool"),
    ("neg", {}, ("bool",), "bool"),
    ("sigmoid", {}, ("i32",), "i32"),
])
def test_refusals(op, attrs, ins, out):
    full = dict(ops.complete_attrs(ops.get(op), attrs))
    assert not codegen.supports_step(op, full, _types(*ins), TensorType((4,), out))
    assert codegen.step_refusal(op, full, _types(*ins), TensorType((4,), out))


def test_supports_says_why():
    t = TensorType((3,), "f32")
    steps = ({"op": "exp", "args": (0,)}, {"op": "pow", "args": (1, 0)})
    why = elementwise.supports([t], steps, [t, t])
    assert why is not None and "pow" in why and "step 1" in why
    assert elementwise.supports([t], steps[:1], [t]) is None
    with pytest.raises(ValueError, match="pow"):
        elementwise.fused_elementwise([torch.ones(3)], [t], steps, [t, t])


def test_epilogue_lines_use_the_table():
    acc, op = TensorType((2, 3), "f32"), TensorType((3,), "f16")
    steps = ({"op": "add", "operand": 2, "side": "right"}, {"op": "relu"})
    stages = ops.epilogue_types(acc, [acc, acc, op], steps)
    epi = codegen.Epilogue(steps, tuple(stages), (acc, acc, op))
    assert epi.supported() and epi.operands == (2,)
    lines, result = epi.lines("acc")
    assert result == "acc_s1" and "e2.to(tl.float32)" in lines[0]
    source = jit.HEADER + "def k(acc, e2):\n" + "\n".join(lines) + f"\n    return {result}\n"
    jit.check_identifiers(source)


# --- jit.check_identifiers ------------------------------------------------------------------------


HOSTILE = [
    "def k(x):\n    y = 'rm -rf'\n",
    "def k(x):\n    y = x  # a comment\n",
    "def k(x):\n    eval(x)\n",
    "def k(x):\n    exec(x)\n",
    "def k(x):\n    open(x)\n",
    "def k(x):\n    __import__(x)\n",
    "def k(x):\n    y = x.__class__\n",
    "import os\n",
    "from os import path\n",
    "def k(x):\n    getattr(x, x)\n",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_check_identifiers_refuses(source):
    with pytest.raises(ValueError):
        jit.check_identifiers(jit.HEADER + source)
    with pytest.raises(ValueError):
        jit.build(jit.HEADER + source, "k")


def test_check_identifiers_accepts_generated_source():
    t = TensorType((2, 3), "f16")
    steps = ({"op": "gelu", "args": (0,), "attrs": {"approximate": "tanh"}},
             {"op": "clamp", "args": (1,), "attrs": {"min": None, "max": math.inf}})
    stages = ops.stage_types("fused_elementwise", [t, t], {"steps": steps})
    for kinds in (["dense", "scalar"], [(True, False), "dense"]):
        jit.check_identifiers(elementwise._source([t, t], steps, stages, kinds, 2, True))
    jit.check_identifiers(jit.HEADER + reduce._softmax_source(True, False, "tl.float32",
                                                              "tl.float16"))
    jit.check_identifiers(jit.HEADER + reduce._layer_norm_source(False, "tl.float32",
                                                                 "tl.float32"))
    jit.check_identifiers(jit.HEADER + quant._row_source(False))
    jit.check_identifiers(jit.HEADER + quant._TENSOR_QUANT)
