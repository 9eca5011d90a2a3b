"""Elementwise, binary and contraction ops against independent numpy expressions."""
import math

import ml_dtypes
import numpy as np
import pytest

from meshir.diagnostics import MeshirError
from meshir.dtypes import DTYPES, bf16, bool_, f16, f32, f64, i32, i8, u8
from meshir.types import tensor_type

from .opcheck import infer, run

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4)).astype(np.float32) * 3
T = tensor_type(f32, a=3, b=4)
ERF = np.vectorize(math.erf)

UNARY_EXPECTED = {
    "neg": lambda x: -x,
    "abs": np.abs,
    "exp": np.exp,
    "log": lambda x: np.log(np.abs(x) + 0.5),
    "log1p": lambda x: np.log1p(np.abs(x)),
    "sqrt": lambda x: np.sqrt(np.abs(x)),
    "rsqrt": lambda x: 1 / np.sqrt(np.abs(x) + 0.1),
    "square": lambda x: x * x,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.where(x > 0, x, 0),
    "gelu": lambda x: 0.5 * x * (1 + ERF(x / np.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "softplus": lambda x: np.log(1 + np.exp(x)),
    "erf": ERF,
    "sign": np.sign,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "reciprocal": lambda x: 1 / x,
}
# Inputs moved into each function's domain, so the expectation above is the plain formula.
DOMAIN = {"log": lambda x: np.abs(x) + 0.5, "log1p": np.abs, "sqrt": np.abs, "rsqrt": lambda x: np.abs(x) + 0.1}


@pytest.mark.parametrize("name", sorted(UNARY_EXPECTED))
def test_unary_f32(name):
    x = DOMAIN.get(name, lambda v: v)(X).astype(np.float32)
    expected_fn = {"log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "rsqrt": lambda v: 1 / np.sqrt(v)}.get(name, UNARY_EXPECTED[name])
    (out,) = run(name, [(x, T)])
    np.testing.assert_allclose(out, expected_fn(x.astype(np.float64)), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", ["exp", "tanh", "gelu", "relu", "neg"])
def test_unary_bf16_rounds_the_f32_result(name):
    x = X.astype(ml_dtypes.bfloat16)
    (out,) = run(name, [(x, T.with_dtype(bf16))])
    expected = UNARY_EXPECTED[name](x.astype(np.float64)).astype(ml_dtypes.bfloat16)
    np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_gelu_tanh_approximation():
    (out,) = run("gelu", [(X, T)], approximate=True)
    x = X.astype(np.float64)
    np.testing.assert_allclose(out, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), rtol=1e-5, atol=1e-6)


def test_integer_unary_ops_and_ieee_edges():
    ints = np.array([[-3, 0, 5]], np.int32)
    t = tensor_type(i32, a=1, b=3)
    assert run("neg", [(ints, t)])[0].tolist() == [[3, 0, -5]]
    assert run("relu", [(ints, t)])[0].tolist() == [[0, 0, 5]]
    assert run("sign", [(ints, t)])[0].tolist() == [[-1, 0, 1]]
    edges = np.array([0.0, -1.0, np.inf, np.nan], np.float32)
    te = tensor_type(f32, a=4)
    log = run("log", [(edges, te)])[0]
    assert log[0] == -np.inf and np.isnan(log[1]) and log[2] == np.inf and np.isnan(log[3])
    recip = run("reciprocal", [(edges, te)])[0]
    assert recip[0] == np.inf and recip[1] == -1 and recip[2] == 0


def test_round_is_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5], np.float32)
    assert run("round", [(x, tensor_type(f32, a=4))])[0].tolist() == [0.0, 2.0, 2.0, -0.0]


def test_logical_not_and_cast():
    b = np.array([True, False])
    assert run("logical_not", [(b, tensor_type(bool_, a=2))])[0].tolist() == [False, True]
    x = np.array([-1.7, 2.9, 0.0], np.float32)
    t = tensor_type(f32, a=3)
    assert run("cast", [(x, t)], dtype=i32)[0].tolist() == [-1, 2, 0]
    assert run("cast", [(x, t)], dtype=bool_)[0].tolist() == [True, True, False]
    assert run("cast", [(x, t)], dtype=f16)[0].dtype == np.float16
    assert infer("cast", [t], dtype=u8) == [tensor_type(u8, a=3)]


@pytest.mark.parametrize("name,dtype", [("exp", i32), ("sqrt", bool_), ("relu", bool_), ("logical_not", f32)])
def test_unary_dtype_errors(name, dtype):
    with pytest.raises(MeshirError, match=f"{name}: operand 0 must have"):
        infer(name, [tensor_type(dtype, a=2)])


BINARY_EXPECTED = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}


@pytest.mark.parametrize("name", sorted(BINARY_EXPECTED))
def test_binary_broadcasts_by_name(name):
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    y = RNG.standard_normal((5, 4)).astype(np.float32)
    tx, ty = tensor_type(f32, a=3, b=4), tensor_type(f32, c=5, b=4)
    (out,) = run(name, [(x, tx), (y, ty)])
    assert infer(name, [tx, ty])[0].names == ("a", "b", "c")
    expected = BINARY_EXPECTED[name](x[:, :, None], np.transpose(y)[None, :, :])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_pow_and_scalar_broadcast():
    x = np.abs(X) + 0.1
    (out,) = run("pow", [(x, T), (np.float32(2.5), tensor_type(f32))])
    np.testing.assert_allclose(out, x.astype(np.float64) ** 2.5, rtol=1e-5)


def test_division_edges_follow_ieee_and_integers_truncate():
    x = np.array([1.0, -1.0, 0.0], np.float32)
    zero = np.zeros(3, np.float32)
    t = tensor_type(f32, a=3)
    out = run("div", [(x, t), (zero, t)])[0]
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])
    ti = tensor_type(i32, a=4)
    q = run("div", [(np.array([7, -7, 7, 5], np.int32), ti), (np.array([2, 2, -2, 0], np.int32), ti)])[0]
    assert q.tolist() == [3, -3, -3, 0]


def test_logical_and_or_and_select():
    a = np.array([True, False, True])
    b = np.array([True, True, False])
    t = tensor_type(bool_, a=3)
    assert run("logical_and", [(a, t), (b, t)])[0].tolist() == [True, False, False]
    assert run("logical_or", [(a, t), (b, t)])[0].tolist() == [True, True, True]
    cond = np.array([True, False])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.full((3,), -1, np.float32)
    (out,) = run("select", [(cond, tensor_type(bool_, a=2)), (x, tensor_type(f32, a=2, b=3)), (y, tensor_type(f32, b=3))])
    np.testing.assert_array_equal(out, np.where(cond[:, None], x, y[None, :]))


def test_int8_and_uint8_arithmetic_wraps():
    t = tensor_type(i8, a=2)
    assert run("add", [(np.array([100, -100], np.int8), t), (np.array([100, -100], np.int8), t)])[0].tolist() == [-56, 56]
    tu = tensor_type(u8, a=1)
    assert run("sub", [(np.array([0], np.uint8), tu), (np.array([1], np.uint8), tu)])[0].tolist() == [255]


@pytest.mark.parametrize("types,fragment", [
    ([tensor_type(f32, a=2), tensor_type(i32, a=2)], "operand 1 has dtype i32 but operand 0 has f32"),
    ([tensor_type(bool_, a=2), tensor_type(bool_, a=2)], "add: operand 0 must have a numeric dtype"),
])
def test_binary_type_errors(types, fragment):
    with pytest.raises(MeshirError, match=fragment):
        infer("add", types)


def test_pow_and_logical_dtype_errors():
    with pytest.raises(MeshirError, match="pow: operand 0 must have a float dtype"):
        infer("pow", [tensor_type(i32, a=2)] * 2)
    with pytest.raises(MeshirError, match="logical_and: operand 0 must have a bool dtype"):
        infer("logical_and", [tensor_type(f32, a=2)] * 2)
    with pytest.raises(MeshirError, match="select: operand 0 must have a bool dtype"):
        infer("select", [tensor_type(f32, a=2)] * 3)


def test_einsum_contracts_absent_dims_and_orders_output():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    w = RNG.standard_normal((4, 5)).astype(np.float32)
    tx, tw = tensor_type(f32, batch=2, seq=3, model=4), tensor_type(f32, model=4, hidden=5)
    (out,) = run("einsum", [(x, tx), (w, tw)], output=["hidden", "batch"])
    np.testing.assert_allclose(out, np.einsum("bsm,mh->hb", x, w), rtol=1e-5, atol=1e-5)
    (total,) = run("einsum", [(x, tx)], output=[])
    np.testing.assert_allclose(total, x.sum(dtype=np.float64), rtol=1e-5)
    (three,) = run("einsum", [(x, tx), (w, tw), (w, tw)], output=["batch"])
    np.testing.assert_allclose(three, np.einsum("bsm,mh,mh->b", x, w, w), rtol=1e-4, atol=1e-4)


def test_einsum_errors():
    t = tensor_type(f32, a=2)
    with pytest.raises(MeshirError, match="einsum output names dimension 'z', which no operand has"):
        infer("einsum", [t], output=["z"])
    with pytest.raises(MeshirError, match="list of distinct names"):
        infer("einsum", [t], output=["a", "a"])
    with pytest.raises(MeshirError, match="einsum takes at least 1 operand, got 0"):
        infer("einsum", [], output=[])


def test_matmul_sums_shared_dims_except_batch():
    a = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    b = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    ta, tb = tensor_type(f32, batch=2, m=3, k=4), tensor_type(f32, batch=2, k=4, n=5)
    assert infer("matmul", [ta, tb], batch=["batch"])[0].names == ("batch", "m", "n")
    (out,) = run("matmul", [(a, ta), (b, tb)], batch=["batch"])
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    (summed,) = run("matmul", [(a, ta), (b, tb)])
    np.testing.assert_allclose(summed, np.einsum("bmk,bkn->mn", a, b), rtol=1e-4, atol=1e-4)
    with pytest.raises(MeshirError, match="matmul batch dimension 'm' must be in both operands"):
        infer("matmul", [ta, tb], batch=["m"])


@pytest.mark.parametrize("dtype", [f64, f16, i32])
def test_einsum_keeps_dtype(dtype):
    t = tensor_type(dtype, a=2, b=2)
    x = np.arange(4).reshape(2, 2).astype(dtype.numpy)
    (out,) = run("einsum", [(x, t), (x, t)], output=["a"])
    assert out.dtype == DTYPES[dtype.name].numpy
    np.testing.assert_allclose(out.astype(np.float64), (x.astype(np.float64) ** 2).sum(1))
