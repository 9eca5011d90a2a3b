"""Collectives and device queries of local (post-spmd) programs.

They appear only in functions with `attributes {spmd = @m}`; operand and result
types are per-device types. A collective over mesh axes `axes` runs in groups of
devices that differ only along those axes; G is the product of their sizes and a
device's position in its group counts along `axes`, the first axis major
(`Mesh.groups`, `Mesh.index_in_group`).

References of device-aware ops simulate the whole mesh: each operand is a list
of per-device arrays (index = device number, row-major over the mesh) and the
result is such a list.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..attributes import BOOL, INT, NAME, NAMES, AttrSpec, one_of
from ..diagnostics import MeshirError
from ..dtypes import i32
from ..ir import Operation, Value
from ..mesh import Mesh
from ..registry import NOT_DIFFERENTIABLE, OpView, defop
from ..types import Dim, TensorType
from .common import as_dtype, require_dims, require_dtype, same_as_operand
from .grad_helpers import Cotangents, fresh_dim, in_order, product_partial, scalar

if TYPE_CHECKING:
    from ..emitter import Emitter

# How each `reduce` combines a stack of blocks (axis 0 = group position).
_REDUCERS: dict[str, Callable[..., np.ndarray]] = {
    "sum": np.sum,
    "max": np.max,
    "min": np.min,
    "prod": np.prod,
}
# sum and prod of booleans have no agreed meaning across backends; max/min are any/all.
_REDUCE_KINDS = {"sum": "numeric", "prod": "numeric", "max": "any", "min": "any"}
_REDUCE = one_of(*_REDUCERS)

PerDevice = list[np.ndarray]


def _mesh(view: OpView) -> Mesh:
    mesh = view.mesh
    if mesh is None or view.function is None or not view.function.is_local:
        raise MeshirError(f"{view.name}: needs the mesh of a local function (attributes {{spmd = @mesh}})")
    return mesh


def _check_axes(view: OpView, axes: tuple[str, ...]) -> int:
    """The group size G of `axes`, after checking each is an axis of the mesh."""
    mesh = _mesh(view)
    for axis in axes:
        if not mesh.has_axis(axis):
            raise MeshirError(
                f"{view.name}: '{axis}' is not an axis of mesh @{mesh.name} (axes: {', '.join(mesh.axis_names)})"
            )
    return mesh.group_size(axes)


def _check_divides(view: OpView, ttype: TensorType, dim: str, count: int, axes: tuple[str, ...]) -> None:
    size = ttype.size_of(dim)
    if size % count:
        raise MeshirError(
            f"{view.name}: dimension '{dim}' of size {size} cannot be cut into {count} blocks, one per device "
            f"of mesh axes {', '.join(axes)} (group size {count})"
        )


def _check_reduce(view: OpView) -> None:
    require_dtype(view, view.operand_types[0], _REDUCE_KINDS[view.attr("reduce")])


def _reduce_blocks(op: OpView, blocks: list[np.ndarray]) -> np.ndarray:
    """Reduce the group's blocks in group order; 16-bit floats accumulate in float32."""
    ttype = op.operand_types[0]
    stack = np.stack(blocks)
    if ttype.dtype.is_float and ttype.dtype.itemsize < 4:
        stack = stack.astype(np.float32)
    with np.errstate(all="ignore"):
        return as_dtype(_REDUCERS[op.attr("reduce")](stack, axis=0), ttype)


def _per_group(op: OpView, axes: tuple[str, ...], fn: Callable[[list[int]], list[np.ndarray]]) -> PerDevice:
    """Run `fn` on each group (device numbers in group order); it returns the group's results in that order."""
    out: list[np.ndarray | None] = [None] * op.mesh.size
    for group in op.mesh.groups(axes):
        for device, result in zip(group, fn(group)):
            out[device] = result
    return out


all_reduce = defop(
    "all_reduce", 1, "collectives",
    "Every device gets the reduction (`sum`, `max`, `min`, `prod`) of the operand over its group.",
    attrs={"axes": AttrSpec(NAMES), "reduce": AttrSpec(_REDUCE)},
    local_only=True, device_aware=True,
)


@all_reduce.type_rule
def _all_reduce_type(view: OpView) -> TensorType:
    _check_axes(view, view.attr("axes"))
    _check_reduce(view)
    return same_as_operand(view)


@all_reduce.reference
def _all_reduce(op: OpView, x: PerDevice) -> PerDevice:
    def group_result(group: list[int]) -> list[np.ndarray]:
        total = _reduce_blocks(op, [x[d] for d in group])
        return [total.copy() for _ in group]

    return _per_group(op, op.attr("axes"), group_result)


all_reduce.splittable("none")


all_gather = defop(
    "all_gather", 1, "collectives",
    "Dimension `dim` grows G times: every device gets its group's blocks concatenated in group order.",
    attrs={"dim": AttrSpec(NAME), "axes": AttrSpec(NAMES)},
    local_only=True, device_aware=True,
)


@all_gather.type_rule
def _all_gather_type(view: OpView) -> TensorType:
    count = _check_axes(view, view.attr("axes"))
    x, dim = view.operand_types[0], view.attr("dim")
    require_dims(view, x, [dim])
    return x.resized(dim, x.size_of(dim) * count)


@all_gather.reference
def _all_gather(op: OpView, x: PerDevice) -> PerDevice:
    axis = op.operand_types[0].axis_of(op.attr("dim"))

    def group_result(group: list[int]) -> list[np.ndarray]:
        whole = np.concatenate([x[d] for d in group], axis=axis)
        return [whole.copy() for _ in group]

    return _per_group(op, op.attr("axes"), group_result)


all_gather.splittable("none")


reduce_scatter = defop(
    "reduce_scatter", 1, "collectives",
    "Reduce over the group, then the device at group position k keeps the k-th of G blocks of `dim`.",
    attrs={"dim": AttrSpec(NAME), "axes": AttrSpec(NAMES), "reduce": AttrSpec(_REDUCE)},
    local_only=True, device_aware=True,
)


@reduce_scatter.type_rule
def _reduce_scatter_type(view: OpView) -> TensorType:
    axes, dim = view.attr("axes"), view.attr("dim")
    count = _check_axes(view, axes)
    x = view.operand_types[0]
    require_dims(view, x, [dim])
    _check_reduce(view)
    _check_divides(view, x, dim, count, axes)
    return x.resized(dim, x.size_of(dim) // count)


@reduce_scatter.reference
def _reduce_scatter(op: OpView, x: PerDevice) -> PerDevice:
    axis = op.operand_types[0].axis_of(op.attr("dim"))

    def group_result(group: list[int]) -> list[np.ndarray]:
        total = _reduce_blocks(op, [x[d] for d in group])
        return [block.copy() for block in np.split(total, len(group), axis=axis)]

    return _per_group(op, op.attr("axes"), group_result)


reduce_scatter.splittable("none")


all_to_all = defop(
    "all_to_all", 1, "collectives",
    "Cut `split_dim` into G chunks; chunk j of the device at group position k goes to position j, "
    "which concatenates its received chunks along `concat_dim` in source order.",
    attrs={"split_dim": AttrSpec(NAME), "concat_dim": AttrSpec(NAME), "axes": AttrSpec(NAMES)},
    local_only=True, device_aware=True,
)


@all_to_all.type_rule
def _all_to_all_type(view: OpView) -> TensorType:
    axes, split_dim, concat_dim = view.attr("axes"), view.attr("split_dim"), view.attr("concat_dim")
    count = _check_axes(view, axes)
    x = view.operand_types[0]
    require_dims(view, x, [split_dim, concat_dim])
    _check_divides(view, x, split_dim, count, axes)
    shrunk = x.resized(split_dim, x.size_of(split_dim) // count)
    return shrunk.resized(concat_dim, shrunk.size_of(concat_dim) * count)


@all_to_all.reference
def _all_to_all(op: OpView, x: PerDevice) -> PerDevice:
    ttype = op.operand_types[0]
    split_axis, concat_axis = ttype.axis_of(op.attr("split_dim")), ttype.axis_of(op.attr("concat_dim"))

    def group_result(group: list[int]) -> list[np.ndarray]:
        chunks = [np.split(x[d], len(group), axis=split_axis) for d in group]
        return [np.concatenate([chunks[source][j] for source in range(len(group))], axis=concat_axis)
                for j in range(len(group))]

    return _per_group(op, op.attr("axes"), group_result)


all_to_all.splittable("none")


collective_permute = defop(
    "collective_permute", 1, "collectives",
    "Along mesh axis `axis`, the device at coordinate c receives the operand of the device at c - shift; "
    "with no such device it receives zeros, unless `wrap` (then c - shift is taken modulo the axis size).",
    attrs={"axis": AttrSpec(NAME), "shift": AttrSpec(INT), "wrap": AttrSpec(BOOL, False)},
    local_only=True, device_aware=True,
)


@collective_permute.type_rule
def _collective_permute_type(view: OpView) -> TensorType:
    _check_axes(view, (view.attr("axis"),))
    return same_as_operand(view)


@collective_permute.reference
def _collective_permute(op: OpView, x: PerDevice) -> PerDevice:
    mesh, axis, shift, wrap = op.mesh, op.attr("axis"), op.attr("shift"), op.attr("wrap")
    size = mesh.axis_size(axis)
    out = []
    for device in mesh.devices():
        coords = mesh.coords(device)
        source = coords[axis] - shift
        if wrap:
            source %= size
        if 0 <= source < size:
            out.append(x[mesh.device({**coords, axis: source})].copy())
        else:
            out.append(np.zeros_like(x[device]))
    return out


collective_permute.splittable("none")


all_slice = defop(
    "all_slice", 1, "collectives",
    "No communication: the device at group position k keeps the k-th of G blocks of `dim` "
    "(the local form of a replicated-to-split reshard).",
    attrs={"dim": AttrSpec(NAME), "axes": AttrSpec(NAMES)},
    local_only=True, device_aware=True,
)


@all_slice.type_rule
def _all_slice_type(view: OpView) -> TensorType:
    axes, dim = view.attr("axes"), view.attr("dim")
    count = _check_axes(view, axes)
    x = view.operand_types[0]
    require_dims(view, x, [dim])
    _check_divides(view, x, dim, count, axes)
    return x.resized(dim, x.size_of(dim) // count)


@all_slice.reference
def _all_slice(op: OpView, x: PerDevice) -> PerDevice:
    axes, count = op.attr("axes"), op.mesh.group_size(op.attr("axes"))
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    return [np.split(x[d], count, axis=axis)[op.mesh.index_in_group(d, axes)].copy() for d in op.mesh.devices()]


all_slice.splittable("none")


axis_index = defop(
    "axis_index", 0, "collectives", "The device's coordinate along mesh axis `axis`, as an i32 scalar.",
    attrs={"axis": AttrSpec(NAME)},
    local_only=True, device_aware=True,
)


@axis_index.type_rule
def _axis_index_type(view: OpView) -> TensorType:
    _check_axes(view, (view.attr("axis"),))
    return TensorType(i32, ())


@axis_index.reference
def _axis_index(op: OpView) -> PerDevice:
    axis = op.attr("axis")
    return [np.array(op.mesh.coords(d)[axis], dtype=np.int32) for d in op.mesh.devices()]


axis_index.splittable("none")


dynamic_slice = defop(
    "dynamic_slice", 2, "collectives",
    "dynamic_slice(x, offset): `size` elements of `dim` from the integer scalar `offset`, "
    "which is clamped so that the slice fits (as in XLA).",
    attrs={"dim": AttrSpec(NAME), "size": AttrSpec(INT)},
    local_only=True,
)


@dynamic_slice.type_rule
def _dynamic_slice_type(view: OpView) -> TensorType:
    x, offset = view.operand_types
    dim, size = view.attr("dim"), view.attr("size")
    require_dims(view, x, [dim])
    if offset.rank != 0 or not offset.dtype.is_integer:
        raise MeshirError(f"{view.name}: the offset (operand 1) must be an integer scalar such as i32[], got {offset}")
    if not 0 <= size <= x.size_of(dim):
        raise MeshirError(f"{view.name}: size {size} must be between 0 and the size of dimension '{dim}', {x.size_of(dim)}")
    return x.resized(dim, size)


@dynamic_slice.reference
def _dynamic_slice(op: OpView, x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    ttype, dim, size = op.operand_types[0], op.attr("dim"), op.attr("size")
    start = int(np.clip(int(offset), 0, ttype.size_of(dim) - size))
    index = [slice(None)] * ttype.rank
    index[ttype.axis_of(dim)] = slice(start, start + size)
    return x[tuple(index)]


dynamic_slice.splittable("none")


# ---------------------------------------------------------------------------- gradients
# The transposes of the collectives, treating each device's operand as its own
# input: the loss is the sum over devices of what each device computes.


def _sum(e: Emitter, value: Value, axes: tuple[str, ...]) -> Value:
    return e.emit("all_reduce", value, axes=axes, reduce="sum")


def _reduction_partial(e: Emitter, x: Value, z: Value, g_total: Value, axes: tuple[str, ...], reduce: str) -> Value:
    """The gradient of z = all_reduce(x) over `axes` whose summed cotangent is `g_total`:
    max and min split it evenly among the devices holding the result, prod multiplies
    by the product of the other devices' elements."""
    if reduce == "sum":
        return g_total
    if reduce == "prod":
        partial = product_partial(e, x, z, lambda v: _sum(e, v, axes), lambda v: e.emit("all_reduce", v, axes=axes, reduce="prod"))
        return e.emit("mul", partial, g_total)
    hits = e.emit("eq", x, z)
    count = _sum(e, e.emit("cast", hits, dtype=x.type.dtype), axes)
    return e.emit("select", hits, e.emit("div", g_total, count), scalar(e, 0.0, x))


@all_reduce.gradient
def _all_reduce_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    axes = op.attr("axes")
    return [_reduction_partial(e, op.operands[0], op.result, _sum(e, cotangents[0], axes), axes, op.attr("reduce"))]


@reduce_scatter.gradient
def _reduce_scatter_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """reduce_scatter is all_reduce, then each device keeps its block: the blocks'
    cotangents gather back into the whole reduction's."""
    dim, axes = op.attr("dim"), op.attr("axes")
    g_total = e.emit("all_gather", cotangents[0], dim=dim, axes=axes)
    z = op.result if op.attr("reduce") == "sum" else e.emit("all_gather", op.result, dim=dim, axes=axes)
    return [_reduction_partial(e, op.operands[0], z, g_total, axes, op.attr("reduce"))]


all_gather.gradient(lambda e, op, cotangents: [
    e.emit("reduce_scatter", cotangents[0], dim=op.attr("dim"), axes=op.attr("axes"), reduce="sum")
])
all_to_all.gradient(lambda e, op, cotangents: [
    e.emit("all_to_all", cotangents[0], split_dim=op.attr("concat_dim"), concat_dim=op.attr("split_dim"), axes=op.attr("axes"))
])
collective_permute.gradient(lambda e, op, cotangents: [
    e.emit("collective_permute", cotangents[0], axis=op.attr("axis"), shift=-op.attr("shift"), wrap=op.attr("wrap"))
])
axis_index.gradient(NOT_DIFFERENTIABLE)


def _group_position(e: Emitter, axes: tuple[str, ...]) -> Value:
    """The device's position in its group over `axes` (first axis major), an i32 scalar."""
    mesh = e.module.mesh_of(e.function)
    position = None
    for axis in axes:
        index = e.emit("axis_index", axis=axis)
        position = index if position is None else e.emit("add", e.emit("mul", position, e.constant(mesh.axis_size(axis), i32)), index)
    return position


@all_slice.gradient
def _all_slice_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """The device's block of the cotangent in its place along `dim`, zeros elsewhere."""
    (g,), x = cotangents, op.operands[0]
    dim, axes = op.attr("dim"), op.attr("axes")
    count, block = e.module.mesh_of(e.function).group_size(axes), g.type.size_of(dim)
    tiled = e.emit("concat", *[g] * count, dim=dim)
    blocks = e.emit("div", e.emit("iota", shape=[x.type.dim(dim)], dim=dim), e.constant(block, i32))
    mine = e.emit("eq", blocks, _group_position(e, axes))
    return [in_order(e, e.emit("select", mine, tiled, scalar(e, 0.0, g)), x.type.names)]


@dynamic_slice.gradient
def _dynamic_slice_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """The cotangent in place at the clamped offset: gather it at (position - start),
    which is zero wherever that falls outside the slice."""
    (g,), (x, offset) = cotangents, op.operands
    dim, size = op.attr("dim"), op.attr("size")
    start = offset if offset.type.dtype == i32 else e.emit("cast", offset, dtype=i32)
    start = e.emit("maximum", e.emit("minimum", start, e.constant(x.type.size_of(dim) - size, i32)), e.constant(0, i32))
    # Indices along a fresh name: they have the operand's size, the cotangent the slice's.
    position = fresh_dim(f"{dim}_position", x.type)
    positions = e.emit("sub", e.emit("iota", shape=[Dim(position, x.type.size_of(dim))], dim=position), start)
    placed = e.emit("rename", e.emit("gather", g, positions, dim=dim), from_=position, to=dim)
    return [in_order(e, placed, x.type.names), None]
