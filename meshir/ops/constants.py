"""Constants: `constant {value, shape, dtype}` and `zeros`, `ones`, `full {shape}`.

Every literal must be representable in the result dtype: integers in range,
no fractions for integer dtypes, 0/1 or true/false for bool, and no finite
number so large that the float dtype rounds it to infinity.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import ml_dtypes
import numpy as np

from ..attributes import DTYPE, FLOAT, LITERAL, SHAPE, AttrSpec
from ..diagnostics import MeshirError
from ..dtypes import DType, f32
from ..registry import NOT_DIFFERENTIABLE, OpView, defop
from ..types import Dim, TensorType


def _result_type(view: OpView) -> TensorType:
    try:
        return TensorType(view.attr("dtype"), tuple(view.attr("shape")))
    except MeshirError as exc:
        raise MeshirError(f"{view.name}: {exc.message}") from None


def _check_fits(view: OpView, value: int | float | bool, dtype: DType) -> None:
    if dtype.is_bool:
        if value not in (0, 1):  # True/False compare equal to 1/0
            raise MeshirError(f"{view.name}: value {value} is not a boolean (use true, false, 1 or 0) for dtype bool")
    elif dtype.is_integer:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise MeshirError(f"{view.name}: value {value} is not a whole number, so dtype {dtype} cannot hold it")
        info = np.iinfo(dtype.numpy)
        if not info.min <= int(value) <= info.max:
            raise MeshirError(f"{view.name}: value {value} is outside the range of {dtype} [{info.min}, {info.max}]")
    elif math.isfinite(value) and abs(value) > float(ml_dtypes.finfo(dtype.numpy).max):
        # A value just above max may still round down to max; only reject what becomes inf.
        with np.errstate(all="ignore"):
            if np.isinf(np.asarray(value, dtype=np.float64).astype(dtype.numpy)):
                raise MeshirError(f"{view.name}: value {value} overflows {dtype} (largest finite value {ml_dtypes.finfo(dtype.numpy).max})")


def _leaves(value: Any) -> Iterator[int | float | bool]:
    if isinstance(value, tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _shape_text(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _check_nesting(view: OpView, value: Any, dims: Sequence[Dim], shape: Sequence[Dim], path: tuple[int, ...]) -> None:
    where = "value" + "".join(f"[{i}]" for i in path)
    depth = len(path)
    if depth == len(dims):
        if isinstance(value, tuple):
            raise MeshirError(
                f"{view.name}: {where} is a list, but shape {_shape_text(shape)} has only {len(shape)} "
                f"dimension{'s' if len(shape) != 1 else ''}, so the value nests too deep"
            )
        return
    dim = dims[depth]
    if not isinstance(value, tuple):
        raise MeshirError(
            f"{view.name}: {where} is a single number, but dimension '{dim.name}' of shape "
            f"{_shape_text(shape)} needs a list of {dim.size} there"
        )
    if len(value) != dim.size:
        raise MeshirError(
            f"{view.name}: {where} has {len(value)} entries, but dimension '{dim.name}' of shape "
            f"{_shape_text(shape)} has size {dim.size}"
        )
    for index, item in enumerate(value):
        _check_nesting(view, item, dims, shape, path + (index,))


constant = defop(
    "constant", 0, "constants",
    "A literal: a scalar fills the whole `shape` (splat); a nested list must match `shape` exactly.",
    attrs={"value": AttrSpec(LITERAL), "shape": AttrSpec(SHAPE, ()), "dtype": AttrSpec(DTYPE, f32)},
)


@constant.type_rule
def _constant_type(view: OpView) -> TensorType:
    result = _result_type(view)
    value = view.attr("value")
    if isinstance(value, tuple):
        if not result.dims:
            raise MeshirError(f"{view.name}: value is a list but the shape is [] (a scalar); give a number or a shape")
        _check_nesting(view, value, result.dims, result.dims, ())
    for leaf in _leaves(value):
        _check_fits(view, leaf, result.dtype)
    return result


@constant.reference
def _constant(op: OpView) -> np.ndarray:
    result = op.result_types[0]
    value = op.attr("value")
    if not isinstance(value, tuple):
        return np.full(result.shape, value, dtype=result.dtype.numpy)
    # numpy infers int64 for all-integer lists, so large i64 literals stay exact.
    return np.array(value).astype(result.dtype.numpy).reshape(result.shape)


# The literal is the whole value; a block of it is a different literal.
constant.splittable("none")
constant.gradient(NOT_DIFFERENTIABLE)


def _filled(name: str, doc: str, fill: int | None) -> None:
    """An op with a `shape` and `dtype` whose every element is `fill`, or the `value` attribute."""
    attrs = {"shape": AttrSpec(SHAPE), "dtype": AttrSpec(DTYPE, f32)}
    if fill is None:
        attrs["value"] = AttrSpec(FLOAT)
    opdef = defop(name, 0, "constants", doc, attrs=attrs)

    def type_rule(view: OpView) -> TensorType:
        result = _result_type(view)
        if fill is None:
            _check_fits(view, view.attr("value"), result.dtype)
        return result

    def reference(op: OpView) -> np.ndarray:
        result = op.result_types[0]
        return np.full(result.shape, op.attr("value") if fill is None else fill, dtype=result.dtype.numpy)

    opdef.type_rule(type_rule)
    opdef.reference(reference)
    opdef.splittable("all")
    opdef.gradient(NOT_DIFFERENTIABLE)


_filled("zeros", "All zeros (false for bool).", 0)
_filled("ones", "All ones (true for bool).", 1)
_filled("full", "Every element `value`; it must be representable in `dtype`.", None)
