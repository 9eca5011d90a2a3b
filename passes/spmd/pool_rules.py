"""Pooling over split spatial dimensions without communication, and the
reshapes strided windows use.

A pool whose windows lie inside one device's block (no padding, window no
wider than the stride, blocks a multiple of the stride) is each device pooling
its own block: output block k is input block k pooled. Strided window gradients
(meshir/ops/windows.py) cut a dimension into (dim / stride, phase) with a
reshape, and merge it back; a row-major reshape that keeps the split on the
leading dimension of each group of dimensions it regroups is a local reshape of
each device's block, so these keep their split too. Anything else falls back
to the generic rule.
"""
from __future__ import annotations

from meshir.ir import Operation
from meshir.mesh import ValueLayout
from meshir.types import Dim

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


def aligned_pool_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    if not any(by_dim.get(n) for n in op.attr("spatial")) or not _inside_blocks(ctx, op, by_dim):
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, layout)
    value = ctx.emit(op.name, [x], dict(op.attributes), result.name)[0]
    return [Sharded(value, layout, result.type)]


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
