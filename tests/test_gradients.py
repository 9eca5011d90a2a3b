"""Every gradient rule, checked on float64 versions of the op samples
(tests/op_samples.py): the loss sum(result * weights) differentiated by meshir
must match central finite differences of the reference interpreter and
`jax.grad` of the same program traced by the XLA backend. The cases are
generated from the registry, so every differentiable op is covered."""
from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.mesh import LayoutRules
from meshir.registry import NOT_DIFFERENTIABLE, all_ops
from meshir.verifier import verify_module

from .grad_check import add_weighted_loss, directional_check, jax_gradients, reference_loss, rng_for, with_gradients
from .op_samples import SAMPLES, S, Sample
from .spmd_matrix import MESHES, Program, program

MESH = MESHES[-1]  # 2x4: reshard and transfer samples pin layouts on both axes

# Samples the f32 matrix lacks: a float-to-float cast, stride and dilation in
# convolutions, pools over two dimensions with uneven padding, top_k with k = 1,
# layer_norm with a scale alone, over fewer dimensions than it normalizes.
EXTRA: dict[str, list[Sample]] = {
    "layer_norm": [S("x: f64[b=4, d=6]", "s: f64[d=6]", attrs="{dims = [b, d], epsilon = 0.1}")],
    "cast": [S("x: f32[a=4, b=3]", attrs="{dtype = f64}")],
    "conv1d": [S("x: f64[n=2, w=9, ci=3]", "k: f64[kw=3, ci=3, co=2]",
                 attrs="{spatial = [w], kernel_dims = [kw], in_channels = ci, out_channels = co, strides = [2], dilation = [2], padding = same}")],
    "conv2d": [S("x: f64[ci=2, h=5, n=2, w=6]", "k: f64[co=3, kw=2, ci=2, kh=3]",
                 attrs="{spatial = [h, w], kernel_dims = [kh, kw], in_channels = ci, out_channels = co, strides = [2, 3]}"),
               S("x: f64[n=2, h=5, w=4, ci=2]", "k: f64[kh=2, kw=2, ci=2, co=3]",
                 attrs="{spatial = [h, w], kernel_dims = [kh, kw], in_channels = ci, out_channels = co, padding = same}")],
    "max_pool": [S("x: f64[n=2, h=5, w=6]", attrs="{spatial = [h, w], window = [2, 3], strides = [2, 2], padding = same}")],
    "avg_pool": [S("x: f64[n=2, h=5, w=6]", attrs="{spatial = [h, w], window = [2, 3], strides = [2, 2], padding = same}")],
    "top_k": [S("x: f64[b=5, a=3]", attrs="{dim = b, k = 1}")],
}


def float64(sample: Sample) -> Sample:
    """The sample with every float type made f64 (integer and bool operands stay)."""
    def widen(text: str) -> str:
        return text.replace("f32", "f64").replace("bf16", "f64")

    return replace(sample, operands=tuple(widen(o) for o in sample.operands), attrs=widen(sample.attrs))


def differentiable(opdef) -> bool:
    return opdef.gradient_fn is not NOT_DIFFERENTIABLE and not opdef.local_only and opdef.min_operands > 0


def has_gradient_to_check(prog: Program) -> bool:
    """Some float operand and some float result: a gradient to check."""
    return any(t.dtype.is_float for _, t in prog.args) and any(t.dtype.is_float for t in prog.results)


@cache
def cases() -> dict[str, Program]:
    found = {}
    for opdef in all_ops():
        if not differentiable(opdef):
            continue
        samples = [float64(s) for s in SAMPLES.get(opdef.name, [])] + EXTRA.get(opdef.name, [])
        for index, sample in enumerate(samples):
            prog = program(opdef.name, index, sample)
            if has_gradient_to_check(prog):
                found[prog.name] = prog
    return found


CASES = sorted(cases())


@cache
def setup(name: str):
    """(forward module with the loss, inputs, float argument names, meshir's gradients)."""
    prog = cases()[name]
    module = prog.module(MESH, LayoutRules(()))
    function = module.function("f")
    operands = [a.name for a in function.args]
    weights = add_weighted_loss(module, function, rng_for(name))
    verify_module(module)
    inputs = {**prog.inputs(), **weights}
    wrt = [n for n in operands if inputs[n].dtype.kind == "f"]
    outputs = Interpreter(with_gradients(module, "f", wrt)).run("f", inputs)
    return module, inputs, wrt, {n: outputs[f"d_{n}"] for n in wrt}


def test_every_differentiable_op_has_a_case():
    covered = {prog.op for prog in cases().values()}
    missing = [op.name for op in all_ops() if differentiable(op) and op.name not in covered]
    assert not missing, f"no gradient case for {missing}"


# Its gradient is zero by definition, not by the function it computes (the identity).
ZERO_BY_DEFINITION = frozenset({"stop_gradient"})


@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_finite_differences(name):
    module, inputs, wrt, grads = setup(name)
    if cases()[name].op in ZERO_BY_DEFINITION:
        assert all(not np.any(g) for g in grads.values())
        return
    dtypes = {n: "f64" if inputs[n].dtype == np.float64 else "f32" for n in wrt}
    problems = directional_check(reference_loss(module, "f"), inputs, grads, rng_for(name + "/fd"), dtypes)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_jax(name):
    module, inputs, wrt, grads = setup(name)
    expected = jax_gradients(module, "f", inputs, wrt)
    for n in wrt:
        np.testing.assert_allclose(grads[n], expected[n], rtol=1e-9, atol=1e-9, err_msg=f"d loss / d {n}")


# Inputs drawn from {-1, 0, 1, 2}: ties for the extremes (maximum, minimum, reduce_max and
# reduce_min split the cotangent evenly among ties; max_pool and top_k send it to the
# first), zeros for the product. Ties are where finite differences do not apply;
# JAX makes the same choices.
EDGES: dict[str, Sample] = {
    "maximum": S("x: f64[a=3, b=4]", "y: f64[b=4]"),
    "minimum": S("x: f64[a=3, b=4]", "y: f64[b=4]"),
    "reduce_max": S("x: f64[a=3, b=4]", attrs="{dims = [b]}"),
    "reduce_min": S("x: f64[a=3, b=4]", attrs="{dims = [a, b]}"),
    "max_pool": S("x: f64[n=2, w=7]", attrs="{spatial = [w], window = [3], strides = [2], padding = same}"),
    "top_k": S("x: f64[a=3, b=5]", attrs="{dim = b, k = 3}"),
    "reduce_prod": S("x: f64[a=6, b=3]", attrs="{dims = [b]}"),
}


@pytest.mark.parametrize("op", list(EDGES))
def test_gradient_at_ties_and_zeros_matches_jax(op):
    prog = program(op, 0, EDGES[op])
    module = prog.module(MESH, LayoutRules(()))
    function = module.function("f")
    rng = rng_for(f"edges/{op}")
    inputs = {name: rng.integers(-1, 3, ttype.shape).astype(np.float64) for name, ttype in prog.args}
    wrt = list(inputs)
    inputs.update(add_weighted_loss(module, function, rng))
    verify_module(module)
    outputs = Interpreter(with_gradients(module, "f", wrt)).run("f", inputs)
    expected = jax_gradients(module, "f", inputs, wrt)
    for n in wrt:
        np.testing.assert_allclose(outputs[f"d_{n}"], expected[n], rtol=1e-12, atol=1e-12, err_msg=f"d loss / d {n}")


# --- collectives: gradients of local programs ----------------------------------------
# A local program's loss is the sum over devices of each device's loss; each device's
# operand is its own input. Finite differences run the numpy simulator of every device,
# jax.grad the XLA backend's shard_map of the local program.

LOCAL_MESH = "mesh @m = <rows=2, cols=4>"
X = "x: f64[a=4, b=8]"
LOCAL: dict[str, list[Sample]] = {
    "all_reduce": [S(X, attrs="{axes = [cols], reduce = sum}"), S(X, attrs="{axes = [rows, cols], reduce = max}"),
                   S(X, attrs="{axes = [rows], reduce = min}"), S(X, attrs="{axes = [cols], reduce = prod}")],
    "all_gather": [S(X, attrs="{dim = b, axes = [cols]}"), S(X, attrs="{dim = a, axes = [rows, cols]}")],
    "reduce_scatter": [S(X, attrs="{dim = b, axes = [cols], reduce = sum}"),
                       S(X, attrs="{dim = b, axes = [rows, cols], reduce = max}"),
                       S(X, attrs="{dim = a, axes = [rows], reduce = prod}")],
    "all_to_all": [S(X, attrs="{split_dim = b, concat_dim = a, axes = [cols]}")],
    "collective_permute": [S(X, attrs="{axis = cols, shift = 1}"), S(X, attrs="{axis = rows, shift = -1, wrap = true}")],
    "all_slice": [S(X, attrs="{dim = b, axes = [cols]}"), S(X, attrs="{dim = b, axes = [cols, rows]}")],
    # Offsets past either end are clamped.
    "dynamic_slice": [S(X, "o: i32[]", attrs="{dim = b, size = 3}", bounds={"o": (-3, 10)})],
}
LOCAL_CASES = {f"{op}[{i}]": (op, sample) for op, samples in LOCAL.items() for i, sample in enumerate(samples)}
# JAX has no differentiation rule for pmax and pmin: those cases check against finite differences only.
JAX_CASES = [name for name, (_, sample) in LOCAL_CASES.items()
             if "reduce = max" not in sample.attrs and "reduce = min" not in sample.attrs]


def test_every_differentiable_collective_has_a_case():
    missing = [op.name for op in all_ops() if op.local_only and op.gradient_fn is not NOT_DIFFERENTIABLE and op.name not in LOCAL]
    assert not missing, f"no gradient case for {missing}"


@cache
def local_setup(name: str):
    """(forward module, stacked per-device inputs, meshir's gradients stacked per device)."""
    op, sample = LOCAL_CASES[name]
    operands = ", ".join(f"%{o}" for o in sample.operands)
    text = "\n".join([LOCAL_MESH, f"func @f({operands}) -> () attributes {{spmd = @m}} {{",
                      f"  %r = {op}({', '.join('%' + o.split(':')[0] for o in sample.operands)}) {sample.attrs}", "  return", "}", ""])
    module = parse_module(text)
    function = module.function("f")
    function.returns, function.result_types = [function.ops[0].result], [function.ops[0].result.type]
    rng = rng_for(name)
    inputs = {}
    for arg in function.args:
        if arg.type.dtype.is_float:
            inputs[arg.name] = rng.standard_normal((8, *arg.type.shape))
        else:
            inputs[arg.name] = rng.integers(*sample.bounds[arg.name], (8, *arg.type.shape)).astype(np.int32)
    wrt = [a.name for a in function.args if a.type.dtype.is_float]
    weights = add_weighted_loss(module, function, rng)
    inputs.update({k: np.stack([v * (d + 1) for d in range(8)]) for k, v in weights.items()})  # a weight per device
    verify_module(module)
    outputs = Interpreter(with_gradients(module, "f", wrt)).run_local("f", per_device(inputs))
    return module, inputs, wrt, {n: np.stack(outputs[f"d_{n}"]) for n in wrt}


def per_device(stacked: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    return {k: list(v) for k, v in stacked.items()}


@pytest.mark.parametrize("name", list(LOCAL_CASES))
def test_collective_gradient_matches_finite_differences(name):
    module, inputs, wrt, grads = local_setup(name)
    interpreter = Interpreter(module)

    def loss(stacked: dict[str, np.ndarray]) -> float:
        return float(np.sum(interpreter.run_local("f", per_device(stacked))["loss"]))

    problems = directional_check(loss, inputs, grads, rng_for(name + "/fd"), dict.fromkeys(wrt, "f64"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", JAX_CASES)
def test_collective_gradient_matches_jax(name):
    import jax
    import jax.numpy as jnp

    from meshir.backends.xla import compile_local
    from meshir.backends.xla.compile import x64

    module, inputs, wrt, grads = local_setup(name)
    program = compile_local(module, "f", per_device=True)

    def total(differentiated: dict) -> jax.Array:
        outputs, _ = program.jitted({**inputs, **differentiated}, {})
        return jnp.sum(outputs["loss"])

    with x64():
        expected = jax.grad(total)({n: inputs[n] for n in wrt})
    for n in wrt:
        np.testing.assert_allclose(grads[n], np.asarray(expected[n]), rtol=1e-9, atol=1e-9, err_msg=f"d loss / d {n}")
