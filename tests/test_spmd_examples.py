"""The examples, partitioned under data-parallel, model-parallel and mixed
layouts and simulated on every device, equal the global reference; and the work
is really split (per-device shapes shrink, the expected collectives appear)."""
from pathlib import Path

import numpy as np
import pytest

from meshir.frontends.text import parse_module, read_source
from meshir.interpreter import Interpreter, random_inputs, shard, unshard
from meshir.passes.layout import without_trivial_axes
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools.common import apply_overrides

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = [
    ("mlp.mir", "rows:8", "batch:rows", {"all_reduce"}),                                  # data parallel
    ("mlp.mir", "cols:8", "hidden:cols", {"all_reduce"}),                                 # model parallel
    ("mlp.mir", "rows:2,cols:4", "batch:rows,hidden:cols", {"all_reduce"}),               # both
    ("mlp.mir", "rows:2,cols:4", "batch:(rows,cols)", {"all_reduce"}),
    ("mlp.mir", "rows:2,cols:4", "hidden:(rows,cols),classes:rows", {"all_gather"}),
    ("mlp.mir", "rows:2,cols:4", "pixels:cols,batch:rows", {"all_reduce"}),
    ("transformer_block.mir", "rows:8", "batch:rows", set()),                             # data parallel
    ("transformer_block.mir", "cols:4", "heads:cols,hidden:cols", {"all_reduce"}),        # Megatron
    ("transformer_block.mir", "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols", {"all_reduce"}),
    ("transformer_block.mir", "rows:2,cols:4", "seq:rows,model:cols", {"all_gather"}),    # sequence + model dim
    ("transformer_block.mir", "rows:2,cols:4", "batch:(rows,cols),seq:cols", set()),
]


def partitioned(path: Path, mesh: str, layout: str):
    global_module = parse_module(read_source(str(path)))
    apply_overrides(global_module, mesh, layout)
    local_module = parse_module(print_module(global_module))
    PassManager(parse_pipeline("layout,spmd")).run(local_module)
    return global_module, local_module


@pytest.mark.parametrize("name,mesh,layout,collectives", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_partitioned_example_equals_reference(name, mesh, layout, collectives):
    global_module, local_module = partitioned(EXAMPLES / name, mesh, layout)
    function = next(iter(global_module.functions.values()))
    local = local_module.functions[function.name]
    device_mesh = local_module.mesh_of(local)
    rules = local_module.layout_of(local)

    def layout_of(ttype):
        return without_trivial_axes(rules.layout_of(ttype), device_mesh)

    inputs = random_inputs(function, seed=1)
    expected = Interpreter(global_module).run(function.name, inputs)
    local_inputs = {a.name: shard(inputs[a.name], layout_of(a.type), device_mesh) for a in function.args}
    outputs = Interpreter(local_module).run_local(local.name, local_inputs)
    for (key, slices), value in zip(outputs.items(), function.returns):
        np.testing.assert_allclose(unshard(slices, layout_of(value.type), device_mesh), expected[key], rtol=2e-5, atol=2e-5)

    used = {op.name for op in local.ops}
    assert collectives <= used
    split_args = [a for a, g in zip(local.args, function.args) if a.type.num_elements < g.type.num_elements]
    split_variables = [op for op in local.ops if op.name == "read"
                       and op.results[0].type.num_elements < local_module.variables[op.attributes["var"].name].type.num_elements]
    assert split_args or split_variables, "the layout split neither an input nor a variable"
