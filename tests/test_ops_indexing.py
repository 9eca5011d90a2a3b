"""Indexing ops: one_hot, gather, scatter_add, iota."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from meshir.attributes import Name
from meshir.diagnostics import MeshirError
from meshir.dtypes import bf16, bool_, f32, i32, i64, u8, u32
from meshir.registry import OpView, lookup
from meshir.types import Dim, tensor_type
from tests.opcheck import infer, run

N = Name


def expect_error(message: str, name: str, types: list, **attrs) -> None:
    with pytest.raises(MeshirError) as error:
        infer(name, types, **attrs)
    assert error.value.message == message


def splittable(name: str, types: list, **attrs) -> frozenset[str]:
    opdef = lookup(name)
    view = OpView(opdef, types, opdef.check_attributes(attrs))
    view.result_types = opdef.infer(view)
    return opdef.split_dims(view)


# ---------------------------------------------------------------------------- one_hot


@pytest.mark.parametrize("dtype", [f32, bf16, i32, bool_])
def test_one_hot_rows_and_out_of_range(dtype) -> None:
    indices = np.array([[0, 3, -1], [4, 2, 100]])
    out, = run("one_hot", [(indices, tensor_type(i32, b=2, s=3))], dim=Dim("k", 4), dtype=dtype)
    expected = np.zeros((2, 3, 4))
    for (b, s), index in np.ndenumerate(indices):
        if 0 <= index < 4:
            expected[b, s, index] = 1
    np.testing.assert_array_equal(out.astype(np.float64), expected)
    assert infer("one_hot", [tensor_type(i32, b=2, s=3)], dim=Dim("k", 4), dtype=dtype)[0] == tensor_type(dtype, b=2, s=3, k=4)


def test_one_hot_defaults_to_f32_and_takes_unsigned_indices() -> None:
    out, = run("one_hot", [(np.array([1, 255], dtype=np.uint8), tensor_type(u8, n=2))], dim=Dim("k", 3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 0]])


def test_one_hot_errors_and_splits() -> None:
    expect_error("one_hot: operand 0 must have an integer dtype, got f32", "one_hot", [tensor_type(f32, n=2)], dim=Dim("k", 3))
    expect_error("one_hot: dimension 'n' already exists in i32[n=2]", "one_hot", [tensor_type(i32, n=2)], dim=Dim("n", 3))
    assert splittable("one_hot", [tensor_type(i32, n=2)], dim=Dim("k", 3)) == {"n"}


# ---------------------------------------------------------------------------- gather

X = tensor_type(f32, a=2, v=5, h=3)


def test_gather_matches_take_and_zeroes_out_of_range() -> None:
    x = np.arange(30, dtype=np.float32).reshape(2, 5, 3)
    indices = np.array([[4, 0], [-1, 5], [2, 2]])
    out, = run("gather", [(x, X), (indices, tensor_type(i64, b=3, s=2))], dim=N("v"))
    assert out.shape == (3, 2, 2, 3)  # indices' dims, then x's without v
    for (b, s), index in np.ndenumerate(indices):
        expected = x[:, index, :] if 0 <= index < 5 else np.zeros((2, 3))
        np.testing.assert_array_equal(out[b, s], expected)


def test_gather_embedding_lookup_and_empty_table() -> None:
    table = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    ids = np.array([2, 0, 7], dtype=np.uint32)
    out, = run("gather", [(table, tensor_type(f32, vocab=3, d=2)), (ids, tensor_type(u32, t=3))], dim=N("vocab"))
    np.testing.assert_array_equal(out, [[5, 6], [1, 2], [0, 0]])
    empty, = run("gather", [(np.zeros((0, 2)), tensor_type(f32, vocab=0, d=2)), (ids, tensor_type(u32, t=3))], dim=N("vocab"))
    np.testing.assert_array_equal(empty, np.zeros((3, 2)))


def test_gather_of_booleans() -> None:
    x = np.array([True, False, True])
    out, = run("gather", [(x, tensor_type(bool_, v=3)), (np.array([2, 1, 3]), tensor_type(i32, n=3))], dim=N("v"))
    np.testing.assert_array_equal(out, [True, False, False])


def test_gather_errors_and_splits() -> None:
    idx = tensor_type(i32, b=4)
    expect_error("gather: dimension 'w' is not in the operand x f32[a=2, v=5, h=3] (dimensions: a, v, h)", "gather", [X, idx], dim=N("w"))
    expect_error("gather: operand 1 must have an integer dtype, got f32", "gather", [X, tensor_type(f32, b=4)], dim=N("v"))
    expect_error(
        "gather: dimension 'a' is in both the indices i32[a=2, b=4] and x f32[a=2, v=5, h=3]; the result "
        "(indices' dimensions, then x's without 'v') would hold it twice; rename one of them",
        "gather", [X, tensor_type(i32, a=2, b=4)], dim=N("v"),
    )
    assert splittable("gather", [X, idx], dim=N("v")) == {"a", "h", "b"}


# ---------------------------------------------------------------------------- scatter_add


def scatter_loop(x: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """x[a, v, h] += updates[b, s, a, h] at v = indices[b, s], one element at a time."""
    out = x.astype(np.float64)
    for (b, s), index in np.ndenumerate(indices):
        if 0 <= index < x.shape[1]:
            out[:, index, :] += updates[b, s]
    return out


def test_scatter_add_accumulates_duplicates_and_drops_out_of_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    indices = np.array([[1, 1], [4, -1], [5, 1]])
    updates = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)
    upd_type = tensor_type(f32, b=3, s=2, a=2, h=3)
    out, = run("scatter_add", [(x, X), (indices, tensor_type(i32, b=3, s=2)), (updates, upd_type)], dim=N("v"))
    np.testing.assert_allclose(out, scatter_loop(x, indices, updates), rtol=1e-6)
    np.testing.assert_array_equal(out[:, [0, 2, 3], :], x[:, [0, 2, 3], :])


def test_scatter_add_in_bf16_and_integers() -> None:
    x = np.zeros((1, 4, 1), dtype=ml_dtypes.bfloat16)
    indices = np.array([[2] * 8])
    updates = np.full((1, 8, 1, 1), 1.0 / 3, dtype=ml_dtypes.bfloat16)
    types = [tensor_type(bf16, a=1, v=4, h=1), tensor_type(i32, b=1, s=8), tensor_type(bf16, b=1, s=8, a=1, h=1)]
    out, = run("scatter_add", list(zip([x, indices, updates], types)), dim=N("v"))
    # Eight bf16 thirds summed in float32, rounded once.
    assert out[0, 2, 0] == ml_dtypes.bfloat16(8 * np.float32(ml_dtypes.bfloat16(1.0 / 3)))
    ints, = run("scatter_add", [(np.array([10, 20, 30]), tensor_type(i32, v=3)), (np.array([0, 0, 2]), tensor_type(i32, n=3)),
                                (np.array([1, 2, 3]), tensor_type(i32, n=3))], dim=N("v"))
    np.testing.assert_array_equal(ints, [13, 20, 33])


def test_scatter_add_errors_and_splits() -> None:
    idx = tensor_type(i32, b=4)
    good = tensor_type(f32, b=4, a=2, h=3)
    assert infer("scatter_add", [X, idx, good], dim=N("v")) == [X]
    expect_error(
        "scatter_add: updates must have type f32[b=4, a=2, h=3] (gather's result: the indices' dimensions, "
        "then x's without 'v'), got f32[a=2, b=4, h=3]",
        "scatter_add", [X, idx, tensor_type(f32, a=2, b=4, h=3)], dim=N("v"),
    )
    expect_error("scatter_add: operand 1 has dtype i32 but operand 0 has f32; cast one of them",
                 "scatter_add", [X, idx, good.with_dtype(i32)], dim=N("v"))
    expect_error("scatter_add: operand 0 must have a numeric dtype, got bool",
                 "scatter_add", [X.with_dtype(bool_), idx, good.with_dtype(bool_)], dim=N("v"))
    expect_error("scatter_add: dimension 'q' is not in the operand x f32[a=2, v=5, h=3] (dimensions: a, v, h)",
                 "scatter_add", [X, idx, good], dim=N("q"))
    assert splittable("scatter_add", [X, idx, good], dim=N("v")) == {"a", "h", "b"}


# ---------------------------------------------------------------------------- iota


def test_iota_counts_along_its_dimension() -> None:
    out, = run("iota", [], shape=(Dim("a", 2), Dim("b", 3), Dim("c", 4)), dim=N("b"))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.indices((2, 3, 4))[1])
    floats, = run("iota", [], shape=(Dim("a", 3),), dim=N("a"), dtype=bf16)
    np.testing.assert_array_equal(floats.astype(np.float32), [0, 1, 2])
    assert out.flags.writeable


def test_iota_errors_and_splits() -> None:
    shape = (Dim("a", 2), Dim("b", 300))
    expect_error("iota: dimension 'c' is not in the shape i32[a=2, b=300] (dimensions: a, b)", "iota", [], shape=shape, dim=N("c"))
    expect_error("iota: dtype must be numeric, got bool", "iota", [], shape=shape, dim=N("a"), dtype=bool_)
    expect_error("iota: dimension 'b' has size 300, but u8 counts only up to 255", "iota", [], shape=shape, dim=N("b"), dtype=u8)
    assert infer("iota", [], shape=(Dim("b", 256),), dim=N("b"), dtype=u8) == [tensor_type(u8, b=256)]
    assert splittable("iota", [], shape=shape, dim=N("a")) == {"b"}
