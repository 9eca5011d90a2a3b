"""meshc: compile a `.mir` module for a mesh of devices and write the program."""
from __future__ import annotations

import argparse
import os
import sys

from meshir.diagnostics import FlagError

from .common import EXIT_OK, atomic_write, internal_error, load_module, run_main
from .compile import add_program_flags, compile_tf, compile_xla, prepare
from .train import train_pipeline

XLA_SUFFIXES = (".hlo", ".mlir", ".jaxexport")
TF_SUFFIXES = (".pb", ".pbtxt", ".savedmodel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshc", description="Compile a .mir module into a program for a mesh of devices.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("-o", "--output", required=True,
                        help="OUT.hlo (HLO after XLA's partitioning), OUT.mlir (StableHLO), OUT.jaxexport (serialized "
                             "jax.export), OUT.pb / OUT.pbtxt (TensorFlow GraphDef) or DIR.savedmodel (TF SavedModel)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="with a TensorFlow output, also write the graph for TensorBoard's graph view to DIR")
    add_program_flags(parser)
    training = parser.add_argument_group("training")
    training.add_argument("--train", action="store_true",
                          help="emit the entry's whole train step: forward, backward and the optimizer update of its variables")
    training.add_argument("--optimizer", default="adam", help="with --train: sgd, momentum, adam or adafactor (default adam)")
    training.add_argument("--lr", type=float, default=1e-3, help="with --train: learning rate (default 1e-3)")
    return parser


def write_tf(program, output: str, tensorboard: str | None) -> None:
    from meshir.backends.tf import artifact, write_savedmodel, write_tensorboard

    if output.endswith(".savedmodel"):
        write_savedmodel(program, output)
    else:
        atomic_write(output, artifact(program, output))
    if tensorboard:
        write_tensorboard(program, tensorboard)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        output = args.output.rstrip("/")
        suffix = os.path.splitext(output)[1]
        if suffix not in XLA_SUFFIXES + TF_SUFFIXES:
            raise FlagError(f"-o: unknown output kind '{suffix or output}' (expected {', '.join(XLA_SUFFIXES + TF_SUFFIXES)})")
        if args.tensorboard and suffix not in TF_SUFFIXES:
            raise FlagError(f"--tensorboard shows the TensorFlow graph: use it with -o {', '.join(TF_SUFFIXES)}")
        module = load_module(args.input, args.mesh, args.layout)
        if args.train and args.passes is None:
            args.passes = train_pipeline(module.function(args.entry).name, args.optimizer, args.lr, partition=True)
        module, entry = prepare(module, args)
        if suffix in TF_SUFFIXES:
            write_tf(compile_tf(module, entry, args), output, args.tensorboard)
            return EXIT_OK
        from meshir.backends.xla import artifact

        atomic_write(output, artifact(compile_xla(module, entry, args.emit_mode), output))
        return EXIT_OK

    try:
        return run_main(body)
    except Exception as exc:  # noqa: BLE001 - anything else is a meshir bug
        return internal_error("meshc", exc)


if __name__ == "__main__":
    sys.exit(main())
