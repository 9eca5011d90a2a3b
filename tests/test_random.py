"""The counter-based generator: bits pinned to the documented algorithm, statistics,
determinism, independence of seeds/steps/streams, and layout invariance."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from meshir import random
from meshir.diagnostics import MeshirError

N = 100_000
M32 = 0xFFFFFFFF


def py_mix(x: int) -> int:
    """lowbias32 on Python ints, written from the module docstring."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def py_bits(seed: int, step: int, stream: int, index: int) -> int:
    key = py_mix(py_mix((seed & M32) ^ 0x243F6A88) ^ ((seed >> 32) & M32))
    key = py_mix((key + step) & M32)
    key = py_mix(key ^ (stream & M32))
    return py_mix((py_mix(index ^ key) + key) & M32)


@pytest.mark.parametrize("seed, step, stream", [(0, 0, 0), (1, 0, 0), (7, 3, 5), (-1, -2, 1), (2**40 + 3, 2**31 - 1, 9)])
def test_bits_follow_the_documented_algorithm(seed: int, step: int, stream: int) -> None:
    index = np.array([0, 1, 2, 1000, 2**31, M32], dtype=np.uint32)
    expected = [py_bits(seed, step & M32, stream, int(i)) for i in index]
    assert random.random_bits(seed, step, stream, index).tolist() == expected


def test_i32_step_array_equals_python_int_step() -> None:
    index = random.global_index((4, 5))
    for step in (-7, 0, 12345):
        by_array = random.random_bits(3, np.array(step, dtype=np.int32), 0, index)
        np.testing.assert_array_equal(by_array, random.random_bits(3, step, 0, index))


def test_deterministic_and_shaped_like_the_index() -> None:
    index = random.global_index((3, 4, 5))
    a = random.random_bits(11, 2, 1, index)
    assert a.dtype == np.uint32 and a.shape == (3, 4, 5)
    np.testing.assert_array_equal(a, random.random_bits(11, 2, 1, index))


@pytest.mark.parametrize("other", [dict(seed=2), dict(step=1), dict(stream=1), dict(seed=1 + 2**32)])
def test_seeds_steps_and_streams_give_different_bits(other: dict) -> None:
    index = random.global_index((10_000,))
    base = dict(seed=1, step=0, stream=0)
    a = random.random_bits(**base, index=index)
    b = random.random_bits(**{**base, **other}, index=index)
    assert np.mean(a == b) < 0.001
    # Not a shifted copy either: neighbouring draws of one sequence are not the other's.
    assert np.mean(a[1:] == b[:-1]) < 0.001


def test_uniform_is_exact_24_bit_float32_in_unit_interval() -> None:
    u = random.uniform(5, 0, 0, random.global_index((N,)))
    assert u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    scaled = u.astype(np.float64) * 2**24
    np.testing.assert_array_equal(scaled, np.floor(scaled))


def test_uniform_statistics() -> None:
    u = np.sort(random.uniform(123, 4, 2, random.global_index((N,))).astype(np.float64))
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 0.002
    # Kolmogorov-Smirnov against the uniform CDF; 1.95/sqrt(n) is the 0.1% critical value.
    ranks = np.arange(1, N + 1) / N
    ks = max(np.max(ranks - u), np.max(u - (ranks - 1 / N)))
    assert ks < 1.95 / math.sqrt(N)
    # Neighbouring elements are uncorrelated.
    assert abs(np.corrcoef(u[:-1], random.uniform(123, 4, 2, random.global_index((N,)))[1:])[0, 1]) < 0.02


def test_every_bit_is_balanced() -> None:
    bits = random.random_bits(9, 0, 0, random.global_index((N,)))
    ones = np.array([np.mean((bits >> np.uint32(b)) & np.uint32(1)) for b in range(32)])
    assert np.all(np.abs(ones - 0.5) < 5 * math.sqrt(0.25 / N))


def test_normal_statistics() -> None:
    z = random.normal(77, 1, 3, random.global_index((N,))).astype(np.float64)
    assert random.normal(77, 1, 3, random.global_index((2,))).dtype == np.float32
    assert abs(z.mean()) < 4 / math.sqrt(N)
    assert abs(z.std() - 1) < 0.01
    assert np.all(np.isfinite(z))
    for t in np.linspace(-3, 3, 25):
        p = 0.5 * (1 + math.erf(t / math.sqrt(2)))
        assert abs(np.mean(z <= t) - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-4, t
    other_stream = random.normal(77, 1, 4, random.global_index((N,)))
    assert abs(np.corrcoef(z, other_stream)[0, 1]) < 0.02


def test_normal_is_box_muller_of_two_uniform_streams() -> None:
    index = random.global_index((50,))
    u1 = random.uniform(4, 2, 6, index).astype(np.float64)
    u2 = random.uniform(4, 2, 7, index).astype(np.float64)
    expected = np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)
    np.testing.assert_allclose(random.normal(4, 2, 3, index), expected, rtol=1e-5, atol=1e-5)


def test_global_index_is_row_major() -> None:
    index = random.global_index((2, 3, 4))
    assert index.dtype == np.uint32
    for coords in [(0, 0, 0), (1, 2, 3), (0, 1, 2), (1, 0, 3)]:
        assert index[coords] == coords[0] * 12 + coords[1] * 4 + coords[2]
    assert random.global_index((0, 3)).shape == (0, 3)


@pytest.mark.parametrize("shape, splits", [((8, 6), (2, 3)), ((4, 6, 10), (2, 1, 5)), ((12,), (4,))])
def test_a_devices_block_equals_the_slice_of_the_global_draw(shape: tuple, splits: tuple) -> None:
    whole_uniform = random.uniform(42, 3, 1, random.global_index(shape))
    whole_normal = random.normal(42, 3, 1, random.global_index(shape))
    local = tuple(n // s for n, s in zip(shape, splits))
    for block in np.ndindex(*splits):
        starts = tuple(b * n for b, n in zip(block, local))
        index = random.index_of_block(shape, starts, local)
        region = tuple(slice(s, s + n) for s, n in zip(starts, local))
        np.testing.assert_array_equal(random.uniform(42, 3, 1, index), whole_uniform[region])
        np.testing.assert_array_equal(random.normal(42, 3, 1, index), whole_normal[region])


def test_index_of_block_rejects_a_block_outside_the_value() -> None:
    with pytest.raises(ValueError, match="outside axis 1 of size 6"):
        random.index_of_block((4, 6), (0, 4), (2, 3))
    with pytest.raises(ValueError, match="rank mismatch"):
        random.index_of_block((4, 6), (0,), (2, 3))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1 / 3, 0.999, 5 * 2.0**-24])
def test_keep_mask_is_exactly_uniform_at_least_rate(rate: float) -> None:
    index = random.global_index((N,))
    u = random.uniform(8, 1, 0, index)
    exact = np.array([Fraction(float(v)) >= Fraction(rate) for v in u[:2000]])
    mask = random.keep_mask(8, 1, 0, index, rate)
    np.testing.assert_array_equal(mask[:2000], exact)
    np.testing.assert_array_equal(mask, u.astype(np.float64) >= rate)
    assert abs(mask.mean() - (1 - rate)) < 5 * math.sqrt(0.25 / N)


def test_values_over_2_to_the_32_elements_cannot_be_drawn() -> None:
    random.check_drawable(2**32, "dropout")
    with pytest.raises(MeshirError, match=r"dropout: a random value may hold at most 2\*\*32 elements .* this one has 4294967297"):
        random.check_drawable(2**32 + 1, "dropout")
