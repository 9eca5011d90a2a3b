"""Reductions, arg-reductions, top_k, softmax and cumsum: types, reference values, edge cases, errors."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from meshir.attributes import Name
from meshir.diagnostics import MeshirError
from meshir.dtypes import bf16, bool_, f32, f64, i8, i32, u8
from meshir.registry import OpView, lookup
from meshir.types import TensorType, tensor_type
from tests.opcheck import infer, run

rng = np.random.default_rng(1234)


def names(text: str) -> tuple[Name, ...]:
    return tuple(Name(n) for n in text.split())


def axes(ttype: TensorType, dims: str) -> tuple[int, ...]:
    return tuple(ttype.names.index(n) for n in dims.split())


def error_of(name: str, types: list[TensorType], **attrs) -> str:
    with pytest.raises(MeshirError) as info:
        infer(name, types, **attrs)
    return info.value.message


def splittable(name: str, types: list[TensorType], **attrs) -> frozenset[str]:
    opdef = lookup(name)
    view = OpView(opdef, types, opdef.check_attributes(attrs))
    view.result_types = opdef.infer(view)
    return opdef.split_dims(view)


# --- reduce_* and logsumexp ----------------------------------------------

FLOAT_EXPECTED = {
    "reduce_sum": lambda x, ax: x.sum(axis=ax),
    "reduce_mean": lambda x, ax: x.sum(axis=ax) / math.prod(x.shape[a] for a in ax),
    "reduce_max": lambda x, ax: x.max(axis=ax) if ax else x,
    "reduce_min": lambda x, ax: x.min(axis=ax) if ax else x,
    "reduce_prod": lambda x, ax: x.prod(axis=ax),
    "logsumexp": lambda x, ax: np.log(np.exp(x).sum(axis=ax)),
}
ORDERS = [dict(a=3, b=4, c=5), dict(c=5, a=3, b=4), dict(b=4, c=5, a=3)]
DIM_SETS = ["b", "a c", "", "c b a"]


@pytest.mark.parametrize("op", sorted(FLOAT_EXPECTED))
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(o))
@pytest.mark.parametrize("dims", DIM_SETS)
def test_float_reductions_match_numpy(op, order, dims):
    ttype = tensor_type(f64, **order)
    x = rng.uniform(0.5, 1.5, ttype.shape)
    (out,) = run(op, [(x, ttype)], dims=names(dims))
    kept = [n for n in ttype.names if n not in dims.split()]
    assert infer(op, [ttype], dims=names(dims)) == [tensor_type(f64, **{n: order[n] for n in kept})]
    np.testing.assert_allclose(out, FLOAT_EXPECTED[op](x, axes(ttype, dims)), rtol=1e-12)


INT_EXPECTED = {
    "reduce_sum": lambda x, ax: x.sum(axis=ax),
    "reduce_max": lambda x, ax: x.max(axis=ax),
    "reduce_min": lambda x, ax: x.min(axis=ax),
    "reduce_prod": lambda x, ax: x.prod(axis=ax),
}


@pytest.mark.parametrize("op", sorted(INT_EXPECTED))
def test_integer_reductions_keep_the_dtype(op):
    ttype = tensor_type(i32, a=3, b=4)
    x = rng.integers(-5, 6, ttype.shape)
    (out,) = run(op, [(x, ttype)], dims=names("a"))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, INT_EXPECTED[op](x, (0,)))


def test_integer_sum_wraps_in_its_dtype():
    (out,) = run("reduce_sum", [(np.array([100, 100], np.int8), tensor_type(i8, a=2))], dims=names("a"))
    assert out == np.int8(-56)


@pytest.mark.parametrize("op, array", [
    ("reduce_any", np.array([[True, False, False], [False, False, False]])),
    ("reduce_all", np.array([[True, True, True], [True, False, True]])),
])
def test_boolean_reductions(op, array):
    ttype = tensor_type(bool_, a=2, b=3)
    (out,) = run(op, [(array, ttype)], dims=names("b"))
    expected = [row.any() for row in array] if op == "reduce_any" else [row.all() for row in array]
    np.testing.assert_array_equal(out, expected)


EMPTY_FLOAT = {
    "reduce_sum": 0.0, "reduce_mean": np.nan, "reduce_max": -np.inf, "reduce_min": np.inf,
    "reduce_prod": 1.0, "logsumexp": -np.inf,
}


@pytest.mark.parametrize("op", sorted(EMPTY_FLOAT))
def test_empty_float_reductions_give_the_identity(op):
    ttype = tensor_type(f32, a=0, b=2)
    (out,) = run(op, [(np.zeros((0, 2)), ttype)], dims=names("a"))
    np.testing.assert_array_equal(out, [EMPTY_FLOAT[op]] * 2)


@pytest.mark.parametrize("op, dtype, expected", [
    ("reduce_max", i32, -2**31), ("reduce_min", i32, 2**31 - 1),
    ("reduce_max", u8, 0), ("reduce_min", u8, 255),
    ("reduce_sum", i8, 0), ("reduce_prod", i8, 1),
    ("reduce_any", bool_, False), ("reduce_all", bool_, True),
])
def test_empty_integer_and_boolean_reductions(op, dtype, expected):
    ttype = TensorType(dtype, tensor_type(dtype, a=3, b=0).dims)
    (out,) = run(op, [(np.zeros((3, 0)), ttype)], dims=names("b"))
    np.testing.assert_array_equal(out, [expected] * 3)


@pytest.mark.parametrize("op", ["reduce_max", "reduce_min", "reduce_sum", "logsumexp"])
def test_nan_propagates(op):
    ttype = tensor_type(f32, a=3)
    (out,) = run(op, [(np.array([1.0, np.nan, -np.inf]), ttype)], dims=names("a"))
    assert np.isnan(out)


@pytest.mark.parametrize("values, expected", [
    ([1000.0, 1000.0], 1000.0 + math.log(2)),
    ([-1000.0, -1000.0, -1000.0], -1000.0 + math.log(3)),
    ([-np.inf, -np.inf], -np.inf),
    ([np.inf, 1.0], np.inf),
    ([-np.inf, 0.0], 0.0),
])
def test_logsumexp_is_stable(values, expected):
    (out,) = run("logsumexp", [(np.array(values), tensor_type(f32, a=len(values)))], dims=names("a"))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_mean", "logsumexp"])
def test_bf16_reductions_accumulate_wide(op):
    ttype = tensor_type(bf16, a=256)
    x = rng.uniform(0.5, 1.5, 256).astype(ml_dtypes.bfloat16)
    (out,) = run(op, [(x, ttype)], dims=names("a"))
    assert out.dtype == ml_dtypes.bfloat16
    wide = x.astype(np.float64)
    expected = {"reduce_sum": wide.sum(), "reduce_mean": wide.mean(), "logsumexp": np.log(np.exp(wide).sum())}[op]
    np.testing.assert_allclose(float(out), expected, rtol=1e-2)


def test_reduction_of_unknown_dim_names_it_and_lists_the_operands():
    message = error_of("reduce_sum", [tensor_type(f32, a=2, b=3)], dims=names("a z"))
    assert message == "reduce_sum: dimension 'z' is not in the operand f32[a=2, b=3] (dimensions: a, b)"


@pytest.mark.parametrize("op, dtype, kind", [
    ("reduce_mean", i32, "float"), ("logsumexp", i32, "float"), ("reduce_sum", bool_, "numeric"),
    ("reduce_max", bool_, "numeric"), ("reduce_any", f32, "bool"), ("reduce_all", i32, "bool"),
])
def test_reduction_dtype_errors(op, dtype, kind):
    message = error_of(op, [TensorType(dtype, tensor_type(f32, a=2).dims)], dims=names("a"))
    assert message.startswith(f"{op}: operand 0 must have a")
    assert kind in message and str(dtype) in message


def test_reduction_needs_dims():
    with pytest.raises(MeshirError, match="reduce_sum needs attribute 'dims'"):
        infer("reduce_sum", [tensor_type(f32, a=2)])


def test_reduction_keeps_the_kept_dims_split():
    assert splittable("reduce_sum", [tensor_type(f32, a=2, b=3, c=4)], dims=names("b")) == {"a", "c"}


# --- argmax / argmin ------------------------------------------------------

def first_extreme_index(row: list, pick) -> int:
    best = pick(row)
    return next(i for i, v in enumerate(row) if v == best)


@pytest.mark.parametrize("op, pick", [("argmax", max), ("argmin", min)])
@pytest.mark.parametrize("order", [dict(a=6, b=7), dict(b=7, a=6)], ids=["ab", "ba"])
def test_arg_reductions_pick_the_first_extreme(op, pick, order):
    ttype = tensor_type(i32, **order)
    x = rng.integers(0, 3, ttype.shape)  # few values, many ties
    (out,) = run(op, [(x, ttype)], dim=Name("b"))
    assert infer(op, [ttype], dim=Name("b")) == [tensor_type(i32, a=6)]
    rows = x if ttype.names[1] == "b" else x.T
    assert out.tolist() == [first_extreme_index(list(row), pick) for row in rows]


@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_reductions_treat_nan_as_the_extreme(op):
    x = np.array([[1.0, np.nan, 5.0, np.nan], [2.0, 9.0, -3.0, 9.0]])
    (out,) = run(op, [(x, tensor_type(f32, a=2, b=4))], dim=Name("b"))
    assert out.tolist() == ([1, 1] if op == "argmax" else [1, 2])


def test_arg_reductions_work_in_bf16():
    x = np.array([0.5, 3.0, -1.0, 3.0], ml_dtypes.bfloat16)
    (out,) = run("argmax", [(x, tensor_type(bf16, a=4))], dim=Name("a"))
    assert out == 1 and out.dtype == np.int32


@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_reduction_over_an_empty_dim_is_zero(op):
    (out,) = run(op, [(np.zeros((3, 0)), tensor_type(f32, a=3, b=0))], dim=Name("b"))
    assert out.tolist() == [0, 0, 0]


def test_arg_reduction_errors():
    assert error_of("argmax", [tensor_type(f32, a=2)], dim=Name("b")) == (
        "argmax: dimension 'b' is not in the operand f32[a=2] (dimensions: a)")
    assert "numeric" in error_of("argmin", [tensor_type(bool_, a=2)], dim=Name("a"))


def test_arg_reduction_keeps_other_dims_split():
    assert splittable("argmax", [tensor_type(f32, a=2, b=3, c=4)], dim=Name("b")) == {"a", "c"}


# --- top_k ----------------------------------------------------------------

def top_k_rows(rows: np.ndarray, k: int) -> tuple[list, list]:
    """Descending by value, lower index first on ties, via Python's sort on (-value, index)."""
    indices = [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in rows.tolist()]
    return [[row[i] for i in idx] for row, idx in zip(rows.tolist(), indices)], indices


@pytest.mark.parametrize("k", [0, 1, 3, 7])
@pytest.mark.parametrize("dtype", [f32, i8, u8])
def test_top_k_sorts_descending_with_ties_by_index(k, dtype):
    ttype = TensorType(dtype, tensor_type(f32, a=2, b=7, c=3).dims)
    x = rng.integers(0, 4, ttype.shape) if dtype != f32 else rng.integers(0, 4, ttype.shape) / 2.0
    if dtype == i8:
        x[0, 0, 0] = -128  # the value that has no negation in int8
    values, indices = run("top_k", [(x, ttype)], dim=Name("b"), k=k)
    result = ttype.resized("b", k)
    assert infer("top_k", [ttype], dim=Name("b"), k=k) == [result, result.with_dtype(i32)]
    rows = np.moveaxis(x, 1, -1).reshape(-1, 7)
    want_values, want_indices = top_k_rows(rows, k)
    assert np.moveaxis(values, 1, -1).reshape(6, k).tolist() == want_values
    assert np.moveaxis(indices, 1, -1).reshape(6, k).tolist() == want_indices


def test_top_k_puts_nan_first():
    x = np.array([1.0, np.nan, np.inf, np.nan, -np.inf])
    values, indices = run("top_k", [(x, tensor_type(f32, a=5))], dim=Name("a"), k=4)
    assert indices.tolist() == [1, 3, 2, 0]
    np.testing.assert_array_equal(values, [np.nan, np.nan, np.inf, 1.0])


def test_top_k_in_bf16_returns_operand_values():
    x = np.array([0.1, 0.7, 0.3], ml_dtypes.bfloat16)
    values, indices = run("top_k", [(x, tensor_type(bf16, a=3))], dim=Name("a"), k=2)
    assert values.dtype == ml_dtypes.bfloat16 and values.tolist() == [x[1], x[2]] and indices.tolist() == [1, 2]


@pytest.mark.parametrize("k", [-1, 4])
def test_top_k_rejects_k_outside_the_dim(k):
    assert error_of("top_k", [tensor_type(f32, a=3)], dim=Name("a"), k=k) == (
        f"top_k: k = {k} is out of range for dimension 'a' of size 3 (need 0 <= k <= 3)")


def test_top_k_other_errors():
    assert "dimension 'z' is not in the operand" in error_of("top_k", [tensor_type(f32, a=3)], dim=Name("z"), k=1)
    assert "numeric" in error_of("top_k", [tensor_type(bool_, a=3)], dim=Name("a"), k=1)
    assert splittable("top_k", [tensor_type(f32, a=2, b=3)], dim=Name("b"), k=1) == {"a"}


# --- softmax, log_softmax, cumsum -----------------------------------------

@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("order", [dict(a=3, b=5), dict(b=5, a=3)], ids=["ab", "ba"])
def test_softmax_matches_the_formula(op, order):
    ttype = tensor_type(f64, **order)
    x = rng.normal(size=ttype.shape)
    (out,) = run(op, [(x, ttype)], dim=Name("b"))
    axis = ttype.names.index("b")
    expected = np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(out, expected if op == "softmax" else np.log(expected), rtol=1e-12)
    assert infer(op, [ttype], dim=Name("b")) == [ttype]


@pytest.mark.parametrize("values, softmax, log_softmax", [
    ([1000.0, 1000.0 + math.log(3)], [0.25, 0.75], [math.log(0.25), math.log(0.75)]),
    ([-1000.0, -1000.0], [0.5, 0.5], [-math.log(2)] * 2),
    ([-np.inf, 0.0], [0.0, 1.0], [-np.inf, 0.0]),
])
def test_softmax_is_stable(values, softmax, log_softmax):
    ttype = tensor_type(f64, a=2)  # exp(1000) overflows even f64
    (probs,) = run("softmax", [(np.array(values), ttype)], dim=Name("a"))
    (logs,) = run("log_softmax", [(np.array(values), ttype)], dim=Name("a"))
    np.testing.assert_allclose(probs, softmax, rtol=1e-12)
    np.testing.assert_allclose(logs, log_softmax, rtol=1e-12)


def test_softmax_in_bf16():
    x = rng.normal(size=16).astype(ml_dtypes.bfloat16)
    (out,) = run("softmax", [(x, tensor_type(bf16, a=16))], dim=Name("a"))
    wide = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(out.astype(np.float64), wide / wide.sum(), rtol=1e-2)


def test_softmax_over_an_empty_dim_is_empty():
    (out,) = run("softmax", [(np.zeros((2, 0)), tensor_type(f32, a=2, b=0))], dim=Name("b"))
    assert out.shape == (2, 0)


@pytest.mark.parametrize("dtype", [f64, i32])
def test_cumsum_is_inclusive(dtype):
    ttype = TensorType(dtype, tensor_type(f32, a=3, b=6).dims)
    x = rng.integers(-9, 10, ttype.shape).astype(dtype.numpy)
    (out,) = run("cumsum", [(x, ttype)], dim=Name("b"))
    upper = np.triu(np.ones((6, 6), dtype.numpy))  # out[:, j] = sum over i <= j
    np.testing.assert_array_equal(out, x @ upper)
    assert out.dtype == dtype.numpy


def test_cumsum_along_a_leading_dim_and_an_empty_one():
    ttype = tensor_type(f32, a=3, b=2)
    (out,) = run("cumsum", [(np.array([[1, 2], [3, 4], [5, 6]]), ttype)], dim=Name("a"))
    assert out.tolist() == [[1, 2], [4, 6], [9, 12]]
    (empty,) = run("cumsum", [(np.zeros((0, 2)), tensor_type(f32, a=0, b=2))], dim=Name("a"))
    assert empty.shape == (0, 2)


@pytest.mark.parametrize("op, dtype, kind", [
    ("softmax", i32, "float"), ("log_softmax", bool_, "float"), ("cumsum", bool_, "numeric"),
])
def test_along_dim_errors(op, dtype, kind):
    ttype = TensorType(dtype, tensor_type(f32, a=2).dims)
    assert error_of(op, [ttype], dim=Name("a")) == f"{op}: operand 0 must have a {kind} dtype, got {dtype}"
    assert error_of(op, [tensor_type(f32, a=2)], dim=Name("q")) == (
        f"{op}: dimension 'q' is not in the operand f32[a=2] (dimensions: a)")
    assert splittable(op, [tensor_type(f32, a=2, b=3)], dim=Name("a")) == {"b"}
