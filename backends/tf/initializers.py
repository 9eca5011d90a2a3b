"""Variable initializers as TensorFlow ops, computed on the device that holds each slice.

Each reproduces meshir/initializers.py: random ones draw from the TF port of
meshir.random at the slice's *global* indices at step 0 and compute in
float64, then cast like the reference (integers round to nearest and
saturate). A device computes only its own block, so a large variable never
exists whole on one device, and every mesh and layout starts from the same
values (bit for bit for uniform draws; to float32 rounding for normal ones,
whose log and cos are TF's).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from meshir.initializers import INITIALIZERS, STACK, TRUNCATED_STDDEV, TRUNCATION_ROUNDS, TRUNCATION_STDDEVS, fans, stack_members
from meshir.ir import Variable
from meshir.types import TensorType

from . import random
from .rules_common import const, tf, tf_dtype


def _args(variable: Variable) -> dict[str, Any]:
    """The initializer's arguments, checked, with defaults filled in."""
    init = INITIALIZERS[variable.initializer]
    given = init.check_args(variable.init_args, variable.type)
    return {**{k: s.default for k, s in init.args.items() if not s.required}, **given}


def truncated_standard_normal(seed: int, index: tf.Tensor) -> tf.Tensor:
    """meshir.initializers.truncated_standard_normal: redraw outside [-2, 2] from the
    next streams, a fixed number of rounds, then clip."""
    z = random.normal(seed, 0, 0, index)
    for stream in range(1, TRUNCATION_ROUNDS):
        z = tf.where(tf.abs(z) > const(TRUNCATION_STDDEVS, tf.float32), random.normal(seed, 0, stream, index), z)
    return tf.clip_by_value(z, const(-TRUNCATION_STDDEVS, tf.float32), const(TRUNCATION_STDDEVS, tf.float32))


def _glorot_scale(ttype: TensorType, args: dict[str, Any]) -> float:
    fan_in, fan_out = fans(ttype, args["fan_in"], args["fan_out"])
    return 2.0 / max(fan_in + fan_out, 1)


def _f64(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float64)


def _uniform64(seed: int, index: tf.Tensor) -> tf.Tensor:
    return _f64(random.uniform(seed, 0, 0, index))


def _plus_times(offset: float, scale: float, x: tf.Tensor) -> tf.Tensor:
    """offset + scale * x in float64, each step rounded once, as the reference."""
    return const(offset, tf.float64) + const(scale, tf.float64) * x


# initializer name -> its float64 value (before the cast to the variable's dtype),
# from the variable's global type, its arguments and the slice's global indices
_RANDOM: dict[str, Callable[[TensorType, dict[str, Any], tf.Tensor], tf.Tensor]] = {
    "normal": lambda t, a, i: _plus_times(a["mean"], a["stddev"], _f64(random.normal(a["seed"], 0, 0, i))),
    "uniform": lambda t, a, i: _plus_times(a["minval"], a["maxval"] - a["minval"], _uniform64(a["seed"], i)),
    "truncated_normal": lambda t, a, i: _plus_times(a["mean"], a["stddev"], _f64(truncated_standard_normal(a["seed"], i))),
    "glorot_uniform": lambda t, a, i: const(math.sqrt(3.0 * _glorot_scale(t, a)), tf.float64)
    * (const(2.0, tf.float64) * _uniform64(a["seed"], i) - const(1.0, tf.float64)),
    "glorot_normal": lambda t, a, i: const(math.sqrt(_glorot_scale(t, a)) / TRUNCATED_STDDEV, tf.float64)
    * _f64(truncated_standard_normal(a["seed"], i)),
}


def _cast(values: tf.Tensor, ttype: TensorType) -> tf.Tensor:
    dtype = ttype.dtype
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        values = tf.clip_by_value(tf.round(values), const(info.min, tf.float64), const(info.max, tf.float64))
    return tf.cast(values, tf_dtype(dtype))


def initial_slice(variable: Variable, local_shape: Sequence[int], offsets: Sequence[int] | None = None) -> tf.Tensor:
    """The block of `local_shape` at `offsets` (default: the whole variable) of the
    variable's global initial value, as TF ops."""
    ttype, stored = variable.type, tf_dtype(variable.slice_type.dtype)
    if variable.initializer == STACK:
        return _stack_slice(variable, local_shape, offsets)
    if variable.initializer in _RANDOM:
        index = random.linear_index(local_shape, ttype.shape, offsets)
        values = _cast(_RANDOM[variable.initializer](ttype, _args(variable), index), ttype)
        return values if values.dtype == stored else tf.cast(values, stored)
    # zeros, ones and constant fill one value: the reference computes it exactly.
    fill = INITIALIZERS[variable.initializer].materialize(ttype.with_dims(()), variable.init_args)
    return tf.fill(const(local_shape), const(fill.astype(variable.slice_type.dtype.numpy), stored))


def _stack_slice(variable: Variable, local_shape: Sequence[int], offsets: Sequence[int] | None) -> tf.Tensor:
    """A block of a stacked variable: the same block of each member the block's
    leading dimension covers, each drawn as its own declaration would be, stacked."""
    first = offsets[0] if offsets is not None else 0
    members = stack_members(variable.type, _args(variable))[first:first + local_shape[0]]
    inner = offsets[1:] if offsets is not None else None
    return tf.stack([initial_slice(replace(variable, type=member, initializer=name, init_args=args), local_shape[1:], inner)
                     for member, name, args in members])
