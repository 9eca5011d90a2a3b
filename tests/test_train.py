"""meshir-run --train: the digits example trains to >= 95% accuracy on 8 simulated
devices; the loss curve is the same on one device and under data-parallel,
model-parallel and mixed layouts; bad training flags are diagnostics."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training
from meshir.tools import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = str(EXAMPLES / "digits_mlp.mir")



def metrics_of(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_digits_reach_95_percent_on_8_devices_data_and_model_parallel(digits, capsys):
    argv = [DIGITS, "--train", "--data", digits, "--backend", "xla", "--devices", "8", "--steps", "300", "--lr", "0.01",
            "--layout", "batch:rows,hidden:cols"]
    assert run.main(argv) == 0
    captured = capsys.readouterr()
    metrics = metrics_of(captured.out)
    assert metrics["step"] == 300 and metrics["accuracy"] >= 0.95
    assert "step 300/300" in captured.err and "examples/s" in captured.err


def loss_curve(digits: str, capsys, backend: str, mesh: str, layout: str, steps: int = 20) -> list[float]:
    """The loss of every step, recorded around the real training loop."""
    argv = [DIGITS, "--train", "--data", digits, "--backend", backend, "--steps", str(steps), "--lr", "0.01",
            "--mesh", mesh, "--layout", layout, "--devices", "8"]
    losses = recorded_training(argv).losses
    capsys.readouterr()
    return losses


@pytest.mark.parametrize("mesh,layout", [("rows:8", "batch:rows"), ("cols:8", "hidden:cols"), ("rows:2,cols:4", "batch:rows,hidden:cols")],
                         ids=["data-parallel", "model-parallel", "both"])
def test_loss_curves_equal_one_device(digits, capsys, mesh, layout):
    one = loss_curve(digits, capsys, "xla", "x:1", "batch:x")
    split = loss_curve(digits, capsys, "xla", mesh, layout)
    assert len(one) == len(split) == 20 and one[-1] < one[0]
    np.testing.assert_allclose(split, one, rtol=2e-4, atol=2e-5)


def test_reference_backend_trains_the_same_steps(digits, capsys):
    reference = loss_curve(digits, capsys, "reference", "rows:2,cols:4", "batch:rows,hidden:cols", steps=5)
    xla = loss_curve(digits, capsys, "xla", "rows:2,cols:4", "batch:rows,hidden:cols", steps=5)
    np.testing.assert_allclose(xla, reference, rtol=2e-4, atol=2e-5)


def test_batch_flag_resizes_the_batch_dimension(digits, capsys):
    assert run.main([DIGITS, "--train", "--data", digits, "--batch", "32", "--steps", "2", "--mesh", "x:1", "--layout", "batch:x"]) == 0
    assert metrics_of(capsys.readouterr().out)["step"] == 2


@pytest.mark.parametrize("extra,fragment", [
    ([], "--train needs --data"),
    (["--data", "{missing}"], "--data"),
    (["--data", "{bad_keys}"], "has no array 'x_train'"),
    (["--data", "{digits}", "--optimizer", "rmsprop"], "kind"),
    (["--data", "{digits}", "--eval", "@nope"], "no function @nope"),
])
def test_training_flag_errors(digits, tmp_path, capsys, extra, fragment):
    np.savez(tmp_path / "bad.npz", a_train=np.zeros(3))
    paths = {"missing": str(tmp_path / "none.npz"), "bad_keys": str(tmp_path / "bad.npz"), "digits": digits}
    assert run.main([DIGITS, "--train", *[e.format(**paths) for e in extra]]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
