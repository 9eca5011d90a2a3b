"""Helpers for gradient rules.

A gradient rule is `fn(e, op, cotangents) -> gradients`, registered with
`opdef.gradient(fn)` next to the op's definition: `e` is an `Emitter` appending
to the function being differentiated, `op` the forward op, `cotangents` one
per result (None where the loss does not depend on that result; otherwise a
value of the result's type), and the rule returns one value per operand, of
exactly that operand's type, or None where the operand gets no gradient
(integer and boolean operands, or a zero gradient). Only float values carry
cotangents, and a rule is called only when some result has one.
`opdef.gradient(NOT_DIFFERENTIABLE)` marks ops no gradient flows through.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional

from ..ir import Operation, Value, unused_name
from ..types import TensorType

if TYPE_CHECKING:
    from ..emitter import Emitter

Cotangents = list[Optional[Value]]
GradientRule = Callable[["Emitter", Operation, Cotangents], Cotangents]


def scalar(e: Emitter, value: float, like: Value) -> Value:
    """A scalar constant of `like`'s dtype."""
    return e.constant(value, like.type.dtype)


def or_zeros(e: Emitter, cotangent: Value | None, like: Value) -> Value:
    """The cotangent, or zeros of `like`'s type where the loss does not depend on it."""
    return cotangent if cotangent is not None else e.zeros(like.type)


def in_order(e: Emitter, value: Value, names: tuple[str, ...]) -> Value:
    """`value` with its dimensions ordered as `names` (a permutation of its own)."""
    return value if value.type.names == names else e.emit("transpose", value, order=list(names))


def unbroadcast(e: Emitter, g: Value, target: TensorType) -> Value:
    """The transpose of broadcasting by name: sum `g` over the dimensions `target`
    lacks, then order the rest as `target` does."""
    extra = [n for n in g.type.names if not target.has(n)]
    if extra:
        g = e.emit("reduce_sum", g, dims=extra)
    return in_order(e, g, target.names)


def broadcast_to(e: Emitter, value: Value, target: TensorType) -> Value:
    """`value` repeated along the dimensions of `target` it lacks, in `target`'s order."""
    return value if value.type == target else e.emit("broadcast", value, shape=target.dims)


def fresh_dim(base: str, *types: TensorType) -> str:
    """A dimension name none of `types` uses, derived from `base`."""
    return unused_name(base, {n for t in types for n in t.names}, separator="")


def add_all(e: Emitter, values: Iterable[Value]) -> Value:
    """The sum of `values` (at least one), each of the first one's dimensions."""
    total = None
    for value in values:
        total = value if total is None else e.emit("add", total, value)
    return total


def zero_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """Piecewise-constant ops (floor, sign, ...) and stop_gradient: the gradient is zero."""
    return [None] * len(op.operands)


def unary(derivative: Callable[[Emitter, Value, Value], Value]) -> GradientRule:
    """The rule of an elementwise op y = f(x): g * derivative(e, x, y)."""

    def rule(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
        (g,) = cotangents
        return [e.emit("mul", g, derivative(e, op.operands[0], op.result))]

    return rule


def product_partial(e: Emitter, x: Value, y: Value, count: Callable[[Value], Value],
                    multiply: Callable[[Value], Value]) -> Value:
    """d y / d x for y the product of x's elements over some group (dimensions, or
    devices): the product of the other elements, zeros included. With no zero in
    the group it is y / x; with one zero, the zero's is the product of the rest
    and the others' 0; with two or more, all 0. `count` and `multiply` sum and
    multiply a value of x's shape over the group."""
    zero, one = scalar(e, 0.0, x), scalar(e, 1.0, x)
    is_zero = e.emit("eq", x, zero)
    safe = e.emit("select", is_zero, one, x)
    zeros = count(e.emit("cast", is_zero, dtype=x.type.dtype))
    at_zero = e.emit("select", e.emit("eq", zeros, one), multiply(safe), zero)
    elsewhere = e.emit("select", e.emit("eq", zeros, zero), e.emit("mul", e.emit("reciprocal", safe), y), zero)
    return e.emit("select", is_zero, at_zero, elsewhere)
