"""Variable initializers: values, statistics, casts, argument checks."""
from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import pytest

from meshir import random
from meshir.attributes import Name
from meshir.diagnostics import MeshirError
from meshir.dtypes import bf16, bool_, f16, f32, f64, i8, i32, i64, u8
from meshir.initializers import INITIALIZERS
from meshir.ir import Variable
from meshir.types import tensor_type
from meshir.verifier import verify_variable

BIG = tensor_type(f32, rows=200, cols=300)


def materialize(name: str, ttype, **args) -> np.ndarray:
    value = INITIALIZERS[name].materialize(ttype, args)
    assert value.shape == ttype.shape and value.dtype == ttype.dtype.numpy
    return value


@pytest.mark.parametrize("dtype, zero, one", [(f32, 0.0, 1.0), (bf16, 0.0, 1.0), (i32, 0, 1), (u8, 0, 1), (bool_, False, True)])
def test_zeros_and_ones(dtype, zero, one) -> None:
    ttype = tensor_type(dtype, a=2, b=3)
    assert np.all(materialize("zeros", ttype) == zero)
    assert np.all(materialize("ones", ttype) == one)


def test_constant_values_and_casts() -> None:
    assert np.all(materialize("constant", tensor_type(f32, a=3), value=2.5) == 2.5)
    assert np.all(materialize("constant", tensor_type(bf16, a=3), value=-0.5) == ml_dtypes.bfloat16(-0.5))
    assert np.all(materialize("constant", tensor_type(i64, a=2), value=2**62 + 1) == 2**62 + 1)
    assert np.all(materialize("constant", tensor_type(i32, a=2), value=2.6) == 3)
    assert np.all(materialize("constant", tensor_type(bool_, a=2), value=True))
    assert np.all(materialize("constant", tensor_type(f32), value=float("inf")) == np.inf)
    assert materialize("constant", tensor_type(f32, a=0), value=1.0).shape == (0,)


def test_normal_is_the_layout_invariant_draw_scaled() -> None:
    value = materialize("normal", BIG, mean=0.5, stddev=2.0, seed=3)
    draw = random.normal(3, 0, 0, random.global_index(BIG.shape)).astype(np.float64)
    np.testing.assert_allclose(value, 0.5 + 2.0 * draw, rtol=1e-6)
    assert abs(value.mean() - 0.5) < 4 * 2.0 / math.sqrt(value.size)
    assert abs(value.std() - 2.0) < 0.03
    assert not np.array_equal(value, materialize("normal", BIG, mean=0.5, stddev=2.0, seed=4))
    np.testing.assert_array_equal(value, materialize("normal", BIG, mean=0.5, stddev=2.0, seed=3))


def test_uniform_range_and_statistics() -> None:
    value = materialize("uniform", BIG, minval=-3, maxval=5, seed=1)
    assert value.min() >= -3 and value.max() < 5
    assert abs(value.mean() - 1.0) < 4 * 8 / math.sqrt(12 * value.size)
    assert abs(value.var() - 64 / 12) < 0.1
    default = materialize("uniform", BIG)
    assert default.min() >= 0 and default.max() < 1


def test_truncated_normal_stays_within_two_stddevs() -> None:
    value = materialize("truncated_normal", BIG, mean=1.0, stddev=0.5, seed=2)
    assert value.min() >= 0.0 and value.max() <= 2.0
    # The variance of a standard normal truncated to [-2, 2].
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    truncated_std = math.sqrt(1 - 2 * 2 * phi2 / mass)
    assert abs(value.std() - 0.5 * truncated_std) < 0.01
    assert abs(value.mean() - 1.0) < 0.01
    # Elements whose first draw is inside keep it; the others were redrawn.
    first = 1.0 + 0.5 * random.normal(2, 0, 0, random.global_index(BIG.shape)).astype(np.float64)
    inside = np.abs(first - 1.0) <= 1.0
    np.testing.assert_allclose(value[inside], first[inside], rtol=1e-6)
    assert 0.03 < 1 - inside.mean() < 0.06
    assert not np.allclose(value[~inside], np.clip(first[~inside], 0, 2))


@pytest.mark.parametrize("dims, fan_in, fan_out, args", [
    (dict(a=30, b=50), 30, 50, {}),
    (dict(k=3, c=4, f=20), 12, 20, {}),
    (dict(n=64), 64, 64, {}),
    (dict(k=3, c=4, f=20), 60, 4, dict(fan_out=Name("c"))),
    (dict(k=3, c=4, f=20), 3, 80, dict(fan_in=(Name("k"),))),
    (dict(k=3, c=4, f=20), 4, 3, dict(fan_in=(Name("c"),), fan_out=(Name("k"),))),
])
def test_glorot_fans(dims: dict, fan_in: int, fan_out: int, args: dict) -> None:
    ttype = tensor_type(f64, **dims)
    limit = math.sqrt(6 / (fan_in + fan_out))
    value = materialize("glorot_uniform", ttype, seed=5, **args)
    draw = random.uniform(5, 0, 0, random.global_index(ttype.shape)).astype(np.float64)
    np.testing.assert_allclose(value, limit * (2 * draw - 1), rtol=1e-12)
    stddev = math.sqrt(2 / (fan_in + fan_out))
    normal = materialize("glorot_normal", ttype, seed=5, **args)
    assert np.abs(normal).max() <= 2 * stddev / 0.87962566103423978 + 1e-12


def test_glorot_statistics_and_scalar() -> None:
    ttype = tensor_type(f32, a=400, b=200)
    uniform = materialize("glorot_uniform", ttype, seed=1)
    assert abs(uniform.std() - math.sqrt(2 / 600)) < 0.002
    normal = materialize("glorot_normal", ttype, seed=1)
    assert abs(normal.std() - math.sqrt(2 / 600)) < 0.002
    # A scalar has fan_in = fan_out = 1: limit sqrt(3).
    assert abs(materialize("glorot_uniform", tensor_type(f32), seed=9)) < math.sqrt(3)


def test_random_initializers_round_and_saturate_for_integers() -> None:
    ttype = tensor_type(i8, n=1000)
    value = materialize("normal", ttype, stddev=100.0, seed=1)
    wide = 100.0 * random.normal(1, 0, 0, random.global_index((1000,))).astype(np.float64)
    np.testing.assert_array_equal(value, np.clip(np.rint(wide), -128, 127))
    assert value.min() == -128 and value.max() == 127


def test_sixteen_bit_floats_round_the_float_value() -> None:
    value = materialize("uniform", tensor_type(f16, n=100), minval=-1, maxval=1, seed=2)
    expected = -1 + 2 * random.uniform(2, 0, 0, random.global_index((100,))).astype(np.float64)
    np.testing.assert_array_equal(value, expected.astype(np.float16))


def test_check_args_normalizes_without_filling_defaults() -> None:
    ttype = tensor_type(f32, a=2, b=3)
    assert INITIALIZERS["normal"].check_args({"stddev": 1}, ttype) == {"stddev": 1.0}
    assert INITIALIZERS["glorot_uniform"].check_args({"fan_in": Name("a")}, ttype) == {"fan_in": (Name("a"),)}
    assert INITIALIZERS["zeros"].check_args({}, ttype) == {}


@pytest.mark.parametrize("name, ttype, args, message", [
    ("normal", BIG, {"std": 1.0}, "initializer normal has no argument 'std' (arguments: mean, seed, stddev)"),
    ("zeros", BIG, {"value": 1}, "initializer zeros has no argument 'value' (arguments: none)"),
    ("constant", BIG, {}, "initializer constant needs argument 'value' (a number or true/false)"),
    ("constant", BIG, {"value": Name("x")}, "initializer constant argument 'value' must be a number or true/false"),
    ("normal", BIG, {"seed": 1.5}, "initializer normal argument 'seed' must be an integer"),
    ("normal", BIG, {"stddev": -1.0}, "initializer normal: stddev must be at least 0, got -1.0"),
    ("truncated_normal", BIG, {"stddev": -2}, "initializer truncated_normal: stddev must be at least 0, got -2.0"),
    ("uniform", BIG, {"minval": 2, "maxval": 1}, "initializer uniform: minval 2.0 is greater than maxval 1.0"),
    ("normal", tensor_type(bool_, a=2), {}, "initializer normal: draws numbers, but the variable has dtype bool (bool[a=2])"),
    ("constant", tensor_type(u8, a=2), {"value": 256}, "initializer constant: value 256 is outside the range of u8 [0, 255]"),
    ("constant", tensor_type(i32, a=2), {"value": float("nan")}, "initializer constant: value nan cannot be stored in i32 (variable type i32[a=2])"),
    ("constant", tensor_type(f16, a=2), {"value": 1e5}, "initializer constant: value 100000.0 overflows f16 (variable type f16[a=2])"),
    ("constant", tensor_type(bool_, a=2), {"value": 2}, "initializer constant: value 2 is not a boolean for a bool[a=2] variable (use true, false, 1 or 0)"),
    ("glorot_uniform", BIG, {"fan_in": Name("depth")}, "initializer glorot_uniform: fan_in names dimension 'depth', which the variable f32[rows=200, cols=300] does not have"),
    ("glorot_normal", BIG, {"fan_in": Name("rows"), "fan_out": (Name("cols"), Name("rows"))}, "initializer glorot_normal: dimension 'rows' is in both fan_in and fan_out"),
    ("uniform", tensor_type(f32, a=2**16, b=2**16 + 1), {}, "initializer uniform: a random value may hold at most 2**32 elements"),
])
def test_argument_errors(name: str, ttype, args: dict, message: str) -> None:
    with pytest.raises(MeshirError) as error:
        INITIALIZERS[name].check_args(args, ttype)
    assert error.value.message.startswith(message), error.value.message


def test_the_verifier_checks_variables_through_the_initializers() -> None:
    variable = Variable("w", BIG, "normal", {"stddev": 0.05, "seed": 1})
    verify_variable(variable)
    assert variable.init_args == {"stddev": 0.05, "seed": 1}
    with pytest.raises(MeshirError, match=re.escape("variable @w: unknown initializer 'gaussian'")):
        verify_variable(Variable("w", BIG, "gaussian"))
    with pytest.raises(MeshirError, match=re.escape("initializer normal has no argument 'sd'")):
        verify_variable(Variable("w", BIG, "normal", {"sd": 1.0}))
