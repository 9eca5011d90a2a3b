"""The verifier: checks a module and infers every op's result types.

Result types the text left out (`Value.type is None`) are inferred here, in
program order; types that are present must equal the inferred ones. Errors are
`MeshirError`s at the op's location, naming the op, the dimension or axis and
the sizes involved.
"""
from __future__ import annotations

from typing import Any

from .attributes import BOOL, DTYPE, AttrKind, AttrSpec, AttrTypeError, SymbolRef, check_attributes
from .diagnostics import Location, MeshirError
from .ir import Function, Module, Operation, Value, Variable
from .mesh import LayoutRules, Mesh
from .registry import OpView, find
from .types import TensorType


def _distinct_symbols(value: Any) -> tuple[SymbolRef, ...]:
    if not (isinstance(value, tuple) and value and all(isinstance(v, SymbolRef) for v in value)):
        raise AttrTypeError("a non-empty list of symbols, as in [@a, @b]")
    if len({v.name for v in value}) != len(value):
        raise AttrTypeError("a list of distinct symbols")
    return value


VARIABLE_ATTRS: dict[str, AttrSpec] = {
    "trainable": AttrSpec(BOOL, True),
    "slice_dtype": AttrSpec(DTYPE, None),  # how devices store it (default: the declared, master dtype)
    "activation_dtype": AttrSpec(DTYPE, None),  # what `read` yields (default: the master dtype)
    # The variables stacked along its leading dimension, in order (passes/autostack.py):
    # checkpoints hold them under these names.
    "stacks": AttrSpec(AttrKind("a list of symbols", _distinct_symbols), None),
}
# `loss_scale` (set by mixed-precision) scales the loss before autodiff's
# backward pass: a number, or an f32[] variable the optimizer adjusts.
# `gradients` (set by autodiff) names, for each result after the loss, the
# variable it is the gradient of.
FUNCTION_ATTRS = ("mesh", "layout", "spmd", "gradients", "loss_scale")


def verify_module(module: Module) -> None:
    for variable in module.variables.values():
        verify_variable(variable)
    for function in module.functions.values():
        verify_function(module, function)


def _at(loc: Location | None, message: str) -> MeshirError:
    return MeshirError(message, loc)


def verify_variable(variable: Variable) -> None:
    from .initializers import INITIALIZERS

    init = INITIALIZERS.get(variable.initializer)
    if init is None:
        known = ", ".join(sorted(INITIALIZERS))
        raise _at(variable.loc, f"variable @{variable.name}: unknown initializer '{variable.initializer}' (initializers: {known})")
    try:
        variable.init_args = init.check_args(variable.init_args, variable.type)
        variable.attributes = check_attributes(VARIABLE_ATTRS, variable.attributes, f"variable @{variable.name}")
    except MeshirError as exc:
        raise _at(variable.loc, exc.message) from None
    stacked = variable.attributes.get("stacks")
    if stacked is not None and (not variable.type.dims or variable.type.dims[0].size != len(stacked)):
        leading = f"leading dimension {variable.type.dims[0]}" if variable.type.dims else "no leading dimension"
        raise _at(variable.loc, f"variable @{variable.name} stacks {_count(len(stacked), 'variable')} but has {leading}; "
                                "it needs one element of its leading dimension per stacked variable")
    master = variable.type.dtype
    for key in ("slice_dtype", "activation_dtype"):
        dtype = variable.attributes.get(key)
        if dtype is not None and dtype != master and not (dtype.is_float and master.is_float):
            raise _at(variable.loc, f"variable @{variable.name}: {key} = {dtype} differs from its master dtype {master}; "
                                    "only float variables keep several precisions")


def function_mesh_and_layout(module: Module, function: Function) -> tuple[Mesh | None, LayoutRules | None]:
    """Check the function's attributes; return its mesh and layout rules."""
    for key, value in function.attributes.items():
        if key not in FUNCTION_ATTRS:
            raise _at(function.loc, f"func @{function.name} has no attribute '{key}' (attributes: {', '.join(FUNCTION_ATTRS)})")
        if key in ("mesh", "spmd"):
            if not isinstance(value, SymbolRef) or value.name not in module.meshes:
                raise _at(function.loc, f"func @{function.name}: '{key}' must name a mesh declared with `mesh @name = <...>`, got {value}")
        if key == "layout":
            if isinstance(value, SymbolRef):
                if value.name not in module.layouts:
                    raise _at(function.loc, f"func @{function.name}: unknown layout {value}")
            elif not isinstance(value, LayoutRules):
                raise _at(function.loc, f"func @{function.name}: 'layout' must be a layout symbol or map, got {value}")
    gradients = function.attributes.get("gradients")
    if gradients is not None:
        if not isinstance(gradients, tuple) or not all(isinstance(g, SymbolRef) and g.name in module.variables for g in gradients):
            raise _at(function.loc, f"func @{function.name}: 'gradients' must list declared variables, as in [@w1, @b1]")
        if len(gradients) != len(function.result_types) - 1:
            raise _at(function.loc, f"func @{function.name}: 'gradients' names {len(gradients)} variables but the function returns "
                                    f"{len(function.result_types) - 1} results after the loss")
    scale = function.attributes.get("loss_scale")
    if scale is not None:
        static = isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0
        dynamic = isinstance(scale, SymbolRef) and scale.name in module.variables and str(module.variables[scale.name].type) == "f32[]"
        if not (static or dynamic):
            raise _at(function.loc, f"func @{function.name}: 'loss_scale' must be a positive number or an f32[] variable, got {scale}")
    if "mesh" in function.attributes and "spmd" in function.attributes:
        raise _at(function.loc, f"func @{function.name}: a function is global (mesh = ...) or local (spmd = ...), not both")
    mesh = module.mesh_of(function)
    layout = module.layout_of(function)
    if layout is not None:
        if mesh is None:
            raise _at(function.loc, f"func @{function.name} has a layout but no mesh; add `mesh = @name` to its attributes")
        try:
            layout.check_against(mesh)
        except MeshirError as exc:
            raise _at(function.loc, f"func @{function.name}: {exc.message}") from None
    return mesh, layout


def infer_op(module: Module, function: Function, op: Operation) -> list[TensorType]:
    """Check one op's operands and attributes and return its result types."""
    opdef = find(op.name)
    if opdef is None:
        raise _at(op.loc, f"unknown op '{op.name}'")
    try:
        opdef.check_operand_count(len(op.operands))
        op.attributes = opdef.check_attributes(op.attributes)
        if opdef.local_only and not function.is_local:
            raise MeshirError(f"{op.name} is a collective of local programs; it may only appear in a function with `attributes {{spmd = @mesh}}`")
        if opdef.symbol_operand:
            _check_symbol_operand(module, op, opdef.symbol_operand)
        operand_types = [v.type for v in op.operands]
        _check_shared_sizes(opdef, OpView(opdef, operand_types, op.attributes, module, function))
        return opdef.infer(OpView(opdef, operand_types, op.attributes, module, function))
    except MeshirError as exc:
        if exc.loc is not None:
            raise
        raise _at(op.loc, exc.message) from None


def _check_symbol_operand(module: Module, op: Operation, attr: str) -> None:
    ref = op.attributes.get(attr)
    if not isinstance(ref, SymbolRef) or ref.name not in module.variables:
        raise MeshirError(f"{op.name}: unknown variable {ref}; declare it with `var {ref} : TYPE = INITIALIZER`")


def _check_shared_sizes(opdef, view: OpView) -> None:
    exempt = opdef.size_exempt(view) if opdef.size_exempt else set()
    sizes: dict[str, tuple[int, int]] = {}
    for index, t in enumerate(view.operand_types):
        for dim in t.dims:
            if dim.name in exempt:
                continue
            seen = sizes.setdefault(dim.name, (dim.size, index))
            if seen[0] != dim.size:
                raise MeshirError(
                    f"{opdef.name}: dimension '{dim.name}' has size {seen[0]} in operand {seen[1]} "
                    f"but size {dim.size} in operand {index}"
                )


def verify_function(module: Module, function: Function) -> None:
    mesh, layout = function_mesh_and_layout(module, function)
    defined = set(function.args)
    names: set[str] = set()
    for value in function.args:
        if value.name in names:
            raise _at(function.loc, f"func @{function.name}: argument %{value.name} defined twice")
        names.add(value.name)
    # Layouts depend only on the type, so each distinct type is checked once.
    divisible: set[TensorType] = set()
    check_splits = mesh is not None and layout is not None and not function.is_local
    if check_splits:
        for value in function.args:
            _check_divisible(layout, mesh, value.type, function.loc, f"argument %{value.name}", divisible)
    for op in function.ops:
        for index, operand in enumerate(op.operands):
            if operand not in defined:
                raise _at(op.loc, f"{op.name}: operand {index} (%{operand.name}) is used before it is defined")
        inferred = infer_op(module, function, op)
        if len(inferred) != len(op.results):
            named = f"{len(op.results)} {'are' if len(op.results) != 1 else 'is'} named"
            raise _at(op.loc, f"{op.name} produces {_count(len(inferred), 'result')} but {named}")
        for value, ttype in zip(op.results, inferred):
            if value.type is None:
                value.type = ttype
            elif value.type != ttype:
                raise _at(op.loc, f"{op.name}: result %{value.name} is declared {value.type} but the op produces {ttype}")
            if check_splits:
                _check_divisible(layout, mesh, ttype, op.loc, f"%{value.name} = {op.name}", divisible)
        defined.update(op.results)
    if mesh is not None and not function.is_local:
        _check_meshes(function)
    if len(function.returns) != len(function.result_types):
        raise _at(function.return_loc or function.loc, f"func @{function.name} declares {_count(len(function.result_types), 'result')} but returns {len(function.returns)}")
    for index, (value, ttype) in enumerate(zip(function.returns, function.result_types)):
        if value not in defined:
            raise _at(function.return_loc, f"return: %{value.name} is not defined")
        if value.type != ttype:
            raise _at(function.return_loc or function.loc, f"func @{function.name} result {index} is declared {ttype} but %{value.name} is {value.type}")


def _check_meshes(function: Function) -> None:
    """Values move between meshes only by `transfer`: arguments live on the
    function's mesh, a transfer's result on its `to`, any other result where its
    operands live, which must be one mesh. Ops without operands (constants,
    reads) go wherever their users are."""
    lives: dict[Value, str | None] = {arg: function.mesh_symbol() for arg in function.args}
    for op in function.ops:
        if op.name == "transfer":
            lives[op.results[0]] = op.attr("to").name
            continue
        placed = [(index, operand, lives.get(operand)) for index, operand in enumerate(op.operands)]
        meshes = {mesh for _, _, mesh in placed if mesh is not None}
        if len(meshes) > 1:
            where = ", ".join(f"%{operand.name or index} on @{mesh}" for index, operand, mesh in placed if mesh is not None)
            raise _at(op.loc, f"{op.name}: operands live on different meshes ({where}); move one with "
                              f"transfer {{to = @...}} first")
        for result in op.results:
            lives[result] = next(iter(meshes), None)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _check_divisible(layout: LayoutRules, mesh: Mesh, ttype: TensorType, loc: Location | None, what: str, checked: set[TensorType]) -> None:
    if ttype in checked:
        return
    try:
        layout.layout_of(ttype).local_type(ttype, mesh)
    except MeshirError as exc:
        raise _at(loc, f"{what}: {exc.message}") from None
    checked.add(ttype)
