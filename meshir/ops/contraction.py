"""Contractions: `einsum` over named dimensions and its sugar `matmul`."""
from __future__ import annotations

import string
from typing import TYPE_CHECKING

import numpy as np

from ..attributes import AttrSpec, NAMES
from ..diagnostics import MeshirError
from ..ir import Value
from ..registry import OpView, defop
from ..types import Dim, TensorType
from .common import as_dtype, require_dtype, require_same_dtype, union_dims
from .grad_helpers import Cotangents, broadcast_to

if TYPE_CHECKING:
    from ..emitter import Emitter

einsum = defop(
    "einsum", (1, None), "contraction",
    "Multiply the operands, broadcasting by name, and sum every dimension absent from `output`.",
    attrs={"output": AttrSpec(NAMES)},
)


@einsum.type_rule
def _einsum_type(view: OpView) -> TensorType:
    dtype = require_same_dtype(view, view.operand_types)
    for index, t in enumerate(view.operand_types):
        require_dtype(view, t, "numeric", index)
    available = {d.name: d for d in union_dims(view, view.operand_types)}
    dims = []
    for name in view.attr("output"):
        if name not in available:
            raise MeshirError(
                f"einsum output names dimension '{name}', which no operand has "
                f"(operand dimensions: {', '.join(available) or 'none'})"
            )
        dims.append(available[name])
    return TensorType(dtype, tuple(dims))


def einsum_spec(types: list[TensorType], result: TensorType) -> str:
    """The einsum subscripts of a contraction: one letter per dimension name (the
    reference and every backend spell it the same)."""
    letters: dict[str, str] = {}
    for t in [*types, result]:
        for name in t.names:
            letters.setdefault(name, string.ascii_letters[len(letters)])
    inputs = ",".join("".join(letters[n] for n in t.names) for t in types)
    return inputs + "->" + "".join(letters[n] for n in result.names)


def einsum_reference(types: list[TensorType], result: TensorType, arrays: list[np.ndarray]) -> np.ndarray:
    dtype = result.dtype
    wide = [a.astype(np.float32) if dtype.is_float and dtype.itemsize < 4 else a for a in arrays]
    return as_dtype(np.einsum(einsum_spec(types, result), *wide), result)


@einsum.reference
def _einsum(op: OpView, *arrays: np.ndarray) -> np.ndarray:
    return einsum_reference(op.operand_types, op.result_types[0], list(arrays))


einsum.splittable("all")


matmul = defop(
    "matmul", 2, "contraction",
    "Sugar for einsum of two operands: sums the dimensions they share, except those named in `batch`.",
    attrs={"batch": AttrSpec(NAMES, ())},
)


def matmul_output(view: OpView) -> tuple[str, ...]:
    a, b = view.operand_types
    batch = set(view.attr("batch"))
    for name in batch:
        if not (a.has(name) and b.has(name)):
            raise MeshirError(f"matmul batch dimension '{name}' must be in both operands ({a} and {b})")
    shared = set(a.names) & set(b.names)
    return tuple(n for n in (*a.names, *(n for n in b.names if not a.has(n))) if n not in shared or n in batch)


@matmul.type_rule
def _matmul_type(view: OpView) -> TensorType:
    dtype = require_same_dtype(view, view.operand_types)
    for index, t in enumerate(view.operand_types):
        require_dtype(view, t, "numeric", index)
    available = {d.name: d for d in union_dims(view, view.operand_types)}
    return TensorType(dtype, tuple(Dim(n, available[n].size) for n in matmul_output(view)))


@matmul.reference
def _matmul(op: OpView, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return einsum_reference(op.operand_types, op.result_types[0], [a, b])


matmul.splittable("all")


# ---------------------------------------------------------------------------- gradients


def contraction_gradient(e: Emitter, g: Value, operands: list[Value]) -> Cotangents:
    """The gradients of einsum(operands) whose cotangent is `g`: each operand's is the
    einsum of `g` with the other operands onto that operand's dimensions. A
    dimension only that operand has (summed away by the forward einsum) is
    broadcast back."""
    grads: Cotangents = []
    for index, operand in enumerate(operands):
        if not operand.type.dtype.is_float:
            grads.append(None)
            continue
        others = [g, *operands[:index], *operands[index + 1:]]
        available = {n for v in others for n in v.type.names}
        output = [n for n in operand.type.names if n in available]
        grad = e.emit("einsum", *others, output=output)
        grads.append(broadcast_to(e, grad, operand.type))
    return grads


einsum.gradient(lambda e, op, cotangents: contraction_gradient(e, cotangents[0], op.operands))
matmul.gradient(lambda e, op, cotangents: contraction_gradient(e, cotangents[0], op.operands))
