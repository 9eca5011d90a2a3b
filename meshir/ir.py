"""The IR: values, operations, functions, variables and modules (SSA)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Iterator

from .attributes import SymbolRef
from .diagnostics import Location, MeshirError
from .mesh import LayoutRules, Mesh
from .types import TensorType


def unused_name(base: str, taken: Container[str], separator: str = "_") -> str:
    """`base`, or `base_1`, `base_2`, ... (with `separator` between): the first not in `taken`."""
    name, count = base, 0
    while name in taken:
        count += 1
        name = f"{base}{separator}{count}"
    return name


class Value:
    """An SSA value: a function argument (`owner is None`) or an op result."""

    __slots__ = ("type", "name", "owner", "index")

    def __init__(self, type: TensorType, name: str | None = None, owner: Operation | None = None, index: int = 0):
        self.type = type
        self.name = name
        self.owner = owner
        self.index = index

    def __repr__(self) -> str:
        return f"%{self.name or '?'}: {self.type}"


class Operation:
    """One op: `%r = name(operands) {attributes} : types`."""

    __slots__ = ("name", "operands", "attributes", "results", "loc")

    def __init__(
        self,
        name: str,
        operands: Iterable[Value],
        attributes: dict[str, Any],
        result_types: Iterable[TensorType],
        loc: Location | None = None,
        result_names: Iterable[str | None] | None = None,
    ):
        self.name = name
        self.operands = list(operands)
        self.attributes = dict(attributes)
        result_types = list(result_types)
        names = list(result_names) if result_names is not None else [None] * len(result_types)
        self.results = [Value(t, n, self, i) for i, (t, n) in enumerate(zip(result_types, names))]
        self.loc = loc

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results")
        return self.results[0]

    @property
    def operand_types(self) -> list[TensorType]:
        return [v.type for v in self.operands]

    @property
    def result_types(self) -> list[TensorType]:
        return [v.type for v in self.results]

    @property
    def opdef(self):  # -> OpDef; imported lazily to keep ir free of the registry
        from .registry import lookup

        return lookup(self.name)

    def attr(self, name: str) -> Any:
        """The attribute's value, or the op's declared default."""
        if name in self.attributes:
            return self.attributes[name]
        return self.opdef.attrs[name].default

    def __repr__(self) -> str:
        return f"<{self.name} {[str(t) for t in self.result_types]}>"


@dataclass(eq=False)
class Function:
    """`func @name(args) -> results attributes {...} { ops; return values }`."""

    name: str
    args: list[Value]
    result_types: list[TensorType]
    ops: list[Operation] = field(default_factory=list)
    returns: list[Value] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    loc: Location | None = None
    return_loc: Location | None = None

    @property
    def is_local(self) -> bool:
        """A local (post-spmd) function: `attributes {spmd = @m}`."""
        return "spmd" in self.attributes

    def mesh_symbol(self) -> str | None:
        ref = self.attributes.get("spmd") or self.attributes.get("mesh")
        return ref.name if isinstance(ref, SymbolRef) else None

    def values(self) -> Iterator[Value]:
        yield from self.args
        for op in self.ops:
            yield from op.results

    def use_counts(self) -> dict[Value, int]:
        counts: dict[Value, int] = {}
        for op in self.ops:
            for v in op.operands:
                counts[v] = counts.get(v, 0) + 1
        for v in self.returns:
            counts[v] = counts.get(v, 0) + 1
        return counts

    def users(self) -> dict[Value, list[Operation]]:
        users: dict[Value, list[Operation]] = {}
        for op in self.ops:
            for v in op.operands:
                users.setdefault(v, []).append(op)
        return users

    def replace_uses(self, mapping: dict[Value, Value]) -> None:
        """Replace every use of each key by its value (one pass over the body)."""
        if not mapping:
            return
        for op in self.ops:
            op.operands = [mapping.get(v, v) for v in op.operands]
        self.returns = [mapping.get(v, v) for v in self.returns]


@dataclass(eq=False)
class Variable:
    """`var @name : type = initializer(args) {attributes}`."""

    name: str
    type: TensorType
    initializer: str
    init_args: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    loc: Location | None = None

    @property
    def trainable(self) -> bool:
        return bool(self.attributes.get("trainable", True))

    # Mixed precision as in Mesh TensorFlow: the declared type is the master type
    # (what checkpoints and the optimizer's math hold); devices store the
    # variable in its slice dtype; `read` yields its activation dtype.
    @property
    def slice_type(self) -> TensorType:
        return self.type.with_dtype(self.attributes.get("slice_dtype") or self.type.dtype)

    @property
    def activation_type(self) -> TensorType:
        return self.type.with_dtype(self.attributes.get("activation_dtype") or self.type.dtype)


@dataclass(eq=False)
class Module:
    """Meshes, named layouts, variables and functions, each in declaration order."""

    meshes: dict[str, Mesh] = field(default_factory=dict)
    layouts: dict[str, LayoutRules] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    locs: dict[str, Location] = field(default_factory=dict)

    def function(self, name: str | None = None) -> Function:
        """The function called `name` (with or without `@`), or the first one."""
        if name is None:
            if not self.functions:
                raise MeshirError("the module has no functions")
            return next(iter(self.functions.values()))
        name = name.lstrip("@")
        if name not in self.functions:
            known = ", ".join("@" + f for f in self.functions) or "none"
            raise MeshirError(f"no function @{name} in the module (functions: {known})")
        return self.functions[name]

    def mesh_of(self, function: Function) -> Mesh | None:
        symbol = function.mesh_symbol()
        return self.meshes.get(symbol) if symbol else None

    def layout_of(self, function: Function) -> LayoutRules | None:
        """The function's layout rules: `layout = @name` or an inline `layout = {...}`."""
        layout = function.attributes.get("layout")
        if isinstance(layout, SymbolRef):
            return self.layouts.get(layout.name)
        return layout

    def symbol_kind(self, name: str) -> str | None:
        for kind, table in (("mesh", self.meshes), ("layout", self.layouts), ("var", self.variables), ("func", self.functions)):
            if name in table:
                return kind
        return None
