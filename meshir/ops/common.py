"""Type-rule and reference helpers shared by the op groups."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..diagnostics import MeshirError
from ..dtypes import DType
from ..registry import OpView
from ..types import Dim, TensorType


def same_as_operand(view: OpView) -> TensorType:
    return view.operand_types[0]


def require_dims(view: OpView, ttype: TensorType, names: Iterable[str], what: str = "operand") -> None:
    for name in names:
        if not ttype.has(name):
            raise MeshirError(
                f"{view.name}: dimension '{name}' is not in the {what} {ttype} "
                f"(dimensions: {', '.join(ttype.names) or 'none'})"
            )


def require_same_dtype(view: OpView, types: Sequence[TensorType]) -> DType:
    first = types[0].dtype
    for index, t in enumerate(types[1:], start=1):
        if t.dtype != first:
            raise MeshirError(f"{view.name}: operand {index} has dtype {t.dtype} but operand 0 has {first}; cast one of them")
    return first


def require_dtype(view: OpView, ttype: TensorType, kinds: str, index: int = 0) -> None:
    """`kinds` is "float", "numeric", "integer", "bool" or "any"."""
    ok = {
        "float": ttype.dtype.is_float,
        "numeric": ttype.dtype.is_numeric,
        "integer": ttype.dtype.is_integer,
        "bool": ttype.dtype.is_bool,
        "any": True,
    }[kinds]
    if not ok:
        article = "an" if kinds[0] in "aeiou" else "a"
        raise MeshirError(f"{view.name}: operand {index} must have {article} {kinds} dtype, got {ttype.dtype}")


def union_dims(view: OpView, types: Sequence[TensorType]) -> tuple[Dim, ...]:
    """Broadcast by name: the first operand's dimensions, then each later one's new ones."""
    dims: dict[str, Dim] = {}
    for t in types:
        for d in t.dims:
            dims.setdefault(d.name, d)
    return tuple(dims.values())


def new_dim_name(view: OpView, ttype: TensorType, name: str) -> None:
    if ttype.has(name):
        raise MeshirError(f"{view.name}: dimension '{name}' already exists in {ttype}")


def shape_type(view: OpView, shape: Sequence[Dim], dtype: DType) -> TensorType:
    return TensorType(dtype, tuple(shape))


def axes_of(ttype: TensorType, names: Iterable[str]) -> tuple[int, ...]:
    return tuple(ttype.axis_of(n) for n in names)


def align(array: np.ndarray, ttype: TensorType, target: Sequence[str]) -> np.ndarray:
    """View `array` (dims of `ttype`) with axes ordered as `target`, size-1 axes for
    dimensions it lacks: numpy broadcasting by name."""
    present = [n for n in target if ttype.has(n)]
    moved = np.transpose(array, [ttype.axis_of(n) for n in present]) if present else array.reshape(())
    shape = [moved.shape[present.index(n)] if n in present else 1 for n in target]
    return moved.reshape(shape)


def as_dtype(array: np.ndarray, ttype: TensorType) -> np.ndarray:
    return np.asarray(array).astype(ttype.dtype.numpy, copy=False)
