"""Pipeline parallelism (frontends/builder/pipeline.py): a GPipe pipeline over
the stages of a mesh axis equals the stacked layers applied one after another
(numpy, the whole batch at once); partitioned, each device holds one stage's
weights and passes activations on by collective_permute, forward and back;
examples/pipeline_mlp.py trains the same on XLA as on the reference."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshir.diagnostics import MeshirError
from meshir.frontends.builder import FunctionBuilder, ModuleBuilder, Tensor, f32, pipelined
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.types import Dim

from .spmd_check import partition, simulate_and_compare
from .training import recorded_training

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BATCH, FEATURES = 8, 4


def residual_tanh(f: FunctionBuilder, h: Tensor) -> Tensor:
    z = f.einsum(h, f.read("w"), output=[*h.names[:-1], "out"])
    return h + f.tanh(f.rename(z, from_="out", to="features") + f.read("b"))


def pipeline_module(stages: int, microbatches: int, mesh: dict | None = None, layout: dict | None = None):
    mb = ModuleBuilder()
    if mesh:
        mb.mesh("m", **mesh)
    mb.var("w", f32(stage=stages, features=FEATURES, out=FEATURES), "normal", stddev=0.5, seed=1)
    mb.var("b", f32(stage=stages, features=FEATURES), "normal", stddev=0.5, seed=2)
    placement = {"mesh": "m", "layout": layout} if mesh else {}
    with mb.function("f", x=f32(batch=BATCH, features=FEATURES), **placement) as f:
        f.ret(pipelined(f, f.arg("x"), residual_tanh, stages=Dim("stage", stages), batch="batch",
                        microbatches=microbatches))
    return parse_module(print_module(mb.build()))  # the names a partitioned copy gets


def sequential(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The stages' layers one after another on the whole batch."""
    h = x.astype(np.float64)
    for stage in range(w.shape[0]):
        h = h + np.tanh(h @ w[stage] + b[stage])
    return h


@pytest.mark.parametrize("stages,microbatches", [(1, 1), (2, 4), (4, 1), (4, 2), (4, 8), (3, 4)])
def test_the_pipeline_equals_the_layers_applied_in_turn(stages, microbatches):
    module = pipeline_module(stages, microbatches)
    interpreter = Interpreter(module)
    x = np.random.default_rng(0).standard_normal((BATCH, FEATURES)).astype(np.float32)
    (out,) = interpreter.run("f", {"x": x}).values()
    expected = sequential(x, interpreter.state["w"], interpreter.state["b"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh,layout", [({"pipe": 4}, {"stage": "pipe"}),
                                         ({"rows": 2, "cols": 4}, {"batch": "rows", "stage": "cols"})],
                         ids=["pipe4", "data2-pipe4"])
def test_partitioned_each_device_holds_one_stage_and_sends_activations_on(mesh, layout):
    stages, microbatches = 4, 2
    module = pipeline_module(stages, microbatches, mesh, layout)
    local = simulate_and_compare(*partition(module))
    axis = layout["stage"]
    sends = [op for op in local.ops if op.name == "collective_permute"]
    # One send per tick but the last, each to the next device along the stage axis.
    assert len(sends) == microbatches + stages - 2
    assert all(op.attributes["axis"] == axis and op.attributes["shift"] == 1 for op in sends)
    assert not any(op.name in ("all_gather", "all_to_all") for op in local.ops)
    weights = [op.results[0].type for op in local.ops if op.name == "read"]
    assert weights and all(t.size_of("stage") == 1 for t in weights)
    # The outputs leave the last stage once, summed over the stage axis.
    assert [op.attributes["axes"] for op in local.ops if op.name == "all_reduce"] == [(axis,)]


def test_the_backward_pipeline_sends_gradients_back():
    """Each forward send to the next stage has a backward send to the previous one."""
    mb = ModuleBuilder()
    mb.mesh("m", pipe=4)
    mb.var("w", f32(stage=4, features=FEATURES, out=FEATURES), "normal", stddev=0.5, seed=1)
    mb.var("b", f32(stage=4, features=FEATURES), "normal", stddev=0.5, seed=2)
    with mb.function("loss", x=f32(batch=BATCH, features=FEATURES), mesh="m", layout={"stage": "pipe"}) as f:
        y = pipelined(f, f.arg("x"), residual_tanh, stages=Dim("stage", 4), batch="batch", microbatches=2)
        f.ret(f.reduce_sum(f.square(y), dims=["batch", "features"], name="loss"))
    module = parse_module(print_module(mb.build()))
    PassManager(parse_pipeline("autodiff{func=loss}")).run(module)
    local = simulate_and_compare(*partition(module))
    shifts = sorted(op.attributes["shift"] for op in local.ops if op.name == "collective_permute")
    assert shifts == [-1] * 4 + [1] * 4


def test_pipeline_example_trains_the_same_on_xla_as_on_the_reference(tmp_path, digits):
    mir = tmp_path / "pipe.mir"
    mir.write_text(subprocess.run([sys.executable, str(EXAMPLES / "pipeline_mlp.py")], capture_output=True, text=True,
                                  check=True).stdout)
    common = [str(mir), "--train", "--data", digits, "--steps", "5", "--lr", "0.01", "--devices", "8"]
    xla = recorded_training(common + ["--backend", "xla"]).losses
    reference = recorded_training(common + ["--backend", "reference"]).losses
    assert len(xla) == 5 and xla[-1] < xla[0]
    np.testing.assert_allclose(xla, reference, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("batch,microbatches,message", [
    ("batch", 3, "microbatches = 3 must divide batch = 8"),
    ("rows", 2, "has no dimension 'rows'"),
])
def test_bad_pipeline_arguments_are_errors(batch, microbatches, message):
    mb = ModuleBuilder()
    mb.var("w", f32(stage=2, features=FEATURES, out=FEATURES), "zeros")
    mb.var("b", f32(stage=2, features=FEATURES), "zeros")
    with mb.function("f", x=f32(batch=BATCH, features=FEATURES)) as f:
        with pytest.raises(MeshirError, match=message):
            pipelined(f, f.arg("x"), residual_tanh, stages=Dim("stage", 2), batch=batch, microbatches=microbatches)


def test_a_layer_that_changes_the_type_is_an_error():
    mb = ModuleBuilder()
    with mb.function("f", x=f32(batch=BATCH, features=FEATURES)) as f:
        with pytest.raises(MeshirError, match="layer must return"):
            pipelined(f, f.arg("x"), lambda f, h: f.reduce_sum(h, dims=["features"]), stages=Dim("stage", 2),
                      batch="batch", microbatches=2)
