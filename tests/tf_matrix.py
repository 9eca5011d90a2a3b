"""The TF columns of the equivalence matrix (tests/spmd_matrix.py), batched as the
XLA column is (tests/xla_matrix.py): many cases of one mesh in one global
function, partitioned once, emitted as one TF graph and run in one Session.

Building a TF graph costs ~0.5 ms of Python per node and a case on the 2x4 mesh
is ~70 nodes (one copy of its op per device, splits, joins), so the TF column
runs a spread subset of the XLA column's cases (`spread_cases`): per sample and
mesh, the fully replicated layout, the last always-included one (every
dimension split, where the sample has such a layout) and evenly spaced ones
between, `PER_SAMPLE[mesh]` in all. The "v2" column (TensorFlow's collective
ops) runs each sample once per multi-device mesh under its every-dimension-split
layout, which is where partitioning puts the most collectives.
"""
from __future__ import annotations

from typing import Sequence

from meshir.ir import Module
from meshir.mesh import Mesh

from .spmd_matrix import Backend, Outputs, all_programs, partition
from .xla_matrix import Case, Column, cases

# Random normal draws use TF's float32 log and cos, which round like numpy's only
# to float32 rounding (meshir/random.py); every layout must still draw the same bits.
ROUNDED = frozenset({"random_normal"})


def tf_backend(collectives: str) -> Backend:
    def run(module: Module, inputs: Outputs) -> Outputs:
        """Partition, emit one TF graph placed on the mesh's devices, run it in a Session."""
        from meshir.backends.tf import compile_program

        program = compile_program(partition(module), "f", collectives=collectives, timeout=60.0)
        outputs, variables = program.run(inputs)
        return {**outputs, **{f"@{n}": v for n, v in variables.items()}}

    return run


EXPLICIT = Column("tf", tf_backend("explicit"), ROUNDED)
V2 = Column("tf-v2", tf_backend("v2"), ROUNDED)


def spread_cases(mesh: Mesh, per_sample: int) -> list[Case]:
    """Up to `per_sample` of each sample's `cases(…, cap=0)` on `mesh`: the first
    (replicated), the last (every dimension split) and evenly spaced ones between;
    renumbered so that prefixes stay distinct."""
    chosen = []
    for prog in all_programs():
        if not prog.runs_on(mesh):
            continue
        every = cases([prog], mesh, 0)
        count = min(per_sample, len(every))
        picks = sorted({round(i * (len(every) - 1) / max(count - 1, 1)) for i in range(count)})
        chosen += [every[i] for i in picks]
    return [Case(c.program, c.mesh, c.rules, f"c{i}_") for i, c in enumerate(chosen)]


def chunks(every: Sequence[Case], count: int) -> list[list[Case]]:
    """`count` runs of whole samples, about equal in cases: a sample's layouts stay
    together, so that its random draws are compared across layouts (Column.rounded)."""
    starts = [i for i, c in enumerate(every) if i == 0 or c.program.name != every[i - 1].program.name] + [len(every)]

    def boundary(position: int) -> int:
        return next(s for s in starts if s >= position * len(every) // count)

    return [list(every[boundary(i): boundary(i + 1)]) for i in range(count)]
