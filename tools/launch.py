"""meshir-launch: start the N processes of a multi-process run on this machine.

    meshir-launch -n 2 -- meshir-run model.mir --backend xla --devices 4

Process I runs the command followed by `--coordinator 127.0.0.1:PORT
--num-processes N --process-id I`, PORT a free loopback port. Their output is
streamed line by line, each line prefixed with `[I] `. If a process fails, the
others are stopped at once; the exit status is then the failed process's (128 +
the signal for one killed by a signal), and a last line names it and says why.
For trying multi-process runs on one machine, and for tests; on several hosts,
start `meshir-run` on each with the same `--coordinator` (README, "Running on
several hosts").
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from meshir.diagnostics import FlagError

from .common import EXIT_OK, run_main

LOOPBACK = "127.0.0.1"
USAGE = "usage: meshir-launch -n N -- COMMAND [ARGS...]"
# A process writes nothing more once it and its pipes are gone; this bounds the wait
# for the last lines of one whose pipes a stray child still holds.
_DRAIN_SECONDS = 5.0


@dataclass
class Worker:
    """One started process and the threads copying its output."""

    index: int
    process: subprocess.Popen
    pumps: list[threading.Thread]


def parse_command_line(argv: list[str]) -> tuple[int, list[str]]:
    """`-n N` (or `--num-processes N`) before `--`, the command after it."""
    if "--" not in argv:
        raise FlagError(f"give the command to run after '--'\n{USAGE}")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    if len(options) != 2 or options[0] not in ("-n", "--num-processes"):
        raise FlagError(f"expected only -n N before '--', got {' '.join(options) or 'nothing'}\n{USAGE}")
    if not options[1].isdigit() or int(options[1]) < 1:
        raise FlagError(f"-n: expected a number of processes >= 1, got '{options[1]}'")
    if not command:
        raise FlagError(f"no command after '--'\n{USAGE}")
    return int(options[1]), command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _die_with_launcher() -> None:
    """In the child, before the command starts (Linux): the kernel kills it when the
    launcher dies, even by SIGKILL, so no process outlives a run."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def start(command: list[str], count: int, port: int) -> list[subprocess.Popen]:
    """All the processes, each in a session of its own (so that stopping one stops
    whatever it started), with unbuffered Python output (so lines stream as written)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen] = []
    for index in range(count):
        argv = [*command, "--coordinator", f"{LOOPBACK}:{port}", "--num-processes", str(count), "--process-id", str(index)]
        try:
            processes.append(subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
                start_new_session=True, preexec_fn=_die_with_launcher if sys.platform == "linux" else None))
        except OSError as exc:
            stop(processes)
            raise FlagError(f"cannot start '{command[0]}': {exc.strerror or exc}") from None
    return processes


def _pump(source: BinaryIO, sink: BinaryIO, prefix: bytes, lock: threading.Lock) -> None:
    for line in iter(source.readline, b""):
        with lock:
            sink.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
            sink.flush()
    source.close()


def stream(processes: list[subprocess.Popen]) -> list[Worker]:
    """Copy each process's stdout and stderr to ours, line by line, prefixed `[I] `."""
    lock = threading.Lock()
    workers = []
    for index, process in enumerate(processes):
        prefix = f"[{index}] ".encode()
        pumps = [threading.Thread(target=_pump, args=(source, sink, prefix, lock), daemon=True)
                 for source, sink in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer))]
        for pump in pumps:
            pump.start()
        workers.append(Worker(index, process, pumps))
    return workers


def stop(processes: list[subprocess.Popen]) -> None:
    """Kill every process still running, with whatever it started, and reap them.
    SIGKILL, not SIGTERM: JAX takes SIGTERM as a preemption notice and runs on, and a
    process waiting on a dead peer could not act on it anyway."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass
    for process in processes:
        process.wait()


def describe(status: int) -> str:
    if status < 0:
        return f"was killed by signal {signal.Signals(-status).name}"
    return f"exited with status {status}"


def _wait(worker: Worker, ended: queue.Queue[Worker]) -> None:
    worker.process.wait()
    ended.put(worker)


def supervise(workers: list[Worker]) -> int:
    """Wait for every process to succeed, or for the first to fail; then stop the
    others and return the exit status. A thread waits on each process, so the first
    to end is seen first: a peer that fails because another died comes second."""
    ended: queue.Queue[Worker] = queue.Queue()
    for worker in workers:
        threading.Thread(target=_wait, args=(worker, ended), daemon=True).start()
    for _ in workers:
        failed = ended.get()
        if failed.process.returncode == 0:
            continue
        running = [w.process for w in workers if w.process.poll() is None]
        stop(running)
        _drain(workers)
        status = failed.process.returncode
        others = f"; stopped the {len(running)} still running" if running else ""
        print(f"meshir-launch: process {failed.index} (pid {failed.process.pid}) {describe(status)}{others}",
              file=sys.stderr, flush=True)
        return status if status > 0 else 128 - status
    _drain(workers)
    return 0


def _drain(workers: list[Worker]) -> None:
    deadline = time.monotonic() + _DRAIN_SECONDS
    for worker in workers:
        for pump in worker.pumps:
            pump.join(max(0.0, deadline - time.monotonic()))


def _exit_on_sigterm(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through `main`, which stops the processes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        if argv in (["-h"], ["--help"]):
            print(__doc__.strip())
            return EXIT_OK
        count, command = parse_command_line(argv)
        processes = start(command, count, free_port())
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            return supervise(stream(processes))
        finally:
            stop(processes)  # after Ctrl-C or SIGTERM too
            signal.signal(signal.SIGTERM, previous)

    return run_main("meshir-launch", body)


if __name__ == "__main__":
    sys.exit(main())
