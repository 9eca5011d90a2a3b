"""The op registry: every op defined once, with all of its rules.

An `OpDef` holds an op's operands, attributes, type rule, reference (numpy)
implementation, the dimensions it keeps split, its gradient rule and the
lowering rules that passes and backends register against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .attributes import AttrSpec, check_attributes
from .diagnostics import MeshirError
from .types import TensorType

if TYPE_CHECKING:
    from .ir import Function, Module
    from .mesh import Mesh

NOT_DIFFERENTIABLE = "not differentiable"

TypeRule = Callable[["OpView"], "TensorType | list[TensorType]"]
Reference = Callable[..., Any]


class OpView:
    """What a rule sees of an op: operand types, attributes (with defaults) and
    the enclosing module and function. The interpreter adds variable state and,
    for device-aware ops, the mesh."""

    __slots__ = ("opdef", "operand_types", "attributes", "result_types", "module", "function", "state")

    def __init__(
        self,
        opdef: OpDef,
        operand_types: list[TensorType],
        attributes: dict[str, Any],
        module: Module | None = None,
        function: Function | None = None,
        result_types: list[TensorType] | None = None,
        state: Any = None,
    ):
        self.opdef = opdef
        self.operand_types = operand_types
        self.attributes = attributes
        self.module = module
        self.function = function
        self.result_types = result_types
        self.state = state

    @property
    def name(self) -> str:
        return self.opdef.name

    def attr(self, name: str) -> Any:
        if name in self.attributes:
            return self.attributes[name]
        return self.opdef.attrs[name].default

    @property
    def mesh(self) -> Mesh | None:
        if self.module is None or self.function is None:
            return None
        return self.module.mesh_of(self.function)


@dataclass(eq=False)
class OpDef:
    name: str
    group: str
    min_operands: int
    max_operands: int | None
    attrs: dict[str, AttrSpec]
    doc: str
    symbol_operand: str | None = None
    local_only: bool = False
    device_aware: bool = False
    side_effects: bool = False
    reads_state: bool = False
    size_exempt: Callable[[OpView], set[str]] | None = None
    type_rule_fn: TypeRule | None = None
    reference_fn: Reference | None = None
    splittable_fn: Callable[[OpView], frozenset[str]] | str | None = None
    gradient_fn: Callable[..., Any] | str | None = None
    lowerings: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def type_rule(self, fn: TypeRule) -> TypeRule:
        self.type_rule_fn = fn
        return fn

    def reference(self, fn: Reference) -> Reference:
        self.reference_fn = fn
        return fn

    def splittable(self, fn: Callable[[OpView], frozenset[str]] | str) -> None:
        """`"all"`, `"none"`, or a function of the op giving the dimensions a
        device may keep split: the op applied to each device's blocks (with
        size attributes made local) gives that device's block of the result."""
        self.splittable_fn = fn

    def gradient(self, fn: Callable[..., Any] | str) -> Callable[..., Any] | str:
        """`fn(e: Emitter, op, cotangents) -> one gradient per operand` (see
        meshir/ops/grad_helpers.py), or NOT_DIFFERENTIABLE. Usable as a decorator."""
        self.gradient_fn = fn
        return fn

    def lower(self, target: str, fn: Callable[..., Any]) -> None:
        self.lowerings[target] = fn

    def split_dims(self, view: OpView) -> frozenset[str]:
        rule = self.splittable_fn
        if rule == "all":
            return frozenset(n for t in [*view.operand_types, *(view.result_types or [])] for n in t.names)
        if rule == "none" or rule is None:
            return frozenset()
        return frozenset(rule(view))

    def check_attributes(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """Normalized attributes; MeshirError naming an unknown, missing or ill-kinded one."""
        return check_attributes(self.attrs, attributes, self.name)

    def check_operand_count(self, count: int) -> None:
        lo, hi = self.min_operands, self.max_operands
        if count < lo or (hi is not None and count > hi):
            if hi == lo:
                want = f"{lo} operand{'s' if lo != 1 else ''}"
            elif hi is None:
                want = f"at least {lo} operand{'s' if lo != 1 else ''}"
            else:
                want = f"{lo} to {hi} operands"
            raise MeshirError(f"{self.name} takes {want}, got {count}")

    def infer(self, view: OpView) -> list[TensorType]:
        result = self.type_rule_fn(view)
        return [result] if isinstance(result, TensorType) else list(result)


REGISTRY: dict[str, OpDef] = {}


def defop(
    name: str,
    operands: int | tuple[int, int | None],
    group: str,
    doc: str,
    attrs: dict[str, AttrSpec] | None = None,
    **flags: Any,
) -> OpDef:
    """Define an op once; `operands` is a count or a (min, max) pair, max None for any."""
    if name in REGISTRY:
        raise ValueError(f"op {name} defined twice")
    lo, hi = (operands, operands) if isinstance(operands, int) else operands
    opdef = OpDef(name=name, group=group, min_operands=lo, max_operands=hi, attrs=dict(attrs or {}), doc=doc, **flags)
    REGISTRY[name] = opdef
    return opdef


def lookup(name: str) -> OpDef:
    _load_ops()
    return REGISTRY[name]


def find(name: str) -> OpDef | None:
    _load_ops()
    return REGISTRY.get(name)


def all_ops() -> Iterable[OpDef]:
    _load_ops()
    return REGISTRY.values()


_loaded = False


def _load_ops() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (defines every op)
