"""Runners: a backend holding a module's variables between calls, for training.

    runner = make_runner("xla", module, args)
    outputs = runner("loss", {"x": ..., "y": ...})   # global arrays in and out
    values = runner.state()                          # every variable's global value
    runner.load_state(values)                        # replace some or all of them

Each function is compiled once, at its first call; the variables stay with the
backend between calls and are shared by all functions of the module. On the tf
backend each function's graph has its own variables in its own Session, so the
values move from one Session to the next when the function called changes.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Mapping, Protocol

import numpy as np

from meshir.diagnostics import FlagError
from meshir.interpreter import Interpreter, to_argument
from meshir.ir import Module

from .compile import compile_tf, compile_xla
from .distributed import global_arrays, host_value

if TYPE_CHECKING:  # importing TensorFlow costs seconds; only the tf backend pays it
    from meshir.backends.tf.compile import TFSession


class Runner(Protocol):
    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, values: Mapping[str, np.ndarray]) -> None: ...


def _checked_state(module: Module, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    unknown = sorted(set(values) - set(module.variables))
    if unknown:
        raise FlagError(f"state names @{unknown[0]}, which the module does not declare")
    return {name: to_argument(value, module.variables[name].slice_type, f"variable @{name}") for name, value in values.items()}


class ReferenceRunner:
    """The numpy interpreter (global programs, or local ones simulated)."""

    def __init__(self, module: Module):
        self.module = module
        self.interpreter = Interpreter(module)

    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.interpreter.run(name, inputs)

    def state(self) -> dict[str, np.ndarray]:
        return {name: np.array(value) for name, value in self.interpreter.state.items()}

    def load_state(self, values: Mapping[str, np.ndarray]) -> None:
        self.interpreter.state.update(_checked_state(self.module, values))


class XlaRunner:
    """Functions compiled through XLA; variables kept as global arrays between calls,
    each step updating the written ones in place (donated buffers).

    In a multi-process run (`multi_process`) each process holds only its own devices'
    shards: inputs and variables become global arrays placed shard by shard, and
    outputs and state are gathered whole on every process (tools/distributed.py)."""

    def __init__(self, module: Module, emit_mode: str, multi_process: bool = False):
        self.module = module
        self.emit_mode = emit_mode
        self.multi_process = multi_process
        self._state = dict(Interpreter(module).state)
        self._programs: dict[str, object] = {}

    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in self._programs:
            self._programs[name] = compile_xla(self.module, name, self.emit_mode)
        program = self._programs[name]
        variables = {p.name: self._state[p.name] for p in program.variables}
        hosted = {k: v for k, v in variables.items() if not hasattr(v, "sharding")}
        if hosted and not self.multi_process:
            # On their devices once: a host array's call would compile the program again.
            variables.update(program.placed(hosted))
            self._state.update(variables)
        if self.multi_process:
            inputs = global_arrays(program.inputs, inputs, program.device_mesh)
            variables = global_arrays(program.variables, variables, program.device_mesh)
            self._state.update(variables)  # placed once, not at every call
        # The runner alone holds the variables, so their buffers are donated to the new values.
        outputs, written = program.step(inputs, variables)
        self._state.update(written)
        return {k: host_value(v) for k, v in outputs.items()}

    def state(self) -> dict[str, np.ndarray]:
        # Copies: a view of a device buffer would change under the next, donating step.
        return {name: np.array(host_value(value)) for name, value in self._state.items()}

    def load_state(self, values: Mapping[str, np.ndarray]) -> None:
        self._state.update(_checked_state(self.module, values))


class TFRunner:
    """Functions compiled to TensorFlow graphs, each kept open in its own Session.

    The Session of the function that ran last holds the latest values of its
    variables; `_state` holds every variable's value as of the last switch."""

    def __init__(self, module: Module, args: argparse.Namespace):
        self.module = module
        self.args = args
        self._state = dict(Interpreter(module).state)
        self._sessions: dict[str, TFSession] = {}
        self._current: str | None = None  # the function whose Session holds the latest values

    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name != self._current:
            self._fetch()
            if name in self._sessions:
                self._sessions[name].load(self._state)
            else:
                self._sessions[name] = compile_tf(self.module, name, self.args).open(self._state)
            self._current = name
        return self._sessions[name](inputs)

    def _fetch(self) -> None:
        if self._current is not None:
            self._state.update(self._sessions[self._current].variables())

    def state(self) -> dict[str, np.ndarray]:
        self._fetch()
        return {name: np.array(value) for name, value in self._state.items()}

    def load_state(self, values: Mapping[str, np.ndarray]) -> None:
        self._fetch()
        self._state.update(_checked_state(self.module, values))
        self._current = None  # the next call loads the new values into its Session


def make_runner(backend: str, module: Module, args: argparse.Namespace, multi_process: bool = False) -> Runner:
    if backend == "reference":
        return ReferenceRunner(module)
    if backend == "xla":
        return XlaRunner(module, args.emit_mode, multi_process)
    if backend == "tf":
        return TFRunner(module, args)
    raise FlagError(f"--train: training runs on the reference, xla and tf backends, not '{backend}'")
