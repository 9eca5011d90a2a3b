"""`optimizer`: turn a function returning a loss and its gradients (the output of
`autodiff`, whose `gradients` attribute names the variable of each gradient)
into a train step that updates the variables and returns the loss.

    optimizer{kind=adam,lr=0.001,schedule=linear-warmup,warmup-steps=100,clip-norm=1.0,weight-decay=0.01}

Kinds: `sgd`; `momentum` (heavy ball, `nesterov=true` for Nesterov); `adam` (with
bias correction); `adafactor` (second moments factored into row and column
statistics for variables of rank 2 or more, no first moment, a fixed `beta2`).
Schedules of the learning rate over the step (`@step`, created if absent):
`constant`; `linear-warmup` (ramp over `warmup-steps`); `cosine` (warm-up, then
cosine decay to zero at `decay-steps`); `rsqrt` (constant through warm-up, then
proportional to 1/sqrt(step)). `clip-norm` scales all gradients together when
their global norm exceeds it; `weight-decay` is decoupled (AdamW style). Slot
variables (`@w.m`, `@w.v`, `@w.momentum`, `@w.row`, `@w.col`) are ordinary
variables: laid out, partitioned and checkpointed like their weights.

A function whose `loss_scale` is a variable (dynamic loss scaling, set by
`mixed-precision`) gets a skipped step when any gradient is inf or NaN: every
variable keeps its value, `@step` does not advance, and the scale halves; after
`growth-interval` finite steps in a row it doubles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

from meshir.attributes import SymbolRef
from meshir.diagnostics import MeshirError
from meshir.dtypes import f32, i32
from meshir.emitter import Emitter
from meshir.ir import Function, Module, Value, Variable
from meshir.types import TensorType

from .base import Pass, register_pass

STEP = "step"


def _slot(module: Module, owner: Variable, suffix: str, ttype: TensorType | None = None) -> str:
    name = f"{owner.name}.{suffix}"
    if name not in module.variables:
        module.variables[name] = Variable(name, ttype or owner.type, "zeros", attributes={"trainable": False})
    return name


def read_master(e: Emitter, module: Module, name: str) -> Value:
    """The variable in its master dtype: the optimizer's math runs in it, whatever `read` yields elsewhere."""
    master = module.variables[name].type.dtype
    if module.variables[name].activation_type.dtype == master:
        return e.emit("read", f"@{name}")
    return e.emit("read", f"@{name}", dtype=master)


Store = Callable[[str, Value], None]


def all_finite(e: Emitter, grads: list[Value]) -> Value:
    """A bool scalar: no gradient holds an inf or a NaN (x * 0 is NaN exactly for those)."""
    total = None
    for grad in grads:
        zeros = e.emit("reduce_sum", e.emit("mul", grad, e.emit("zeros", shape=(), dtype=grad.type.dtype)), dims=list(grad.type.names))
        zeros = zeros if zeros.type.dtype == f32 else e.emit("cast", zeros, dtype=f32)
        total = zeros if total is None else e.emit("add", total, zeros)
    return e.emit("eq", total, e.emit("zeros", shape=(), dtype=f32), name="finite")


def _store(e: Emitter, module: Module, finite: Value | None) -> Store:
    """Assign a variable's new value; with `finite`, keep the old one when it is false (a skipped step)."""
    def store(name: str, value: Value) -> None:
        if finite is not None:
            value = e.emit("select", finite, value, read_master(e, module, name))
        e.emit("assign", f"@{name}", value)

    return store


def step_variable(module: Module) -> str:
    variable = module.variables.get(STEP)
    if variable is None:
        module.variables[STEP] = Variable(STEP, TensorType(i32, ()), "zeros", attributes={"trainable": False})
    elif variable.type != TensorType(i32, ()):
        raise MeshirError(f"optimizer: variable @{STEP} must be i32[] to count steps, but it is {variable.type}", variable.loc)
    return STEP


@register_pass
@dataclass(frozen=True)
class Optimizer(Pass):
    name: ClassVar[str] = "optimizer"
    kind: Literal["sgd", "momentum", "adam", "adafactor"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    schedule: Literal["constant", "linear-warmup", "cosine", "rsqrt"] = "constant"
    warmup_steps: int = 0
    decay_steps: int = 1000
    clip_norm: float = 0.0
    weight_decay: float = 0.0
    growth_interval: int = 2000  # dynamic loss scaling (mixed_precision.py): finite steps before the scale doubles

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("warmup-steps must be >= 0 and decay-steps >= 1")
        if self.clip_norm < 0 or self.weight_decay < 0:
            raise ValueError("clip-norm and weight-decay must be >= 0")
        if self.growth_interval < 1:
            raise ValueError("growth-interval must be >= 1")

    def run(self, module: Module) -> None:
        for function in module.functions.values():
            if "gradients" in function.attributes:
                self.train_step(module, function)

    def train_step(self, module: Module, function: Function) -> None:
        variables = [module.variables[ref.name] for ref in function.attributes.pop("gradients")]
        loss, grads = function.returns[0], function.returns[1:]
        e = Emitter(module, function)
        step = e.emit("read", f"@{step_variable(module)}", name=STEP)
        t = e.emit("cast", step, dtype=f32)
        lr = self.learning_rate(e, t)
        if self.clip_norm:
            grads = self.clipped(e, grads)
        scale = function.attributes.pop("loss_scale", None)
        finite = all_finite(e, grads) if isinstance(scale, SymbolRef) else None
        store = _store(e, module, finite)
        for variable, grad in zip(variables, grads):
            self.update(e, module, variable, grad, lr, t, store)
        one = e.emit("ones", shape=(), dtype=i32)
        e.emit("assign_add", f"@{STEP}", one if finite is None else e.emit("cast", finite, dtype=i32))
        if finite is not None:
            self.adjust_loss_scale(e, scale.name, finite)
        function.returns = [loss]
        function.result_types = [loss.type]

    def adjust_loss_scale(self, e: Emitter, scale_name: str, finite: Value) -> None:
        """Dynamic loss scaling: halve the scale after an overflow (not below 1),
        double it after `growth-interval` finite steps in a row."""
        counter = f"{scale_name}.good_steps"
        scale = e.emit("read", f"@{scale_name}")
        good = e.emit("add", e.emit("read", f"@{counter}"), e.emit("ones", shape=(), dtype=i32))
        good = e.emit("select", finite, good, e.emit("zeros", shape=(), dtype=i32))
        grow = e.emit("ge", good, e.emit("constant", value=self.growth_interval, dtype=i32))
        grown = e.emit("select", grow, e.emit("mul", scale, self.constant(e, 2.0)), scale)
        lowered = e.emit("maximum", e.emit("mul", scale, self.constant(e, 0.5)), self.constant(e, 1.0))
        e.emit("assign", f"@{scale_name}", e.emit("select", finite, grown, lowered))
        e.emit("assign", f"@{counter}", e.emit("select", grow, e.emit("zeros", shape=(), dtype=i32), good))

    def constant(self, e: Emitter, value: float) -> Value:
        return e.emit("constant", value=value, dtype=f32)

    def learning_rate(self, e: Emitter, t: Value) -> Value:
        lr = self.constant(e, self.lr)
        one = self.constant(e, 1.0)
        if self.schedule in ("linear-warmup", "cosine") and self.warmup_steps:
            ramp = e.emit("div", e.emit("add", t, one), self.constant(e, float(self.warmup_steps)))
            lr = e.emit("mul", lr, e.emit("minimum", ramp, one))
        if self.schedule == "cosine":
            progress = e.emit("div", e.emit("minimum", t, self.constant(e, float(self.decay_steps))), self.constant(e, float(self.decay_steps)))
            cosine = e.emit("cos", e.emit("mul", progress, self.constant(e, math.pi)))
            lr = e.emit("mul", lr, e.emit("mul", self.constant(e, 0.5), e.emit("add", one, cosine)))
        if self.schedule == "rsqrt":
            held = e.emit("maximum", e.emit("add", t, one), self.constant(e, float(max(self.warmup_steps, 1))))
            lr = e.emit("mul", lr, e.emit("mul", e.emit("rsqrt", held), self.constant(e, math.sqrt(max(self.warmup_steps, 1)))))
        return lr

    def clipped(self, e: Emitter, grads: list[Value]) -> list[Value]:
        """All gradients scaled by min(1, clip-norm / global norm)."""
        total = None
        for grad in grads:
            squares = e.emit("reduce_sum", e.emit("square", grad), dims=list(grad.type.names))
            squares = squares if grad.type.dtype == f32 else e.emit("cast", squares, dtype=f32)
            total = squares if total is None else e.emit("add", total, squares)
        norm = e.emit("sqrt", total)
        scale = e.emit("minimum", self.constant(e, 1.0),
                       e.emit("div", self.constant(e, self.clip_norm), e.emit("maximum", norm, self.constant(e, 1e-12))))
        return [e.emit("mul", g, scale if g.type.dtype == f32 else e.emit("cast", scale, dtype=g.type.dtype)) for g in grads]

    def update(self, e: Emitter, module: Module, variable: Variable, grad: Value, lr: Value, t: Value, store: Store) -> None:
        dtype = variable.type.dtype

        def scalar(value: float | Value) -> Value:
            v = value if isinstance(value, Value) else self.constant(e, value)
            return v if dtype == f32 else e.emit("cast", v, dtype=dtype)

        def read(name: str) -> Value:
            return read_master(e, module, name)

        weight = read(variable.name)
        step_size = scalar(lr)
        if self.kind == "sgd":
            direction = grad
        elif self.kind == "momentum":
            slot = _slot(module, variable, "momentum")
            velocity = e.emit("add", e.emit("mul", scalar(self.momentum), read(slot)), grad)
            store(slot, velocity)
            direction = e.emit("add", grad, e.emit("mul", scalar(self.momentum), velocity)) if self.nesterov else velocity
        elif self.kind == "adam":
            direction = self.adam(e, module, variable, grad, t, scalar, read, store)
        else:
            direction = self.adafactor(e, module, variable, grad, scalar, read, store)
        new = e.emit("sub", weight, e.emit("mul", step_size, direction))
        if self.weight_decay:
            new = e.emit("sub", new, e.emit("mul", e.emit("mul", step_size, scalar(self.weight_decay)), weight))
        store(variable.name, new)

    def adam(self, e, module, variable, grad, t, scalar, read, store) -> Value:
        m_slot, v_slot = _slot(module, variable, "m"), _slot(module, variable, "v")
        b1, b2 = self.beta1, self.beta2
        m = e.emit("add", e.emit("mul", scalar(b1), read(m_slot)), e.emit("mul", scalar(1 - b1), grad))
        v = e.emit("add", e.emit("mul", scalar(b2), read(v_slot)), e.emit("mul", scalar(1 - b2), e.emit("square", grad)))
        store(m_slot, m)
        store(v_slot, v)
        count = e.emit("add", t, self.constant(e, 1.0))
        one = self.constant(e, 1.0)
        m_correction = e.emit("sub", one, e.emit("pow", self.constant(e, b1), count))
        v_correction = e.emit("sub", one, e.emit("pow", self.constant(e, b2), count))
        m_hat = e.emit("div", m, scalar(m_correction))
        v_hat = e.emit("div", v, scalar(v_correction))
        return e.emit("div", m_hat, e.emit("add", e.emit("sqrt", v_hat), scalar(self.epsilon)))

    def adafactor(self, e, module, variable, grad, scalar, read, store) -> Value:
        names = variable.type.names
        b2 = self.beta2
        squared = e.emit("add", e.emit("square", grad), scalar(1e-30))
        # A stack's leading dimension (autostack) numbers its members: each member is factored as it would be alone.
        if len(names) - bool(variable.attributes.get("stacks")) < 2:
            slot = _slot(module, variable, "v")
            v = e.emit("add", e.emit("mul", scalar(b2), read(slot)), e.emit("mul", scalar(1 - b2), squared))
            store(slot, v)
            return e.emit("mul", grad, e.emit("rsqrt", v))
        row_dims, col_dim = names[:-1], names[-1]
        row_slot = _slot(module, variable, "row", variable.type.without([col_dim]))
        col_slot = _slot(module, variable, "col", variable.type.without([names[-2]]))
        row = e.emit("add", e.emit("mul", scalar(b2), read(row_slot)), e.emit("mul", scalar(1 - b2), e.emit("reduce_mean", squared, dims=[col_dim])))
        col = e.emit("add", e.emit("mul", scalar(b2), read(col_slot)), e.emit("mul", scalar(1 - b2), e.emit("reduce_mean", squared, dims=[names[-2]])))
        store(row_slot, row)
        store(col_slot, col)
        # v[i, j] ~ row[i] * col[j] / mean(row): the rank-1 factorisation of the second moments.
        estimate = e.emit("div", e.emit("mul", row, col), e.emit("reduce_mean", row, dims=list(row_dims[-1:])))
        return e.emit("mul", grad, e.emit("rsqrt", e.emit("transpose", estimate, order=list(names))))
