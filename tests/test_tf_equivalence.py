"""The TF columns of the equivalence matrix: for every op sample on every mesh of
spmd_matrix.MESHES, the TF backend (`layout,spmd`, one graph placed on the
mesh's CPU devices, run in a Session) equals the global reference within the
matrix's tolerances: bit for bit for integers, booleans and random ops, except
random_normal, which matches numpy to float32 rounding but must draw the same
bits under every layout.

Which cases (tests/tf_matrix.py): per sample, up to `PER_SAMPLE[mesh]` layouts
spread over the XLA column's always-included ones, replicated and every
dimension split among them. Measured when written: 1,867 cases (288 on <x=1>,
564 on <x=2>, 580 on 2x2, 435 on 2x4), ~70 s of CPU, ~45 s with `-n 2`. All
4,793 of the XLA column's cases passed too, run by hand (165 s of CPU in one
process); the test runs the subset to keep the whole TF test set within about
two minutes on two cores.

TensorFlow's own collectives ("v2") run each sample whose values are all f32
or i32 once on the 2x4 mesh, every dimension split over (cols, rows): groups
over one axis, both axes, and a group order TF's ranks do not follow.
"""
from __future__ import annotations

import functools

import pytest

from meshir.mesh import Mesh

from .spmd_matrix import MESHES
from .tf_matrix import EXPLICIT, V2, chunks, spread_cases
from .xla_matrix import Case, cases, check_batch, failure_report

PER_SAMPLE = dict(zip(MESHES, (8, 4, 4, 3)))
CHUNKS = dict(zip(MESHES, (1, 2, 3, 4)))
V2_MESH = MESHES[-1]
V2_CHUNKS = 2


@functools.cache
def mesh_cases(mesh: Mesh) -> list[Case]:
    return spread_cases(mesh, PER_SAMPLE[mesh])


@functools.cache
def v2_cases() -> list[Case]:
    """Each sample once, every dimension split, where TF's collectives take its dtypes."""
    every = spread_cases(V2_MESH, 1)
    return [c for c in every if {t.dtype.name for t in c.program.types} <= {"f32", "i32"}]


@pytest.mark.parametrize("mesh,index", [(m, i) for m, n in CHUNKS.items() for i in range(n)],
                         ids=lambda v: str(v).replace(" ", ""))
def test_tf_matches_global_reference(mesh: Mesh, index: int):
    batch = chunks(mesh_cases(mesh), CHUNKS[mesh])[index]
    assert batch
    failures = check_batch(batch, [EXPLICIT])
    if failures:
        pytest.fail(failure_report(failures, len(batch)), pytrace=False)


@pytest.mark.parametrize("index", range(V2_CHUNKS))
def test_tf_with_tensorflow_collectives_matches_global_reference(index: int):
    batch = chunks(v2_cases(), V2_CHUNKS)[index]
    assert batch
    failures = check_batch(batch, [V2])
    if failures:
        pytest.fail(failure_report(failures, len(batch)), pytrace=False)


def test_the_subset_spans_every_sample_and_layout_kind():
    for mesh in MESHES:
        every = mesh_cases(mesh)
        assert [c.prefix for part in chunks(every, CHUNKS[mesh]) for c in part] == [c.prefix for c in every]
        assert len({c.prefix for c in every}) == len(every)
        by_sample: dict[str, list[Case]] = {}
        for case in every:
            by_sample.setdefault(case.program.name, []).append(case)
        for name, picked in by_sample.items():
            every_layout = cases([picked[0].program], mesh, 0)
            assert picked[0].rules.rules == (), f"{name} on {mesh}: the replicated layout comes first"
            assert picked[-1].rules == every_layout[-1].rules, f"{name} on {mesh}: the all-split layout comes last"
            assert len(picked) == len({c.rules for c in picked}) == min(PER_SAMPLE[mesh], len(every_layout))
    counts = [len(mesh_cases(m)) for m in MESHES]
    assert counts == [288, 564, 580, 435], "update the counts in the module doc"
    assert len(v2_cases()) > 100
