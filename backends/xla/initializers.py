"""Variable initializers computed by XLA, on the devices that will hold them.

Each reproduces meshir/initializers.py: random ones draw from the JAX port of
meshir.random over the variable's global shape at step 0 and compute in
float64, then cast like the reference (integers round to nearest and
saturate). With `shardings`, XLA computes each device's block where it lives,
so a large variable never exists whole on one device.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from meshir.initializers import INITIALIZERS, STACK, TRUNCATED_STDDEV, TRUNCATION_ROUNDS, TRUNCATION_STDDEVS, fans, stack_members
from meshir.ir import Module, Variable
from meshir.types import TensorType

from . import random
from .compile import x64


def _args(variable: Variable) -> dict[str, Any]:
    """The initializer's arguments, checked, with defaults filled in."""
    init = INITIALIZERS[variable.initializer]
    given = init.check_args(variable.init_args, variable.type)
    return {**{k: s.default for k, s in init.args.items() if not s.required}, **given}


def truncated_standard_normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """meshir.initializers.truncated_standard_normal: redraw outside [-2, 2] from the
    next streams, a fixed number of rounds, then clip."""
    index = random.linear_index(shape)
    z = random.normal(seed, 0, 0, index)
    for stream in range(1, TRUNCATION_ROUNDS):
        z = jnp.where(jnp.abs(z) > TRUNCATION_STDDEVS, random.normal(seed, 0, stream, index), z)
    return jnp.clip(z, -TRUNCATION_STDDEVS, TRUNCATION_STDDEVS)


def _glorot_scale(ttype: TensorType, args: dict[str, Any]) -> float:
    fan_in, fan_out = fans(ttype, args["fan_in"], args["fan_out"])
    return 2.0 / max(fan_in + fan_out, 1)


def _uniform64(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return random.uniform(seed, 0, 0, random.linear_index(shape)).astype(jnp.float64)


# initializer name -> its float64 value (before the cast to the variable's dtype)
_RANDOM: dict[str, Callable[[TensorType, dict[str, Any]], jax.Array]] = {
    "normal": lambda t, a: random.affine(a["mean"], a["stddev"], random.normal(a["seed"], 0, 0, random.linear_index(t.shape)).astype(jnp.float64)),
    "uniform": lambda t, a: random.affine(a["minval"], a["maxval"] - a["minval"], _uniform64(a["seed"], t.shape)),
    "truncated_normal": lambda t, a: random.affine(a["mean"], a["stddev"], truncated_standard_normal(a["seed"], t.shape).astype(jnp.float64)),
    "glorot_uniform": lambda t, a: math.sqrt(3.0 * _glorot_scale(t, a)) * (2.0 * _uniform64(a["seed"], t.shape) - 1.0),
    "glorot_normal": lambda t, a: (math.sqrt(_glorot_scale(t, a)) / TRUNCATED_STDDEV)
    * truncated_standard_normal(a["seed"], t.shape).astype(jnp.float64),
}


def _cast(values: jax.Array, ttype: TensorType) -> jax.Array:
    dtype = ttype.dtype
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        values = jnp.clip(jnp.rint(values), info.min, info.max)
    return values.astype(dtype.numpy)


def initial_value(variable: Variable) -> jax.Array:
    """The variable's global initial value, traced (call inside jit and `x64()`)."""
    ttype, stored = variable.type, variable.slice_type.dtype.numpy
    if variable.initializer == STACK:  # each member drawn as its own declaration would be
        return jnp.stack([initial_value(replace(variable, type=member, initializer=name, init_args=args))
                          for member, name, args in stack_members(ttype, _args(variable))])
    if variable.initializer in _RANDOM:
        return _cast(_RANDOM[variable.initializer](ttype, _args(variable)), ttype).astype(stored)
    # zeros, ones and constant fill one value: the reference computes it exactly.
    fill = INITIALIZERS[variable.initializer].materialize(ttype.with_dims(()), variable.init_args)
    return jnp.full(ttype.shape, fill.astype(stored))


def initial_values(
    module: Module, names: Sequence[str] | None = None, shardings: Mapping[str, jax.sharding.Sharding] | None = None
) -> dict[str, jax.Array]:
    """Initial values of the named variables (default: all), in one XLA program;
    `shardings` places each where it will live."""
    names = list(module.variables) if names is None else list(names)
    variables = [module.variables[n] for n in names]
    out_shardings = None if shardings is None else {n: shardings.get(n) for n in names}

    def build() -> dict[str, jax.Array]:
        return {v.name: initial_value(v) for v in variables}

    with x64():
        return jax.jit(build, out_shardings=out_shardings)()
