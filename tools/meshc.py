"""meshc: compile a `.mir` module for a mesh of devices and write the program."""
from __future__ import annotations

import argparse
import os
import sys

from meshir.diagnostics import FlagError

from .common import EXIT_OK, atomic_write, internal_error, load_module, run_main
from .compile import add_program_flags, compile_xla, prepare

XLA_SUFFIXES = (".hlo", ".mlir", ".jaxexport")
TF_SUFFIXES = (".pb", ".pbtxt", ".savedmodel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshc", description="Compile a .mir module into a program for a mesh of devices.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("-o", "--output", required=True,
                        help="OUT.hlo (HLO after XLA's partitioning), OUT.mlir (StableHLO) or OUT.jaxexport (serialized jax.export)")
    add_program_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        suffix = os.path.splitext(args.output)[1]
        if suffix in TF_SUFFIXES:
            raise FlagError(f"-o: TensorFlow output ({suffix}) needs the tf backend, which is not part of this release; "
                            f"write one of {', '.join(XLA_SUFFIXES)}")
        if suffix not in XLA_SUFFIXES:
            raise FlagError(f"-o: unknown output kind '{suffix or args.output}' (expected {', '.join(XLA_SUFFIXES)})")
        module, entry = prepare(load_module(args.input, args.mesh, args.layout), args)
        from meshir.backends.xla import artifact

        atomic_write(args.output, artifact(compile_xla(module, entry, args.emit_mode), args.output))
        return EXIT_OK

    try:
        return run_main(body)
    except Exception as exc:  # noqa: BLE001 - anything else is a meshir bug
        return internal_error("meshc", exc)


if __name__ == "__main__":
    sys.exit(main())
