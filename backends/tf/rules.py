"""TensorFlow rules for every op: elementwise, binary, contraction and reduction
ops here; shape/indexing/state/constants in rules_shape, nn ops in rules_nn,
collectives (which see every device at once) in collectives.py. `install()`
registers each table's rules with `opdef.lower("tf", fn)`.

Each rule reproduces its op's numpy reference, edge semantics included: the
same compute dtype (16-bit floats in float32), the same stable formulas, and
the pinned edge cases (empty reductions, integer division by zero, NaN
first in argmax/top_k). Where TensorFlow's CPU kernels lack a dtype the
reference accepts (no unsigned Neg, Abs or Sign; Einsum only for i32/i64 and
floats), the rule computes it another, exact way.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from meshir.ops.contraction import einsum_spec
from meshir.registry import OpView, all_ops

from .rules_common import Rule, align, as_type, axis_of, const, move_axis, tf, tf_dtype, widen

TARGET = "tf"

# ---------------------------------------------------------------------------- elementwise


def _sigmoid(v: tf.Tensor) -> tf.Tensor:
    # The reference's two-sided form: no overflow of exp for large |v|.
    e = tf.exp(-tf.abs(v))
    one = const(1, v.dtype)
    return tf.where(v >= const(0, v.dtype), one / (one + e), e / (one + e))


def _gelu_exact(v: tf.Tensor) -> tf.Tensor:
    half, one = const(0.5, v.dtype), const(1, v.dtype)
    return half * v * (one + tf.math.erf(v / const(np.sqrt(2), v.dtype)))


def _gelu_tanh(v: tf.Tensor) -> tf.Tensor:
    half, one = const(0.5, v.dtype), const(1, v.dtype)
    inner = const(np.sqrt(2 / np.pi), v.dtype) * (v + const(0.044715, v.dtype) * v * v * v)
    return half * v * (one + tf.tanh(inner))


def _softplus(v: tf.Tensor) -> tf.Tensor:
    """log(1 + e**v) as numpy's logaddexp(0, v): the larger term plus log1p of the other."""
    return tf.maximum(v, const(0, v.dtype)) + tf.math.log1p(tf.exp(-tf.abs(v)))


def _unsigned(v: tf.Tensor) -> bool:
    return v.dtype.is_unsigned


def _neg(v: tf.Tensor) -> tf.Tensor:
    # TF has no unsigned Neg; 0 - v wraps exactly as numpy's negative does.
    return const(0, v.dtype) - v if _unsigned(v) else tf.negative(v)


def _abs(v: tf.Tensor) -> tf.Tensor:
    return v if _unsigned(v) else tf.abs(v)


def _sign(v: tf.Tensor) -> tf.Tensor:
    if _unsigned(v):  # TF has no unsigned Sign
        return tf.cast(v > const(0, v.dtype), v.dtype)
    return tf.sign(v)


# name -> function of the widened operand (meshir/ops/elementwise.py's _UNARY)
_UNARY: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "neg": _neg,
    "abs": _abs,
    "exp": tf.exp,
    "log": tf.math.log,
    "log1p": tf.math.log1p,
    "sqrt": tf.sqrt,
    # 1 / sqrt, not TF's Rsqrt kernel, which rounds differently from the reference.
    "rsqrt": lambda v: const(1, v.dtype) / tf.sqrt(v),
    "square": tf.square,
    "sin": tf.sin,
    "cos": tf.cos,
    "tanh": tf.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda v: tf.maximum(v, const(0, v.dtype)),
    "silu": lambda v: v * _sigmoid(v),
    "softplus": _softplus,
    "erf": tf.math.erf,
    "sign": _sign,
    "floor": tf.floor,
    "ceil": tf.math.ceil,
    "round": tf.round,  # half to even, as numpy
    "reciprocal": lambda v: const(1, v.dtype) / v,
    "logical_not": tf.logical_not,
}


def _unary(fn: Callable[[tf.Tensor], tf.Tensor]) -> Rule:
    def rule(op: OpView, x: tf.Tensor) -> tf.Tensor:
        return as_type(fn(widen(x, op.operand_types[0])), op.result_types[0])

    return rule


def _gelu(op: OpView, x: tf.Tensor) -> tf.Tensor:
    return _unary(_gelu_tanh if op.attr("approximate") else _gelu_exact)(op, x)


def _cast(op: OpView, x: tf.Tensor) -> tf.Tensor:
    target = op.attr("dtype")
    if target.is_bool:
        return tf.not_equal(x, const(0, x.dtype))
    # TF's float -> integer Cast truncates toward zero, as the reference's trunc.
    return tf.cast(x, tf_dtype(target))


# ---------------------------------------------------------------------------- binary


def _div(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """IEEE for floats; integers truncate toward zero and x / 0 = 0."""
    if x.dtype.is_floating:
        return tf.math.divide(x, y)
    zero = tf.equal(y, const(0, y.dtype))
    safe = tf.where(zero, const(1, y.dtype), y)
    return tf.where(zero, const(0, x.dtype), tf.truncatediv(x, safe))


_BINARY: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "add": tf.add,
    "sub": tf.subtract,
    "mul": tf.multiply,
    "div": _div,
    "pow": tf.pow,
    "maximum": tf.maximum,  # both propagate NaN, as numpy
    "minimum": tf.minimum,
    "eq": tf.equal,
    "ne": tf.not_equal,
    "lt": tf.less,
    "le": tf.less_equal,
    "gt": tf.greater,
    "ge": tf.greater_equal,
    "logical_and": tf.logical_and,
    "logical_or": tf.logical_or,
}


def _broadcast(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Rule:
    def rule(op: OpView, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        tx, ty = op.operand_types
        names = op.result_types[0].names
        a, b = widen(align(x, tx, names), tx), widen(align(y, ty, names), ty)
        return as_type(fn(a, b), op.result_types[0])

    return rule


def _select(op: OpView, cond: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    names = op.result_types[0].names
    parts = [align(a, t, names) for a, t in zip((cond, x, y), op.operand_types)]
    return as_type(tf.where(*parts), op.result_types[0])


# ---------------------------------------------------------------------------- contraction


def _einsum(op: OpView, *xs: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    wide = widen(xs[0], result).dtype
    if wide.is_integer and wide not in (tf.int32, tf.int64):
        # TF's Einsum has no 8-bit or unsigned kernels; int64 products wrap to the
        # same low bits the reference's narrow arithmetic keeps.
        wide = tf.int64
    out = tf.einsum(einsum_spec(op.operand_types, result), *(tf.cast(x, wide) if x.dtype != wide else x for x in xs))
    return as_type(out, result)


# ---------------------------------------------------------------------------- reductions


def _mean(x: tf.Tensor, axes: list[int]) -> tf.Tensor:
    count = int(np.prod([x.shape[a] for a in axes]))
    return tf.reduce_sum(x, axis=const(axes)) / const(count, x.dtype)


def _finite_shift(top: tf.Tensor) -> tf.Tensor:
    """The reference's shift by the maximum, or by 0 where the maximum is infinite
    (all -inf, or an empty dimension), so that x - shift is never inf - inf."""
    return tf.where(tf.math.is_finite(top), top, const(0, top.dtype))


def _logsumexp(x: tf.Tensor, axes: list[int]) -> tf.Tensor:
    shift = _finite_shift(tf.reduce_max(x, axis=const(axes), keepdims=True))
    total = tf.reduce_sum(tf.exp(x - shift), axis=const(axes), keepdims=True)
    return tf.squeeze(tf.math.log(total) + shift, axis=axes)


# TF's Max, Min, Any and All over no elements give the identity (lowest, highest,
# false, true), as the reference's `initial`; Max and Min propagate NaN.
_REDUCERS: dict[str, Callable[[tf.Tensor, list[int]], tf.Tensor]] = {
    "reduce_sum": lambda x, axes: tf.reduce_sum(x, axis=const(axes)),
    "reduce_mean": _mean,
    "reduce_max": lambda x, axes: tf.reduce_max(x, axis=const(axes)),
    "reduce_min": lambda x, axes: tf.reduce_min(x, axis=const(axes)),
    "reduce_prod": lambda x, axes: tf.reduce_prod(x, axis=const(axes)),
    "reduce_any": lambda x, axes: tf.reduce_any(x, axis=const(axes)),
    "reduce_all": lambda x, axes: tf.reduce_all(x, axis=const(axes)),
    "logsumexp": _logsumexp,
}


def _reduction(reducer: Callable[[tf.Tensor, list[int]], tf.Tensor]) -> Rule:
    def rule(op: OpView, x: tf.Tensor) -> tf.Tensor:
        operand = op.operand_types[0]
        axes = [operand.axis_of(n) for n in op.attr("dims")]
        return as_type(reducer(widen(x, operand), axes), op.result_types[0])

    return rule


def _arg(pick: Callable[..., tf.Tensor]) -> Rule:
    """argmax/argmin: the first extreme along `dim`, and a NaN counts as the extreme
    (numpy's rule; TF's ArgMax skips NaN); 0 along an empty dimension."""

    def rule(op: OpView, x: tf.Tensor) -> tf.Tensor:
        operand, result = op.operand_types[0], op.result_types[0]
        if operand.size_of(op.attr("dim")) == 0:
            return tf.fill(const(result.shape), const(0, tf.int32))
        axis = axis_of(op)
        values = widen(x, operand)
        index = pick(values, axis=const(axis), output_type=tf.int32)
        if not values.dtype.is_floating:
            return index
        nan = tf.math.is_nan(values)
        first_nan = tf.argmax(tf.cast(nan, tf.int32), axis=const(axis), output_type=tf.int32)
        return tf.where(tf.reduce_any(nan, axis=const(axis)), first_nan, index)

    return rule


def order_key(x: tf.Tensor) -> tf.Tensor:
    """int64 keys in x's order, with NaN above everything and -0.0 tying 0.0, so an
    integer top_k (ties: lower index first) sorts floats as the reference does."""
    if not x.dtype.is_floating:
        return tf.cast(x, tf.int64)
    bits = tf.cast(tf.bitcast(x, tf.int32), tf.int64) if x.dtype == tf.float32 else tf.bitcast(x, tf.int64)
    floor = const(-(2**31) if x.dtype == tf.float32 else -(2**63), tf.int64)
    # Sign-magnitude to two's complement order: negatives count down from `floor`,
    # which maps -0.0 (the bit pattern `floor`) to 0, the key of 0.0.
    key = tf.where(bits >= const(0, tf.int64), bits, floor - bits)
    return tf.where(tf.math.is_nan(x), const(np.iinfo(np.int64).max, tf.int64), key)


def _top_k(op: OpView, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    operand = op.operand_types[0]
    axis, k = axis_of(op), op.attr("k")
    last = move_axis(widen(x, operand), axis, -1)
    _, indices = tf.math.top_k(order_key(last), k=const(k), sorted=True)
    batch = last.shape.rank - 1
    values = tf.gather(move_axis(x, axis, -1), indices, axis=const(batch), batch_dims=batch)
    return move_axis(values, -1, axis), move_axis(indices, -1, axis)


def _softmax_parts(op: OpView, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The max-shifted input and its log-normalizer along `dim`, as the reference."""
    axis = axis_of(op)
    shifted = x - _finite_shift(tf.reduce_max(x, axis=const(axis), keepdims=True))
    return shifted, tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=const(axis), keepdims=True))


def _softmax(op: OpView, x: tf.Tensor) -> tf.Tensor:
    shifted, log_norm = _softmax_parts(op, widen(x, op.operand_types[0]))
    return as_type(tf.exp(shifted - log_norm), op.result_types[0])


def _log_softmax(op: OpView, x: tf.Tensor) -> tf.Tensor:
    shifted, log_norm = _softmax_parts(op, widen(x, op.operand_types[0]))
    return as_type(shifted - log_norm, op.result_types[0])


def _cumsum(op: OpView, x: tf.Tensor) -> tf.Tensor:
    return as_type(tf.cumsum(widen(x, op.operand_types[0]), axis=const(axis_of(op))), op.result_types[0])


RULES: dict[str, Rule] = {
    **{name: _unary(fn) for name, fn in _UNARY.items()},
    "gelu": _gelu,
    "cast": _cast,
    **{name: _broadcast(fn) for name, fn in _BINARY.items()},
    "select": _select,
    "einsum": _einsum,
    "matmul": _einsum,
    **{name: _reduction(fn) for name, fn in _REDUCERS.items()},
    "argmax": _arg(tf.argmax),
    "argmin": _arg(tf.argmin),
    "top_k": _top_k,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "cumsum": _cumsum,
}


@functools.cache
def install() -> None:
    """Register every table's rule against its op; a rule already registered (a
    test's stand-in) is left in place."""
    from . import collectives, rules_nn, rules_shape

    tables: dict[str, Any] = {**RULES, **rules_shape.RULES, **rules_nn.RULES, **collectives.RULES}
    for opdef in all_ops():
        if opdef.name in tables and TARGET not in opdef.lowerings:
            opdef.lower(TARGET, tables[opdef.name])


def missing_rules() -> list[str]:
    """Ops of the registry without a tf rule (empty once `install()` ran)."""
    return [opdef.name for opdef in all_ops() if TARGET not in opdef.lowerings]
