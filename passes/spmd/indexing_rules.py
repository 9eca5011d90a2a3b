"""Indexing over a split dimension without gathering it: each device works on its
block of the vocabulary with indices shifted by the block's offset, which comes
from `axis_index`. Out-of-range indices give zeros (gather, one_hot) or are
dropped (scatter_add), so each device contributes exactly its own rows."""
from __future__ import annotations

from meshir.attributes import Name
from meshir.dtypes import i32
from meshir.ir import Operation, Value
from meshir.mesh import ValueLayout
from meshir.types import Dim

from .rules import LowerContext, Rule, generic_rule
from .sharded import Sharded, relayout


def block_offset(ctx: LowerContext, axes: tuple[str, ...], block: int, dtype) -> Value:
    """This device's first index along a dimension split over `axes` into blocks of
    `block` elements (first axis major), as a scalar of `dtype`."""
    offset = None
    stride = block
    for axis in reversed(axes):
        index = ctx.emit("axis_index", [], {"axis": Name(axis)})[0]
        if dtype != i32:
            index = ctx.emit("cast", [index], {"dtype": dtype})[0]
        scale = ctx.emit("constant", [], {"value": stride, "dtype": dtype})[0]
        term = ctx.emit("mul", [index, scale], {})[0]
        offset = term if offset is None else ctx.emit("add", [offset, term], {})[0]
        stride *= ctx.mesh.axis_size(axis)
    return offset


def _vocabulary_axes(ctx: LowerContext, wanted: tuple[str, ...], used: set[str]) -> tuple[str, ...]:
    return tuple(a for a in wanted if a not in used)


def one_hot_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (indices,), (result,) = operands, op.results
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    new_dim = op.attributes["dim"]
    axes = by_dim[new_dim.name]
    if not axes:
        return generic_rule(ctx, op, operands)
    local_indices = ctx.want(indices, ValueLayout(tuple(by_dim[n] for n in indices.names)))
    block = new_dim.size // ctx.mesh.group_size(axes)
    shifted = ctx.emit("sub", [local_indices, block_offset(ctx, axes, block, indices.global_type.dtype)], {})[0]
    attributes = {**op.attributes, "dim": Dim(new_dim.name, block)}
    value = ctx.emit("one_hot", [shifted], attributes, result.name)[0]
    return [Sharded(value, layout, result.type)]


def gather_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Rows outside this device's block come back as zeros, so the gathered rows
    are a partial sum over the vocabulary's axes."""
    (table, indices), (result,) = operands, op.results
    dim = op.attr("dim")
    by_dim = dict(zip(result.type.names, ctx.layout(result).axes))
    used = {a for axes in by_dim.values() for a in axes}
    vocab_axes = _vocabulary_axes(ctx, table.layout.axes[table.names.index(dim)], used)
    if not vocab_axes:
        return generic_rule(ctx, op, operands)
    local_table = ctx.want(table, ValueLayout(tuple(vocab_axes if n == dim else by_dim.get(n, ()) for n in table.names)))
    local_indices = ctx.want(indices, ValueLayout(tuple(by_dim.get(n, ()) for n in indices.names)))
    block = table.global_type.size_of(dim) // ctx.mesh.group_size(vocab_axes)
    shifted = ctx.emit("sub", [local_indices, block_offset(ctx, vocab_axes, block, indices.global_type.dtype)], {})[0]
    value = ctx.emit("gather", [local_table, shifted], dict(op.attributes), result.name)[0]
    layout = ValueLayout(tuple(by_dim[n] for n in result.type.names))
    return [Sharded(value, layout, result.type, ctx.mesh_order(set(vocab_axes)))]


def scatter_add_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Each device adds only the updates that land in its block of rows; with the
    rows whole and the indices split (an embedding's gradient under data
    parallelism), each device scatters its own updates and the sum stays pending."""
    (table, indices, updates), (result,) = operands, op.results
    dim = op.attr("dim")
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    axes = by_dim[dim]
    if not axes:
        return _scatter_split_updates(ctx, op, operands) or generic_rule(ctx, op, operands)
    local_table = ctx.want(table, layout)
    # Every device needs every update, since any of them may land in its rows.
    local_indices = ctx.want(indices, ValueLayout(tuple(() for _ in indices.names)))
    local_updates = ctx.want(updates, ValueLayout(tuple(by_dim.get(n, ()) for n in updates.names)))
    block = result.type.size_of(dim) // ctx.mesh.group_size(axes)
    shifted = ctx.emit("sub", [local_indices, block_offset(ctx, axes, block, indices.global_type.dtype)], {})[0]
    value = ctx.emit("scatter_add", [local_table, shifted, local_updates], dict(op.attributes), result.name)[0]
    return [Sharded(value, layout, result.type)]


def _scatter_split_updates(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded] | None:
    """Scatter with the indices (and so the updates) split over mesh axes the result
    does not use: a partial sum over those axes, all-reduced once where needed
    (the table's size), instead of gathering every update to every device."""
    (table, indices, updates), (result,) = operands, op.results
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    by_index_dim = dict(zip(indices.names, indices.layout.axes))
    split = ctx.mesh_order({a for axes in indices.layout.axes for a in axes})
    used = {a for axes in layout.axes for a in axes}
    if not split or used & set(split) or indices.partial:
        return None
    local_updates = ctx.want(updates, ValueLayout(tuple(by_index_dim.get(n, by_dim.get(n, ())) for n in updates.names)))
    local_type = layout.local_type(result.type, ctx.mesh)
    zeros = ctx.emit("zeros", [], {"shape": local_type.dims, "dtype": local_type.dtype})[0]
    scattered = ctx.emit("scatter_add", [zeros, indices.value, local_updates], dict(op.attributes), result.name)[0]
    pending = Sharded(scattered, layout, result.type, split)
    base = ctx.want(table, layout)
    if base.owner is not None and base.owner.name == "zeros":
        return [pending]
    total = relayout(ctx.builder, pending, layout).value
    return [Sharded(ctx.emit("add", [base, total], {}, result.name)[0], layout, result.type)]


def iota_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (result,) = op.results
    layout = ctx.layout(result)
    by_dim = dict(zip(result.type.names, layout.axes))
    dim = op.attr("dim")
    axes = by_dim[dim]
    if not axes:
        return generic_rule(ctx, op, operands)
    shape = tuple(Dim(d.name, d.size // ctx.mesh.group_size(by_dim[d.name])) for d in op.attr("shape"))
    local = ctx.emit("iota", [], {**op.attributes, "shape": shape})[0]
    block = result.type.size_of(dim) // ctx.mesh.group_size(axes)
    value = ctx.emit("add", [local, block_offset(ctx, axes, block, result.type.dtype)], {}, result.name)[0]
    return [Sharded(value, layout, result.type)]


INDEXING_RULES: dict[str, Rule] = {
    "one_hot": one_hot_rule,
    "gather": gather_rule,
    "scatter_add": scatter_add_rule,
    "iota": iota_rule,
}


def cumsum_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Each device sums its own block, then adds the totals of the blocks before it,
    which one all_gather of the per-block totals provides."""
    (sharded,), (result,) = operands, op.results
    dim = op.attr("dim")
    layout = ctx.layout(result)
    axes = dict(zip(result.type.names, layout.axes))[dim]
    if not axes:
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, layout)
    block = result.type.size_of(dim) // ctx.mesh.group_size(axes)
    running = ctx.emit("cumsum", [x], {"dim": Name(dim)})[0]
    total = ctx.emit("slice", [running], {"dim": Name(dim), "begin": block - 1, "size": 1})[0]
    totals = ctx.emit("all_gather", [total], {"dim": Name(dim), "axes": tuple(Name(a) for a in axes)})[0]
    groups = ctx.mesh.group_size(axes)
    position = ctx.emit("iota", [], {"shape": (Dim(dim, groups),), "dim": Name(dim)})[0]
    earlier = ctx.emit("lt", [position, block_offset(ctx, axes, 1, i32)], {})[0]
    zero = ctx.emit("zeros", [], {"shape": (), "dtype": result.type.dtype})[0]
    before = ctx.emit("reduce_sum", [ctx.emit("select", [earlier, totals, zero], {})[0]], {"dims": (Name(dim),)})[0]
    value = ctx.emit("add", [running, before], {}, result.name)[0]
    return [Sharded(value, layout, result.type)]


INDEXING_RULES["cumsum"] = cumsum_rule
