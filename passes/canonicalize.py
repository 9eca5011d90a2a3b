"""`canonicalize`: local rewrites to a fixed point, then dead-op cleanup.

`REWRITES` maps an op name to rewrite functions; `GROUP_REWRITES` does the
same for a whole registry group. A rewrite gets the `Rewriter` and the op and
returns the value that replaces the op's result (of exactly its type), or None
to leave the op alone. It may add ops with `Rewriter.create`, which places them
before the op being rewritten, and must add none when it returns None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from meshir.attributes import Name, freeze
from meshir.ir import Function, Module, Operation, Value
from meshir.ops.contraction import matmul_output
from meshir.registry import OpView, find
from meshir.verifier import infer_op

from .base import Pass, register_pass
from .dce import remove_dead_ops

# Folding larger tensors would bloat the module with literal values.
FOLD_MAX_ELEMENTS = 16
CONSTANT_OPS = frozenset({"constant", "zeros", "ones", "full"})
# Rewrites only ever shrink the program, so a sweep count this high means two
# rewrites undo each other.
_MAX_SWEEPS = 100


class Rewriter:
    """What a rewrite sees: the module, the function, and a way to add ops."""

    def __init__(self, module: Module, function: Function, ops: list[Operation]):
        self.module = module
        self.function = function
        self._ops = ops

    def create(self, name: str, operands: list[Value], attributes: dict, replacing: Operation) -> Value:
        """Add op `name` before `replacing`, with inferred result types; its result
        takes the replaced result's name so the printed IR keeps reading the same."""
        probe = Operation(name, operands, attributes, [], loc=replacing.loc)
        result_types = infer_op(self.module, self.function, probe)
        op = Operation(name, operands, probe.attributes, result_types, loc=replacing.loc,
                       result_names=[replacing.result.name])
        self._ops.append(op)
        return op.result

    def view(self, op: Operation) -> OpView:
        return OpView(op.opdef, op.operand_types, op.attributes, self.module, self.function, op.result_types)


Rewrite = Callable[[Rewriter, Operation], "Value | None"]


def _producer_name(value: Value) -> str | None:
    return value.owner.name if value.owner is not None else None


def _identity_when_same_type(rewriter: Rewriter, op: Operation) -> Value | None:
    """transpose to the same order, reshape to the same shape, broadcast to the same
    shape, cast to the same dtype: each leaves an operand of the result's type unchanged."""
    operand = op.operands[0]
    return operand if operand.type == op.result.type else None


def _involution(rewriter: Rewriter, op: Operation) -> Value | None:
    """f(f(x)) -> x for an f that is its own inverse."""
    inner = op.operands[0].owner
    return inner.operands[0] if inner is not None and inner.name == op.name else None


def _drop_operand_made_by(identity_op: str) -> Rewrite:
    """add(x, zeros) -> x, mul(x, ones) -> x (either order), when that changes no type:
    the filler may not add dimensions."""

    def rewrite(rewriter: Rewriter, op: Operation) -> Value | None:
        a, b = op.operands
        for kept, other in ((a, b), (b, a)):
            if _producer_name(other) == identity_op and kept.type == op.result.type:
                return kept
        return None

    return rewrite


def _matmul_to_einsum(rewriter: Rewriter, op: Operation) -> Value | None:
    output = tuple(Name(n) for n in matmul_output(rewriter.view(op)))
    return rewriter.create("einsum", op.operands, {"output": output}, replacing=op)


# The Python type numpy's `tolist` should produce for each dtype kind: literal
# attributes hold plain ints, floats and bools, never numpy or bfloat16 scalars.
_LITERAL_NUMPY_TYPE = {"float": np.float64, "int": np.int64, "uint": np.uint64, "bool": np.bool_}


def _fold_constants(rewriter: Rewriter, op: Operation) -> Value | None:
    """An elementwise op of small constants becomes a `constant`, computed by the
    op's own reference implementation."""
    result = op.result.type
    producers = [v.owner for v in op.operands]
    if result.num_elements > FOLD_MAX_ELEMENTS or not all(
        p is not None and p.name in CONSTANT_OPS and p.result.type.num_elements <= FOLD_MAX_ELEMENTS for p in producers
    ):
        return None
    arrays = [_evaluate(rewriter, p, []) for p in producers]
    value = _evaluate(rewriter, op, arrays).astype(_LITERAL_NUMPY_TYPE[result.dtype.kind])
    attributes = {"value": freeze(value.tolist()), "shape": result.dims, "dtype": result.dtype}
    return rewriter.create("constant", [], attributes, replacing=op)


def _evaluate(rewriter: Rewriter, op: Operation, arrays: list[np.ndarray]) -> np.ndarray:
    return np.asarray(op.opdef.reference_fn(rewriter.view(op), *arrays))


REWRITES: dict[str, list[Rewrite]] = {
    "matmul": [_matmul_to_einsum],
    "transpose": [_identity_when_same_type],
    "reshape": [_identity_when_same_type],
    "broadcast": [_identity_when_same_type],
    "cast": [_identity_when_same_type],
    "neg": [_involution],
    "logical_not": [_involution],
    "add": [_drop_operand_made_by("zeros")],
    "mul": [_drop_operand_made_by("ones")],
}

# Tried after the op's own rewrites.
GROUP_REWRITES: dict[str, list[Rewrite]] = {
    "elementwise": [_fold_constants],
    "binary": [_fold_constants],
}


def _rewrites_for(op: Operation) -> list[Rewrite]:
    opdef = find(op.name)
    group = GROUP_REWRITES.get(opdef.group, []) if opdef is not None else []
    return [*REWRITES.get(op.name, []), *group]


def _sweep(module: Module, function: Function) -> bool:
    """Try every op's rewrites once, in program order; True if any fired."""
    ops: list[Operation] = []
    rewriter = Rewriter(module, function, ops)
    replacements: dict[Value, Value] = {}
    for op in function.ops:
        # Earlier replacements are final values, so one lookup resolves an operand.
        op.operands = [replacements.get(v, v) for v in op.operands]
        for rewrite in _rewrites_for(op):
            replacement = rewrite(rewriter, op)
            if replacement is not None:
                replacements[op.result] = replacement
                break
        ops.append(op)
    function.ops = ops
    function.returns = [replacements.get(v, v) for v in function.returns]
    return bool(replacements)


def canonicalize_function(module: Module, function: Function) -> None:
    for _ in range(_MAX_SWEEPS):
        changed = _sweep(module, function)
        # Replaced ops are dead now; removing them keeps the next sweep from rewriting them again.
        remove_dead_ops(function)
        if not changed:
            return
    raise RuntimeError(f"canonicalize did not reach a fixed point in @{function.name} after {_MAX_SWEEPS} sweeps")


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    name: ClassVar[str] = "canonicalize"

    def run(self, module: Module) -> None:
        for function in module.functions.values():
            canonicalize_function(module, function)
