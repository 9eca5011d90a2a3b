"""The TensorFlow port of meshir's counter-based generator against meshir/random.py
(bits, uniform and dropout masks bit for bit; normal to float32 rounding), the
global indices of a device's block, and variable initializers computed per
device slice against the reference initializers, on one device and 2x4 layouts."""
from __future__ import annotations

import numpy as np
import pytest

from meshir import random as reference
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, shard
from meshir.mesh import Mesh
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.tools.common import apply_overrides
from meshir.types import Dim

from meshir.backends.tf import compile_program  # isort: skip  (imports TF lazily)

SEEDS = [0, 12345, 2**32 + 5, 2**64 - 1]
STEPS = [0, 1, -1, 2**31 - 1, -(2**31)]
INDEX = np.concatenate([np.arange(1000, dtype=np.uint32), np.uint32(2**32 - 1) - np.arange(100, dtype=np.uint32)])


def run_graph(build):
    """Evaluate `build()` (a dict of tensors) in a fresh graph and session."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        fetches = build()
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetches)


def test_generator_matches_the_reference():
    import tensorflow as tf

    from meshir.backends.tf import random as tfrandom

    def build():
        index = tf.constant(INDEX)
        out = {}
        for seed in SEEDS:
            for step in STEPS:
                # A Python step folds into the key; an i32 tensor step is mixed in the graph.
                for kind, given in (("int", step), ("tensor", tf.constant(np.int32(step)))):
                    out[seed, step, kind, "bits"] = tfrandom.random_bits(seed, given, 7, index)
                    out[seed, step, kind, "uniform"] = tfrandom.uniform(seed, given, 0, index)
                    out[seed, step, kind, "normal"] = tfrandom.normal(seed, given, 1, index)
                    out[seed, step, kind, "keep"] = tfrandom.keep_mask(seed, given, 3, index, 1 / 3)
        return out

    for (seed, step, _, what), got in run_graph(build).items():
        step32 = np.int32(step)
        want = {
            "bits": lambda: reference.random_bits(seed, step32, 7, INDEX),
            "uniform": lambda: reference.uniform(seed, step32, 0, INDEX),
            "normal": lambda: reference.normal(seed, step32, 1, INDEX),
            "keep": lambda: reference.keep_mask(seed, step32, 3, INDEX, 1 / 3),
        }[what]()
        assert got.dtype == want.dtype
        if what == "normal":  # TF's log and cos round like numpy's only to float32 rounding
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{what} seed {seed} step {step}")


@pytest.mark.parametrize("global_shape,starts,local_shape", [
    ((16, 8), (8, 4), (8, 4)),
    ((2, 3, 4), (1, 0, 2), (1, 3, 2)),
    ((65536, 65536), (65535, 65534), (1, 2)),  # indices near 2**32
    ((4, 0, 3), (0, 0, 0), (4, 0, 3)),
])
def test_block_indices_are_global(global_shape, starts, local_shape):
    from meshir.backends.tf import random as tfrandom

    got = run_graph(lambda: tfrandom.linear_index(local_shape, global_shape, starts))
    np.testing.assert_array_equal(got, reference.index_of_block(global_shape, starts, local_shape))


def test_block_offsets_count_a_split_over_two_axes_first_axis_major():
    from meshir.backends.tf import random as tfrandom
    from meshir.mesh import ValueLayout

    mesh = Mesh("m", (Dim("rows", 2), Dim("cols", 4)))
    layout = ValueLayout((("cols", "rows"), ()))
    # Device 6 is rows=1, cols=2: position 2 * 2 + 1 = 5 of 8 along the first dimension.
    assert tfrandom.block_offsets(layout, mesh, 6, (2, 3)) == ([10, 0], (16, 3))


VARIABLES = """mesh @m = <rows=2, cols=4>
var @n : f32[a=16, b=8] = normal(mean=0.5, stddev=0.3, seed=3)
var @u : f64[a=16, b=8] = uniform(minval=-2.0, maxval=3.0, seed=4)
var @t : f32[a=32, b=8] = truncated_normal(stddev=2.0, seed=6)
var @gu : f32[a=16, b=8] = glorot_uniform(seed=7)
var @gn : bf16[a=16, b=8] = glorot_normal(seed=8, fan_in=[a])
var @i : i32[a=16, b=8] = uniform(minval=-100.0, maxval=100.0, seed=9)
var @c : u8[a=16] = constant(value=7)
var @z : bf16[b=8] = zeros
func @f() -> (f32[a=16, b=8], f64[a=16, b=8], f32[a=32, b=8], f32[a=16, b=8], bf16[a=16, b=8], i32[a=16, b=8], u8[a=16], bf16[b=8])
    attributes {mesh = @m} {
  %n = read @n
  %u = read @u
  %t = read @t
  %gu = read @gu
  %gn = read @gn
  %i = read @i
  %c = read @c
  %z = read @z
  return %n, %u, %t, %gu, %gn, %i, %c, %z
}
"""
# Drawn from uniform bits: exact; from normal draws: to TF's float32 rounding of log and cos.
EXACT = {"u", "gu", "i", "c", "z"}


@pytest.mark.parametrize("mesh,layout", [("x:1", None), ("rows:2,cols:4", "a:rows,b:cols"),
                                         ("rows:2,cols:4", "a:(cols,rows)"), ("rows:2,cols:4", "b:rows,a:cols")])
def test_variables_start_from_the_reference_initializers(mesh, layout):
    expected = Interpreter(parse_module(VARIABLES)).state
    module = parse_module(VARIABLES)
    apply_overrides(module, mesh, layout)
    PassManager(parse_pipeline("layout,spmd")).run(module)
    program = compile_program(module, "f")
    outputs, state = program.run({})
    for name, want in expected.items():
        for got in (outputs[name], state[name]):
            assert got.dtype == want.dtype
            if name in EXACT:
                np.testing.assert_array_equal(got, want, err_msg=name)
            else:
                np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-2 if name == "gn" else 1e-5,
                                           atol=1e-5, err_msg=name)
    if layout is not None:  # each slice is held where the layout puts it
        slices = next(v for v in program.variables if v.name == "gu")
        assert not slices.layout.is_replicated()
        blocks = shard(expected["gu"], slices.layout, program.mesh)
        with program.session() as session:
            session.run("init")
            for block, value in zip(blocks, session.run(slices.values)):
                np.testing.assert_array_equal(value, block)
