"""`meshir-run --train` in-process, recording the loss of every step around the
real training loop (the tests' one way to read a loss curve)."""
from __future__ import annotations

import pytest

from meshir.tools import run

TRAIN_LOOP = run.train_loop


class Recorder:
    """The real runner, recording every train step's loss; kept after the run to
    read the variables it ended with."""

    def __init__(self, runner, entry: str):
        self.runner, self.entry, self.losses = runner, entry, []

    def __call__(self, name, inputs):
        outputs = self.runner(name, inputs)
        if name == self.entry:
            self.losses.append(float(next(iter(outputs.values()))))
        return outputs

    def state(self):
        return self.runner.state()

    def load_state(self, values):
        self.runner.load_state(values)


def recorded_training(argv: list[str], evaluate: bool = False) -> Recorder:
    """Run `meshir-run ARGV` (a --train run), which must succeed; without `evaluate`
    the evaluation function is skipped. A MonkeyPatch context of its own lets
    module-scoped fixtures call it too."""
    recorders: list[Recorder] = []

    def recording_loop(runner, module, entry, eval_name, dataset, *args):
        recorders.append(Recorder(runner, entry))
        return TRAIN_LOOP(recorders[-1], module, entry, eval_name if evaluate else None, dataset, *args)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(run, "train_loop", recording_loop)
        status = run.main(argv)
    assert status == 0
    return recorders[0]
