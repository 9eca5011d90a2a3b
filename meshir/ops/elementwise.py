"""Elementwise unary ops and `cast`."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..attributes import AttrSpec, BOOL, DTYPE
from ..registry import OpView, defop
from .common import as_dtype, require_dtype, same_as_operand

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
