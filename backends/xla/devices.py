"""CPU devices for the XLA backend, and the JAX mesh of a meshir mesh.

XLA reads its device count from `XLA_FLAGS` once, when JAX first initialises a
backend, so `setup_cpu_devices` must run before anything asks JAX for devices.
This module does not import JAX at import time for that reason.
"""
from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from meshir.diagnostics import MeshirError
from meshir.mesh import Mesh

if TYPE_CHECKING:
    import jax

_COUNT_FLAG = "--xla_force_host_platform_device_count"
_COUNT_PATTERN = re.compile(re.escape(_COUNT_FLAG) + r"=(\d+)")


def _jax_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def setup_cpu_devices(n: int) -> None:
    """Give JAX at least `n` CPU devices: sets the device-count flag in `XLA_FLAGS`
    (keeping the other flags, and a larger count already there) and raises `NPROC`
    to at least 2n, because XLA sizes its CPU thread pool from the cores and
    collectives over more devices than threads hang (DESIGN section 9).

    Raises MeshirError when JAX is already running with fewer than `n` devices."""
    if n < 1:
        raise MeshirError(f"the device count must be at least 1, got {n}")
    if _jax_initialised():
        import jax

        have = len(jax.devices("cpu"))
        if have < n:
            raise MeshirError(
                f"JAX is already initialised with {have} CPU device{'s' if have != 1 else ''} but {n} are needed; "
                f"set up devices before the first JAX computation, or start with XLA_FLAGS={_COUNT_FLAG}={n}"
            )
        return
    flags = os.environ.get("XLA_FLAGS", "")
    match = _COUNT_PATTERN.search(flags)
    if match is None:
        flags = f"{flags} {_COUNT_FLAG}={n}".strip()
    elif int(match.group(1)) < n:
        flags = _COUNT_PATTERN.sub(f"{_COUNT_FLAG}={n}", flags)
    os.environ["XLA_FLAGS"] = flags
    nproc = os.environ.get("NPROC", "")
    if not nproc.isdigit() or int(nproc) < 2 * n:
        os.environ["NPROC"] = str(2 * n)


def jax_mesh(mesh: Mesh) -> jax.sharding.Mesh:
    """The JAX mesh with the meshir mesh's axis names and shape over the first
    mesh.size devices. Device i of the meshir mesh (row-major) is device i of JAX."""
    import jax
    import numpy as np

    devices = jax.devices()
    if len(devices) < mesh.size:
        raise MeshirError(
            f"mesh @{mesh.name} {mesh} needs {mesh.size} devices but JAX has {len(devices)}; "
            f"call meshir.backends.xla.setup_cpu_devices({mesh.size}) before JAX starts (meshir-run: --devices {mesh.size})"
        )
    return jax.sharding.Mesh(np.array(devices[: mesh.size]).reshape(mesh.shape), mesh.axis_names)
