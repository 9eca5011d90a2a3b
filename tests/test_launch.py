"""meshir-launch: N local processes with the coordinator flags, their output
prefixed with the process number, and a fast, named failure when one dies, with no
process left behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LAUNCH = [sys.executable, "-m", "meshir.tools.launch"]
RUN = [sys.executable, "-m", "meshir.tools.run"]
# A stand-in process: prints its process id (the last flag meshir-launch adds),
# then fails with status 3 as process 1, or sleeps as the others.
WORKER = """
import sys, time
me = sys.argv[-1]
print("hello from", me, flush=True)
print("note from", me, file=sys.stderr, flush=True)
if "fail" in sys.argv and me == "1":
    time.sleep(0.5)
    sys.exit(3)
if "fail" in sys.argv:
    time.sleep(60)
"""


def launch(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCH, *argv], capture_output=True, text=True, timeout=timeout)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    except OSError:
        return []


def alive(pid: int, command: list[str]) -> bool:
    """Whether process `pid` still runs `command` (a pid can be reused)."""
    return command_line(pid) == command


def test_output_is_streamed_with_the_process_number():
    result = launch("-n", "2", "--", sys.executable, "-c", WORKER)
    assert result.returncode == 0, result.stderr
    assert "[0] hello from 0" in result.stdout and "[1] hello from 1" in result.stdout
    assert "[0] note from 0" in result.stderr and "[1] note from 1" in result.stderr


def test_each_process_gets_the_coordinator_flags():
    show = "import sys; print(' '.join(sys.argv[1:]))"
    result = launch("-n", "3", "--", sys.executable, "-c", show)
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    coordinator = lines[0].split()[2]
    assert coordinator.startswith("127.0.0.1:")
    assert lines == [f"[{i}] --coordinator {coordinator} --num-processes 3 --process-id {i}" for i in range(3)]


def test_a_failed_process_stops_the_others_and_is_named():
    started = time.monotonic()
    result = launch("-n", "2", "--", sys.executable, "-c", WORKER, "fail")
    assert time.monotonic() - started < 20  # not the 60 s process 0 would sleep
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1].startswith("meshir-launch: process 1 (pid ")
    assert "exited with status 3; stopped the 1 still running" in result.stderr


@pytest.mark.parametrize("argv,fragment", [
    (["-n", "2", "echo"], "after '--'"),
    (["-n", "0", "--", "echo"], "-n: expected a number of processes >= 1"),
    (["--", "echo"], "expected only -n N"),
    (["-n", "2", "--"], "no command after '--'"),
    (["-n", "2", "--", "/no/such/meshir-command"], "cannot start '/no/such/meshir-command'"),
])
def test_usage_errors_exit_2(argv, fragment):
    result = launch(*argv)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr



def test_killing_a_process_mid_run_fails_the_launch_fast_and_leaves_nothing(digits, tmp_path):
    checkpoints = tmp_path / "ckpt"
    train = [*RUN, str(EXAMPLES / "digits_mlp.mir"), "--train", "--data", digits, "--backend", "xla", "--devices", "4",
             "--layout", "batch:rows", "--steps", "100000", "--checkpoint", str(checkpoints), "--checkpoint-every", "1"]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        launcher = subprocess.Popen([*LAUNCH, "-n", "2", "--", *train], stdout=out, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 120
        # A checkpoint on disk: both processes are past their first steps.
        while not (checkpoints / "checkpoint").exists():
            assert launcher.poll() is None, (tmp_path / "err").read_text()
            assert time.monotonic() < deadline, "training never reached its first checkpoint"
            time.sleep(0.2)
        workers = {pid: command_line(pid) for pid in children_of(launcher.pid)}
        assert len(workers) == 2
        victim = next(pid for pid, command in workers.items() if command[-2:] == ["--process-id", "1"])
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        status = launcher.wait(timeout=30)
        assert time.monotonic() - killed < 10
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    err = (tmp_path / "err").read_text()
    assert status == 128 + signal.SIGKILL
    assert f"meshir-launch: process 1 (pid {victim}) was killed by signal SIGKILL" in err
    assert not [pid for pid, command in workers.items() if alive(pid, command)]
