"""Binary ops, broadcast by name, and `select`.

The result has the first operand's dimensions, then each later operand's new
ones, in order; dimensions the operands share must agree in size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..dtypes import bool_
from ..registry import OpView, defop
from ..types import TensorType
from .common import align, as_dtype, require_dtype, require_same_dtype, union_dims


def _int_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer division truncates toward zero; x / 0 is 0 (IEEE has nothing to say)."""
    safe = np.where(y == 0, 1, y)
    quotient = np.abs(x) // np.abs(safe) * np.sign(x) * np.sign(safe)
    return np.where(y == 0, 0, quotient).astype(x.dtype)


def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        return _int_div(x, y)
    return x / y


# name: (operand dtype kinds, result is bool, numpy function, doc)
_BINARY: dict[str, tuple[str, bool, Callable[[np.ndarray, np.ndarray], np.ndarray], str]] = {
    "add": ("numeric", False, np.add, "x + y."),
    "sub": ("numeric", False, np.subtract, "x - y."),
    "mul": ("numeric", False, np.multiply, "x * y."),
    "div": ("numeric", False, _div, "x / y: IEEE for floats; integers truncate toward zero and x / 0 = 0."),
    "pow": ("float", False, np.power, "x ** y."),
    "maximum": ("numeric", False, np.maximum, "Elementwise maximum (nan propagates)."),
    "minimum": ("numeric", False, np.minimum, "Elementwise minimum (nan propagates)."),
    "eq": ("any", True, np.equal, "x == y."),
    "ne": ("any", True, np.not_equal, "x != y."),
    "lt": ("numeric", True, np.less, "x < y."),
    "le": ("numeric", True, np.less_equal, "x <= y."),
    "gt": ("numeric", True, np.greater, "x > y."),
    "ge": ("numeric", True, np.greater_equal, "x >= y."),
    "logical_and": ("bool", True, np.logical_and, "Boolean and."),
    "logical_or": ("bool", True, np.logical_or, "Boolean or."),
}


def _binary_type_rule(kinds: str, to_bool: bool):
    def rule(view: OpView) -> TensorType:
        dtype = require_same_dtype(view, view.operand_types)
        for index, t in enumerate(view.operand_types):
            require_dtype(view, t, kinds, index)
        return TensorType(bool_ if to_bool else dtype, union_dims(view, view.operand_types))

    return rule


def _broadcast_reference(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def reference(op: OpView, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        target = op.result_types[0]
        names = target.names
        tx, ty = op.operand_types
        a, b = align(x, tx, names), align(y, ty, names)
        wide = tx.dtype.is_float and tx.dtype.itemsize < 4
        if wide:
            a, b = a.astype(np.float32), b.astype(np.float32)
        with np.errstate(all="ignore"):
            out = fn(a, b)
        return as_dtype(np.broadcast_to(out, target.shape), target)

    return reference


for _name, (_kinds, _to_bool, _fn, _doc) in _BINARY.items():
    _op = defop(_name, 2, "binary", _doc)
    _op.type_rule(_binary_type_rule(_kinds, _to_bool))
    _op.reference(_broadcast_reference(_fn))
    _op.splittable("all")

select = defop("select", 3, "binary", "select(cond, x, y): x where cond, else y; broadcast by name over all three.")


@select.type_rule
def _select_type(view: OpView) -> TensorType:
    cond, x, y = view.operand_types
    require_dtype(view, cond, "bool", 0)
    dtype = require_same_dtype(view, [x, y])
    return TensorType(dtype, union_dims(view, view.operand_types))


@select.reference
def _select(op: OpView, cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    target = op.result_types[0]
    parts = [align(a, t, target.names) for a, t in zip((cond, x, y), op.operand_types)]
    return as_dtype(np.broadcast_to(np.where(*parts), target.shape), target)


select.splittable("all")
