"""meshir's counter-based generator (meshir/random.py) in TensorFlow ops, bit for bit.

Only uint32 wrapping add and multiply, xor and logical right shifts, which TF
has on CPU (AddV2, Mul, BitwiseXor, RightShift for uint32). Each element's bits
come from its *global* row-major linear index. Each device's copy of an op is
emitted separately, so a device's block offsets are numbers known when the
graph is built: the index is an iota plus constants, no device queries.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from meshir import random as reference
from meshir.mesh import Mesh, ValueLayout

from .rules_common import const, tf


def _u32(value: int) -> tf.Tensor:
    return const(np.uint32(value & 0xFFFFFFFF), tf.uint32)


def mix(x: tf.Tensor) -> tf.Tensor:
    """lowbias32, as meshir.random.mix."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def stream_key(seed: int, step: int | tf.Tensor, stream: int) -> tf.Tensor:
    """mix(mix(seed_key + step) ^ stream). With a Python step the whole key is
    computed now, by the reference; an i32 step tensor is reinterpreted as uint32
    (two's complement), as the reference's `_as_u32`."""
    if isinstance(step, int):
        return const(reference.stream_key(seed, step, stream), tf.uint32)
    key = mix(const(reference.seed_key(seed), tf.uint32) + tf.bitcast(step, tf.uint32))
    return mix(tf.bitwise.bitwise_xor(key, _u32(stream)))


def random_bits(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    key = stream_key(seed, step, stream)
    return mix(mix(tf.bitwise.bitwise_xor(index, key)) + key)


def uniform(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    """float32 in [0, 1): the top 24 bits times 2**-24, exact."""
    top = tf.bitwise.right_shift(random_bits(seed, step, stream, index), _u32(8))
    return tf.cast(top, tf.float32) * const(2.0**-24, tf.float32)


def normal(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    """Box-Muller in float32 from uniform streams 2*stream and 2*stream + 1. The
    integer bits are exact; TF's log and cos round like numpy's only to float32
    rounding (meshir/random.py), so normal draws agree to rounding, and draw the
    same values on every mesh and layout."""
    u1 = uniform(seed, step, 2 * stream, index)
    u2 = uniform(seed, step, 2 * stream + 1, index)
    radius = tf.sqrt(const(-2.0, tf.float32) * tf.math.log(const(1.0, tf.float32) - u1))
    return radius * tf.cos(const(2.0 * math.pi, tf.float32) * u2)


def keep_mask(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor, rate: float) -> tf.Tensor:
    """uniform >= rate decided on the integer bits, as meshir.random.keep_mask."""
    top = tf.bitwise.right_shift(random_bits(seed, step, stream, index), _u32(8))
    return top >= _u32(reference.keep_threshold(rate))


def linear_index(local_shape: Sequence[int], global_shape: Sequence[int] | None = None,
                 offsets: Sequence[int] | None = None) -> tf.Tensor:
    """uint32 global row-major linear indices of the block of `local_shape` starting at
    `offsets` in a value of `global_shape` (default: the block is the whole value):
    one int64 Range per axis (TF has no uint32 Range), summed. A drawn value holds
    at most 2**32 elements (`meshir.random.check_drawable`), so no term wraps."""
    global_shape = tuple(local_shape) if global_shape is None else tuple(global_shape)
    offsets = [0] * len(local_shape) if offsets is None else list(offsets)
    index = const(0, tf.uint32)
    if 0 in local_shape:  # nothing to draw (and a zero stride would make an empty Range fail)
        return tf.fill(const(local_shape), index)
    for axis, (size, offset) in enumerate(zip(local_shape, offsets)):
        if size == 1 and offset == 0:
            continue  # adds 0
        stride = math.prod(global_shape[axis + 1:])
        coords = tf.range(const(offset * stride, tf.int64), const((offset + size) * stride, tf.int64), const(stride, tf.int64))
        index = index + tf.reshape(tf.cast(coords, tf.uint32), const([size if a == axis else 1 for a in range(len(local_shape))]))
    return tf.broadcast_to(index, const(local_shape))


def block_offsets(layout: ValueLayout, mesh: Mesh, device: int, local_shape: Sequence[int]) -> tuple[list[int], tuple[int, ...]]:
    """Where `device`'s block of a value with `layout` starts along each dimension,
    and the value's global shape. A dimension split over several axes counts
    them first-axis-major (`Mesh.index_in_group`)."""
    offsets, global_shape = [], []
    for index, (size, axes) in enumerate(zip(local_shape, layout.axes)):
        global_shape.append(size * layout.split_count(mesh, index))
        offsets.append(mesh.index_in_group(device, axes) * size)
    return offsets, tuple(global_shape)
