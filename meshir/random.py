"""The counter-based random generator behind every random op and initializer.

A draw is *layout-invariant*: each element's bits depend only on (seed, step,
stream, the element's global row-major linear index in the value's global
shape), never on how the value is split over a mesh. Every backend re-implements
this algorithm on each device from global coordinates, so it uses only uint32
operations that XLA and TensorFlow both have: wrapping add and multiply, xor and
logical right shifts. All arithmetic below is modulo 2**32.

The algorithm (backends must match it bit for bit):

    mix(x):                       # lowbias32, a bijection of uint32
        x ^= x >> 16;  x *= 0x7feb352d
        x ^= x >> 15;  x *= 0x846ca68b
        x ^= x >> 16

    seed_lo, seed_hi = seed mod 2**32, (seed >> 32) mod 2**32   # seed modulo 2**64
    key = mix(mix(seed_lo ^ 0x243f6a88) ^ seed_hi)              # compile time
    key = mix(key + step)                                       # step: i32, two's complement
    key = mix(key ^ stream)                                     # stream: compile time
    bits = mix(mix(index ^ key) + key)

`index` is the element's global row-major linear index; a value drawn at
random may hold at most 2**32 elements (`check_drawable`).

Derived draws:

- `uniform` = (bits >> 8) * 2**-24: float32 in [0, 1), exact.
- `normal` (Box-Muller, float32 arithmetic) from u1 = uniform(stream 2s) and
  u2 = uniform(stream 2s+1): sqrt(-2 log(1 - u1)) * cos(2 pi u2). The integer
  bits are exact on every backend; the transform agrees to float32 rounding.
- `keep_mask` (dropout): (bits >> 8) >= ceil(rate * 2**24), the exact integer
  form of uniform >= rate, so no backend's float rounding of `rate` can flip an
  element.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np

from .diagnostics import MeshirError

MAX_DRAW_ELEMENTS = 2**32
_MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x243F6A88  # the first hex digits of pi: any odd-looking constant breaks seed 0's symmetry


def mix(x: np.ndarray) -> np.ndarray:
    """lowbias32: one round of the 32-bit integer finaliser."""
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def _as_u32(value: int | np.ndarray) -> np.ndarray:
    """Two's complement reinterpretation: Python ints and i32 steps both map mod 2**32."""
    if isinstance(value, (int, np.integer)):
        return np.uint32(int(value) & _MASK32)
    return np.asarray(value).astype(np.int64).astype(np.uint32)


def seed_key(seed: int) -> np.uint32:
    """The compile-time part of the key: the seed folded to 32 bits."""
    low, high = seed & _MASK32, (seed >> 32) & _MASK32
    return mix(mix(np.uint32(low ^ _SEED_SALT)) ^ np.uint32(high))


def stream_key(seed: int, step: int | np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        key = mix(seed_key(seed) + _as_u32(step))
    return mix(key ^ _as_u32(stream))


def random_bits(seed: int, step: int | np.ndarray, stream: int, index: np.ndarray) -> np.ndarray:
    """uint32 bits for each global linear index in `index` (any shape)."""
    key = stream_key(seed, step, stream)
    index = np.asarray(index, dtype=np.uint32)
    with np.errstate(over="ignore"):
        return mix(mix(index ^ key) + key)


def uniform(seed: int, step: int | np.ndarray, stream: int, index: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from the top 24 bits."""
    top = random_bits(seed, step, stream, index) >> np.uint32(8)
    return top.astype(np.float32) * np.float32(2.0**-24)


def normal(seed: int, step: int | np.ndarray, stream: int, index: np.ndarray) -> np.ndarray:
    """float32 standard normal by Box-Muller from uniform streams 2*stream and 2*stream+1."""
    u1 = uniform(seed, step, 2 * stream, index)
    u2 = uniform(seed, step, 2 * stream + 1, index)
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - u1))
    return (radius * np.cos(np.float32(2.0 * math.pi) * u2)).astype(np.float32)


def keep_threshold(rate: float) -> int:
    """The smallest 24-bit draw m with m / 2**24 >= rate, computed exactly."""
    return math.ceil(Fraction(rate) * 2**24)


def keep_mask(seed: int, step: int | np.ndarray, stream: int, index: np.ndarray, rate: float) -> np.ndarray:
    """True where uniform(...) >= rate, decided on the integer bits (see the module doc)."""
    top = random_bits(seed, step, stream, index) >> np.uint32(8)
    return top >= np.uint32(keep_threshold(rate))


def check_drawable(num_elements: int, what: str) -> None:
    """Linear indices are uint32, so a random value holds at most 2**32 elements."""
    if num_elements > MAX_DRAW_ELEMENTS:
        raise MeshirError(
            f"{what}: a random value may hold at most 2**32 elements (its global linear index is 32-bit), "
            f"this one has {num_elements}"
        )


def global_index(shape: tuple[int, ...]) -> np.ndarray:
    """The row-major linear index of every element of a value of `shape`."""
    return np.arange(math.prod(shape), dtype=np.uint32).reshape(shape)


def index_of_block(global_shape: Sequence[int], starts: Sequence[int], local_shape: Sequence[int]) -> np.ndarray:
    """Global linear indices of the block of `local_shape` at `starts` (what one device holds)."""
    if not (len(global_shape) == len(starts) == len(local_shape)):
        raise ValueError(f"rank mismatch: global {tuple(global_shape)}, starts {tuple(starts)}, local {tuple(local_shape)}")
    strides = [math.prod(global_shape[axis + 1:]) for axis in range(len(global_shape))]
    index = np.zeros(tuple(local_shape), dtype=np.uint32)
    for axis, (start, size, stride) in enumerate(zip(starts, local_shape, strides)):
        if start < 0 or start + size > global_shape[axis]:
            raise ValueError(f"block [{start}, {start + size}) is outside axis {axis} of size {global_shape[axis]}")
        coords = (np.arange(size, dtype=np.uint32) + np.uint32(start)) * np.uint32(stride & _MASK32)
        shape = [1] * len(local_shape)
        shape[axis] = size
        with np.errstate(over="ignore"):
            index = index + coords.reshape(shape)
    return index
