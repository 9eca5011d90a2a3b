"""Lowering rules of the `spmd` pass, one per op, registered against the op
registry as `opdef.lower("spmd", rule)`.

A rule gets the global op and its operands as `Sharded` local values, emits local
ops, and returns one `Sharded` per result, in whatever layout is cheapest (a
partial sum stays pending); consumers ask for the layouts they need. The
generic rule covers every op: operands keep split only the dimensions the op's
`splittable` rule allows (others are all-gathered), the op runs on local blocks
with size-bearing attributes made local, and its result is sliced to the
wanted layout later, at no communication cost. Special rules keep
contractions and reductions over split dimensions local, with one pending
all_reduce (or reduce_scatter) instead of gathering their inputs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import MeshirError
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh, ValueLayout
from meshir.ops.contraction import matmul_output
from meshir.registry import OpView
from meshir.types import Dim

from ..layout import as_rules, without_trivial_axes
from .sharded import LocalBuilder, Sharded, relayout


@dataclass
class LowerContext:
    builder: LocalBuilder
    module: Module
    function: Function
    mesh: Mesh
    layouts: dict[Value, ValueLayout]
    _uses: Counter | None = field(default=None, repr=False)

    def uses(self, value: Value) -> int:
        """How many ops (and returns) of the global function use `value`."""
        if self._uses is None:
            self._uses = Counter(v for op in self.function.ops for v in op.operands)
            self._uses.update(self.function.returns)
        return self._uses[value]

    def want(self, sharded: Sharded, layout: ValueLayout) -> Value:
        return relayout(self.builder, sharded, layout).value

    def layout(self, value: Value) -> ValueLayout:
        return self.layouts[value]

    def emit(self, name: str, operands: list[Value], attributes: dict[str, Any], result_name: str | None = None) -> list[Value]:
        return self.builder.emit(name, operands, attributes, result_name)

    def view(self, op: Operation) -> OpView:
        return OpView(op.opdef, op.operand_types, op.attributes, self.module, self.function, op.result_types)

    def mesh_order(self, axes: set[str]) -> tuple[str, ...]:
        return tuple(a for a in self.mesh.axis_names if a in axes)


Rule = Callable[[LowerContext, Operation, list[Sharded]], list[Sharded]]


def _axes_by_dim(op: Operation, layouts: list[ValueLayout]) -> dict[str, tuple[str, ...]]:
    axes: dict[str, tuple[str, ...]] = {}
    for value, layout in zip(op.results, layouts):
        for name, dim_axes in zip(value.type.names, layout.axes):
            axes.setdefault(name, dim_axes)
    return axes


def _localize(value: Any, local_size: Callable[[Dim], int]) -> Any:
    """Sizes in shape-like attributes (`shape = [...]`, `dim = classes=10`) as one device sees them."""
    if isinstance(value, Dim):
        return Dim(value.name, local_size(value))
    if isinstance(value, tuple) and value and all(isinstance(v, Dim) for v in value):
        return tuple(Dim(d.name, local_size(d)) for d in value)
    return value


def generic_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    keep = op.opdef.split_dims(ctx.view(op))
    wanted = _axes_by_dim(op, [ctx.layout(r) for r in op.results])

    def restricted(names: tuple[str, ...]) -> ValueLayout:
        return ValueLayout(tuple(wanted.get(n, ()) if n in keep else () for n in names))

    def local_size(dim: Dim) -> int:
        if dim.name not in keep:
            return dim.size
        return dim.size // ctx.mesh.group_size(wanted.get(dim.name, ()))

    local_operands = [ctx.want(s, restricted(s.names)) for s in operands]
    attributes = {k: _localize(v, local_size) for k, v in op.attributes.items()}
    names = [r.name for r in op.results]
    results = ctx.emit(op.name, local_operands, attributes, names[0] if len(names) == 1 else None)
    for value, name in zip(results, names):
        value.name = name
    return [Sharded(v, restricted(r.type.names), r.type) for v, r in zip(results, op.results)]


def _contraction(ctx: LowerContext, op: Operation, operands: list[Sharded], output: tuple[str, ...]) -> list[Sharded]:
    """Each device contracts its blocks; dimensions summed while split leave a
    partial sum over their axes, reduced when (and how) a consumer needs it."""
    (result,) = op.results
    chosen = dict(zip(result.type.names, ctx.layout(result).axes))
    used = {a for axes in chosen.values() for a in axes}
    for sharded in operands:
        for name, axes in zip(sharded.names, sharded.layout.axes):
            if name not in chosen:
                free = tuple(a for a in axes if a not in used)
                chosen[name] = free
                used.update(free)
    local = [ctx.want(s, ValueLayout(tuple(chosen[n] for n in s.names))) for s in operands]
    value = ctx.emit("einsum", local, {"output": tuple(Name(n) for n in output)}, result.name)[0]
    summed = {a for n, axes in chosen.items() if n not in output for a in axes}
    return [Sharded(value, ValueLayout(tuple(chosen[n] for n in output)), result.type, ctx.mesh_order(summed))]


def einsum_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    return _contraction(ctx, op, operands, tuple(op.attr("output")))


def matmul_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    return _contraction(ctx, op, operands, matmul_output(ctx.view(op)))


# Reductions whose per-device results combine with one collective: op -> how.
PARTIAL_REDUCTIONS = {
    "reduce_sum": "sum", "reduce_mean": "sum", "reduce_max": "max", "reduce_min": "min",
    "reduce_prod": "prod", "reduce_any": "max", "reduce_all": "min",
}


def reduction_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    reduced = set(op.attr("dims"))
    chosen = dict(zip(result.type.names, ctx.layout(result).axes))
    used = {a for axes in chosen.values() for a in axes}
    for name, axes in zip(sharded.names, sharded.layout.axes):
        if name in reduced:
            chosen[name] = tuple(a for a in axes if a not in used)
    split = ctx.mesh_order({a for n in reduced for a in chosen[n]})
    if not split:
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, ValueLayout(tuple(chosen[n] for n in sharded.names)))
    dims = {"dims": op.attributes["dims"]}
    if op.name == "reduce_mean":
        total = ctx.emit("reduce_sum", [x], dims)[0]
        count = 1
        for name in reduced:
            count *= sharded.global_type.size_of(name)
        scale = ctx.emit("constant", [], {"value": 1.0 / count if count else float("inf"), "dtype": result.type.dtype})[0]
        value = ctx.emit("mul", [total, scale], {}, result.name)[0]
    else:
        value = ctx.emit(op.name, [x], dims, result.name)[0]
    layout = ValueLayout(tuple(chosen[n] for n in result.type.names))
    return [Sharded(value, layout, result.type, split, PARTIAL_REDUCTIONS[op.name])]


def _is_partial_sum(sharded: Sharded) -> bool:
    return bool(sharded.partial) and sharded.reduce == "sum"


def _linear_rule(partial_operands: Callable[[list[Sharded]], bool]) -> Rule:
    """Ops linear in their partial-sum operands keep the sum pending: add of two
    partial sums, or a partial sum scaled by a complete value, costs one
    all_reduce later instead of one per operand now. Only for a partial sum
    this op alone uses: another user would reduce it too, and two all_reduces
    of one gradient (Adam's moment update and its square) cost twice one."""

    def rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
        partial = [s for s in operands if s.partial]
        shared = any(s.partial and ctx.uses(v) > 1 for v, s in zip(op.operands, operands))
        if not partial or shared or not partial_operands(operands):
            return generic_rule(ctx, op, operands)
        axes = partial[0].partial
        (result,) = op.results
        layout = ctx.layout(result)
        if any(s.partial != axes for s in partial) or any(a in axes for dim_axes in layout.axes for a in dim_axes):
            return generic_rule(ctx, op, operands)
        by_dim = dict(zip(result.type.names, layout.axes))
        local = []
        for s in operands:
            target = ValueLayout(tuple(by_dim[n] for n in s.names))
            local.append(relayout(ctx.builder, Sharded(s.value, s.layout, s.global_type), target).value if s.partial else ctx.want(s, target))
        value = ctx.emit(op.name, local, dict(op.attributes), result.name)[0]
        return [Sharded(value, layout, result.type, axes)]

    return rule


LINEAR_RULES: dict[str, Rule] = {
    "add": _linear_rule(lambda ops: all(_is_partial_sum(s) for s in ops)),
    "sub": _linear_rule(lambda ops: all(_is_partial_sum(s) for s in ops)),
    "neg": _linear_rule(lambda ops: _is_partial_sum(ops[0])),
    "mul": _linear_rule(lambda ops: sum(_is_partial_sum(s) for s in ops) == 1 and all(_is_partial_sum(s) or not s.partial for s in ops)),
    "div": _linear_rule(lambda ops: _is_partial_sum(ops[0]) and not ops[1].partial),
    # autostack's gradients: one pending all_reduce for the stack, not one per member.
    "stack": _linear_rule(lambda ops: all(_is_partial_sum(s) for s in ops)),
}


def read_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (result,) = op.results
    layout = ctx.layout(result)
    attributes = dict(op.attributes)
    if not layout.is_replicated():
        attributes["layout"] = as_rules(layout, result.type.names)
    value = ctx.emit("read", [], attributes, result.name)[0]
    return [Sharded(value, layout, result.type)]


def variable_layout(ctx: LowerContext, symbol: SymbolRef) -> ValueLayout:
    """Variables are stored laid out by their function's rules."""
    variable = ctx.module.variables[symbol.name]
    rules = ctx.module.layout_of(ctx.function)
    if rules is None:
        return ValueLayout(tuple(() for _ in variable.type.dims))
    return without_trivial_axes(rules.layout_of(variable.type), ctx.mesh)


def write_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,) = operands
    layout = variable_layout(ctx, op.attributes["var"])
    attributes = dict(op.attributes)
    if not layout.is_replicated():
        attributes["layout"] = as_rules(layout, sharded.names)
    ctx.emit(op.name, [ctx.want(sharded, layout)], attributes)
    return []


def reshard_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    moved = relayout(ctx.builder, sharded, ctx.layout(result))
    if moved.value is not sharded.value:
        moved.value.name = result.name
    return [moved]


def transfer_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    """Within the function's own mesh a transfer is a reshard; across meshes the
    two meshes' programs are partitioned separately."""
    if op.attr("to").name != ctx.mesh.name:
        raise MeshirError(f"spmd: transfer to mesh {op.attr('to')} from @{ctx.mesh.name}: moving values between meshes "
                          "is not partitioned yet; run each mesh's function separately", op.loc)
    return reshard_rule(ctx, op, operands)


SPECIAL_RULES: dict[str, Rule] = {
    "einsum": einsum_rule,
    "matmul": matmul_rule,
    **{name: reduction_rule for name in PARTIAL_REDUCTIONS},
    **LINEAR_RULES,
    "read": read_rule,
    "assign": write_rule,
    "assign_add": write_rule,
    "reshard": reshard_rule,
    "transfer": transfer_rule,
}

