"""meshir-run: run a function of a `.mir` module on a backend."""
from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from meshir.diagnostics import FlagError

from .common import EXIT_OK, atomic_write, internal_error, load_module, run_main
from .compile import add_program_flags, compile_xla, prepare

BACKENDS = ("reference", "xla")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshir-run", description="Run a function of a .mir module and print its outputs.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("--backend", default="reference", help=f"where to run: {', '.join(BACKENDS)} (default reference)")
    parser.add_argument("--inputs", help="an .npz file of input arrays keyed by argument name")
    parser.add_argument("--outputs", help="write the outputs to this .npz file, keyed by returned value name")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs drawn when --inputs is not given (default 0)")
    parser.add_argument("--check", action="store_true", help="also run the reference and print the largest difference")
    add_program_flags(parser)
    return parser


def load_inputs(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FlagError(f"--inputs: no such file '{path}'") from None
    except (OSError, ValueError) as exc:
        raise FlagError(f"--inputs: '{path}' is not a readable .npz file ({exc})") from None


def format_output(name: str, array: np.ndarray, type_text: str) -> str:
    body = np.array2string(np.asarray(array), threshold=20, edgeitems=3, precision=6)
    joiner = "\n  " if "\n" in body else " "
    return f"%{name} : {type_text} ={joiner}{body.replace(chr(10), chr(10) + '  ')}"


def largest_difference(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The largest absolute difference over all outputs; NaN where only one side is NaN."""
    worst = 0.0
    for name, want in expected.items():
        got = np.asarray(outputs[name], np.float64)
        want = np.asarray(want, np.float64)
        both_nan = np.isnan(got) & np.isnan(want)
        diff = np.where(both_nan, 0.0, np.abs(got - want))
        if np.isnan(diff).any():
            return float("nan")
        worst = max(worst, float(np.max(diff, initial=0.0)))
    return worst


def save_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    atomic_write(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from meshir.interpreter import Interpreter, random_inputs

        if args.backend not in BACKENDS:
            raise FlagError(f"--backend: unknown backend '{args.backend}' (backends: {', '.join(BACKENDS)})")
        module = load_module(args.input, args.mesh, args.layout)
        function = module.function(args.entry)
        types = [v.type for v in function.returns]
        inputs = load_inputs(args.inputs) if args.inputs else random_inputs(function, args.seed)
        reference = Interpreter(module) if args.backend == "reference" or args.check else None
        expected = reference.run(function.name, inputs) if reference is not None else None
        if args.backend == "reference":
            outputs = expected
        else:
            module, entry = prepare(load_module(args.input, args.mesh, args.layout), args)
            outputs, _ = compile_xla(module, entry, args.emit_mode).run(inputs)
        for (name, array), ttype in zip(outputs.items(), types):
            print(format_output(name, array, str(ttype)))
        if args.check:
            print(f"check: largest |{args.backend} - reference| = {largest_difference(outputs, expected):.3g}")
        if args.outputs:
            save_outputs(args.outputs, outputs)
        return EXIT_OK

    try:
        return run_main(body)
    except Exception as exc:  # noqa: BLE001 - anything else is a meshir bug
        return internal_error("meshir-run", exc)


if __name__ == "__main__":
    sys.exit(main())
