"""ONNX converters: activations (LeakyRelu, Elu, Selu, Mish, Gelu, ...), each built
from IR elementwise ops with 0-d constants of the input's dtype, as ONNX defines them (Softplus
as relu(x) + log(1 + exp(-|x|)), which cannot overflow).
"""

from __future__ import annotations

from fxforge.ir import Value
from fxforge.onnx_converters import float_unary, is_float, like, softplus, unary, unsupported


def _negative_branch(ctx, x, value: Value, strict: bool = True) -> Value:
    """value where x < 0 (x <= 0 if not strict), else x."""
    cond = ctx.emit("lt" if strict else "le", [x, like(ctx, 0, x)])
    return ctx.emit("where", [cond, value, x])


def _hard_sigmoid(ctx, x, node):
    y = ctx.emit("add", [ctx.emit("mul", [x, like(ctx, node.attr("alpha", 0.2), x)]),
                         like(ctx, node.attr("beta", 0.5), x)])
    return ctx.emit("clamp", [y], min=0.0, max=1.0)


def _leaky_relu(ctx, x, node):
    return _negative_branch(ctx, x, ctx.emit("mul", [x, like(ctx, node.attr("alpha", 0.01), x)]))


def _prelu(ctx, node):
    x, slope = ctx.input(node, 0), ctx.input(node, 1)
    return [_negative_branch(ctx, x, ctx.emit("mul", [x, slope]))]


def _expm1_scaled(ctx, x, alpha: float) -> Value:
    """alpha * (exp(x) - 1)."""
    e = ctx.emit("sub", [ctx.emit("exp", [x]), like(ctx, 1.0, x)])
    return ctx.emit("mul", [e, like(ctx, alpha, x)])


def _elu(ctx, x, node):
    return _negative_branch(ctx, x, _expm1_scaled(ctx, x, node.attr("alpha", 1.0)))


def _selu(ctx, x, node):
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    y = _negative_branch(ctx, x, _expm1_scaled(ctx, x, alpha), strict=False)
    return ctx.emit("mul", [y, like(ctx, gamma, x)])


def _celu(ctx, x, node):
    alpha = node.attr("alpha", 1.0)
    scaled = ctx.emit("div", [x, like(ctx, alpha, x)])
    neg = ctx.emit("clamp", [_expm1_scaled(ctx, scaled, alpha)], min=None, max=0.0)
    return ctx.emit("add", [ctx.emit("relu", [x]), neg])


def _softplus(ctx, x, node):
    return softplus(ctx, x)


def _softsign(ctx, x, node):
    denominator = ctx.emit("add", [ctx.emit("abs", [x]), like(ctx, 1.0, x)])
    return ctx.emit("div", [x, denominator])


def _mish(ctx, x, node):
    return ctx.emit("mul", [x, ctx.emit("tanh", [softplus(ctx, x)])])


def _thresholded_relu(ctx, x, node):
    keep = ctx.emit("gt", [x, like(ctx, node.attr("alpha", 1.0), x)])
    return ctx.emit("where", [keep, x, like(ctx, 0, x)])


def _shrink(ctx, node):
    x = ctx.input(node, 0)
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    if not is_float(x) and not (float(lambd).is_integer() and float(bias).is_integer()):
        raise unsupported(node, "Shrink of integers with fractional lambd or bias")
    low = ctx.emit("lt", [x, like(ctx, -lambd, x)])
    high = ctx.emit("gt", [x, like(ctx, lambd, x)])
    up = ctx.emit("add", [x, like(ctx, bias, x)])
    down = ctx.emit("sub", [x, like(ctx, bias, x)])
    inner = ctx.emit("where", [high, down, like(ctx, 0, x)])
    return [ctx.emit("where", [low, up, inner])]


def _gelu(ctx, x, node):
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise unsupported(node, f"approximate={approximate!r}")
    return ctx.emit("gelu", [x], approximate=approximate)


def _swish(ctx, x, node):
    alpha = node.attr("alpha", 1.0)
    if alpha == 1.0:
        return ctx.emit("silu", [x])
    return ctx.emit("mul", [x, ctx.emit("sigmoid", [ctx.emit("mul", [x, like(ctx, alpha, x)])])])


TABLE = [
    ("HardSigmoid", (6, 22), float_unary(_hard_sigmoid)),
    ("HardSwish", (14, 22), unary("hardswish")),
    ("LeakyRelu", (6, 16), float_unary(_leaky_relu)),
    ("PRelu", (9, 16), _prelu),
    ("Elu", (6, 22), float_unary(_elu)),
    ("Selu", (6, 22), float_unary(_selu)),
    ("Celu", (12, 28), float_unary(_celu)),
    ("Softplus", (1, 22), float_unary(_softplus)),
    ("Softsign", (1, 22), float_unary(_softsign)),
    ("Mish", (18, 22), float_unary(_mish)),
    ("ThresholdedRelu", (10, 22), float_unary(_thresholded_relu)),
    ("Shrink", (9,), _shrink),
    ("Gelu", (20,), float_unary(_gelu)),
    ("Swish", (24,), float_unary(_swish)),
]
