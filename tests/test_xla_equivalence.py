"""The XLA column of the equivalence matrix: for every op sample, every mesh of
spmd_matrix.MESHES and the layouts below, the XLA backend (`layout,spmd`,
`compile_local`, run on the mesh's CPU devices) and the numpy simulator of the
same local program both equal the global reference, within the matrix's
tolerances: bit for bit for integers, booleans and random ops, except XLA's
random_normal, which matches numpy to float32 rounding (meshir/random.py) but
must draw the same bits under every layout.

Cases are batched (tests/xla_matrix.py): one compile per chunk of a mesh's cases.
The layouts are `layouts(prog, mesh, cap=0)`: fully replicated, every dimension
alone on every axis option, and the all-dimensions-split rules, with no spread
subset beyond them: XLA compiles each case's op at ~20 ms (one thread), so
these alone exceed the ~90 s budget. Measured when written: 4,793 cases (288 on
<x=1>, 599 on <x=2>, 1,961 on 2x2, 1,945 on 2x4) in 21 compiles; ~165 s of CPU,
87% of it XLA compiling; 120 s alone, 103 s with `-n 2`, on 2 shared cores.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from meshir.mesh import LayoutRules, Mesh

from .spmd_matrix import MESHES, Backend, Outputs, all_programs, program, reference
from .xla_matrix import COLUMNS, Case, Column, cases, check_batch, failure_report

CAP = 0  # layouts beyond the always-included ones, per (sample, mesh)
# Compiles per mesh, ~250 cases each (~5 s): small enough to spread over xdist
# workers and to bisect quickly when one raises.
CHUNKS = dict(zip(MESHES, (2, 3, 8, 8)))


@functools.cache
def mesh_cases(mesh: Mesh) -> list[Case]:
    return cases(all_programs(), mesh, CAP)


def chunk(mesh: Mesh, index: int) -> list[Case]:
    """The `index`-th of `CHUNKS[mesh]` runs of whole samples, about equal in cases.
    A sample's layouts stay together, so that its random draws can be compared
    bit for bit across layouts (xla_matrix.Column.rounded)."""
    every = mesh_cases(mesh)
    count = CHUNKS[mesh]
    starts = [i for i, c in enumerate(every) if i == 0 or c.program.name != every[i - 1].program.name] + [len(every)]

    def boundary(position: int) -> int:
        return next(s for s in starts if s >= position * len(every) // count)

    return every[boundary(index): boundary(index + 1)]


@pytest.mark.parametrize("mesh,index", [(m, i) for m, n in CHUNKS.items() for i in range(n)],
                         ids=lambda v: str(v).replace(" ", ""))
def test_xla_and_simulated_local_program_match_global_reference(mesh: Mesh, index: int):
    batch = chunk(mesh, index)
    assert batch
    failures = check_batch(batch, COLUMNS)
    if failures:
        pytest.fail(failure_report(failures, len(batch)), pytrace=False)


def test_chunks_hold_every_case_once():
    for mesh in MESHES:
        chunks = [chunk(mesh, i) for i in range(CHUNKS[mesh])]
        assert [c.prefix for part in chunks for c in part] == [c.prefix for c in mesh_cases(mesh)]


# --- the harness itself ----------------------------------------------------------------


def one_case_per_sample(mesh: Mesh) -> list[Case]:
    """Every sample once, under the last layout `layouts(prog, mesh, 0)` gives (one
    splitting every dimension, where the sample has such a layout)."""
    return [Case(p, mesh, cases([p], mesh, 0)[-1].rules, f"c{i}_")
            for i, p in enumerate(q for q in all_programs() if q.runs_on(mesh))]


def test_batching_keeps_every_case_meaning():
    """The batched global module, run by the reference interpreter, gives each case
    its own reference results: renaming dimensions, values and variables (attributes
    included) changes nothing."""
    batch = one_case_per_sample(MESHES[-1])
    assert len(batch) == len(all_programs())
    assert check_batch(batch, [Column("global", reference)]) == []


def raising_on(op: str, count: int = 1) -> Backend:
    """A column that runs the reference, but raises when the batch holds `count` `op`s."""

    def column(module, inputs: Outputs) -> Outputs:
        if sum(o.name == op for o in module.function("f").ops) >= count:
            raise RuntimeError(f"cannot run {op}\nmore detail")
        return reference(module, inputs)

    return column


def test_a_raising_batch_is_bisected_to_the_cases_that_raise():
    batch = one_case_per_sample(MESHES[2])
    failures = check_batch(batch, [Column("crash", raising_on("top_k"))])
    assert [f.program.name for f in failures] == ["top_k[0]", "top_k[1]"]
    message = str(failures[0])
    assert "top_k[0] top_k(x: f32[a=8, b=16]) {dim = b, k = 8} on mesh <rows=2, cols=2> layout {" in message
    assert message.endswith("crash: RuntimeError: cannot run top_k")


def test_cases_that_raise_only_together_fail_the_batch_that_holds_them():
    batch = one_case_per_sample(MESHES[2])
    (failure,) = check_batch(batch, [Column("pair", raising_on("top_k", count=2))])
    assert "pair: RuntimeError: cannot run top_k (in a batch of " in str(failure)
    assert str(failure).endswith("each half runs alone)")


def nudged(only: str | None = None) -> Backend:
    """A column running the reference and moving float outputs (all, or the one named
    `only`) one representable value up."""

    def column(module, inputs: Outputs) -> Outputs:
        outputs = reference(module, inputs)
        return {k: np.nextafter(v, np.inf, dtype=v.dtype) if only in (None, k) and v.dtype.kind == "f" else v
                for k, v in outputs.items()}

    return column


def test_a_wrong_output_names_op_sample_mesh_layout_and_difference():
    replicated = LayoutRules(())
    batch = [Case(program("neg", 0), MESHES[1], replicated, "c0_"),
             Case(program("random_normal", 0), MESHES[1], replicated, "c1_")]  # compared bit for bit
    (failure,) = check_batch(batch, [Column("ulp", nudged("c1_r0"))])
    assert str(failure).startswith("random_normal[0] random_normal() {")
    assert "on mesh <x=2> layout {}: ulp: output r0: 128 of 128 elements differ" in str(failure)
    assert "(f32, bit-exact)" in str(failure)
    text = failure_report([failure], 2)
    assert "1 of 2 cases fail" in text and "smallest failing module:" in text
    assert "%r0 = random_normal() {shape = [a=8, b=16], seed = 4, mean = 1.0, stddev = 2.0}" in text
    assert "meshir-run case.mir --backend xla --check" in text


def test_rounded_random_ops_must_draw_the_same_bits_under_every_layout():
    batch = cases([program("random_normal", 0)], MESHES[2], 0)
    rounded = frozenset({"random_normal"})
    assert check_batch(batch, [Column("every", nudged(), rounded)]) == []
    (failure,) = check_batch(batch, [Column("one", nudged("c2_r0"), rounded)])
    assert failure.rules == batch[2].rules
    assert f"one: output r0 against layout {batch[0].rules}'s draw: 128 of 128 elements differ" in str(failure)
    assert "(f32, bit-exact)" in failure.message
