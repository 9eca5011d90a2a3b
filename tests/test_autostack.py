"""autostack (passes/autostack.py). What goes in and comes out: tests/golden/autostack.mir
(run by tests/test_golden.py). Here: the example programs give the same outputs on
the reference interpreter with and without it, and print and parse back; a stack
starts bit for bit from its members' initial values on the reference, xla and tf
backends; 20 train steps of examples/transformer_lm.mir on 8 devices give the same
losses; checkpoints saved with the pass restore without it and back (resumed runs
go on as if unbroken); the tf
backend runs a stacked train step; and on the 12-layer transformer's train step it
leaves fewer variables and local-program ops (the emitted HLO and GraphDef are
counted by tests/test_pass_counts.py)."""
from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training
from meshir.diagnostics import MeshirError
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, random_inputs
from meshir.ir import Module
from meshir.passes.autostack import checkpoint_entries
from meshir.passes.base import module_statistics
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools import checkpoint
from meshir.tools.common import apply_overrides

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
LM = str(EXAMPLES / "transformer_lm.mir")
PLAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd"
STACKED = "autostack," + PLAIN
STEPS = 20


def passed(text: str, pipeline: str) -> Module:
    module = parse_module(text)
    PassManager(parse_pipeline(pipeline)).run(module)
    return module


@pytest.mark.parametrize("example", ["mlp.mir", "transformer_block.mir", "transformer_lm.mir"])
def test_outputs_are_those_of_the_unstacked_program(example):
    text = (EXAMPLES / example).read_text()
    plain, stacked = parse_module(text), passed(text, "autostack")
    for function in plain.functions.values():
        inputs = random_inputs(function, seed=1)
        want = Interpreter(plain).run(function.name, inputs)
        got = Interpreter(stacked).run(function.name, inputs)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{example}: {name}")
    printed = print_module(stacked)
    assert print_module(parse_module(printed)) == printed


def test_transformer_lm_trains_one_gradient_and_one_update_per_stack():
    manager = PassManager(parse_pipeline("autostack,autodiff{func=loss}"), statistics=True, out=io.StringIO())
    module = parse_module(Path(LM).read_text())
    manager.run(module)
    # Six stacks: the 12 f32[model] norm scales, norm biases and second biases; the 6
    # query, key and value projections; each of wo, w1, b1, w2 of the 2 layers. The
    # embeddings and the unembedding stay alone.
    assert manager.records[0].counters == {"variables-before": 29, "variables-after": 9, "stacks": 6}
    gradients = [ref.name for ref in module.functions["loss"].attributes["gradients"]]
    assert gradients == [name for name, v in module.variables.items() if v.trainable]
    assert sum(name.startswith("stack") for name in gradients) == 6
    unstacks = [op for op in module.functions["loss"].ops if op.name == "unstack"]
    assert len(unstacks) == 6 and all(op.operands[0].owner.name == "read" for op in unstacks)


@pytest.mark.parametrize("declaration,message", [
    ("var @s : f32[k=3, n=4] = stack(parts=[[zeros], [ones]])", "2 parts for a variable f32[k=3, n=4], but its leading dimension is k=3"),
    ("var @s : f32[k=2, n=4] = stack(parts=[[zeros], [bogus]])", "'bogus' is not an initializer a part can have"),
    ("var @s : f32[k=2, n=4] = stack(parts=[[zeros], [normal, speed, 1]])", "part normal has no argument 'speed'"),
    ("var @s : f32[k=2, n=4] = stack(parts=[[zeros], [normal, seed, 1, stddev, -1.0]])", "stddev must be at least 0"),
    ("var @s : f32[k=2, n=4] = zeros {stacks = [@a]}", "variable @s stacks 1 variable but has leading dimension k=2"),
], ids=["count", "unknown-initializer", "unknown-argument", "bad-argument", "stacks-count"])
def test_stacked_declarations_are_verified(declaration, message):
    with pytest.raises(MeshirError, match=re.escape(message)):
        parse_module(declaration)


# One group per kind of initializer argument, and an integer and a bf16 group.
INITIAL = """
mesh @m = <rows=2, cols=4>
var @n : f32[a=4, b=8] = normal(mean=0.5, stddev=0.3, seed=3)
var @u : f32[a=4, b=8] = uniform(minval=-0.7, maxval=2.1, seed=4)
var @t : f32[a=4, b=8] = truncated_normal(stddev=2.0, seed=6)
var @gu : f32[a=4, b=8] = glorot_uniform(seed=7, fan_in=[a])
var @gn : f32[a=4, b=8] = glorot_normal(seed=8, fan_out=[a, b])
var @c : f32[a=4, b=8] = constant(value=-7.0)
var @z : f32[a=4, b=8] = zeros
var @o : f32[a=4, b=8] = ones
var @i1 : i32[a=4, b=8] = uniform(minval=-100.0, maxval=100.0, seed=5)
var @i2 : i32[a=4, b=8] = constant(value=3)
var @h1 : bf16[a=4, b=8] = normal(seed=9)
var @h2 : bf16[a=4, b=8] = glorot_normal(seed=10)
func @f() -> (f32[a=4, b=8], f32[a=4, b=8], f32[a=4, b=8], f32[a=4, b=8], f32[a=4, b=8], f32[a=4, b=8], f32[a=4, b=8],
              f32[a=4, b=8], i32[a=4, b=8], i32[a=4, b=8], bf16[a=4, b=8], bf16[a=4, b=8])
    attributes {mesh = @m} {
  %n = read @n
  %u = read @u
  %t = read @t
  %gu = read @gu
  %gn = read @gn
  %c = read @c
  %z = read @z
  %o = read @o
  %i1 = read @i1
  %i2 = read @i2
  %h1 = read @h1
  %h2 = read @h2
  return %n, %u, %t, %gu, %gn, %c, %z, %o, %i1, %i2, %h1, %h2
}
"""


def members_stacked(stacked: Module, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each stack's value made from its members' in `values`."""
    return {name: np.stack([values[m] for m in members]) for name, members in checkpoint_entries(stacked).items()}


def assert_same_bits(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.fixture(scope="module")
def initial() -> tuple[Module, Module]:
    plain, stacked = parse_module(INITIAL), passed(INITIAL, "autostack")
    assert [len(stacked.variables[s].attributes["stacks"]) for s in ("stack0", "stack1", "stack2")] == [8, 2, 2]
    return plain, stacked


def test_stacks_start_from_their_members_values_on_the_reference(initial):
    plain, stacked = initial
    assert_same_bits(Interpreter(stacked).state, members_stacked(stacked, Interpreter(plain).state))


def test_stacks_start_from_their_members_values_on_xla(initial):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from meshir.backends.xla.initializers import initial_values

    plain, stacked = initial
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("rows", "cols"))
    shardings = {name: NamedSharding(mesh, PartitionSpec("rows", None, "cols")) for name in stacked.variables}
    got = {name: np.asarray(value) for name, value in initial_values(stacked, shardings=shardings).items()}
    want = {name: np.asarray(value) for name, value in initial_values(plain).items()}
    assert_same_bits(got, members_stacked(stacked, want))


def test_stacks_start_from_their_members_values_on_tf(initial):
    from meshir.backends.tf import compile_program

    def started(module: Module) -> tuple[dict, dict]:
        # The stack dimensions split over rows, b over cols: each device draws its own block.
        apply_overrides(module, "rows:2,cols:4", "stack0:rows,stack1:rows,stack2:rows,b:cols")
        PassManager(parse_pipeline("layout,spmd")).run(module)
        return compile_program(module, "f").run({})

    plain, stacked = initial
    plain_outputs, plain_state = started(plain)
    stacked_outputs, stacked_state = started(stacked)
    assert_same_bits(stacked_outputs, plain_outputs)
    assert_same_bits(stacked_state, members_stacked(stacked, plain_state))


# --- training -------------------------------------------------------------------



def train(data: str, pipeline: str, steps: int, *flags: str, backend: str = "xla") -> list[float]:
    """The losses of the steps `meshir-run --train` runs."""
    argv = [LM, "--train", "--data", data, "--backend", backend, "--devices", "8", "--steps", str(steps),
            "--passes", pipeline, *flags]
    return recorded_training(argv).losses


@pytest.fixture(scope="module")
def plain_curve(patterns) -> list[float]:
    return train(patterns, PLAIN, STEPS)


def test_twenty_steps_give_the_losses_of_the_unstacked_model(patterns, plain_curve):
    stacked = train(patterns, STACKED, STEPS)
    assert len(stacked) == STEPS and stacked[-1] < stacked[0]
    np.testing.assert_allclose(stacked, plain_curve, rtol=1e-5, atol=1e-6)


def test_checkpoints_are_interchangeable(patterns, tmp_path):
    # On the reference backend, which runs the global train step: checkpoints hold global values.
    plain, stacked = "autodiff{func=loss},optimizer{kind=adam,lr=0.001}", "autostack,autodiff{func=loss},optimizer{kind=adam,lr=0.001}"
    unbroken = train(patterns, plain, 5, backend="reference")
    saved = {}
    for first, then in ((stacked, plain), (plain, stacked)):
        directory = str(tmp_path / first.split(",")[0])
        train(patterns, first, 3, "--checkpoint", directory, backend="reference")
        saved[first] = checkpoint.load(directory).values
        # The run resumes at step 3 from the other kind of checkpoint and goes on as if unbroken.
        resumed = train(patterns, then, 5, "--checkpoint", directory, backend="reference")
        np.testing.assert_allclose(resumed, unbroken[3:], rtol=1e-6)
    # Saved under the members' names (and their Adam slots'), with the same values.
    assert saved[stacked].keys() == saved[plain].keys() and {"l0.wq", "l1.wq.m", "l1.b2.v", "step"} <= saved[stacked].keys()
    for name, value in saved[plain].items():
        assert saved[stacked][name].dtype == value.dtype
        np.testing.assert_allclose(saved[stacked][name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_tf_backend_runs_a_stacked_train_step(patterns, plain_curve):
    losses = train(patterns, STACKED, 2, "--mesh", "x:1", "--layout", "batch:x", backend="tf")
    np.testing.assert_allclose(losses, plain_curve[:2], rtol=2e-4, atol=2e-5)


# --- counts ------------------------------------------------------------------


def deep_transformer(layers: int) -> Module:
    spec = importlib.util.spec_from_file_location("deep_transformer", EXAMPLES / "deep_transformer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.build(layers)


def test_twelve_layers_leave_fewer_variables_and_local_ops():
    plain, stacked = deep_transformer(12), deep_transformer(12)
    PassManager(parse_pipeline(PLAIN)).run(plain)
    PassManager(parse_pipeline(STACKED)).run(stacked)
    # Each stack holds one weight of every layer, with its Adam slots.
    assert len(stacked.variables) * 5 < len(plain.variables)
    assert module_statistics(stacked).ops < 0.8 * module_statistics(plain).ops
