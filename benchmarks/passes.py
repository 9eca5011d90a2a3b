"""What each performance pass buys on the 12-layer transformer's train step (not a test).

    python benchmarks/passes.py [--layers 12] [--repeats 20] [--mesh all:8 --layout batch:all]

The model of examples/deep_transformer.py on 8 CPU devices, under its own
layout (batch over rows, heads and feed-forward units over cols of a 2x4 mesh)
unless --mesh/--layout say otherwise. The baseline pipeline is the train step
`autodiff,optimizer{adam},layout,spmd`; each variant adds passes to it: the
precision policy and autostack before autodiff (where they must run),
fuse-collectives and cse,dce after spmd, and one variant has all of them.

Per variant, as ratios to the baseline: ops of the local program, variables,
collectives and the bytes they move (meshir.passes.base.module_statistics:
each collective's per-device payload, counted once per mesh axis it spans), XLA
compile time (tracing, lowering and compiling the donating step that
CompiledProgram.step runs; the least of --compile-rounds interleaved rounds)
and the median warm step time (the variants' steps interleaved, so that they
share whatever else the machine is doing). Every variant starts from the same
variables and batch; the first step's loss is printed beside the baseline's.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshir.backends.xla import setup_cpu_devices

setup_cpu_devices(8)

import jax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from meshir.backends.xla import CompiledProgram, x64  # noqa: E402
from meshir.backends.xla.compile import Port  # noqa: E402
from meshir.interpreter import Interpreter, random_inputs  # noqa: E402
from meshir.ir import Module  # noqa: E402
from meshir.passes.base import available_passes, module_statistics  # noqa: E402
from meshir.passes.pipeline import PassManager, parse_pipeline  # noqa: E402
from meshir.tools.common import apply_overrides  # noqa: E402
from meshir.tools.compile import compile_xla  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "deep_transformer.py"
TRAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001}"
PARTITION = "layout,spmd"
MIXED_PRECISION = "mixed-precision{activation=bf16}"


def variants() -> dict[str, str]:
    """Variant name -> pipeline; autostack only where the pass is registered."""
    before = {"mixed-precision": MIXED_PRECISION}
    if "autostack" in available_passes():
        before["autostack"] = "autostack"
    after = {"fuse-collectives": "fuse-collectives", "cse,dce": "cse,dce"}
    pipelines = {"baseline": f"{TRAIN},{PARTITION}"}
    pipelines.update({name: f"{passes},{TRAIN},{PARTITION}" for name, passes in before.items()})
    pipelines.update({name: f"{TRAIN},{PARTITION},{passes}" for name, passes in after.items()})
    pipelines["all"] = ",".join([*before.values(), TRAIN, PARTITION, *after.values()])
    return pipelines


def build_model(layers: int, mesh: str | None, layout: str | None) -> Module:
    spec = importlib.util.spec_from_file_location("deep_transformer", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    module = example.build(layers)
    apply_overrides(module, mesh, layout)
    return module


@dataclass
class Step:
    """One variant's compiled train step and the variables it carries between calls."""

    program: CompiledProgram
    compiled: Any  # jax.stages.Compiled of program.lower_step()
    feed: dict[str, jax.Array]
    state: dict[str, jax.Array]

    def __call__(self) -> float:
        with x64():
            outputs, written = self.compiled(self.feed, *self.program.split_written(self.state))
        self.state = {**self.state, **written}
        jax.block_until_ready((outputs, written))
        return float(outputs["loss"])


@dataclass
class Variant:
    name: str
    ops: int
    variables: int
    collectives: int
    collective_bytes: int
    compile_rounds: list[float]  # seconds, one per round
    step: Step
    first_loss: float = float("nan")
    step_seconds: float = float("nan")

    @property
    def compile_seconds(self) -> float:
        # The least: other work on the machine only ever adds to a compile's time.
        return min(self.compile_rounds)


def placed(program: CompiledProgram, ports: list[Port], values: dict[str, Any]) -> dict[str, jax.Array]:
    return {p.name: jax.device_put(values[p.name], NamedSharding(program.device_mesh, p.spec)) for p in ports}


def compiled_step(module: Module) -> tuple[CompiledProgram, Any, float]:
    """The program, its donating step compiled ahead of time, and the seconds that took."""
    program = compile_xla(module, "loss", "spmd")  # a fresh jax.jit: nothing cached from an earlier round
    start = time.perf_counter()
    with x64():
        compiled = program.lower_step().compile()
    return program, compiled, time.perf_counter() - start


def prepare(name: str, pipeline: str, args: argparse.Namespace) -> tuple[Variant, Module]:
    module = build_model(args.layers, args.mesh, args.layout)
    batch = random_inputs(module.function("loss"), seed=0)
    PassManager(parse_pipeline(pipeline)).run(module)
    stats = module_statistics(module)
    program, compiled, seconds = compiled_step(module)
    step = Step(program, compiled, placed(program, program.inputs, batch),
                placed(program, program.variables, Interpreter(module).state))
    variant = Variant(name, len(module.functions["loss"].ops), len(module.variables), sum(stats.collectives.values()),
                      sum(stats.bytes_per_axis.values()), [seconds], step)
    return variant, module


def time_compiles(prepared: list[tuple[Variant, Module]], rounds: int) -> None:
    """More compile times per variant, the variants interleaved round by round."""
    for _ in range(rounds - 1):
        for variant, module in prepared:
            variant.compile_rounds.append(compiled_step(module)[2])


def timed(step: Step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(results: list[Variant], repeats: int) -> None:
    for variant in results:
        variant.first_loss = variant.step()
    for _ in range(3):  # warm every program before timing
        for variant in results:
            variant.step()
    samples: list[list[float]] = [[] for _ in results]
    for _ in range(repeats):
        for variant, times in zip(results, samples):
            times.append(timed(variant.step))
    for variant, times in zip(results, samples):
        variant.step_seconds = statistics.median(times)


COLUMNS = (("ops", "ops", "{:.0f}"), ("variables", "vars", "{:.0f}"), ("collectives", "colls", "{:.0f}"),
           ("collective_bytes", "coll KiB", "{:.0f}"), ("compile_seconds", "compile s", "{:.2f}"),
           ("step_seconds", "step ms", "{:.2f}"))
SCALE = {"collective_bytes": 1 / 1024, "step_seconds": 1e3}


def report(results: list[Variant], args: argparse.Namespace) -> None:
    baseline = results[0]
    where = f"mesh {args.mesh}, layout {args.layout}" if args.mesh else "the model's own mesh rows:2,cols:4 and layout"
    print(f"{args.layers}-layer transformer train step on 8 CPU devices ({where}); compile: least of {args.compile_rounds} "
          f"interleaved rounds; step: median of {args.repeats} interleaved warm steps")
    print("each cell: value (ratio to baseline)")
    header = f"{'variant':<17}" + "".join(f"{title:>19}" for _, title, _ in COLUMNS) + f"{'first loss':>12}"
    print(header)
    for variant in results:
        cells = []
        for field, _, fmt in COLUMNS:
            value, base = getattr(variant, field), getattr(baseline, field)
            ratio = value / base if base else float("nan")
            cells.append(f"{fmt.format(value * SCALE.get(field, 1)):>11} ({ratio:4.2f})")
        print(f"{variant.name:<17}" + "".join(f"{c:>19}" for c in cells) + f"{variant.first_loss:>12.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile-rounds", type=int, default=2)
    parser.add_argument("--mesh", help="override the model's mesh, e.g. all:8")
    parser.add_argument("--layout", help="override the model's layout, e.g. batch:all")
    args = parser.parse_args()
    prepared = [prepare(name, pipeline, args) for name, pipeline in variants().items()]
    time_compiles(prepared, args.compile_rounds)
    results = [variant for variant, _ in prepared]
    measure(results, args.repeats)
    report(results, args)


if __name__ == "__main__":
    main()
