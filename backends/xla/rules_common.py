"""Helpers the XLA rules share: named dimensions to array axes, and the compute
dtype policy of the numpy references (16-bit floats compute in float32).

A rule is `rule(op: OpView, *operands: jax.Array) -> jax.Array | tuple`: the
view gives operand and result types, attributes, the module and function, and
`op.state`, the variables' current (local) values while a function is traced.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from meshir.registry import OpView
from meshir.types import TensorType

Rule = Callable[..., Any]


def compute_dtype(ttype: TensorType) -> np.dtype:
    """float32 for 16-bit floats, as every reference widens them; else the dtype itself."""
    if ttype.dtype.is_float and ttype.dtype.itemsize < 4:
        return np.dtype(np.float32)
    return ttype.dtype.numpy


def widen(x: jax.Array, ttype: TensorType) -> jax.Array:
    return x.astype(compute_dtype(ttype))


def as_type(x: jax.Array, ttype: TensorType) -> jax.Array:
    """`x` in `ttype`'s dtype, broadcast to its shape."""
    return jnp.broadcast_to(jnp.asarray(x).astype(ttype.dtype.numpy), ttype.shape)


def align(x: jax.Array, ttype: TensorType, target: Sequence[str]) -> jax.Array:
    """`x` (dimensions of `ttype`) with axes in `target` order and size-1 axes for
    the dimensions it lacks: broadcasting by name, as meshir.ops.common.align."""
    present = [n for n in target if ttype.has(n)]
    moved = jnp.transpose(x, [ttype.axis_of(n) for n in present]) if present else jnp.reshape(x, ())
    shape = [moved.shape[present.index(n)] if n in present else 1 for n in target]
    return jnp.reshape(moved, shape)


def axis_of(op: OpView, attr: str = "dim", operand: int = 0) -> int:
    """The array axis of the dimension named by attribute `attr` in operand `operand`."""
    return op.operand_types[operand].axis_of(op.attr(attr))


def lowest(dtype: np.dtype) -> Any:
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def highest(dtype: np.dtype) -> Any:
    return np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).max


def scalar(value: Any, dtype: np.dtype) -> np.ndarray:
    """A literal converted by numpy at trace time, so it rounds exactly as the reference's."""
    with np.errstate(all="ignore"):
        return np.asarray(value).astype(dtype)
