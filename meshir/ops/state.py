"""Variable state: `read @v`, `assign @v, %x`, `assign_add @v, %x`, and `stop_gradient`.

The variable is the attribute `var`; in text it is the op's leading `@symbol`
operand. References read and write `op.state`, a mapping from variable name to
its value, which the interpreter supplies (in a local program, the device's slice).

In a local (spmd) function a variable is stored split over the mesh: the
optional `layout` attribute gives its storage layout, and the op sees the
device's slice. Without it every device holds the whole variable.

Dtypes: the state holds a variable in its slice dtype; `read` yields its
activation dtype, or the `dtype` asked for (the optimizer reads the master
dtype); `assign` and `assign_add` take a value of any of the variable's
dtypes and store it in the slice dtype.
"""
from __future__ import annotations

import numpy as np

from ..attributes import DTYPE, LAYOUT, SYMBOL, AttrSpec
from ..diagnostics import MeshirError
from ..ir import Variable
from ..registry import NOT_DIFFERENTIABLE, OpView, defop
from ..types import TensorType
from .common import as_dtype, require_dtype, same_as_operand
from .grad_helpers import zero_gradient
from .mesh_ops import check_value_layout

_STATE_ATTRS = {"var": AttrSpec(SYMBOL), "layout": AttrSpec(LAYOUT, None)}


def variable_of(view: OpView) -> Variable:
    ref = view.attr("var")
    variables = view.module.variables if view.module is not None else {}
    if ref.name not in variables:
        raise MeshirError(f"{view.name}: unknown variable {ref}; declare it with `var {ref} : TYPE = INITIALIZER`")
    return variables[ref.name]


def storage_type(view: OpView) -> TensorType:
    """The variable's stored type as this op sees it: the global slice type, or in a
    local function with a `layout`, the type of one device's block."""
    variable = variable_of(view)
    rules = view.attr("layout")
    if rules is None:
        return variable.slice_type
    if view.function is None or not view.function.is_local:
        raise MeshirError(
            f"{view.name}: 'layout' gives a variable's storage layout in a local function "
            f"(attributes {{spmd = @mesh}}); in a global function pin a layout with reshard"
        )
    mesh = view.mesh
    return check_value_layout(view, rules, variable.type, mesh).local_type(variable.slice_type, mesh)


def _variable_dtypes(variable: Variable) -> set:
    return {variable.type.dtype, variable.slice_type.dtype, variable.activation_type.dtype}


read = defop(
    "read", 0, "state", "The variable's current value, in its activation dtype or in `dtype` (one of its dtypes).",
    attrs={**_STATE_ATTRS, "dtype": AttrSpec(DTYPE, None)}, symbol_operand="var", reads_state=True,
)


@read.type_rule
def _read_type(view: OpView) -> TensorType:
    variable = variable_of(view)
    dtype = view.attr("dtype") or variable.activation_type.dtype
    if dtype not in _variable_dtypes(variable):
        known = ", ".join(sorted(str(d) for d in _variable_dtypes(variable)))
        raise MeshirError(f"{view.name}: variable {view.attr('var')} has no dtype {dtype} (its dtypes: {known})")
    return storage_type(view).with_dtype(dtype)


@read.reference
def _read(op: OpView) -> np.ndarray:
    # A copy, so that a caller holding the result never aliases the stored value.
    return as_dtype(op.state[op.attr("var").name], op.result_types[0]).copy()


read.splittable("all")
# read has no operand: the autodiff pass adds its cotangent to the variable's gradient.
read.gradient(lambda e, op, cotangents: [])


def _assign_type(view: OpView) -> list[TensorType]:
    expected = storage_type(view)
    given = view.operand_types[0]
    if given.with_dtype(expected.dtype) != expected or given.dtype not in _variable_dtypes(variable_of(view)):
        what = "each device's slice of variable" if view.attr("layout") is not None else "variable"
        dtypes = " or ".join(sorted(str(d) for d in _variable_dtypes(variable_of(view))))
        raise MeshirError(f"{view.name}: the value is {given} but {what} {view.attr('var')} is {expected} "
                          f"(it takes a value of dtype {dtypes})")
    return []


assign = defop(
    "assign", 1, "state", "Store the operand in the variable; no results.",
    attrs=_STATE_ATTRS, symbol_operand="var", side_effects=True,
)
assign.type_rule(_assign_type)


@assign.reference
def _assign(op: OpView, x: np.ndarray) -> tuple:
    op.state[op.attr("var").name] = as_dtype(x, variable_of(op).slice_type).copy()
    return ()


assign.splittable("all")
assign.gradient(NOT_DIFFERENTIABLE)

assign_add = defop(
    "assign_add", 1, "state", "Add the operand to the variable in place; no results.",
    attrs=_STATE_ATTRS, symbol_operand="var", side_effects=True,
)


@assign_add.type_rule
def _assign_add_type(view: OpView) -> list[TensorType]:
    results = _assign_type(view)
    require_dtype(view, view.operand_types[0], "numeric")
    return results



@assign_add.reference
def _assign_add(op: OpView, x: np.ndarray) -> tuple:
    name = op.attr("var").name
    stored = variable_of(op).slice_type
    old = op.state[name]
    if stored.dtype.is_float and min(stored.dtype.itemsize, op.operand_types[0].dtype.itemsize) < 4:
        old, x = old.astype(np.float32), x.astype(np.float32)
    with np.errstate(all="ignore"):
        op.state[name] = as_dtype(old + x, stored)
    return ()


assign_add.splittable("all")
assign_add.gradient(NOT_DIFFERENTIABLE)

stop_gradient = defop("stop_gradient", 1, "state", "Identity whose gradient is zero: autodiff does not look through it.")
stop_gradient.type_rule(same_as_operand)
stop_gradient.reference(lambda op, x: x)
stop_gradient.splittable("all")
stop_gradient.gradient(zero_gradient)
