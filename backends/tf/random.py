"""meshir's counter-based generator (meshir/random.py) in TensorFlow ops.

Only uint32 wrapping add and multiply, xor and logical right shifts, which TF
has on CPU (AddV2, Mul, BitwiseXor, RightShift for uint32), so the bits, uniform
draws and dropout masks are the reference's bit for bit; normal draws use TF's
float32 log and cos, equal to numpy's to float32 rounding. Each element's bits
come from its *global* row-major linear index. Each device's copy of an op is
emitted separately, so a device's block offsets are numbers known when the
graph is built: the index is an iota plus constants, no device queries.

A draw is ~20 TF ops (two rounds of the mixer) and a normal one twice that, on
every device, for every random op and random initializer: the draws are TF
functions (`meshir_bits`, `meshir_uniform`, `meshir_normal`, `meshir_keep`) in
the graph's library, called once per device, which keeps a GraphDef small (a
truncated normal initializer, eight draws per element, is 640 nodes on 8
devices instead of ~3,400). TensorFlow's function optimizer inlines them before
a Session runs the graph.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from meshir import random as reference
from meshir.mesh import Mesh, ValueLayout

from .rules_common import const, tf

Literal = Callable[[int], tf.Tensor]


def _u32(value: int) -> tf.Tensor:
    """A uint32 constant of the graph being built (shared through the pool)."""
    return const(np.uint32(value & 0xFFFFFFFF), tf.uint32)


def _literal(value: int) -> tf.Tensor:
    """A uint32 constant inside a TF function's body, which has its own graph."""
    return tf.constant(np.uint32(value & 0xFFFFFFFF))


def mix(x: tf.Tensor, u32: Literal = _u32) -> tf.Tensor:
    """lowbias32, as meshir.random.mix."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u32(16)))
    x = x * u32(0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u32(15)))
    x = x * u32(0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u32(16)))


def stream_key(seed: int, step: int | tf.Tensor, stream: int) -> tf.Tensor:
    """mix(mix(seed_key + step) ^ stream). With a Python step the whole key is
    computed now, by the reference; an i32 step tensor is reinterpreted as uint32
    (two's complement), as the reference's `_as_u32`."""
    if isinstance(step, int):
        return const(reference.stream_key(seed, step, stream), tf.uint32)
    key = mix(const(reference.seed_key(seed), tf.uint32) + tf.bitcast(step, tf.uint32))
    return mix(tf.bitwise.bitwise_xor(key, _u32(stream)))


def _bits(index: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    return mix(mix(tf.bitwise.bitwise_xor(index, key), _literal) + key, _literal)


def _top24(index: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    return tf.bitwise.right_shift(_bits(index, key), _literal(8))


def _unit(index: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """float32 in [0, 1): the top 24 bits times 2**-24, exact."""
    return tf.cast(_top24(index, key), tf.float32) * tf.constant(np.float32(2.0**-24))


_INDEX, _KEY = tf.TensorSpec(None, tf.uint32), tf.TensorSpec([], tf.uint32)


@tf.function(input_signature=[_INDEX, _KEY], autograph=False)
def meshir_bits(index: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    return _bits(index, key)


@tf.function(input_signature=[_INDEX, _KEY], autograph=False)
def meshir_uniform(index: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    return _unit(index, key)


@tf.function(input_signature=[_INDEX, _KEY, _KEY], autograph=False)
def meshir_normal(index: tf.Tensor, key_radius: tf.Tensor, key_angle: tf.Tensor) -> tf.Tensor:
    """Box-Muller in float32. The integer bits are exact; TF's log and cos round
    like numpy's only to float32 rounding (meshir/random.py)."""
    radius = tf.sqrt(tf.constant(np.float32(-2.0)) * tf.math.log(tf.constant(np.float32(1.0)) - _unit(index, key_radius)))
    return radius * tf.cos(tf.constant(np.float32(2.0 * math.pi)) * _unit(index, key_angle))


@tf.function(input_signature=[_INDEX, _KEY, _KEY], autograph=False)
def meshir_keep(index: tf.Tensor, key: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    return _top24(index, key) >= threshold


def _call(function, index: tf.Tensor, *keys: tf.Tensor) -> tf.Tensor:
    """A call of one draw function (a PartitionedCall node on the current device)."""
    return function.get_concrete_function()(index, *keys)


def random_bits(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    return _call(meshir_bits, index, stream_key(seed, step, stream))


def uniform(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    """float32 in [0, 1) from stream `stream`."""
    return _call(meshir_uniform, index, stream_key(seed, step, stream))


def normal(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor) -> tf.Tensor:
    """A standard normal from uniform streams 2*stream and 2*stream + 1; the same
    values on every mesh and layout."""
    return _call(meshir_normal, index, stream_key(seed, step, 2 * stream), stream_key(seed, step, 2 * stream + 1))


def keep_mask(seed: int, step: int | tf.Tensor, stream: int, index: tf.Tensor, rate: float) -> tf.Tensor:
    """uniform >= rate decided on the integer bits, as meshir.random.keep_mask."""
    return _call(meshir_keep, index, stream_key(seed, step, stream), _u32(reference.keep_threshold(rate)))


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
