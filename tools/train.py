"""`meshir-run --train`: the training loop around a train step.

The entry function computes a scalar loss from a batch; `autodiff{func=...}` and
`optimizer{...}` turn it into a train step, and (for the xla backend)
`layout,spmd` partition it with the module's other functions (tools/compile.py
standard_pipeline). Data come from an
.npz holding `<argument>_train` and `<argument>_test` arrays (Keras' mnist.npz
names: `x_train`, `y_train`, ...); batches are drawn in a seeded shuffled order.
An evaluation function (`--eval`, default `@accuracy` when the module has one)
with the same arguments is averaged over the test set's full batches.

With `--checkpoint DIR` (tools/checkpoint.py) a run resumes from DIR's checkpoint
when there is one, draws the batches an uninterrupted run would have drawn from
there, and saves every `--checkpoint-every` steps and at the end.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshir.diagnostics import FlagError
from meshir.ir import Function, Module

from . import checkpoint
from .profile import Profiler
from .runners import Runner

DEFAULT_CHECKPOINT_EVERY = 100


@dataclass(frozen=True)
class Checkpointing:
    """Where `--checkpoint` saves, and how often."""

    directory: str
    every: int

    def due(self, step: int, last: int) -> bool:
        return step % self.every == 0 or step == last


def checkpointing_from_flags(directory: str | None, every: int | None) -> Checkpointing | None:
    """The `--checkpoint DIR` and `--checkpoint-every N` flags, checked."""
    if directory is None:
        if every is not None:
            raise FlagError("--checkpoint-every needs --checkpoint DIR")
        return None
    if every is not None and every < 1:
        raise FlagError(f"--checkpoint-every: expected a number of steps >= 1, got {every}")
    return Checkpointing(directory, every or DEFAULT_CHECKPOINT_EVERY)


@dataclass
class Dataset:
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    batch: int

    def batches(self, seed: int):
        """Endless full batches of the training split, reshuffled every epoch."""
        count = len(next(iter(self.train.values())))
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(count)
            for start in range(0, count - self.batch + 1, self.batch):
                chosen = order[start:start + self.batch]
                yield {name: array[chosen] for name, array in self.train.items()}

    def test_batches(self):
        count = len(next(iter(self.test.values())))
        for start in range(0, count - self.batch + 1, self.batch):
            yield {name: array[start:start + self.batch] for name, array in self.test.items()}


def load_dataset(path: str, function: Function) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise FlagError(f"--data: cannot read '{path}' as an .npz file ({exc})") from None
    train, test = {}, {}
    for arg in function.args:
        for split, table in (("train", train), ("test", test)):
            key = f"{arg.name}_{split}"
            if key not in arrays:
                raise FlagError(f"--data: '{path}' has no array '{key}' for argument %{arg.name} of @{function.name} "
                                f"(arrays: {', '.join(sorted(arrays))})")
            table[arg.name] = arrays[key]
    batch = function.args[0].type.dims[0].size if function.args[0].type.dims else 0
    for arg in function.args:
        if not arg.type.dims or arg.type.dims[0].size != batch:
            raise FlagError(f"--data: every argument of @{function.name} must lead with the batch dimension of size {batch}; %{arg.name} is {arg.type}")
        for split, table in (("train", train), ("test", test)):
            if table[arg.name].shape[1:] != arg.type.shape[1:]:
                raise FlagError(f"--data: {arg.name}_{split} has examples of shape {table[arg.name].shape[1:]}, "
                                f"but %{arg.name} is {arg.type} (examples of shape {arg.type.shape[1:]})")
    if len(next(iter(train.values()))) < batch or len(next(iter(test.values()))) < batch:
        raise FlagError(f"--data: both splits need at least one batch of {batch} examples")
    return Dataset(train, test, batch)


def progress(step: int, total: int, loss: float, examples_per_second: float) -> str:
    width = 30
    done = int(width * step / total)
    return f"\r[{'#' * done}{'.' * (width - done)}] step {step}/{total}  loss {loss:.4f}  {examples_per_second:,.0f} examples/s"


def evaluate(run: Runner, eval_name: str, dataset: Dataset) -> float:
    scores = [float(next(iter(run(eval_name, batch).values()))) for batch in dataset.test_batches()]
    return float(np.mean(scores))


def resume(runner: Runner, module: Module, directory: str, steps: int) -> tuple[int, float]:
    """Load the checkpoint in `directory` into the runner, if there is one; returns
    its step and loss (0 and NaN without one, after creating the folder)."""
    checkpoint.create_folder(directory)
    restored = checkpoint.load(directory)
    if restored is None:
        return 0, float("nan")
    if restored.step > steps:
        raise FlagError(f"--steps {steps}: the checkpoint {restored.path} is already at step {restored.step}")
    runner.load_state(checkpoint.restore_values(restored, module))
    print(f"resumed from {restored.path} at step {restored.step}", file=sys.stderr)
    return restored.step, restored.loss


class _Discard(io.TextIOBase):
    """Where the reports of a multi-process run's other processes go."""

    def write(self, text: str) -> int:
        return len(text)


def train_loop(runner: Runner, module: Module, entry: str, eval_name: str | None, dataset: Dataset,
               steps: int, eval_every: int, seed: int, checkpoints: Checkpointing | None = None,
               profiler: Profiler | None = None, primary: bool = True) -> dict[str, Any]:
    """Train up to step `steps`; a progress bar on stderr, the final metrics as one
    JSON line on stdout. `profiler` traces the steps it profiles. In a multi-process
    run every process trains, but only the `primary` one reports and saves."""
    out, bar = (sys.stdout, sys.stderr) if primary else (_Discard(), _Discard())
    first, loss = resume(runner, module, checkpoints.directory, steps) if checkpoints else (0, float("nan"))
    # The seeded order, less the batches the checkpointed steps consumed: the run
    # continues exactly as if it had never stopped.
    batches = itertools.islice(dataset.batches(seed), first, None)
    start = time.perf_counter()
    for step in range(first + 1, steps + 1):
        with profiler.step(step) if profiler else contextlib.nullcontext():
            loss = float(next(iter(runner(entry, next(batches)).values())))
        rate = (step - first) * dataset.batch / max(time.perf_counter() - start, 1e-9)
        # A terminal redraws one line; a log gets a line every tenth of the run.
        if bar.isatty():
            print(progress(step, steps, loss, rate), end="", file=bar, flush=True)
        elif step % max(1, steps // 10) == 0 or step == steps:
            print(progress(step, steps, loss, rate).lstrip("\r"), file=bar, flush=True)
        if checkpoints and checkpoints.due(step, steps):
            values = checkpoint.master_values(runner.state(), module)  # every process joins in gathering them
            if primary:
                checkpoint.save(checkpoints.directory, step, values, loss)
        if eval_name and eval_every and step % eval_every == 0 and step != steps:
            print(f"{chr(10) if bar.isatty() else ''}step {step}: {eval_name} {evaluate(runner, eval_name, dataset):.4f}", file=bar)
    if bar.isatty():
        print(file=bar)
    metrics = {"step": steps, "loss": loss}
    if eval_name:
        metrics["accuracy" if eval_name == "accuracy" else eval_name] = evaluate(runner, eval_name, dataset)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(metrics), file=out)
    return metrics


def _resized(value: Any, name: str, size: int) -> Any:
    from meshir.types import Dim

    if isinstance(value, Dim) and value.name == name:
        return Dim(name, size)
    if isinstance(value, tuple):
        return tuple(_resized(v, name, size) for v in value)
    return value


def resize_dimension(module: Module, name: str, size: int) -> None:
    """Give dimension `name` the size `size` everywhere in the module's functions
    (`--batch`): argument and result types, size attributes; op result types are
    inferred again."""
    from meshir.verifier import verify_module

    for function in module.functions.values():
        for arg in function.args:
            if arg.type.has(name):
                arg.type = arg.type.resized(name, size)
        function.result_types = [t.resized(name, size) if t.has(name) else t for t in function.result_types]
        for op in function.ops:
            op.attributes = {k: _resized(v, name, size) for k, v in op.attributes.items()}
            for result in op.results:
                result.type = None
    verify_module(module)
