"""TensorFlow, imported lazily, and the devices a TF program is placed on.

Importing TensorFlow costs ~4.5 s and ~660 MB (DESIGN section 9), so nothing
in meshir imports it until a TF program is built: `tensorflow()` does, once,
with TensorFlow's C++ start-up chatter silenced unless the user asked for it.

A mesh of N devices runs in one process on N CPU devices of a v1 `Session`
(`ConfigProto(device_count={"CPU": N})`); a SavedModel loaded into TF2 runs on
the loader's logical devices (`tf.config.set_logical_device_configuration`).
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from meshir.diagnostics import MeshirError

DEVICE_KINDS = ("CPU", "GPU")


def tensorflow() -> ModuleType:
    """The `tensorflow` module; the first call imports it."""
    # Only a default: a user who set TF_CPP_MIN_LOG_LEVEL keeps their level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


# Where the inputs arrive (the Session's feeds) and are cut into per-device blocks.
HOST = "/device:CPU:0"


def device_name(kind: str, index: int) -> str:
    """`/device:CPU:3`: device `index` of the mesh (row-major numbering)."""
    return f"/device:{kind}:{index}"


def session_config(devices: int, kind: str = "CPU") -> Any:
    """A v1 session configuration with `devices` devices of `kind` (CPU devices are
    logical: one process, one thread pool). On CPUs placement is strict: a node
    that cannot run where the graph puts it is an error, not a silent move to
    CPU:0; on GPUs nodes without a GPU kernel (int64 index arithmetic) may run on
    the host, as TensorFlow places them."""
    if kind not in DEVICE_KINDS:
        raise MeshirError(f"unknown device kind '{kind}' (kinds: {', '.join(DEVICE_KINDS)})")
    if devices < 1:
        raise MeshirError(f"the device count must be at least 1, got {devices}")
    tf = tensorflow()
    return tf.compat.v1.ConfigProto(
        device_count={kind: devices}, allow_soft_placement=kind == "GPU"
    )
