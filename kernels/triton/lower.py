"""IR nodes -> Triton kernels: which nodes the generated kernels claim, and how they are called.

Each rule takes a node and the program's constants and returns a `Lowered` (the callable that
runs the node on its input tensors, and the kernel's name for the report) or a string saying why
the node stays on the torch backend. Weights are prepared once here (cast, reordered); the
kernels' host wrappers check shapes and launch.

Storage order: 4-D activations are channels-last between the graph's edges (`layout-nhwc`).
Conv kernels read and write NHWC; elementwise and quantizing kernels run on the NHWC view of a
channels-last tensor (`_as_nhwc`), so their results stay channels-last as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fxforge import dtypes, ops
from fxforge.ir import Node, TensorType
from fxforge.kernels.triton.codegen import TL, Epilogue
from fxforge.kernels.triton.lower_layout import RULES as LAYOUT_RULES
from fxforge.kernels.triton.lowered import Config, Context, Lowered

Tensor = torch.Tensor


Rule = Callable[[Node, Context], "Lowered | str"]


# --- storage order --------------------------------------------------------------------------


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


def _as_nhwc(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


def _nhwc_type(t: TensorType) -> TensorType:
    if len(t.shape) != 4:
        return t
    b, c, h, w = t.shape
    return TensorType((b, h, w, c), t.dtype, t.quant)


def _back_to_nchw(t: Tensor) -> Tensor:
    return t.permute(0, 3, 1, 2)


# --- GEMM / conv layers ---------------------------------------------------------------------


def _layer(node: Node) -> tuple[int, Epilogue]:
    """How many base inputs the node has (x, weight, [w_scale], [bias], [x_scale]) and its
    epilogue."""
    a = node.attrs
    types = [v.type for v in node.inputs]
    if node.op in ("linear", "conv2d"):
        base = len(node.inputs)
        return base, Epilogue.none(node.outputs[0].type)
    if node.op in ("fused_linear", "fused_conv2d"):
        stages = tuple(ops.stage_types(node.op, types, a))
        return 2 + a["has_bias"], Epilogue(tuple(a["epilogue"]), stages, tuple(types))
    # qlinear / qconv2d: the float epilogue starts from the f32 accumulator of the output's shape
    base = 3 + a["has_bias"] + a["dynamic"]
    acc = TensorType(node.outputs[0].type.shape, "f32")
    stages = tuple(ops.epilogue_types(acc, types, a["epilogue"]))
    return base, Epilogue(tuple(a["epilogue"]), stages, tuple(types))


def _operands(epilogue: Epilogue, inputs: Sequence[Tensor]) -> dict[int, Tensor]:
    return {i: inputs[i] for i in epilogue.operands}


def _linear_rows(x: Tensor) -> Tensor:
    """x as [M, K] rows, contiguous (a view when it is; else the copy kernel moves it)."""
    from fxforge.kernels.triton import layout

    return layout.contiguous(layout.reshape(x, (-1, x.shape[-1])))


def _linear_operands(epilogue: Epilogue, inputs: Sequence[Tensor], out_shape) -> dict:
    """Epilogue operands as [M, N] rows (or broadcastable to them) for the GEMM."""
    m, n = math.prod(out_shape[:-1]), out_shape[-1]
    return {i: t.expand(*out_shape).reshape(m, n)
            for i, t in _operands(epilogue, inputs).items()}


def _weighted(node: Node, ctx: Context) -> tuple[int, Epilogue, Tensor] | str:
    """What every GEMM / conv rule needs first: base input count, epilogue, constant weight."""
    base, epilogue = _layer(node)
    w = ctx.const(node.inputs[1])
    if w is None:
        return "weight is not a constant"
    if not epilogue.supported():
        return "an epilogue step has no Triton form"
    x_t, w_t = node.inputs[0].type, node.inputs[1].type
    if node.op not in ("qlinear", "qconv2d") and (x_t.dtype not in ("f32", "f16")
                                                   or w_t.dtype != x_t.dtype):
        return f"dtypes {x_t.dtype} x {w_t.dtype}: kernels take f32 or f16"
    return base, epilogue, w


def _float_linear(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import gemm

    parts = _weighted(node, ctx)
    if isinstance(parts, str):
        return parts
    base, epilogue, w = parts
    has_bias, x_t, out_t = base == 3, node.inputs[0].type, node.outputs[0].type
    out_dtype = dtypes.to_torch(out_t.dtype)
    weight, config = w.contiguous(), Config()

    def run(x, _w, *rest):
        bias = rest[0].float() if has_bias else None
        y = gemm.linear(_linear_rows(x), weight, bias=bias, epilogue=epilogue,
                        operands=_linear_operands(epilogue, (x, _w, *rest), out_t.shape),
                        out_dtype=out_dtype, config=config.value)
        return y.reshape(out_t.shape)

    return Lowered(f"{x_t.dtype} GEMM{_steps(epilogue)}", run, config.set, _gemm_configs(x_t))


def _qlinear(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import gemm

    parts = _weighted(node, ctx)
    if isinstance(parts, str):
        return parts
    _, epilogue, w = parts
    a, out_t = node.attrs, node.outputs[0].type
    weight, config = w.contiguous(), Config()

    def run(x, _w, w_scale, *rest):
        bias = rest[0] if a["has_bias"] else None
        x_scale = rest[int(a["has_bias"])].reshape(-1, 1) if a["dynamic"] else a["x_scale"]
        y = gemm.qlinear(_linear_rows(x), weight, w_scale, x_scale=x_scale,
                         x_zero_point=a["x_zero_point"], bias=bias, epilogue=epilogue,
                         operands=_linear_operands(epilogue, (x, _w, w_scale, *rest),
                                                   out_t.shape),
                         out_dtype=a["out_dtype"], out_scale=a["out_scale"],
                         out_zero_point=a["out_zero_point"], config=config.value)
        return y.reshape(out_t.shape)

    mode = "dynamic" if a["dynamic"] else "static"
    return Lowered(f"int8 GEMM ({mode}, out {a['out_dtype']}){_steps(epilogue)}", run,
                   config.set, _gemm_configs(node.inputs[0].type))


_CONV_LABEL = {"conv": "implicit-GEMM conv", "depthwise": "depthwise conv"}


def _conv_label(c: _Conv) -> str:
    groups = c.geometry.get("groups", 1)
    return _CONV_LABEL[c.kind] + (f", {groups} groups" if groups > 1 else "")


@dataclass
class _Conv:
    """A conv node's kernel: which one, its prepared weight, geometry and tuning candidates."""

    kind: str  # conv | depthwise
    float_fn: Callable[..., Tensor]
    int8_fn: Callable[..., Tensor]
    prepared: Any
    geometry: dict[str, Any]  # kernel_size, stride, padding, dilation (and groups > 1)
    configs: Sequence[dict]


def _conv(node: Node, w: Tensor) -> _Conv | str:
    from fxforge.kernels.triton import conv, depthwise

    a = node.attrs
    cout, cin_g, kh, kw = w.shape
    geometry = dict(kernel_size=(kh, kw), stride=tuple(a["stride"]),
                    padding=tuple(a["padding"]), dilation=tuple(a["dilation"]))
    groups, cin = a["groups"], cin_g * a["groups"]
    module = depthwise if groups > 1 and groups == cin == cout else conv
    why = module.supports(*geometry.values(), groups, cin, cout)
    if why is not None:
        return why
    if module is conv:
        configs = conv.CONFIGS
        if groups > 1:
            geometry["groups"] = groups
            configs = conv.grouped_configs(cout // groups)
        return _Conv("conv", conv.conv2d, conv.qconv2d, conv.prepare_weight(w), geometry,
                     configs)
    return _Conv("depthwise", depthwise.depthwise_conv2d, depthwise.depthwise_qconv2d,
                  depthwise.prepare_depthwise_weight(w), geometry, depthwise.CONFIGS)


def _conv_parts(node: Node, ctx: Context) -> tuple[int, Epilogue, _Conv] | str:
    """`_weighted` for a conv: base input count, epilogue and the kernel chosen for it."""
    parts = _weighted(node, ctx)
    if isinstance(parts, str):
        return parts
    base, epilogue, w = parts
    c = _conv(node, w)
    return c if isinstance(c, str) else (base, epilogue, c)


def _float_conv(node: Node, ctx: Context) -> Lowered | str:
    parts = _conv_parts(node, ctx)
    if isinstance(parts, str):
        return parts
    base, epilogue, c = parts
    has_bias, config = base == 3, Config()
    out_dtype = dtypes.to_torch(node.outputs[0].type.dtype)

    def run(x, _w, *rest):
        bias = rest[0].float() if has_bias else None
        return c.float_fn(x, c.prepared, bias=bias, epilogue=epilogue,
                          operands=_operands(epilogue, (x, _w, *rest)), out_dtype=out_dtype,
                          config=config.value, **c.geometry)

    return Lowered(f"{node.inputs[0].type.dtype} {_conv_label(c)} (NHWC)"
                   f"{_steps(epilogue)}", run, config.set, c.configs)


def _qconv(node: Node, ctx: Context) -> Lowered | str:
    parts = _conv_parts(node, ctx)
    if isinstance(parts, str):
        return parts
    _, epilogue, c = parts
    a, config = node.attrs, Config()

    def run(x, _w, w_scale, *rest):
        bias = rest[0] if a["has_bias"] else None
        x_scale = rest[int(a["has_bias"])].reshape(1) if a["dynamic"] else a["x_scale"]
        return c.int8_fn(x, c.prepared, w_scale, x_scale=x_scale,
                         x_zero_point=a["x_zero_point"], bias=bias, epilogue=epilogue,
                         operands=_operands(epilogue, (x, _w, w_scale, *rest)),
                         out_dtype=a["out_dtype"], out_scale=a["out_scale"],
                         out_zero_point=a["out_zero_point"], config=config.value, **c.geometry)

    mode = "dynamic" if a["dynamic"] else "static"
    return Lowered(f"int8 {_conv_label(c)} (NHWC, {mode}, out {a['out_dtype']})"
                   f"{_steps(epilogue)}", run, config.set, c.configs)


def _int4(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import int4_gemm

    a = node.attrs
    packed, scales = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    if packed is None or scales is None:
        return "packed weights are not constants"
    out_t, config = node.outputs[0].type, Config()

    def run(x, _p, _s, *rest):
        bias = rest[0] if a["has_bias"] else None
        y = int4_gemm.linear_int4(_linear_rows(x), packed, scales, group_size=a["group_size"],
                                  bias=bias, config=config.value)
        return y.reshape(out_t.shape)

    return Lowered(f"int4 weight-only GEMM (group {a['group_size']})", run, config.set,
                   int4_gemm.CONFIGS)


def _gemm_configs(x: TensorType) -> Sequence[dict]:
    from fxforge.kernels.triton import gemm

    rows = math.prod(x.shape[:-1])
    return gemm.SMALL_M_CONFIGS if rows <= gemm.SMALL_M else gemm.CONFIGS


def _steps(epilogue: Epilogue) -> str:
    n = len(epilogue.steps)
    return "" if n == 0 else f" + epilogue ({', '.join(s['op'] for s in epilogue.steps)})"


# --- elementwise, reductions, quantizing ------------------------------------------------------


def _chain(node: Node, steps: tuple, name: str) -> Lowered | str:
    from fxforge.kernels.triton import elementwise

    in_types = [v.type for v in node.inputs]
    stages = ops.stage_types("fused_elementwise", in_types, {"steps": steps})
    why = elementwise.supports(in_types, steps, stages)
    if why is not None:
        return why
    out_t = node.outputs[0].type

    def run(*xs):
        if len(out_t.shape) == 4 and any(_channels_last(x) for x in xs if x.dim() == 4):
            # every input broadcast to the output (stride 0: no copy), seen as NHWC
            views = [_as_nhwc(x.expand(out_t.shape)) for x in xs]
            types = [_nhwc_type(TensorType(out_t.shape, t.dtype)) for t in in_types]
            st = [_nhwc_type(t) for t in stages]
            return _back_to_nchw(elementwise.fused_elementwise(views, types, steps, st))
        return elementwise.fused_elementwise(list(xs), in_types, steps, stages)

    return Lowered(name, run)


# x ** c for a constant c that other steps express exactly (x * x is correctly rounded, as the
# reference's pow is): the table has no general pow. Not 0.5: sqrt differs from pow at -inf and
# -0.0.
_POW = {2.0: lambda i: {"op": "mul", "args": (i, i)},
        1.0: lambda i: {"op": "identity", "args": (i,)}}


def _constant_pow(steps: tuple, node: Node, ctx: Context) -> tuple:
    """`steps` with each pow by a constant 0-d node input of _POW rewritten (RMSNorm's x ** 2)
    where the rewritten step has the pow's own result type: an integer base stays pow (int **
    2.0 is a float power in torch, and an integer multiply would overflow first), and so does
    a base whose dtype or shape the exponent would change (an f32 [1] exponent promotes an f16
    base and broadcasts)."""
    in_types = [v.type for v in node.inputs]
    stages = ops.stage_types("fused_elementwise", in_types, {"steps": steps})
    values = in_types + list(stages)
    out = []
    for k, step in enumerate(steps):
        if step["op"] == "pow" and step["args"][1] < len(node.inputs):
            base = values[step["args"][0]]
            c = ctx.const(node.inputs[step["args"][1]])
            if c is not None and c.dim() == 0 and float(c) in _POW and \
                    dtypes.is_float(base.dtype) and base == stages[k]:
                step = _POW[float(c)](step["args"][0])
        out.append(step)
    return tuple(out)


def _fused_elementwise(node: Node, ctx: Context) -> Lowered | str:
    steps = _constant_pow(tuple(node.attrs["steps"]), node, ctx)
    return _chain(node, steps, f"fused elementwise ({', '.join(s['op'] for s in steps)})")


def _single_elementwise(node: Node, ctx: Context) -> Lowered | str:
    step = {"op": node.op, "args": tuple(range(len(node.inputs)))}
    if node.attrs:
        step["attrs"] = dict(node.attrs)
    steps = _constant_pow((step,), node, ctx)
    return _chain(node, steps, f"elementwise ({steps[0]['op']})")


def _softmax(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import reduce

    dim = node.attrs["dim"]
    fn = reduce.softmax if node.op == "softmax" else reduce.log_softmax
    return Lowered(f"row {node.op}", lambda x: fn(x, dim))


def _layer_norm(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import reduce

    eps = node.attrs["eps"]
    return Lowered("row layer_norm", lambda x, w, b: reduce.layer_norm(x, w, b, eps))


def _reduce(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import reduce

    dims, keepdim = tuple(node.attrs["dims"]), node.attrs["keepdim"]
    if not dims:
        return "reduces no dims (the identity)"
    return Lowered(f"reduction ({node.op})", lambda x: reduce.reduce(x, node.op, dims, keepdim))


def _attention(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import attention

    types = [v.type for v in node.inputs]
    a = node.attrs
    why = attention.supports(*types[:3], types[3] if len(types) == 4 else None, a)
    if why is not None:
        return why
    config = Config()

    def run(q, k, v, mask=None):
        return attention.attention(q, k, v, mask, is_causal=a["is_causal"], scale=a["scale"],
                                   config=config.value)

    mask = "" if len(types) == 3 else f", {types[3].dtype} mask"
    widest = max(types[0].shape[-1], types[2].shape[-1])  # tiles must fit the wider head
    return Lowered(f"fused attention ({types[0].dtype}{', causal' if a['is_causal'] else ''}"
                   f"{mask})", run, config.set, attention.configs(widest))


_POOL_ATTRS = {"max_pool2d": ("kernel", "stride", "padding", "dilation", "ceil_mode"),
               "avg_pool2d": ("kernel", "stride", "padding", "ceil_mode", "count_include_pad",
                              "divisor_override"),
               "adaptive_avg_pool2d": ("output_size",)}


def _pool(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import pool

    why = pool.supports(node.op, node.inputs[0].type, node.attrs)
    if why is not None:
        return why
    fn = getattr(pool, node.op)
    kwargs = {k: node.attrs[k] for k in _POOL_ATTRS[node.op]}
    return Lowered(f"{node.op} (NHWC tiles)", lambda x: fn(x, **kwargs))


def _cumsum(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import reduce

    dim, out = node.attrs["dim"], node.outputs[0].type.dtype
    if out == "bool" or out not in TL:
        return f"cumsum with a {out} result has no scan kernel"
    return Lowered("row scan (cumsum)", lambda x: reduce.cumsum(x, dim, dtypes.to_torch(out)))


def _per_tensor(op: str):
    """quantize / dequantize: elementwise with the node's scale and zero point, on the NHWC view
    of a channels-last tensor so that the result stays channels-last."""

    def rule(node: Node, ctx: Context) -> Lowered | str:
        from fxforge.kernels.triton import quant

        fn, a = getattr(quant, op), node.attrs

        def run(x):
            if _channels_last(x):
                return _back_to_nchw(fn(_as_nhwc(x), a["scale"], a["zero_point"]))
            return fn(x, a["scale"], a["zero_point"])

        return Lowered(op, run)

    return rule


def _dynamic_quantize(node: Node, ctx: Context) -> Lowered | str:
    from fxforge.kernels.triton import layout, quant

    mode = node.attrs["mode"]

    def run(x):
        if mode == "tensor" and _channels_last(x):
            q, s = quant.dynamic_quantize(_as_nhwc(x), mode)
            return _back_to_nchw(q), s
        return quant.dynamic_quantize(layout.contiguous(x), mode)

    return Lowered(f"dynamic quantize (per {mode})", run)


RULES: dict[str, Rule] = {
    "linear": _float_linear, "fused_linear": _float_linear, "qlinear": _qlinear,
    "conv2d": _float_conv, "fused_conv2d": _float_conv, "qconv2d": _qconv,
    "linear_int4": _int4,
    "fused_elementwise": _fused_elementwise,
    "softmax": _softmax, "log_softmax": _softmax, "layer_norm": _layer_norm,
    "sum": _reduce, "mean": _reduce, "amax": _reduce, "cumsum": _cumsum,
    "quantize": _per_tensor("quantize"), "dequantize": _per_tensor("dequantize"),
    "dynamic_quantize": _dynamic_quantize,
    "scaled_dot_product_attention": _attention,
    "max_pool2d": _pool, "avg_pool2d": _pool, "adaptive_avg_pool2d": _pool,
}
RULES.update(LAYOUT_RULES)
for _name, _opdef in ops.OPS.items():
    if _opdef.kind == "elementwise" and _name not in RULES and _name not in ("identity",
                                                                              "dropout"):
        RULES[_name] = _single_elementwise


def lower(node: Node, ctx: Context) -> Lowered | str:
    """The kernel for `node`, or why it runs on the torch backend."""
    rule = RULES.get(node.op)
    if rule is None:
        return "no Triton kernel for this op"
    try:
        return rule(node, ctx)
    except (ValueError, NotImplementedError, IndexError) as e:  # the torch backend says it again
        return f"not handled: {e}"
