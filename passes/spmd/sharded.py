"""Local values during partitioning, the builder of the local function, and
relayout: the collectives that move a value from one layout to another.

A global value becomes a `Sharded`: a local value, the layout it has, and
possibly a pending reduction over some mesh axes (a partial sum that has not
been all-reduced yet; kept lazy so `add` of two partial sums costs one
all_reduce). `relayout` finishes the reduction and reshapes the split with, in
order: reduce_scatter or all_reduce, all_to_all for an axis that moves between
two dimensions, all_gather for axes a dimension loses, all_slice for axes it gains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshir.attributes import Name
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh, ValueLayout
from meshir.types import TensorType
from meshir.verifier import infer_op


@dataclass(frozen=True, eq=False)
class Sharded:
    """One device's part of a global value."""

    value: Value
    layout: ValueLayout
    global_type: TensorType
    partial: tuple[str, ...] = ()
    reduce: str = "sum"

    @property
    def names(self) -> tuple[str, ...]:
        return self.global_type.names


@dataclass
class LocalBuilder:
    """Appends ops to the local function under construction."""

    module: Module
    function: Function
    mesh: Mesh
    relayouts: dict[tuple[int, ValueLayout], Sharded] = field(default_factory=dict)

    def emit(self, name: str, operands: list[Value], attributes: dict[str, Any], result_name: str | None = None) -> list[Value]:
        """Append op `name`; its results are called `result_name` (the printer
        numbers repeats), or after the first operand and the op."""
        if result_name is None and operands and operands[0].name:
            result_name = f"{operands[0].name}_{name}"
        op = Operation(name, operands, attributes, [])
        types = infer_op(self.module, self.function, op)
        names = [result_name] * len(types) if result_name else None
        op = Operation(name, operands, op.attributes, types, result_names=names)
        self.function.ops.append(op)
        return op.results

    def emit1(self, name: str, operands: list[Value], attributes: dict[str, Any], result_name: str | None = None) -> Value:
        return self.emit(name, operands, attributes, result_name)[0]


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def relayout(builder: LocalBuilder, sharded: Sharded, target: ValueLayout) -> Sharded:
    """`sharded` with no pending reduction and exactly the layout `target`."""
    if not sharded.partial and sharded.layout == target:
        return sharded
    key = (id(sharded), target)
    if key in builder.relayouts:
        return builder.relayouts[key]
    names = sharded.names
    current = list(sharded.layout.axes)
    value = sharded.value

    if sharded.partial:
        axes = sharded.partial
        scatter = next(
            (i for i, want in enumerate(target.axes)
             if want[: len(current[i])] == current[i] and want[len(current[i]):] == axes),
            None,
        )
        if scatter is not None:
            value = builder.emit1("reduce_scatter", [value], {"dim": Name(names[scatter]), "axes": _names(axes), "reduce": Name(sharded.reduce)})
            current[scatter] = target.axes[scatter]
        else:
            value = builder.emit1("all_reduce", [value], {"axes": _names(axes), "reduce": Name(sharded.reduce)})

    for src in range(len(current)):
        if not current[src] or target.axes[src] != current[src][:-1]:
            continue
        axis = current[src][-1]
        dst = next((j for j in range(len(current)) if j != src and target.axes[j] == current[j] + (axis,)), None)
        if dst is not None:
            value = builder.emit1("all_to_all", [value], {"split_dim": Name(names[dst]), "concat_dim": Name(names[src]), "axes": _names((axis,))})
            current[src], current[dst] = target.axes[src], target.axes[dst]

    for i, want in enumerate(target.axes):
        keep = _common_prefix(current[i], want)
        if len(current[i]) > keep:
            value = builder.emit1("all_gather", [value], {"dim": Name(names[i]), "axes": _names(current[i][keep:])})
            current[i] = current[i][:keep]
    for i, want in enumerate(target.axes):
        if len(want) > len(current[i]):
            value = builder.emit1("all_slice", [value], {"dim": Name(names[i]), "axes": _names(want[len(current[i]):])})
            current[i] = want

    result = Sharded(value, target, sharded.global_type)
    builder.relayouts[key] = result
    return result


def _names(axes: tuple[str, ...]) -> tuple[Name, ...]:
    return tuple(Name(a) for a in axes)
