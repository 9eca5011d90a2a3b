"""The examples, partitioned under data-parallel, model-parallel and mixed
layouts and simulated on every device, equal the global reference; and the work
is really split (per-device shapes shrink, the expected collectives appear)."""
from pathlib import Path

import pytest

from meshir.frontends.text import parse_module, read_source

from .spmd_check import partition, simulate_and_compare

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


@pytest.mark.parametrize("name,mesh,layout,collectives", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_partitioned_example_equals_reference(name, mesh, layout, collectives):
    global_module, local_module = partition(parse_module(read_source(str(EXAMPLES / name))), mesh, layout)
    local = simulate_and_compare(global_module, local_module)
    function = next(iter(global_module.functions.values()))
    used = {op.name for op in local.ops}
    assert collectives <= used
    split_args = [a for a, g in zip(local.args, function.args) if a.type.num_elements < g.type.num_elements]
    split_variables = [op for op in local.ops if op.name == "read"
                       and op.results[0].type.num_elements < local_module.variables[op.attributes["var"].name].type.num_elements]
    assert split_args or split_variables, "the layout split neither an input nor a variable"
