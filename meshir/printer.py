"""The canonical `.mir` printer.

`print_module` is deterministic: meshes and layouts, then variables, then
functions, each group separated by one blank line; attributes sorted by key;
every result type printed. Parsing its output and printing again gives the
same bytes. Values keep their names; a value without a name, with a name the
grammar cannot spell, or with a name already used in its function gets a
fresh `%0`, `%1`, ... so that the output always parses.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from .attributes import Name, SymbolRef
from .dtypes import DType
from .ir import Function, Module, Operation, Value, Variable
from .mesh import LayoutRules
from .registry import find
from .types import Dim, TensorType

_VALUE_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")


def print_module(module: Module) -> str:
    """The module as canonical `.mir` text (empty for an empty module)."""
    blocks = []
    declarations = [f"mesh @{name} = {mesh}" for name, mesh in module.meshes.items()]
    declarations += [f"layout @{name} = {rules}" for name, rules in module.layouts.items()]
    if declarations:
        blocks.append("\n".join(declarations))
    if module.variables:
        blocks.append("\n".join(print_variable(v) for v in module.variables.values()))
    types: dict[int, str] = {}
    blocks.extend(_function_text(f, types) for f in module.functions.values())
    return "\n\n".join(blocks) + "\n" if blocks else ""


def print_variable(variable: Variable) -> str:
    """`var @w : f32[a=2] = normal(seed=1, stddev=0.05) {trainable = false}`."""
    text = f"var @{variable.name} : {variable.type} = {variable.initializer}"
    if variable.init_args:
        text += "(" + ", ".join(f"{k}={format_attribute(v)}" for k, v in sorted(variable.init_args.items())) + ")"
    if variable.attributes:
        text += " " + format_attributes(variable.attributes)
    return text


def print_function(function: Function) -> str:
    """One function, `func @f(...) -> T {` to `}`, without a trailing newline."""
    return _function_text(function, {})


def value_names(function: Function) -> dict[Value, str]:
    """The name each value of `function` prints with (without `%`)."""
    values = list(function.values())
    taken = {v.name for v in values if v.name is not None}
    names: dict[Value, str] = {}
    used: set[str] = set()
    fresh = 0
    for value in values:
        name = value.name
        if name is None or name in used or not _VALUE_NAME.match(name):
            while str(fresh) in taken or str(fresh) in used:
                fresh += 1
            name = str(fresh)
        used.add(name)
        names[value] = name
    return names


def print_op(op: Operation, names: Mapping[Value, str] | None = None) -> str:
    """One op on one line, as in a function body (without the indent).

    `names` maps values to their printed names (see `value_names`); without
    it each value prints its own name, or `%?` when it has none."""
    return _op_text(op, names if names is not None else _OwnNames(), {})


def format_attribute(value: Any) -> str:
    """An attribute value as `.mir` text."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is Name or kind is DType:
        return str(value)
    if kind is tuple or kind is list:
        return "[" + ", ".join(format_attribute(v) for v in value) + "]"
    if kind is Dim:
        return f"{value.name}={value.size}"
    if kind is SymbolRef:
        return f"@{value.name}"
    if kind is LayoutRules:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, Name):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot print attribute value {value!r} of type {kind.__name__}")


def format_attributes(attributes: Mapping[str, Any]) -> str:
    """`{a = 1, b = [x, y]}`, sorted by key."""
    return "{" + ", ".join(f"{k} = {format_attribute(v)}" for k, v in sorted(attributes.items())) + "}"


def _result_list(types: list[TensorType]) -> str:
    if len(types) == 1:
        return str(types[0])
    return "(" + ", ".join(str(t) for t in types) + ")"


def _function_text(function: Function, types: dict[int, str]) -> str:
    names = value_names(function)
    args = ", ".join(f"%{names[v]}: {v.type}" for v in function.args)
    header = f"func @{function.name}({args}) -> {_result_list(function.result_types)}"
    if function.attributes:
        header += f"\n    attributes {format_attributes(function.attributes)}"
    lines = [header + " {"]
    lines.extend("  " + _op_text(op, names, types) for op in function.ops)
    returns = ", ".join("%" + names[v] for v in function.returns)
    lines.append(f"  return {returns}" if returns else "  return")
    lines.append("}")
    return "\n".join(lines)


_SYMBOL_OPERAND: dict[str, str | None] = {}


def _symbol_operand(op_name: str) -> str | None:
    """The attribute an op takes as its leading `@symbol` operand (read, assign)."""
    if op_name not in _SYMBOL_OPERAND:
        opdef = find(op_name)
        _SYMBOL_OPERAND[op_name] = opdef.symbol_operand if opdef is not None else None
    return _SYMBOL_OPERAND[op_name]


def _op_text(op: Operation, names: Mapping[Value, str], types: dict[int, str]) -> str:
    operands = ["%" + names[v] for v in op.operands]
    attributes = op.attributes
    symbol_attr = _symbol_operand(op.name)
    if symbol_attr is not None and isinstance(attributes.get(symbol_attr), SymbolRef):
        symbol = attributes[symbol_attr]
        attributes = {k: v for k, v in attributes.items() if k != symbol_attr}
        text = f"{op.name} @{symbol.name}" + "".join(", " + o for o in operands)
    else:
        text = f"{op.name}({', '.join(operands)})"
    if attributes:
        text += " " + format_attributes(attributes)
    results = op.results
    if not results:
        return text
    text = ", ".join("%" + names[v] for v in results) + " = " + text
    if any(v.type is None for v in results):  # not yet inferred: the parser accepts it bare
        return text
    return text + " : " + ", ".join(_type_text(v.type, types) for v in results)


def _type_text(ttype: TensorType, cache: dict[int, str]) -> str:
    """str(ttype), cached by identity for one print call (the module keeps the types alive)."""
    text = cache.get(id(ttype))
    if text is None:
        text = cache[id(ttype)] = str(ttype)
    return text


class _OwnNames:
    """A stand-in for `value_names` outside a function: each value's own name."""

    def __getitem__(self, value: Value) -> str:
        return value.name if value.name is not None else "?"
