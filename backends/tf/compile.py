"""Compile a meshir function into a TensorFlow graph, and run it in a v1 Session.

    program = compile_program(module, "loss")      # local (post-spmd) or global
    outputs, variables = program.run(inputs)        # global numpy arrays by name

A local function (`attributes {spmd = @m}`) on a mesh of N > 1 devices becomes
a graph placed on N devices of `device_kind` (emit.py); a global function, or a
local one on a mesh of one device, becomes a plain, unplaced graph. `run`
opens a Session with N CPU devices, runs `init` (feeding the initial value of
any variable given), then the outputs, and returns the outputs and every
variable the function uses, as global arrays.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from meshir.diagnostics import MeshirError, RuntimeFailure
from meshir.interpreter import shard, to_argument, unshard
from meshir.ir import Function, Module
from meshir.mesh import Mesh

from .collectives import DEFAULT_TIMEOUT_SECONDS
from .devices import DEVICE_KINDS, session_config
from .emit import INIT, UPDATE, GraphBuilder, Port, VariableSlices
from .rules_common import tf


@dataclass
class TFProgram:
    """A meshir function as a tf.Graph with a global interface (emit.py)."""

    module: Module
    function: Function
    mesh: Mesh  # the function's mesh; a mesh without axes for a global function
    device_kind: str
    graph: Any
    inputs: list[Port]
    outputs: list[Port]
    variables: list[VariableSlices]

    @property
    def devices(self) -> int:
        return self.mesh.size

    @property
    def update(self) -> str | None:
        """The op that runs the function's variable writes, if it writes any."""
        return UPDATE if any(v.written for v in self.variables) else None

    def graph_def(self) -> Any:
        return self.graph.as_graph_def()

    def session(self) -> Any:
        """A v1 Session over this program's graph with the devices it is placed on."""
        return tf.compat.v1.Session(graph=self.graph, config=session_config(self.devices, self.device_kind))

    def run(self, inputs: Mapping[str, Any], variables: Mapping[str, Any] | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Global numpy arrays in and out. Variables start from their initializers, or
        from `variables` (global values by name); the second result holds every
        variable given or used, after the run (a given one the function does not
        use passes through), as the xla backend's `run`."""
        feed = {port.tensor: value for port, value in zip(self.inputs, self._bind(inputs))}
        given = self._given_variables(variables or {})
        init_feed = self._initial_feed(given)
        try:
            with self.session() as session:
                session.run(INIT, init_feed)
                outputs = session.run([p.tensor for p in self.outputs] + ([self.update] if self.update else []), feed)
                slices = session.run([v.values for v in self.variables])
        except tf.errors.OpError as exc:
            raise RuntimeFailure(f"func @{self.function.name} failed in TensorFlow: {error_summary(exc)}") from None
        state = {**given, **{v.name: self._unshard(v, s) for v, s in zip(self.variables, slices)}}
        return {p.name: np.asarray(value) for p, value in zip(self.outputs, outputs)}, state

    def _bind(self, given: Mapping[str, Any]) -> list[np.ndarray]:
        names = [p.name for p in self.inputs]
        for name in given:
            if name not in names:
                raise MeshirError(f"func @{self.function.name} has no argument '{name}' (arguments: {', '.join(names) or 'none'})")
        bound = []
        for port in self.inputs:
            if port.name not in given:
                raise MeshirError(f"func @{self.function.name}: missing input '{port.name}' of type {port.type}")
            bound.append(to_argument(given[port.name], port.type, f"func @{self.function.name} input '{port.name}'"))
        return bound

    def _given_variables(self, given: Mapping[str, Any]) -> dict[str, np.ndarray]:
        checked = {}
        for name, value in given.items():
            if name not in self.module.variables:
                known = ", ".join("@" + v for v in self.module.variables) or "none"
                raise MeshirError(f"variables name @{name}, which the module does not declare (variables: {known})")
            checked[name] = to_argument(value, self.module.variables[name].type, f"variable @{name}")
        return checked

    def _initial_feed(self, given: Mapping[str, np.ndarray]) -> dict[Any, np.ndarray]:
        """Feeds overriding the initial value of each given, used variable's slices."""
        feed = {}
        for slices in self.variables:
            if slices.name in given:
                for initial, part in zip(slices.initial, shard(given[slices.name], slices.layout, self.mesh)):
                    feed[initial] = part
        return feed

    def _unshard(self, slices: VariableSlices, values: list[np.ndarray]) -> np.ndarray:
        return unshard([np.asarray(v) for v in values], slices.layout, self.mesh)


def error_summary(exc: Any) -> str:
    """One line from a TF OpError: its kind, the node, and the first reason, without
    the Python traceback and the tallies TF adds ("Graph execution error: ...
    Detected at node ... 2 root error(s) found. (0) DEADLINE_EXCEEDED: ...")."""
    noise = re.compile(r"^(Graph execution error|Detected at node|Node:|Original stack trace|File |\[\[|The error could|"
                       r"\d+ root error|\d+ successful operations|\d+ derived errors)")
    # "(0) DEADLINE_EXCEEDED: Collective ops is aborted by: <the root cause>" -> the root cause
    lines = [re.sub(r"^(\(\d+\) [A-Z_]+: )?(.*? is aborted by: )*", "", line.strip()) for line in (exc.message or "").splitlines()]
    reasons = [line for line in lines if line and not noise.match(line)]
    node = f" at node {exc.node_def.name}" if exc.node_def is not None and exc.node_def.name else ""
    return f"{type(exc).__name__}{node}: {reasons[0] if reasons else 'no reason given'}"


def compile_program(module: Module, function_name: str | None = None, *, device_kind: str = "CPU",
                    collectives: str = "explicit", timeout: float = DEFAULT_TIMEOUT_SECONDS) -> TFProgram:
    """`function_name` (default: the first function) as a TF graph. `collectives`
    picks "explicit" transfers (the default) or TF's "v2" collective ops, whose
    every call times out after `timeout` seconds (collectives.py)."""
    if device_kind not in DEVICE_KINDS:
        raise MeshirError(f"unknown device kind '{device_kind}' (kinds: {', '.join(DEVICE_KINDS)})")
    function = module.function(function_name)
    builder = GraphBuilder(module, function, device_kind, collectives, timeout)
    inputs, outputs, variables = builder.build()
    return TFProgram(module, function, builder.mesh, device_kind, builder.graph, inputs, outputs, variables)
