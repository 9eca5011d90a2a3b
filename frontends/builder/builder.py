"""Build meshir modules from Python: the same IR that `.mir` text parses to.

    mb = ModuleBuilder()
    mb.mesh("m", rows=2, cols=2)
    mb.layout("dp", batch="rows")
    mb.var("w", f32(pixels=784, hidden=512), "normal", stddev=0.05, seed=1)
    with mb.function("loss", x=f32(batch=64, pixels=784), mesh="m", layout="dp") as f:
        h = f.einsum(f.arg("x"), f.read("w"), output=["batch", "hidden"], name="h")
        f.ret(f.reduce_mean(f.relu(h), dims=["batch", "hidden"], name="loss"))
    module = mb.build()

Every op of the registry is a method of the function builder (`f.relu(x)`,
`f.einsum(...)`); Python operators build the binary ops. Each op's types are
inferred as it is added, so a mistake raises `MeshirError` at the call.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from meshir.attributes import SymbolRef
from meshir.diagnostics import MeshirError
from meshir.dtypes import DTYPES, DType
from meshir.emitter import Emitter, as_literal, as_plain, to_attribute  # noqa: F401  (to_attribute is the builder's API too)
from meshir.ir import Function, Module, Value, Variable
from meshir.mesh import LayoutRules, Mesh
from meshir.registry import find
from meshir.types import Dim, TensorType
from meshir.verifier import verify_module


class TypeFactory:
    """`f32(batch=64, hidden=512)` is the type `f32[batch=64, hidden=512]`."""

    def __init__(self, dtype: DType):
        self.dtype = dtype

    def __call__(self, *dims: Dim, **sizes: int) -> TensorType:
        return TensorType(self.dtype, (*dims, *(Dim(n, s) for n, s in sizes.items())))

    def __repr__(self) -> str:
        return self.dtype.name


f32, bf16, f16, f64 = (TypeFactory(DTYPES[n]) for n in ("f32", "bf16", "f16", "f64"))
i8, i32, i64, u8, u32 = (TypeFactory(DTYPES[n]) for n in ("i8", "i32", "i64", "u8", "u32"))
bool_ = TypeFactory(DTYPES["bool"])


def dims(**sizes: int) -> tuple[Dim, ...]:
    """`dims(batch=64, hidden=512)`: a shape for `shape = ...` attributes."""
    return tuple(Dim(n, s) for n, s in sizes.items())


class Tensor:
    """A value being built; arithmetic operators add ops to its function."""

    __array_priority__ = 1000  # numpy scalars on the left defer to Tensor's operators

    def __init__(self, value: Value, builder: FunctionBuilder):
        self.value = value
        self.builder = builder

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def dtype(self) -> DType:
        return self.value.type.dtype

    @property
    def names(self) -> tuple[str, ...]:
        return self.value.type.names

    def size(self, name: str) -> int:
        return self.value.type.size_of(name)

    def _binary(self, op: str, other: Any, reverse: bool = False) -> Tensor:
        other = self.builder.lift(other, self.dtype)
        return self.builder.op(op, other, self) if reverse else self.builder.op(op, self, other)

    def __add__(self, other: Any) -> Tensor: return self._binary("add", other)
    def __radd__(self, other: Any) -> Tensor: return self._binary("add", other, True)
    def __sub__(self, other: Any) -> Tensor: return self._binary("sub", other)
    def __rsub__(self, other: Any) -> Tensor: return self._binary("sub", other, True)
    def __mul__(self, other: Any) -> Tensor: return self._binary("mul", other)
    def __rmul__(self, other: Any) -> Tensor: return self._binary("mul", other, True)
    def __truediv__(self, other: Any) -> Tensor: return self._binary("div", other)
    def __rtruediv__(self, other: Any) -> Tensor: return self._binary("div", other, True)
    def __pow__(self, other: Any) -> Tensor: return self._binary("pow", other)
    def __lt__(self, other: Any) -> Tensor: return self._binary("lt", other)
    def __le__(self, other: Any) -> Tensor: return self._binary("le", other)
    def __gt__(self, other: Any) -> Tensor: return self._binary("gt", other)
    def __ge__(self, other: Any) -> Tensor: return self._binary("ge", other)
    def __neg__(self) -> Tensor: return self.builder.op("neg", self)
    def __and__(self, other: Any) -> Tensor: return self._binary("logical_and", other)
    def __or__(self, other: Any) -> Tensor: return self._binary("logical_or", other)
    def __invert__(self) -> Tensor: return self.builder.op("logical_not", self)

    def __repr__(self) -> str:
        return f"Tensor(%{self.value.name or '?'}: {self.type})"


class FunctionBuilder:
    """Adds ops to one function; `f.<opname>(operands..., name=..., **attributes)`."""

    def __init__(self, module_builder: ModuleBuilder, function: Function):
        self.module_builder = module_builder
        self.function = function
        self.emitter = Emitter(module_builder.module, function)

    @property
    def module(self) -> Module:
        return self.module_builder.module

    def arg(self, name: str) -> Tensor:
        for value in self.function.args:
            if value.name == name:
                return Tensor(value, self)
        raise MeshirError(f"func @{self.function.name} has no argument %{name}")

    @property
    def args(self) -> list[Tensor]:
        return [Tensor(v, self) for v in self.function.args]

    def lift(self, value: Any, dtype: DType) -> Tensor:
        """A Python number becomes a scalar `constant` of the other operand's dtype."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (bool, int, float, np.number)):
            return self.op("constant", value=value.item() if isinstance(value, np.number) else value, dtype=dtype)
        raise MeshirError(f"cannot use {type(value).__name__} {value!r} as a tensor")

    def op(self, opname: str, *operands: Any, name: str | Iterable[str] | None = None, **attributes: Any) -> Any:
        """Add op `opname`; returns a Tensor, a tuple of Tensors (several results) or None."""
        opdef = find(opname)
        if opdef is None:
            raise MeshirError(f"unknown op '{opname}'")
        symbol: list[str] = []
        if opdef.symbol_operand and operands and isinstance(operands[0], str):
            symbol, operands = [operands[0]], operands[1:]
        values = [self._value(v) for v in operands]
        op = self.emitter.emit_op(opname, *symbol, *values, name=name, **attributes)
        results = tuple(Tensor(v, self) for v in op.results)
        if not results:
            return None
        return results[0] if len(results) == 1 else results

    def _value(self, operand: Any) -> Value:
        if isinstance(operand, Tensor):
            if operand.builder.function is not self.function:
                raise MeshirError(f"%{operand.value.name} belongs to func @{operand.builder.function.name}, not @{self.function.name}")
            return operand.value
        raise MeshirError(f"operands must be tensors of this function, got {type(operand).__name__} {operand!r}")

    def __getattr__(self, opname: str) -> Any:
        if opname.startswith("_") or find(opname) is None:
            raise AttributeError(opname)
        return lambda *operands, **attributes: self.op(opname, *operands, **attributes)

    def read(self, var: str, name: str | None = None) -> Tensor:
        """`%name = read @var`; the value takes the variable's name unless told otherwise."""
        return self.op("read", var, name=name or var.lstrip("@"))

    def ret(self, *values: Tensor) -> None:
        self.function.returns = [self._value(v) for v in values]
        self.function.result_types = [v.value.type for v in values]

    def __enter__(self) -> FunctionBuilder:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class ModuleBuilder:
    """Declares meshes, layouts, variables and functions of one module."""

    def __init__(self) -> None:
        self.module = Module()

    def _declare(self, name: str) -> str:
        name = name.lstrip("@")
        if self.module.symbol_kind(name):
            raise MeshirError(f"symbol @{name} is already defined")
        return name

    def mesh(self, name: str, **axes: int) -> Mesh:
        mesh = Mesh(self._declare(name), tuple(Dim(a, s) for a, s in axes.items()))
        self.module.meshes[mesh.name] = mesh
        return mesh

    def layout(self, name: str, rules: Mapping[str, str | tuple[str, ...]] | None = None, **kw: str | tuple[str, ...]) -> LayoutRules:
        layout = LayoutRules.of({**(rules or {}), **kw})
        self.module.layouts[self._declare(name)] = layout
        return layout

    def var(self, name: str, ttype: TensorType, initializer: str = "zeros", *, trainable: bool | None = None, **init_args: Any) -> str:
        """Declare `var @name : ttype = initializer(init_args)`; returns the symbol name."""
        name = self._declare(name)
        attributes = {} if trainable is None else {"trainable": trainable}
        args = {k: as_literal(as_plain(v)) for k, v in init_args.items()}
        self.module.variables[name] = Variable(name, ttype, initializer, args, attributes)
        return name

    def function(self, name: str, *, mesh: str | None = None, layout: str | Mapping[str, Any] | None = None,
                 spmd: str | None = None, **args: TensorType) -> FunctionBuilder:
        """A new function; keyword arguments are its arguments, in order."""
        attributes: dict[str, Any] = {}
        if mesh is not None:
            attributes["mesh"] = SymbolRef(mesh.lstrip("@"))
        if spmd is not None:
            attributes["spmd"] = SymbolRef(spmd.lstrip("@"))
        if layout is not None:
            attributes["layout"] = SymbolRef(layout.lstrip("@")) if isinstance(layout, str) else LayoutRules.of(layout)
        function = Function(self._declare(name), [Value(t, n) for n, t in args.items()], [], attributes=attributes)
        self.module.functions[function.name] = function
        return FunctionBuilder(self, function)

    def build(self) -> Module:
        """Verify and return the module."""
        verify_module(self.module)
        return self.module
