"""Elementwise unary ops and `cast`."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..attributes import AttrSpec, BOOL, DTYPE
from ..ir import Operation, Value
from ..registry import NOT_DIFFERENTIABLE, REGISTRY, OpView, defop
from .common import as_dtype, require_dtype, same_as_operand
from .grad_helpers import Cotangents, scalar, unary, zero_gradient

if TYPE_CHECKING:
    from ..emitter import Emitter

_erf = np.frompyfunc(math.erf, 1, 1)


def _widened(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """Run `fn` in float32 for 16-bit floats (numpy has few kernels for them), then
    round back to the operand's dtype."""

    def reference(op: OpView, x: np.ndarray) -> np.ndarray:
        ttype = op.operand_types[0]
        wide = x.astype(np.float32) if ttype.dtype.is_float and ttype.dtype.itemsize < 4 else x
        with np.errstate(all="ignore"):
            return as_dtype(fn(wide), ttype)

    return reference


def _erf_array(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(x.dtype) if x.size else x.copy()


def _gelu(op: OpView, x: np.ndarray) -> np.ndarray:
    if op.attr("approximate"):
        return _widened(lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))))(op, x)
    return _widened(lambda v: 0.5 * v * (1 + _erf_array(v / np.sqrt(2).astype(v.dtype))))(op, x)


def _softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.zeros_like(v), v)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, 1 / (1 + np.exp(-np.abs(v))), np.exp(-np.abs(v)) / (1 + np.exp(-np.abs(v))))


# name: (dtype kinds accepted, numpy function on the widened array, doc)
_UNARY: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], str]] = {
    "neg": ("numeric", np.negative, "-x."),
    "abs": ("numeric", np.abs, "|x|."),
    "exp": ("float", np.exp, "e**x."),
    "log": ("float", np.log, "Natural logarithm; log(0) = -inf, log(x<0) = nan."),
    "log1p": ("float", np.log1p, "log(1 + x), accurate near 0."),
    "sqrt": ("float", np.sqrt, "Square root; nan below 0."),
    "rsqrt": ("float", lambda v: 1 / np.sqrt(v), "1 / sqrt(x)."),
    "square": ("numeric", np.square, "x * x."),
    "sin": ("float", np.sin, "Sine."),
    "cos": ("float", np.cos, "Cosine."),
    "tanh": ("float", np.tanh, "Hyperbolic tangent."),
    "sigmoid": ("float", _sigmoid, "1 / (1 + e**-x)."),
    "relu": ("numeric", lambda v: np.maximum(v, 0).astype(v.dtype), "max(x, 0)."),
    "silu": ("float", lambda v: v * _sigmoid(v), "x * sigmoid(x)."),
    "softplus": ("float", _softplus, "log(1 + e**x)."),
    "erf": ("float", _erf_array, "The error function."),
    "sign": ("numeric", np.sign, "-1, 0 or 1 (nan for nan)."),
    "floor": ("float", np.floor, "Round toward -inf."),
    "ceil": ("float", np.ceil, "Round toward +inf."),
    "round": ("float", np.round, "Round half to even."),
    "reciprocal": ("float", lambda v: 1 / v, "1 / x; IEEE at 0."),
}


def _unary_type_rule(kinds: str):
    def rule(view: OpView):
        require_dtype(view, view.operand_types[0], kinds)
        return same_as_operand(view)

    return rule


for _name, (_kinds, _fn, _doc) in _UNARY.items():
    _op = defop(_name, 1, "elementwise", _doc)
    _op.type_rule(_unary_type_rule(_kinds))
    _op.reference(_widened(_fn))
    _op.splittable("all")

gelu = defop("gelu", 1, "elementwise", "Gaussian error linear unit; exact (erf) unless approximate = true (tanh form).",
             attrs={"approximate": AttrSpec(BOOL, False)})
gelu.type_rule(_unary_type_rule("float"))
gelu.reference(_gelu)
gelu.splittable("all")

logical_not = defop("logical_not", 1, "elementwise", "Boolean not.")
logical_not.type_rule(_unary_type_rule("bool"))
logical_not.reference(lambda op, x: np.logical_not(x))
logical_not.splittable("all")

cast = defop("cast", 1, "elementwise", "Convert to `dtype`: floats to integers truncate toward zero; to bool is x != 0.",
             attrs={"dtype": AttrSpec(DTYPE)})
cast.type_rule(lambda view: view.operand_types[0].with_dtype(view.attr("dtype")))


@cast.reference
def _cast(op: OpView, x: np.ndarray) -> np.ndarray:
    target = op.attr("dtype")
    with np.errstate(all="ignore"):
        if target.is_bool:
            return x != 0
        if target.is_integer and op.operand_types[0].dtype.is_float:
            return np.trunc(x.astype(np.float64)).astype(target.numpy)
        return x.astype(target.numpy)


cast.splittable("all")


# ---------------------------------------------------------------------------- gradients
# Each derivative is computed in the operand's dtype from the operand x and the result y.

_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def _one_minus(e: Emitter, v: Value) -> Value:
    return e.emit("sub", scalar(e, 1.0, v), v)


def _silu_derivative(e: Emitter, x: Value, y: Value) -> Value:
    """s * (1 + x * (1 - s)), s = sigmoid(x)."""
    s = e.emit("sigmoid", x)
    return e.emit("mul", s, e.emit("add", scalar(e, 1.0, x), e.emit("mul", x, _one_minus(e, s))))


_DERIVATIVES: dict[str, Callable[[Emitter, Value, Value], Value]] = {
    "abs": lambda e, x, y: e.emit("sign", x),
    "exp": lambda e, x, y: y,
    "log": lambda e, x, y: e.emit("reciprocal", x),
    "log1p": lambda e, x, y: e.emit("reciprocal", e.emit("add", x, scalar(e, 1.0, x))),
    "sqrt": lambda e, x, y: e.emit("div", scalar(e, 0.5, y), y),
    "rsqrt": lambda e, x, y: e.emit("mul", scalar(e, -0.5, y), e.emit("div", y, x)),
    "square": lambda e, x, y: e.emit("mul", scalar(e, 2.0, x), x),
    "sin": lambda e, x, y: e.emit("cos", x),
    "cos": lambda e, x, y: e.emit("neg", e.emit("sin", x)),
    "tanh": lambda e, x, y: _one_minus(e, e.emit("square", y)),
    "sigmoid": lambda e, x, y: e.emit("mul", y, _one_minus(e, y)),
    "silu": _silu_derivative,
    "softplus": lambda e, x, y: e.emit("sigmoid", x),
    "erf": lambda e, x, y: e.emit("mul", scalar(e, 2 / math.sqrt(math.pi), x), e.emit("exp", e.emit("neg", e.emit("square", x)))),
    "reciprocal": lambda e, x, y: e.emit("neg", e.emit("square", y)),
}

for _name, _derivative in _DERIVATIVES.items():
    REGISTRY[_name].gradient(unary(_derivative))

# Piecewise constant: zero almost everywhere.
for _name in ("sign", "floor", "ceil", "round"):
    REGISTRY[_name].gradient(zero_gradient)

REGISTRY["neg"].gradient(lambda e, op, cotangents: [e.emit("neg", cotangents[0])])


@REGISTRY["relu"].gradient
def _relu_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """g where x > 0, else 0 (0 at x = 0 itself)."""
    (g,), (x,) = cotangents, op.operands
    zero = scalar(e, 0.0, g)
    return [e.emit("select", e.emit("gt", x, zero), g, zero)]


def _gelu_derivative(e: Emitter, x: Value, y: Value, approximate: bool) -> Value:
    half, one = scalar(e, 0.5, x), scalar(e, 1.0, x)
    if not approximate:
        # Phi(x) + x * phi(x): the normal cdf and density.
        cdf = e.emit("mul", half, e.emit("add", one, e.emit("erf", e.emit("mul", x, scalar(e, _INV_SQRT_2, x)))))
        pdf = e.emit("mul", scalar(e, _INV_SQRT_2PI, x), e.emit("exp", e.emit("mul", scalar(e, -0.5, x), e.emit("square", x))))
        return e.emit("add", cdf, e.emit("mul", x, pdf))
    # 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2), t = tanh(c (x + k x^3)).
    square = e.emit("square", x)
    inner = e.emit("mul", scalar(e, _SQRT_2_OVER_PI, x), e.emit("add", x, e.emit("mul", scalar(e, _GELU_CUBIC, x), e.emit("mul", square, x))))
    t = e.emit("tanh", inner)
    slope = e.emit("mul", scalar(e, _SQRT_2_OVER_PI, x), e.emit("add", one, e.emit("mul", scalar(e, 3 * _GELU_CUBIC, x), square)))
    tail = e.emit("mul", e.emit("mul", half, x), e.emit("mul", _one_minus(e, e.emit("square", t)), slope))
    return e.emit("add", e.emit("mul", half, e.emit("add", one, t)), tail)


@gelu.gradient
def _gelu_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    derivative = _gelu_derivative(e, op.operands[0], op.result, op.attr("approximate"))
    return [e.emit("mul", cotangents[0], derivative)]


logical_not.gradient(NOT_DIFFERENTIABLE)


@cast.gradient
def _cast_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """Float to float: the cotangent cast back; nothing flows through integers or booleans."""
    source = op.operands[0].type.dtype
    if not (source.is_float and op.attr("dtype").is_float):
        return [None]
    return [e.emit("cast", cotangents[0], dtype=source)]
