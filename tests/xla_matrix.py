"""The XLA column of the equivalence matrix (tests/spmd_matrix.py), batched.

An XLA compile costs ~0.3 s plus ~20 ms per op on a 2-core machine, so cases
are not compiled one by one: `batch_module` puts many cases of one mesh into ONE
global function `@f`. Each case gets its own names, prefixed `c<i>_`:
dimensions (so that one layout map, the union of every case's prefixed rules,
lays out every case as its own rules do), values and variables. The function's arguments are every case's
arguments and its results every case's results; cases share nothing, so
partitioning the batch partitions each case as it would alone.

A batch is partitioned once (`layout,spmd`), compiled once (`compile_local`)
and run once; each case's outputs and final variable values are compared
with the case's own global reference. A batch that raises is bisected down to
the cases that raise on their own, so every failure names one case. The numpy
simulator of the same partitioned batch runs beside XLA as a second column
(cheap: ~5% of a batch's time), checking that batching changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from meshir.attributes import Name, SymbolRef
from meshir.frontends.text import parse_module
from meshir.ir import Function, Module
from meshir.mesh import LayoutRules, Mesh
from meshir.printer import print_module
from meshir.types import Dim, TensorType

from .spmd_matrix import (
    BIT_EXACT_OPS, Backend, Failure, Outputs, Program, difference, layouts, partition, reference, report, spmd,
)


@dataclass(frozen=True)
class Case:
    """One (program, mesh, layout) of the matrix, named `prefix...` inside a batch."""

    program: Program
    mesh: Mesh
    rules: LayoutRules
    prefix: str

    def failure(self, column: str, message: str) -> Failure:
        return Failure(self.program, self.mesh, self.rules, column, message)


def cases(programs: Sequence[Program], mesh: Mesh, cap: int) -> list[Case]:
    """Every program's `layouts(prog, mesh, cap)` on `mesh`, numbered in order."""
    chosen = [(p, r) for p in programs if p.runs_on(mesh) for r in layouts(p, mesh, cap)]
    return [Case(p, mesh, r, f"c{i}_") for i, (p, r) in enumerate(chosen)]


# --- one module for many cases ---------------------------------------------------------


class _Renamer:
    """Prefixes one case's dimension, value and variable names."""

    def __init__(self, prefix: str, dims: set[str], variables: set[str]):
        self.prefix, self.dims, self.variables = prefix, dims, variables

    def type(self, ttype: TensorType) -> TensorType:
        return ttype.with_dims(Dim(self.prefix + d.name, d.size) for d in ttype.dims)

    def rules(self, rules: LayoutRules) -> LayoutRules:
        return LayoutRules(tuple((self.prefix + d, axes) for d, axes in rules.rules))

    def attribute(self, value: Any) -> Any:
        """Dimensions inside an attribute: `Dim`s, dimension `Name`s, layout maps;
        enum names (`padding = same`) and axis names are left alone."""
        if isinstance(value, Dim):
            return Dim(self.prefix + value.name, value.size)
        if isinstance(value, Name):
            return Name(self.prefix + value) if value in self.dims else value
        if isinstance(value, tuple):
            return tuple(self.attribute(v) for v in value)
        if isinstance(value, LayoutRules):
            return self.rules(value)
        if isinstance(value, SymbolRef) and value.name in self.variables:
            return SymbolRef(self.prefix + value.name)
        return value


def _case_module(case: Case) -> tuple[Module, _Renamer]:
    """The case's global module, its names prefixed."""
    module = case.program.module(case.mesh, LayoutRules(()))
    function = module.function("f")
    renamer = _Renamer(case.prefix, set(case.program.dims()), set(module.variables))
    for value in function.values():
        value.type = renamer.type(value.type)
        value.name = case.prefix + value.name
    for op in function.ops:
        op.attributes = {k: renamer.attribute(v) for k, v in op.attributes.items()}
    for variable in module.variables.values():
        variable.name = case.prefix + variable.name
        variable.type = renamer.type(variable.type)
    return module, renamer


def batch_module(batch: Sequence[Case]) -> Module:
    """One global module whose `@f` runs every case of `batch` (all on one mesh)."""
    (mesh,) = {c.mesh for c in batch}
    combined = Function("f", [], [])
    rules: list[tuple[str, tuple[str, ...]]] = []
    module = Module(meshes={"m": mesh})
    for case in batch:
        case_module, renamer = _case_module(case)
        function = case_module.function("f")
        combined.args += function.args
        combined.ops += function.ops
        combined.returns += function.returns
        combined.result_types += [v.type for v in function.returns]
        module.variables.update((v.name, v) for v in case_module.variables.values())
        rules += renamer.rules(case.rules).rules
    combined.attributes = {"mesh": SymbolRef("m"), "layout": LayoutRules(tuple(rules))}
    module.functions["f"] = combined
    # Printing and parsing again verifies the combination and gives fresh IR.
    return parse_module(print_module(module), "batch.mir")


def batch_inputs(batch: Sequence[Case]) -> Outputs:
    return {c.prefix + k: v for c in batch for k, v in c.program.inputs().items()}


def case_outputs(batch: Sequence[Case], outputs: Outputs) -> list[Outputs]:
    """Each case's share of a batch's outputs, with its own (unprefixed) keys:
    `c3_r0` -> `r0` of case 3, `@c3_w` -> `@w`."""
    shares: list[Outputs] = [{} for _ in batch]
    position = {c.prefix: i for i, c in enumerate(batch)}
    for key, value in outputs.items():
        sigil, bare = ("@", key[1:]) if key.startswith("@") else ("", key)
        prefix, _, name = bare.partition("_")
        shares[position[prefix + "_"]][sigil + name] = value
    return shares


# --- columns ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A backend under test: `run(global batch module, inputs) -> outputs and @variables`.

    `rounded`: random ops this column matches only to float32 rounding. Box-Muller's
    log, sqrt and cos in XLA agree with numpy's to rounding, not bit for bit
    (meshir/random.py); the column must still draw the same bits under every layout
    of a sample, which `check_batch` checks against the sample's first case."""

    name: str
    run: Backend
    rounded: frozenset[str] = frozenset()


def xla(module: Module, inputs: Outputs) -> Outputs:
    """Partition, compile with the XLA backend and run on the mesh's CPU devices."""
    from meshir.backends.xla import compile_local

    program = compile_local(partition(module), "f")
    outputs, variables = program.run(inputs)
    return {**outputs, **{f"@{n}": v for n, v in variables.items()}}


COLUMNS = (Column("xla", xla, frozenset({"random_normal"})), Column("spmd", spmd))


# --- running and checking ----------------------------------------------------------------


def _message(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _run(column: Column, batch: Sequence[Case]) -> tuple[list[tuple[Case, Outputs]], list[Failure]]:
    """The outputs of every case that ran; a batch that raises is halved until each
    raising case stands alone, and that case is the failure."""
    try:
        outputs = column.run(batch_module(batch), batch_inputs(batch))
    except Exception as exc:  # any crash is a failure to localise, not to stop at
        if len(batch) == 1:
            return [], [batch[0].failure(column.name, _message(exc))]
        half = len(batch) // 2
        ran, failed = _run(column, batch[:half])
        more, more_failed = _run(column, batch[half:])
        if not failed and not more_failed:  # never pass silently: name the batch
            held = ", ".join(f"{c.program.name} {c.rules}" for c in batch[:4]) + (", ..." if len(batch) > 4 else "")
            return [], [batch[0].failure(column.name, f"{_message(exc)} (in a batch of {len(batch)} cases: {held}; "
                                                      "each half runs alone)")]
        return ran + more, failed + more_failed
    return list(zip(batch, case_outputs(batch, outputs))), []


def compare(expected: Outputs, got: Outputs, exact: bool, against: str = "") -> str | None:
    """Why `got` differs from `expected` (the reference, or `against`), or None;
    `spmd_matrix.compare` with the exactness chosen by the caller."""
    if set(got) != set(expected):
        return f"outputs {sorted(got)} but expected {sorted(expected)}"
    for key, want in expected.items():
        problem = difference(want, got[key], exact)
        if problem is not None:
            return f"output {key}{' against ' + against if against else ''}: {problem}"
    return None


def check_batch(batch: Sequence[Case], columns: Sequence[Column]) -> list[Failure]:
    """Every case of `batch` through every column, against its global reference."""
    expected: dict[str, Outputs] = {}
    failures: list[Failure] = []
    for column in columns:
        ran, failed = _run(column, batch)
        failures += failed
        first_draw: dict[str, tuple[Case, Outputs]] = {}
        for case, outputs in ran:
            prog = case.program
            if prog.name not in expected:
                expected[prog.name] = reference(prog.module(case.mesh, LayoutRules(())), prog.inputs())
            got = {k: np.asarray(v) for k, v in outputs.items()}
            problem = compare(expected[prog.name], got, exact=prog.op in BIT_EXACT_OPS - column.rounded)
            if problem is None and prog.op in column.rounded:
                first, draw = first_draw.setdefault(prog.name, (case, got))
                problem = compare(draw, got, exact=True, against=f"layout {first.rules}'s draw")
            if problem is not None:
                failures.append(case.failure(column.name, problem))
    return failures


def failure_report(failures: list[Failure], cases: int) -> str:
    """`spmd_matrix.report` (smallest failure first, with its module), and how to rerun
    that module alone."""
    return (report(failures, cases) + "to rerun it alone, save it as case.mir: "
            "`meshir-run case.mir --backend xla --check` (xla column), "
            "`meshir-opt case.mir --passes=layout,spmd` (the local program)")
