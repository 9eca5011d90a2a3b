"""XLA (JAX) rules for every op: elementwise, binary, contraction and reduction
ops here; shape/indexing/state/constants in rules_shape, nn ops in rules_nn,
collectives in rules_collectives. `install()` registers each table's rules with
`opdef.lower("xla", fn)`.

Each rule reproduces its op's numpy reference, edge semantics included: the
same compute dtype (16-bit floats in float32), the same stable formulas, and
the pinned edge cases (empty reductions, integer division by zero, ...).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np

from meshir.ops.contraction import einsum_spec
from meshir.registry import OpView, all_ops

from .rules_common import Rule, align, as_type, axis_of, compute_dtype, highest, lowest, scalar, widen

TARGET = "xla"

# ---------------------------------------------------------------------------- elementwise


def _sigmoid(v: jax.Array) -> jax.Array:
    # The reference's two-sided form: no overflow of exp for large |v|.
    e = jnp.exp(-jnp.abs(v))
    return jnp.where(v >= 0, 1 / (1 + e), e / (1 + e))


def _gelu_exact(v: jax.Array) -> jax.Array:
    return 0.5 * v * (1 + jax.scipy.special.erf(v / scalar(np.sqrt(2), v.dtype)))


def _gelu_tanh(v: jax.Array) -> jax.Array:
    return 0.5 * v * (1 + jnp.tanh(np.sqrt(2 / np.pi).astype(v.dtype) * (v + 0.044715 * v**3)))


# name -> function of the widened operand (meshir/ops/elementwise.py's _UNARY)
_UNARY: dict[str, Callable[[jax.Array], jax.Array]] = {
    "neg": jnp.negative,
    "abs": jnp.abs,
    "exp": jnp.exp,
    "log": jnp.log,
    "log1p": jnp.log1p,
    "sqrt": jnp.sqrt,
    "rsqrt": lambda v: 1 / jnp.sqrt(v),
    "square": jnp.square,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tanh": jnp.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda v: jnp.maximum(v, jnp.zeros((), v.dtype)),
    "silu": lambda v: v * _sigmoid(v),
    "softplus": lambda v: jnp.logaddexp(jnp.zeros((), v.dtype), v),
    "erf": jax.scipy.special.erf,
    "sign": jnp.sign,
    "floor": jnp.floor,
    "ceil": jnp.ceil,
    "round": jnp.round,
    "reciprocal": lambda v: 1 / v,
    "logical_not": jnp.logical_not,
}


def _unary(fn: Callable[[jax.Array], jax.Array]) -> Rule:
    def rule(op: OpView, x: jax.Array) -> jax.Array:
        return as_type(fn(widen(x, op.operand_types[0])), op.result_types[0])

    return rule


def _gelu(op: OpView, x: jax.Array) -> jax.Array:
    return _unary(_gelu_tanh if op.attr("approximate") else _gelu_exact)(op, x)


def _cast(op: OpView, x: jax.Array) -> jax.Array:
    target, source = op.attr("dtype"), op.operand_types[0].dtype
    if target.is_bool:
        return x != 0
    if target.is_integer and source.is_float:
        # XLA's float -> int conversion rounds toward zero, as the reference's trunc.
        return jnp.trunc(x).astype(target.numpy)
    return x.astype(target.numpy)


# ---------------------------------------------------------------------------- binary


def _int_div(x: jax.Array, y: jax.Array) -> jax.Array:
    """Truncating integer division with x / 0 = 0 (XLA's own x / 0 is -1)."""
    zero = y == 0
    return jnp.where(zero, jnp.zeros((), x.dtype), jax.lax.div(x, jnp.where(zero, jnp.ones((), y.dtype), y)))


def _div(x: jax.Array, y: jax.Array) -> jax.Array:
    return _int_div(x, y) if jnp.issubdtype(x.dtype, jnp.integer) else x / y


_BINARY: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": _div,
    "pow": jnp.power,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "eq": jnp.equal,
    "ne": jnp.not_equal,
    "lt": jnp.less,
    "le": jnp.less_equal,
    "gt": jnp.greater,
    "ge": jnp.greater_equal,
    "logical_and": jnp.logical_and,
    "logical_or": jnp.logical_or,
}


def _broadcast(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Rule:
    def rule(op: OpView, x: jax.Array, y: jax.Array) -> jax.Array:
        tx, ty = op.operand_types
        names = op.result_types[0].names
        a, b = widen(align(x, tx, names), tx), widen(align(y, ty, names), ty)
        return as_type(fn(a, b), op.result_types[0])

    return rule


def _select(op: OpView, cond: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    names = op.result_types[0].names
    parts = [align(a, t, names) for a, t in zip((cond, x, y), op.operand_types)]
    return as_type(jnp.where(*parts), op.result_types[0])


# ---------------------------------------------------------------------------- contraction


def _einsum(op: OpView, *xs: jax.Array) -> jax.Array:
    result = op.result_types[0]
    spec = einsum_spec(op.operand_types, result)
    if result.dtype.is_float and result.dtype.itemsize < 4:
        # 16-bit operands go to the dot as they are, accumulating in f32 as the
        # reference does (their products are exact in f32): a bf16 dot is what
        # makes mixed precision pay on GPUs and TPUs.
        out = jnp.einsum(spec, *xs, precision=jax.lax.Precision.HIGHEST, preferred_element_type=compute_dtype(result))
    else:
        out = jnp.einsum(spec, *[widen(x, result) for x in xs], precision=jax.lax.Precision.HIGHEST)
    return as_type(out, result)


# ---------------------------------------------------------------------------- reductions


def _mean(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    count = int(np.prod([x.shape[a] for a in axes]))
    return jnp.sum(x, axis=axes) / scalar(count, x.dtype)


def _logsumexp(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    top = jnp.max(x, axis=axes, keepdims=True, initial=-np.inf)
    # As the reference: an infinite maximum would make x - top NaN, so shift by 0.
    shift = jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))
    total = jnp.sum(jnp.exp(x - shift), axis=axes, keepdims=True)
    return jnp.squeeze(jnp.log(total) + shift, axis=axes)


_REDUCERS: dict[str, Callable[[jax.Array, tuple[int, ...]], jax.Array]] = {
    "reduce_sum": lambda x, axes: jnp.sum(x, axis=axes),
    "reduce_mean": _mean,
    "reduce_max": lambda x, axes: jnp.max(x, axis=axes, initial=lowest(x.dtype)),
    "reduce_min": lambda x, axes: jnp.min(x, axis=axes, initial=highest(x.dtype)),
    "reduce_prod": lambda x, axes: jnp.prod(x, axis=axes),
    "reduce_any": lambda x, axes: jnp.any(x, axis=axes),
    "reduce_all": lambda x, axes: jnp.all(x, axis=axes),
    "logsumexp": _logsumexp,
}


def _reduction(reducer: Callable[[jax.Array, tuple[int, ...]], jax.Array]) -> Rule:
    def rule(op: OpView, x: jax.Array) -> jax.Array:
        operand = op.operand_types[0]
        axes = tuple(operand.axis_of(n) for n in op.attr("dims"))
        return as_type(reducer(widen(x, operand), axes), op.result_types[0])

    return rule


def _arg(pick: Callable[..., jax.Array]) -> Rule:
    def rule(op: OpView, x: jax.Array) -> jax.Array:
        operand, result = op.operand_types[0], op.result_types[0]
        if operand.size_of(op.attr("dim")) == 0:
            return jnp.zeros(result.shape, result.dtype.numpy)
        # jnp.argmax/argmin take the first extreme and count NaN as extreme, as numpy.
        return as_type(pick(widen(x, operand), axis=axis_of(op)), result)

    return rule


def _descending_keys(x: jax.Array) -> list[jax.Array]:
    """Sort keys whose ascending order is x's descending order, NaN first; no
    negation of integers (it would overflow at the minimum)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        nan = jnp.isnan(x)
        # -0.0 and 0.0 tie, as in numpy's comparison sort; NaN sorts by the first key.
        value = jnp.where(nan | (x == 0), jnp.zeros((), x.dtype), -x)
        return [jnp.where(nan, 0, 1).astype(jnp.int32), value]
    return [jnp.bitwise_not(x)]


def _top_k(op: OpView, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    operand = op.operand_types[0]
    axis, k = axis_of(op), op.attr("k")
    last = jnp.moveaxis(widen(x, operand), axis, -1)
    position = jax.lax.broadcasted_iota(jnp.int32, last.shape, last.ndim - 1)
    keys = _descending_keys(last)
    # A stable sort with the position as the last key: ties keep the lower index first.
    order = jax.lax.sort((*keys, position), dimension=last.ndim - 1, is_stable=True, num_keys=len(keys) + 1)[-1]
    indices = jnp.moveaxis(order[..., :k], -1, axis)
    return jnp.take_along_axis(x, indices, axis=axis), indices


def _softmax_parts(op: OpView, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The max-shifted input and its log-normalizer along `dim`, as the reference."""
    axis = axis_of(op)
    top = jnp.max(x, axis=axis, keepdims=True, initial=-np.inf)
    shifted = x - jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))
    return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def _softmax(op: OpView, x: jax.Array) -> jax.Array:
    shifted, log_norm = _softmax_parts(op, widen(x, op.operand_types[0]))
    return as_type(jnp.exp(shifted - log_norm), op.result_types[0])


def _log_softmax(op: OpView, x: jax.Array) -> jax.Array:
    shifted, log_norm = _softmax_parts(op, widen(x, op.operand_types[0]))
    return as_type(shifted - log_norm, op.result_types[0])


def _cumsum(op: OpView, x: jax.Array) -> jax.Array:
    return as_type(jnp.cumsum(widen(x, op.operand_types[0]), axis=axis_of(op)), op.result_types[0])


RULES: dict[str, Rule] = {
    **{name: _unary(fn) for name, fn in _UNARY.items()},
    "gelu": _gelu,
    "cast": _cast,
    **{name: _broadcast(fn) for name, fn in _BINARY.items()},
    "select": _select,
    "einsum": _einsum,
    "matmul": _einsum,
    **{name: _reduction(fn) for name, fn in _REDUCERS.items()},
    "argmax": _arg(jnp.argmax),
    "argmin": _arg(jnp.argmin),
    "top_k": _top_k,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "cumsum": _cumsum,
}


@functools.cache
def install() -> None:
    """Register every table's rule against its op, once per process."""
    from . import rules_collectives, rules_nn, rules_shape

    tables = {**RULES, **rules_shape.RULES, **rules_nn.RULES, **rules_collectives.RULES}
    for opdef in all_ops():
        if opdef.name in tables:
            opdef.lower(TARGET, tables[opdef.name])


def missing_rules() -> list[str]:
    """Ops of the registry without an xla rule (empty once `install()` ran)."""
    return [opdef.name for opdef in all_ops() if TARGET not in opdef.lowerings]
