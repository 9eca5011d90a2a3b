"""TensorFlow rules for shape, indexing, state, constant and mesh ops."""
from __future__ import annotations

import numpy as np

from meshir.ops.state import variable_of
from meshir.registry import OpView
from meshir.types import TensorType

from .rules_common import Rule, align, as_type, axis_of, const, move_axis, pad_axis, slice_axis, tf, tf_dtype, zeros

# ---------------------------------------------------------------------------- shape


def _broadcast(op: OpView, x: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    return tf.broadcast_to(align(x, op.operand_types[0], result.names), const(result.shape))


def _slice(op: OpView, x: tf.Tensor) -> tf.Tensor:
    return slice_axis(x, axis_of(op), op.attr("begin"), op.attr("size"))


def _split(op: OpView, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
    axis, pieces, begin = axis_of(op), [], 0
    for size in op.attr("sizes"):
        pieces.append(slice_axis(x, axis, begin, size))
        begin += size
    return tuple(pieces)


def _pad(op: OpView, x: tf.Tensor) -> tf.Tensor:
    with np.errstate(all="ignore"):
        fill = np.asarray(op.attr("value")).astype(x.dtype.as_numpy_dtype)
    return pad_axis(x, axis_of(op), op.attr("low"), op.attr("high"), fill)


def _unstack(op: OpView, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
    return tuple(tf.unstack(x, axis=axis_of(op)))


def _shift(op: OpView, x: tf.Tensor) -> tf.Tensor:
    """out[i] = x[i - offset]; without wrap, the vacated positions are zero."""
    axis, offset = axis_of(op), op.attr("offset")
    length = x.shape[axis]
    if op.attr("wrap"):
        return tf.roll(x, const(offset % length), axis=const(axis)) if length else x
    kept = max(length - abs(offset), 0)
    zero = np.zeros((), x.dtype.as_numpy_dtype)
    if offset >= 0:
        return pad_axis(slice_axis(x, axis, 0, kept), axis, length - kept, 0, zero)
    return pad_axis(slice_axis(x, axis, length - kept, kept), axis, 0, length - kept, zero)


# ---------------------------------------------------------------------------- indexing


def _one_hot(op: OpView, indices: tf.Tensor) -> tf.Tensor:
    # int64, so that every index dtype (u32 included) compares exactly.
    classes = const(np.arange(op.attr("dim").size), tf.int64)
    return as_type(tf.equal(tf.cast(indices, tf.int64)[..., None], classes), op.result_types[0])


def _valid(indices: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    wide = tf.cast(indices, tf.int64)
    return wide, (wide >= const(0, tf.int64)) & (wide < const(size, tf.int64))


def _gather(op: OpView, x: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    slices = move_axis(x, axis_of(op), 0)
    if slices.shape[0] == 0:  # every index is out of range, and there is no row to pick
        return zeros(result)
    wide, valid = _valid(indices, slices.shape[0])
    # TF's Gather fails on an index out of range, so those pick row 0 and are masked.
    picked = tf.gather(slices, tf.where(valid, wide, const(0, tf.int64)), axis=const(0))
    mask = tf.reshape(valid, const(valid.shape + (1,) * (slices.shape.rank - 1)))
    return as_type(tf.where(mask, picked, const(0, picked.dtype)), result)


def _scatter_add(op: OpView, x: tf.Tensor, indices: tf.Tensor, updates: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    # 16-bit floats accumulate in float32, as the reference.
    accumulate = tf.float32 if result.dtype.is_float and result.dtype.itemsize < 4 else x.dtype
    axis = axis_of(op)
    target = move_axis(tf.cast(x, accumulate), axis, 0)
    size = target.shape[0]
    wide, valid = _valid(indices, size)
    # TF's scatter fails on an index out of range: those rows land in one extra
    # row past the end, which is cut off again.
    rows = tf.reshape(tf.where(valid, wide, const(size, tf.int64)), const([-1, 1]))
    padded = pad_axis(target, 0, 0, 1, np.zeros((), accumulate.as_numpy_dtype))
    flat_updates = tf.reshape(tf.cast(updates, accumulate), const([int(np.prod(indices.shape)), *target.shape[1:]]))
    summed = slice_axis(tf.tensor_scatter_nd_add(padded, rows, flat_updates), 0, 0, size)
    return as_type(move_axis(summed, 0, axis), result)


def _iota(op: OpView) -> tf.Tensor:
    result = op.result_types[0]
    axis = result.axis_of(op.attr("dim"))
    # Count in int64 and convert once, as the reference's arange does.
    coords = np.arange(result.shape[axis]).reshape([-1 if a == axis else 1 for a in range(result.rank)])
    return as_type(const(coords, tf.int64), result)


# ---------------------------------------------------------------------------- state and constants


def _stored(op: OpView) -> TensorType:
    """The type an assigned value is stored in: its own shape, the variable's slice dtype."""
    return op.operand_types[0].with_dtype(variable_of(op).slice_type.dtype)


def _read(op: OpView) -> tf.Tensor:
    return as_type(op.state.read(op.attr("var").name), op.result_types[0])


def _assign(op: OpView, x: tf.Tensor) -> tuple:
    op.state.write(op.attr("var").name, as_type(x, _stored(op)))
    return ()


def _assign_add(op: OpView, x: tf.Tensor) -> tuple:
    name, ttype = op.attr("var").name, _stored(op)
    old = op.state.read(name)
    if ttype.dtype.is_float and min(ttype.dtype.itemsize, op.operand_types[0].dtype.itemsize) < 4:
        old, x = tf.cast(old, tf.float32), tf.cast(x, tf.float32)
    op.state.write(name, as_type(old + x, ttype))
    return ()


def _constant(op: OpView) -> tf.Tensor:
    result = op.result_types[0]
    value = op.attr("value")
    dtype = result.dtype.numpy
    if isinstance(value, tuple):
        # numpy infers int64 for all-integer lists, so large i64 literals stay exact.
        return const(np.array(value).astype(dtype).reshape(result.shape), tf_dtype(result.dtype))
    return tf.fill(const(result.shape), const(np.full((), value, dtype=dtype), tf_dtype(result.dtype)))


def _filled(fill: int | None) -> Rule:
    def rule(op: OpView) -> tf.Tensor:
        result = op.result_types[0]
        value = op.attr("value") if fill is None else fill
        return tf.fill(const(result.shape), const(np.full((), value, dtype=result.dtype.numpy), tf_dtype(result.dtype)))

    return rule


def _identity(op: OpView, x: tf.Tensor) -> tf.Tensor:
    return tf.identity(x)


RULES: dict[str, Rule] = {
    "rename": _identity,
    "reshape": lambda op, x: tf.reshape(x, const(op.result_types[0].shape)),
    "transpose": lambda op, x: tf.transpose(x, const([op.operand_types[0].axis_of(n) for n in op.attr("order")])),
    "broadcast": _broadcast,
    "slice": _slice,
    "concat": lambda op, *xs: tf.concat(xs, axis=const(axis_of(op))),
    "split": _split,
    "pad": _pad,
    "stack": lambda op, *xs: tf.stack(xs, axis=op.attr("axis")),
    "unstack": _unstack,
    "shift": _shift,
    "one_hot": _one_hot,
    "gather": _gather,
    "scatter_add": _scatter_add,
    "iota": _iota,
    "read": _read,
    "assign": _assign,
    "assign_add": _assign_add,
    "stop_gradient": lambda op, x: tf.stop_gradient(x),
    "constant": _constant,
    "zeros": _filled(0),
    "ones": _filled(1),
    "full": _filled(None),
    # In a global program both are the identity on the value (the spmd pass turns
    # them into collectives in local programs).
    "reshard": _identity,
    "transfer": _identity,
}
