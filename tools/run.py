"""meshir-run: run a function of a `.mir` module on a backend."""
from __future__ import annotations

import argparse
import contextlib
import io
import sys

import numpy as np

from meshir.diagnostics import FlagError
from meshir.ir import Module

from .common import EXIT_OK, EXIT_RUNTIME, atomic_write, load_module, run_main
from .compile import add_program_flags, compile_tf, compile_xla, pipeline_text, prepare
from .distributed import DEFAULT_INIT_TIMEOUT, Cluster, cluster_from_flags, join, joined, leave, peer_failures_reported
from .profile import Profiler, profiler_from_flags
from .runners import XlaRunner, make_runner
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
    parser.add_argument("--report", action="store_true",
                        help="print where the function's ops and variables live (devices, per-device shapes, memory) "
                             "on standard error, as the backend placed them; with --train, the train step's")
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
    processes = parser.add_argument_group("several processes (JAX's distributed runtime, --backend xla; meshir-launch starts them on one machine)")
    processes.add_argument("--coordinator", metavar="HOST:PORT",
                           help="process 0's address, the same for every process: process 0 serves there, the others connect")
    processes.add_argument("--num-processes", type=int, metavar="N", help="how many processes the run has")
    processes.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0 to N-1; process 0 prints and saves")
    processes.add_argument("--init-timeout", type=int, metavar="SECONDS",
                           help=f"fail when the processes have not all joined within this time, or one stops answering "
                                f"for as long (default {DEFAULT_INIT_TIMEOUT})")
    profiling = parser.add_argument_group("profiling (--backend xla)")
    profiling.add_argument("--profile", metavar="DIR",
                           help="write a profile of the run to DIR, for TensorBoard (tensorboard --logdir DIR) and Perfetto")
    profiling.add_argument("--profile-steps", metavar="A:B",
                           help="with --train: profile steps A to B, counted from 1 (default: every step)")
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


def prepare_devices(module: Module, args: argparse.Namespace, cluster: Cluster | None) -> tuple[Module, str]:
    """`prepare`, after joining the other processes of a multi-process run."""
    if cluster is not None:
        # --devices counts this process's devices; prepare checks the mesh against all of them.
        args.devices = join(cluster, module.mesh_of(module.function(args.entry)), args.devices)
    return prepare(module, args)


def report_placement(module: Module, entry: str, args: argparse.Namespace, cluster: Cluster | None) -> None:
    """--report: the placement of `entry` as its backend compiles it (tools/placement.py)."""
    from .placement import reference_report, tf_report, xla_report

    if args.backend == "reference":
        text = reference_report(entry)
    elif args.backend == "tf":
        text = tf_report(compile_tf(module, entry, args))
    else:
        text = xla_report(compile_xla(module, entry, args.emit_mode))
    if cluster is None or cluster.is_primary:
        sys.stderr.write(text)


def run_program(module: Module, entry: str, args: argparse.Namespace, inputs: dict[str, np.ndarray],
                variables: dict[str, np.ndarray] | None, cluster: Cluster | None) -> dict[str, np.ndarray]:
    """The entry function's outputs on the tf or xla backend."""
    if args.backend == "tf":
        return compile_tf(module, entry, args).run(inputs, variables)[0]
    if cluster is not None:  # the runner places global arrays shard by shard and gathers the outputs
        runner = XlaRunner(module, args.emit_mode, multi_process=True)
        runner.load_state(variables or {})
        return runner(entry, inputs)
    return compile_xla(module, entry, args.emit_mode).run(inputs, variables)[0]


def train(args: argparse.Namespace, cluster: Cluster | None, profiler: Profiler | None) -> int:
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
        module, entry = prepare_devices(module, args, cluster)
    if args.report:
        report_placement(module, entry, args, cluster)
    runner = make_runner(args.backend, module, args, multi_process=cluster is not None)
    try:
        metrics = train_loop(runner, module, entry, eval_name, dataset, args.steps, args.eval_every, args.seed, checkpoints,
                             profiler, cluster is None or cluster.is_primary)
    finally:
        if profiler is not None:
            profiler.stop()
    return EXIT_OK if np.isfinite(metrics["loss"]) else EXIT_RUNTIME


def checkpointed_variables(directory: str, module) -> dict[str, np.ndarray]:
    """The module's variables from the latest checkpoint in `directory`; the
    optimizer's slots a train step saved beside them are not needed to run."""
    from .checkpoint import load, restore_values

    checkpoint = load(directory)
    if checkpoint is None:
        raise FlagError(f"--checkpoint: '{directory}' holds no checkpoint")
    return restore_values(checkpoint, module, extra_allowed=True)


def run_once(args: argparse.Namespace, cluster: Cluster | None, profiler: Profiler | None) -> int:
    """Run the entry function once and report its outputs."""
    from meshir.interpreter import Interpreter, random_inputs

    module = load_module(args.input, args.mesh, args.layout)
    function = module.function(args.entry)
    types = [v.type for v in function.returns]
    inputs = load_inputs(args.inputs) if args.inputs else random_inputs(function, args.seed)
    variables = checkpointed_variables(args.checkpoint, module) if args.checkpoint else None
    primary = cluster is None or cluster.is_primary  # the process that reports
    reference = Interpreter(module, variables) if args.backend == "reference" or (args.check and primary) else None
    expected = reference.run(function.name, inputs) if reference is not None else None
    if args.backend == "reference":
        outputs = expected
        if args.report:
            report_placement(module, function.name, args, cluster)
    else:
        module = load_module(args.input, args.mesh, args.layout)
        args.passes = pipeline_text(args, module, args.backend)
        module, entry = prepare_devices(module, args, cluster)
        if args.report:
            report_placement(module, entry, args, cluster)
        with profiler.whole_run() if profiler is not None else contextlib.nullcontext():
            outputs = run_program(module, entry, args, inputs, variables, cluster)
    if not primary:
        return EXIT_OK
    for (name, array), ttype in zip(outputs.items(), types):
        print(format_output(name, array, str(ttype)))
    if args.check:
        print(f"check: largest |{args.backend} - reference| = {largest_difference(outputs, expected):.3g}")
    if args.outputs:
        save_outputs(args.outputs, outputs)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.backend not in BACKENDS:
            raise FlagError(f"--backend: unknown backend '{args.backend}' (backends: {', '.join(BACKENDS)})")
        cluster = cluster_from_flags(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
        if cluster is not None and args.backend != "xla":
            raise FlagError(f"--coordinator: multi-process runs use JAX's distributed runtime, so they need --backend xla, not '{args.backend}'")
        profiler = profiler_from_flags(args.profile, args.profile_steps, backend=args.backend, train=args.train, steps=args.steps,
                                       process_id=cluster.process_id if cluster is not None else None)
        with peer_failures_reported(cluster) if cluster is not None else contextlib.nullcontext():
            return train(args, cluster, profiler) if args.train else run_once(args, cluster, profiler)

    status = run_main("meshir-run", body)
    if status != EXIT_OK and joined():
        leave(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
