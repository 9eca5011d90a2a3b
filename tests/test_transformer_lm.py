"""examples/transformer_lm.mir trains through `meshir-run --train` on the xla
backend: its loss goes down on benchmarks/lm_data.py's repeated patterns, and the
loss curve on one device is the curve under data-parallel and mixed layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training

REPO = Path(__file__).resolve().parent.parent
MODEL = str(REPO / "examples" / "transformer_lm.mir")
STEPS = 5



def loss_curve(data: str, monkeypatch: pytest.MonkeyPatch, mesh: str, layout: str) -> list[float]:
    """The loss of every step, recorded around the real training loop."""
    argv = [MODEL, "--train", "--data", data, "--backend", "xla", "--devices", "8", "--steps", str(STEPS),
            "--lr", "0.003", "--mesh", mesh, "--layout", layout]
    return recorded_training(argv).losses


@pytest.fixture(scope="module")
def one_device_curve(patterns) -> list[float]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return loss_curve(patterns, monkeypatch, "x:1", "batch:x")


def test_loss_goes_down_on_one_device(one_device_curve):
    assert len(one_device_curve) == STEPS
    assert one_device_curve[0] == pytest.approx(np.log(128), rel=0.02)  # near-uniform predictions at the start
    assert one_device_curve[-1] < one_device_curve[0]


@pytest.mark.parametrize("mesh,layout", [("all:8", "batch:all"), ("rows:2,cols:4", "batch:rows,heads:cols,hidden:cols")],
                         ids=["data-parallel", "mixed"])
def test_loss_curve_equals_one_device(patterns, one_device_curve, monkeypatch, mesh, layout):
    split = loss_curve(patterns, monkeypatch, mesh, layout)
    np.testing.assert_allclose(split, one_device_curve, rtol=2e-4, atol=2e-5)
