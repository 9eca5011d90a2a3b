"""Partition a module, simulate its local program on every device, and compare
with the global reference: the check the spmd tests share."""
from __future__ import annotations

import numpy as np

from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, random_inputs, shard, unshard
from meshir.ir import Function, Module
from meshir.passes.layout import without_trivial_axes
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools.common import apply_overrides


def partition(global_module: Module, mesh: str | None = None, layout: str | None = None) -> tuple[Module, Module]:
    """(the global module with the overrides applied, its partitioned copy)."""
    apply_overrides(global_module, mesh, layout)
    local_module = parse_module(print_module(global_module))
    PassManager(parse_pipeline("layout,spmd")).run(local_module)
    return global_module, local_module


def simulate_and_compare(global_module: Module, local_module: Module, inputs: dict | None = None,
                         rtol: float = 2e-5, atol: float = 2e-5) -> Function:
    """Assert that the simulated local program equals the reference; return the local function."""
    function = next(iter(global_module.functions.values()))
    local = local_module.functions[function.name]
    mesh = local_module.mesh_of(local)
    rules = local_module.layout_of(local)

    def layout_of(ttype):
        return without_trivial_axes(rules.layout_of(ttype), mesh)

    inputs = inputs if inputs is not None else random_inputs(function, seed=1)
    expected = Interpreter(global_module).run(function.name, inputs)
    local_inputs = {a.name: shard(inputs[a.name], layout_of(a.type), mesh) for a in function.args}
    outputs = Interpreter(local_module).run_local(local.name, local_inputs)
    for (key, slices), value in zip(outputs.items(), function.returns):
        np.testing.assert_allclose(unshard(slices, layout_of(value.type), mesh), expected[key], rtol=rtol, atol=atol, err_msg=key)
    return local


def check_text(text: str, mesh: str, layout: str, **tolerance) -> Function:
    return simulate_and_compare(*partition(parse_module(text), mesh, layout), **tolerance)
