"""The SPMD equivalence matrix: every op sample, on every test mesh, under many layouts.

A sample (tests/op_samples.py) becomes a global function holding one op and
returning all its results (`Program`). For each mesh of `MESHES`, `layouts`
enumerates layout rules over the function's dimension names: each dimension
replicated, on one mesh axis, or on an ordered pair of axes. Rules a split
cannot divide are skipped, rule sets that lay every value out the same way are
run once, and where more than `CAP` remain a deterministic, well-spread subset
is kept that always includes fully replicated, every dimension split alone on
every option, and the all-dimensions-split layouts.

Each case runs the global module through backend *columns*: callables taking
the module (whose function carries `mesh` and `layout`) and the global inputs
and returning global outputs (results by name, variables' final values as
`@name`). `reference` is the numpy interpreter; `spmd` partitions with
`layout,spmd` and simulates every device. The XLA and TF backends join as
further columns with the same signature.

Matrix size (measured when written): 7,308 cases from 145 samples of 90 ops, about
20 s for tests/test_spmd_equivalence.py with `-n 2` on 2 cores.
"""
from __future__ import annotations

import functools
import itertools
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from meshir.diagnostics import MeshirError
from meshir.dtypes import dtype_of_numpy
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, output_names, shard, storage_layouts, unshard
from meshir.ir import Module
from meshir.mesh import LayoutRules, Mesh, ValueLayout
from meshir.passes.base import COLLECTIVE_BYTES
from meshir.passes.layout import without_trivial_axes
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.types import Dim, TensorType
from meshir.verifier import infer_op

from .op_samples import SAMPLES, Sample

Outputs = dict[str, np.ndarray]
Backend = Callable[[Module, Outputs], Outputs]

MESHES = (
    Mesh("m", (Dim("x", 1),)),
    Mesh("m", (Dim("x", 2),)),
    Mesh("m", (Dim("rows", 2), Dim("cols", 2))),
    Mesh("m", (Dim("rows", 2), Dim("cols", 4))),
)
CAP = 64  # layouts per (sample, mesh) beyond which a spread subset is run

# Random draws are keyed by global coordinates, so every layout must give the same bits.
BIT_EXACT_OPS = frozenset({"random_uniform", "random_normal", "dropout"})
# rtol = atol per float dtype: reductions over split dimensions add in another order.
TOLERANCE = {"f64": 1e-12, "f32": 2e-5, "f16": 2e-3, "bf16": 3e-2}


# --- programs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A sample as a global function `@f` holding its one op."""

    op: str
    index: int
    sample: Sample
    args: tuple[tuple[str, TensorType], ...]
    results: tuple[TensorType, ...]

    @property
    def name(self) -> str:
        return f"{self.op}[{self.index}]"

    @property
    def types(self) -> tuple[TensorType, ...]:
        return (*(t for _, t in self.args), *self.results)

    def dims(self) -> dict[str, list[int]]:
        """Every dimension name of the function -> its sizes over all values, in first-seen order."""
        sizes: dict[str, list[int]] = {}
        for ttype in self.types:
            for dim in ttype.dims:
                sizes.setdefault(dim.name, []).append(dim.size)
        return sizes

    def runs_on(self, mesh: Mesh) -> bool:
        return "$1" not in self.sample.attrs or len(mesh.axes) > 1

    def text(self, mesh: Mesh, rules: LayoutRules, result_types: str | None = None) -> str:
        """The module as `.mir`: the mesh, the sample's variables and `@f`."""
        attrs = self.sample.attrs
        for position, axis in enumerate(mesh.axis_names):
            attrs = attrs.replace(f"${position}", axis)
        if result_types is None:
            result_types = "(" + ", ".join(str(t) for t in self.results) + ")"
        operands = ", ".join(f"%{name}" for name, _ in self.args)
        if self.sample.symbol:
            call = f"{self.op} {self.sample.symbol}" + (f", {operands}" if operands else "")
        else:
            call = f"{self.op}({operands})"
        names = [f"%r{i}" for i in range(len(self.results))]
        assigned = f"{', '.join(names)} = " if names else ""
        return "\n".join([
            f"mesh @m = {mesh}",
            *self.sample.variables,
            f"func @f({', '.join(f'%{n}: {t}' for n, t in self.args)}) -> {result_types}",
            f"    attributes {{mesh = @m, layout = {rules}}} {{",
            f"  {assigned}{call} {attrs}".rstrip(),
            f"  return {', '.join(names)}".rstrip(),
            "}",
        ]) + "\n"

    def module(self, mesh: Mesh, rules: LayoutRules) -> Module:
        return parse_module(self.text(mesh, rules), f"{self.name}.mir")

    def inputs(self) -> Outputs:
        """Deterministic global inputs, seeded by the program's name."""
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        return {name: _draw(rng, ttype, self.sample.bounds.get(name)) for name, ttype in self.args}


def program(op: str, index: int, sample: Sample | None = None) -> Program:
    """`SAMPLES[op][index]` (or `sample` in its place) as a program; its result types
    come from the verifier."""
    sample = sample or SAMPLES[op][index]
    args = tuple(_parse_arg(text) for text in sample.operands)
    draft = Program(op, index, sample, args, ())
    module = parse_module(draft.text(MESHES[-1], LayoutRules(()), result_types="()"), verify=False)
    function = module.function("f")
    (op_ir,) = function.ops
    results = infer_op(module, function, op_ir)
    return Program(op, index, sample, args, tuple(results))


def all_programs() -> list[Program]:
    return [program(op, i) for op, samples in SAMPLES.items() for i in range(len(samples))]


@functools.cache
def _parse_arg(text: str) -> tuple[str, TensorType]:
    """`x: f32[a=8]` -> ("x", f32[a=8]), read by the .mir parser itself."""
    name, _, ttype = text.partition(":")
    module = parse_module(f"func @g(%{name.strip()}: {ttype.strip()}) -> () {{\n  return\n}}\n")
    (arg,) = module.function("g").args
    return arg.name, arg.type


def _draw(rng: np.random.Generator, ttype: TensorType, bounds: tuple[float, float] | None) -> np.ndarray:
    dtype = ttype.dtype
    if dtype.is_bool:
        return rng.random(ttype.shape) < 0.5
    if dtype.is_integer:
        low, high = bounds or (-8, 8)
        return rng.integers(int(low), int(high), ttype.shape).astype(dtype.numpy)
    if bounds is not None:
        return rng.uniform(*bounds, ttype.shape).astype(dtype.numpy)
    return rng.standard_normal(ttype.shape).astype(dtype.numpy)


# --- layouts ------------------------------------------------------------------------


def axis_options(mesh: Mesh) -> list[tuple[str, ...]]:
    """What one dimension's rule may be: replicated, one axis, or an ordered pair of axes."""
    axes = mesh.axis_names
    return [(), *((a,) for a in axes), *itertools.permutations(axes, 2)]


def value_layouts(types: tuple[TensorType, ...], rules: LayoutRules, mesh: Mesh) -> tuple[ValueLayout, ...] | None:
    """Each value's layout as the `layout` pass gives it, or None when a split does not divide."""
    layouts = []
    for ttype in types:
        layout = without_trivial_axes(rules.layout_of(ttype), mesh)
        try:
            layout.local_type(ttype, mesh)
        except MeshirError:
            return None
        layouts.append(layout)
    return tuple(layouts)


def layouts(prog: Program, mesh: Mesh, cap: int = CAP) -> list[LayoutRules]:
    """Legal layout rules for `prog` on `mesh`, one per distinct way of laying out
    its values (the one naming fewest dimensions), a spread subset beyond `cap`.

    Always included: fully replicated, each dimension alone on each option, and,
    verbatim even where they repeat another case's layout, the all-dimensions-split
    rules (dimension i on axis i + k, or every dimension on one pair of axes): on
    a size-1 axis they check that the pass drops trivial splits.

    A dimension's option is tried only where its split divides every size the
    dimension has; that loses only rules that become legal because an earlier
    dimension of a value took the axis first, and keeps the enumeration small."""
    dims = prog.dims()
    names = list(dims)
    options = {
        name: [o for o in axis_options(mesh) if all(size % _split(mesh, o) == 0 for size in sizes)]
        for name, sizes in dims.items()
    }
    distinct: dict[tuple[ValueLayout, ...], LayoutRules] = {}
    for choice in itertools.product(*(options[n] for n in names)):
        rules = LayoutRules(tuple((n, axes) for n, axes in zip(names, choice) if axes))
        key = value_layouts(prog.types, rules, mesh)
        if key is not None and (key not in distinct or len(rules.rules) < len(distinct[key].rules)):
            distinct[key] = rules
    singles = [LayoutRules(())] + [LayoutRules(((n, o),)) for n in names for o in options[n] if o]
    chosen: list[LayoutRules] = []
    for rules in singles:
        key = value_layouts(prog.types, rules, mesh)
        if key is not None and distinct[key] not in chosen:
            chosen.append(distinct[key])
    axes = mesh.axis_names
    all_split = [{n: (axes[(i + k) % len(axes)],) for i, n in enumerate(names)} for k in range(len(axes))]
    all_split += [dict.fromkeys(names, pair) for pair in itertools.permutations(axes, 2)]
    for rule in all_split:
        rules = LayoutRules(tuple((n, o) for n, o in rule.items() if o in options[n]))
        if value_layouts(prog.types, rules, mesh) is not None and rules not in chosen:
            chosen.append(rules)
    rest = [r for r in distinct.values() if r not in chosen]
    room = max(cap - len(chosen), 0)
    if len(rest) > room:
        rest = [rest[i * len(rest) // room] for i in range(room)]
    return chosen + rest


def _split(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.axis_size(a) for a in axes)


# --- backends -----------------------------------------------------------------------


def reference(module: Module, inputs: Outputs) -> Outputs:
    """The global program in the numpy interpreter."""
    interpreter = Interpreter(module)
    outputs = interpreter.run("f", inputs)
    return {**outputs, **{f"@{n}": v for n, v in interpreter.state.items()}}


def partition(module: Module) -> Module:
    """`module` after `layout,spmd` (in place)."""
    PassManager(parse_pipeline("layout,spmd")).run(module)
    return module


class ReplicaMismatch(AssertionError):
    """Devices holding the same block of a value disagree."""


def spmd(module: Module, inputs: Outputs) -> Outputs:
    """Partition, simulate every device, and assemble global outputs and variables.
    Replicas of a block must agree bit for bit: `unshard` alone reads only the first copy."""
    function = module.function("f")
    mesh = module.mesh_of(function)
    arg_types = {a.name: a.type for a in function.args}
    result_types, names = list(function.result_types), output_names(function)
    local = partition(module).function("f")
    rules = module.layout_of(local)

    def layout(ttype: TensorType) -> ValueLayout:
        return without_trivial_axes(rules.layout_of(ttype), mesh)

    interpreter = Interpreter(module)
    storage = storage_layouts(module, local)
    state = {name: shard(interpreter.state[name], storage[name], mesh) for name in storage}
    sharded = {name: shard(value, layout(arg_types[name]), mesh) for name, value in inputs.items()}
    per_device = interpreter.run_local("f", sharded, local_state=state)
    outputs = {}
    for name, ttype, slices in zip(names, result_types, per_device.values()):
        outputs[name] = assemble(f"output {name}", slices, layout(ttype), mesh)
    for name, value in interpreter.state.items():
        outputs[f"@{name}"] = assemble(f"variable @{name}", state[name], storage[name], mesh) if name in state else value
    return outputs


def assemble(what: str, slices: list[np.ndarray], layout: ValueLayout, mesh: Mesh) -> np.ndarray:
    value = unshard(slices, layout, mesh)
    for device, (want, got) in enumerate(zip(shard(value, layout, mesh), slices)):
        if want.tobytes() != np.asarray(got).tobytes():
            raise ReplicaMismatch(f"{what}: device {device} holds a replica that differs from a lower device's copy")
    return value


def local_collectives(module: Module) -> Counter[str]:
    """How many of each collective the (local) function `@f` holds."""
    return Counter(op.name for op in module.function("f").ops if op.name in COLLECTIVE_BYTES)


# --- comparison ---------------------------------------------------------------------


def difference(expected: np.ndarray, got: np.ndarray, exact: bool) -> str | None:
    """None when `got` matches `expected`: bit for bit when `exact` or for integers and
    booleans, else within the float dtype's tolerance with NaN matching NaN.
    Otherwise what differs, with the largest absolute difference."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"got {got.dtype}{list(got.shape)}, expected {expected.dtype}{list(expected.shape)}"
    dtype = dtype_of_numpy(expected.dtype)
    if exact or not dtype.is_float:
        if got.tobytes() == expected.tobytes():
            return None
        tol = 0.0
    else:
        tol = TOLERANCE[dtype.name]
        if np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=tol, atol=tol, equal_nan=True):
            return None
    a, b = expected.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return f"NaN in {int(np.sum(np.isnan(b)))} elements, expected {int(np.sum(np.isnan(a)))}"
    finite = ~np.isnan(a)
    worst = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
    wrong = int(np.sum(a[finite] != b[finite]))
    bound = "bit-exact" if exact or not dtype.is_float else f"tolerance {tol:g}"
    return f"{wrong} of {a.size} elements differ, max |difference| {worst:g} ({dtype}, {bound})"


@dataclass(frozen=True)
class Failure:
    program: Program
    mesh: Mesh
    rules: LayoutRules
    column: str
    message: str

    def __str__(self) -> str:
        return (f"{self.program.name} {self.program.op}{self.program.sample.describe()} on mesh {self.mesh} "
                f"layout {self.rules}: {self.column}: {self.message}")

    @property
    def size(self) -> tuple[int, int]:
        """How small the case is: devices, then rules."""
        return self.mesh.size, len(self.rules.rules)


def compare(prog: Program, expected: Outputs, got: Outputs) -> str | None:
    """Why `got` differs from `expected`, or None."""
    if set(got) != set(expected):
        return f"outputs {sorted(got)} but expected {sorted(expected)}"
    for key, want in expected.items():
        problem = difference(want, np.asarray(got[key]), exact=prog.op in BIT_EXACT_OPS)
        if problem is not None:
            return f"output {key}: {problem}"
    return None


def check(
    prog: Program, columns: Mapping[str, Backend], meshes: tuple[Mesh, ...] = MESHES, cap: int = CAP,
) -> tuple[int, list[Failure]]:
    """Run `prog` under every layout of `layouts` on each mesh through each column;
    the cases run and every failure (a wrong output or an exception)."""
    inputs = prog.inputs()
    cases, failures = 0, []
    for mesh in meshes:
        if not prog.runs_on(mesh):
            continue
        expected = reference(prog.module(mesh, LayoutRules(())), inputs)
        for rules in layouts(prog, mesh, cap):
            cases += 1
            for column, backend in columns.items():
                try:
                    outputs = backend(prog.module(mesh, rules), {k: v.copy() for k, v in inputs.items()})
                    problem = compare(prog, expected, outputs)
                except Exception as exc:  # any crash of a column is a failing case to report, not to stop at
                    problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if problem is not None:
                    failures.append(Failure(prog, mesh, rules, column, problem))
    return cases, failures


def report(failures: list[Failure], cases: int, shown: int = 6) -> str:
    """A failure message: counts, the smallest failures first, and the smallest one's module."""
    ordered = sorted(failures, key=lambda f: f.size)
    smallest = ordered[0]
    lines = [f"{len(failures)} of {cases} cases fail; smallest first:"]
    lines += [f"  {f}" for f in ordered[:shown]]
    lines += ["smallest failing module:", smallest.program.text(smallest.mesh, smallest.rules)]
    return "\n".join(lines)
