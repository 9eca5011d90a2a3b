"""Neighbour exchange along a split dimension (halo exchange): `shift` and
stride-1 `same` convolutions need only a few rows of the next or previous
device's block, which `collective_permute` sends, instead of gathering the
whole dimension. A dimension split over one mesh axis, with halos no wider than
a block, takes this path; anything else falls back to the generic rule."""
from __future__ import annotations

from meshir.attributes import Name
from meshir.ir import Operation, Value
from meshir.mesh import ValueLayout
from meshir.ops.nn import conv_geometry

from .rules import LowerContext, Rule, generic_rule
from .sharded import Sharded


def _slice(ctx: LowerContext, x: Value, dim: str, begin: int, size: int) -> Value:
    return ctx.emit("slice", [x], {"dim": Name(dim), "begin": begin, "size": size})[0]


def _neighbour(ctx: LowerContext, x: Value, axis: str, shift: int, wrap: bool) -> Value:
    return ctx.emit("collective_permute", [x], {"axis": Name(axis), "shift": shift, "wrap": wrap})[0]


def with_halos(ctx: LowerContext, x: Value, dim: str, axis: str, block: int, low: int, high: int, wrap: bool = False) -> Value:
    """This device's block extended by `low` elements of the previous device's block
    and `high` of the next one's (zeros past the ends unless `wrap`)."""
    parts = []
    if low:
        parts.append(_neighbour(ctx, _slice(ctx, x, dim, block - low, low), axis, 1, wrap))
    parts.append(x)
    if high:
        parts.append(_neighbour(ctx, _slice(ctx, x, dim, 0, high), axis, -1, wrap))
    return x if len(parts) == 1 else ctx.emit("concat", parts, {"dim": Name(dim)})[0]


def _single_axis_split(ctx: LowerContext, op: Operation, dim: str) -> str | None:
    axes = dict(zip(op.results[0].type.names, ctx.layout(op.results[0]).axes)).get(dim, ())
    return axes[0] if len(axes) == 1 else None


def shift_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    dim, offset, wrap = op.attr("dim"), op.attr("offset"), op.attr("wrap")
    axis = _single_axis_split(ctx, op, dim)
    layout = ctx.layout(result)
    block = result.type.size_of(dim) // (ctx.mesh.axis_size(axis) if axis else 1)
    if axis is None or offset == 0 or abs(offset) > block:
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, layout)
    if offset > 0:
        extended = with_halos(ctx, x, dim, axis, block, offset, 0, wrap)
        value = ctx.emit("slice", [extended], {"dim": Name(dim), "begin": 0, "size": block}, result.name)[0]
    else:
        extended = with_halos(ctx, x, dim, axis, block, 0, -offset, wrap)
        value = ctx.emit("slice", [extended], {"dim": Name(dim), "begin": -offset, "size": block}, result.name)[0]
    return [Sharded(value, layout, result.type)]


def conv_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Stride-1 `same` convolutions: split spatial dimensions get halos from their
    neighbours, unsplit ones explicit zero padding, then a `valid` convolution."""
    (x, kernel), (result,) = operands, op.results
    spatial = op.attr("spatial")
    view = ctx.view(op)
    geometry = conv_geometry(view, len(spatial))
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    split = [n for n in spatial if by_dim.get(n)]
    strided = any(s != 1 for s in op.attr("strides"))
    blocks = {n: result.type.size_of(n) // ctx.mesh.group_size(by_dim[n]) for n in split}
    if (not split or strided or op.attr("padding") != "same"
            or any(len(by_dim[n]) != 1 or max(low, high) > blocks[n] for n, (_, low, high) in zip(spatial, geometry) if n in split)):
        return generic_rule(ctx, op, operands)
    cin, cout = op.attr("in_channels"), op.attr("out_channels")
    local_x = ctx.want(x, ValueLayout(tuple(() if n == cin else by_dim.get(n, ()) for n in x.names)))
    local_kernel = ctx.want(kernel, ValueLayout(tuple(by_dim.get(n, ()) if n == cout else () for n in kernel.names)))
    for name, (_, low, high) in zip(spatial, geometry):
        if name in split:
            local_x = with_halos(ctx, local_x, name, by_dim[name][0], blocks[name], low, high)
        elif low or high:
            local_x = ctx.emit("pad", [local_x], {"dim": Name(name), "low": low, "high": high})[0]
    value = ctx.emit(op.name, [local_x, local_kernel], {**op.attributes, "padding": Name("valid")}, result.name)[0]
    return [Sharded(value, layout, result.type)]


HALO_RULES: dict[str, Rule] = {"shift": shift_rule, "conv1d": conv_rule, "conv2d": conv_rule}
