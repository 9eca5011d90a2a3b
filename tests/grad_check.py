"""Gradient checks the gradient and autodiff tests share.

A program's float results become a scalar loss, `sum(result * weight)` with a
fixed random weight per result (`add_weighted_loss`). Its gradient comes from
meshir (`differentiate`, then the reference interpreter) and is checked two
independent ways: central finite differences of the loss in float64 along random
directions (`directional_check`: for every direction v, (L(x + eps v) - L(x - eps v))
/ 2 eps must equal <grad, v>), and `jax.grad` of the same forward program traced
by the XLA backend (`jax_gradients`).
"""
from __future__ import annotations

import zlib
from typing import Callable, Mapping

import numpy as np

from meshir.emitter import Emitter
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.ir import Function, Module, Value
from meshir.passes.autodiff import differentiate
from meshir.printer import print_module

Arrays = dict[str, np.ndarray]

# Perturbation and tolerance of finite differences by the perturbed value's dtype:
# float64 differences are accurate to ~1e-9; float32 inputs only feed linear ops.
STEP = {"f64": 1e-6, "f32": 1e-2}
TOLERANCE = {"f64": 1e-6, "f32": 1e-3}


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def add_weighted_loss(module: Module, function: Function, rng: np.random.Generator) -> Arrays:
    """Make `function` return `%loss` = the sum over its float results of sum(result * w_i),
    each w_i a new argument; return the weights drawn for them."""
    e = Emitter(module, function)
    weights: Arrays = {}
    terms = []
    for index, result in enumerate(v for v in function.returns if v.type.dtype.is_float):
        weight = Value(result.type, f"w{index}")
        function.args.append(weight)
        weights[weight.name] = rng.standard_normal(result.type.shape).astype(result.type.dtype.numpy)
        product = e.emit("mul", result, weight)
        terms.append(e.emit("reduce_sum", product, dims=list(result.type.names)))
    loss = terms[0]
    for term in terms[1:]:
        loss = e.emit("add", loss, term)
    loss.name = "loss"
    function.returns = [loss]
    function.result_types = [loss.type]
    return weights


def with_gradients(module: Module, function_name: str, wrt: list[str]) -> Module:
    """A copy of the module whose function also returns d loss / d argument for each
    argument named in `wrt` (zeros where the loss does not depend on it), as `d_<arg>`."""
    copy = parse_module(print_module(module))
    function = copy.function(function_name)
    sources = [next(a for a in function.args if a.name == name) for name in wrt]
    grads = differentiate(copy, function, function.returns[0], sources)
    e = Emitter(copy, function)
    named = [e.emit("stop_gradient", g if g is not None else e.zeros(s.type), name=f"d_{s.name}") for g, s in zip(grads, sources)]
    function.returns = [*function.returns, *named]
    function.result_types = [v.type for v in function.returns]
    return copy


def directional_check(loss: Callable[[Arrays], float], inputs: Arrays, gradients: Mapping[str, np.ndarray],
                      rng: np.random.Generator, dtypes: Mapping[str, str], directions: int = 2,
                      step: float | None = None) -> list[str]:
    """Compare each gradient with central differences of `loss` along random
    directions; the disagreements, described. A smaller `step` than the dtype's
    crosses fewer kinks (relu) in a large model."""
    problems = []
    for name, grad in gradients.items():
        tol = TOLERANCE[dtypes[name]]
        step = step or STEP[dtypes[name]]
        for _ in range(directions):
            v = rng.standard_normal(np.shape(inputs[name]))
            plus = {**inputs, name: (inputs[name] + step * v).astype(inputs[name].dtype)}
            minus = {**inputs, name: (inputs[name] - step * v).astype(inputs[name].dtype)}
            numeric = (loss(plus) - loss(minus)) / (2 * step)
            analytic = float(np.sum(np.asarray(grad, np.float64) * v))
            if not abs(numeric - analytic) <= tol * (1 + abs(numeric)):
                problems.append(f"d/d{name} along a random direction: finite differences {numeric:.10g}, gradient {analytic:.10g}")
    return problems


def reference_loss(module: Module, function_name: str) -> Callable[[Arrays], float]:
    interpreter = Interpreter(module)
    return lambda inputs: float(interpreter.run(function_name, inputs)["loss"])


def jax_gradients(module: Module, function_name: str, inputs: Arrays, wrt: list[str],
                  variables: Mapping[str, np.ndarray] | None = None, wrt_variables: list[str] = ()) -> Arrays:
    """jax.grad of the function's loss (its first result) traced by the XLA backend,
    with respect to the arguments `wrt` and the variables `wrt_variables`."""
    import jax

    from meshir.backends.xla.compile import x64
    from meshir.backends.xla.trace import trace_function

    function = module.function(function_name)
    state = dict(variables or {})

    def loss(differentiated: dict) -> jax.Array:
        args = [differentiated.get(a.name, inputs[a.name]) for a in function.args]
        return trace_function(module, function, args, {**state, **differentiated.get("@", {})})[0]

    with x64():
        point = {name: inputs[name] for name in wrt}
        point["@"] = {name: state[name] for name in wrt_variables}
        grads = jax.jit(jax.grad(loss))(point)
    out = {name: np.asarray(grads[name]) for name in wrt}
    out.update({f"@{name}": np.asarray(g) for name, g in grads["@"].items()})
    return out
