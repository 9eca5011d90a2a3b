"""meshc: compile a `.mir` module for a mesh of devices and write the program."""
from __future__ import annotations

import argparse
import json
import os
import sys

from meshir.diagnostics import FlagError

from .common import EXIT_OK, atomic_write, load_module, run_main
from .compile import add_program_flags, compile_tf, compile_xla, pipeline_text, prepare

XLA_SUFFIXES = (".hlo", ".mlir", ".jaxexport")
TF_SUFFIXES = (".pb", ".pbtxt", ".savedmodel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshc", description="Compile a .mir module into a program for a mesh of devices.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("-o", "--output",
                        help="OUT.hlo (HLO after XLA's partitioning), OUT.mlir (StableHLO), OUT.jaxexport (serialized "
                             "jax.export), OUT.pb / OUT.pbtxt (TensorFlow GraphDef) or DIR.savedmodel (TF SavedModel)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="with a TensorFlow output, also write the graph for TensorBoard's graph view to DIR")
    parser.add_argument("--print-pipeline", action="store_true",
                        help="print the pass pipeline these flags run (the standard one unless --passes) and exit")
    parser.add_argument("--report", action="store_true",
                        help="print the entry's per-device estimate (memory by kind, FLOPs, bytes per mesh axis) and, "
                             "for an XLA output, XLA's own memory figures beside it")
    parser.add_argument("--report-json", metavar="FILE", help="write that report as JSON to FILE")
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


def xla_memory(program) -> dict[str, int]:
    """XLA's memory figures for a compiled program as meshir-run runs it (the
    variables it writes donated): argument, output, alias and temp bytes of one
    device, and `peak`, the bytes live at once (argument + output + temp - alias)."""
    from meshir.backends.xla.compile import x64

    with x64():
        stats = program.lower_step().compile().memory_analysis()
    figures = {kind: getattr(stats, f"{kind}_size_in_bytes") for kind in ("argument", "output", "alias", "temp")}
    figures["peak"] = figures["argument"] + figures["output"] + figures["temp"] - figures["alias"]
    return figures


def report(module, entry: str, xla: dict[str, int] | None, args: argparse.Namespace) -> None:
    """--report on standard output, --report-json to its file."""
    from meshir.passes.estimate import estimate_function, format_bytes, format_report

    estimate = estimate_function(module, module.functions[entry])
    data = estimate.as_json()
    text = format_report([estimate])
    if xla is not None:
        data["xla_memory_bytes"] = xla
        data["estimate_over_xla_peak"] = estimate.memory.peak / xla["peak"] if xla["peak"] else None
        text += (f"XLA memory_analysis: peak {format_bytes(xla['peak'])} (arguments {format_bytes(xla['argument'])}, "
                 f"temporaries {format_bytes(xla['temp'])}); estimate / XLA = {data['estimate_over_xla_peak']:.2f}\n")
    if args.report:
        sys.stdout.write(text)
    if args.report_json:
        atomic_write(args.report_json, json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        reporting = args.report or args.report_json is not None
        if args.report_json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.report_json))):
            raise FlagError(f"--report-json: folder '{os.path.dirname(os.path.abspath(args.report_json))}' does not exist")
        if args.output is None and not (args.print_pipeline or reporting):
            raise FlagError("-o OUT is required (OUT.hlo, .mlir, .jaxexport, .pb, .pbtxt or .savedmodel), "
                            "unless only --report or --report-json is wanted")
        output = (args.output or "out.hlo").rstrip("/")
        suffix = os.path.splitext(output)[1]
        if suffix not in XLA_SUFFIXES + TF_SUFFIXES:
            raise FlagError(f"-o: unknown output kind '{suffix or output}' (expected {', '.join(XLA_SUFFIXES + TF_SUFFIXES)})")
        if args.tensorboard and suffix not in TF_SUFFIXES:
            raise FlagError(f"--tensorboard shows the TensorFlow graph: use it with -o {', '.join(TF_SUFFIXES)}")
        module = load_module(args.input, args.mesh, args.layout)
        args.passes = pipeline_text(args, module, "tf" if suffix in TF_SUFFIXES else "xla")
        if args.print_pipeline:
            print(args.passes)
            return EXIT_OK
        module, entry = prepare(module, args)
        if args.output is None:
            report(module, entry, None, args)
            return EXIT_OK
        if suffix in TF_SUFFIXES:
            write_tf(compile_tf(module, entry, args), output, args.tensorboard)
            if reporting:
                report(module, entry, None, args)
            return EXIT_OK
        from meshir.backends.xla import artifact

        program = compile_xla(module, entry, args.emit_mode)
        atomic_write(output, artifact(program, output))
        if reporting:
            report(module, entry, xla_memory(program), args)
        return EXIT_OK

    return run_main("meshc", body)


if __name__ == "__main__":
    sys.exit(main())
