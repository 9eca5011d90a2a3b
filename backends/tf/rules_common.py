"""Helpers the TF rules share: meshir dtypes as TF dtypes, named dimensions to
tensor axes, and the compute dtype policy of the numpy references (16-bit
floats compute in float32), as backends/xla/rules_common.py does for JAX.

A rule is `rule(op: OpView, *operands: tf.Tensor) -> tf.Tensor | tuple`, called
once per device inside that device's `tf.device` and name scope. `op.state` is
the device's `DeviceContext` (emit.py): which device it is, and the variables'
current values there.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

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


class ConstantPool:
    """One Const node per (device, dtype, value) in a graph. Rules ask for the same
    small constants (axes, shapes, zero, the generator's multipliers) again and
    again; each Const is a graph node and ~0.5 ms of Python to build, and before
    the pool they were half of all nodes. A device's constants live on it, under
    the name scope `constants/dev<i>`; those asked for outside any device's op
    live on `host` (`constants`; unplaced on one device)."""

    SCOPE = "constants"

    def __init__(self, graph: Any, devices: list[str] | None, host: str | None = None):
        self.graph, self.devices, self.host = graph, devices, host
        self.device: int | None = None
        self._cache: dict[tuple, tf.Tensor] = {}

    def get(self, value: Any, dtype: Any) -> tf.Tensor:
        array = np.asarray(value, dtype=dtype.as_numpy_dtype)
        key = (self.device, dtype, array.shape, array.tobytes())
        if key not in self._cache:
            placed = self.devices is not None and self.device is not None
            scope = self.SCOPE + (f"/dev{self.device}" if placed else "") + "/"
            # Shared by many ops: placed explicitly, with no control dependencies or
            # colocation of whichever op asked first.
            with self.graph.name_scope(scope), self.graph.control_dependencies(None), \
                    self.graph.colocate_with(None, ignore_existing=True), \
                    self.graph.device(self.devices[self.device] if placed else self.host):
                self._cache[key] = tf.constant(array, dtype)
        return self._cache[key]

    @contextlib.contextmanager
    def on(self, device: int | None) -> Iterator[None]:
        """Constants asked for inside belong to `device`."""
        outer, self.device = self.device, device
        try:
            yield
        finally:
            self.device = outer


_POOL: contextvars.ContextVar[ConstantPool | None] = contextvars.ContextVar("meshir_tf_constants", default=None)


@contextlib.contextmanager
def constant_pool(pool: ConstantPool) -> Iterator[ConstantPool]:
    """Make `pool` the one `const` uses while a graph is built."""
    token = _POOL.set(pool)
    try:
        yield pool
    finally:
        _POOL.reset(token)


def const(value: Any, dtype: Any = tf.int32) -> tf.Tensor:
    """A constant of `dtype` holding `value` (converted by numpy, so literals round
    as the reference's do), shared through the active pool."""
    pool = _POOL.get()
    if pool is None:
        with np.errstate(all="ignore"):
            return tf.constant(np.asarray(value).astype(dtype.as_numpy_dtype), dtype)
    with np.errstate(all="ignore"):
        return pool.get(np.asarray(value).astype(dtype.as_numpy_dtype), dtype)


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
        x = tf.broadcast_to(x, const(ttype.shape))
    return x


def align(x: tf.Tensor, ttype: TensorType, target: Sequence[str]) -> tf.Tensor:
    """`x` (dimensions of `ttype`) with axes in `target` order and size-1 axes for
    the dimensions it lacks: broadcasting by name, as meshir.ops.common.align."""
    present = [n for n in target if ttype.has(n)]
    order = [ttype.axis_of(n) for n in present]
    if order != list(range(len(order))):
        x = tf.transpose(x, const(order))
    shape = [ttype.size_of(n) if n in present else 1 for n in target]
    return x if list(x.shape) == shape else tf.reshape(x, const(shape))


def axis_of(op: OpView, attr: str = "dim", operand: int = 0) -> int:
    """The tensor axis of the dimension named by attribute `attr` in operand `operand`."""
    return op.operand_types[operand].axis_of(op.attr(attr))


def lowest(dtype: Any) -> Any:
    return -np.inf if dtype.is_floating else dtype.min


def zeros(ttype: TensorType) -> tf.Tensor:
    return tf.fill(const(ttype.shape), const(0, tf_dtype(ttype.dtype)))


def move_axis(x: tf.Tensor, source: int, destination: int) -> tf.Tensor:
    """numpy.moveaxis for one axis (negative positions count from the end)."""
    rank = x.shape.rank
    source, destination = source % rank, destination % rank
    order = [a for a in range(rank) if a != source]
    order.insert(destination, source)
    return x if order == list(range(rank)) else tf.transpose(x, const(order))


def slice_axis(x: tf.Tensor, axis: int, begin: int | tf.Tensor, size: int) -> tf.Tensor:
    """Elements [begin, begin + size) of `axis`; `begin` may be an int64 scalar tensor."""
    rank = x.shape.rank
    if isinstance(begin, int):
        if begin == 0 and size == x.shape[axis]:
            return x
        return tf.slice(x, const([begin if a == axis else 0 for a in range(rank)]),
                        const([size if a == axis else -1 for a in range(rank)]))
    starts = tf.stack([begin if a == axis else const(0, tf.int64) for a in range(rank)])
    return tf.slice(x, starts, const([size if a == axis else -1 for a in range(rank)], tf.int64))


def pad_axis(x: tf.Tensor, axis: int, low: int, high: int, fill: Any) -> tf.Tensor:
    padding = [[low, high] if a == axis else [0, 0] for a in range(x.shape.rank)]
    return tf.pad(x, const(padding), constant_values=const(fill, x.dtype))
