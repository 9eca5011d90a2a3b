"""meshir-run --train --checkpoint: a checkpoint saved on a 2x4 mesh restores onto
one device and a 2x2 mesh with the same values; resuming gives the losses of a run
that never stopped; bf16 and f32 checkpoints convert into each other's modules; a
writer killed mid-save leaves the last checkpoint loadable; a checkpoint that does
not fit the module is a diagnostic."""
import json
import os
import shutil
import stat
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tests.training import Recorder, recorded_training
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.tools import checkpoint, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = str(EXAMPLES / "digits_mlp.mir")
MESH_2X4 = ["--mesh", "rows:2,cols:4", "--layout", "batch:rows,hidden:cols"]
MESH_2X2 = ["--mesh", "rows:2,cols:2", "--layout", "batch:rows,hidden:cols"]
ONE_DEVICE = ["--mesh", "x:1", "--layout", "batch:x"]


def train(monkeypatch, model: str, digits: str, steps: int, *flags: str, backend: str = "xla") -> Recorder:
    argv = [model, "--train", "--data", digits, "--backend", backend, "--devices", "8", "--steps", str(steps),
            "--lr", "0.01", *flags]
    return recorded_training(argv, evaluate=True)



@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory) -> tuple[Path, list[float]]:
    """Five steps on a 2x4 mesh, checkpointed every 2 steps and at the end."""
    directory = tmp_path_factory.mktemp("saved") / "ckpt"
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder = train(monkeypatch, DIGITS, digits, 5, *MESH_2X4, "--checkpoint", str(directory), "--checkpoint-every", "2")
    return directory, recorder.losses


@pytest.fixture(scope="module")
def unbroken(digits) -> list[float]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return train(monkeypatch, DIGITS, digits, 10, *MESH_2X4).losses


def copy_of(directory: Path, tmp_path: Path) -> str:
    return str(shutil.copytree(directory, tmp_path / "copy"))


def test_saves_every_n_steps_and_at_the_end_keeping_the_last_two(saved):
    directory, _ = saved
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint", "ckpt-4", "ckpt-5"]
    metadata = json.loads((directory / "ckpt-5" / "metadata.json").read_text())
    assert metadata["step"] == 5
    assert metadata["variables"]["w1.m"] == {"shape": [64, 128], "dtype": "f32", "file": "w1.m.npy"}
    assert checkpoint.load(str(directory)).values["step"] == 5


def test_checkpoints_get_the_modes_the_umask_gives(saved):
    """Staged in private temporary folders, the saved folder and index still end up
    readable as a plain mkdir() and open() would leave them."""
    directory, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((directory / "ckpt-5").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((directory / "checkpoint").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("mesh", [ONE_DEVICE, MESH_2X2], ids=["one-device", "2x2"])
def test_a_2x4_checkpoint_restores_onto_other_meshes(saved, digits, tmp_path, monkeypatch, capsys, mesh):
    directory, losses = saved
    expected = checkpoint.load(str(directory)).values
    # --steps 5 on a step-5 checkpoint restores and trains no further.
    restored = train(monkeypatch, DIGITS, digits, 5, *mesh, "--checkpoint", copy_of(directory, tmp_path)).state()
    assert restored.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["loss"] == losses[-1]


@pytest.mark.parametrize("mesh", [MESH_2X4, ONE_DEVICE], ids=["same-mesh", "one-device"])
def test_resuming_gives_the_losses_of_an_unbroken_run(saved, unbroken, digits, tmp_path, monkeypatch, mesh):
    directory, first_five = saved
    last_five = train(monkeypatch, DIGITS, digits, 10, *mesh, "--checkpoint", copy_of(directory, tmp_path)).losses
    assert len(first_five) == len(last_five) == 5
    np.testing.assert_allclose(first_five + last_five, unbroken, rtol=2e-4, atol=2e-5)


def bf16_digits(tmp_path: Path) -> str:
    """The digits model computing in bf16 throughout, its variables declared bf16."""
    text = Path(DIGITS).read_text().replace("f32", "bf16").replace("{dim = classes=10}", "{dim = classes=10, dtype = bf16}")
    path = tmp_path / "digits_bf16.mir"
    path.write_text(text)
    return str(path)


def test_bf16_checkpoint_fine_tunes_in_f32_and_back(digits, tmp_path, monkeypatch):
    bf16_model = bf16_digits(tmp_path)
    low, high, back = (str(tmp_path / name) for name in ("bf16", "f32", "bf16_again"))
    on_reference = dict(backend="reference")
    train(monkeypatch, bf16_model, digits, 3, *ONE_DEVICE, "--checkpoint", low, **on_reference)
    saved_bf16 = checkpoint.load(low).values
    assert saved_bf16["w1"].dtype == ml_dtypes.bfloat16
    assert np.load(Path(low) / "ckpt-3" / "w1.npy").dtype == np.uint16  # its bits: .npy has no bfloat16

    shutil.copytree(low, high)
    widened = train(monkeypatch, DIGITS, digits, 3, *ONE_DEVICE, "--checkpoint", high, **on_reference).state()
    for name, value in saved_bf16.items():
        assert widened[name].dtype == (np.int32 if name == "step" else np.float32)
        np.testing.assert_array_equal(widened[name], value.astype(widened[name].dtype), err_msg=name)
    train(monkeypatch, DIGITS, digits, 5, *ONE_DEVICE, "--checkpoint", high, **on_reference)
    saved_f32 = checkpoint.load(high).values
    assert saved_f32["w1"].dtype == np.float32 and saved_f32["step"] == 5

    shutil.copytree(high, back)
    narrowed = train(monkeypatch, bf16_model, digits, 5, *ONE_DEVICE, "--checkpoint", back, **on_reference).state()
    assert narrowed["w1"].dtype == ml_dtypes.bfloat16
    assert not np.array_equal(narrowed["w1"].astype(np.float32), saved_f32["w1"])  # f32 training left bits bf16 drops
    for name, value in saved_f32.items():
        np.testing.assert_array_equal(narrowed[name], value.astype(narrowed[name].dtype), err_msg=name)


SAVER = """
import sys
import numpy as np
from meshir.tools import checkpoint

values = {f"big{i}": np.full(1 << 20, i, np.float32) for i in range(48)}
checkpoint.save(sys.argv[1], 2, values, loss=2.0)
"""


def wait_for_partial_save(directory: Path, writer: subprocess.Popen) -> Path:
    """The writer's temporary folder, once it holds a first variable file."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for staging in directory.glob(".saving-*"):
            if any(staging.glob("*.npy")):
                return staging
        assert writer.poll() is None, "the writer finished before it could be killed"
        time.sleep(0.001)
    raise AssertionError("the writer never started writing")


def test_a_writer_killed_mid_save_leaves_the_last_checkpoint_loadable(tmp_path):
    good = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(1, np.int32)}
    checkpoint.save(str(tmp_path), 1, good, loss=1.0)
    writer = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)])
    try:
        staging = wait_for_partial_save(tmp_path, writer)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    assert writer.returncode == -signal.SIGKILL and staging.exists()

    restored = checkpoint.load(str(tmp_path))
    assert restored.step == 1 and restored.values.keys() == good.keys()
    for name, value in good.items():
        np.testing.assert_array_equal(restored.values[name], value)
    checkpoint.save(str(tmp_path), 3, good, loss=0.5)
    assert not list(tmp_path.glob(".saving-*"))
    assert checkpoint.load(str(tmp_path)).step == 3


def test_a_folder_the_index_does_not_name_is_replaced(tmp_path):
    values = {"w": np.ones(3, np.float32)}
    checkpoint.save(str(tmp_path), 1, values, loss=1.0)
    shutil.copytree(tmp_path / "ckpt-1", tmp_path / "ckpt-2")  # as if a crash came between rename and index
    checkpoint.save(str(tmp_path), 2, {"w": np.zeros(3, np.float32)}, loss=0.5)
    np.testing.assert_array_equal(checkpoint.load(str(tmp_path)).values["w"], np.zeros(3))


def narrower_hidden(tmp_path: Path) -> str:
    path = tmp_path / "narrow.mir"
    path.write_text(Path(DIGITS).read_text().replace("hidden=128", "hidden=96"))
    return str(path)


def corrupt_metadata(directory: Path) -> None:
    (directory / "ckpt-5" / "metadata.json").write_text('{"format": 1, "step": ')


def truncate_w1(directory: Path) -> None:
    file = directory / "ckpt-5" / "w1.npy"
    file.write_bytes(file.read_bytes()[:100])


@pytest.mark.parametrize("model,flags,damage,fragments", [
    (narrower_hidden, [], None, ["variable @b1 has shape [128]", "declares f32[hidden=96]"]),
    (None, ["--optimizer", "momentum"], None, ["has no variable @b1.momentum, which the module declares"]),
    (None, [], corrupt_metadata, ["cannot read", "ckpt-5/metadata.json"]),
    (None, [], truncate_w1, ["cannot read variable @w1", "ckpt-5/w1.npy"]),
    (None, ["--steps", "3"], None, ["--steps 3", "already at step 5"]),
], ids=["shape", "missing-variable", "corrupt-metadata", "truncated-file", "past-steps"])
def test_checkpoints_that_do_not_fit_are_diagnostics(saved, digits, tmp_path, capsys, model, flags, damage, fragments):
    directory = copy_of(saved[0], tmp_path)
    if damage is not None:
        damage(Path(directory))
    argv = [model(tmp_path) if model else DIGITS, "--train", "--data", digits, "--backend", "reference", *ONE_DEVICE,
            "--steps", "8", *flags, "--checkpoint", directory]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments), err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags,fragment", [
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint DIR"),
    (["--checkpoint-every", "0", "--checkpoint", "{folder}"], "--checkpoint-every: expected a number of steps >= 1, got 0"),
    (["--checkpoint", "{file}"], "--checkpoint: cannot create folder"),
], ids=["every-alone", "every-zero", "not-a-folder"])
def test_checkpoint_flag_errors(digits, tmp_path, capsys, flags, fragment):
    (tmp_path / "file").write_text("")
    paths = {"folder": str(tmp_path / "ckpt"), "file": str(tmp_path / "file")}
    assert run.main([DIGITS, "--train", "--data", digits, *[f.format(**paths) for f in flags]]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_a_plain_run_starts_from_the_trained_variables(saved, tmp_path, capsys):
    """meshir-run without --train reads the model's variables from the checkpoint
    (the optimizer's slots beside them are not needed) on any backend."""
    directory, _ = saved
    values = checkpoint.load(str(directory)).values
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.random((64, 64), dtype=np.float32), y=rng.integers(0, 10, 64).astype(np.int32))
    module = parse_module(Path(DIGITS).read_text(), DIGITS)
    want = Interpreter(module, {k: values[k] for k in module.variables}).run("loss", dict(np.load(tmp_path / "in.npz")))
    for backend in ("reference", "xla"):
        out = tmp_path / f"{backend}.npz"
        assert run.main([DIGITS, "--backend", backend, "--devices", "8", "--inputs", str(tmp_path / "in.npz"),
                         "--checkpoint", str(directory), "--outputs", str(out)]) == 0
        np.testing.assert_allclose(np.load(out)["loss"], want["loss"], rtol=1e-5)
    capsys.readouterr()
    assert run.main([DIGITS, "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
