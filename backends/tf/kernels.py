"""Which dtypes TensorFlow can run each op in, asked before anything runs.

TensorFlow builds any node whose op definition accepts its dtypes, then fails
when the session places it and finds no kernel for the device ("No OpKernel
was registered to support Op 'Rint' ... T=DT_BFLOAT16"). The tf backend asks
TensorFlow's kernel registry for every node it emits instead, so a gap is a
diagnostic at emission that names the meshir op, the dtype and the TF op,
never a crash in the middle of a run.
"""
from __future__ import annotations

import functools
from typing import Any

from .rules_common import tf

# After .rules_common, which imports TensorFlow with its start-up logging quieted.
from tensorflow.python.framework import kernels as kernel_registry, op_def_registry  # noqa: E402


@functools.cache
def _kernel_constraints(op_type: str, device_kind: str) -> tuple[dict[str, frozenset[int]], ...]:
    """One entry per kernel of `op_type` that runs on `device_kind` (its own, or a
    DEFAULT kernel, which runs anywhere): attribute -> the dtypes it allows."""
    registered = kernel_registry.get_registered_kernels_for_op(op_type).kernel
    return tuple(
        {c.name: frozenset(c.allowed_values.list.type) for c in kernel.constraint}
        for kernel in registered if kernel.device_type in (device_kind, "DEFAULT")
    )


@functools.cache
def has_kernels(device_kind: str) -> bool:
    """Whether this TensorFlow build has kernels for `device_kind` at all
    (tensorflow-cpu has none for GPU, so GPU graphs can be written but not checked)."""
    return bool(_kernel_constraints("AddV2", device_kind))


def missing_kernel(node: Any, device_kind: str) -> str | None:
    """For a NodeDef that no kernel of `device_kind` can run: the attribute and dtype
    that rule it out, as `T=bfloat16`; None when some kernel runs it."""
    types = tuple(sorted(
        (name, tuple(attr.list.type) if attr.WhichOneof("value") == "list" else (attr.type,))
        for name, attr in node.attr.items() if attr.WhichOneof("value") == "type" or len(attr.list.type)
    ))
    return _missing(node.op, device_kind, types)


@functools.cache
def _missing(op_type: str, device_kind: str, types: tuple[tuple[str, tuple[int, ...]], ...]) -> str | None:
    given = dict(types)
    blocking = None
    for constraints in _kernel_constraints(op_type, device_kind):
        if any(name not in given for name in constraints):
            continue
        bad = [(name, t) for name in constraints for t in given[name] if t not in constraints[name]]
        if not bad:
            return None
        blocking = blocking or bad[0]
    if blocking is None:
        return "no kernel at all"
    name, enum = blocking
    return f"{name}={tf.dtypes.as_dtype(enum).name}"


def allowed_dtypes(op_type: str, attr: str = "T") -> frozenset[Any]:
    """The dtypes op `op_type`'s definition accepts for attribute `attr`."""
    definition = op_def_registry.get(op_type)
    (spec,) = [a for a in definition.attr if a.name == attr]
    return frozenset(tf.dtypes.as_dtype(t) for t in spec.allowed_values.list.type)
