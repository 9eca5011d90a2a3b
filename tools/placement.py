"""`meshir-run --report`: where a compiled function's ops and variables live.

Read back from what the backend built, not from the layout meshir asked for:
for XLA, the compiled executable's own input shardings (devices, per-device
shape, memory kind of every variable and input) and its HLO (callbacks to the
host); for TensorFlow, the device of every node in the placed graph, and the
nodes that have none (TensorFlow's placer would put those on its first CPU).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

from meshir.types import TensorType

# Custom calls by which an XLA program runs Python on the host mid-step.
HOST_CALLBACK = re.compile(r'custom_call_target="[^"]*(callback|host)[^"]*"', re.IGNORECASE)


def _device_name(device: Any) -> str:
    name = f"{device.platform}:{device.id}"
    return f"{name}@process{device.process_index}" if device.process_index else name


def _device_list(devices: Iterable[Any]) -> str:
    """`cpu:0-7` for a contiguous run of one platform, else the names."""
    devices = sorted(devices, key=lambda d: (d.platform, d.id))
    ids = [d.id for d in devices]
    platforms = {d.platform for d in devices}
    if len(platforms) == 1 and ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 1 \
            and not any(d.process_index for d in devices):
        return f"{devices[0].platform}:{ids[0]}-{ids[-1]}"
    return ", ".join(_device_name(d) for d in devices)


def _shape_text(ttype: TensorType, shape: tuple[int, ...]) -> str:
    return f"{ttype.dtype}[{', '.join(f'{d.name}={s}' for d, s in zip(ttype.dims, shape))}]"


def xla_report(program: Any) -> str:
    """The placement of a CompiledProgram (backends/xla/compile.py)."""
    compiled = program.lower().compile()
    (input_shardings, variable_shardings), _ = compiled.input_shardings
    hlo = compiled.as_text()
    mesh = program.device_mesh
    function = program.function
    lines = [f"placement of @{function.name} on xla:"]
    if mesh is not None:
        grid = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
        lines.append(f"  mesh {grid} on {_device_list(mesh.devices.flat)}:")
        for row in mesh.devices.reshape(-1, mesh.devices.shape[-1]):
            lines.append("    " + "  ".join(f"{_device_name(d):>8}" for d in row))
    else:
        devices = {d for s in (*input_shardings.values(), *variable_shardings.values()) for d in s.device_set}
        lines.append(f"  one device: {_device_list(devices) or 'the default device'}")
    callbacks = len(HOST_CALLBACK.findall(hlo))
    lines.append(f"  ops: all {len(function.ops)} ops of @{function.name} are one XLA executable that every device "
                 f"above runs on its own shards; host callbacks in it: {callbacks or 'none'}")
    ports = [("input", p, input_shardings[p.name]) for p in program.inputs]
    ports += [("variable", p, variable_shardings[p.name]) for p in program.variables]
    lines.append("  arguments (global type -> per-device shape, devices, memory):")
    for kind, port, sharding in ports:
        sigil = "@" if kind == "variable" else "%"
        local = _shape_text(port.type, sharding.shard_shape(port.type.shape))
        lines.append(f"    {sigil}{port.name}: {port.type} -> {local} on {_device_list(sharding.device_set)}, "
                     f"{sharding.memory_kind or 'device'} memory")
    return "\n".join(lines) + "\n"


def _compact_tf_devices(names: set[str]) -> str:
    """`/device:CPU:0-7` for a contiguous run of one kind's devices, else the names."""
    parsed = [re.fullmatch(r"(.*:)(\d+)", name) for name in names]
    if len(names) > 1 and all(parsed) and len({m.group(1) for m in parsed}) == 1:
        ids = sorted(int(m.group(2)) for m in parsed)
        if ids == list(range(ids[0], ids[0] + len(ids))):
            return f"{parsed[0].group(1)}{ids[0]}-{ids[-1]}"
    return ", ".join(sorted(names))


def tf_report(program: Any) -> str:
    """The placement of a TFProgram (backends/tf/compile.py)."""
    nodes = program.graph.get_operations()
    per_device = Counter(node.device for node in nodes if node.device)
    unplaced = [node.name for node in nodes if not node.device]
    function = program.function
    lines = [f"placement of @{function.name} on tf: {len(nodes)} graph nodes for {len(function.ops)} ops, "
             f"{program.devices} device{'s' if program.devices != 1 else ''} of kind {program.device_kind}"]
    lines.append("  nodes per device:")
    lines += [f"    {device}: {count}" for device, count in sorted(per_device.items())]
    shown = ", ".join(unplaced[:5]) + (", ..." if len(unplaced) > 5 else "")
    lines.append(f"  nodes with no device (TensorFlow would place them itself): {len(unplaced) or 'none'}"
                 + (f" ({shown})" if unplaced else ""))
    lines.append("  variables (global type -> a slice per device):")
    for slices in program.variables:
        where = _compact_tf_devices({v.device for v in slices.variables})
        local = slices.variables[0].shape.as_list() if slices.variables else []
        lines.append(f"    @{slices.name}: {slices.type} -> {_shape_text(slices.type, tuple(local))} on "
                     f"{len(slices.variables)} device{'s' if len(slices.variables) != 1 else ''}: {where}")
    return "\n".join(lines) + "\n"


def reference_report(function_name: str) -> str:
    return (f"placement of @{function_name} on reference: the numpy interpreter runs every op on the host, "
            "one op at a time; no devices\n")
