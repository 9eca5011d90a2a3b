"""SPMD partitioning keeps meaning: for every op sample, every mesh of
spmd_matrix.MESHES and every layout `spmd_matrix.layouts` picks, the local program
(`layout,spmd`, simulated on every device, reassembled) equals the global
reference within dtype tolerance, bit for bit for integers, booleans and
random ops. One test per sample; meshes and layouts run inside it.

Collective counts below show the work is really split: a contraction over a
split dimension costs exactly one all_reduce, a replicated layout none.
"""
from __future__ import annotations

import numpy as np
import pytest

from meshir.interpreter import shard
from meshir.mesh import LayoutRules, ValueLayout, parse_layout_spec

from .spmd_matrix import (
    BIT_EXACT_OPS, CAP, MESHES, Outputs, Program, ReplicaMismatch, all_programs, assemble, axis_options, check,
    layouts, local_collectives, partition, program, reference, report, spmd, value_layouts,
)

PROGRAMS = all_programs()
MESH_2X4 = MESHES[-1]


@pytest.mark.parametrize("prog", PROGRAMS, ids=lambda p: p.name)
def test_local_program_matches_global_reference(prog: Program):
    cases, failures = check(prog, {"spmd": spmd})
    assert cases > 0
    if failures:
        pytest.fail(report(failures, cases), pytrace=False)


# --- the work is split ----------------------------------------------------------------


def collectives(op: str, index: int, rules: str) -> dict[str, int]:
    prog = program(op, index)
    return dict(local_collectives(partition(prog.module(MESH_2X4, parse_layout_spec(rules)))))


def test_contracting_a_split_dimension_costs_one_all_reduce():
    # einsum[0]: x[a, k] . w[k, n] -> [a, n], with k split over cols.
    assert collectives("einsum", 0, "k:cols") == {"all_reduce": 1}
    assert collectives("einsum", 0, "a:rows,k:cols") == {"all_reduce": 1}


def test_splitting_only_kept_dimensions_needs_no_collective():
    assert collectives("einsum", 0, "a:rows,n:cols") == {}
    assert collectives("add", 1, "a:rows,b:cols") == {}
    assert collectives("reduce_sum", 0, "a:(rows,cols)") == {}


def test_reducing_a_split_dimension_costs_one_all_reduce():
    assert collectives("reduce_sum", 0, "b:cols") == {"all_reduce": 1}


def test_replicated_layout_needs_no_collective():
    """Every op, all values replicated on 2x4: each device computes everything, no
    communication (reshard and transfer pin other layouts, so they may move data)."""
    moving = {}
    for prog in PROGRAMS:
        if prog.op not in ("reshard", "transfer"):
            found = local_collectives(partition(prog.module(MESH_2X4, LayoutRules(()))))
            if found:
                moving[prog.name] = dict(found)
    assert not moving, f"collectives in replicated programs: {moving}"


def test_split_local_program_holds_per_device_types():
    local = partition(program("einsum", 0).module(MESH_2X4, parse_layout_spec("a:rows,k:cols"))).function("f")
    assert [str(a.type) for a in local.args] == ["f32[a=4, k=4]", "f32[k=4, n=8]"]


# --- the harness itself ----------------------------------------------------------------


def test_layouts_cover_replicated_single_and_all_split_rules():
    prog = program("conv2d", 0)
    chosen = layouts(prog, MESH_2X4)
    assert 0 < len(chosen) <= CAP
    assert chosen == layouts(prog, MESH_2X4), "the subset must be deterministic"
    assert all(value_layouts(prog.types, r, MESH_2X4) is not None for r in chosen)
    as_dicts = [r.as_dict() for r in chosen]
    assert {} in as_dicts
    for dim in ("n", "h", "w", "ci", "co"):
        for axes in axis_options(MESH_2X4)[1:]:
            assert {dim: axes} in as_dicts, f"{dim} split alone over {axes} is missing"
    assert {"n": ("rows",), "h": ("cols",), "w": ("rows",), "ci": ("cols",), "co": ("rows",)} in as_dicts


def test_small_programs_run_every_legal_layout():
    # x[a=8, b=16] on 2x4: 5 options per dimension, all legal; b cannot reuse an
    # axis a took, so 5 (a replicated) + 2 + 2 (a on one axis) + 1 + 1 (a on both)
    # distinct layouts.
    prog = program("neg", 0)
    chosen = layouts(prog, MESH_2X4)
    assert len({value_layouts(prog.types, r, MESH_2X4) for r in chosen}) == 11
    # On <x=1> nothing splits: replicated, and every dimension on the size-1 axis.
    assert [r.as_dict() for r in layouts(prog, MESHES[0])] == [{}, {"a": ("x",), "b": ("x",)}]


def perturbed(ulps: int):
    """A column that moves every float output `ulps` representable values up."""

    def column(module, inputs: Outputs) -> Outputs:
        outputs = reference(module, inputs)
        for key, value in outputs.items():
            if value.dtype.kind == "f":
                for _ in range(ulps):
                    value = np.nextafter(value, np.inf, dtype=value.dtype)
                outputs[key] = value
        return outputs

    return column


def test_a_wrong_column_fails_naming_op_mesh_layout_and_difference():
    prog = program("reduce_sum", 0)
    cases, failures = check(prog, {"off": perturbed(1000)}, meshes=(MESHES[1],))
    assert cases == len(failures) == len(layouts(prog, MESHES[1])) > 1
    message = str(failures[0])
    assert "reduce_sum[0]" in message and "<x=2>" in message and "layout {" in message
    assert "off: output r0: 8 of 8 elements differ, max |difference|" in message and "(f32, tolerance" in message


def test_random_ops_must_match_bit_for_bit():
    assert "random_normal" in BIT_EXACT_OPS
    _, random_failures = check(program("random_normal", 0), {"ulp": perturbed(1)}, meshes=(MESHES[0],))
    assert random_failures and "(f32, bit-exact)" in random_failures[0].message
    _, tolerated = check(program("tanh", 0), {"ulp": perturbed(1)}, meshes=(MESHES[0],))
    assert not tolerated


def test_a_crashing_column_is_a_failure_not_an_error():
    def crash(module, inputs):
        raise RuntimeError("boom\nsecond line")

    _, failures = check(program("neg", 0), {"crash": crash}, meshes=(MESHES[0],))
    assert failures and {f.message for f in failures} == {"RuntimeError: boom"}


def test_replicas_that_disagree_are_caught():
    mesh = MESHES[2]
    layout = ValueLayout(((), ("cols",)))  # [a, b] with b over cols: devices 0 and 2 hold the same block
    blocks = shard(np.arange(8.0).reshape(2, 4), layout, mesh)
    assert np.array_equal(assemble("x", blocks, layout, mesh), np.arange(8.0).reshape(2, 4))
    blocks[2] = blocks[2] + 1
    with pytest.raises(ReplicaMismatch, match="x: device 2"):
        assemble("x", blocks, layout, mesh)
