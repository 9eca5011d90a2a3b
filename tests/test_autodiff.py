"""The `autodiff` pass: its output convention, its errors, the examples' gradients
against finite differences and jax.grad, and gradients through `layout,spmd`."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from meshir.diagnostics import FlagError, MeshirError
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, random_inputs
from meshir.ir import Module
from meshir.passes.base import COLLECTIVE_BYTES
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.verifier import verify_module

from .grad_check import add_weighted_loss, directional_check, jax_gradients, rng_for
from .spmd_check import partition, simulate_and_compare

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_passes(module: Module, pipeline: str) -> Module:
    PassManager(parse_pipeline(pipeline)).run(module)
    return module


# --- the output convention ------------------------------------------------------------

SMALL = """
var @w : f64[a=3] = normal(seed=1)
var @v : f64[a=3] = normal(seed=2)
var @frozen : f64[a=3] = normal(seed=3) {trainable = false}
var @unused : f64[b=2] = ones
var @ln.scale : f64[a=3] = ones

func @f(%x: f64[a=3]) -> (f64[], f64[a=3]) {
  %w1 = read @w
  %w2 = read @w
  %square = mul(%w1, %w2)
  %frozen = read @frozen
  %weighted = mul(%square, %frozen)
  %v = read @v
  %vx = mul(%v, %x)
  %sum = add(%weighted, %vx)
  %s = read @ln.scale
  %scaled = mul(%sum, %s)
  %loss = reduce_sum(%scaled) {dims = [a]}
  return %loss, %x
}
"""


def small(wrt: str = "") -> tuple[Module, dict[str, np.ndarray]]:
    module = parse_module(SMALL)
    run_passes(module, f'autodiff{{wrt="{wrt}"}}' if wrt else "autodiff")
    return module, Interpreter(module).run("f", {"x": np.array([1.0, -2.0, 0.5])})


def test_default_wrt_is_every_trainable_variable_read_in_declaration_order():
    module, out = small()
    function = module.function("f")
    assert [v.name for v in function.returns] == ["loss", "grad_w", "grad_v", "grad_ln.scale"]
    assert [ref.name for ref in function.attributes["gradients"]] == ["w", "v", "ln.scale"]
    assert function.result_types == [v.type for v in function.returns]
    state = Interpreter(module).state
    w, v, frozen, scale, x = state["w"], state["v"], state["frozen"], state["ln.scale"], np.array([1.0, -2.0, 0.5])
    # loss = sum((w * w * frozen + v * x) * scale): the two reads of @w accumulate.
    np.testing.assert_allclose(out["grad_w"], 2 * w * frozen * scale)
    np.testing.assert_allclose(out["grad_v"], x * scale)
    np.testing.assert_allclose(out["grad_ln.scale"], w * w * frozen + v * x)


def test_wrt_picks_and_orders_variables_and_unused_ones_get_zeros():
    module, out = small("unused, @frozen")
    assert [v.name for v in module.function("f").returns] == ["loss", "grad_unused", "grad_frozen"]
    np.testing.assert_array_equal(out["grad_unused"], np.zeros(2))
    state = Interpreter(module).state
    np.testing.assert_allclose(out["grad_frozen"], state["w"] ** 2 * state["ln.scale"])


def test_output_prints_parses_and_keeps_dotted_gradient_names():
    module, _ = small()
    text = print_module(module)
    assert "%grad_ln.scale" in text and "gradients = [@w, @v, @ln.scale]" in text
    assert print_module(parse_module(text)) == text


def test_the_gradient_of_a_variable_read_only_as_the_loss_is_a_named_copy():
    module = parse_module("var @a : f32[] = ones\nvar @b : f32[] = ones\n"
                          "func @f() -> f32[] {\n  %a = read @a\n  %b = read @b\n  %loss = add(%a, %b)\n  return %loss\n}\n")
    run_passes(module, "autodiff")
    out = Interpreter(module).run("f")
    assert list(out) == ["loss", "grad_a", "grad_b"]
    assert out["grad_a"] == 1.0 and out["grad_b"] == 1.0


def test_an_operand_used_twice_by_one_op_gets_both_contributions():
    module = parse_module("var @w : f64[a=3] = normal(seed=1)\nfunc @f() -> f64[] {\n  %w = read @w\n"
                          "  %loss = einsum(%w, %w) {output = []}\n  return %loss\n}\n")
    run_passes(module, "autodiff")
    interpreter = Interpreter(module)
    np.testing.assert_allclose(interpreter.run("f")["grad_w"], 2 * interpreter.state["w"])


def test_autodiff_then_dce_removes_forward_ops_the_gradients_do_not_need():
    text = """
    var @w : f32[a=3] = ones
    func @f(%x: f32[a=3]) -> f32[] {
      %w = read @w
      %unused = exp(%x)
      %p = mul(%w, %x)
      %loss = reduce_sum(%p) {dims = [a]}
      return %loss
    }
    """
    module = run_passes(parse_module(text), "autodiff")
    assert "exp" in [op.name for op in module.function("f").ops]  # left for dce
    run_passes(module, "dce")
    assert "exp" not in [op.name for op in module.function("f").ops]


@pytest.mark.parametrize("text,message", [
    ("func @f(%x: f32[a=2]) -> f32[a=2] {\n  return %x\n}\n", "must return a scalar float loss (such as f32[]) as its first result, but it returns f32[a=2]"),
    ("func @f(%x: i32[]) -> i32[] {\n  return %x\n}\n", "but it returns i32[]"),
    ("func @f() -> () {\n  return\n}\n", "but it returns nothing"),
])
def test_a_function_without_a_scalar_float_loss_is_an_error_at_its_return(text, message):
    module = parse_module(text, "loss.mir")
    with pytest.raises(MeshirError) as error:
        run_passes(module, "autodiff")
    assert message in error.value.message
    assert error.value.loc is not None and error.value.loc.line == 2


def test_wrt_naming_an_unknown_variable_is_a_flag_error():
    module = parse_module(SMALL)
    with pytest.raises(FlagError, match=r"wrt names @nope, which the module does not declare \(variables: @w, @v, "):
        run_passes(module, 'autodiff{wrt="w,nope"}')


def test_wrt_naming_an_integer_variable_is_an_error():
    module = parse_module("var @n : i32[] = zeros\nfunc @f(%x: f32[]) -> f32[] {\n  %n = read @n\n  return %x\n}\n")
    with pytest.raises(MeshirError, match="variable @n is i32\\[\\]; only float variables have gradients"):
        run_passes(module, "autodiff{wrt=n}")


def test_local_functions_and_second_runs_are_refused():
    module, _ = small()
    with pytest.raises(MeshirError, match="already returns gradients"):
        run_passes(module, "autodiff")
    local = run_passes(parse_module((EXAMPLES / "mlp.mir").read_text()), "layout,spmd")
    with pytest.raises(MeshirError, match="is a local \\(spmd\\) function; differentiate the global function"):
        run_passes(local, "autodiff{func=loss}")


def test_an_op_without_a_gradient_rule_is_named():
    from meshir.registry import lookup

    relu = lookup("relu")
    saved, relu.gradient_fn = relu.gradient_fn, None
    try:
        module = parse_module("var @w : f32[a=2] = ones\nfunc @f() -> f32[] {\n  %w = read @w\n  %r = relu(%w)\n"
                              "  %loss = reduce_sum(%r) {dims = [a]}\n  return %loss\n}\n", "f.mir")
        with pytest.raises(MeshirError, match="autodiff: relu has no gradient rule") as error:
            run_passes(module, "autodiff")
        assert error.value.loc.line == 4
    finally:
        relu.gradient_fn = saved


# --- the examples, in float64, against finite differences and jax.grad ----------------


def float64_module(path: str) -> Module:
    return parse_module((EXAMPLES / path).read_text().replace("f32", "f64"), path)


def block_with_loss() -> tuple[Module, dict[str, np.ndarray]]:
    """The transformer block with loss = sum(out * w0), and its inputs."""
    module = float64_module("transformer_block.mir")
    function = module.function("block")
    inputs = random_inputs(function, seed=3)
    inputs.update(add_weighted_loss(module, function, rng_for("block")))
    verify_module(module)
    return module, inputs


def mlp_with_inputs() -> tuple[Module, dict[str, np.ndarray]]:
    module = float64_module("mlp.mir")
    return module, random_inputs(module.function("loss"), seed=3)


MODELS = {"mlp": (mlp_with_inputs, "loss"), "transformer_block": (block_with_loss, "block")}


@pytest.mark.parametrize("model", list(MODELS))
def test_example_gradients_match_jax_and_finite_differences(model):
    build, name = MODELS[model]
    forward, inputs = build()
    differentiated = run_passes(parse_module(print_module(forward)), "autodiff")
    variables = [ref.name for ref in differentiated.function(name).attributes["gradients"]]
    assert variables == list(forward.variables)  # all trainable and read
    interpreter = Interpreter(forward)
    state = dict(interpreter.state)
    out = Interpreter(differentiated, state).run(name, inputs)
    grads = {v: out[f"grad_{v}"] for v in variables}

    expected = jax_gradients(forward, name, inputs, [], variables=state, wrt_variables=variables)
    for v in variables:
        np.testing.assert_allclose(grads[v], expected[f"@{v}"], rtol=1e-8, atol=1e-10, err_msg=f"grad_{v}")

    def loss(point: dict[str, np.ndarray]) -> float:
        return float(Interpreter(forward, point).run(name, inputs)["loss"])

    problems = directional_check(loss, state, grads, rng_for(f"{model}/fd"), dict.fromkeys(variables, "f64"),
                                 directions=1, step=1e-8)
    assert not problems, "\n".join(problems)


# --- through layout,spmd on a 2x4 mesh --------------------------------------------------

LAYOUTS = {
    "data": "batch:rows",
    "model": "hidden:cols,heads:cols",
    "data+model": "batch:rows,hidden:cols,heads:cols",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model", list(MODELS))
def test_partitioned_gradients_match_the_global_ones(model, layout):
    build, _ = MODELS[model]
    forward, inputs = build()
    run_passes(forward, "autodiff")
    simulate_and_compare(*partition(forward, "rows:2,cols:4", LAYOUTS[layout]), inputs=inputs, rtol=1e-9, atol=1e-9)


def gradient_producers(layout: str) -> tuple[dict[str, str], Counter]:
    """The MLP's train gradients partitioned under `layout` on a 2x4 mesh: the op making
    each returned gradient, with its axes if a collective, and every collective by axes."""
    module = run_passes(parse_module((EXAMPLES / "mlp.mir").read_text()), "autodiff")
    _, local = partition(module, "rows:2,cols:4", layout)
    function = local.function("loss")

    def describe(op) -> str:
        return f"{op.name}[{','.join(op.attributes['axes'])}]" if "axes" in op.attributes else op.name

    producers = {value.name: describe(value.owner) for value in function.returns[1:]}
    collectives = Counter(describe(op) for op in function.ops if op.name in COLLECTIVE_BYTES)
    return producers, collectives


def test_data_parallel_gradients_are_all_reduced_over_the_batch_axis_and_nothing_else():
    producers, collectives = gradient_producers("batch:rows")
    assert producers == dict.fromkeys(["grad_w1", "grad_b1", "grad_w2"], "all_reduce[rows]")
    # One all_reduce per gradient and one for the loss: no activation moves.
    assert collectives == Counter({"all_reduce[rows]": 4})


def test_model_parallel_gradients_stay_local_and_activations_communicate():
    producers, collectives = gradient_producers("hidden:cols")
    assert not any(p.split("[")[0] in COLLECTIVE_BYTES for p in producers.values()), producers
    # The logits' partial sums over the split hidden units; the loss needs no collective.
    assert collectives == Counter({"all_reduce[cols]": 1})
