"""meshir's counter-based generator (meshir/random.py) in JAX, bit for bit.

Only uint32 wrapping add and multiply, xor and logical right shifts, as the
reference's docstring prescribes. Each element's bits come from its *global*
row-major linear index: a device holding a block of a value computes the
block's indices from its coordinates in the mesh (`block_offsets`), so a draw
is the same on every mesh and layout.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from meshir import random as reference
from meshir.mesh import Mesh, ValueLayout

_U32 = jnp.uint32


def _u32(value: int) -> np.uint32:
    return np.uint32(value & 0xFFFFFFFF)


def mix(x: jax.Array) -> jax.Array:
    """lowbias32, as meshir.random.mix."""
    x = x ^ (x >> _u32(16))
    x = x * _u32(0x7FEB352D)
    x = x ^ (x >> _u32(15))
    x = x * _u32(0x846CA68B)
    return x ^ (x >> _u32(16))


def _step_bits(step: int | jax.Array) -> jax.Array:
    """The step (a Python int or the i32[] step operand) as uint32, two's complement,
    as the reference's `_as_u32`."""
    if isinstance(step, (int, np.integer)):
        return jnp.asarray(_u32(int(step)))
    return jax.lax.bitcast_convert_type(jnp.asarray(step, jnp.int32), _U32)


def stream_key(seed: int, step: int | jax.Array, stream: int) -> jax.Array:
    """mix(mix(seed_key + step) ^ stream); the seed part is folded at trace time."""
    key = mix(jnp.asarray(reference.seed_key(seed)) + _step_bits(step))
    return mix(key ^ _u32(stream))


def random_bits(seed: int, step: int | jax.Array, stream: int, index: jax.Array) -> jax.Array:
    key = stream_key(seed, step, stream)
    return mix(mix(index ^ key) + key)


def uniform(seed: int, step: int | jax.Array, stream: int, index: jax.Array) -> jax.Array:
    """float32 in [0, 1): the top 24 bits times 2**-24, exact."""
    top = random_bits(seed, step, stream, index) >> _u32(8)
    return top.astype(jnp.float32) * np.float32(2.0**-24)


def normal(seed: int, step: int | jax.Array, stream: int, index: jax.Array) -> jax.Array:
    """Box-Muller in float32 from uniform streams 2*stream and 2*stream + 1."""
    u1 = uniform(seed, step, 2 * stream, index)
    u2 = uniform(seed, step, 2 * stream + 1, index)
    radius = jnp.sqrt(np.float32(-2.0) * jnp.log(np.float32(1.0) - u1))
    return radius * jnp.cos(np.float32(2.0 * math.pi) * u2)


def keep_mask(seed: int, step: int | jax.Array, stream: int, index: jax.Array, rate: float) -> jax.Array:
    """uniform >= rate decided on the integer bits, as meshir.random.keep_mask."""
    top = random_bits(seed, step, stream, index) >> _u32(8)
    return top >= _u32(reference.keep_threshold(rate))


def affine(offset: float, scale: float, x: jax.Array) -> jax.Array:
    """offset + scale * x rounded as numpy rounds it: the product on its own, then
    the sum. XLA's CPU code generator always contracts a multiply feeding an add
    into a fused multiply-add (one rounding, an ulp off the reference), and LLVM
    narrows a float64 product of float32 operands back to float32, so the
    product is built from parts whose products are exact and whose sum is not a
    multiply. `x` holds finite draws of float32 precision (24 significant bits,
    possibly widened to float64); `offset` and `scale` are numbers of x's dtype.

    - float32: x split at 12 significant bits into head and tail (bit masking,
      which no optimizer sees through); scale * head and scale * tail are exact
      in float64 and so is their sum, then rounded to float32 once.
    - float64: scale split into a 24-bit head and a tail of at most 29 bits;
      both partial products are exact and their sum rounds once (a contracted
      form of that sum rounds the same exact value)."""
    if x.dtype == jnp.float32:
        bits = jax.lax.bitcast_convert_type(x, _U32)
        head = jax.lax.bitcast_convert_type(bits & _u32(0xFFFFF000), jnp.float32)
        wide = np.float64(np.float32(scale))
        product = wide * head.astype(jnp.float64) + wide * (x - head).astype(jnp.float64)
        return np.float32(offset) + product.astype(jnp.float32)
    head = np.float64(np.float32(scale))
    tail = np.float64(scale) - head
    if not np.isfinite(head) or tail == 0:
        # A scale of 24 bits or less makes the product itself exact.
        return np.float64(offset) + np.float64(scale) * x
    return np.float64(offset) + (head * x + tail * x)


def linear_index(
    local_shape: Sequence[int],
    global_shape: Sequence[int] | None = None,
    offsets: Sequence[int | jax.Array] | None = None,
) -> jax.Array:
    """uint32 global row-major linear indices of a block of `local_shape` starting at
    `offsets` (scalars, possibly traced) in a value of `global_shape`. Without them
    the block is the whole value."""
    global_shape = tuple(local_shape) if global_shape is None else tuple(global_shape)
    offsets = [0] * len(local_shape) if offsets is None else list(offsets)
    index = jnp.zeros(tuple(local_shape), _U32)
    for axis, offset in enumerate(offsets):
        stride = _u32(math.prod(global_shape[axis + 1:]))
        coords = jax.lax.broadcasted_iota(_U32, tuple(local_shape), axis) + jnp.asarray(offset).astype(_U32)
        index = index + coords * stride
    return index


def block_offsets(layout: ValueLayout, mesh: Mesh, local_shape: Sequence[int]) -> tuple[list[jax.Array | int], tuple[int, ...]]:
    """Inside shard_map: where this device's block of a value with `layout` starts
    along each dimension, and the value's global shape. A dimension split over
    several axes counts them first-axis-major, as `jax.lax.axis_index` of the
    axis tuple does."""
    offsets: list[jax.Array | int] = []
    global_shape = []
    for index, (size, axes) in enumerate(zip(local_shape, layout.axes)):
        global_shape.append(size * layout.split_count(mesh, index))
        offsets.append(jax.lax.axis_index(tuple(axes)) * size if axes else 0)
    return offsets, tuple(global_shape)
