"""The auto-layout pass's choice against hand-written layouts (not a test).

    python benchmarks/auto_layout.py [--repeats 20]

For each example's train step (adam) on its own 2x4 mesh of CPU devices: the
layout its file gives, plain data parallelism (batch over both axes), and the
layout auto-layout picks with its default cost model. Per layout: the cost
model's time and peak memory per device (passes/estimate.py), and the measured
median warm step time, the layouts' steps interleaved so that they share
whatever else the machine does; ratios are to the file's layout.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

from meshir.backends.xla import setup_cpu_devices

setup_cpu_devices(8)

from meshir.frontends.text import parse_module  # noqa: E402
from meshir.interpreter import Interpreter, random_inputs  # noqa: E402
from meshir.passes.auto_layout import rules_text  # noqa: E402
from meshir.passes.estimate import estimate_function  # noqa: E402
from meshir.passes.pipeline import PassManager, parse_pipeline  # noqa: E402
from meshir.tools.common import apply_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("digits_mlp.mir", "mnist_mlp.mir", "transformer_lm.mir")
TRAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001}"
FLOPS_PER_SECOND, BYTES_PER_SECOND, LATENCY = 1e12, 1e10, 1e-5  # auto-layout's defaults


def _passes_benchmark():
    """benchmarks/passes.py, for its compiled-step helpers."""
    spec = importlib.util.spec_from_file_location("passes_benchmark", ROOT / "benchmarks" / "passes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def train_step(example: str, layout: str | None, auto: bool):
    module = parse_module((ROOT / "examples" / example).read_text(), example)
    apply_overrides(module, None, layout)
    PassManager(parse_pipeline(TRAIN + (",auto-layout{report=false}" if auto else ""))).run(module)
    chosen = rules_text(module.layout_of(module.functions["loss"]))
    batch = random_inputs(module.functions["loss"], seed=0)
    with redirect_stderr(io.StringIO()):
        PassManager(parse_pipeline("layout,spmd")).run(module)
    return module, chosen, batch


def modelled(module) -> tuple[float, int]:
    e = estimate_function(module, module.functions["loss"])
    seconds = (e.flops / FLOPS_PER_SECOND + sum(e.communication.bytes_per_axis.values()) / BYTES_PER_SECOND
               + sum(e.communication.count_per_kind.values()) * LATENCY)
    return seconds, e.memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    bench = _passes_benchmark()
    print(f"train steps on 8 CPU devices (mesh rows=2 x cols=4); step: median of {args.repeats} interleaved warm steps")
    print(f"{'example':<20}{'layout':<12}{'rules':<44}{'model ms':>10}{'peak KiB':>10}{'step ms':>10}{'ratio':>7}")
    for example in EXAMPLES:
        rows = []
        for name, layout, auto in (("file", None, False), ("data", "batch:(rows,cols)", False), ("auto", None, True)):
            module, chosen, batch = train_step(example, layout, auto)
            program, compiled, _ = bench.compiled_step(module)
            step = bench.Step(program, compiled, bench.placed(program, program.inputs, batch),
                              bench.placed(program, program.variables, Interpreter(module).state))
            rows.append((name, chosen, *modelled(module), step))
        for _ in range(3):
            for row in rows:
                row[-1]()
        samples = [[] for _ in rows]
        for _ in range(args.repeats):
            for row, times in zip(rows, samples):
                start = time.perf_counter()
                row[-1]()
                times.append(time.perf_counter() - start)
        medians = [statistics.median(times) for times in samples]
        for (name, chosen, seconds, peak, _), median in zip(rows, medians):
            print(f"{example:<20}{name:<12}{chosen:<44}{seconds * 1e3:>10.3f}{peak / 1024:>10.0f}{median * 1e3:>10.2f}"
                  f"{median / medians[0]:>7.2f}")


if __name__ == "__main__":
    main()
