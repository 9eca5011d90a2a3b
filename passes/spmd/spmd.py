"""`spmd`: turn each global function with a mesh into the local program of one
device: per-device types and every communication an explicit collective."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshir.attributes import SymbolRef
from meshir.diagnostics import MeshirError
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import LayoutRules, Mesh
from meshir.registry import all_ops

from ..base import Pass, register_pass
from ..layout import value_layouts, without_trivial_axes
from .halo_rules import HALO_RULES
from .indexing_rules import INDEXING_RULES
from .pool_rules import POOL_RULES
from .rules import SPECIAL_RULES, LowerContext, generic_rule
from .softmax_rules import SOFTMAX_RULES
from .sharded import LocalBuilder, Sharded, relayout


def partition(module: Module, function: Function, mesh: Mesh) -> Function:
    """The local program of `function` on `mesh`: arguments and results arrive and
    leave laid out by the function's rules, so callers split and assemble them."""
    layouts = value_layouts(module, function)
    rules = module.layout_of(function) or LayoutRules(())
    args = [Value(layouts[a].local_type(a.type, mesh), a.name) for a in function.args]
    attributes = {"spmd": SymbolRef(mesh.name), "layout": rules}
    if "gradients" in function.attributes:
        attributes["gradients"] = function.attributes["gradients"]
    local = Function(function.name, args, [], attributes=attributes, loc=function.loc, return_loc=function.return_loc)
    builder = LocalBuilder(module, local, mesh)
    context = LowerContext(builder, module, function, mesh, layouts)
    env: dict[Value, Sharded] = {g: Sharded(l, layouts[g], g.type) for g, l in zip(function.args, args)}
    for op in function.ops:
        rule = op.opdef.lowerings["spmd"]
        try:
            results = rule(context, op, [env[v] for v in op.operands])
        except MeshirError as exc:
            raise MeshirError(exc.message, exc.loc or op.loc) from None
        env.update(zip(op.results, results))
    interface = [without_trivial_axes(rules.layout_of(v.type), mesh) for v in function.returns]
    local.returns = [relayout(builder, env[v], layout).value for v, layout in zip(function.returns, interface)]
    local.result_types = [v.type for v in local.returns]
    _name_returns_like_the_global_function(local, function)
    return local


def _name_returns_like_the_global_function(local: Function, function: Function) -> None:
    """Outputs are keyed by returned names, so a returned value keeps its global name;
    a local value already holding that name (say the partial sum before the
    all_reduce that completes it) is renamed out of the way. An argument, or a
    value already named for another output, is returned through a named copy."""
    named: dict[int, str] = {}
    for index, (local_value, global_value) in enumerate(zip(local.returns, function.returns)):
        if local_value.name == global_value.name:
            named.setdefault(id(local_value), global_value.name)
            continue
        if local_value.owner is None or named.get(id(local_value), global_value.name) != global_value.name:
            copy = Operation("stop_gradient", [local_value], {}, [local_value.type])
            local.ops.append(copy)
            local_value = local.returns[index] = copy.results[0]
        for other in local.values():
            if other.name == global_value.name:
                other.name = f"{global_value.name}_local"
        local_value.name = global_value.name
        named[id(local_value)] = global_value.name


def register_rules() -> None:
    """Every global op gets its lowering: a special rule, or the generic one."""
    special = {**SPECIAL_RULES, **INDEXING_RULES, **SOFTMAX_RULES, **HALO_RULES, **POOL_RULES}
    for opdef in all_ops():
        if not opdef.local_only:
            opdef.lower("spmd", special.get(opdef.name, generic_rule))


register_rules()


@register_pass
@dataclass(frozen=True)
class Spmd(Pass):
    name: ClassVar[str] = "spmd"

    def run(self, module: Module) -> None:
        for name, function in list(module.functions.items()):
            mesh = module.mesh_of(function)
            if function.is_local or mesh is None:
                continue
            module.functions[name] = partition(module, function, mesh)
