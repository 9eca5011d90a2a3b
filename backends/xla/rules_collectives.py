"""XLA rules for the collectives of local programs, traced inside `jax.shard_map`.

meshir's mesh axes are the JAX mesh's axis names. A group over several axes
is ordered first-axis-major, which is how JAX orders an axis-name tuple too
(`jax.lax.axis_index(("y", "x"))` counts y major), so the axis tuple is passed
as it is. Sums of 16-bit floats accumulate in float32, and booleans reduce as
integers, matching the simulator (meshir/ops/collectives.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from meshir.registry import OpView

from .rules_common import Rule, as_type, axis_of, widen


def _axes(op: OpView) -> tuple[str, ...]:
    return tuple(op.attr("axes"))


def _group_position(axes: tuple[str, ...]) -> jax.Array:
    return jax.lax.axis_index(axes)


def _as_reducible(x: jax.Array, op: OpView) -> jax.Array:
    """The dtype a collective reduces in: float32 for 16-bit floats, int32 for bool."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.int32)
    return widen(x, op.operand_types[0])


def _gathered_reduce(x: jax.Array, axes: tuple[str, ...], reduce: str) -> jax.Array:
    """The group's blocks stacked in group order, then reduced: for `prod`, which
    has no collective of its own."""
    stack = jax.lax.all_gather(x, axes, axis=0, tiled=False)
    return _STACK_REDUCERS[reduce](stack, axis=0)


_STACK_REDUCERS = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min, "prod": jnp.prod}
_COLLECTIVE_REDUCERS = {
    "sum": jax.lax.psum,
    "max": jax.lax.pmax,
    "min": jax.lax.pmin,
    "prod": lambda x, axes: _gathered_reduce(x, axes, "prod"),
}


def _reduced(op: OpView, x: jax.Array) -> jax.Array:
    """The group's reduction of `x`, in its original dtype."""
    axes = _axes(op)
    if not axes:
        return x
    total = _COLLECTIVE_REDUCERS[op.attr("reduce")](_as_reducible(x, op), axes)
    return as_type(total, op.operand_types[0])


def _block_of_group(op: OpView, x: jax.Array) -> jax.Array:
    """The block of `dim` at this device's position in the group of `axes`."""
    axes, result = _axes(op), op.result_types[0]
    if not axes:
        return x
    size = result.size_of(op.attr("dim"))
    return jax.lax.dynamic_slice_in_dim(x, _group_position(axes) * size, size, axis=axis_of(op))


def _all_gather(op: OpView, x: jax.Array) -> jax.Array:
    axes = _axes(op)
    if not axes:
        return x
    return jax.lax.all_gather(x, axes, axis=axis_of(op), tiled=True)


def _reduce_scatter(op: OpView, x: jax.Array) -> jax.Array:
    axes = _axes(op)
    if axes and op.attr("reduce") == "sum":
        summed = jax.lax.psum_scatter(_as_reducible(x, op), axes, scatter_dimension=axis_of(op), tiled=True)
        return as_type(summed, op.result_types[0])
    # max, min and prod have no scatter collective: reduce, then keep the own block.
    return _block_of_group(op, _reduced(op, x))


def _all_to_all(op: OpView, x: jax.Array) -> jax.Array:
    axes = _axes(op)
    if not axes:
        return x
    split, concat = axis_of(op, "split_dim"), axis_of(op, "concat_dim")
    return jax.lax.all_to_all(x, axes, split, concat, tiled=True)


def _collective_permute(op: OpView, x: jax.Array) -> jax.Array:
    """Explicit (source, destination) pairs along the axis; a device no pair
    reaches receives zeros, which is ppermute's own rule."""
    axis, shift = op.attr("axis"), op.attr("shift")
    size = op.mesh.axis_size(axis)
    if op.attr("wrap"):
        pairs = [(source, (source + shift) % size) for source in range(size)]
    else:
        pairs = [(source, source + shift) for source in range(size) if 0 <= source + shift < size]
    if not pairs:
        return jnp.zeros_like(x)
    if x.dtype == jnp.bool_:
        return jax.lax.ppermute(x.astype(jnp.uint8), axis, pairs).astype(jnp.bool_)
    return jax.lax.ppermute(x, axis, pairs)


def _axis_index(op: OpView) -> jax.Array:
    return jax.lax.axis_index(op.attr("axis")).astype(np.int32)


def _dynamic_slice(op: OpView, x: jax.Array, offset: jax.Array) -> jax.Array:
    # XLA clamps the start so the slice fits, which is the op's rule; int64 keeps
    # large unsigned offsets from turning negative.
    return jax.lax.dynamic_slice_in_dim(x, offset.astype(jnp.int64), op.attr("size"), axis=axis_of(op))


RULES: dict[str, Rule] = {
    "all_reduce": _reduced,
    "all_gather": _all_gather,
    "reduce_scatter": _reduce_scatter,
    "all_to_all": _all_to_all,
    "collective_permute": _collective_permute,
    "all_slice": _block_of_group,
    "axis_index": _axis_index,
    "dynamic_slice": _dynamic_slice,
}
