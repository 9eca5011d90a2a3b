"""meshir-run --train --backend tf: the digits example trains on 8 logical CPU
devices of one TF Session with the same loss curve as the xla backend, under
data-parallel, model-parallel and mixed layouts and on one device; the train
step and @accuracy alternate with the weights carried between their Sessions;
the TFRunner's state round-trips."""
import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from meshir.diagnostics import FlagError
from meshir.tools import run
from meshir.tools.runners import TFRunner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = str(EXAMPLES / "digits_mlp.mir")
MIXED = ("rows:2,cols:4", "batch:rows,hidden:cols")
LAYOUTS = {
    "data-parallel": ("rows:8", "batch:rows"),
    "model-parallel": ("cols:8", "hidden:cols"),
    "mixed": MIXED,
    "one-device": ("x:1", "batch:x"),
}
EVAL_STEPS, EVAL_EVERY = 100, 25


@dataclass
class Training:
    """What one `meshir-run --train` recorded: the loss of every step, the final
    metrics, the evaluations printed on the way, and the runner it trained."""

    losses: list[float] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    evaluations: list[str] = field(default_factory=list)
    runner: object = None


def train(data: str, backend: str, mesh: str, layout: str, steps: int, eval_every: int = 0) -> Training:
    """Run the real `meshir-run --train`, recording around its training loop as
    tests/test_train.py does (module-scoped fixtures cannot take pytest's
    function-scoped monkeypatch and capsys, hence the explicit contexts)."""
    record = Training()
    original = run.train_loop

    def recording_loop(runner, module, entry, eval_name, dataset, *args):
        record.runner = runner

        def recording(name, inputs):
            outputs = runner(name, inputs)
            if name == entry:
                record.losses.append(float(next(iter(outputs.values()))))
            return outputs
        return original(recording, module, entry, eval_name, dataset, *args)

    argv = [DIGITS, "--train", "--data", data, "--backend", backend, "--steps", str(steps), "--lr", "0.01",
            "--mesh", mesh, "--layout", layout, "--devices", "8", "--eval-every", str(eval_every)]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(run, "train_loop", recording_loop)
        assert run.main(argv) == 0, err.getvalue()
    record.metrics = json.loads(out.getvalue().strip().splitlines()[-1])
    record.evaluations = [line for line in err.getvalue().splitlines() if ": accuracy " in line]
    return record



@pytest.fixture(scope="module")
def evaluated(digits) -> dict[str, Training]:
    """100 steps on the mixed layout, @accuracy every 25, on both backends."""
    return {backend: train(digits, backend, *MIXED, EVAL_STEPS, EVAL_EVERY) for backend in ("tf", "xla")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loss_curve_equals_the_xla_backend(digits, evaluated, layout):
    if LAYOUTS[layout] == MIXED:  # the first 20 steps of the evaluated run: evaluation does not change training
        tf_losses, xla_losses = (evaluated[b].losses[:20] for b in ("tf", "xla"))
    else:
        tf_losses, xla_losses = (train(digits, b, *LAYOUTS[layout], steps=20).losses for b in ("tf", "xla"))
    assert len(tf_losses) == 20 and tf_losses[-1] < tf_losses[0]
    np.testing.assert_allclose(tf_losses, xla_losses, rtol=2e-4, atol=2e-5)


def test_accuracy_between_steps_reflects_the_trained_weights(evaluated):
    tf_run, xla_run = evaluated["tf"], evaluated["xla"]
    assert isinstance(tf_run.runner, TFRunner)
    assert [line.split(":")[0] for line in tf_run.evaluations] == ["step 25", "step 50", "step 75"]
    assert tf_run.evaluations == xla_run.evaluations
    tf_accuracies = [float(line.split()[-1]) for line in tf_run.evaluations] + [tf_run.metrics["accuracy"]]
    assert tf_accuracies[0] > 0.5 and tf_accuracies[-1] > 0.9  # chance is 0.1
    assert tf_run.metrics["accuracy"] == pytest.approx(xla_run.metrics["accuracy"], abs=1e-6)
    np.testing.assert_allclose(tf_run.losses, xla_run.losses, rtol=2e-4, atol=2e-5)


def test_trained_variables_equal_the_xla_backend(evaluated):
    tf_state, xla_state = evaluated["tf"].runner.state(), evaluated["xla"].runner.state()
    assert set(tf_state) == set(xla_state) and {"w1", "b1", "w2", "b2"} <= set(tf_state)
    for name, value in xla_state.items():
        np.testing.assert_allclose(tf_state[name], value, rtol=2e-3, atol=2e-5, err_msg=name)


def test_state_round_trips_through_the_runner(digits, evaluated):
    runner = evaluated["tf"].runner
    with np.load(digits) as data:
        batch = {"x": data["x_test"][:64], "y": data["y_test"][:64]}
    saved = runner.state()
    accuracy = runner("accuracy", batch)["accuracy"]
    runner("loss", batch)
    assert not np.array_equal(runner.state()["w1"], saved["w1"])  # a train step moved the weights
    runner.load_state(saved)
    for name, value in runner.state().items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    assert runner("accuracy", batch)["accuracy"] == accuracy

    runner.load_state({"b2": np.zeros(10, np.float32)})  # only some: the others keep their values
    partly = runner.state()
    np.testing.assert_array_equal(partly["b2"], np.zeros(10, np.float32))
    np.testing.assert_array_equal(partly["w1"], saved["w1"])
    with pytest.raises(FlagError, match="state names @nope"):
        runner.load_state({"nope": np.zeros(1)})
    runner.load_state(saved)
