"""Mixed-precision variables (Mesh TensorFlow's master, slice and activation
dtypes): devices store the slice dtype, `read` yields the activation dtype,
gradients and optimizer math use the master dtype; the reference, XLA and
TensorFlow backends agree, on one device and split."""
from __future__ import annotations

import argparse

import ml_dtypes
import numpy as np
import pytest

from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.passes.pipeline import PassManager, parse_pipeline

MIXED = """
mesh @m = <rows=2, cols=4>
layout @dp_mp = {batch: rows, hidden: cols}

var @w1 : f32[pixels=16, hidden=8] = glorot_uniform(seed=1) {slice_dtype = bf16}
var @b1 : f32[hidden=8] = zeros
var @w2 : f32[hidden=8, classes=4] = glorot_uniform(seed=2) {activation_dtype = bf16}

func @loss(%x: f32[batch=8, pixels=16], %y: i32[batch=8]) -> f32[]
    attributes {mesh = @m, layout = @dp_mp} {
  %w1 = read @w1
  %b1 = read @b1
  %h = einsum(%x, %w1) {output = [batch, hidden]}
  %hb = add(%h, %b1)
  %a = relu(%hb)
  %a16 = cast(%a) {dtype = bf16}
  %w2 = read @w2
  %z16 = einsum(%a16, %w2) {output = [batch, classes]}
  %z = cast(%z16) {dtype = f32}
  %onehot = one_hot(%y) {dim = classes=4}
  %ce = softmax_cross_entropy(%z, %onehot) {dim = classes}
  %loss = reduce_mean(%ce) {dims = [batch]}
  return %loss
}
"""

BF16 = np.dtype(ml_dtypes.bfloat16)


def module(text: str = MIXED):
    return parse_module(text, "mixed.mir")


def batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(8, 16)).astype(np.float32), "y": rng.integers(0, 4, size=8).astype(np.int32)}


def test_state_is_stored_in_the_slice_dtype_and_read_in_the_activation_dtype():
    m = module()
    interpreter = Interpreter(m)
    assert interpreter.state["w1"].dtype == BF16 and interpreter.state["w2"].dtype == np.float32
    master = Interpreter(module(MIXED.replace(" {slice_dtype = bf16}", ""))).state["w1"]
    np.testing.assert_array_equal(interpreter.state["w1"], master.astype(BF16))
    function = m.functions["loss"]
    types = {op.results[0].name: op.results[0].type for op in function.ops if op.name == "read"}
    assert str(types["w1"]) == "f32[pixels=16, hidden=8]" and str(types["w2"]) == "bf16[hidden=8, classes=4]"


def train_step(optimizer: str = "adam") -> object:
    m = module()
    PassManager(parse_pipeline(f"autodiff{{func=loss}},optimizer{{kind={optimizer},lr=0.05}}")).run(m)
    return m


def test_gradients_are_in_the_master_dtype_and_the_optimizer_reads_it():
    m = module()
    PassManager(parse_pipeline("autodiff{func=loss}")).run(m)
    assert [str(v.type) for v in m.functions["loss"].returns[1:]] == ["f32[pixels=16, hidden=8]", "f32[hidden=8]", "f32[hidden=8, classes=4]"]
    m = train_step()
    reads = [op for op in m.functions["loss"].ops if op.name == "read" and op.attr("var").name == "w2"]
    assert sorted(str(op.results[0].type.dtype) for op in reads) == ["bf16", "f32"]
    assert {op.attr("var").name: str(op.operands[0].type.dtype) for op in m.functions["loss"].ops if op.name == "assign"}["w2"] == "f32"


def losses_and_state(runner, steps: int = 5) -> tuple[list[float], dict[str, np.ndarray]]:
    losses = [float(next(iter(runner("loss", batch(step)).values()))) for step in range(steps)]
    return losses, runner.state()


def test_reference_trains_and_keeps_the_slice_dtypes():
    from meshir.tools.runners import ReferenceRunner

    losses, state = losses_and_state(ReferenceRunner(train_step()))
    assert losses[-1] < losses[0]
    assert state["w1"].dtype == BF16 and state["w2"].dtype == np.float32 and state["w2.m"].dtype == np.float32


@pytest.mark.parametrize("backend", ["xla", "tf"])
@pytest.mark.parametrize("mesh,layout", [("x:1", "batch:x"), ("rows:2,cols:4", "batch:rows,hidden:cols")], ids=["one", "2x4"])
def test_backends_train_as_the_reference(backend, mesh, layout):
    """The partitioned train step on each backend follows the global reference:
    same losses and same stored slices (bf16 rounding of the same updates)."""
    from meshir.tools.common import apply_overrides
    from meshir.tools.compile import prepare
    from meshir.tools.runners import ReferenceRunner, make_runner

    reference_losses, reference_state = losses_and_state(ReferenceRunner(train_step()))
    m = train_step()
    apply_overrides(m, mesh, layout)
    args = argparse.Namespace(passes="layout,spmd", emit_mode="spmd", entry="loss", devices=8, tf_collectives="explicit")
    m, _ = prepare(m, args)
    losses, state = losses_and_state(make_runner(backend, m, args))
    np.testing.assert_allclose(losses, reference_losses, rtol=2e-3)
    for name, value in reference_state.items():
        assert state[name].dtype == value.dtype, name
        np.testing.assert_allclose(np.asarray(state[name], np.float32), np.asarray(value, np.float32), rtol=2e-2, atol=2e-3, err_msg=name)
