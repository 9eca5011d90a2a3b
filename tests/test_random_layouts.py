"""Random ops are layout-invariant end to end: the reference, a 1-device mesh and
a 2x4 mesh under three layouts draw the same tensors on the XLA backend."""
import numpy as np
import pytest

from meshir.backends.xla import compile_local
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.tools.common import apply_overrides

MODEL = """mesh @m = <rows=2, cols=4>
var @w : f32[a=16, b=8] = normal(stddev=0.5, seed=9)
func @draw(%x: f32[a=16, b=8], %step: i32[]) -> (f32[a=16, b=8], f32[a=16, b=8], f32[a=16, b=8], f32[a=16, b=8])
    attributes {mesh = @m} {
  %u = random_uniform(%step) {shape = [a=16, b=8], seed = 3, minval = -1.0, maxval = 2.0}
  %n = random_normal(%step) {shape = [a=16, b=8], seed = 4}
  %d = dropout(%x, %step) {rate = 0.25, seed = 5}
  %w = read @w
  return %u, %n, %d, %w
}
"""
LAYOUTS = [("x:1", ""), ("rows:2,cols:4", "a:rows,b:cols"), ("rows:2,cols:4", "a:(rows,cols)"), ("rows:2,cols:4", "b:rows,a:cols")]


def run_xla(mesh: str, layout: str, inputs: dict) -> dict:
    module = parse_module(MODEL)
    apply_overrides(module, mesh, layout or None)
    PassManager(parse_pipeline("layout,spmd")).run(module)
    outputs, _ = compile_local(module, "draw").run(inputs)
    return outputs


def test_draws_are_identical_on_every_mesh_and_layout():
    inputs = {"x": np.ones((16, 8), np.float32), "step": np.array(7, np.int32)}
    reference = Interpreter(parse_module(MODEL)).run("draw", inputs)
    runs = [run_xla(mesh, layout, inputs) for mesh, layout in LAYOUTS]
    for outputs in runs[1:]:
        for name in ("u", "n", "d", "w"):
            np.testing.assert_array_equal(outputs[name], runs[0][name], err_msg=name)
    for name in ("u", "d"):
        np.testing.assert_array_equal(runs[0][name], reference[name], err_msg=name)
    for name in ("n", "w"):
        np.testing.assert_allclose(runs[0][name], reference[name], rtol=1e-6, atol=1e-6, err_msg=name)
    kept = runs[0]["d"] != 0
    assert 0.6 < kept.mean() < 0.9
    np.testing.assert_allclose(runs[0]["d"][kept], 1 / 0.75)


@pytest.mark.parametrize("step", [0, 1])
def test_the_step_operand_changes_the_draw(step):
    inputs = {"x": np.ones((16, 8), np.float32), "step": np.array(step, np.int32)}
    other = {"x": inputs["x"], "step": np.array(step + 1, np.int32)}
    a, b = run_xla(*LAYOUTS[1], inputs), run_xla(*LAYOUTS[1], other)
    assert not np.array_equal(a["u"], b["u"])
