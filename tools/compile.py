"""What meshc and meshir-run share: passes to a runnable program for a backend."""
from __future__ import annotations

import argparse

from meshir.diagnostics import FlagError
from meshir.ir import Module

from .common import AUTO_LAYOUT, check_auto_layout

EMIT_MODES = ("spmd", "gspmd")
MIXED_PRECISION = ("bf16", "f16")
TF_COLLECTIVES = ("explicit", "v2")  # meshir.backends.tf.COLLECTIVE_MODES, without importing TensorFlow


def add_program_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entry", help="the function to compile or run, e.g. @loss (default: the first function)")
    parser.add_argument("--mesh", help="override the mesh: 'rows:2,cols:4' or 'rows:2;cols:4'")
    parser.add_argument("--layout", help="override the layout: 'batch:rows,hidden:cols', 'seq:(rows,cols)', or 'auto' "
                                         "(the auto-layout pass picks it with the estimate as cost model)")
    parser.add_argument("--passes", default=None, help="pass pipeline (default: the standard pipeline, shown by meshc --print-pipeline)")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                        help="standard pipeline: activations and contractions in bf16 or f16 (f16 with dynamic loss scaling)")
    parser.add_argument("--devices", type=int, help="number of devices (default: the mesh's size)")
    parser.add_argument("--emit-mode", default="spmd", choices=EMIT_MODES,
                        help="spmd: meshir partitions (default); gspmd: the global program with shardings, XLA partitions")
    parser.add_argument("--tf-collectives", default="explicit", choices=TF_COLLECTIVES,
                        help="tf backend: explicit cross-device transfers (default, fastest on CPU) or TensorFlow's "
                             "v2 collective ops (NCCL on GPUs)")


def standard_pipeline(entry: str, *, train: bool = False, optimizer: str = "adam", lr: float = 1e-3,
                      mixed_precision: str | None = None, backend: str = "xla", auto_layout: bool = False) -> str:
    """What meshc and meshir-run run without --passes. The precision policy comes
    first (autodiff then derives a backward pass of the same precision), then the
    train step (equal variables stacked first, so the optimizer updates each stack
    once), then partitioning for a device backend, collective fusion for
    TensorFlow, and clean-up."""
    passes = []
    if mixed_precision:
        scaling = f",loss-scale=dynamic,func={entry}" if mixed_precision == "f16" and train else ""
        passes.append(f"mixed-precision{{activation={mixed_precision},backend={backend}{scaling}}}")
    if train:
        passes += ["autostack", f"autodiff{{func={entry}}}", f"optimizer{{kind={optimizer},lr={lr}}}"]
    if backend != "reference":
        passes += ["auto-layout", "layout", "spmd"] if auto_layout else ["layout", "spmd"]
    if backend == "tf":
        # XLA combines collectives itself (its all-reduce combiner), and doing it first
        # doubled its compile time for no step-time gain (benchmarks/passes.py); TF has no combiner.
        passes.append("fuse-collectives")
    return ",".join(passes + ["cse", "dce"])


def pipeline_text(args: argparse.Namespace, module: Module, backend: str) -> str:
    """--passes, or the standard pipeline for the tool's flags and `backend`."""
    auto_layout = args.layout == AUTO_LAYOUT
    if args.passes is not None:
        check_auto_layout(args.layout, args.passes)
        return args.passes
    return standard_pipeline(module.function(args.entry).name, train=args.train, optimizer=args.optimizer, lr=args.lr,
                             mixed_precision=args.mixed_precision, backend=backend, auto_layout=auto_layout)


def prepare(module: Module, args: argparse.Namespace) -> tuple[Module, str]:
    """Run the pipeline (without `spmd` in gspmd mode) and set up devices; returns the
    module and the entry function's name. Must run before JAX is imported."""
    from meshir.backends.xla import setup_cpu_devices
    from meshir.passes.pipeline import PassManager, parse_pipeline

    entry = module.function(args.entry).name
    pipeline = parse_pipeline(args.passes if args.passes is not None else standard_pipeline(entry))
    if args.emit_mode == "gspmd":
        pipeline = [p for p in pipeline if p.name not in ("spmd", "fuse-collectives")]
    mesh = module.mesh_of(module.functions[entry])
    PassManager(pipeline).run(module)
    needed = mesh.size if mesh is not None else 1
    devices = args.devices if args.devices is not None else needed
    if devices < needed:
        raise FlagError(f"--devices: mesh @{mesh.name} {mesh} needs {needed} devices, got {devices}")
    setup_cpu_devices(devices)
    return module, entry


def compile_xla(module: Module, entry: str, emit_mode: str):
    from meshir.backends.xla import compile_global, compile_global_gspmd, compile_local

    function = module.functions[entry]
    if function.is_local:
        return compile_local(module, entry)
    if emit_mode == "gspmd" and module.mesh_of(function) is not None:
        return compile_global_gspmd(module, entry)
    return compile_global(module, entry)


def compile_tf(module: Module, entry: str, args: argparse.Namespace):
    """The entry function as a TensorFlow graph (local after `spmd`, else one device)."""
    if args.emit_mode == "gspmd":
        raise FlagError("--emit-mode gspmd: XLA's partitioner has no TensorFlow counterpart; the tf backend emits meshir's own partitioning")
    from meshir.backends.tf import compile_program

    return compile_program(module, entry, collectives=args.tf_collectives)
