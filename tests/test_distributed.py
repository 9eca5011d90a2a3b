"""Multi-process runs on JAX's distributed runtime: 2 processes x 4 CPU devices on
loopback (gloo collectives), the mesh's first axis across the processes, give
what one process of 8 devices gives; a checkpoint they write restores in one
process; a missing or dead peer is a clear error within the timeout, not a hang."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from meshir.tools import checkpoint, run
from meshir.tools.launch import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BLOCK = str(EXAMPLES / "transformer_block.mir")
DIGITS = str(EXAMPLES / "digits_mlp.mir")
LAUNCH = [sys.executable, "-m", "meshir.tools.launch"]
RUN = [sys.executable, "-m", "meshir.tools.run"]
STEP_LOSS = re.compile(r"step (\d+)/\d+  loss (\S+)")



def launch_two(*argv: str) -> subprocess.CompletedProcess:
    """`meshir-launch -n 2 -- meshir-run ARGV`, 4 devices a process."""
    result = subprocess.run([*LAUNCH, "-n", "2", "--", *RUN, *argv, "--devices", "4"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def of_process(text: str, index: int) -> list[str]:
    prefix = f"[{index}] "
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


def test_attention_block_on_two_processes_equals_one_process(tmp_path, capsys):
    assert run.main([BLOCK, "--backend", "xla", "--devices", "8", "--outputs", str(tmp_path / "one.npz")]) == 0
    one_process = capsys.readouterr().out
    result = launch_two(BLOCK, "--backend", "xla", "--outputs", str(tmp_path / "two.npz"))
    # Process 0 reports, as one process would; process 1 computes its shards silently.
    assert of_process(result.stdout, 0)[0] == one_process.splitlines()[0]
    assert of_process(result.stdout, 1) == []
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        for name in one.files:
            np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5)


def test_data_parallel_training_across_processes_equals_one_process(digits, tmp_path, capsys):
    """The batch split over `rows`, whose two rows are the two processes: the
    gradients' all-reduce crosses processes. Same losses step by step, same
    accuracy, same checkpoint; and the checkpoint restores in one process."""
    train = [DIGITS, "--train", "--data", digits, "--backend", "xla", "--lr", "0.01", "--layout", "batch:rows"]
    assert run.main([*train, "--steps", "5", "--devices", "8", "--checkpoint", str(tmp_path / "one")]) == 0
    one = capsys.readouterr()
    result = launch_two(*train, "--steps", "5", "--checkpoint", str(tmp_path / "two"))
    # Process 0 reports; process 1 trains alongside, silently.
    assert of_process(result.stdout, 1) == [] and not STEP_LOSS.search("\n".join(of_process(result.stderr, 1)))
    one_losses = STEP_LOSS.findall(one.err)
    two_losses = STEP_LOSS.findall("\n".join(of_process(result.stderr, 0)))
    assert [s for s, _ in one_losses] == [s for s, _ in two_losses] == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose([float(v) for _, v in two_losses], [float(v) for _, v in one_losses], atol=2e-4)
    one_metrics = json.loads(one.out.strip().splitlines()[-1])
    two_metrics = json.loads(of_process(result.stdout, 0)[-1])
    np.testing.assert_allclose(two_metrics["loss"], one_metrics["loss"], rtol=1e-5)
    assert two_metrics["accuracy"] == pytest.approx(one_metrics["accuracy"], abs=1e-6)
    one_saved, two_saved = checkpoint.load(str(tmp_path / "one")), checkpoint.load(str(tmp_path / "two"))
    assert two_saved.step == 5 and sorted(two_saved.values) == sorted(one_saved.values)
    for name, value in one_saved.values.items():
        np.testing.assert_allclose(two_saved.values[name], value, rtol=1e-5, atol=1e-6)
    # Written by two processes, restored by one.
    assert run.main([*train, "--steps", "6", "--devices", "8", "--checkpoint", str(tmp_path / "two")]) == 0
    resumed = capsys.readouterr()
    assert "at step 5" in resumed.err and json.loads(resumed.out.strip().splitlines()[-1])["step"] == 6


def test_a_peer_that_never_arrives_is_an_error_within_the_timeout():
    started = time.monotonic()
    result = subprocess.run([*RUN, BLOCK, "--backend", "xla", "--coordinator", f"127.0.0.1:{free_port()}",
                             "--num-processes", "2", "--process-id", "0", "--init-timeout", "2"],
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "error: process 0 of 2: the other processes did not all join through the coordinator" in result.stderr
    assert "within 2 s (--init-timeout)" in result.stderr and "Traceback" not in result.stderr


def test_a_peer_dying_mid_run_is_an_error_not_a_hang(digits, tmp_path):
    """Without meshir-launch to stop it: the surviving process fails its next step
    with the other process, says so, and exits 1 (no traceback, no abort)."""
    checkpoints = tmp_path / "ckpt"
    common = [*RUN, DIGITS, "--train", "--data", digits, "--backend", "xla", "--devices", "4", "--layout", "batch:rows",
              "--steps", "100000", "--checkpoint", str(checkpoints), "--checkpoint-every", "1",
              "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2", "--init-timeout", "10"]
    with open(tmp_path / "err0", "w") as err0:
        processes = [subprocess.Popen([*common, "--process-id", str(i)], stdout=subprocess.DEVNULL,
                                      stderr=err0 if i == 0 else subprocess.DEVNULL) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "checkpoint").exists():
            assert all(p.poll() is None for p in processes), (tmp_path / "err0").read_text()
            assert time.monotonic() < deadline, "training never reached its first checkpoint"
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        status = processes[0].wait(timeout=60)
        assert time.monotonic() - killed < 10 + 5  # the heartbeat timeout, at worst
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    err = (tmp_path / "err0").read_text()
    assert status == 1, err
    assert "error: process 0 of 2:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,fragment", [
    (["--coordinator", "nohostport"], "--coordinator: expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "--coordinator needs --num-processes N and --process-id I"),
    (["--num-processes", "2"], "--num-processes needs --coordinator"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "--process-id: expected 0 to 1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0", "--devices", "3"],
     "--devices 3: 2 processes of 3 devices have 6, but mesh @m <rows=2, cols=4> has 8"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "3", "--process-id", "0"], "do not split evenly over 3 processes"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0", "--backend", "tf"], "need --backend xla"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0", "--init-timeout", "0"], "--init-timeout"),
])
def test_multi_process_flag_errors(argv, fragment, capsys):
    """Checked before any process joins (so these return, in this process)."""
    assert run.main([BLOCK, "--backend", "xla", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
