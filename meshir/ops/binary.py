"""Binary ops, broadcast by name, and `select`.

The result has the first operand's dimensions, then each later operand's new
ones, in order; dimensions the operands share must agree in size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..dtypes import bool_
from ..ir import Operation, Value
from ..registry import NOT_DIFFERENTIABLE, REGISTRY, OpView, defop
from ..types import TensorType
from .common import align, as_dtype, require_dtype, require_same_dtype, union_dims
from .grad_helpers import Cotangents, scalar, unbroadcast

if TYPE_CHECKING:
    from ..emitter import Emitter


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


# ---------------------------------------------------------------------------- gradients
# Each operand's gradient is the cotangent times the partial derivative, summed
# over the dimensions the operand lacks and ordered as its own (`unbroadcast`).


def _partials(fn: Callable[[Emitter, Value, Value, Value, Value], tuple[Value | None, Value | None]]):
    """A rule from fn(e, g, x, y, out) -> (g * d out/dx, g * d out/dy), broadcast by name."""

    def rule(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
        x, y = op.operands
        gx, gy = fn(e, cotangents[0], x, y, op.result)
        return [None if g is None else unbroadcast(e, g, v.type) for g, v in ((gx, x), (gy, y))]

    return rule


def _log_or_zero(e: Emitter, x: Value) -> Value:
    """log(x), with log(0) read as 0: x ** y does not depend on y where x = 0."""
    zero, one = scalar(e, 0.0, x), scalar(e, 1.0, x)
    return e.emit("log", e.emit("select", e.emit("eq", x, zero), one, x))


def _max_share(e: Emitter, x: Value, y: Value, sign: float) -> Value:
    """x's share of maximum(x, y) (sign 1) or minimum (sign -1): 1 where x wins,
    0 where y wins, and on ties 1/2 each, as JAX does."""
    half = scalar(e, 0.5, x)
    return e.emit("add", half, e.emit("mul", scalar(e, 0.5 * sign, x), e.emit("sign", e.emit("sub", x, y))))


def _extreme(sign: float):
    def partials(e: Emitter, g: Value, x: Value, y: Value, out: Value) -> tuple[Value, Value]:
        share = _max_share(e, x, y, sign)
        return e.emit("mul", g, share), e.emit("mul", g, e.emit("sub", scalar(e, 1.0, share), share))

    return partials


_PARTIALS = {
    "add": lambda e, g, x, y, out: (g, g),
    "sub": lambda e, g, x, y, out: (g, e.emit("neg", g)),
    "mul": lambda e, g, x, y, out: (e.emit("mul", g, y), e.emit("mul", g, x)),
    "div": lambda e, g, x, y, out: (e.emit("div", g, y), e.emit("neg", e.emit("div", e.emit("mul", g, out), y))),
    "pow": lambda e, g, x, y, out: (
        e.emit("mul", g, e.emit("mul", y, e.emit("pow", x, e.emit("sub", y, scalar(e, 1.0, y))))),
        e.emit("mul", g, e.emit("mul", out, _log_or_zero(e, x))),
    ),
    "maximum": _extreme(1.0),
    "minimum": _extreme(-1.0),
}

for _name, _fn in _PARTIALS.items():
    REGISTRY[_name].gradient(_partials(_fn))

for _name, (_kinds, _to_bool, _fn, _doc) in _BINARY.items():
    if _to_bool:
        REGISTRY[_name].gradient(NOT_DIFFERENTIABLE)


@select.gradient
def _select_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    (g,), (cond, x, y) = cotangents, op.operands
    zero = scalar(e, 0.0, g)
    return [None, unbroadcast(e, e.emit("select", cond, g, zero), x.type),
            unbroadcast(e, e.emit("select", cond, zero, g), y.type)]
