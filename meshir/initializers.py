"""Variable initializers: `var @w : f32[in=784, out=512] = normal(stddev=0.05, seed=1)`.

Every initializer computes the variable's *global* value. Random ones draw from
`meshir.random` over the variable's global shape at step 0, so every mesh,
layout and backend starts from the same values. Two variables of the same shape
with the same seed start equal: give each variable its own seed.

Values are computed in float64 (random draws in float32) and then cast to the
variable's dtype; integer dtypes round to nearest and saturate at their range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import random
from .attributes import FLOAT, INT, NAMES, AttrKind, AttrSpec, AttrTypeError, Name, check_attributes
from .diagnostics import MeshirError
from .types import TensorType

TRUNCATION_STDDEVS = 2.0
TRUNCATION_ROUNDS = 8  # an element survives 8 draws outside 2 stddevs with probability ~2e-11
# The stddev of a standard normal truncated to [-2, 2]; glorot_normal divides by it (as Keras and JAX do).
TRUNCATED_STDDEV = 0.87962566103423978


def _scalar(value: Any) -> int | float | bool:
    if not isinstance(value, (int, float, bool)):
        raise AttrTypeError("a number or true/false")
    return value


# Keeps integers exact (FLOAT would turn an i64 constant into a rounded float).
SCALAR = AttrKind("a number or true/false", _scalar)


@dataclass(frozen=True)
class Initializer:
    name: str
    args: dict[str, AttrSpec]
    fn: Callable[[TensorType, dict[str, Any]], np.ndarray]
    doc: str
    check_type: Callable[[TensorType, dict[str, Any]], None] | None = None

    def check_args(self, args: dict[str, Any], ttype: TensorType) -> dict[str, Any]:
        """The arguments normalized (defaults not filled in, so they print as written);
        MeshirError for unknown, missing, ill-kinded arguments or ones illegal for `ttype`."""
        normalized = check_attributes(self.args, args, f"initializer {self.name}", "argument")
        if self.check_type is not None:
            self.check_type(ttype, self._with_defaults(normalized))
        return normalized

    def materialize(self, ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
        """The variable's global initial value, with dtype `ttype.dtype.numpy`."""
        return _cast(self.fn(ttype, self._with_defaults(self.check_args(args, ttype))), ttype)

    def _with_defaults(self, args: dict[str, Any]) -> dict[str, Any]:
        return {**{k: s.default for k, s in self.args.items() if not s.required}, **args}


def _cast(values: np.ndarray, ttype: TensorType) -> np.ndarray:
    dtype = ttype.dtype
    if dtype.is_integer and np.issubdtype(values.dtype, np.floating):
        info = np.iinfo(dtype.numpy)
        values = np.clip(np.rint(values), info.min, info.max)
    return np.array(values, dtype=dtype.numpy)


def _check_constant(ttype: TensorType, args: dict[str, Any]) -> None:
    value, dtype = args["value"], ttype.dtype
    if dtype.is_bool:
        if value not in (0, 1):  # True/False compare equal to 1/0
            raise MeshirError(f"initializer constant: value {value} is not a boolean for a {ttype} variable (use true, false, 1 or 0)")
        return
    if dtype.is_float:
        with np.errstate(over="ignore"):
            stored = np.float64(value).astype(dtype.numpy)
        if math.isfinite(value) and not np.isfinite(stored):
            raise MeshirError(f"initializer constant: value {value} overflows {dtype} (variable type {ttype})")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MeshirError(f"initializer constant: value {value} cannot be stored in {dtype} (variable type {ttype})")
    info = np.iinfo(dtype.numpy)
    if not info.min <= round(value) <= info.max:
        raise MeshirError(f"initializer constant: value {value} is outside the range of {dtype} [{info.min}, {info.max}]")


def _random_checker(name: str, extra: Callable[[TensorType, dict[str, Any]], None] | None = None):
    def check(ttype: TensorType, args: dict[str, Any]) -> None:
        if not ttype.dtype.is_numeric:
            raise MeshirError(f"initializer {name}: draws numbers, but the variable has dtype {ttype.dtype} ({ttype})")
        random.check_drawable(ttype.num_elements, f"initializer {name}")
        if extra is not None:
            extra(ttype, args)

    return check


def _check_stddev(name: str):
    def check(ttype: TensorType, args: dict[str, Any]) -> None:
        if args["stddev"] < 0:
            raise MeshirError(f"initializer {name}: stddev must be at least 0, got {args['stddev']}")

    return check


def _check_range(ttype: TensorType, args: dict[str, Any]) -> None:
    if args["minval"] > args["maxval"]:
        raise MeshirError(f"initializer uniform: minval {args['minval']} is greater than maxval {args['maxval']}")


def _normal(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    z = random.normal(args["seed"], 0, 0, random.global_index(ttype.shape))
    return args["mean"] + args["stddev"] * z.astype(np.float64)


def _uniform(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    u = random.uniform(args["seed"], 0, 0, random.global_index(ttype.shape))
    return args["minval"] + (args["maxval"] - args["minval"]) * u.astype(np.float64)


def truncated_standard_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A standard normal restricted to [-2, 2]: an element outside takes the draw of
    the next normal stream, up to TRUNCATION_ROUNDS streams, then the last draw
    clipped. Deterministic and layout-invariant: no data-dependent redraw counts."""
    index = random.global_index(shape)
    z = random.normal(seed, 0, 0, index)
    for stream in range(1, TRUNCATION_ROUNDS):
        outside = np.abs(z) > TRUNCATION_STDDEVS
        z = np.where(outside, random.normal(seed, 0, stream, index), z)
    return np.clip(z, -TRUNCATION_STDDEVS, TRUNCATION_STDDEVS)


def _truncated_normal(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    z = truncated_standard_normal(args["seed"], ttype.shape)
    return args["mean"] + args["stddev"] * z.astype(np.float64)


def fans(ttype: TensorType, fan_in: tuple[str, ...] | None, fan_out: tuple[str, ...] | None) -> tuple[int, int]:
    """(fan_in, fan_out): the products of the named dimensions' sizes. An omitted side
    is every dimension the other side does not name; with neither named, fan_out is
    the last dimension. A value of rank <= 1 uses its size for both."""
    if fan_in is None and fan_out is None:
        if ttype.rank <= 1:
            return ttype.num_elements, ttype.num_elements
        fan_out = (ttype.names[-1],)
    if fan_in is None:
        fan_in = tuple(n for n in ttype.names if n not in fan_out)
    if fan_out is None:
        fan_out = tuple(n for n in ttype.names if n not in fan_in)
    return math.prod(ttype.size_of(n) for n in fan_in), math.prod(ttype.size_of(n) for n in fan_out)


def _check_fans(name: str):
    def check(ttype: TensorType, args: dict[str, Any]) -> None:
        fan_in, fan_out = args["fan_in"], args["fan_out"]
        for arg, names in (("fan_in", fan_in), ("fan_out", fan_out)):
            for dim in names or ():
                if not ttype.has(dim):
                    raise MeshirError(
                        f"initializer {name}: {arg} names dimension '{dim}', which the variable {ttype} does not have"
                    )
        both = set(fan_in or ()) & set(fan_out or ())
        if both:
            raise MeshirError(f"initializer {name}: dimension '{sorted(both)[0]}' is in both fan_in and fan_out")

    return check


def _glorot_scale(ttype: TensorType, args: dict[str, Any]) -> float:
    """2 / (fan_in + fan_out); a zero fan only occurs for a value with no elements."""
    fan_in, fan_out = fans(ttype, args["fan_in"], args["fan_out"])
    return 2.0 / max(fan_in + fan_out, 1)


def _glorot_uniform(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    limit = math.sqrt(3.0 * _glorot_scale(ttype, args))
    u = random.uniform(args["seed"], 0, 0, random.global_index(ttype.shape))
    return limit * (2.0 * u.astype(np.float64) - 1.0)


def _glorot_normal(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    stddev = math.sqrt(_glorot_scale(ttype, args)) / TRUNCATED_STDDEV
    return stddev * truncated_standard_normal(args["seed"], ttype.shape).astype(np.float64)


# `stack(parts=[[normal, seed, 1, stddev, 0.05], [zeros]])`: the variable made by
# stacking others along its leading dimension (passes/autostack.py). Each part is
# one member's initializer and its arguments, `[initializer, argument, value, ...]`
# (values as the member's own declaration writes them), so the stack starts
# bit for bit where its members would have.
STACK = "stack"
_PARTS_FORM = "a non-empty list of parts [initializer, argument, value, ...], as in [[normal, seed, 1], [zeros]]"


def _stack_part(value: Any) -> tuple:
    """One part checked: a known initializer (not a stack) with checked arguments, sorted by name."""
    if not (isinstance(value, tuple) and len(value) % 2 == 1 and isinstance(value[0], Name)):
        raise AttrTypeError(_PARTS_FORM)
    name, keys, values = value[0], value[1::2], value[2::2]
    if name == STACK or name not in INITIALIZERS:
        known = ", ".join(sorted(set(INITIALIZERS) - {STACK}))
        raise AttrTypeError(f"{_PARTS_FORM}; '{name}' is not an initializer a part can have ({known})")
    if not all(isinstance(k, Name) for k in keys) or len(set(keys)) != len(keys):
        raise AttrTypeError(f"{_PARTS_FORM}; part {name} needs distinct argument names before their values")
    args = check_attributes(INITIALIZERS[name].args, dict(zip(keys, values)), f"initializer {STACK}: part {name}", "argument")
    return (name, *(item for key in sorted(args) for item in (Name(key), args[key])))


def _stack_parts(value: Any) -> tuple[tuple, ...]:
    if not isinstance(value, tuple) or not value:
        raise AttrTypeError(_PARTS_FORM)
    return tuple(_stack_part(part) for part in value)


STACK_PARTS = AttrKind(_PARTS_FORM, _stack_parts)


def stack_members(ttype: TensorType, args: dict[str, Any]) -> list[tuple[TensorType, str, dict[str, Any]]]:
    """The members of a `stack` initializer: each one's type (`ttype` without its
    leading dimension), initializer name and arguments."""
    member = ttype.without(ttype.names[:1])
    return [(member, str(part[0]), {str(k): v for k, v in zip(part[1::2], part[2::2])}) for part in args["parts"]]


def _check_stack(ttype: TensorType, args: dict[str, Any]) -> None:
    parts = args["parts"]
    if not ttype.dims or ttype.dims[0].size != len(parts):
        leading = f"its leading dimension is {ttype.dims[0]}" if ttype.dims else "it is a scalar"
        raise MeshirError(f"initializer {STACK}: {len(parts)} parts for a variable {ttype}, but {leading}; "
                          "a stack needs one part per element of its leading dimension")
    for member, name, member_args in stack_members(ttype, args):
        INITIALIZERS[name].check_args(member_args, member)


def _stack(ttype: TensorType, args: dict[str, Any]) -> np.ndarray:
    return np.stack([INITIALIZERS[name].materialize(member, member_args) for member, name, member_args in stack_members(ttype, args)])


_SEED = AttrSpec(INT, 0)
_FANS = {"fan_in": AttrSpec(NAMES, None), "fan_out": AttrSpec(NAMES, None)}
_NORMAL_ARGS = {"mean": AttrSpec(FLOAT, 0.0), "stddev": AttrSpec(FLOAT, 1.0), "seed": _SEED}

INITIALIZERS: dict[str, Initializer] = {
    init.name: init
    for init in (
        Initializer("zeros", {}, lambda t, a: np.zeros(t.shape), "All zeros."),
        Initializer("ones", {}, lambda t, a: np.ones(t.shape), "All ones."),
        Initializer(
            "constant", {"value": AttrSpec(SCALAR)}, lambda t, a: np.full(t.shape, a["value"]),
            "Every element `value`; it must fit the variable's dtype.", _check_constant,
        ),
        Initializer(
            "normal", _NORMAL_ARGS, _normal,
            "mean + stddev * a standard normal draw.", _random_checker("normal", _check_stddev("normal")),
        ),
        Initializer(
            "uniform", {"minval": AttrSpec(FLOAT, 0.0), "maxval": AttrSpec(FLOAT, 1.0), "seed": _SEED}, _uniform,
            "Uniform in [minval, maxval).", _random_checker("uniform", _check_range),
        ),
        Initializer(
            "truncated_normal", _NORMAL_ARGS, _truncated_normal,
            "mean + stddev * a standard normal restricted to [-2, 2] (stddev is the untruncated one, as in TF).",
            _random_checker("truncated_normal", _check_stddev("truncated_normal")),
        ),
        Initializer(
            "glorot_uniform", {"seed": _SEED, **_FANS}, _glorot_uniform,
            "Uniform in [-limit, limit), limit = sqrt(6 / (fan_in + fan_out)); fans: see `fans`.",
            _random_checker("glorot_uniform", _check_fans("glorot_uniform")),
        ),
        Initializer(
            "glorot_normal", {"seed": _SEED, **_FANS}, _glorot_normal,
            "Truncated normal with stddev sqrt(2 / (fan_in + fan_out)) after truncation (as Keras and JAX).",
            _random_checker("glorot_normal", _check_fans("glorot_normal")),
        ),
        Initializer(
            STACK, {"parts": AttrSpec(STACK_PARTS)}, _stack,
            "The members' initial values (`parts`, one per element of the leading dimension) stacked along it.",
            _check_stack,
        ),
    )
}
