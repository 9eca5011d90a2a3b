"""XLA rules for shape, indexing, state, constant and mesh ops."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from meshir.ops.state import variable_of
from meshir.registry import OpView
from meshir.types import TensorType

from .rules_common import Rule, align, as_type, axis_of, scalar

# ---------------------------------------------------------------------------- shape


def _broadcast(op: OpView, x: jax.Array) -> jax.Array:
    result = op.result_types[0]
    return jnp.broadcast_to(align(x, op.operand_types[0], result.names), result.shape)


def _slice(op: OpView, x: jax.Array) -> jax.Array:
    begin = op.attr("begin")
    return jax.lax.slice_in_dim(x, begin, begin + op.attr("size"), axis=axis_of(op))


def _split(op: OpView, x: jax.Array) -> tuple[jax.Array, ...]:
    axis, pieces, begin = axis_of(op), [], 0
    for size in op.attr("sizes"):
        pieces.append(jax.lax.slice_in_dim(x, begin, begin + size, axis=axis))
        begin += size
    return tuple(pieces)


def _pad_axis(x: jax.Array, axis: int, low: int, high: int, fill: np.ndarray) -> jax.Array:
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (low, high, 0)
    return jax.lax.pad(x, jnp.asarray(fill, x.dtype), config)


def _pad(op: OpView, x: jax.Array) -> jax.Array:
    fill = scalar(op.attr("value"), op.result_types[0].dtype.numpy)
    return _pad_axis(x, axis_of(op), op.attr("low"), op.attr("high"), fill)


def _unstack(op: OpView, x: jax.Array) -> tuple[jax.Array, ...]:
    axis = axis_of(op)
    return tuple(jax.lax.index_in_dim(x, i, axis=axis, keepdims=False) for i in range(x.shape[axis]))


def _shift(op: OpView, x: jax.Array) -> jax.Array:
    """out[i] = x[i - offset]; without wrap, the vacated positions are zero."""
    axis, offset = axis_of(op), op.attr("offset")
    length = x.shape[axis]
    if op.attr("wrap"):
        return jnp.roll(x, offset, axis=axis)
    kept = max(length - abs(offset), 0)
    zero = np.zeros((), x.dtype)
    if offset >= 0:
        return _pad_axis(jax.lax.slice_in_dim(x, 0, kept, axis=axis), axis, length - kept, 0, zero)
    return _pad_axis(jax.lax.slice_in_dim(x, length - kept, length, axis=axis), axis, 0, length - kept, zero)


# ---------------------------------------------------------------------------- indexing


def _one_hot(op: OpView, indices: jax.Array) -> jax.Array:
    # int64, so that every index dtype (u32 included) compares exactly.
    classes = jnp.arange(op.attr("dim").size, dtype=jnp.int64)
    return as_type(indices.astype(jnp.int64)[..., None] == classes, op.result_types[0])


def _valid(indices: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    wide = indices.astype(jnp.int64)
    return wide, (wide >= 0) & (wide < size)


def _gather(op: OpView, x: jax.Array, indices: jax.Array) -> jax.Array:
    result = op.result_types[0]
    slices = jnp.moveaxis(x, axis_of(op), 0)
    if slices.shape[0] == 0:  # every index is out of range, and there is no row to pick
        return jnp.zeros(result.shape, result.dtype.numpy)
    wide, valid = _valid(indices, slices.shape[0])
    picked = jnp.take(slices, jnp.where(valid, wide, 0), axis=0)
    mask = valid.reshape(valid.shape + (1,) * (slices.ndim - 1))
    return as_type(jnp.where(mask, picked, jnp.zeros((), picked.dtype)), result)


def _scatter_add(op: OpView, x: jax.Array, indices: jax.Array, updates: jax.Array) -> jax.Array:
    result = op.result_types[0]
    # 16-bit floats accumulate in float32, as the reference.
    accumulate = np.float32 if result.dtype.is_float and result.dtype.itemsize < 4 else result.dtype.numpy
    axis = axis_of(op)
    target = jnp.moveaxis(x.astype(accumulate), axis, 0)
    size = target.shape[0]
    wide, valid = _valid(indices, size)
    # Out-of-range rows go to index `size` and are dropped (a negative index
    # would wrap around under JAX's indexing rules).
    rows = jnp.where(valid, wide, size).reshape(-1)
    summed = target.at[rows].add(updates.astype(accumulate).reshape((indices.size, *target.shape[1:])), mode="drop")
    return as_type(jnp.moveaxis(summed, 0, axis), result)


def _iota(op: OpView) -> jax.Array:
    result = op.result_types[0]
    axis = result.axis_of(op.attr("dim"))
    # Count in int64 and convert once, as the reference's arange does.
    return as_type(jax.lax.broadcasted_iota(jnp.int64, result.shape, axis), result)


# ---------------------------------------------------------------------------- state and constants


def _stored(op: OpView) -> TensorType:
    """The type an assigned value is stored in: its own shape, the variable's slice dtype."""
    return op.operand_types[0].with_dtype(variable_of(op).slice_type.dtype)


def _read(op: OpView) -> jax.Array:
    return as_type(op.state[op.attr("var").name], op.result_types[0])


def _assign(op: OpView, x: jax.Array) -> tuple:
    op.state[op.attr("var").name] = as_type(x, _stored(op))
    return ()


def _assign_add(op: OpView, x: jax.Array) -> tuple:
    name, ttype = op.attr("var").name, _stored(op)
    old = op.state[name]
    if ttype.dtype.is_float and min(ttype.dtype.itemsize, op.operand_types[0].dtype.itemsize) < 4:
        old, x = old.astype(jnp.float32), x.astype(jnp.float32)
    op.state[name] = as_type(old + x, ttype)
    return ()


def _constant(op: OpView) -> jax.Array:
    result = op.result_types[0]
    value = op.attr("value")
    if isinstance(value, tuple):
        # numpy infers int64 for all-integer lists, so large i64 literals stay exact.
        return jnp.asarray(np.array(value).astype(result.dtype.numpy).reshape(result.shape))
    return jnp.full(result.shape, np.full((), value, dtype=result.dtype.numpy))


def _filled(fill: int | None) -> Rule:
    def rule(op: OpView) -> jax.Array:
        result = op.result_types[0]
        value = op.attr("value") if fill is None else fill
        return jnp.full(result.shape, np.full((), value, dtype=result.dtype.numpy))

    return rule


def _identity(op: OpView, x: jax.Array) -> jax.Array:
    return x


RULES: dict[str, Rule] = {
    "rename": _identity,
    "reshape": lambda op, x: jnp.reshape(x, op.result_types[0].shape),
    "transpose": lambda op, x: jnp.transpose(x, [op.operand_types[0].axis_of(n) for n in op.attr("order")]),
    "broadcast": _broadcast,
    "slice": _slice,
    "concat": lambda op, *xs: jnp.concatenate(xs, axis=axis_of(op)),
    "split": _split,
    "pad": _pad,
    "stack": lambda op, *xs: jnp.stack(xs, axis=op.attr("axis")),
    "unstack": _unstack,
    "shift": _shift,
    "one_hot": _one_hot,
    "gather": _gather,
    "scatter_add": _scatter_add,
    "iota": _iota,
    "read": _read,
    "assign": _assign,
    "assign_add": _assign_add,
    "stop_gradient": lambda op, x: jax.lax.stop_gradient(x),
    "constant": _constant,
    "zeros": _filled(0),
    "ones": _filled(1),
    "full": _filled(None),
    # In a global program both are the identity on the value; the gspmd mode
    # turns reshard into a sharding constraint (compile.py).
    "reshard": _identity,
    "transfer": _identity,
}
