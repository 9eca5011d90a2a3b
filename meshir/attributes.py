"""Attribute values and the kinds an op declares for its attributes.

Python forms: int, float, bool, str (quoted in text), `DType`, `Name` (a bare
identifier such as a dimension or axis name), `Dim` (`classes=10`), tuple (a
list), `LayoutRules` (`{batch: rows}`) and `SymbolRef` (`@m`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .dtypes import DType
from .mesh import LayoutRules
from .types import Dim


class Name(str):
    """A bare identifier in attribute position: a dimension, axis or enum name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Name({str.__repr__(self)})"


@dataclass(frozen=True)
class SymbolRef:
    """A reference to a module-level symbol: `@w1`, `@m`."""

    name: str

    def __str__(self) -> str:
        return f"@{self.name}"


class AttrTypeError(Exception):
    """An attribute value of the wrong kind; the verifier adds op and location."""


@dataclass(frozen=True)
class AttrKind:
    """What an attribute holds; `normalize` checks a value and returns its canonical form."""

    description: str
    normalize: Callable[[Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require(ok: bool, kind: str) -> None:
    if not ok:
        raise AttrTypeError(kind)


def _int(v: Any) -> int:
    _require(_is_int(v), "an integer")
    return v


def _float(v: Any) -> float:
    _require(_is_int(v) or isinstance(v, float), "a number")
    return float(v)


def _bool(v: Any) -> bool:
    _require(isinstance(v, bool), "true or false")
    return v


def _string(v: Any) -> str:
    _require(isinstance(v, str) and not isinstance(v, Name), "a quoted string")
    return v


def _dtype(v: Any) -> DType:
    _require(isinstance(v, DType), "a dtype (f32, bf16, f16, f64, i8, i32, i64, u8, u32, bool)")
    return v


def _name(v: Any) -> Name:
    _require(isinstance(v, Name), "a name")
    return v


def _names(v: Any) -> tuple[Name, ...]:
    if isinstance(v, Name):
        return (v,)
    _require(isinstance(v, tuple) and all(isinstance(x, Name) for x in v), "a list of names")
    if len(set(v)) != len(v):
        raise AttrTypeError("a list of distinct names")
    return v


def _new_dim(v: Any) -> Dim:
    _require(isinstance(v, Dim), "a new dimension with a size, as in classes=10")
    return v


def _shape(v: Any) -> tuple[Dim, ...]:
    _require(isinstance(v, tuple) and all(isinstance(x, Dim) for x in v), "a list of dimensions with sizes, as in [batch=8, hidden=16]")
    return v


def _ints(v: Any) -> tuple[int, ...]:
    if _is_int(v):
        return (v,)
    _require(isinstance(v, tuple) and all(_is_int(x) for x in v), "a list of integers")
    return v


def _layout(v: Any) -> LayoutRules:
    _require(isinstance(v, LayoutRules), "a layout map, as in {batch: rows}")
    return v


def _symbol(v: Any) -> SymbolRef:
    _require(isinstance(v, SymbolRef), "a symbol, as in @name")
    return v


def _scalar_or_nested(v: Any) -> Any:
    def ok(x: Any) -> bool:
        if isinstance(x, tuple):
            return all(ok(y) for y in x)
        return isinstance(x, (int, float, bool)) and not isinstance(x, Name)

    _require(ok(v), "a number, true/false, or a nested list of them")
    return v


INT = AttrKind("an integer", _int)
FLOAT = AttrKind("a number", _float)
BOOL = AttrKind("true or false", _bool)
STRING = AttrKind("a quoted string", _string)
DTYPE = AttrKind("a dtype", _dtype)
NAME = AttrKind("a name", _name)
NAMES = AttrKind("a list of names", _names)
NEW_DIM = AttrKind("a new dimension with a size", _new_dim)
SHAPE = AttrKind("a list of dimensions with sizes", _shape)
INTS = AttrKind("a list of integers", _ints)
LAYOUT = AttrKind("a layout map", _layout)
SYMBOL = AttrKind("a symbol", _symbol)
LITERAL = AttrKind("a number or nested list of numbers", _scalar_or_nested)


def one_of(*choices: str) -> AttrKind:
    """A bare name from a fixed set, as in `reduce = sum`."""
    description = "one of " + ", ".join(choices)

    def normalize(v: Any) -> Name:
        _require(isinstance(v, Name) and v in choices, description)
        return v

    return AttrKind(description, normalize)


REQUIRED = object()


@dataclass(frozen=True)
class AttrSpec:
    kind: AttrKind
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def check_attributes(specs: dict[str, AttrSpec], values: dict[str, Any], owner: str, noun: str = "attribute") -> dict[str, Any]:
    """`values` normalized by their declared kinds (defaults not filled in, so they
    print as written); a MeshirError names the `owner` and the unknown, missing
    or ill-kinded entry."""
    from .diagnostics import MeshirError

    normalized = {}
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            allowed = ", ".join(sorted(specs)) or "none"
            raise MeshirError(f"{owner} has no {noun} '{key}' ({noun}s: {allowed})")
        try:
            normalized[key] = spec.kind.normalize(value)
        except AttrTypeError as exc:
            raise MeshirError(f"{owner} {noun} '{key}' must be {exc.args[0]}") from None
    for key, spec in specs.items():
        if spec.required and key not in normalized:
            raise MeshirError(f"{owner} needs {noun} '{key}' ({spec.kind.description})")
    return normalized


def freeze(value: Any) -> Any:
    """Lists become tuples so attribute values hash (CSE keys on them)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value
