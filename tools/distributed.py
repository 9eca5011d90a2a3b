"""Multi-process runs on JAX's distributed runtime (`meshir-run --coordinator HOST:PORT
--num-processes N --process-id I`; DESIGN section 6).

Every process runs the same program on the same global inputs (the same `--seed`,
`--inputs` or `--data`). JAX's device list spans all processes, process-major, so
the mesh built over it (backends/xla/devices.py `jax_mesh`) splits its first axis
across processes first: `rows:2,cols:4` over 2 processes of 4 devices puts one row
on each, and only what the layout moves along `rows` crosses processes. Each
process places just its own devices' shards of a global value (`global_arrays`)
and reads a result back whole (`host_value`, a collective every process joins);
process 0 alone prints results and writes files. Collectives between processes
go through gloo on CPUs (JAX's default there) and NCCL on GPUs.

Timeouts, not hangs: a process whose peers do not all arrive within the timeout
(`--init-timeout`) exits with a clear message. One whose peer dies mid-run fails
its next step with the others as soon as gloo sees the connection close, and
exits at once with a clear message; should nothing notice, JAX's heartbeat check
stops it after the same timeout.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from meshir.diagnostics import FlagError, MeshirError, RuntimeFailure
from meshir.mesh import Mesh

if TYPE_CHECKING:
    import jax

    from meshir.backends.xla.compile import Port

DEFAULT_INIT_TIMEOUT = 30
# JAX's own initialization timeout aborts the process with a cryptic message; it
# is set this much later than meshir's watchdog, which exits with a clear one.
_JAX_TIMEOUT_MARGIN = 60


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-process run."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout: int

    @property
    def is_primary(self) -> bool:
        """Process 0 prints the results and writes the files."""
        return self.process_id == 0


def cluster_from_flags(coordinator: str | None, num_processes: int | None, process_id: int | None,
                       init_timeout: int | None) -> Cluster | None:
    """The checked `--coordinator`, `--num-processes`, `--process-id` and
    `--init-timeout` flags; None for a run in one process."""
    if coordinator is None:
        given = [flag for flag, value in (("--num-processes", num_processes), ("--process-id", process_id),
                                          ("--init-timeout", init_timeout)) if value is not None]
        if given:
            raise FlagError(f"{given[0]} needs --coordinator HOST:PORT (a multi-process run)")
        return None
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlagError(f"--coordinator: expected HOST:PORT, e.g. 10.0.0.1:1234, got '{coordinator}'")
    if num_processes is None or process_id is None:
        raise FlagError("--coordinator needs --num-processes N and --process-id I")
    if num_processes < 1:
        raise FlagError(f"--num-processes: expected at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise FlagError(f"--process-id: expected 0 to {num_processes - 1} (--num-processes {num_processes}), got {process_id}")
    timeout = DEFAULT_INIT_TIMEOUT if init_timeout is None else init_timeout
    if timeout < 1:
        raise FlagError(f"--init-timeout: expected a number of seconds >= 1, got {timeout}")
    return Cluster(coordinator, num_processes, process_id, timeout)


def local_device_count(cluster: Cluster, mesh: Mesh | None, devices_flag: int | None) -> int:
    """How many devices this process brings: `--devices`, or its share of the mesh.
    Every device of every process must be in the mesh, or a process would hold no
    shard of the values it is asked to compute."""
    if devices_flag is not None and devices_flag < 1:
        raise FlagError(f"--devices: expected at least 1, got {devices_flag}")
    if mesh is None:  # a function without a mesh runs on one device of each process
        return devices_flag or 1
    if devices_flag is None:
        if mesh.size % cluster.num_processes:
            raise FlagError(f"--num-processes {cluster.num_processes}: mesh @{mesh.name} {mesh} has {mesh.size} devices, "
                            f"which do not split evenly over {cluster.num_processes} processes")
        return mesh.size // cluster.num_processes
    if devices_flag * cluster.num_processes != mesh.size:
        raise FlagError(f"--devices {devices_flag}: {cluster.num_processes} processes of {devices_flag} devices have "
                        f"{devices_flag * cluster.num_processes}, but mesh @{mesh.name} {mesh} has {mesh.size}; in a "
                        "multi-process run --devices counts one process's devices, and the mesh must span them all")
    return devices_flag


def join(cluster: Cluster, mesh: Mesh | None, devices_flag: int | None) -> int:
    """Set up this process's devices and join the others through the coordinator;
    returns the number of devices of all processes together. Must run before
    anything asks JAX for devices."""
    from meshir.backends.xla import setup_cpu_devices

    local = local_device_count(cluster, mesh, devices_flag)
    setup_cpu_devices(local)
    import jax

    # Exactly this many: a larger count inherited through XLA_FLAGS would give this
    # process devices outside the mesh, and it would hold no shard of anything.
    jax.config.update("jax_num_cpu_devices", local)
    _keep_stdout_for_results()
    watchdog = threading.Timer(cluster.timeout, _give_up_joining, args=(cluster,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                                   initialization_timeout=cluster.timeout + _JAX_TIMEOUT_MARGIN,
                                   heartbeat_timeout_seconds=cluster.timeout, shutdown_timeout_seconds=cluster.timeout)
        return jax.device_count()  # starts the backend: the processes exchange their devices here
    except jax.errors.JaxRuntimeError as exc:  # e.g. process 0 cannot serve on the coordinator's port
        raise RuntimeFailure(f"process {cluster.process_id} of {cluster.num_processes}: cannot join the run through "
                             f"the coordinator {cluster.coordinator} ({_first_line(exc)})") from None
    finally:
        watchdog.cancel()


def _give_up_joining(cluster: Cluster) -> None:
    # The main thread is inside JAX waiting for the peers; exiting from here is the
    # only way out that says why.
    sys.stderr.write(f"error: process {cluster.process_id} of {cluster.num_processes}: the other processes did not all "
                     f"join through the coordinator {cluster.coordinator} within {cluster.timeout} s (--init-timeout); "
                     f"start all {cluster.num_processes} with the same --coordinator and --num-processes, and check "
                     "that process 0 is running and its address is reachable\n")
    sys.stderr.flush()
    os._exit(1)


def joined() -> bool:
    """Whether this process joined a multi-process run."""
    if "jax" not in sys.modules:  # never imported, so never initialised
        return False
    import jax

    return jax.distributed.is_initialized()


def leave(status: int) -> NoReturn:
    """Exit a failed process of a multi-process run at once. On a normal exit JAX
    waits for every process at a shutdown barrier, which a failed run's peers never
    reach: it would time out and then abort with a stack dump."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@contextlib.contextmanager
def peer_failures_reported(cluster: Cluster) -> Iterator[None]:
    """A step with the other processes that fails (gloo: "Connection closed by peer")
    means a peer has stopped or become unreachable: a runtime failure, said plainly,
    not a bug in meshir."""
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as exc:
        raise RuntimeFailure(f"process {cluster.process_id} of {cluster.num_processes}: a step with the other processes "
                             f"failed, so one of them has probably stopped or become unreachable ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _keep_stdout_for_results() -> None:
    """Gloo announces each connection it makes on the process's standard output.
    meshir's results (outputs, the metrics line) own stdout, so from here on native
    code writes to stderr, and Python's sys.stdout to the original stdout."""
    sys.stdout.flush()
    results = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(results, "w", encoding=sys.stdout.encoding, errors=sys.stdout.errors, buffering=1)


def global_arrays(ports: Sequence[Port], values: Mapping[str, Any], device_mesh: jax.sharding.Mesh | None) -> dict[str, Any]:
    """`values` (keyed by port name) as global arrays laid out as the ports say, this
    process placing only its own devices' shards. Global jax.Arrays (variables after a
    step) pass as they are; so does everything of a program without a mesh, which
    each process runs alone."""
    import jax
    from jax.sharding import NamedSharding

    from meshir.backends.xla import x64
    from meshir.interpreter import to_argument

    names = [p.name for p in ports]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise MeshirError(f"no argument or variable '{unknown[0]}' (expected: {', '.join(names) or 'none'})")
    placed: dict[str, Any] = {}
    for port in ports:
        if port.name not in values:
            raise MeshirError(f"missing input '{port.name}' of type {port.type}")
        value = values[port.name]
        if device_mesh is None or isinstance(value, jax.Array):
            placed[port.name] = value
            continue
        host = to_argument(value, port.type, f"'{port.name}'")
        with x64():  # an i64 or f64 value keeps its width
            placed[port.name] = jax.make_array_from_callback(host.shape, NamedSharding(device_mesh, port.spec),
                                                             lambda index, host=host: host[index])
    return placed


def host_value(value: Any) -> np.ndarray:
    """The whole value of a global array on this process. For an array split over
    several processes this is a collective: every process must ask for it."""
    import jax

    if isinstance(value, jax.Array) and not (value.is_fully_addressable or value.is_fully_replicated):
        from jax.experimental import multihost_utils

        from meshir.backends.xla import x64

        with x64():
            return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)
