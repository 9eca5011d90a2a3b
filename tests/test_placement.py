"""meshir-run --report: where the ops and variables of the compiled function live,
read back from the XLA executable and the placed TF graph. Per-device shapes are
worked out by hand from each layout; the report goes to standard error and the
run's own output is unchanged."""
from pathlib import Path

import pytest

from meshir.tools import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.mir")  # mesh rows=2 x cols=2; batch over rows, hidden over cols
DIGITS = str(EXAMPLES / "digits_mlp.mir")


def report(argv: list[str], capsys) -> tuple[str, str]:
    assert run.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_xla_report_reads_each_argument_placement_from_the_executable(capsys):
    out, err = report([MLP, "--backend", "xla", "--devices", "4", "--report"], capsys)
    assert "mesh rows=2 x cols=2 on cpu:0-3:" in err
    assert "are one XLA executable that every device above runs on its own shards; host callbacks in it: none" in err
    assert "%x: f32[batch=64, pixels=784] -> f32[batch=32, pixels=784] on cpu:0-3, device memory" in err
    assert "@w1: f32[pixels=784, hidden=512] -> f32[pixels=784, hidden=256] on cpu:0-3, device memory" in err
    assert "@w2: f32[hidden=512, classes=10] -> f32[hidden=256, classes=10] on cpu:0-3, device memory" in err
    assert out.startswith("%loss : f32[] = ") and "placement" not in out


def test_xla_report_follows_the_layout_flag(capsys):
    _, err = report([MLP, "--backend", "xla", "--devices", "8", "--mesh", "all:8", "--layout", "batch:all", "--report"], capsys)
    assert "mesh all=8 on cpu:0-7:" in err
    assert "%x: f32[batch=64, pixels=784] -> f32[batch=8, pixels=784] on cpu:0-7" in err
    assert "@w1: f32[pixels=784, hidden=512] -> f32[pixels=784, hidden=512] on cpu:0-7" in err  # replicated


def test_tf_report_counts_nodes_per_device_and_places_every_variable_slice(capsys):
    _, err = report([MLP, "--backend", "tf", "--report"], capsys)
    lines = err.splitlines()
    per_device = [line.strip() for line in lines if line.strip().startswith("/device:CPU:") and line.strip()[-1].isdigit()]
    assert [line.split(":")[2] for line in per_device] == ["0", "1", "2", "3"]
    assert all(int(line.rsplit(": ", 1)[1]) > 50 for line in per_device)
    assert "@w1: f32[pixels=784, hidden=512] -> f32[pixels=784, hidden=256] on 4 devices: /device:CPU:0-3" in err
    # Feeds, their split into per-device blocks and the fetched outputs are placed on
    # the host explicitly: TensorFlow is left to place nothing.
    assert "  nodes with no device (TensorFlow would place them itself): none" in lines


def test_reference_report_says_it_runs_on_the_host(capsys):
    _, err = report([MLP, "--report"], capsys)
    assert "on reference: the numpy interpreter runs every op on the host" in err


def test_train_report_shows_the_train_step_with_its_optimizer_slots(digits, capsys):
    _, err = report([DIGITS, "--train", "--data", digits, "--backend", "xla", "--devices", "8", "--steps", "2",
                     "--report"], capsys)
    assert "placement of @loss on xla:" in err and "mesh rows=2 x cols=4 on cpu:0-7:" in err
    for slot in ("@w1.m", "@w1.v", "@step"):
        assert f"    {slot}: " in err
    assert "@w1: f32[pixels=64, hidden=128] -> f32[pixels=64, hidden=32] on cpu:0-7, device memory" in err


@pytest.mark.parametrize("backend", ["xla", "tf"])
def test_report_of_a_bad_layout_is_the_usual_diagnostic(backend, capsys):
    assert run.main([MLP, "--backend", backend, "--devices", "4", "--layout", "hidden:nowhere", "--report"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err and "placement" not in err
