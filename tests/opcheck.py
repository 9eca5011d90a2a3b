"""Run one op's type rule and reference implementation directly, for op tests."""
from __future__ import annotations

from typing import Any

import numpy as np

from meshir.frontends.builder import to_attribute
from meshir.registry import OpDef, OpView, lookup
from meshir.types import TensorType


def _attributes(opdef: OpDef, attrs: dict[str, Any]) -> dict[str, Any]:
    """Python-friendly values (strings for names, lists) as the op's attribute kinds."""
    converted = {key: to_attribute(opdef.attrs[key].kind, value) if key in opdef.attrs else value for key, value in attrs.items()}
    return opdef.check_attributes(converted)


def infer(name: str, types: list[TensorType], **attrs: Any) -> list[TensorType]:
    """The op's result types; raises MeshirError like the verifier would."""
    opdef = lookup(name)
    opdef.check_operand_count(len(types))
    normalized = _attributes(opdef, attrs)
    return opdef.infer(OpView(opdef, list(types), normalized))


def run(name: str, operands: list[tuple[np.ndarray, TensorType]], **attrs: Any) -> list[np.ndarray]:
    """Infer types, run the reference, and check each result has its type's shape and dtype."""
    opdef = lookup(name)
    types = [t for _, t in operands]
    normalized = _attributes(opdef, attrs)
    view = OpView(opdef, types, normalized)
    view.result_types = opdef.infer(view)
    out = opdef.reference_fn(view, *(np.asarray(a, dtype=t.dtype.numpy) for a, t in operands))
    results = list(out) if isinstance(out, (tuple, list)) else [out]
    assert len(results) == len(view.result_types)
    for array, ttype in zip(results, view.result_types):
        assert array.shape == ttype.shape, (name, array.shape, ttype)
        assert array.dtype == ttype.dtype.numpy, (name, array.dtype, ttype)
    return results
