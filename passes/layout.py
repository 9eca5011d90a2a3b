"""`layout`: give every value of every global function its layout.

A value's layout comes from its function's rules (`layout = @name` or an inline
map, or the pass option `rules`), applied by dimension name; a value made by
`reshard` takes the layout pinned there instead. Size-1 mesh axes split nothing
and are dropped, so a layout that splits nothing is recognisably replicated.
The pass resolves each function's rules into an inline map, so the printed IR
shows exactly what partitioning will use, and checks every value's split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshir.diagnostics import FlagError, MeshirError
from meshir.ir import Function, Module, Value
from meshir.mesh import LayoutRules, Mesh, ValueLayout, parse_layout_spec

from .base import Pass, register_pass


def without_trivial_axes(layout: ValueLayout, mesh: Mesh) -> ValueLayout:
    return ValueLayout(tuple(tuple(a for a in axes if mesh.axis_size(a) > 1) for axes in layout.axes))


def value_layouts(module: Module, function: Function) -> dict[Value, ValueLayout]:
    """The layout of every value of a global function with a mesh."""
    mesh = module.mesh_of(function)
    rules = module.layout_of(function) or LayoutRules(())
    layouts: dict[Value, ValueLayout] = {}
    for value in function.args:
        layouts[value] = without_trivial_axes(rules.layout_of(value.type), mesh)
    for op in function.ops:
        pinned = op.attributes.get("layout") if op.name in ("reshard", "transfer") else None
        for value in op.results:
            chosen = pinned if pinned is not None else rules
            layouts[value] = without_trivial_axes(chosen.layout_of(value.type), mesh)
    return layouts


def as_rules(layout: ValueLayout, names: tuple[str, ...]) -> LayoutRules:
    """The rules that give exactly `layout` to a value with dimensions `names`."""
    return LayoutRules(tuple((name, axes) for name, axes in zip(names, layout.axes) if axes))


@register_pass
@dataclass(frozen=True)
class Layout(Pass):
    """Resolve layout rules; `layout{rules="batch:rows,hidden:cols"}` overrides the module's."""

    name: ClassVar[str] = "layout"
    rules: str = ""

    def __post_init__(self) -> None:
        if self.rules:
            parse_layout_spec(self.rules)

    def run(self, module: Module) -> None:
        override = parse_layout_spec(self.rules) if self.rules else None
        for function in module.functions.values():
            mesh = module.mesh_of(function)
            if function.is_local or mesh is None:
                continue
            rules = override or module.layout_of(function) or LayoutRules(())
            try:
                rules.check_against(mesh)
            except MeshirError as exc:
                raise FlagError(f"layout: {exc.message}") from None
            function.attributes["layout"] = rules
            for value, layout in value_layouts(module, function).items():
                try:
                    layout.local_type(value.type, mesh)
                except MeshirError as exc:
                    loc = value.owner.loc if value.owner is not None else function.loc
                    raise MeshirError(f"%{value.name}: {exc.message}", loc) from None
