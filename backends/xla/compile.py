"""Compile meshir functions into jitted JAX programs.

Three modes, one calling convention:

- `compile_local`: a local (post-spmd) function under `jax.shard_map` over the
  JAX mesh of its meshir mesh; meshir already partitioned it, so the body is the
  per-device program and collectives are explicit. Inputs and outputs are global
  arrays laid out by the function's layout rules (PartitionSpecs); with
  `per_device=True` every value is instead a stack of the per-device arrays
  (leading axis = device number), the form of `Interpreter.run_local`.
- `compile_global_gspmd`: a global function jitted with `NamedSharding`s from its
  layout, partitioned by XLA (the baseline; DESIGN section 6, "gspmd mode").
- `compile_global`: a global function on one device.

The jitted function is `jitted(inputs, variables) -> (outputs, new_variables)`,
all dicts of arrays: `inputs` keyed by argument name, `variables` by variable
name (every variable the function reads or writes, laid out by its storage
layout), `outputs` by returned value name (`meshir.interpreter.output_names`),
`new_variables` holding the variables the function assigns. 64-bit types need
`jax_enable_x64`, so every trace and call runs under `x64()`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from meshir.diagnostics import MeshirError
from meshir.interpreter import REPLICATED, initial_value, output_names, shard, storage_layouts, to_argument
from meshir.ir import Function, Module
from meshir.mesh import LayoutRules, Mesh, ValueLayout
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType

from .devices import jax_mesh
from .trace import trace_function

Arrays = dict[str, jax.Array]
# The leading dimension of per-device stacks; no .mir name can clash with it.
_DEVICE_DIM = "<device>"


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """64-bit dtypes (f64, i64) for the duration of a trace or call, without changing
    the process-wide default that other JAX code relies on."""
    with jax.enable_x64(True):
        yield


def partition_spec(layout: ValueLayout, mesh: Mesh) -> PartitionSpec:
    """One entry per dimension: None, an axis, or a tuple of axes; size-1 axes dropped."""
    entries: list[Any] = []
    for axes in layout.axes:
        kept = tuple(a for a in axes if mesh.axis_size(a) > 1)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*entries)


def global_type(local: TensorType, layout: ValueLayout, mesh: Mesh) -> TensorType:
    """The global type of a value whose per-device slice is `local`."""
    return local.with_dims(Dim(d.name, d.size * layout.split_count(mesh, i)) for i, d in enumerate(local.dims))


@dataclass(frozen=True)
class Port:
    """One input or output of a compiled program: its name, the type of the array
    passed in or out, and where it lives (None on one device)."""

    name: str
    type: TensorType
    spec: PartitionSpec | None = None

    def struct(self, mesh: jax.sharding.Mesh | None) -> jax.ShapeDtypeStruct:
        sharding = NamedSharding(mesh, self.spec) if mesh is not None else None
        return jax.ShapeDtypeStruct(self.type.shape, self.type.dtype.numpy, sharding=sharding)


@dataclass
class CompiledProgram:
    """A jitted meshir function; see the module doc for its calling convention."""

    module: Module
    function: Function
    mesh: Mesh | None
    device_mesh: jax.sharding.Mesh | None
    jitted: Any
    inputs: list[Port]
    variables: list[Port]
    outputs: list[Port]
    written: list[Port]
    per_device: bool = False
    donating: Any = None  # the same program with the written variables a separate, donated argument

    def placed(self, variables: Mapping[str, Any]) -> Arrays:
        """The program's variables among `variables` on their devices, as its outputs
        leave them: calls given host arrays first and device arrays later would
        otherwise compile the program twice (their layouts differ)."""
        ports = {p.name: p for p in self.variables}
        with x64():
            return {name: jax.device_put(value, NamedSharding(self.device_mesh, ports[name].spec) if self.device_mesh else None)
                    for name, value in variables.items() if name in ports}

    def step(self, inputs: Mapping[str, Any], variables: Mapping[str, Any]) -> tuple[Arrays, Arrays]:
        """As calling the program, but the buffers of the variables it writes are
        donated to their new values (a train step updates in place, as `jax.jit`
        with `donate_argnums` does): the caller must not use the given arrays of
        written variables afterwards."""
        with x64():
            return self.donating(dict(inputs), *self.split_written(variables))

    def split_written(self, variables: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the variables the program writes, the others): the donating program's
        second and third arguments."""
        names = {p.name for p in self.written}
        return ({k: v for k, v in variables.items() if k in names}, {k: v for k, v in variables.items() if k not in names})

    def lower_step(self) -> jax.stages.Lowered:
        """The donating program that `step` runs, lowered for abstract arguments (for
        its memory figures, or to compile it ahead of time)."""
        inputs, variables = self.specs()
        with x64():
            return self.donating.lower(inputs, *self.split_written(variables))

    def specs(self) -> tuple[dict[str, jax.ShapeDtypeStruct], dict[str, jax.ShapeDtypeStruct]]:
        """Abstract arguments (shape, dtype, sharding) for lowering and export."""
        return ({p.name: p.struct(self.device_mesh) for p in self.inputs},
                {p.name: p.struct(self.device_mesh) for p in self.variables})

    def lower(self) -> jax.stages.Lowered:
        with x64():
            return self.jitted.lower(*self.specs())

    def __call__(self, inputs: Mapping[str, Any], variables: Mapping[str, Any]) -> tuple[Arrays, Arrays]:
        with x64():
            return self.jitted(dict(inputs), dict(variables))

    def run(self, inputs: Mapping[str, Any], variables: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Global numpy arrays in and out. Variables default to their initializers; the
        second result holds every variable given or used, updated by the run."""
        if self.per_device:
            raise MeshirError(f"func @{self.function.name} was compiled per device; use run_per_device")
        feed = _bind(self.function, self.inputs, inputs)
        state = initial_state(self.module, self.variables, variables)
        outputs, written = self(feed, {p.name: state[p.name] for p in self.variables})
        state.update({name: np.asarray(value) for name, value in written.items()})
        return {p.name: np.asarray(outputs[p.name]) for p in self.outputs}, state

    def run_per_device(
        self, inputs: Mapping[str, Sequence[Any]], local_state: Mapping[str, Sequence[Any]] | None = None
    ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
        """Lists of per-device arrays in and out, as `Interpreter.run_local`. Without
        `local_state`, each variable's slices come from its initializer."""
        if not self.per_device:
            raise MeshirError(f"func @{self.function.name} was not compiled per device; use run")
        feed = _bind(self.function, self.inputs, {k: _stacked(v) for k, v in inputs.items()})
        if local_state is None:
            layouts = storage_layouts(self.module, self.function)
            state = initial_state(self.module, [Port(n, self.module.variables[n].slice_type) for n in layouts], None)
            local_state = {n: shard(state[n], layouts[n], self.mesh) for n in layouts}
        missing = [p.name for p in self.variables if p.name not in local_state]
        if missing:
            raise MeshirError(f"local state has no slices of variable @{missing[0]}, which func @{self.function.name} uses")
        stacked = {p.name: to_argument(_stacked(local_state[p.name]), p.type, f"local state of variable @{p.name}")
                   for p in self.variables}
        outputs, written = self(feed, stacked)
        new_state = {name: [np.asarray(s) for s in slices] for name, slices in local_state.items()}
        new_state.update({name: list(np.asarray(value)) for name, value in written.items()})
        return {p.name: list(np.asarray(outputs[p.name])) for p in self.outputs}, new_state


def _stacked(slices: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(s) for s in slices])


def _bind(function: Function, ports: list[Port], given: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inputs by argument name, each checked against its port's type."""
    names = [p.name for p in ports]
    for name in given:
        if name not in names:
            raise MeshirError(f"func @{function.name} has no argument '{name}' (arguments: {', '.join(names) or 'none'})")
    bound = {}
    for port in ports:
        if port.name not in given:
            raise MeshirError(f"func @{function.name}: missing input '{port.name}' of type {port.type}")
        bound[port.name] = to_argument(given[port.name], port.type, f"func @{function.name} input '{port.name}'")
    return bound


def initial_state(module: Module, ports: Sequence[Port], given: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Global values of the variables: those given (checked against their types), the
    ports' ones that are missing from their initializers."""
    given = dict(given or {})
    state = {}
    for name, value in given.items():
        if name not in module.variables:
            known = ", ".join("@" + v for v in module.variables) or "none"
            raise MeshirError(f"variables name @{name}, which the module does not declare (variables: {known})")
        state[name] = to_argument(value, module.variables[name].slice_type, f"variable @{name}")
    for port in ports:
        if port.name not in state:
            state[port.name] = initial_value(module.variables[port.name])
    return state


def _written(function: Function) -> list[str]:
    names: list[str] = []
    for op in function.ops:
        opdef = lookup(op.name)
        if opdef.symbol_operand and opdef.side_effects and op.attributes[opdef.symbol_operand].name not in names:
            names.append(op.attributes[opdef.symbol_operand].name)
    return names


def _function_mesh(module: Module, function: Function, mesh: Mesh | None) -> Mesh:
    own = module.mesh_of(function)
    if mesh is None:
        if own is None:
            raise MeshirError(f"func @{function.name} has no mesh; give one (attributes {{mesh = @m}})")
        return own
    if own is not None and (own.axis_names, own.shape) != (mesh.axis_names, mesh.shape):
        raise MeshirError(f"func @{function.name} is written for mesh @{own.name} {own}, not {mesh}")
    return mesh


def _ports(function: Function, module: Module, mesh: Mesh | None, local: bool, per_device: bool) -> tuple[list[Port], list[Port], list[Port], list[Port]]:
    """Inputs, variables, outputs and written variables, with the types passed in and
    out and their PartitionSpecs."""
    rules = module.layout_of(function) or REPLICATED
    layouts = storage_layouts(module, function)

    def port(name: str, ttype: TensorType, layout: ValueLayout, is_local: bool) -> Port:
        if mesh is None:
            return Port(name, ttype)
        if per_device:
            stacked = ttype.with_dims((Dim(_DEVICE_DIM, mesh.size), *ttype.dims))
            return Port(name, stacked, PartitionSpec(mesh.axis_names))
        outer = global_type(ttype, layout, mesh) if is_local else ttype
        return Port(name, outer, partition_spec(layout, mesh))

    def variable_port(name: str) -> Port:
        variable_type = module.variables[name].slice_type
        if local:
            layout = layouts[name]
            return port(name, layout.local_type(variable_type, mesh), layout, True)
        return port(name, variable_type, rules.layout_of(variable_type), False)

    inputs = [port(a.name, a.type, rules.layout_of(a.type), local) for a in function.args]
    outputs = [port(n, v.type, rules.layout_of(v.type), local) for n, v in zip(output_names(function), function.returns)]
    return inputs, [variable_port(n) for n in layouts], outputs, [variable_port(n) for n in _written(function)]


def _body(module: Module, function: Function, written: list[Port], overrides: Mapping[str, Callable[..., Any]] | None,
          per_device: bool) -> Callable[[Arrays, Arrays], tuple[Arrays, Arrays]]:
    names = output_names(function)

    def body(inputs: Arrays, variables: Arrays) -> tuple[Arrays, Arrays]:
        if per_device:  # each device's block of a stacked value has a leading axis of 1
            inputs = {k: v[0] for k, v in inputs.items()}
            variables = {k: v[0] for k, v in variables.items()}
        state = dict(variables)
        results = trace_function(module, function, [inputs[a.name] for a in function.args], state, overrides)
        outputs = dict(zip(names, results))
        new_variables = {p.name: state[p.name] for p in written}
        if per_device:
            outputs = {k: v[None] for k, v in outputs.items()}
            new_variables = {k: v[None] for k, v in new_variables.items()}
        return outputs, new_variables

    # The HLO module takes the jitted function's name: make it the meshir function's.
    body.__name__ = body.__qualname__ = function.name
    return body


def _shardings(device_mesh: jax.sharding.Mesh, ports: list[Port]) -> dict[str, NamedSharding]:
    return {p.name: NamedSharding(device_mesh, p.spec) for p in ports}


def _jit_both(fn: Callable[[Arrays, Arrays], tuple[Arrays, Arrays]], device_mesh: jax.sharding.Mesh | None,
              inputs: list[Port], variables: list[Port], outputs: list[Port], written: list[Port]) -> tuple[Any, Any]:
    """`fn` jitted as called, and a variant taking the written variables as their
    own argument, donated. jax.jit compiles lazily: an unused variant costs nothing."""
    names = {p.name for p in written}

    def split(inputs_: Arrays, written_: Arrays, others: Arrays) -> tuple[Arrays, Arrays]:
        return fn(inputs_, {**written_, **others})

    if device_mesh is None:
        return jax.jit(fn), jax.jit(split, donate_argnums=(1,))
    in_shardings, var_shardings = _shardings(device_mesh, inputs), _shardings(device_mesh, variables)
    out_shardings = (_shardings(device_mesh, outputs), _shardings(device_mesh, written))
    jitted = jax.jit(fn, in_shardings=(in_shardings, var_shardings), out_shardings=out_shardings)
    donating = jax.jit(split, donate_argnums=(1,), out_shardings=out_shardings, in_shardings=(
        in_shardings, {k: v for k, v in var_shardings.items() if k in names}, {k: v for k, v in var_shardings.items() if k not in names}))
    return jitted, donating


def compile_local(module: Module, function_name: str | None = None, mesh: Mesh | None = None, *, per_device: bool = False) -> CompiledProgram:
    """A local function as a jitted `shard_map` over the JAX mesh of `mesh` (default:
    the function's own). See the module doc for `per_device`."""
    function = module.function(function_name)
    if not function.is_local:
        raise MeshirError(f"func @{function.name} is a global function; compile it with compile_global_gspmd or compile_global")
    mesh = _function_mesh(module, function, mesh)
    device_mesh = jax_mesh(mesh)
    inputs, variables, outputs, written = _ports(function, module, mesh, True, per_device)
    mapped = jax.shard_map(
        _body(module, function, written, None, per_device),
        mesh=device_mesh,
        in_specs=({p.name: p.spec for p in inputs}, {p.name: p.spec for p in variables}),
        out_specs=({p.name: p.spec for p in outputs}, {p.name: p.spec for p in written}),
        check_vma=False,  # meshir inserts its own collectives (DESIGN section 9)
    )
    jitted, donating = _jit_both(mapped, device_mesh, inputs, variables, outputs, written)
    return CompiledProgram(module, function, mesh, device_mesh, jitted, inputs, variables, outputs, written, per_device, donating)


def _global_function(module: Module, function_name: str | None) -> Function:
    function = module.function(function_name)
    if function.is_local:
        raise MeshirError(f"func @{function.name} is a local function; compile it with compile_local")
    return function


def compile_global_gspmd(module: Module, function_name: str | None = None, mesh: Mesh | None = None) -> CompiledProgram:
    """A global function jitted with NamedShardings from its layout rules on `mesh`
    (default: the function's mesh) for its arguments, results and variables, and
    `reshard` as a sharding constraint; XLA's partitioner does the rest."""
    function = _global_function(module, function_name)
    mesh = _function_mesh(module, function, mesh)
    device_mesh = jax_mesh(mesh)
    inputs, variables, outputs, written = _ports(function, module, mesh, False, False)

    def constrain(op: OpView, x: jax.Array) -> jax.Array:
        layout: LayoutRules = op.attr("layout")
        spec = partition_spec(layout.layout_of(op.operand_types[0]), mesh)
        return jax.lax.with_sharding_constraint(x, NamedSharding(device_mesh, spec))

    jitted, donating = _jit_both(_body(module, function, written, {"reshard": constrain}, False), device_mesh,
                                 inputs, variables, outputs, written)
    return CompiledProgram(module, function, mesh, device_mesh, jitted, inputs, variables, outputs, written, donating=donating)


def compile_global(module: Module, function_name: str | None = None) -> CompiledProgram:
    """A global function on one device, with no partitioning at all."""
    function = _global_function(module, function_name)
    inputs, variables, outputs, written = _ports(function, module, None, False, False)
    jitted, donating = _jit_both(_body(module, function, written, None, False), None, inputs, variables, outputs, written)
    return CompiledProgram(module, function, None, None, jitted, inputs, variables, outputs, written, donating=donating)
