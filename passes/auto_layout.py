"""`auto-layout`: choose the layout rules of the global functions on a mesh, with
the `estimate` pass as the cost model.

    auto-layout                          every mesh of the module
    auto-layout{memory=8589934592}       only layouts whose peak per device fits
    auto-layout{flops-per-second=1e12, bytes-per-second=1e10, latency=1e-5}

The functions that share a mesh get one set of rules (a variable is laid out
alike in the train step and in an evaluation). A candidate is partitioned on a
copy of the module as `layout,spmd` would partition it and measured by
`estimate`: its cost is, summed over those functions, FLOPs / flops-per-second
+ the bytes each device sends over each mesh axis / bytes-per-second + latency
per collective; a candidate whose peak memory per device exceeds `memory` loses
to every one that fits, and of two equal costs the smaller peak wins. Layouts that the layout pass
rejects (an axis that does not divide its dimension) are skipped.

The search is coordinate descent over mesh axes: from no rules (everything
replicated), each axis in turn is moved to the dimension (or none), or also
given another dimension, whichever costs least with the other axes held, and
the axes are swept again until a sweep changes nothing (at most `sweeps`
times). So an axis may join another on one dimension (`batch: (rows, cols)`)
and split several dimensions (`heads: cols, hidden: cols`). The chosen rules are written inline as each function's
`layout`, so the printed IR shows them, and the best candidates are reported on
standard error (`report=false` keeps it quiet).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from meshir.diagnostics import Location, MeshirError
from meshir.ir import Function, Module
from meshir.mesh import LayoutRules, Mesh

from .base import Pass, register_pass
from .estimate import FunctionEstimate, estimate_function, format_bytes

# How many of the best candidates the report lists.
REPORTED = 5


@dataclass(frozen=True)
class Candidate:
    """One set of rules, measured: seconds per call by the cost model, the largest
    peak memory per device, and collectives run, over the mesh's functions."""

    rules: LayoutRules
    seconds: float
    peak: int
    collectives: int
    bytes_sent: int
    fits: bool  # in the memory the pass was given

    @property
    def key(self) -> tuple[bool, float, int]:
        return (not self.fits, self.seconds, self.peak)


def rules_text(rules: LayoutRules) -> str:
    parts = [f"{dim}: {axes[0] if len(axes) == 1 else '(' + ', '.join(axes) + ')'}" for dim, axes in rules.rules]
    return "{" + ", ".join(parts) + "}"


def _dimension_names(module: Module, functions: list[Function]) -> list[str]:
    """Every dimension name the functions' values and variables have, in order of appearance."""
    names: dict[str, None] = {}
    for function in functions:
        for value in function.values():
            names.update(dict.fromkeys(value.type.names))
        for op in function.ops:
            if op.name in ("read", "assign", "assign_add"):
                names.update(dict.fromkeys(module.variables[op.attr("var").name].type.names))
    return list(names)


def _with_axis(mesh: Mesh, rules: dict[str, tuple[str, ...]], axis: str, dim: str | None, *,
               keep: bool = False) -> LayoutRules:
    """`rules` with `axis` moved to `dim` (None: to no dimension), or with `keep`
    also given to `dim` (an axis may split several dimensions that no value has
    together, as `heads` and `hidden` in a transformer); a dimension's axes in
    mesh order, so that each split is reached once."""
    order = [a.name for a in mesh.axes]
    placed = {d: axes if keep else tuple(a for a in axes if a != axis) for d, axes in rules.items()}
    if dim is not None and axis not in placed.get(dim, ()):
        placed[dim] = tuple(sorted(placed.get(dim, ()) + (axis,), key=order.index))
    return LayoutRules(tuple((d, axes) for d, axes in placed.items() if axes))


@dataclass
class _Search:
    """Candidates of one mesh, measured on copies of the module's text."""

    text: str
    names: list[str]
    flops_per_second: float
    bytes_per_second: float
    latency: float
    memory: int
    visited: dict[LayoutRules, Candidate | None]

    def measure(self, rules: LayoutRules) -> Candidate | None:
        if rules not in self.visited:
            self.visited[rules] = self._partitioned(rules)
        return self.visited[rules]

    def _partitioned(self, rules: LayoutRules) -> Candidate | None:
        from meshir.frontends.text import parse_module

        from .pipeline import PassManager, parse_pipeline

        copy = parse_module(self.text)
        for name in self.names:
            copy.functions[name].attributes["layout"] = rules
        try:
            PassManager(parse_pipeline("layout,spmd")).run(copy)
        except MeshirError:
            return None
        return self._candidate(rules, [estimate_function(copy, copy.functions[name]) for name in self.names])

    def _candidate(self, rules: LayoutRules, estimates: list[FunctionEstimate]) -> Candidate:
        peak = max(e.memory.peak for e in estimates)
        sent = sum(sum(e.communication.bytes_per_axis.values()) for e in estimates)
        collectives = sum(sum(e.communication.count_per_kind.values()) for e in estimates)
        flops = sum(e.flops for e in estimates)
        seconds = flops / self.flops_per_second + sent / self.bytes_per_second + collectives * self.latency
        return Candidate(rules, seconds, peak, collectives, sent, fits=not self.memory or peak <= self.memory)


@register_pass
@dataclass(frozen=True)
class AutoLayout(Pass):
    name: ClassVar[str] = "auto-layout"
    memory: int = 0  # bytes of memory per device a layout may use at its peak; 0: no limit
    flops_per_second: float = 1e12  # what one device computes
    bytes_per_second: float = 1e10  # what one device sends over one mesh axis
    latency: float = 1e-5  # seconds each collective costs besides its bytes
    sweeps: int = 3
    report: bool = True  # print the best candidates on standard error

    def __post_init__(self) -> None:
        for option in ("flops_per_second", "bytes_per_second"):
            if getattr(self, option) <= 0:
                raise ValueError(f"{option.replace('_', '-')} must be positive, got {getattr(self, option)}")
        if self.memory < 0 or self.latency < 0 or self.sweeps < 1:
            raise ValueError("memory and latency must be at least 0 and sweeps at least 1")

    def run(self, module: Module) -> dict[str, int]:
        from meshir.printer import print_module

        by_mesh: dict[str, list[Function]] = {}
        for function in module.functions.values():
            if not function.is_local and function.mesh_symbol():
                by_mesh.setdefault(function.mesh_symbol(), []).append(function)
        counters = {"candidates": 0, "rejected": 0}
        text = print_module(module)
        for mesh_name, functions in by_mesh.items():
            search = _Search(text, [f.name for f in functions], self.flops_per_second, self.bytes_per_second,
                             self.latency, self.memory, {})
            best = self._descend(module.meshes[mesh_name], _dimension_names(module, functions), search, functions[0].loc)
            for function in functions:
                function.attributes["layout"] = best.rules
            counters["candidates"] += len(search.visited)
            counters["rejected"] += sum(c is None or not c.fits for c in search.visited.values())
            if self.report:
                sys.stderr.write(_report(module.meshes[mesh_name], best, search))
        return counters

    def _descend(self, mesh: Mesh, dims: list[str], search: _Search, loc: Location | None) -> Candidate:
        best = search.measure(LayoutRules(()))
        if best is None:
            raise MeshirError(f"auto-layout: the functions on mesh @{mesh.name} {mesh} do not partition even replicated", loc)
        axes = [axis.name for axis in mesh.axes if axis.size > 1]
        for _ in range(self.sweeps):
            changed = False
            for axis in axes:
                current = best.rules.as_dict()
                moves = [_with_axis(mesh, current, axis, dim) for dim in [None, *dims]]
                if any(axis in split for split in current.values()):
                    moves += [_with_axis(mesh, current, axis, dim, keep=True) for dim in dims]
                for rules in moves:
                    candidate = search.measure(rules)
                    if candidate is not None and candidate.key < best.key:
                        best, changed = candidate, True
            if not changed:
                break
        if not best.fits:
            smallest = min((c for c in search.visited.values() if c is not None), key=lambda c: c.peak)
            raise MeshirError(f"auto-layout: no layout found on mesh @{mesh.name} {mesh} fits in memory = {self.memory} "
                              f"bytes per device; the smallest peak found is {smallest.peak} bytes "
                              f"({format_bytes(smallest.peak)}), with layout {rules_text(smallest.rules)}", loc)
        return best


def _report(mesh: Mesh, best: Candidate, search: _Search) -> str:
    measured = sorted((c for c in search.visited.values() if c is not None and c.fits), key=lambda c: c.key)
    rejected = sum(c is None for c in search.visited.values())
    over = sum(c is not None and not c.fits for c in search.visited.values())
    width = max([len("layout"), *(len(rules_text(c.rules)) for c in measured[:REPORTED])]) + 2
    lines = [f"===- auto-layout of mesh @{mesh.name} {mesh} -===",
             f"chosen: {rules_text(best.rules)}",
             f"{len(search.visited)} layouts measured ({rejected} that the layout pass rejects, {over} over memory); the best:",
             f"  {'layout':<{width}}{'time':>12}{'peak/device':>14}{'sent/device':>14}{'collectives':>13}"]
    for c in measured[:REPORTED]:
        lines.append(f"  {rules_text(c.rules):<{width}}{c.seconds * 1e3:>9.3f} ms{format_bytes(c.peak):>14}"
                     f"{format_bytes(c.bytes_sent):>14}{c.collectives:>13}")
    return "\n".join(lines) + "\n"
