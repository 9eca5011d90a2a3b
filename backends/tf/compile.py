"""Compile a meshir function into a TensorFlow graph, and run it in a v1 Session.

    program = compile_program(module, "loss")      # local (post-spmd) or global
    outputs, variables = program.run(inputs)        # global numpy arrays by name

    with program.open() as session:                 # one Session, kept between calls
        session.load(variables)                     # optional: global values by name
        outputs = session(inputs)                   # runs `update` too, when there is one
        variables = session.variables()

A local function (`attributes {spmd = @m}`) on a mesh of N > 1 devices becomes
a graph placed on N devices of `device_kind` (emit.py); a global function, or a
local one on a mesh of one device, becomes a plain, unplaced graph. A TFSession
holds a Session with N CPU devices in which `init` ran once (feeding the initial
value of any variable given), so variable writes persist from call to call, as
training needs. `run` is one call in a fresh TFSession: it returns the outputs
and every variable the function uses, as global arrays.
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

    def open(self, variables: Mapping[str, Any] | None = None) -> TFSession:
        """A Session over this program, its variables initialised once, from their
        initializers or from `variables` (global values by name)."""
        return TFSession(self, variables)

    def run(self, inputs: Mapping[str, Any], variables: Mapping[str, Any] | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Global numpy arrays in and out. Variables start from their initializers, or
        from `variables` (global values by name); the second result holds every
        variable given or used, after the run (a given one the function does not
        use passes through), as the xla backend's `run`."""
        given = self._given_variables(variables or {})
        with self.open(given) as session:
            outputs = session(inputs)
            state = session.variables()
        return outputs, {**given, **state}

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


class TFSession:
    """One open v1 Session over a TFProgram's graph. `init` runs once, at opening;
    each call runs the outputs and the variable writes, so the variables carry
    over from call to call. Close it (or use it as a context manager) to free
    the Session."""

    def __init__(self, program: TFProgram, variables: Mapping[str, Any] | None = None):
        self.program = program
        self._fetches = [p.tensor for p in program.outputs] + ([program.update] if program.update else [])
        self._session = program.session()
        try:
            self._run(INIT, program._initial_feed(program._given_variables(variables or {})))
        except BaseException:
            self._session.close()
            raise

    def __enter__(self) -> TFSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def load(self, variables: Mapping[str, Any]) -> None:
        """Replace the values of the given variables (global arrays by name); the
        function's other variables keep theirs, and a variable it does not use is
        ignored."""
        given = self.program._given_variables(variables)
        initializers = [v.initializer for slices in self.program.variables if slices.name in given for v in slices.variables]
        if initializers:
            self._run(initializers, self.program._initial_feed(given))

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Global inputs by argument name -> global outputs by returned name."""
        program = self.program
        feed = {port.tensor: value for port, value in zip(program.inputs, program._bind(inputs))}
        values = self._run(self._fetches, feed)
        return {p.name: np.asarray(value) for p, value in zip(program.outputs, values)}

    def variables(self) -> dict[str, np.ndarray]:
        """The current global value of every variable the function uses."""
        slices = self._run([v.values for v in self.program.variables])
        return {v.name: self.program._unshard(v, s) for v, s in zip(self.program.variables, slices)}

    def _run(self, fetches: Any, feed: Mapping[Any, Any] | None = None) -> Any:
        try:
            return self._session.run(fetches, feed)
        except tf.errors.OpError as exc:
            raise RuntimeFailure(f"func @{self.program.function.name} failed in TensorFlow: {error_summary(exc)}") from None


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
