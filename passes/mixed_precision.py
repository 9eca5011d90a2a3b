"""`mixed-precision`: run contractions and activations in bfloat16 or float16,
keep master weights, reductions, softmax, normalisation and losses in float32.

    mixed-precision{activation=bf16}                       master weights f32, reads bf16
    mixed-precision{activation=f16,loss-scale=dynamic}     f16 with dynamic loss scaling
    mixed-precision{activation=bf16,backend=tf}            keep in f32 what TF's CPU kernels lack

It runs on global functions before `autodiff`: it rewrites the forward program
and autodiff derives a backward pass of the same precision (the gradient of a
cast is a cast back), as Keras' and Mesh TensorFlow's policies do. Trainable
float variables get the `master` dtype and read in the `activation` dtype, so
the optimizer (which reads the master dtype) updates float32 weights.

Each op is given a compute dtype by a rule table: contractions run low; ops
whose accuracy needs the range or the sum of many terms run in float32
(reductions, softmax, normalisation, losses, exp/log); every other float op
follows its operands (low when all of them are low, float32 otherwise; scalar
constants adapt to the others). Float operands are cast to the op's dtype, and
returned values back to the function's declared result types, so the
interface does not change. With a `backend` given, an op that backend cannot
run in the low dtype stays in float32; `--pass-statistics` counts it.

Loss scaling (`loss-scale`: `none`, a number for static scaling, or `dynamic`)
marks each function returning a scalar float loss with `loss_scale`; autodiff
scales the loss before the backward pass and unscales the gradients, and the
optimizer, with `dynamic`, skips a step whose gradients overflow and halves
the scale (doubling it after the optimizer's `growth-interval` good steps).
`func` restricts the loss scaling to one function (default: every function
returning a scalar float first).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

from meshir.attributes import SymbolRef
from meshir.dtypes import DTYPES, DType, f32
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.types import TensorType
from meshir.verifier import infer_op

from .base import Pass, register_pass

LOW = "low"
FULL = "full"
FOLLOW = "follow"

# Where low precision pays: the contractions.
_LOW_OPS = ("einsum", "matmul", "conv1d", "conv2d")
# Where it hurts: sums of many terms, exponentials, normalisation and losses.
_FULL_OPS = ("reduce_sum", "reduce_mean", "reduce_prod", "logsumexp", "cumsum", "softmax", "log_softmax",
             "softmax_cross_entropy", "layer_norm", "avg_pool", "exp", "log", "log1p", "pow", "softplus")
# Ops that produce or store values of a dtype they are told: left alone.
_FIXED_OPS = ("cast", "constant", "zeros", "ones", "full", "iota", "one_hot", "random_uniform", "random_normal",
              "read", "assign", "assign_add", "stop_gradient")
POLICY: dict[str, str] = {**{n: LOW for n in _LOW_OPS}, **{n: FULL for n in _FULL_OPS}}
_WEAK_SOURCES = ("constant", "zeros", "ones", "full")

LOSS_SCALE_VARIABLE = "loss_scale"
GOOD_STEPS_VARIABLE = LOSS_SCALE_VARIABLE + ".good_steps"  # the counter optimizer.adjust_loss_scale keeps


@functools.cache
def _tf_kernel_gap(op_name: str, attributes: tuple, operand_types: tuple[TensorType, ...]) -> str | None:
    """Why the TensorFlow backend cannot run this op with these operand types on
    CPU, or None: it emits a one-op graph and reports the diagnostic it raises."""
    from meshir.backends.tf import compile_program
    from meshir.diagnostics import MeshirError

    module = Module()
    args = [Value(t, f"a{i}") for i, t in enumerate(operand_types)]
    op = Operation(op_name, args, dict(attributes), [])
    function = Function("probe", args, [])
    op = Operation(op_name, args, op.attributes, infer_op(module, function, op))
    function.ops, function.returns = [op], list(op.results)
    function.result_types = [v.type for v in op.results]
    module.functions["probe"] = function
    try:
        compile_program(module, "probe")
    except MeshirError as exc:
        return exc.message
    return None


def _backend_check(backend: str) -> Callable[[Operation, list[TensorType]], str | None]:
    if backend == "tf":
        return lambda op, types: _tf_kernel_gap(op.name, tuple(sorted(op.attributes.items(), key=lambda kv: kv[0])), tuple(types))
    return lambda op, types: None


@dataclass
class _Rewriter:
    module: Module
    function: Function
    low: DType
    runs_in: Callable[[Operation, list[TensorType]], str | None]
    counters: Counter

    casts: dict[tuple[Value, DType], Value] = field(default_factory=dict)

    def cast(self, value: Value, dtype: DType, into: list[Operation]) -> Value:
        """`value` in `dtype`, cast once however many ops need it so."""
        if value.type.dtype == dtype:
            return value
        if (value, dtype) in self.casts:
            return self.casts[value, dtype]
        cast = Operation("cast", [value], {"dtype": dtype}, [value.type.with_dtype(dtype)],
                         result_names=[f"{value.name}_{dtype}" if value.name else None])
        into.append(cast)
        self.counters["casts inserted"] += 1
        self.casts[value, dtype] = cast.results[0]
        return cast.results[0]

    def compute_dtype(self, op: Operation) -> DType | None:
        floats = [v for v in op.operands if v.type.dtype.is_float]
        if op.name in _FIXED_OPS or not floats:
            return None
        rule = POLICY.get(op.name, FOLLOW)
        if rule == FULL:
            return f32
        if rule == FOLLOW:
            strong = [v for v in floats if v.owner is None or v.owner.name not in _WEAK_SOURCES] or floats
            if any(v.type.dtype != self.low for v in strong):
                return f32 if any(v.type.dtype.itemsize >= 4 for v in strong) else None
        types = [v.type.with_dtype(self.low) if v.type.dtype.is_float else v.type for v in op.operands]
        gap = self.runs_in(op, types)
        if gap is not None:
            self.counters[f"kept f32 for the backend: {op.name}"] += 1
            return f32
        return self.low

    def rewrite(self) -> None:
        ops: list[Operation] = []
        for op in self.function.ops:
            dtype = self.compute_dtype(op)
            if dtype is not None:
                op.operands = [self.cast(v, dtype, ops) if v.type.dtype.is_float else v for v in op.operands]
                if dtype == self.low:
                    self.counters[f"ops in {self.low}"] += 1
            elif op.name in ("assign", "assign_add"):
                op.operands = [self._storable(op, op.operands[0], ops)]
            for result, new_type in zip(op.results, infer_op(self.module, self.function, op)):
                result.type = new_type
            ops.append(op)
        self.function.returns = [self.cast(v, t.dtype, ops) for v, t in zip(self.function.returns, self.function.result_types)]
        self.function.ops = ops

    def _storable(self, op: Operation, value: Value, into: list[Operation]) -> Value:
        variable = self.module.variables[op.attributes["var"].name]
        dtypes = {variable.type.dtype, variable.slice_type.dtype, variable.activation_type.dtype}
        return value if value.type.dtype in dtypes else self.cast(value, variable.type.dtype, into)


def _returns_a_loss(function: Function) -> bool:
    return bool(function.returns) and function.result_types[0].rank == 0 and function.result_types[0].dtype.is_float


@register_pass
@dataclass(frozen=True)
class MixedPrecision(Pass):
    name: ClassVar[str] = "mixed-precision"
    activation: Literal["bf16", "f16"] = "bf16"
    master: Literal["f32", "f64"] = "f32"
    loss_scale: str = "none"  # none, dynamic, or a number
    func: str = ""  # the function whose loss is scaled; empty: every function returning a scalar float first
    backend: Literal["any", "xla", "tf"] = "any"

    def __post_init__(self) -> None:
        if self.loss_scale not in ("none", "dynamic"):
            try:
                scale = float(self.loss_scale)
            except ValueError:
                raise ValueError(f"loss-scale must be none, dynamic or a positive number, got '{self.loss_scale}'") from None
            if not scale > 0:
                raise ValueError(f"loss-scale must be positive, got {scale}")

    def run(self, module: Module) -> dict[str, int]:
        low, master = DTYPES[self.activation], DTYPES[self.master]
        for variable in module.variables.values():
            if variable.trainable and variable.type.dtype.is_float:
                variable.attributes["activation_dtype"] = low
                if variable.type.dtype != master:
                    variable.attributes.setdefault("slice_dtype", variable.type.dtype)
                    variable.type = variable.type.with_dtype(master)
        counters: Counter = Counter()
        check = _backend_check(self.backend)
        for function in module.functions.values():
            if function.is_local:
                continue
            _Rewriter(module, function, low, check, counters).rewrite()
            if self.loss_scale != "none" and _returns_a_loss(function) and self.func.lstrip("@") in ("", function.name):
                function.attributes["loss_scale"] = self._scale(module)
        return dict(counters)

    def _scale(self, module: Module) -> float | SymbolRef:
        if self.loss_scale != "dynamic":
            return float(self.loss_scale)
        if LOSS_SCALE_VARIABLE not in module.variables:
            module.variables[LOSS_SCALE_VARIABLE] = Variable(LOSS_SCALE_VARIABLE, TensorType(f32, ()), "constant",
                                                             {"value": 2.0 ** 15}, {"trainable": False})
            module.variables[GOOD_STEPS_VARIABLE] = Variable(GOOD_STEPS_VARIABLE, TensorType(DTYPES["i32"], ()), "zeros",
                                                             attributes={"trainable": False})
        return SymbolRef(LOSS_SCALE_VARIABLE)
