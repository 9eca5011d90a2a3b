"""meshir-run: run a function of a `.mir` module on a backend."""
from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from meshir.diagnostics import FlagError

from .common import EXIT_OK, EXIT_RUNTIME, atomic_write, internal_error, load_module, run_main
from .compile import add_program_flags, compile_tf, compile_xla, pipeline_text, prepare
from .runners import make_runner
from .train import DEFAULT_CHECKPOINT_EVERY, train_loop

BACKENDS = ("reference", "xla", "tf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshir-run", description="Run a function of a .mir module and print its outputs.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("--backend", default="reference", help=f"where to run: {', '.join(BACKENDS)} (default reference)")
    parser.add_argument("--inputs", help="an .npz file of input arrays keyed by argument name")
    parser.add_argument("--outputs", help="write the outputs to this .npz file, keyed by returned value name")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs drawn when --inputs is not given (default 0)")
    parser.add_argument("--check", action="store_true", help="also run the reference and print the largest difference")
    add_program_flags(parser)
    training = parser.add_argument_group("training (--train)")
    training.add_argument("--train", action="store_true", help="train the entry function's loss on --data")
    training.add_argument("--data", help="an .npz with <argument>_train and <argument>_test arrays (x_train, y_train, ...)")
    training.add_argument("--steps", type=int, default=100, help="train steps (default 100)")
    training.add_argument("--batch", type=int, help="batch size: resizes the leading dimension of the entry's arguments")
    training.add_argument("--optimizer", default="adam", help="sgd, momentum, adam or adafactor (default adam)")
    training.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    training.add_argument("--eval", help="evaluation function averaged over the test set (default @accuracy if present)")
    training.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: only at the end)")
    training.add_argument("--checkpoint", metavar="DIR",
                          help="resume from the checkpoint in DIR when it holds one; save there every --checkpoint-every steps and at the end")
    training.add_argument("--checkpoint-every", type=int, metavar="N",
                          help=f"save a checkpoint every N steps (default {DEFAULT_CHECKPOINT_EVERY}); needs --checkpoint")
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


def train(args: argparse.Namespace) -> int:
    """Build the train step, then run the training loop on the chosen backend."""
    from .train import checkpointing_from_flags, load_dataset, resize_dimension

    if not args.data:
        raise FlagError("--train needs --data FILE.npz")
    checkpoints = checkpointing_from_flags(args.checkpoint, args.checkpoint_every)
    module = load_module(args.input, args.mesh, args.layout)
    entry = module.function(args.entry).name
    if args.batch is not None:
        batch_dim = module.functions[entry].args[0].type.dims[0].name
        resize_dimension(module, batch_dim, args.batch)
    eval_name = (args.eval or ("@accuracy" if "accuracy" in module.functions else "")).lstrip("@") or None
    if eval_name is not None:
        module.function(eval_name)
    dataset = load_dataset(args.data, module.functions[entry])
    args.passes = pipeline_text(args, module, args.backend)
    if args.backend == "reference":
        from meshir.passes.pipeline import PassManager, parse_pipeline

        PassManager(parse_pipeline(args.passes)).run(module)
    else:
        module, entry = prepare(module, args)
    metrics = train_loop(make_runner(args.backend, module, args), module, entry, eval_name, dataset, args.steps, args.eval_every,
                         args.seed, checkpoints)
    return EXIT_OK if np.isfinite(metrics["loss"]) else EXIT_RUNTIME


def checkpointed_variables(directory: str, module) -> dict[str, np.ndarray]:
    """The module's variables from the latest checkpoint in `directory`; the
    optimizer's slots a train step saved beside them are not needed to run."""
    from .checkpoint import load, restore_values

    checkpoint = load(directory)
    if checkpoint is None:
        raise FlagError(f"--checkpoint: '{directory}' holds no checkpoint")
    return restore_values(checkpoint, module, extra_allowed=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from meshir.interpreter import Interpreter, random_inputs

        if args.backend not in BACKENDS:
            raise FlagError(f"--backend: unknown backend '{args.backend}' (backends: {', '.join(BACKENDS)})")
        if args.train:
            return train(args)
        module = load_module(args.input, args.mesh, args.layout)
        function = module.function(args.entry)
        types = [v.type for v in function.returns]
        inputs = load_inputs(args.inputs) if args.inputs else random_inputs(function, args.seed)
        variables = checkpointed_variables(args.checkpoint, module) if args.checkpoint else None
        reference = Interpreter(module, variables) if args.backend == "reference" or args.check else None
        expected = reference.run(function.name, inputs) if reference is not None else None
        if args.backend == "reference":
            outputs = expected
        else:
            module = load_module(args.input, args.mesh, args.layout)
            args.passes = pipeline_text(args, module, args.backend)
            module, entry = prepare(module, args)
            if args.backend == "tf":
                program = compile_tf(module, entry, args)
            else:
                program = compile_xla(module, entry, args.emit_mode)
            outputs, _ = program.run(inputs, variables)
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
