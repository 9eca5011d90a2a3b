"""`cse`: merge ops that compute the same thing.

Two ops merge when they have the same name, the same operands and equal
attributes (defaults filled in). Side-effecting ops never merge; a state read
merges with an earlier read of the same variable only when no write to that
variable lies between them. Random ops are keyed by their seed, so equal ones
draw the same numbers and merge like any other op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

from meshir.attributes import Name
from meshir.ir import Function, Module, Operation, Value
from meshir.registry import OpDef, find

from .base import Pass, register_pass

# A write whose variable cannot be told invalidates reads of every variable.
_ANY_VARIABLE = None


def attribute_key(value: Any) -> Hashable:
    """A hashable key equal exactly when two attribute values mean the same.

    Python's `==` is wrong here three ways: `nan != nan` would keep equal ops
    apart, while `0.0 == -0.0` and `1 == 1.0 == True` would merge different
    ones. So every value is keyed by its type, and floats by their repr."""
    if isinstance(value, float):
        return (float, repr(value))
    if isinstance(value, tuple):
        return (tuple, tuple(attribute_key(v) for v in value))
    if isinstance(value, Name):  # before str: a bare name and a quoted string differ
        return (Name, str(value))
    return (type(value), value)


def _attributes_key(op: Operation, opdef: OpDef | None) -> Hashable:
    attributes = dict(op.attributes)
    if opdef is not None:
        for key, spec in opdef.attrs.items():
            if key not in attributes and not spec.required:
                attributes[key] = spec.default
    return tuple(sorted((k, attribute_key(v)) for k, v in attributes.items()))


def _variable_of(op: Operation, opdef: OpDef) -> str | None:
    ref = op.attributes.get(opdef.symbol_operand) if opdef.symbol_operand else None
    return getattr(ref, "name", _ANY_VARIABLE)


def eliminate_common_subexpressions(function: Function) -> int:
    """Merge equal ops in one forward sweep; return how many were merged away."""
    seen: dict[Hashable, Operation] = {}
    replacements: dict[Value, Value] = {}
    # Per variable, how many writes so far: a read's key includes it, so a read
    # after a write never finds the read before it.
    writes: dict[str | None, int] = {}
    kept: list[Operation] = []
    for op in function.ops:
        op.operands = [replacements.get(v, v) for v in op.operands]
        opdef = find(op.name)
        if opdef is None or opdef.side_effects:
            # An op the registry does not know is taken to write every variable.
            variable = _variable_of(op, opdef) if opdef is not None else _ANY_VARIABLE
            writes[variable] = writes.get(variable, 0) + 1
            kept.append(op)
            continue
        key: tuple = (op.name, tuple(op.operands), _attributes_key(op, opdef))
        if opdef.reads_state:
            variable = _variable_of(op, opdef)
            key += (writes.get(variable, 0), writes.get(_ANY_VARIABLE, 0))
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = op
            kept.append(op)
            continue
        replacements.update(zip(op.results, earlier.results))
    function.returns = [replacements.get(v, v) for v in function.returns]
    merged = len(function.ops) - len(kept)
    function.ops = kept
    return merged


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    name: ClassVar[str] = "cse"

    def run(self, module: Module) -> None:
        for function in module.functions.values():
            eliminate_common_subexpressions(function)
