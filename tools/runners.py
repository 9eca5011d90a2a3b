"""Runners: a backend holding a module's variables between calls, for training.

    runner = make_runner("xla", module, args)
    outputs = runner("loss", {"x": ..., "y": ...})   # global arrays in and out
    values = runner.state()                          # every variable's global value
    runner.load_state(values)                        # replace some or all of them

Each function is compiled once, at its first call; the variables stay with the
backend between calls and are shared by all functions of the module.
"""
from __future__ import annotations

import argparse
from typing import Mapping, Protocol

import numpy as np

from meshir.diagnostics import FlagError
from meshir.interpreter import Interpreter, to_argument
from meshir.ir import Module

from .compile import compile_xla


class Runner(Protocol):
    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, values: Mapping[str, np.ndarray]) -> None: ...


def _checked_state(module: Module, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    unknown = sorted(set(values) - set(module.variables))
    if unknown:
        raise FlagError(f"state names @{unknown[0]}, which the module does not declare")
    return {name: to_argument(value, module.variables[name].type, f"variable @{name}") for name, value in values.items()}


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
    """Functions compiled through XLA; variables kept as global arrays between calls."""

    def __init__(self, module: Module, emit_mode: str):
        self.module = module
        self.emit_mode = emit_mode
        self._state = dict(Interpreter(module).state)
        self._programs: dict[str, object] = {}

    def __call__(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in self._programs:
            self._programs[name] = compile_xla(self.module, name, self.emit_mode)
        program = self._programs[name]
        outputs, written = program(inputs, {p.name: self._state[p.name] for p in program.variables})
        self._state.update(written)
        return {k: np.asarray(v) for k, v in outputs.items()}

    def state(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self._state.items()}

    def load_state(self, values: Mapping[str, np.ndarray]) -> None:
        self._state.update(_checked_state(self.module, values))


def make_runner(backend: str, module: Module, args: argparse.Namespace) -> Runner:
    if backend == "reference":
        return ReferenceRunner(module)
    if backend == "xla":
        return XlaRunner(module, args.emit_mode)
    raise FlagError(f"--train: training runs on the reference and xla backends, not '{backend}'")
