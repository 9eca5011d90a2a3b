"""Text and artifacts from a compiled program (DESIGN section 6).

- `hlo_text`: HLO after XLA's SPMD partitioning, so collectives are visible.
- `stablehlo_text`: the StableHLO module JAX lowers to (before partitioning).
- `serialize_export`: a `jax.export` artifact that plain JAX loads with
  `jax.export.deserialize(data).call(inputs, variables)`, no meshir needed; the
  calling convention is the compiled program's (dicts keyed by name).
"""
from __future__ import annotations

import os
from typing import Callable

import jax

from meshir.diagnostics import FlagError

from .compile import CompiledProgram, x64


def hlo_text(program: CompiledProgram) -> str:
    return program.lower().compile().as_text()


def stablehlo_text(program: CompiledProgram) -> str:
    return program.lower().as_text()


def serialize_export(program: CompiledProgram) -> bytes:
    with x64():
        exported = jax.export.export(program.jitted)(*program.specs())
        return bytes(exported.serialize())


# Output file suffix -> what to write there (meshc -o).
WRITERS: dict[str, Callable[[CompiledProgram], str | bytes]] = {
    ".hlo": hlo_text,
    ".mlir": stablehlo_text,
    ".jaxexport": serialize_export,
}


def artifact(program: CompiledProgram, path: str) -> str | bytes:
    """What `meshc -o path` writes for `program`, chosen by the file's suffix."""
    suffix = os.path.splitext(path)[1]
    if suffix not in WRITERS:
        raise FlagError(f"-o: the xla backend writes {', '.join(WRITERS)} files, not '{suffix or path}'")
    return WRITERS[suffix](program)
