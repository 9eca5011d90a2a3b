"""The TF backend's op rules against the numpy references, edge cases included
(NaN, infinities, -0.0, empty dimensions, ties, out-of-range indices, 16-bit
floats, unsigned and 64-bit integers): the XLA backend's batched cases
(tests/test_xla_backend.py), each group as one global function in one plain TF
graph, compared with the reference interpreter within the dtype's tolerance."""
from __future__ import annotations

import pytest

from meshir.interpreter import Interpreter

from .test_xla_backend import GROUPS, assert_matches, build, check_random_ops_are_bit_exact, check_state_ops

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
    check_random_ops_are_bit_exact(compile_program)


def test_state_ops_read_assign_and_assign_add():
    check_state_ops(compile_program)
