"""Helpers the TF rules share: meshir dtypes as TF dtypes, named dimensions to
tensor axes, and the compute dtype policy of the numpy references (16-bit
floats compute in float32), as backends/xla/rules_common.py does for JAX.

A rule is `rule(op: OpView, *operands: tf.Tensor) -> tf.Tensor | tuple`, called
once per device inside that device's `tf.device` and name scope. `op.state` is
the device's `DeviceContext` (emit.py): which device it is, and the variables'
current values there.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from meshir.dtypes import DType
from meshir.registry import OpView
from meshir.types import TensorType

from .devices import tensorflow

tf = tensorflow()

Rule = Callable[..., Any]

TF_DTYPES: dict[str, Any] = {
    "f32": tf.float32,
    "bf16": tf.bfloat16,
    "f16": tf.float16,
    "f64": tf.float64,
    "i8": tf.int8,
    "i32": tf.int32,
    "i64": tf.int64,
    "u8": tf.uint8,
    "u32": tf.uint32,
    "bool": tf.bool,
}


def tf_dtype(dtype: DType) -> Any:
    return TF_DTYPES[dtype.name]


def compute_dtype(ttype: TensorType) -> Any:
    """float32 for 16-bit floats, as every reference widens them; else the dtype itself."""
    if ttype.dtype.is_float and ttype.dtype.itemsize < 4:
        return tf.float32
    return tf_dtype(ttype.dtype)


def widen(x: tf.Tensor, ttype: TensorType) -> tf.Tensor:
    wide = compute_dtype(ttype)
    return x if x.dtype == wide else tf.cast(x, wide)


def as_type(x: tf.Tensor, ttype: TensorType) -> tf.Tensor:
    """`x` in `ttype`'s dtype, broadcast to its shape (no op where it already is)."""
    target = tf_dtype(ttype.dtype)
    if x.dtype != target:
        x = tf.cast(x, target)
    if tuple(x.shape) != ttype.shape:
        x = tf.broadcast_to(x, ttype.shape)
    return x


def align(x: tf.Tensor, ttype: TensorType, target: Sequence[str]) -> tf.Tensor:
    """`x` (dimensions of `ttype`) with axes in `target` order and size-1 axes for
    the dimensions it lacks: broadcasting by name, as meshir.ops.common.align."""
    present = [n for n in target if ttype.has(n)]
    order = [ttype.axis_of(n) for n in present]
    if order != list(range(len(order))):
        x = tf.transpose(x, order)
    shape = [ttype.size_of(n) if n in present else 1 for n in target]
    return x if list(x.shape) == shape else tf.reshape(x, shape)


def axis_of(op: OpView, attr: str = "dim", operand: int = 0) -> int:
    """The tensor axis of the dimension named by attribute `attr` in operand `operand`."""
    return op.operand_types[operand].axis_of(op.attr(attr))


def lowest(dtype: Any) -> Any:
    return -np.inf if dtype.is_floating else dtype.min


def highest(dtype: Any) -> Any:
    return np.inf if dtype.is_floating else dtype.max


def scalar(value: Any, dtype: Any) -> tf.Tensor:
    """A literal converted by numpy at build time, so it rounds exactly as the reference's."""
    with np.errstate(all="ignore"):
        return tf.constant(np.asarray(value).astype(dtype.as_numpy_dtype))


def zeros(ttype: TensorType) -> tf.Tensor:
    return tf.zeros(ttype.shape, tf_dtype(ttype.dtype))


def move_axis(x: tf.Tensor, source: int, destination: int) -> tf.Tensor:
    """numpy.moveaxis for one axis (negative positions count from the end)."""
    rank = x.shape.rank
    source, destination = source % rank, destination % rank
    order = [a for a in range(rank) if a != source]
    order.insert(destination, source)
    return x if order == list(range(rank)) else tf.transpose(x, order)


def slice_axis(x: tf.Tensor, axis: int, begin: int | tf.Tensor, size: int) -> tf.Tensor:
    """Elements [begin, begin + size) of `axis`; `begin` may be a scalar tensor."""
    if isinstance(begin, int) and begin == 0 and size == x.shape[axis]:
        return x
    rank = x.shape.rank
    if isinstance(begin, int):
        starts: Any = [begin if a == axis else 0 for a in range(rank)]
    else:
        starts = tf.stack([tf.cast(begin, tf.int64) if a == axis else tf.constant(0, tf.int64) for a in range(rank)])
    sizes = [size if a == axis else -1 for a in range(rank)]
    return tf.slice(x, starts, tf.constant(sizes, tf.int64) if not isinstance(begin, int) else sizes)


def pad_axis(x: tf.Tensor, axis: int, low: int, high: int, fill: Any) -> tf.Tensor:
    padding = [[low, high] if a == axis else [0, 0] for a in range(x.shape.rank)]
    return tf.pad(x, padding, constant_values=tf.constant(fill, x.dtype))
