"""The TF backend's op rules against the numpy references, edge cases included
(NaN, infinities, -0.0, empty dimensions, ties, out-of-range indices, 16-bit
floats, unsigned and 64-bit integers): the XLA backend's batched cases
(tests/test_xla_backend.py), each group as one global function in one plain TF
graph, compared with the reference interpreter within the dtype's tolerance."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from meshir.frontends.builder import ModuleBuilder, bf16, f32, i32
from meshir.interpreter import Interpreter

from .test_xla_backend import GROUPS, assert_matches, build, random_cases

from meshir.backends.tf import compile_program  # isort: skip  (imports TF lazily)


@pytest.mark.parametrize("group", GROUPS)
def test_rules_match_the_references(group):
    module, inputs, labels = build(GROUPS[group]())
    want = Interpreter(module).run("f", inputs)
    got, _ = compile_program(module, "f").run(inputs)
    assert list(got) == list(want)
    for label, name, value in zip(labels, want, module.function("f").returns):
        assert_matches(got[name], want[name], value.type, label)


def test_random_uniform_and_dropout_are_bit_exact():
    module, inputs, labels = build(random_cases())
    want = Interpreter(module).run("f", inputs)
    got, _ = compile_program(module, "f").run(inputs)
    for label, name in zip(labels, want):
        if "random_normal" not in label:
            np.testing.assert_array_equal(got[name], want[name], err_msg=label)


def test_state_ops_read_assign_and_assign_add():
    mb = ModuleBuilder()
    mb.var("w", f32(a=3), "uniform", seed=1)
    mb.var("h", bf16(a=3), "uniform", seed=2)
    mb.var("k", i32(a=3), "constant", value=5)
    mb.var("unused", f32(a=2), "zeros")
    with mb.function("f", x=f32(a=3), y=bf16(a=3), n=i32(a=3)) as f:
        before = f.read("w")
        f.assign_add("w", f.arg("x"))
        f.assign_add("h", f.arg("y"))
        after = f.read("w")
        f.assign("k", f.arg("n"))
        f.assign_add("k", f.arg("n"))
        f.ret(before, after, f.read("k"))
    module = mb.build()
    inputs = {"x": np.array([1.0, -2.0, 0.5], np.float32), "y": np.array([0.1, 0.2, 0.3], ml_dtypes.bfloat16),
              "n": np.array([1, -2, 3], np.int32)}
    interpreter = Interpreter(module)
    want = interpreter.run("f", inputs)
    program = compile_program(module, "f")
    got, state = program.run(inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert sorted(state) == ["h", "k", "w"]
    for name, value in state.items():
        np.testing.assert_array_equal(value, interpreter.state[name])
    # Given variables win over initializers; a given variable the function does not use passes through.
    given = {"w": np.zeros(3, np.float32), "unused": np.ones(2, np.float32)}
    _, state = program.run(inputs, given)
    np.testing.assert_array_equal(state["w"], inputs["x"])
    np.testing.assert_array_equal(state["unused"], given["unused"])
