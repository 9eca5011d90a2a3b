"""The pass base class, the pass registry and module statistics.

A pass is a small frozen dataclass: `name` says how pipelines spell it, its
fields are its options (`max_bytes` is spelled `max-bytes` in pipeline text),
and `run` rewrites a module in place.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, ClassVar, TypeVar

from meshir.ir import Module, Operation


class Pass:
    """Base of every pass; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str]

    def run(self, module: Module) -> dict[str, int] | None:
        """Rewrite `module` in place; a pass may return named counters of what it
        did, which `--pass-statistics` prints."""
        raise NotImplementedError(f"pass {self.name} does not implement run")


_PASSES: dict[str, type[Pass]] = {}

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make a pass available to pipelines under `cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute `name: ClassVar[str]`")
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"pass '{name}' registered twice ({_PASSES[name].__qualname__} and {cls.__qualname__})")
    _PASSES[name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, sorted by name."""
    return dict(sorted(_PASSES.items()))


# The collectives that communicate, and how many bytes one device sends in
# each: the per-device size of the operand, or of the result where the result
# is what grows (all_gather). all_slice only keeps part of what the device
# has. Device queries in the same registry group (axis_index, dynamic_slice)
# move nothing and are not collectives here.
COLLECTIVE_BYTES: dict[str, Callable[[Operation], int]] = {
    "all_reduce": lambda op: op.operands[0].type.nbytes,
    "reduce_scatter": lambda op: op.operands[0].type.nbytes,
    "all_to_all": lambda op: op.operands[0].type.nbytes,
    "collective_permute": lambda op: op.operands[0].type.nbytes,
    "all_gather": lambda op: op.results[0].type.nbytes,
    "all_slice": lambda op: 0,
}


@dataclass
class Statistics:
    """What a module holds: ops, collectives by kind, and bytes each device moves per mesh axis."""

    ops: int = 0
    collectives: Counter[str] = field(default_factory=Counter)
    bytes_per_axis: Counter[str] = field(default_factory=Counter)


def collective_axes(op: Operation) -> tuple[str, ...]:
    """The mesh axes a collective talks over: its `axes`, or its one `axis`."""
    if "axes" in op.attributes:
        return tuple(op.attributes["axes"])
    return (op.attributes["axis"],)


def module_statistics(module: Module) -> Statistics:
    """Count ops and collectives in every function, and the bytes collectives move
    per mesh axis. The module must be verified (every value typed)."""
    stats = Statistics()
    for function in module.functions.values():
        stats.ops += len(function.ops)
        for op in function.ops:
            moved = COLLECTIVE_BYTES.get(op.name)
            if moved is None:
                continue
            stats.collectives[op.name] += 1
            for axis in collective_axes(op):
                stats.bytes_per_axis[axis] += moved(op)
    return stats
