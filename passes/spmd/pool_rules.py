"""Pooling over split spatial dimensions without gathering them, and the
reshapes strided windows use.

A pool whose windows lie inside one device's block (no padding, window no
wider than the stride, blocks a multiple of the stride) is each device pooling
its own block: output block k is input block k pooled. A `same` pool whose
windows overlap (a 3x3 window with stride 2) still has output block k made from
input block k, plus a few rows of each neighbour's block: each device gets them
by collective_permute (halo_rules.with_halos) and pools its extended block with
`valid` padding. The devices at either end of the axis have padding there
instead of a neighbour: the lowest value for max_pool, and for avg_pool zeros
that the window counts leave out (the pooled values are divided by the pooled
mask of real elements). Strided window gradients
(meshir/ops/windows.py) cut a dimension into (dim / stride, phase) with a
reshape, and merge it back; a row-major reshape that keeps the split on the
leading dimension of each group of dimensions it regroups is a local reshape of
each device's block, so these keep their split too. Anything else falls back
to the generic rule.
"""
from __future__ import annotations

import numpy as np

from meshir.attributes import Name
from meshir.dtypes import i32
from meshir.ir import Operation, Value
from meshir.mesh import ValueLayout
from meshir.ops.nn import window_padding
from meshir.types import Dim

from .halo_rules import with_halos
from .rules import LowerContext, Rule, generic_rule
from .sharded import Sharded


def _inside_blocks(ctx: LowerContext, op: Operation, by_dim: dict[str, tuple[str, ...]]) -> bool:
    """Every split spatial dimension's windows stay within a block: then 'same'
    padding pads nothing there, and each block has block / stride outputs."""
    window = op.attr("window")
    strides = op.attr("strides") or window
    x = op.operand_types[0]
    for name, size, stride in zip(op.attr("spatial"), window, strides):
        axes = by_dim.get(name, ())
        if axes and (size > stride or (x.size_of(name) // ctx.mesh.group_size(axes)) % stride):
            return False
    return True


def _halos(ctx: LowerContext, op: Operation, by_dim: dict[str, tuple[str, ...]]) -> dict[str, tuple[int, int]] | None:
    """For a `same` pool: each split spatial dimension's (rows from the previous
    block, rows from the next) when output block k comes from input block k and
    those rows; None when some split dimension does not work so."""
    if op.attr("padding") != "same":
        return None
    x, result = op.operand_types[0], op.results[0].type
    halos = {}
    for name, size, stride in zip(op.attr("spatial"), op.attr("window"), op.attr("strides") or op.attr("window")):
        axes = by_dim.get(name, ())
        if not axes:
            continue
        block = x.size_of(name) // ctx.mesh.group_size(axes)
        low, _ = window_padding(x.size_of(name), result.size_of(name), size, stride, 1, True)
        high = size - stride - low
        if len(axes) != 1 or block % stride or result.size_of(name) * stride != x.size_of(name) \
                or not 0 <= high <= block or low > block:
            return None
        halos[name] = (low, high)
    return halos


def _constant(ctx: LowerContext, value: float, dtype) -> Value:
    return ctx.emit("constant", [], {"value": value, "dtype": dtype})[0]


def _edge(ctx: LowerContext, dim: str, axis: str, block: int, low: int, high: int) -> Value:
    """bool[dim = low + block + high]: the halo rows that lie past either end of the
    axis (the first device's low rows, the last device's high rows)."""
    position = ctx.emit("iota", [], {"shape": (Dim(dim, low + block + high),), "dim": Name(dim)})[0]
    index = ctx.emit("axis_index", [], {"axis": Name(axis)})[0]
    edges = []
    for rows, compare, bound, device in (("low", "lt", low, 0), ("high", "ge", low + block, ctx.mesh.axis_size(axis) - 1)):
        if (low if rows == "low" else high) == 0:
            continue
        inside = ctx.emit(compare, [position, _constant(ctx, bound, i32)], {})[0]
        at_device = ctx.emit("eq", [index, _constant(ctx, device, i32)], {})[0]
        edges.append(ctx.emit("logical_and", [inside, at_device], {})[0])
    return edges[0] if len(edges) == 1 else ctx.emit("logical_or", edges, {})[0]


def _replace(ctx: LowerContext, where: Value, value: float, x: Value) -> Value:
    """`x` with `value` where `where` (over some of x's dimensions) holds, in x's dimension order."""
    everywhere = ctx.emit("broadcast", [where], {"shape": x.type.dims})[0]
    return ctx.emit("select", [everywhere, _constant(ctx, value, x.type.dtype), x], {})[0]


def _halo_pool(ctx: LowerContext, op: Operation, x: Value, by_dim: dict[str, tuple[str, ...]],
               halos: dict[str, tuple[int, int]], name: str | None) -> Value:
    """This device's output block: its input block with halos (padding at the
    axis's ends, and along unsplit dimensions), pooled with `valid` padding."""
    dtype = x.type.dtype
    fill = _lowest(dtype) if op.name == "max_pool" else 0.0
    real: list[Value] = []  # per spatial dimension: 1 where an element is data, 0 where padding
    for dim, size, stride in zip(op.attr("spatial"), op.attr("window"), op.attr("strides") or op.attr("window")):
        extent = x.type.size_of(dim)
        if dim in halos:
            low, high = halos[dim]
            x = with_halos(ctx, x, dim, by_dim[dim][0], extent, low, high)
            ones = ctx.emit("ones", [], {"shape": (Dim(dim, low + extent + high),), "dtype": dtype})[0]
            if low or high:
                edge = _edge(ctx, dim, by_dim[dim][0], extent, low, high)
                x = _replace(ctx, edge, fill, x)
                ones = _replace(ctx, edge, 0.0, ones)
        else:
            low, high = window_padding(extent, -(-extent // stride), size, stride, 1, True)
            ones = ctx.emit("ones", [], {"shape": (Dim(dim, extent),), "dtype": dtype})[0]
            if low or high:
                x = ctx.emit("pad", [x], {"dim": Name(dim), "low": low, "high": high, "value": fill})[0]
                ones = ctx.emit("pad", [ones], {"dim": Name(dim), "low": low, "high": high})[0]
        real.append(ones)
    valid = {**op.attributes, "padding": Name("valid")}
    if op.name == "max_pool":
        return ctx.emit(op.name, [x], valid, name)[0]
    mask = real[0]
    for part in real[1:]:
        mask = ctx.emit("mul", [mask, part], {})[0]
    # avg_pool of the mask is the share of each window that is data.
    pooled, share = ctx.emit(op.name, [x], valid)[0], ctx.emit(op.name, [mask], valid)[0]
    return ctx.emit("div", [pooled, share], {}, name)[0]


def _lowest(dtype) -> float:
    """What max_pool pads with: -inf, or an integer type's least value."""
    return float("-inf") if dtype.is_float else float(np.iinfo(dtype.numpy).min)


def aligned_pool_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    if not any(by_dim.get(n) for n in op.attr("spatial")):
        return generic_rule(ctx, op, operands)
    if _inside_blocks(ctx, op, by_dim):
        x = ctx.want(sharded, layout)
        value = ctx.emit(op.name, [x], dict(op.attributes), result.name)[0]
        return [Sharded(value, layout, result.type)]
    halos = _halos(ctx, op, by_dim)
    if halos is None:
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, layout)
    return [Sharded(_halo_pool(ctx, op, x, by_dim, halos, result.name), layout, result.type)]


def _regrouped(before: tuple[Dim, ...], after: tuple[Dim, ...]) -> list[tuple[Dim, Dim]] | None:
    """For each smallest run of operand dimensions that a row-major reshape turns
    into a run of result dimensions of the same element count, the first dimension
    of each run. Size-1 dimensions, which no layout splits, are left out. None when
    a dimension is empty."""
    if any(d.size == 0 for d in (*before, *after)):
        return None
    before = tuple(d for d in before if d.size > 1)
    after = tuple(d for d in after if d.size > 1)
    leads, i, j = [], 0, 0
    while i < len(before) and j < len(after):
        leads.append((before[i], after[j]))
        count_before, count_after = before[i].size, after[j].size
        i, j = i + 1, j + 1
        while count_before != count_after:
            if count_before < count_after:
                count_before, i = count_before * before[i].size, i + 1
            else:
                count_after, j = count_after * after[j].size, j + 1
    return leads


def block_reshape_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Device k's block of a run's leading operand dimension is the k-th contiguous
    chunk of the run's elements, which is block k of the run's leading result
    dimension, so each device reshapes its block when both divide by the split."""
    (sharded,), (result,) = operands, op.results
    leads = _regrouped(sharded.global_type.dims, result.type.dims)
    if leads is None:
        return generic_rule(ctx, op, operands)
    wanted = dict(zip(result.type.names, ctx.layout(result).axes))
    operand_axes: dict[str, tuple[str, ...]] = {}
    result_axes: dict[str, tuple[str, ...]] = {}
    for first_before, first_after in leads:
        axes = wanted.get(first_after.name, ())
        if axes and first_before.size % ctx.mesh.group_size(axes) == 0:
            operand_axes[first_before.name] = result_axes[first_after.name] = axes
    x = ctx.want(sharded, ValueLayout(tuple(operand_axes.get(n, ()) for n in sharded.names)))
    shape = tuple(Dim(d.name, d.size // ctx.mesh.group_size(result_axes.get(d.name, ()))) for d in result.type.dims)
    value = ctx.emit("reshape", [x], {"shape": shape}, result.name)[0]
    return [Sharded(value, ValueLayout(tuple(result_axes.get(n, ()) for n in result.type.names)), result.type)]


POOL_RULES: dict[str, Rule] = {"max_pool": aligned_pool_rule, "avg_pool": aligned_pool_rule, "reshape": block_reshape_rule}
