"""The TensorFlow backend (DESIGN section 6): a local program becomes a tf.Graph
with one copy of each op per device, placed with `tf.device`, its collectives
as TensorFlow ops, and a global interface (placeholders and outputs named after
the function's arguments and returned values).

    from meshir.backends.tf import artifact, compile_program, write_savedmodel
    program = compile_program(module, "loss")     # after layout,spmd
    outputs, variables = program.run(inputs)      # in a Session with N CPU devices
    data = artifact(program, "model.pb")          # GraphDef bytes (.pbtxt: text)
    write_savedmodel(program, "model.savedmodel")

Every name imports TensorFlow on first use (~4.5 s), not this package.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Public name -> the submodule that defines it.
_LAZY = {
    "TFProgram": "compile",
    "compile_program": "compile",
    "COLLECTIVE_MODES": "collectives",
    "artifact": "export",
    "write_savedmodel": "export",
    "write_tensorboard": "export",
    "SUFFIXES": "export",
    "install": "rules",
    "session_config": "devices",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
