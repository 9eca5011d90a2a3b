"""Mesh ops of global programs: `reshard` pins a value's layout, `transfer` moves a
value to another mesh. Both are the identity on the global value; the spmd pass
turns them into collectives."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..attributes import LAYOUT, SYMBOL, AttrSpec
from ..diagnostics import MeshirError
from ..ir import Function, Operation, Value
from ..mesh import LayoutRules, Mesh, ValueLayout
from ..registry import OpView, defop
from ..types import TensorType
from .common import same_as_operand
from .grad_helpers import Cotangents

if TYPE_CHECKING:
    from ..emitter import Emitter


def check_value_layout(view: OpView, rules: LayoutRules, ttype: TensorType, mesh: Mesh) -> ValueLayout:
    """The layout `rules` give one value of type `ttype` on `mesh`. Unlike function-wide
    rules, a layout pinned to one value must mention only its dimensions and may not
    reuse a mesh axis, since there it is always a typo rather than a fallback."""
    try:
        rules.check_against(mesh)
    except MeshirError as exc:
        raise MeshirError(f"{view.name}: {exc.message}") from None
    owner: dict[str, str] = {}
    for dim, axes in rules.rules:
        if not ttype.has(dim):
            raise MeshirError(
                f"{view.name}: layout names dimension '{dim}', which {ttype} does not have "
                f"(dimensions: {', '.join(ttype.names) or 'none'})"
            )
        for axis in axes:
            if axis in owner:
                raise MeshirError(
                    f"{view.name}: mesh axis '{axis}' splits both '{owner[axis]}' and '{dim}'; "
                    f"an axis can split only one dimension of a value"
                )
            owner[axis] = dim
    layout = rules.layout_of(ttype)
    try:
        layout.local_type(ttype, mesh)
    except MeshirError as exc:
        raise MeshirError(f"{view.name}: {exc.message}") from None
    return layout


def _require_global(view: OpView) -> None:
    if view.function is not None and view.function.is_local:
        raise MeshirError(f"{view.name} is an op of global programs; the spmd pass lowers it to collectives")


def _identity(op: OpView, x: np.ndarray) -> np.ndarray:
    return x


reshard = defop(
    "reshard", 1, "mesh",
    "Identity that pins the operand's layout on the function's mesh, like a sharding constraint; "
    "dimensions without a rule are replicated.",
    attrs={"layout": AttrSpec(LAYOUT)},
)


@reshard.type_rule
def _reshard_type(view: OpView) -> TensorType:
    _require_global(view)
    mesh = view.mesh
    if mesh is None:
        raise MeshirError("reshard: the function has no mesh; add `mesh = @name` to its attributes")
    check_value_layout(view, view.attr("layout"), view.operand_types[0], mesh)
    return same_as_operand(view)


reshard.reference(_identity)
reshard.splittable("all")


transfer = defop(
    "transfer", 1, "mesh",
    "Move the operand to mesh `to` of the module, optionally with a layout there; the value is unchanged.",
    attrs={"to": AttrSpec(SYMBOL), "layout": AttrSpec(LAYOUT, None)},
)


@transfer.type_rule
def _transfer_type(view: OpView) -> TensorType:
    _require_global(view)
    target = view.attr("to").name
    meshes = view.module.meshes if view.module is not None else {}
    if target not in meshes:
        known = ", ".join("@" + m for m in meshes) or "none"
        raise MeshirError(f"transfer: @{target} is not a mesh of the module (meshes: {known})")
    if view.attr("layout") is not None:
        check_value_layout(view, view.attr("layout"), view.operand_types[0], meshes[target])
    return same_as_operand(view)


transfer.reference(_identity)
transfer.splittable("all")


# ---------------------------------------------------------------------------- gradients

reshard.gradient(lambda e, op, cotangents: [e.emit("reshard", cotangents[0], layout=op.attr("layout"))])


def _mesh_symbol_of(function: Function, value: Value) -> str | None:
    """The mesh a value of a global function lives on: the `to` of the nearest
    transfer it comes from, else the function's own mesh."""
    while value.owner is not None and value.owner.operands:
        if value.owner.name == "transfer":
            return value.owner.attr("to").name
        value = value.owner.operands[0]
    return function.mesh_symbol()


@transfer.gradient
def _transfer_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """The cotangent moves back to the operand's mesh (where there is one)."""
    source = _mesh_symbol_of(e.function, op.operands[0])
    g = cotangents[0]
    return [g if source is None else e.emit("transfer", g, to=f"@{source}")]
