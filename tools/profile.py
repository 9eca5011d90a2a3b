"""`meshir-run --profile DIR [--profile-steps A:B]`: a trace of where the time goes,
from JAX's profiler.

DIR receives what TensorBoard's profile plugin reads (`tensorboard --logdir DIR`):

    DIR/plugins/profile/<run>/<host>.xplane.pb          the profile (trace viewer, op and HLO tools)
    DIR/plugins/profile/<run>/<host>.trace.json.gz      the timeline as Chrome trace events
    DIR/plugins/profile/<run>/perfetto_trace.json.gz    the same for ui.perfetto.dev

Every op a meshir op lowers to carries its name (`einsum:%h`, backends/xla/trace.py)
in XLA's op metadata. A training run profiles train steps A to B (counted from 1,
as the progress bar counts; default: every step), each marked as a step for
TensorBoard's step view; a single run is profiled whole, compilation included.
In a multi-process run each process writes its own trace, under DIR/process-I.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

from meshir.diagnostics import FlagError


@dataclass
class Profiler:
    """Starts and stops JAX's trace around the profiled steps (or a whole run)."""

    directory: str
    first: int = 1
    last: int | None = None  # None: to the end of the run
    _tracing: bool = field(default=False, init=False)

    def _start(self) -> None:
        import jax

        jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
        self._tracing = True

    def stop(self) -> None:
        """Write the trace, if one is running (at the last profiled step, or when the
        run ends or fails before it)."""
        if self._tracing:
            import jax

            self._tracing = False
            jax.profiler.stop_trace()

    @contextlib.contextmanager
    def step(self, number: int) -> Iterator[None]:
        """Around train step `number`: traces it when it is one of the profiled steps."""
        if not self._tracing and number >= self.first and (self.last is None or number <= self.last):
            self._start()
        if not self._tracing:
            yield
            return
        import jax

        with jax.profiler.StepTraceAnnotation("train", step_num=number):
            yield
        if number == self.last:
            self.stop()

    @contextlib.contextmanager
    def whole_run(self) -> Iterator[None]:
        self._start()
        try:
            yield
        finally:
            self.stop()


def profiler_from_flags(directory: str | None, steps_flag: str | None, *, backend: str, train: bool, steps: int,
                        process_id: int | None) -> Profiler | None:
    """The checked `--profile DIR` and `--profile-steps A:B` flags; `process_id` is
    this process's in a multi-process run, None in a run of one."""
    if directory is None:
        if steps_flag is not None:
            raise FlagError("--profile-steps needs --profile DIR")
        return None
    if backend != "xla":
        raise FlagError(f"--profile: profiles come from JAX's profiler, so they need --backend xla, not '{backend}'")
    first, last = 1, None
    if steps_flag is not None:
        if not train:
            raise FlagError("--profile-steps: only a training run (--train) has steps; a single run is profiled whole")
        first, last = _parse_steps(steps_flag)
        if first > steps:
            raise FlagError(f"--profile-steps {steps_flag}: the run has only {steps} steps (--steps)")
    if process_id is not None:
        directory = os.path.join(directory, f"process-{process_id}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:  # now, rather than when the trace is written after the run
        raise FlagError(f"--profile: cannot create folder '{directory}' ({exc.strerror or exc})") from None
    return Profiler(directory, first, last)


def _parse_steps(text: str) -> tuple[int, int]:
    first, colon, last = text.partition(":")
    if not colon or not first.strip().isdigit() or not last.strip().isdigit():
        raise FlagError(f"--profile-steps: expected A:B, the first and last step to profile (e.g. 3:5), got '{text}'")
    a, b = int(first), int(last)
    if not 1 <= a <= b:
        raise FlagError(f"--profile-steps: expected 1 <= A <= B, got {a}:{b}")
    return a, b
