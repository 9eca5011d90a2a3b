"""The op sample table behind the SPMD matrix: complete, valid and runnable.

A new global op fails `test_every_global_op_has_a_sample` until it gets a
sample in tests/op_samples.py, and so joins the equivalence matrix.
"""
from __future__ import annotations

import numpy as np
import pytest

from meshir.mesh import LayoutRules
from meshir.registry import all_ops

from .op_samples import SAMPLES
from .spmd_matrix import MESHES, all_programs, reference

PROGRAMS = all_programs()

# Ops whose partitioning has several distinct cases (a split dim sliced,
# shifted, gathered over, contracted, reduced, reinterpreted ...) need at least
# this many samples.
MIN_SAMPLES = {
    "einsum": 4, "matmul": 2, "reshape": 4, "slice": 3, "shift": 3, "pad": 2, "concat": 2, "split": 2,
    "cumsum": 2, "top_k": 2, "argmax": 2, "argmin": 2, "reduce_sum": 3, "logsumexp": 2,
    "one_hot": 2, "gather": 2, "scatter_add": 2, "conv1d": 2, "max_pool": 2, "avg_pool": 2,
    "dropout": 2, "random_uniform": 2, "random_normal": 2, "reshard": 3, "constant": 2, "layer_norm": 2,
}


def counts_table() -> str:
    return "\n".join(f"  {op}: {len(samples)}" for op, samples in sorted(SAMPLES.items()))


def test_every_global_op_has_a_sample():
    global_ops = {op.name for op in all_ops() if not op.local_only}
    missing = sorted(global_ops - set(SAMPLES))
    assert not missing, f"ops without a sample in tests/op_samples.py: {', '.join(missing)}"


def test_samples_name_only_global_ops():
    local = {op.name for op in all_ops() if op.local_only}
    known = {op.name for op in all_ops()}
    assert not set(SAMPLES) - known, f"samples for unknown ops: {sorted(set(SAMPLES) - known)}"
    assert not set(SAMPLES) & local, f"samples for local-only ops: {sorted(set(SAMPLES) & local)}"


def test_ops_with_several_partitioning_cases_have_several_samples():
    short = {op: len(SAMPLES[op]) for op, least in MIN_SAMPLES.items() if len(SAMPLES[op]) < least}
    assert not short, f"too few samples: {short}; sample counts per op:\n{counts_table()}"


@pytest.mark.parametrize("prog", PROGRAMS, ids=lambda p: p.name)
def test_sample_verifies_and_runs_on_every_mesh(prog):
    meshes = [mesh for mesh in MESHES if prog.runs_on(mesh)]
    assert meshes, f"{prog.name} runs on no test mesh"
    inputs = prog.inputs()
    for name, ttype in prog.args:
        assert inputs[name].shape == ttype.shape and inputs[name].dtype == ttype.dtype.numpy
        if name in prog.sample.bounds:
            low, high = prog.sample.bounds[name]
            assert low <= inputs[name].min() and inputs[name].max() < high, f"input {name} leaves [{low}, {high})"
    for mesh in meshes:
        module = prog.module(mesh, LayoutRules(()))  # parse_module verifies
        outputs = reference(module, inputs)
        results = [outputs[f"r{i}"] for i in range(len(prog.results))]
        for array, ttype in zip(results, prog.results):
            assert array.shape == ttype.shape and array.dtype == ttype.dtype.numpy
        assert len(outputs) == len(prog.results) + len(module.variables)


def test_dimensions_a_mesh_may_split_are_divisible_by_eight():
    """Sizes of 8 or 16 keep most layouts legal on a 2x4 mesh; a sample's other
    dimensions are small on purpose (taps, k, stacked pairs) and must say so by
    being smaller than 8."""
    odd = {}
    for prog in PROGRAMS:
        for ttype in prog.types:
            for dim in ttype.dims:
                if dim.size >= 8 and dim.size % 8:
                    odd.setdefault(prog.name, []).append(str(dim))
    assert not odd, f"dimensions of 8 or more not divisible by 8: {odd}"


def test_index_samples_reach_out_of_range_indices():
    """gather, one_hot and scatter_add each have a sample whose indices leave
    [0, size), the case where partitioned lookups most easily disagree."""
    for op in ("gather", "one_hot", "scatter_add"):
        lows = [s.bounds["i"][0] for s in SAMPLES[op]]
        assert min(lows) < 0, f"{op} has no sample with out-of-range indices"
        assert any(np.isclose(low, 0) for low in lows), f"{op} has no sample with in-range indices"
