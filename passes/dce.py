"""`dce`: remove ops whose results nothing uses, transitively.

Side-effecting ops (`assign`, `assign_add`) always stay, and so do the ops
that feed them. Function signatures and variables are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshir.ir import Function, Module, Operation, Value
from meshir.registry import find

from .base import Pass, register_pass


def _must_keep(op: Operation) -> bool:
    opdef = find(op.name)
    # An op the registry does not know may do anything; keeping it is the safe choice.
    return opdef is None or opdef.side_effects


def remove_dead_ops(function: Function) -> int:
    """Drop the function's dead ops in one backward sweep; return how many went."""
    live: set[Value] = set(function.returns)
    kept: list[Operation] = []
    for op in reversed(function.ops):
        if _must_keep(op) or any(r in live for r in op.results):
            kept.append(op)
            live.update(op.operands)
    removed = len(function.ops) - len(kept)
    kept.reverse()
    function.ops = kept
    return removed


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name: ClassVar[str] = "dce"

    def run(self, module: Module) -> None:
        for function in module.functions.values():
            remove_dead_ops(function)
