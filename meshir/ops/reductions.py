"""Reductions over named dimensions, arg-reductions, `top_k`, softmax and `cumsum`.

Empty reductions never raise: they give the reduction's identity (sum 0, prod 1,
max -inf or the integer minimum, ...) and mean NaN, as IEEE would.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..attributes import AttrSpec, INT, NAME, NAMES
from ..diagnostics import MeshirError
from ..dtypes import i32
from ..ir import Operation, Value
from ..registry import NOT_DIFFERENTIABLE, REGISTRY, OpView, defop
from ..types import TensorType
from .common import as_dtype, axes_of, require_dims, require_dtype, same_as_operand
from .grad_helpers import Cotangents, broadcast_to, fresh_dim, product_partial, scalar

if TYPE_CHECKING:
    from ..emitter import Emitter


def _wide(x: np.ndarray, ttype: TensorType) -> np.ndarray:
    """16-bit floats computed in float32: numpy has few kernels for them and
    accumulating in 16 bits loses too much."""
    return x.astype(np.float32) if ttype.dtype.is_float and ttype.dtype.itemsize < 4 else x


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> float | int:
    return np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).max


def _mean(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    count = math.prod(x.shape[a] for a in axes)
    return np.sum(x, axis=axes) / x.dtype.type(count)


def _logsumexp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    top = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    # An infinite maximum would make x - top NaN; shifting by 0 instead keeps
    # all -inf at -inf and +inf at +inf.
    shift = np.where(np.isfinite(top), top, 0).astype(x.dtype)
    total = np.sum(np.exp(x - shift), axis=axes, keepdims=True)
    return np.squeeze(np.log(total) + shift, axis=axes)


# name: (dtype kinds accepted, reducer over the widened array and axes, doc)
_REDUCTIONS: dict[str, tuple[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray], str]] = {
    "reduce_sum": ("numeric", lambda x, axes: np.sum(x, axis=axes), "Sum over `dims`; 0 over no elements."),
    "reduce_mean": ("float", _mean, "Mean over `dims`; NaN over no elements."),
    "reduce_max": ("numeric", lambda x, axes: np.max(x, axis=axes, initial=_lowest(x.dtype)),
                   "Maximum over `dims` (NaN propagates); -inf, or the integer minimum, over no elements."),
    "reduce_min": ("numeric", lambda x, axes: np.min(x, axis=axes, initial=_highest(x.dtype)),
                   "Minimum over `dims` (NaN propagates); +inf, or the integer maximum, over no elements."),
    "reduce_prod": ("numeric", lambda x, axes: np.prod(x, axis=axes), "Product over `dims`; 1 over no elements."),
    "reduce_any": ("bool", lambda x, axes: np.any(x, axis=axes), "Logical or over `dims`; false over no elements."),
    "reduce_all": ("bool", lambda x, axes: np.all(x, axis=axes), "Logical and over `dims`; true over no elements."),
    "logsumexp": ("float", _logsumexp, "log(sum(exp(x))) over `dims`, computed stably; -inf over no elements."),
}


def _reduction_type_rule(kinds: str):
    def rule(view: OpView) -> TensorType:
        operand = view.operand_types[0]
        require_dtype(view, operand, kinds)
        require_dims(view, operand, view.attr("dims"))
        return operand.without(view.attr("dims"))

    return rule


def _reduction_reference(reducer: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]):
    def reference(op: OpView, x: np.ndarray) -> np.ndarray:
        operand = op.operand_types[0]
        with np.errstate(all="ignore"):
            out = reducer(_wide(x, operand), axes_of(operand, op.attr("dims")))
        return as_dtype(out, op.result_types[0])

    return reference


def _kept_dims(view: OpView) -> frozenset[str]:
    return frozenset(view.operand_types[0].names) - set(view.attr("dims"))


def _all_but_dim(view: OpView) -> frozenset[str]:
    return frozenset(view.operand_types[0].names) - {view.attr("dim")}


for _name, (_kinds, _reducer, _doc) in _REDUCTIONS.items():
    _op = defop(_name, 1, "reductions", _doc, attrs={"dims": AttrSpec(NAMES)})
    _op.type_rule(_reduction_type_rule(_kinds))
    _op.reference(_reduction_reference(_reducer))
    _op.splittable(_kept_dims)


def _along_dim_type_rule(kinds: str):
    """Ops over one dimension `dim` whose result has the operand's type."""

    def rule(view: OpView) -> TensorType:
        require_dtype(view, view.operand_types[0], kinds)
        require_dims(view, view.operand_types[0], [view.attr("dim")])
        return same_as_operand(view)

    return rule


def _arg_type_rule(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    require_dtype(view, operand, "numeric")
    require_dims(view, operand, [view.attr("dim")])
    return operand.without([view.attr("dim")]).with_dtype(i32)


def _arg_reference(pick: Callable[..., np.ndarray]):
    def reference(op: OpView, x: np.ndarray) -> np.ndarray:
        operand, result = op.operand_types[0], op.result_types[0]
        if operand.size_of(op.attr("dim")) == 0:
            return np.zeros(result.shape, result.dtype.numpy)
        return as_dtype(pick(_wide(x, operand), axis=operand.axis_of(op.attr("dim"))), result)

    return reference


for _name, _pick in (("argmax", np.argmax), ("argmin", np.argmin)):
    _op = defop(_name, 1, "reductions",
                f"i32 index of the {_name[3:]}imum along `dim`: the first on ties, a NaN counts as the extreme; 0 when `dim` is empty.",
                attrs={"dim": AttrSpec(NAME)})
    _op.type_rule(_arg_type_rule)
    _op.reference(_arg_reference(_pick))
    _op.splittable(_all_but_dim)


top_k = defop(
    "top_k", 1, "reductions",
    "The k largest values along `dim` and their i32 indices, `dim` resized to k; descending, "
    "ties by lower index first, NaN above everything.",
    attrs={"dim": AttrSpec(NAME), "k": AttrSpec(INT)},
)


@top_k.type_rule
def _top_k_type(view: OpView) -> list[TensorType]:
    operand = view.operand_types[0]
    dim, k = view.attr("dim"), view.attr("k")
    require_dtype(view, operand, "numeric")
    require_dims(view, operand, [dim])
    size = operand.size_of(dim)
    if not 0 <= k <= size:
        raise MeshirError(f"top_k: k = {k} is out of range for dimension '{dim}' of size {size} (need 0 <= k <= {size})")
    values = operand.resized(dim, k)
    return [values, values.with_dtype(i32)]


@top_k.reference
def _top_k(op: OpView, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    operand = op.operand_types[0]
    axis, k = operand.axis_of(op.attr("dim")), op.attr("k")
    size = x.shape[axis]
    # A stable ascending sort of the reversed array, read backwards, is a
    # descending sort that keeps lower indices first among ties (and NaN first,
    # since numpy sorts NaN last); no negation, so no integer overflow.
    ascending = np.argsort(np.flip(_wide(x, operand), axis), axis=axis, kind="stable")
    order = (size - 1 - np.flip(ascending, axis)).take(range(k), axis=axis)
    return np.take_along_axis(x, order, axis), order.astype(np.int32)


top_k.splittable(_all_but_dim)


def _softmax_parts(op: OpView, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The max-shifted input and its log-normalizer along `dim`."""
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    top = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    shifted = x - np.where(np.isfinite(top), top, 0).astype(x.dtype)
    return shifted, np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _softmax(op: OpView, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        shifted, log_norm = _softmax_parts(op, _wide(x, op.operand_types[0]))
        return as_dtype(np.exp(shifted - log_norm), op.result_types[0])


def _log_softmax(op: OpView, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        shifted, log_norm = _softmax_parts(op, _wide(x, op.operand_types[0]))
        return as_dtype(shifted - log_norm, op.result_types[0])


def _cumsum(op: OpView, x: np.ndarray) -> np.ndarray:
    operand = op.operand_types[0]
    with np.errstate(all="ignore"):
        return as_dtype(np.cumsum(_wide(x, operand), axis=operand.axis_of(op.attr("dim"))), operand)


# name: (dtype kinds accepted, reference, doc)
_ALONG_DIM: dict[str, tuple[str, Callable[..., np.ndarray], str]] = {
    "softmax": ("float", _softmax, "exp(x) / sum(exp(x)) along `dim`, computed stably."),
    "log_softmax": ("float", _log_softmax, "x - logsumexp(x) along `dim`, computed stably."),
    "cumsum": ("numeric", _cumsum, "Inclusive cumulative sum along `dim`."),
}

for _name, (_kinds, _reference, _doc) in _ALONG_DIM.items():
    _op = defop(_name, 1, "reductions", _doc, attrs={"dim": AttrSpec(NAME)})
    _op.type_rule(_along_dim_type_rule(_kinds))
    _op.reference(_reference)
    _op.splittable(_all_but_dim)


# ---------------------------------------------------------------------------- gradients


def _spread(e: Emitter, g: Value, x: Value) -> Value:
    """The cotangent of a reduction, repeated over the reduced dimensions, in x's order."""
    return broadcast_to(e, g, x.type)


def _mean_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    x = op.operands[0]
    count = math.prod(x.type.size_of(n) for n in op.attr("dims"))
    return [_spread(e, e.emit("mul", cotangents[0], scalar(e, 1.0 / max(count, 1), x)), x)]


def _extreme_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """reduce_max and reduce_min: the cotangent goes to the elements equal to the
    result, split evenly among ties (as JAX does)."""
    x, y, g = op.operands[0], op.result, cotangents[0]
    hits = e.emit("eq", x, y)
    count = e.emit("reduce_sum", e.emit("cast", hits, dtype=x.type.dtype), dims=op.attr("dims"))
    return [e.emit("select", hits, e.emit("div", g, count), scalar(e, 0.0, x))]


def _prod_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    dims = op.attr("dims")
    partial = product_partial(e, op.operands[0], op.result,
                              lambda v: e.emit("reduce_sum", v, dims=dims), lambda v: e.emit("reduce_prod", v, dims=dims))
    return [e.emit("mul", partial, cotangents[0])]


def _logsumexp_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    x = op.operands[0]
    return [e.emit("mul", e.emit("exp", e.emit("sub", x, op.result)), cotangents[0])]


REGISTRY["reduce_sum"].gradient(lambda e, op, cotangents: [_spread(e, cotangents[0], op.operands[0])])
REGISTRY["reduce_mean"].gradient(_mean_gradient)
REGISTRY["reduce_max"].gradient(_extreme_gradient)
REGISTRY["reduce_min"].gradient(_extreme_gradient)
REGISTRY["reduce_prod"].gradient(_prod_gradient)
REGISTRY["logsumexp"].gradient(_logsumexp_gradient)
for _name in ("reduce_any", "reduce_all", "argmax", "argmin"):
    REGISTRY[_name].gradient(NOT_DIFFERENTIABLE)


@top_k.gradient
def _top_k_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """Each value's cotangent goes back to its index: a one-hot of the indices over a
    fresh copy of `dim`, contracted with the cotangent over the k picks."""
    g = cotangents[0]
    if g is None:
        return [None]
    x, indices = op.operands[0], op.results[1]
    dim = op.attr("dim")
    source = fresh_dim(f"{dim}_source", x.type)
    hot = e.emit("one_hot", indices, dim=(source, x.type.size_of(dim)), dtype=x.type.dtype)
    picked = e.emit("einsum", g, hot, output=[source if n == dim else n for n in x.type.names])
    return [e.emit("rename", picked, from_=source, to=dim)]


@REGISTRY["softmax"].gradient
def _softmax_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """y * (g - sum(g * y)) along `dim`."""
    y, g = op.result, cotangents[0]
    dot = e.emit("reduce_sum", e.emit("mul", g, y), dims=[op.attr("dim")])
    return [e.emit("mul", y, e.emit("sub", g, dot))]


@REGISTRY["log_softmax"].gradient
def _log_softmax_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """g - softmax(x) * sum(g) along `dim`."""
    y, g = op.result, cotangents[0]
    total = e.emit("reduce_sum", g, dims=[op.attr("dim")])
    return [e.emit("sub", g, e.emit("mul", e.emit("exp", y), total))]


@REGISTRY["cumsum"].gradient
def _cumsum_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """The reversed cumulative sum of g: sum(g) - cumsum(g) + g."""
    g = cotangents[0]
    total = e.emit("reduce_sum", g, dims=[op.attr("dim")])
    return [e.emit("add", e.emit("sub", g, e.emit("cumsum", g, dim=op.attr("dim"))), total)]
