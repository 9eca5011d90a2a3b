"""The XLA backend, through JAX (DESIGN section 6).

    from meshir.backends.xla import setup_cpu_devices
    setup_cpu_devices(8)                      # before JAX starts
    from meshir.backends.xla import compile_local, hlo_text
    program = compile_local(module, "step")   # a local (post-spmd) function
    outputs, variables = program.run(inputs, variables)

`devices` is importable without JAX; every other name imports JAX on first use,
so that importing this package leaves the device count open.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .devices import jax_mesh, setup_cpu_devices

# Public name -> the submodule that defines it.
_LAZY = {
    "CompiledProgram": "compile",
    "compile_local": "compile",
    "compile_global": "compile",
    "compile_global_gspmd": "compile",
    "x64": "compile",
    "hlo_text": "emit",
    "stablehlo_text": "emit",
    "serialize_export": "emit",
    "artifact": "emit",
    "install": "rules",
    "initial_values": "initializers",
}

__all__ = ["jax_mesh", "setup_cpu_devices", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
