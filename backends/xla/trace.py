"""Trace a meshir function into JAX: op by op, each with its xla rule.

Used inside `jax.jit` (global programs) and inside `jax.shard_map` (local
programs, where collectives see the mesh axes). `overrides` replaces the rule
of some ops for one compilation mode, e.g. `reshard` in the gspmd mode.

Each op is traced under a `jax.named_scope` naming the meshir op and the values it
defines (`einsum:%h`): XLA keeps the scope in its op metadata, so HLO dumps and
profiles (`meshir-run --profile`) show meshir's names beside XLA's.
"""
from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Sequence

import jax
import numpy as np

from meshir.diagnostics import MeshirError, RuntimeFailure
from meshir.ir import Function, Module, Operation, Value
from meshir.registry import OpView, lookup
from meshir.types import TensorType

from .rules import TARGET, install
from .rules_common import Rule


def trace_function(
    module: Module,
    function: Function,
    args: Sequence[jax.Array],
    state: MutableMapping[str, jax.Array],
    overrides: Mapping[str, Rule] | None = None,
) -> list[jax.Array]:
    """The function's returned values; `state` (variable name -> value) is updated by
    assign and assign_add as the ops run."""
    install()
    env: dict[Value, jax.Array] = dict(zip(function.args, args))
    for op in function.ops:
        view = OpView(lookup(op.name), op.operand_types, op.attributes, module, function, op.result_types, state)
        rule = (overrides or {}).get(op.name) or view.opdef.lowerings.get(TARGET)
        if rule is None:
            raise MeshirError(f"{op.name} has no xla rule", op.loc)
        with jax.named_scope(_scope_name(op)):
            out = _apply(op, rule, view, [env[v] for v in op.operands])
        results = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(results) != len(op.results):
            raise RuntimeFailure(f"{op.name}: the xla rule returned {len(results)} results for {len(op.results)}; this is a bug in meshir", op.loc)
        for index, (value, array) in enumerate(zip(op.results, results)):
            env[value] = _checked(op, index, array, value.type)
    return [env[v] for v in function.returns]


def _scope_name(op: Operation) -> str:
    """`einsum:%h`: the op, and the values it defines when they have names."""
    names = ",".join(f"%{v.name}" for v in op.results if v.name)
    return f"{op.name}:{names}" if names else op.name


def _apply(op: Operation, rule: Rule, view: OpView, operands: list[jax.Array]) -> Any:
    try:
        return rule(view, *operands)
    except MeshirError as exc:
        if exc.loc is not None:
            raise
        raise MeshirError(exc.message, op.loc, exc.note) from None
    except Exception as exc:
        raise RuntimeFailure(f"{op.name}: the xla rule failed: {type(exc).__name__}: {exc}", op.loc) from exc


def _checked(op: Operation, index: int, array: jax.Array, ttype: TensorType) -> jax.Array:
    """A rule's result must have exactly its type's shape and dtype: a mismatch is a
    bug in the rule, reported at trace time where the op is."""
    if tuple(array.shape) != ttype.shape or np.dtype(array.dtype) != ttype.dtype.numpy:
        raise RuntimeFailure(
            f"{op.name}: the xla rule returned {array.dtype} of shape {tuple(array.shape)} for result {index}, "
            f"whose type is {ttype}; this is a bug in meshir's xla rule for {op.name}",
            op.loc,
        )
    return array
