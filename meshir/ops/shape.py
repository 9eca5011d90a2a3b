"""Shape ops: rename, reshape, transpose, broadcast, slice, concat, split, pad,
stack, unstack and shift.

Dimensions keep their names through every op that does not say otherwise:
`slice`, `pad` and `concat` change a dimension's size, not its name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..attributes import AttrSpec, BOOL, FLOAT, INT, INTS, NAME, NAMES, SHAPE
from ..diagnostics import MeshirError
from ..dtypes import DType
from ..ir import Operation, Value
from ..registry import OpView, defop
from ..types import Dim, TensorType
from .common import align, new_dim_name, require_dims
from .grad_helpers import Cotangents, in_order, or_zeros, unbroadcast

if TYPE_CHECKING:
    from ..emitter import Emitter


def _shape_text(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _typed(view: OpView, dtype: DType, dims: Sequence[Dim]) -> TensorType:
    """A result type from a user-written shape; a bad shape is reported as this op's error."""
    try:
        return TensorType(dtype, tuple(dims))
    except MeshirError as exc:
        raise MeshirError(f"{view.name}: {exc.message}") from None


def _all_but(*attrs: str):
    """Splittable: every operand dimension except those the named attributes hold."""

    def dims(view: OpView) -> frozenset[str]:
        touched = {view.attr(a) for a in attrs}
        return frozenset(n for t in view.operand_types for n in t.names) - touched

    return dims


def _dim_and_size(view: OpView, ttype: TensorType) -> tuple[str, int]:
    dim = view.attr("dim")
    require_dims(view, ttype, [dim])
    return dim, ttype.size_of(dim)


def _require_non_negative(view: OpView, **values: int) -> None:
    for key, value in values.items():
        if value < 0:
            raise MeshirError(f"{view.name}: {key} must be >= 0, got {value}")


# --- rename ---------------------------------------------------------------

rename = defop("rename", 1, "shape", "Rename dimension `from` to `to`, a name the operand does not have; data unchanged.",
               attrs={"from": AttrSpec(NAME), "to": AttrSpec(NAME)})


@rename.type_rule
def _rename_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    old, new = view.attr("from"), view.attr("to")
    require_dims(view, operand, [old])
    new_dim_name(view, operand, new)
    return operand.with_dims(Dim(new, d.size) if d.name == old else d for d in operand.dims)


rename.reference(lambda op, x: x)
rename.splittable(_all_but("from", "to"))

# --- reshape --------------------------------------------------------------

reshape = defop("reshape", 1, "shape", "Reinterpret the ordered dimensions row-major as `shape`, as numpy.reshape.",
                attrs={"shape": AttrSpec(SHAPE)})


@reshape.type_rule
def _reshape_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    result = _typed(view, operand.dtype, view.attr("shape"))
    if result.num_elements != operand.num_elements:
        raise MeshirError(
            f"reshape: operand {operand} has {operand.num_elements} elements but shape "
            f"{_shape_text(result.dims)} has {result.num_elements}"
        )
    return result


reshape.reference(lambda op, x: x.reshape(op.result_types[0].shape))


@reshape.splittable
def _reshape_split(view: OpView) -> frozenset[str]:
    """Dimensions in a common prefix or a common suffix of the operand and result
    shapes: row-major reshape acts on the middle part independently for each of
    their coordinates, so a device can reshape its own block."""
    before, after = view.operand_types[0].dims, tuple(view.attr("shape"))
    prefix = 0
    while prefix < min(len(before), len(after)) and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(before), len(after)) - prefix and before[-1 - suffix] == after[-1 - suffix]:
        suffix += 1
    return frozenset(d.name for d in (*before[:prefix], *before[len(before) - suffix:]))


# --- transpose ------------------------------------------------------------

transpose = defop("transpose", 1, "shape", "Reorder the dimensions as `order`, a permutation of the operand's.",
                  attrs={"order": AttrSpec(NAMES)})


@transpose.type_rule
def _transpose_type(view: OpView) -> TensorType:
    operand, order = view.operand_types[0], view.attr("order")
    missing = [n for n in operand.names if n not in order]
    extra = [n for n in order if not operand.has(n)]
    if missing or extra:
        problems = [f"{what} {', '.join(names)}" for what, names in (("missing", missing), ("not in the operand", extra)) if names]
        raise MeshirError(
            f"transpose: order [{', '.join(order)}] is not a permutation of the operand's dimensions "
            f"[{', '.join(operand.names)}] ({'; '.join(problems)})"
        )
    return operand.with_dims(operand.dim(n) for n in order)


transpose.reference(lambda op, x: np.transpose(x, [op.operand_types[0].axis_of(n) for n in op.attr("order")]))
transpose.splittable("all")

# --- broadcast ------------------------------------------------------------

broadcast = defop("broadcast", 1, "shape",
                  "Give the operand exactly `shape`, which holds each of its dimensions at the same size; "
                  "values repeat along the new ones.",
                  attrs={"shape": AttrSpec(SHAPE)})


@broadcast.type_rule
def _broadcast_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    result = _typed(view, operand.dtype, view.attr("shape"))
    for dim in operand.dims:
        if not result.has(dim.name):
            raise MeshirError(f"broadcast: shape {_shape_text(result.dims)} lacks the operand's dimension {dim}")
        if result.size_of(dim.name) != dim.size:
            raise MeshirError(
                f"broadcast: dimension '{dim.name}' has size {dim.size} in the operand "
                f"but size {result.size_of(dim.name)} in shape {_shape_text(result.dims)}"
            )
    return result


@broadcast.reference
def _broadcast(op: OpView, x: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    # A copy, not numpy's read-only broadcast view: later ops may write to it.
    return np.broadcast_to(align(x, op.operand_types[0], result.names), result.shape).copy()


broadcast.splittable("all")

# --- slice ----------------------------------------------------------------

slice_ = defop("slice", 1, "shape", "Elements [begin, begin + size) of `dim`; the dimension keeps its name.",
               attrs={"dim": AttrSpec(NAME), "begin": AttrSpec(INT), "size": AttrSpec(INT)})


@slice_.type_rule
def _slice_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    dim, length = _dim_and_size(view, operand)
    begin, size = view.attr("begin"), view.attr("size")
    _require_non_negative(view, begin=begin, size=size)
    if begin + size > length:
        raise MeshirError(
            f"slice: begin = {begin} plus size = {size} is {begin + size}, past the end of dimension "
            f"'{dim}' of size {length}"
        )
    return operand.resized(dim, size)


@slice_.reference
def _slice(op: OpView, x: np.ndarray) -> np.ndarray:
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    begin = op.attr("begin")
    return x.take(range(begin, begin + op.attr("size")), axis=axis)


slice_.splittable(_all_but("dim"))

# --- concat and split -----------------------------------------------------

concat = defop("concat", (1, None), "shape",
               "Join the operands along `dim`; they have the same dimensions in the same order, the same dtype, "
               "and the same sizes except along `dim`.",
               attrs={"dim": AttrSpec(NAME)},
               size_exempt=lambda view: {view.attr("dim")})


@concat.type_rule
def _concat_type(view: OpView) -> TensorType:
    first = view.operand_types[0]
    dim, _ = _dim_and_size(view, first)
    for index, t in enumerate(view.operand_types[1:], start=1):
        if t.names != first.names:
            raise MeshirError(
                f"concat: operand {index} has dimensions [{', '.join(t.names)}] but operand 0 has "
                f"[{', '.join(first.names)}]; transpose it first"
            )
        if t.dtype != first.dtype:
            raise MeshirError(f"concat: operand {index} has dtype {t.dtype} but operand 0 has {first.dtype}; cast one of them")
        for a, b in zip(first.dims, t.dims):
            if a.name != dim and a.size != b.size:
                raise MeshirError(f"concat: dimension '{a.name}' has size {a.size} in operand 0 but size {b.size} in operand {index}")
    return first.resized(dim, sum(t.size_of(dim) for t in view.operand_types))


concat.reference(lambda op, *xs: np.concatenate(xs, axis=op.operand_types[0].axis_of(op.attr("dim"))))
concat.splittable(_all_but("dim"))

split = defop("split", 1, "shape", "Cut `dim` into consecutive pieces of `sizes`, one result each; the sizes sum to the dimension's.",
              attrs={"dim": AttrSpec(NAME), "sizes": AttrSpec(INTS)})


@split.type_rule
def _split_type(view: OpView) -> list[TensorType]:
    operand = view.operand_types[0]
    dim, length = _dim_and_size(view, operand)
    sizes = view.attr("sizes")
    if not sizes:
        raise MeshirError("split: sizes must list at least one size")
    if any(s < 0 for s in sizes):
        raise MeshirError(f"split: sizes must be >= 0, got [{', '.join(map(str, sizes))}]")
    if sum(sizes) != length:
        raise MeshirError(
            f"split: sizes [{', '.join(map(str, sizes))}] sum to {sum(sizes)} but dimension '{dim}' has size {length}"
        )
    return [operand.resized(dim, s) for s in sizes]


@split.reference
def _split(op: OpView, x: np.ndarray) -> tuple[np.ndarray, ...]:
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    return tuple(np.split(x, np.cumsum(op.attr("sizes"))[:-1], axis=axis))


split.splittable(_all_but("dim"))

# --- pad ------------------------------------------------------------------

pad = defop("pad", 1, "shape", "Add `low` elements before and `high` after along `dim`, all `value` cast to the dtype.",
            attrs={"dim": AttrSpec(NAME), "low": AttrSpec(INT), "high": AttrSpec(INT), "value": AttrSpec(FLOAT, 0.0)})


@pad.type_rule
def _pad_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    dim, length = _dim_and_size(view, operand)
    low, high = view.attr("low"), view.attr("high")
    _require_non_negative(view, low=low, high=high)
    return operand.resized(dim, low + length + high)


@pad.reference
def _pad(op: OpView, x: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    axis = result.axis_of(op.attr("dim"))
    with np.errstate(all="ignore"):
        fill = np.asarray(op.attr("value")).astype(result.dtype.numpy)
    out = np.full(result.shape, fill, dtype=result.dtype.numpy)
    low = op.attr("low")
    out[(slice(None),) * axis + (slice(low, low + x.shape[axis]),)] = x
    return out


pad.splittable(_all_but("dim"))

# --- stack and unstack ----------------------------------------------------

stack = defop("stack", (1, None), "shape",
              "Stack operands of one type along a new dimension `dim`, of size the number of operands, at position `axis`.",
              attrs={"dim": AttrSpec(NAME), "axis": AttrSpec(INT, 0)})


@stack.type_rule
def _stack_type(view: OpView) -> TensorType:
    first = view.operand_types[0]
    for index, t in enumerate(view.operand_types[1:], start=1):
        if t != first:
            raise MeshirError(f"stack: operand {index} has type {t} but operand 0 has {first}; stacked operands share one type")
    dim, axis = view.attr("dim"), view.attr("axis")
    new_dim_name(view, first, dim)
    if not 0 <= axis <= first.rank:
        raise MeshirError(f"stack: axis = {axis} is out of range for operands of rank {first.rank} (need 0 <= axis <= {first.rank})")
    dims = list(first.dims)
    dims.insert(axis, Dim(dim, len(view.operand_types)))
    return first.with_dims(dims)


stack.reference(lambda op, *xs: np.stack(xs, axis=op.attr("axis")))
stack.splittable(_all_but("dim"))

unstack = defop("unstack", 1, "shape", "One result per element of `dim`, each the operand without `dim`.",
                attrs={"dim": AttrSpec(NAME)})


@unstack.type_rule
def _unstack_type(view: OpView) -> list[TensorType]:
    operand = view.operand_types[0]
    dim, length = _dim_and_size(view, operand)
    return [operand.without([dim])] * length


@unstack.reference
def _unstack(op: OpView, x: np.ndarray) -> tuple[np.ndarray, ...]:
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    return tuple(x.take(i, axis=axis) for i in range(x.shape[axis]))


unstack.splittable(_all_but("dim"))

# --- shift ----------------------------------------------------------------

shift = defop("shift", 1, "shape",
              "out[i] = x[i - offset] along `dim`; positions with no source are zero, or wrap around when `wrap`.",
              attrs={"dim": AttrSpec(NAME), "offset": AttrSpec(INT), "wrap": AttrSpec(BOOL, False)})


@shift.type_rule
def _shift_type(view: OpView) -> TensorType:
    operand = view.operand_types[0]
    _dim_and_size(view, operand)
    return operand


@shift.reference
def _shift(op: OpView, x: np.ndarray) -> np.ndarray:
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    offset, length = op.attr("offset"), x.shape[axis]
    if op.attr("wrap"):
        return np.roll(x, offset, axis=axis)
    out = np.zeros_like(x)
    kept = max(length - abs(offset), 0)
    source = range(max(-offset, 0), max(-offset, 0) + kept)
    target = (slice(None),) * axis + (slice(max(offset, 0), max(offset, 0) + kept),)
    out[target] = x.take(source, axis=axis)
    return out


shift.splittable(_all_but("dim"))


# ---------------------------------------------------------------------------- gradients


def _concat_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """Each operand's piece of the cotangent along `dim`."""
    dim, g = op.attr("dim"), cotangents[0]
    grads: Cotangents = []
    begin = 0
    for operand in op.operands:
        size = operand.type.size_of(dim)
        grads.append(e.emit("slice", g, dim=dim, begin=begin, size=size))
        begin += size
    return grads


def _pieces(e: Emitter, op: Operation, cotangents: Cotangents) -> list[Value]:
    """Every result's cotangent, zeros where the loss does not depend on a result."""
    return [or_zeros(e, g, result) for g, result in zip(cotangents, op.results)]


def _pad_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    dim = op.attr("dim")
    size = op.operands[0].type.size_of(dim)
    return [e.emit("slice", cotangents[0], dim=dim, begin=op.attr("low"), size=size)]


def _slice_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    dim, begin, size = op.attr("dim"), op.attr("begin"), op.attr("size")
    high = op.operands[0].type.size_of(dim) - begin - size
    return [e.emit("pad", cotangents[0], dim=dim, low=begin, high=high)]


rename.gradient(lambda e, op, cotangents: [e.emit("rename", cotangents[0], from_=op.attr("to"), to=op.attr("from"))])
reshape.gradient(lambda e, op, cotangents: [e.emit("reshape", cotangents[0], shape=op.operands[0].type.dims)])
transpose.gradient(lambda e, op, cotangents: [in_order(e, cotangents[0], op.operands[0].type.names)])
broadcast.gradient(lambda e, op, cotangents: [unbroadcast(e, cotangents[0], op.operands[0].type)])
slice_.gradient(_slice_gradient)
concat.gradient(_concat_gradient)
split.gradient(lambda e, op, cotangents: [e.emit("concat", *_pieces(e, op, cotangents), dim=op.attr("dim"))])
pad.gradient(_pad_gradient)
stack.gradient(lambda e, op, cotangents: list(e.emit_op("unstack", cotangents[0], dim=op.attr("dim")).results))
unstack.gradient(lambda e, op, cotangents: [
    e.emit("stack", *_pieces(e, op, cotangents), dim=op.attr("dim"), axis=op.operands[0].type.axis_of(op.attr("dim")))
])
shift.gradient(lambda e, op, cotangents: [
    e.emit("shift", cotangents[0], dim=op.attr("dim"), offset=-op.attr("offset"), wrap=op.attr("wrap"))
])
