"""Build the tf.Graph of a meshir function: one copy of each op per device.

The graph's interface is global, as Mesh TensorFlow's import/export was: one
placeholder per argument holding the whole logical tensor (`x:0`), one tensor
per returned value holding the whole result (`loss:0`; `loss_out:0` when an
argument already holds the name), an op `init` that initialises the variables
and, when the function writes variables, an op `update` that runs the writes
(every output depends on them too). Inside, each device takes its block of
every input, runs its copy of every op under `tf.device`, and the outputs are
assembled from the lowest-numbered device holding each block.

Node names: each meshir op's nodes sit under a name scope named after its first
result (or the op), and under it one scope per device (`h/dev3/MatMul`), so
TensorBoard shows one box per op that opens into the devices. Variables are
per-device slices `variables/w/dev3`, initialised on their device from the
module's initializers (initializers.py); the function reads each slice once
and writes its final value once, after every read, so the graph keeps the
program's read-after-write order without relying on TF's resource semantics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from meshir.diagnostics import MeshirError, RuntimeFailure
from meshir.interpreter import REPLICATED, output_names, storage_layouts
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh, ValueLayout
from meshir.passes.layout import without_trivial_axes
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType

from . import kernels
from .collectives import Communicator
from .devices import HOST, device_name
from .initializers import initial_slice
from .random import block_offsets
from .rules import TARGET, install
from .rules_common import ConstantPool, const, constant_pool, tf, tf_dtype

INIT, UPDATE = "init", "update"
_NODE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-]*$")


@dataclass
class Port:
    """A global tensor of the interface: an argument or a returned value."""

    name: str  # the meshir name: argument, returned value (signature keys)
    tensor: str  # the graph tensor holding it, `x:0`
    type: TensorType  # its global type
    layout: ValueLayout  # how the devices hold it (replicated on one device)


@dataclass
class VariableSlices:
    """One meshir variable: its global type, storage layout and per-device TF variables."""

    name: str
    type: TensorType
    layout: ValueLayout
    variables: list[Any] = field(default_factory=list)  # tf.Variable per device
    initial: list[Any] = field(default_factory=list)  # each one's initial value; feed it to start elsewhere
    values: list[Any] = field(default_factory=list)  # a read of each, for fetching after a run
    written: bool = False


class DeviceContext:
    """What a rule sees of its device (`op.state`): the device number and the
    variables' current values there. A slice is read once, at first use; writes
    replace the current value and are stored at the end of the function."""

    def __init__(self, device: int, variables: dict[str, VariableSlices]):
        self.device = device
        self._variables = variables
        self.values: dict[str, tf.Tensor] = {}
        self.reads: dict[str, list[Any]] = {}

    def read(self, name: str) -> tf.Tensor:
        if name not in self.values:
            variable = self._variables[name].variables[self.device]
            value = tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype)
            self.reads.setdefault(name, []).append(value.op)
            self.values[name] = value
        return self.values[name]

    def write(self, name: str, value: tf.Tensor) -> None:
        self.values[name] = value
        self._variables[name].written = True


def _check_node_name(name: str, what: str) -> None:
    if not _NODE_NAME.match(name):
        raise MeshirError(f"the tf backend names a graph node after {what} '{name}', which is not a valid "
                          f"TensorFlow node name (letters, digits, '.', '_', '-', not starting with '_' or '-')")


def global_type(local: TensorType, layout: ValueLayout, mesh: Mesh) -> TensorType:
    """The global type of a value whose per-device slice is `local`."""
    return local.with_dims(Dim(d.name, d.size * layout.split_count(mesh, i)) for i, d in enumerate(local.dims))


class GraphBuilder:
    """Emits one function into a fresh tf.Graph; `build()` returns the graph's ports."""

    def __init__(self, module: Module, function: Function, device_kind: str, collectives: str, timeout: float):
        install()
        self.module, self.function = module, function
        # A global function runs as written, on one device: a mesh without axes.
        self.mesh = (module.mesh_of(function) if function.is_local else None) or Mesh("host", ())
        self.device_kind = device_kind
        # One device needs no placement: a plain graph that runs anywhere.
        devices = [device_name(device_kind, d) for d in self.mesh.devices()] if self.mesh.size > 1 else None
        self.graph = tf.Graph()
        # Inputs are fed and cut into blocks on the host, placed there explicitly.
        self.host = HOST if devices is not None else None
        self.pool = ConstantPool(self.graph, devices, self.host)
        self.comm = Communicator(self.mesh, devices, self.pool, collectives, timeout)
        self.owners: dict[str, str] = {}  # top-level name scope -> what it computes, for diagnostics
        self.ops_by_scope: dict[str, Operation] = {}

    # --- layouts -----------------------------------------------------------------

    def interface_layout(self, local: TensorType) -> ValueLayout:
        if not self.function.is_local:
            return ValueLayout(((),) * local.rank)
        rules = self.module.layout_of(self.function) or REPLICATED
        return without_trivial_axes(rules.layout_of(local), self.mesh)

    # --- the graph -----------------------------------------------------------------

    def build(self) -> tuple[list[Port], list[Port], list[VariableSlices]]:
        with self.graph.as_default(), constant_pool(self.pool):
            with self.graph.device(self.host):
                inputs, placeholders = self._placeholders()
            output_nodes = self._reserve_output_names([a.name for a in self.function.args])
            variables = self._variables()
            contexts = [DeviceContext(d, variables) for d in self.mesh.devices()]
            with self.graph.device(self.host):
                env: dict[Value, list[tf.Tensor]] = {
                    arg: self._split(arg.name, placeholders[arg.name], port.layout)
                    for arg, port in zip(self.function.args, inputs)
                }
            for op in self.function.ops:
                env.update(zip(op.results, self._emit(op, [env[v] for v in op.operands], contexts)))
            writes = self._store(variables, contexts)
            with self.graph.device(self.host):  # the outputs are fetched there
                outputs = self._outputs(output_nodes, env, [*writes, *self.comm.launched])
                _named_group([v.initializer for slices in variables.values() for v in slices.variables], INIT)
            self.owners[INIT] = "the variables' initialization"
            self._check_kernels()
        return inputs, outputs, list(variables.values())

    def _placeholders(self) -> tuple[list[Port], dict[str, tf.Tensor]]:
        ports, placeholders = [], {}
        for arg in self.function.args:
            _check_node_name(arg.name, "argument")
            if arg.name in (INIT, UPDATE):
                raise MeshirError(f"func @{self.function.name}: the tf backend names its ops '{INIT}' and '{UPDATE}'; "
                                  f"rename argument %{arg.name}", self.function.loc)
            layout = self.interface_layout(arg.type)
            whole = global_type(arg.type, layout, self.mesh)
            placeholders[arg.name] = tf.compat.v1.placeholder(tf_dtype(whole.dtype), whole.shape, name=arg.name + "/")
            ports.append(Port(arg.name, arg.name + ":0", whole, layout))
            self.owners[arg.name] = f"input '{arg.name}'"
        return ports, placeholders

    def _reserve_output_names(self, taken: Sequence[str]) -> list[str]:
        """Output node names, marked used now so that no op scope takes them."""
        nodes = []
        for name in output_names(self.function):
            _check_node_name(name, "returned value")
            node = name + "_out" if name in taken or name in (INIT, UPDATE) else name
            self.graph.unique_name(node, mark_as_used=True)
            nodes.append(node)
        for name in (INIT, UPDATE, ConstantPool.SCOPE):
            self.graph.unique_name(name, mark_as_used=True)
        return nodes

    def _split(self, name: str, whole: tf.Tensor, layout: ValueLayout) -> list[tf.Tensor]:
        """Each device's block of a global input: one Split per split dimension and
        block, on the host; devices holding the whole input read the placeholder."""
        blocks = self._blocks(whole, layout, f"{name}_blocks", f"the blocks of input '{name}'")
        return [blocks[self._block_key(device, layout)] for device in self.mesh.devices()]

    def _block_key(self, device: int, layout: ValueLayout) -> tuple[int, ...]:
        """Which block of each dimension `device` holds."""
        return tuple(self.mesh.index_in_group(device, axes) for axes in layout.axes)

    def _blocks(self, whole: tf.Tensor, layout: ValueLayout, scope: str, what: str) -> dict[tuple[int, ...], tf.Tensor]:
        counts = [layout.split_count(self.mesh, axis) for axis in range(len(layout.axes))]
        if max(counts, default=1) == 1:
            return {(0,) * len(counts): whole}
        blocks: dict[tuple[int, ...], tf.Tensor] = {(): whole}
        with self.graph.name_scope(scope) as full:
            self.owners[full.rstrip("/")] = what
            for axis, count in enumerate(counts):
                blocks = {key + (i,): part for key, block in blocks.items()
                          for i, part in enumerate(tf.split(block, count, axis=const(axis)) if count > 1 else [block])}
        return blocks

    def _variables(self) -> dict[str, VariableSlices]:
        variables = {}
        with self.graph.name_scope("variables") as scope:
            self.owners[scope.rstrip("/")] = "the variables"
            for name, layout in storage_layouts(self.module, self.function).items():
                variable = self.module.variables[name]
                local = layout.local_type(variable.slice_type, self.mesh)
                slices = VariableSlices(name, variable.slice_type, layout)
                with self.graph.name_scope(name):
                    self.comm.begin_op()
                    for device in self.mesh.devices():
                        offsets, _ = block_offsets(layout, self.mesh, device, local.shape)
                        with self.comm.on(device):
                            # A tensor, not a callable: TF clears the device around a callable initializer.
                            with self.graph.name_scope("initial_value"):
                                initial = initial_slice(variable, local.shape, offsets)
                            tf_variable = tf.Variable(initial, name="slice", trainable=variable.trainable)
                            slices.variables.append(tf_variable)
                            slices.initial.append(initial)
                            slices.values.append(tf.raw_ops.ReadVariableOp(resource=tf_variable.handle, dtype=tf_variable.dtype,
                                                                            name="value"))
                variables[name] = slices
        return variables

    def _scope_name(self, op: Operation) -> str:
        name = op.results[0].name if op.results and op.results[0].name else op.name
        return name if _NODE_NAME.match(name) else f"v{name}"

    def _emit(self, op: Operation, operands: list[list[tf.Tensor]], contexts: list[DeviceContext]) -> list[list[tf.Tensor]]:
        """The per-device tensors of each of `op`'s results."""
        opdef = lookup(op.name)
        rule = opdef.lowerings.get(TARGET)
        if rule is None:
            raise MeshirError(f"{op.name} has no tf rule", op.loc)
        with self.graph.name_scope(self._scope_name(op)) as scope:
            self.ops_by_scope[scope.rstrip("/")] = op
            self.comm.begin_op()
            view = OpView(opdef, op.operand_types, op.attributes, self.module, self.function, op.result_types)
            try:
                if opdef.device_aware:
                    per_result = _as_results(rule(view, *operands, self.comm), len(op.results), self.mesh.size)
                else:
                    per_device = []
                    for device, context in enumerate(contexts):
                        with self.comm.on(device):
                            view.state = context
                            out = rule(view, *(x[device] for x in operands))
                        per_device.append(list(out) if isinstance(out, (tuple, list)) else [out])
                    per_result = [[outs[i] for outs in per_device] for i in range(len(op.results))]
            except MeshirError as exc:
                raise MeshirError(exc.message, exc.loc or op.loc, exc.note) from None
            except Exception as exc:  # a rule that fails on a verified op is a meshir bug
                raise RuntimeFailure(f"{op.name}: the tf rule failed: {type(exc).__name__}: {exc}", op.loc) from exc
        for index, (value, tensors) in enumerate(zip(op.results, per_result)):
            for tensor in tensors:
                _check_result(op, index, tensor, value.type)
        return per_result

    def _store(self, variables: dict[str, VariableSlices], contexts: list[DeviceContext]) -> list[Any]:
        """Write each written variable's final value on each device, after its reads."""
        writes = []
        with self.graph.name_scope("store") as scope:
            self.owners[scope.rstrip("/")] = "the variable writes"
            for name, slices in variables.items():
                if not slices.written:
                    continue
                with self.graph.name_scope(name):
                    self.comm.begin_op()
                    for device, context in enumerate(contexts):
                        with self.comm.on(device), tf.control_dependencies(context.reads.get(name, [])):
                            handle = slices.variables[device].handle
                            writes.append(tf.raw_ops.AssignVariableOp(resource=handle, value=context.values[name]))
        if writes:
            _named_group(writes, UPDATE)
            self.owners[UPDATE] = "the variable writes"
        return writes

    def _outputs(self, nodes: list[str], env: dict[Value, list[tf.Tensor]], effects: list[Any]) -> list[Port]:
        """The global outputs, each after every variable write and TF collective."""
        ports = []
        for node, name, value in zip(nodes, output_names(self.function), self.function.returns):
            layout = self.interface_layout(value.type)
            with self.graph.name_scope(f"{node}_assemble") as scope:
                self.owners[scope.rstrip("/")] = f"output '{name}'"
                whole = self._assemble(env[value], value.type, layout)
            with tf.control_dependencies(effects):
                tensor = tf.identity(whole, name=node + "/")
            self.owners[node] = f"output '{name}'"
            ports.append(Port(name, tensor.name, global_type(value.type, layout, self.mesh), layout))
        return ports

    def _assemble(self, blocks: list[tf.Tensor], local: TensorType, layout: ValueLayout) -> tf.Tensor:
        """The global value from per-device blocks: along each split dimension, last
        first, the blocks of the lowest-numbered devices holding them are joined."""
        parts: dict[tuple[int, ...], tf.Tensor] = {}
        for device in reversed(self.mesh.devices()):  # the lowest device's copy wins
            parts[self._block_key(device, layout)] = blocks[device]
        counts = [layout.split_count(self.mesh, axis) for axis in range(local.rank)]
        for axis in reversed(range(local.rank)):
            if counts[axis] == 1:
                continue
            rows = {key[:axis] for key in parts}
            parts = {row: tf.concat([parts[row + (i,) + (0,) * (local.rank - axis - 1)] for i in range(counts[axis])], const(axis))
                     for row in rows}
            parts = {row + (0,) * (local.rank - axis): value for row, value in parts.items()}
        (whole,) = parts.values()
        return whole

    def _check_kernels(self) -> None:
        """Every node must have a kernel for its device kind and dtypes (kernels.py)."""
        if not kernels.has_kernels(self.device_kind):
            return
        for node in self.graph.as_graph_def().node:
            gap = kernels.missing_kernel(node, self.device_kind)
            # On GPUs the session places soft: a node with only a CPU kernel (int64 index
            # arithmetic) runs on the host, as TF does it.
            if gap is None or (self.device_kind == "GPU" and kernels.missing_kernel(node, "CPU") is None):
                continue
            scope = node.name.split("/")[0]
            op = self.ops_by_scope.get(scope)
            if op is not None:
                dtypes = ", ".join(sorted({str(t.dtype) for t in [*op.operand_types, *op.result_types]}))
                raise MeshirError(
                    f"{op.name} ({dtypes}): TensorFlow {tf.__version__} has no {self.device_kind} kernel for "
                    f"{node.op} with {gap} (node {node.name}), so the tf backend cannot run this op in this dtype",
                    op.loc,
                )
            raise RuntimeFailure(f"the tf backend emitted node {node.name} ({node.op}, {gap}) for "
                                 f"{self.owners.get(scope, scope)}, which has no {self.device_kind} kernel; this is a bug in meshir")


def _named_group(ops: list[Any], name: str) -> None:
    """A NoOp called exactly `name` (reserved earlier) that runs `ops`."""
    with tf.control_dependencies(ops):
        tf.raw_ops.NoOp(name=name + "/")


def _as_results(out: Any, count: int, devices: int) -> list[list[tf.Tensor]]:
    """A device-aware rule returns one per-device list, or one per result."""
    results = [out] if count == 1 else list(out)
    if any(len(r) != devices for r in results):
        raise RuntimeFailure("a collective rule returned the wrong number of per-device tensors; this is a bug in meshir")
    return results


def _check_result(op: Operation, index: int, tensor: tf.Tensor, ttype: TensorType) -> None:
    """A rule's result must have exactly its type's shape and dtype: a mismatch is a
    bug in the rule, reported at emission where the op is."""
    if tuple(tensor.shape) != ttype.shape or tensor.dtype != tf_dtype(ttype.dtype):
        raise RuntimeFailure(
            f"{op.name}: the tf rule returned {tensor.dtype.name} of shape {tuple(tensor.shape)} for result {index}, "
            f"whose type is {ttype}; this is a bug in meshir's tf rule for {op.name}",
            op.loc,
        )
