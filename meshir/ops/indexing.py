"""Indexing ops: `one_hot`, `gather`, `scatter_add` and `iota`.

Indices are integers of any dtype. An index outside [0, size) never raises: it
gives a zero row in `one_hot` and `gather`, and is dropped by `scatter_add`, so
every backend can agree without bounds checks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..attributes import DTYPE, NAME, NEW_DIM, SHAPE, AttrSpec
from ..diagnostics import MeshirError
from ..dtypes import f32, i32
from ..ir import Operation
from ..registry import NOT_DIFFERENTIABLE, OpView, defop
from ..types import TensorType
from .common import as_dtype, new_dim_name, require_dims, require_dtype, require_same_dtype
from .grad_helpers import Cotangents

if TYPE_CHECKING:
    from ..emitter import Emitter

one_hot = defop(
    "one_hot", 1, "indexing",
    "A new last dimension `dim`: 1 at each index, 0 elsewhere; an index outside [0, size) gives an all-zero row.",
    attrs={"dim": AttrSpec(NEW_DIM), "dtype": AttrSpec(DTYPE, f32)},
)


@one_hot.type_rule
def _one_hot_type(view: OpView) -> TensorType:
    indices = view.operand_types[0]
    require_dtype(view, indices, "integer")
    dim = view.attr("dim")
    new_dim_name(view, indices, dim.name)
    return TensorType(view.attr("dtype"), (*indices.dims, dim))


@one_hot.reference
def _one_hot(op: OpView, indices: np.ndarray) -> np.ndarray:
    classes = np.arange(op.attr("dim").size)
    return as_dtype(indices.astype(np.int64)[..., None] == classes, op.result_types[0])


# A block of classes would need this device's offset into the vocabulary.
one_hot.splittable(lambda view: frozenset(view.operand_types[0].names))


def _gather_type_of(view: OpView, x: TensorType, indices: TensorType) -> TensorType:
    dim = view.attr("dim")
    require_dims(view, x, [dim], "operand x")
    require_dtype(view, indices, "integer", 1)
    kept = x.without([dim])
    for name in kept.names:
        if indices.has(name):
            raise MeshirError(
                f"{view.name}: dimension '{name}' is in both the indices {indices} and x {x}; the result "
                f"(indices' dimensions, then x's without '{dim}') would hold it twice; rename one of them"
            )
    return x.with_dims((*indices.dims, *kept.dims))


gather = defop(
    "gather", 2, "indexing",
    "gather(x, indices): x's slices along `dim` at each index; the result has the indices' dimensions, "
    "then x's without `dim`. An index outside [0, size) gives zeros.",
    attrs={"dim": AttrSpec(NAME)},
)


@gather.type_rule
def _gather_type(view: OpView) -> TensorType:
    x, indices = view.operand_types
    return _gather_type_of(view, x, indices)


def _valid_positions(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices as int64, and where they fall inside [0, size)."""
    wide = indices.astype(np.int64)
    return wide, (wide >= 0) & (wide < size)


def _dim_first(op: OpView, x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, op.operand_types[0].axis_of(op.attr("dim")), 0)


@gather.reference
def _gather(op: OpView, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    slices = _dim_first(op, x)
    if slices.shape[0] == 0:  # every index is out of range, and there is no row 0 to pick
        return np.zeros(result.shape, result.dtype.numpy)
    wide, valid = _valid_positions(indices, slices.shape[0])
    picked = slices[np.where(valid, wide, 0)]
    mask = valid.reshape(valid.shape + (1,) * (slices.ndim - 1))
    return as_dtype(np.where(mask, picked, np.zeros((), picked.dtype)), result)


def _gather_splittable(view: OpView) -> frozenset[str]:
    x, indices = view.operand_types[:2]
    return frozenset(n for n in (*indices.names, *x.names) if n != view.attr("dim"))


gather.splittable(_gather_splittable)


scatter_add = defop(
    "scatter_add", 3, "indexing",
    "scatter_add(x, indices, updates), the transpose of gather: x plus each update added at its index "
    "along `dim` (repeated indices accumulate); updates have gather(x, indices)'s type; indices outside "
    "[0, size) are dropped.",
    attrs={"dim": AttrSpec(NAME)},
)


@scatter_add.type_rule
def _scatter_add_type(view: OpView) -> TensorType:
    x, indices, updates = view.operand_types
    require_dtype(view, x, "numeric", 0)
    require_same_dtype(view, [x, updates])
    expected = _gather_type_of(view, x, indices)
    if updates != expected:
        raise MeshirError(
            f"scatter_add: updates must have type {expected} (gather's result: the indices' dimensions, "
            f"then x's without '{view.attr('dim')}'), got {updates}"
        )
    return x


@scatter_add.reference
def _scatter_add(op: OpView, x: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    # 16-bit floats accumulate in float32 so repeated indices round once.
    accumulate = np.float32 if result.dtype.is_float and result.dtype.itemsize < 4 else result.dtype.numpy
    target = _dim_first(op, x.astype(accumulate))  # astype copies: the operand stays untouched
    wide, valid = _valid_positions(indices, target.shape[0])
    rows = updates.astype(accumulate).reshape((indices.size, *target.shape[1:]))
    np.add.at(target, wide.reshape(-1)[valid.reshape(-1)], rows[valid.reshape(-1)])
    return as_dtype(np.moveaxis(target, 0, result.axis_of(op.attr("dim"))), result)


scatter_add.splittable(_gather_splittable)


iota = defop(
    "iota", 0, "indexing",
    "A value of `shape` holding each element's coordinate along `dim`.",
    attrs={"shape": AttrSpec(SHAPE), "dim": AttrSpec(NAME), "dtype": AttrSpec(DTYPE, i32)},
)


@iota.type_rule
def _iota_type(view: OpView) -> TensorType:
    dtype = view.attr("dtype")
    result = TensorType(dtype, view.attr("shape"))
    require_dims(view, result, [view.attr("dim")], "shape")
    if not dtype.is_numeric:
        raise MeshirError(f"iota: dtype must be numeric, got {dtype}")
    size = result.size_of(view.attr("dim"))
    if dtype.is_integer and size - 1 > np.iinfo(dtype.numpy).max:
        raise MeshirError(
            f"iota: dimension '{view.attr('dim')}' has size {size}, but {dtype} counts only up to {np.iinfo(dtype.numpy).max}"
        )
    return result


@iota.reference
def _iota(op: OpView) -> np.ndarray:
    result = op.result_types[0]
    axis = result.axis_of(op.attr("dim"))
    coords = np.arange(result.shape[axis]).reshape([-1 if a == axis else 1 for a in range(result.rank)])
    return np.array(np.broadcast_to(coords, result.shape), dtype=result.dtype.numpy)


# Values are coordinates along `dim`: a block of it would count from zero.
iota.splittable(lambda view: frozenset(d.name for d in view.attr("shape") if d.name != view.attr("dim")))


# ---------------------------------------------------------------------------- gradients
# gather and scatter_add are each other's transposes; indices get no gradient.


@gather.gradient
def _gather_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    x, indices = op.operands
    return [e.emit("scatter_add", e.zeros(x.type), indices, cotangents[0], dim=op.attr("dim")), None]


@scatter_add.gradient
def _scatter_add_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    g, indices = cotangents[0], op.operands[1]
    return [g, None, e.emit("gather", g, indices, dim=op.attr("dim"))]


one_hot.gradient(NOT_DIFFERENTIABLE)
iota.gradient(NOT_DIFFERENTIABLE)
