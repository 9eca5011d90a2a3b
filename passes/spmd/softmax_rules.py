"""softmax, log_softmax and logsumexp over split dimensions, without gathering
them: the stabilising maximum and the normaliser are each one all_reduce of a
per-device partial result (max, then sum), as the reference computes them."""
from __future__ import annotations

from meshir.attributes import Name
from meshir.ir import Operation, Value
from meshir.mesh import ValueLayout

from .rules import LowerContext, Rule, generic_rule
from .sharded import Sharded


def _normalised(ctx: LowerContext, op: Operation, operands: list[Sharded], reduced: tuple[str, ...]) -> list[Sharded]:
    (sharded,), (result,) = operands, op.results
    by_dim = dict(zip(result.type.names, ctx.layout(result).axes))
    used = {a for n, axes in by_dim.items() if n not in reduced for a in axes}
    chosen = {n: by_dim.get(n, ()) for n in sharded.names if n not in reduced}
    for name, axes in zip(sharded.names, sharded.layout.axes):
        if name in reduced:
            wanted = by_dim.get(name) or axes
            chosen[name] = tuple(a for a in wanted if a not in used)
            used.update(chosen[name])
    split = ctx.mesh_order({a for n in reduced for a in chosen[n]})
    if not split:
        return generic_rule(ctx, op, operands)
    x = ctx.want(sharded, ValueLayout(tuple(chosen[n] for n in sharded.names)))
    dtype = sharded.global_type.dtype
    dims = {"dims": tuple(Name(n) for n in reduced)}
    axes = tuple(Name(a) for a in split)

    def scalar(value: float) -> Value:
        return ctx.emit("constant", [], {"value": value, "dtype": dtype})[0]

    top = ctx.emit("all_reduce", [ctx.emit("reduce_max", [x], dims)[0]], {"axes": axes, "reduce": Name("max")})[0]
    finite = ctx.emit("lt", [ctx.emit("abs", [top], {})[0], scalar(float("inf"))], {})[0]
    safe_top = ctx.emit("select", [finite, top, scalar(0.0)], {})[0]
    shifted = ctx.emit("sub", [x, safe_top], {})[0]
    total = ctx.emit("reduce_sum", [ctx.emit("exp", [shifted], {})[0]], dims)[0]
    log_norm = ctx.emit("log", [ctx.emit("all_reduce", [total], {"axes": axes, "reduce": Name("sum")})[0]], {})[0]
    if op.name == "logsumexp":
        value = ctx.emit("add", [log_norm, safe_top], {}, result.name)[0]
    else:
        log_probs = ctx.emit("sub", [shifted, log_norm], {}, None if op.name == "softmax" else result.name)[0]
        value = ctx.emit("exp", [log_probs], {}, result.name)[0] if op.name == "softmax" else log_probs
    layout = ValueLayout(tuple(chosen[n] for n in result.type.names))
    return [Sharded(value, layout, result.type)]


def along_dim_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    return _normalised(ctx, op, operands, (op.attr("dim"),))


def logsumexp_rule(ctx: LowerContext, op: Operation, operands: list[Sharded]) -> list[Sharded]:
    return _normalised(ctx, op, operands, tuple(op.attr("dims")))


SOFTMAX_RULES: dict[str, Rule] = {"softmax": along_dim_rule, "log_softmax": along_dim_rule, "logsumexp": logsumexp_rule}
