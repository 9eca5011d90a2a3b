"""meshir's TensorFlow backend vs its XLA backend on the same local programs (not a test).

    python benchmarks/tf_vs_xla.py [--repeats 30]

Two models of examples/, forward only, partitioned by `layout,spmd`:
examples/mlp.mir (@loss) and examples/transformer_block.mir (@block).

Step time, on a 2x4 mesh of 8 CPU devices: the tf backend's graph in one open
TFSession (variables initialised once; each call feeds the numpy inputs and
fetches the numpy outputs) against the xla backend's `compile_local` program
(inputs and weights already placed on the devices, `block_until_ready`). Both
are warm; the calls interleave and the median of each is printed with the
ratio tf / xla, for TF's explicit transfers and for its v2 collective ops where
the program runs with them. Outputs are compared first.

Graph size: the GraphDef of each model for meshes of 1, 2, 4 and 8 devices,
its serialized bytes, node count and build time (emission and serialization),
for both collective modes: the tf backend emits one copy of every op per
device, so the graph grows about linearly with the mesh.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from meshir.backends.xla import setup_cpu_devices

setup_cpu_devices(8)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from meshir.backends.tf.compile import compile_program  # noqa: E402
from meshir.backends.xla import compile_local  # noqa: E402
from meshir.diagnostics import MeshirError  # noqa: E402
from meshir.frontends.text import parse_module, read_source  # noqa: E402
from meshir.interpreter import Interpreter, random_inputs  # noqa: E402
from meshir.ir import Module  # noqa: E402
from meshir.passes.pipeline import PassManager, parse_pipeline  # noqa: E402
from meshir.tools.common import apply_overrides  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COLLECTIVES = ("explicit", "v2")
V2_TIMEOUT_SECONDS = 60.0  # a v2 program that cannot run fails in a minute instead of hanging

# model -> (file, entry, {devices: (mesh, layout)}); the 8-device entry is the one timed.
MODELS = {
    "mlp": ("mlp.mir", "loss", {
        1: ("x:1", "batch:x"),
        2: ("rows:2", "batch:rows"),
        4: ("rows:2,cols:2", "batch:rows,hidden:cols"),
        8: ("rows:2,cols:4", "batch:rows,hidden:cols"),
    }),
    "transformer": ("transformer_block.mir", "block", {
        1: ("x:1", "batch:x"),
        2: ("rows:2", "batch:rows"),
        4: ("rows:2,cols:2", "batch:rows,heads:cols,hidden:cols"),
        8: ("rows:2,cols:4", "batch:rows,heads:cols,hidden:cols"),
    }),
}


def partitioned(path: Path, mesh: str, layout: str) -> Module:
    module = parse_module(read_source(str(path)))
    apply_overrides(module, mesh, layout)
    PassManager(parse_pipeline("layout,spmd")).run(module)
    return module


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def step_times(name: str, repeats: int) -> list[str]:
    """Table rows: the median forward step of each TF collective mode and of XLA."""
    file, entry, meshes = MODELS[name]
    mesh, layout = meshes[8]
    source = parse_module(read_source(str(EXAMPLES / file)))
    inputs = random_inputs(source.function(entry), seed=0)
    weights = Interpreter(source).state
    module = partitioned(EXAMPLES / file, mesh, layout)

    program = compile_local(module, entry)
    feed = {p.name: jax.device_put(inputs[p.name], p.struct(program.device_mesh).sharding) for p in program.inputs}
    state = {p.name: jax.device_put(weights[p.name], p.struct(program.device_mesh).sharding) for p in program.variables}
    xla_out = {k: np.asarray(v) for k, v in program(feed, state)[0].items()}

    sessions, failures = {}, {}
    for mode in COLLECTIVES:
        try:
            session = compile_program(module, entry, collectives=mode, timeout=V2_TIMEOUT_SECONDS).open(weights)
            tf_out = session(inputs)
        except MeshirError as exc:
            failures[mode] = exc.message.splitlines()[0]
            continue
        difference = max(float(np.max(np.abs(tf_out[k] - xla_out[k]))) for k in xla_out)
        sessions[mode] = (session, difference)

    times: dict[str, list[float]] = {"xla": [], **{mode: [] for mode in sessions}}
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits every column alike
        times["xla"].append(timed(program, feed, state))
        for mode, (session, _) in sessions.items():
            times[mode].append(timed(session, inputs))
    xla_step = statistics.median(times["xla"])
    rows = []
    for mode in COLLECTIVES:
        if mode in failures:
            rows.append(f"{name:<12} {mesh:<14} {mode:<9} {'n/a':>9} {xla_step * 1e3:>9.3f} {'':>9}   {failures[mode]}")
            continue
        session, difference = sessions[mode]
        tf_step = statistics.median(times[mode])
        rows.append(f"{name:<12} {mesh:<14} {mode:<9} {tf_step * 1e3:>9.3f} {xla_step * 1e3:>9.3f} {tf_step / xla_step:>9.2f}   "
                    f"{difference:.1e}")
        session.close()
    return rows


def graph_sizes(name: str) -> list[str]:
    file, entry, meshes = MODELS[name]
    rows = []
    for devices, (mesh, layout) in meshes.items():
        module = partitioned(EXAMPLES / file, mesh, layout)
        for mode in COLLECTIVES:
            start = time.perf_counter()
            graph_def = compile_program(module, entry, collectives=mode).graph_def()
            seconds = time.perf_counter() - start
            rows.append(f"{name:<12} {devices:>7}  {mesh:<14} {mode:<9} {graph_def.ByteSize():>10,} {len(graph_def.node):>7,} "
                        f"{seconds:>8.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each program (default 30)")
    args = parser.parse_args()

    print(f"forward step time, 8 CPU devices, median of {args.repeats} interleaved warm calls")
    print(f"{'model':<12} {'mesh':<14} {'tf coll.':<9} {'tf ms':>9} {'xla ms':>9} {'tf/xla':>9}   max |tf - xla|")
    for name in MODELS:
        for row in step_times(name, args.repeats):
            print(row)
    print()
    print("TensorFlow GraphDef vs mesh size")
    print(f"{'model':<12} {'devices':>7}  {'mesh':<14} {'tf coll.':<9} {'bytes':>10} {'nodes':>7} {'build s':>8}")
    for name in MODELS:
        for row in graph_sizes(name):
            print(row)


if __name__ == "__main__":
    main()
