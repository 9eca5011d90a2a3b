"""Append ops to a function with inferred result types.

    e = Emitter(module, function)
    h = e.emit("einsum", x, w, output=["batch", "hidden"])
    step = e.emit("read", "@step", name="step")

The core's way to create ops (gradient rules, passes); the Python builder wraps
it. Attribute values may be written the Python way and are converted by the
kind each op declares for the attribute (`to_attribute`): strings are names,
lists are lists, `dtype="f32"`, `shape={"a": 2}` or a type, `var="@w"`,
`layout={"batch": "rows"}`, `dim=("classes", 10)`. `from_=` spells the
attribute `from`, a Python keyword. Each op is checked as it is added, so a
mistake raises `MeshirError` at the call.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .attributes import DTYPE, LAYOUT, LITERAL, NEW_DIM, SHAPE, SYMBOL, AttrKind, Name, SymbolRef
from .diagnostics import Location, MeshirError
from .dtypes import DTYPES, DType
from .ir import Function, Module, Operation, Value
from .mesh import LayoutRules
from .registry import find
from .types import Dim, TensorType
from .verifier import infer_op


def as_literal(value: Any) -> Any:
    """numpy arrays and Python lists become nested tuples, the form literal attributes hold."""
    if isinstance(value, np.ndarray):
        return as_literal(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(as_literal(v) for v in value)
    return value


def as_plain(value: Any) -> Any:
    """Strings are names (`dim="batch"`), lists are lists."""
    if isinstance(value, str) and not isinstance(value, Name):
        return Name(value)
    if isinstance(value, (list, tuple)):
        return tuple(as_plain(v) for v in value)
    return value


def _shape(value: Any) -> Any:
    if isinstance(value, TensorType):
        return value.dims
    if isinstance(value, Mapping):
        return tuple(Dim(n, s) for n, s in value.items())
    return tuple(value) if isinstance(value, list) else value


def _dtype(value: Any) -> Any:
    if isinstance(value, str):
        return DTYPES.get(value, value)
    # The builder's type factories (`f32`) carry their dtype.
    dtype = getattr(value, "dtype", None)
    return dtype if isinstance(dtype, DType) else value


_CONVERTERS: dict[int, Callable[[Any], Any]] = {
    id(DTYPE): _dtype,
    id(LAYOUT): lambda v: LayoutRules.of(v) if isinstance(v, Mapping) else v,
    id(SYMBOL): lambda v: SymbolRef(v.lstrip("@")) if isinstance(v, str) else v,
    id(SHAPE): _shape,
    id(LITERAL): as_literal,
    id(NEW_DIM): lambda v: Dim(*v) if isinstance(v, tuple) else v,
}


def to_attribute(kind: AttrKind, value: Any) -> Any:
    """A Python value as the attribute form the op declares."""
    converter = _CONVERTERS.get(id(kind))
    return converter(value) if converter else as_plain(value)


def _attribute_key(key: str) -> str:
    """`from_=` spells the attribute `from`, a Python keyword."""
    return key[:-1] if key.endswith("_") else key


Results = Value | tuple[Value, ...] | None


class Emitter:
    """Appends ops to `function.ops`; each new op carries `loc` (None unless set)."""

    def __init__(self, module: Module, function: Function, loc: Location | None = None):
        self.module = module
        self.function = function
        self.loc = loc

    def emit(self, opname: str, *operands: Value | str, name: str | Iterable[str | None] | None = None, **attributes: Any) -> Results:
        """Add op `opname`: one result is returned as a Value, several as a tuple, none as None.
        A variable op's symbol may lead the operands as a string (`emit("read", "@w")`)."""
        op = self.emit_op(opname, *operands, name=name, **attributes)
        if not op.results:
            return None
        return op.results[0] if len(op.results) == 1 else tuple(op.results)

    def emit_op(self, opname: str, *operands: Value | str, name: str | Iterable[str | None] | None = None, **attributes: Any) -> Operation:
        """`emit`, returning the new Operation."""
        opdef = find(opname)
        if opdef is None:
            raise MeshirError(f"unknown op '{opname}'")
        attrs: dict[str, Any] = {}
        if opdef.symbol_operand and operands and isinstance(operands[0], str):
            attrs[opdef.symbol_operand] = SymbolRef(operands[0].lstrip("@"))
            operands = operands[1:]
        for key, value in attributes.items():
            key = _attribute_key(key)
            spec = opdef.attrs.get(key)
            attrs[key] = to_attribute(spec.kind, value) if spec else value
        values = list(operands)
        for index, value in enumerate(values):
            if not isinstance(value, Value):
                raise MeshirError(f"{opname}: operand {index} must be a value, got {type(value).__name__} {value!r}")
        probe = Operation(opname, values, attrs, [], loc=self.loc)
        result_types = infer_op(self.module, self.function, probe)
        if name is None:
            names: list[str | None] = [None] * len(result_types)
        else:
            names = [name] if isinstance(name, str) else list(name)
            if len(names) != len(result_types):
                raise MeshirError(f"{opname} has {len(result_types)} results but name= gives {len(names)}")
        op = Operation(opname, values, probe.attributes, result_types, loc=self.loc, result_names=names)
        self.function.ops.append(op)
        return op

    def constant(self, value: float, dtype: DType) -> Value:
        """A scalar constant of `dtype`."""
        return self.emit("constant", value=value, dtype=dtype)

    def zeros(self, ttype: TensorType) -> Value:
        return self.emit("zeros", shape=ttype.dims, dtype=ttype.dtype)
