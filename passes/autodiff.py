"""`autodiff`: reverse-mode differentiation of a scalar loss.

    autodiff                      every trainable variable the function reads
    autodiff{wrt="w1,b1"}         these variables, in this order
    autodiff{func=loss}           only @loss (default: every global function)

A function returning a scalar float loss first is rewritten in place to return
the loss, then one gradient per variable (`%grad_<var>`, of the variable's
master type, whatever dtype its reads yield), and its `gradients` attribute lists those variables in that order; any
other results it returned are dropped. Reads of one variable accumulate; a
variable the loss does not depend on gets zeros. The backward ops are ordinary
global ops appended after the forward ones, built by each op's gradient rule
(meshir/ops/grad_helpers.py), so `layout,spmd` partitions them like the rest.
Forward ops the loss no longer needs are left for `dce`; backward ops no
gradient needs are not emitted. A function with a `loss_scale` (see
mixed_precision.py) seeds the backward pass with the scale instead of 1 and
divides each gradient by it, in the variable's master dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from meshir.attributes import SymbolRef
from meshir.diagnostics import FlagError, MeshirError
from meshir.emitter import Emitter
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.registry import NOT_DIFFERENTIABLE

from .base import Pass, register_pass


def _active(function: Function, sources: Sequence[Value]) -> set[Value]:
    """Float values that depend on any of `sources`: the only ones gradients flow through."""
    active = set(sources)
    for op in function.ops:
        if any(v in active for v in op.operands):
            active.update(r for r in op.results if r.type.dtype.is_float)
    return active


def _rule_error(op: Operation, message: str) -> RuntimeError:
    return RuntimeError(f"internal error: the gradient rule of {op.name} {message}; this is a bug in meshir")


def differentiate(module: Module, function: Function, loss: Value, sources: Sequence[Value],
                  seed: Value | None = None) -> list[Value | None]:
    """Append to `function` the ops computing d loss / d source for each of `sources`
    (arguments or op results); None for a source the loss does not depend on. In a
    local function the loss is each device's, and the gradients are those of the
    sum of every device's loss. `seed` (default 1) is the loss's cotangent: the
    gradients come out multiplied by it (loss scaling)."""
    forward = len(function.ops)
    forward_ops = set(function.ops)
    active = _active(function, sources)
    e = Emitter(module, function)
    cotangents: dict[Value, Value] = {loss: seed if seed is not None else e.emit("ones", shape=(), dtype=loss.type.dtype)}
    for op in reversed(function.ops[:forward]):
        outputs = [cotangents.get(r) for r in op.results]
        if all(g is None for g in outputs) or not any(v in active for v in op.operands):
            continue
        _name_cotangents(op, outputs, forward_ops)
        rule = op.opdef.gradient_fn
        if rule == NOT_DIFFERENTIABLE:
            continue
        if rule is None:
            raise MeshirError(f"autodiff: {op.name} has no gradient rule", op.loc)
        e.loc = op.loc
        grads = rule(e, op, outputs)
        if len(grads) != len(op.operands):
            raise _rule_error(op, f"returned {len(grads)} gradients for {len(op.operands)} operands")
        for index, (operand, grad) in enumerate(zip(op.operands, grads)):
            if grad is None or operand not in active:
                continue
            if grad.type != operand.type:
                raise _rule_error(op, f"gave operand {index} of type {operand.type} a gradient of type {grad.type}")
            previous = cotangents.get(operand)
            cotangents[operand] = grad if previous is None else e.emit("add", previous, grad)
    results = [cotangents.get(s) for s in sources]
    _drop_unused_backward_ops(function, forward, results)
    return results


def _name_cotangents(op: Operation, outputs: list[Value | None], forward_ops: set[Operation]) -> None:
    """`%d_h` for the (complete) cotangent of `%h`, so the backward IR reads like the forward."""
    for result, g in zip(op.results, outputs):
        if g is not None and g.name is None and result.name is not None and g.owner not in forward_ops:
            g.name = f"d_{result.name}"


def _drop_unused_backward_ops(function: Function, forward: int, results: list[Value | None]) -> None:
    """Rules give every operand a gradient; remove the new ops that no result needs."""
    live = {v for v in (*results, *function.returns) if v is not None}
    kept: list[Operation] = []
    for op in reversed(function.ops[forward:]):
        if any(r in live for r in op.results):
            kept.append(op)
            live.update(op.operands)
    function.ops[forward:] = reversed(kept)


def _parse_wrt(text: str) -> tuple[str, ...]:
    return tuple(name.strip().lstrip("@") for name in text.split(",") if name.strip())


def _wrt_variables(module: Module, function: Function, wrt: tuple[str, ...]) -> list[Variable]:
    if not wrt:
        read = {op.attr("var").name for op in function.ops if op.name == "read"}
        return [v for v in module.variables.values() if v.name in read and v.trainable and v.type.dtype.is_float]
    variables = []
    for name in wrt:
        variable = module.variables.get(name)
        if variable is None:
            known = ", ".join("@" + v for v in module.variables) or "none"
            raise FlagError(f"autodiff: wrt names @{name}, which the module does not declare (variables: {known})")
        if not variable.type.dtype.is_float:
            raise MeshirError(f"autodiff: variable @{name} is {variable.type}; only float variables have gradients", variable.loc)
        variables.append(variable)
    return variables


def _named(function: Function, value: Value, name: str) -> Value:
    """`value` under `name`, which no other value of the function keeps. A value that
    is already named for something else (an argument, a forward value, another
    variable's gradient) is returned through a named copy."""
    if value.name is not None:
        copy = Operation("stop_gradient", [value], {}, [value.type])
        function.ops.append(copy)
        value = copy.results[0]
    for other in function.values():
        if other.name == name:
            other.name = None
    value.name = name
    return value


def differentiate_function(module: Module, function: Function, wrt: tuple[str, ...]) -> None:
    """Rewrite `function` to return its loss and the gradients of the `wrt` variables."""
    if function.is_local:
        raise MeshirError(f"autodiff: func @{function.name} is a local (spmd) function; differentiate the global "
                          "function before partitioning it", function.loc)
    if "gradients" in function.attributes:
        raise MeshirError(f"autodiff: func @{function.name} already returns gradients", function.loc)
    loss = function.returns[0] if function.returns else None
    if loss is None or loss.type.rank or not loss.type.dtype.is_float:
        returned = f"returns {loss.type}" if loss is not None else "returns nothing"
        raise MeshirError(f"autodiff: func @{function.name} must return a scalar float loss (such as f32[]) as its first "
                          f"result, but it {returned}", function.return_loc or function.loc)
    variables = _wrt_variables(module, function, wrt)
    reads = [[op.result for op in function.ops if op.name == "read" and op.attr("var").name == v.name] for v in variables]
    scale = _loss_scale(module, function, loss)
    found = differentiate(module, function, loss, [r for rs in reads for r in rs], seed=scale)
    e = Emitter(module, function, function.return_loc)
    grads, position = [], 0
    for variable, rs in zip(variables, reads):
        parts = [g if g.type.dtype == variable.type.dtype else e.emit("cast", g, dtype=variable.type.dtype)
                 for g in found[position:position + len(rs)] if g is not None]
        position += len(rs)
        grad = e.zeros(variable.type) if not parts else parts[0]
        for part in parts[1:]:
            grad = e.emit("add", grad, part)
        if scale is not None and parts:
            same = scale.type.dtype == variable.type.dtype
            grad = e.emit("div", grad, scale if same else e.emit("cast", scale, dtype=variable.type.dtype))
        grads.append(_named(function, grad, f"grad_{variable.name}"))
    function.returns = [loss, *grads]
    function.result_types = [v.type for v in function.returns]
    function.attributes["gradients"] = tuple(SymbolRef(v.name) for v in variables)


def _loss_scale(module: Module, function: Function, loss: Value) -> Value | None:
    """The loss's scale from the function's `loss_scale` (mixed-precision sets it),
    emitted as the backward pass's seed; None without one."""
    scale = function.attributes.get("loss_scale")
    if scale is None:
        return None
    e = Emitter(module, function, function.return_loc)
    if isinstance(scale, SymbolRef):
        value = e.emit("read", f"@{scale.name}", name="loss_scale")
        return value if loss.type.dtype == value.type.dtype else e.emit("cast", value, dtype=loss.type.dtype)
    return e.emit("constant", value=float(scale), dtype=loss.type.dtype, name="loss_scale")


@register_pass
@dataclass(frozen=True)
class Autodiff(Pass):
    name: ClassVar[str] = "autodiff"
    wrt: str = ""  # comma-separated variable names; empty: every trainable variable the function reads
    func: str = ""  # the function to differentiate; empty: every global function

    def run(self, module: Module) -> None:
        functions = [module.function(self.func)] if self.func else [f for f in module.functions.values() if not f.is_local]
        for function in functions:
            differentiate_function(module, function, _parse_wrt(self.wrt))
