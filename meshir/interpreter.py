"""The reference backend: a numpy interpreter of global programs and a simulator
of local (spmd) programs over every device of a mesh.

Global functions run op by op with each op's registered reference. Local
functions (`attributes {spmd = @m}`) hold one array per device for every value:
ops that are not device-aware run once per device, device-aware ones
(collectives) see every device's array at once.

Variables live in `Interpreter.state` as global values. A local function sees
each device's slice of a variable under the storage layout its state ops give
(`read @w {layout = {...}}`); `shard` and `unshard` convert between the two.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterator, Mapping, MutableMapping, Sequence

import numpy as np

from .diagnostics import MeshirError, RuntimeFailure
from .dtypes import dtype_of_numpy
from .initializers import INITIALIZERS
from .ir import Function, Module, Operation, Value, Variable, unused_name
from .mesh import LayoutRules, Mesh, ValueLayout
from .registry import OpDef, OpView, lookup
from .types import TensorType
from .verifier import verify_module

PerDevice = list[np.ndarray]
OpObserver = Callable[[Operation, list[Any]], None]

DEFAULT_INDEX_BOUND = 10
REPLICATED = LayoutRules(())

# A conversion from one kind to another is allowed when it does not lose meaning:
# bool -> integer -> float. Going down (float -> int, int -> bool) is refused.
_KIND_RANK = {"bool": 0, "uint": 1, "int": 1, "float": 2}
_NUMPY_KINDS = {"b": "bool", "u": "uint", "i": "int", "f": "float"}

# Ops whose integer operand indexes a dimension: op name -> (operand index, the
# dimension's size), so random inputs feeding them stay in range.
_INDEX_OPERANDS: dict[str, tuple[int, Callable[[Operation], int]]] = {
    "one_hot": (0, lambda op: op.attr("dim").size),
    "gather": (1, lambda op: op.operands[0].type.size_of(op.attr("dim"))),
}


def shard(value: np.ndarray, layout: ValueLayout, mesh: Mesh) -> PerDevice:
    """Each device's slice of a global value (a dimension split over several axes is
    cut with the first axis major)."""
    local_shape = tuple(size // layout.split_count(mesh, i) for i, size in enumerate(value.shape))
    return [value[_block_index(local_shape, layout, mesh, device)].copy() for device in mesh.devices()]


def unshard(slices: Sequence[np.ndarray], layout: ValueLayout, mesh: Mesh) -> np.ndarray:
    """The global value from per-device slices; where devices hold replicas of a
    block, the lowest-numbered device's copy is used."""
    local_shape = np.shape(slices[0])
    shape = tuple(size * layout.split_count(mesh, i) for i, size in enumerate(local_shape))
    out = np.empty(shape, dtype=np.asarray(slices[0]).dtype)
    for device in reversed(mesh.devices()):
        out[_block_index(local_shape, layout, mesh, device)] = slices[device]
    return out


def _block_index(local_shape: tuple[int, ...], layout: ValueLayout, mesh: Mesh, device: int) -> tuple[slice, ...]:
    """Where `device`'s slice lies in the global value."""
    index = []
    for size, axes in zip(local_shape, layout.axes):
        position = mesh.index_in_group(device, axes)
        index.append(slice(position * size, (position + 1) * size))
    return tuple(index)


def _kind(dtype: np.dtype) -> str | None:
    try:
        return dtype_of_numpy(dtype).kind
    except KeyError:
        return _NUMPY_KINDS.get(dtype.kind)


def to_argument(value: Any, ttype: TensorType, what: str) -> np.ndarray:
    """`value` as a fresh array of type `ttype`; MeshirError when its shape differs or
    its values cannot become `ttype`'s dtype without losing meaning."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        raise MeshirError(f"{what}: expected {ttype}, got {type(value).__name__} that is not an array") from None
    if array.shape != ttype.shape:
        raise MeshirError(f"{what}: expected {ttype} (shape {ttype.shape}), got an array of shape {array.shape}")
    source, target = _kind(array.dtype), ttype.dtype
    if source is None:
        raise MeshirError(f"{what}: expected {ttype}, got an array of dtype {array.dtype}, which has no meshir equivalent")
    if _KIND_RANK[source] > _KIND_RANK[target.kind]:
        raise MeshirError(f"{what}: expected {ttype}; {array.dtype} values cannot become {target} without losing meaning, so convert them first")
    if source in ("int", "uint") and target.is_integer and array.size:
        info = np.iinfo(target.numpy)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise MeshirError(f"{what}: expected {ttype}; values from {low} to {high} do not fit {target} [{info.min}, {info.max}]")
    return array.astype(target.numpy)


def output_names(function: Function) -> list[str]:
    """The keys of a run's outputs: each returned value's name; an unnamed value at
    position i is `output_i`, and a name already taken gets `_1`, `_2`, ..."""
    names: list[str] = []
    for position, value in enumerate(function.returns):
        names.append(unused_name(value.name or f"output_{position}", names))
    return names


class _DeviceState(MutableMapping):
    """One device's view of per-device variable state, for references that run per device."""

    def __init__(self, local_state: dict[str, PerDevice], device: int):
        self._local_state = local_state
        self._device = device

    def __getitem__(self, name: str) -> np.ndarray:
        return self._local_state[name][self._device]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._local_state[name][self._device] = value

    def __delitem__(self, name: str) -> None:
        raise MeshirError(f"variable @{name} cannot be deleted while a program runs")

    def __iter__(self) -> Iterator[str]:
        return iter(self._local_state)

    def __len__(self) -> int:
        return len(self._local_state)


def initial_value(variable: Variable) -> np.ndarray:
    """The variable's global initial value, drawn in its master dtype and stored in its slice dtype."""
    value = INITIALIZERS[variable.initializer].materialize(variable.type, variable.init_args)
    return value.astype(variable.slice_type.dtype.numpy, copy=False)


class Interpreter:
    """Runs a module's functions in numpy; `state` holds every variable's global value."""

    def __init__(self, module: Module, state: Mapping[str, np.ndarray] | None = None):
        verify_module(module)
        self.module = module
        given = dict(state or {})
        for name in given:
            if name not in module.variables:
                known = ", ".join("@" + v for v in module.variables) or "none"
                raise MeshirError(f"state names variable @{name}, which the module does not declare (variables: {known})")
        self.state: dict[str, np.ndarray] = {}
        for name, variable in module.variables.items():
            if name in given:
                self.state[name] = to_argument(given[name], variable.slice_type, f"state of variable @{name}")
            else:
                self.state[name] = initial_value(variable)

    def run(
        self,
        function: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        on_op: OpObserver | None = None,
    ) -> dict[str, Any]:
        """Run a function (the first one when `function` is None). A global function takes
        and returns arrays keyed by argument and returned-value names; a local function
        is simulated with `run_local`. `on_op(op, results)` sees each op's results as it runs."""
        func = self.module.function(function)
        if func.is_local:
            return self.run_local(func.name, inputs, on_op=on_op)
        env: dict[Value, np.ndarray] = dict(zip(func.args, _bind_inputs(func, inputs, to_argument)))
        for op in func.ops:
            view = _view(self.module, func, op, self.state)
            out = _outputs_of(_call(op, None, view.opdef.reference_fn, view, *(env[v] for v in op.operands)))
            results = [_checked(op, i, array, value.type, None) for i, (value, array) in enumerate(zip(op.results, out))]
            env.update(zip(op.results, results))
            if on_op is not None:
                on_op(op, results)
        return {name: env[value].copy() for name, value in zip(output_names(func), func.returns)}

    def run_local(
        self,
        function: str | None,
        inputs: Mapping[str, Sequence[Any]] | None,
        local_state: dict[str, PerDevice] | None = None,
        on_op: OpObserver | None = None,
    ) -> dict[str, PerDevice]:
        """Simulate a local function on every device of its mesh. Inputs and outputs are
        lists of per-device arrays. `local_state` (variable -> per-device slices) is
        updated in place; without it, the slices come from `state` under each variable's
        storage layout and are written back to `state` after the run."""
        func = self.module.function(function)
        if not func.is_local:
            raise MeshirError(f"func @{func.name} is a global function; run it with run()")
        mesh = self.module.mesh_of(func)
        layouts = storage_layouts(self.module, func)
        if local_state is None:
            state = {name: shard(self.state[name], layout, mesh) for name, layout in layouts.items()}
        else:
            state = local_state
            self._check_local_state(func, mesh, layouts, state)
        env: dict[Value, PerDevice] = dict(zip(func.args, _bind_inputs(func, inputs, partial(_per_device, mesh=mesh))))
        for op in func.ops:
            results = _run_local_op(self.module, func, mesh, op, state, [env[v] for v in op.operands])
            env.update(zip(op.results, results))
            if on_op is not None:
                on_op(op, results)
        if local_state is None:
            for name, layout in layouts.items():
                self.state[name] = unshard(state[name], layout, mesh)
        return {name: [a.copy() for a in env[value]] for name, value in zip(output_names(func), func.returns)}

    def _check_local_state(self, func: Function, mesh: Mesh, layouts: dict[str, ValueLayout], state: dict[str, PerDevice]) -> None:
        for name, layout in layouts.items():
            if name not in state:
                raise MeshirError(f"local state has no slices of variable @{name}, which func @{func.name} uses")
            variable_type = self.module.variables[name].slice_type
            state[name] = _per_device(state[name], layout.local_type(variable_type, mesh), f"local state of variable @{name}", mesh)


def random_inputs(function: Function, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a global function, deterministic in `seed`: floats standard normal,
    booleans fair coins, integers uniform in [0, 10), or in [0, size) when the
    argument directly indexes a dimension of that size (one_hot, gather)."""
    if function.is_local:
        raise MeshirError(f"func @{function.name} is local; draw inputs for its global function and shard them")
    bounds = _index_bounds(function)
    rng = np.random.default_rng(seed)
    return {arg.name: _draw(rng, arg.type, bounds.get(arg, DEFAULT_INDEX_BOUND)) for arg in function.args}


def _bind_inputs(func: Function, inputs: Mapping[str, Any] | None, convert: Callable[[Any, TensorType, str], Any]) -> list[Any]:
    """The function's inputs in argument order, each converted; MeshirError for a missing or unknown name."""
    inputs = dict(inputs or {})
    names = [arg.name for arg in func.args]
    for name in inputs:
        if name not in names:
            raise MeshirError(f"func @{func.name} has no argument '{name}' (arguments: {', '.join(names) or 'none'})")
    bound = []
    for arg in func.args:
        if arg.name not in inputs:
            raise MeshirError(f"func @{func.name}: missing input '{arg.name}' of type {arg.type}")
        bound.append(convert(inputs[arg.name], arg.type, f"func @{func.name} input '{arg.name}'"))
    return bound


def _view(module: Module, func: Function, op: Operation, state: Any) -> OpView:
    opdef = lookup(op.name)
    return OpView(opdef, op.operand_types, op.attributes, module, func, op.result_types, state)


def _call(op: Operation, device: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a reference; any failure becomes a MeshirError at the op's location."""
    where = op.name if device is None else f"{op.name} on device {device}"
    try:
        with np.errstate(all="ignore"):
            return fn(*args)
    except MeshirError as exc:
        raise MeshirError(exc.message if device is None else f"{where}: {exc.message}", exc.loc or op.loc, exc.note) from None
    except Exception as exc:
        raise RuntimeFailure(f"{where}: {type(exc).__name__}: {exc}", op.loc) from exc


def _outputs_of(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _checked(op: Operation, index: int, array: Any, ttype: TensorType, device: int | None) -> np.ndarray:
    """A reference's result, which must have exactly its type's shape and dtype: a
    mismatch is a bug in the op's reference, reported where the op is."""
    array = np.asarray(array)
    if array.shape != ttype.shape or array.dtype != ttype.dtype.numpy:
        where = "" if device is None else f" on device {device}"
        raise RuntimeFailure(
            f"{op.name}: the reference implementation returned {array.dtype} of shape {array.shape} for result "
            f"{index}{where}, whose type is {ttype}; this is a bug in meshir's reference for {op.name}",
            op.loc,
        )
    return array


def _run_local_op(module: Module, func: Function, mesh: Mesh, op: Operation, state: dict[str, PerDevice], operands: list[PerDevice]) -> list[PerDevice]:
    view = _view(module, func, op, state)
    opdef: OpDef = view.opdef
    if opdef.device_aware:
        out = _call(op, None, opdef.reference_fn, view, *operands)
        per_result = [out] if len(op.results) == 1 else list(out)
    else:
        per_device = []
        for device in mesh.devices():
            view.state = _DeviceState(state, device)
            per_device.append(_outputs_of(_call(op, device, opdef.reference_fn, view, *(x[device] for x in operands))))
        per_result = [[outs[i] for outs in per_device] for i in range(len(op.results))]
    results = []
    for index, (value, arrays) in enumerate(zip(op.results, per_result)):
        if len(arrays) != mesh.size:
            raise RuntimeFailure(f"{op.name}: the reference returned {len(arrays)} per-device arrays for a mesh of {mesh.size}; this is a bug in meshir", op.loc)
        results.append([_checked(op, index, a, value.type, d) for d, a in enumerate(arrays)])
    return results


def _per_device(value: Any, ttype: TensorType, what: str, mesh: Mesh) -> PerDevice:
    if not isinstance(value, (list, tuple)) or len(value) != mesh.size:
        got = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"
        raise MeshirError(f"{what}: expected a list of {mesh.size} per-device arrays of type {ttype} (mesh @{mesh.name} {mesh}), got {got}")
    return [to_argument(v, ttype, f"{what} on device {d}") for d, v in enumerate(value)]


def storage_layouts(module: Module, func: Function) -> dict[str, ValueLayout]:
    """Each variable the function's state ops touch -> its storage layout there
    (replicated when the op gives none). One function stores a variable one way."""
    layouts: dict[str, ValueLayout] = {}
    for op in func.ops:
        symbol_attr = lookup(op.name).symbol_operand
        if symbol_attr is None:
            continue
        name = op.attributes[symbol_attr].name
        variable_type = module.variables[name].type
        layout = (op.attributes.get("layout") or REPLICATED).layout_of(variable_type)
        if layouts.setdefault(name, layout) != layout:
            raise MeshirError(f"{op.name}: func @{func.name} stores variable @{name} with two different layouts", op.loc)
    return layouts


def _index_bounds(func: Function) -> dict[Value, int]:
    args = set(func.args)
    bounds: dict[Value, int] = {}
    for op in func.ops:
        rule = _INDEX_OPERANDS.get(op.name)
        if rule is None or op.operands[rule[0]] not in args:
            continue
        arg, size = op.operands[rule[0]], rule[1](op)
        bounds[arg] = min(bounds.get(arg, size), size)
    return bounds


def _draw(rng: np.random.Generator, ttype: TensorType, index_bound: int) -> np.ndarray:
    dtype = ttype.dtype
    if dtype.is_float:
        return rng.standard_normal(size=ttype.shape).astype(dtype.numpy)
    if dtype.is_bool:
        return np.asarray(rng.random(size=ttype.shape) < 0.5)
    return rng.integers(0, max(index_bound, 1), size=ttype.shape).astype(dtype.numpy)
