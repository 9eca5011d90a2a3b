"""Training checkpoints: every variable's global value and the step, saved atomically.

A checkpoint folder (`meshir-run --train --checkpoint DIR`) holds:

    DIR/checkpoint              the index, JSON: {"latest": "ckpt-120"}
    DIR/ckpt-120/               one complete checkpoint (the newest KEEP are kept)
        metadata.json           {"format": 1, "step": 120, "loss": 0.31, "variables":
                                  {"w1": {"shape": [64, 128], "dtype": "f32", "file": "w1.npy"}, ...}}
        w1.npy, w1.m.npy, ...   each variable's global value in its master (declared)
                                dtype; bf16 as its uint16 bits, which .npy can hold.
                                A stacked variable (passes/autostack.py) is saved as
                                its members, under their own names
    DIR/.saving-*               a save in progress, or one that a crash interrupted

Values are global arrays, so a checkpoint restores onto any mesh and layout. A save
writes and fsyncs a temporary folder, renames it into place, then replaces the
index: the index names a complete checkpoint at every instant, so a crash mid-save
leaves the previous one loadable. A load reads only the checkpoint the index names;
the next save removes interrupted ones. Restoring casts each stored value to the
module's master dtype: a bf16 checkpoint fine-tunes an f32 module, and back.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Mapping

import numpy as np

from meshir.diagnostics import FlagError
from meshir.dtypes import DTYPES, DType, dtype_of_numpy
from meshir.ir import Module
from meshir.passes.autostack import checkpoint_entries
from meshir.types import TensorType

from .common import with_default_mode

FORMAT = 1
INDEX = "checkpoint"
METADATA = "metadata.json"
# The checkpoint before the newest stays as a fallback a person can point the index at.
KEEP = 2

_SAVING_PREFIX = ".saving-"
_FOLDER = re.compile(r"ckpt-(\d+)")
_SAFE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# Dtypes that .npy files cannot hold, stored as their bits.
_STORED_AS = {"bf16": np.dtype(np.uint16)}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: values keyed by variable name, in their stored dtypes."""

    path: str
    step: int
    loss: float
    values: dict[str, np.ndarray]


def master_values(values: Mapping[str, np.ndarray], module: Module) -> dict[str, np.ndarray]:
    """`values` (keyed by `module`'s variables) as a checkpoint holds them: in their
    declared (master) dtypes, a stacked variable and its optimizer slots as one entry
    per member (passes/autostack.py), so that a checkpoint is the same whether or
    not the module was stacked."""
    entries = checkpoint_entries(module)
    saved: dict[str, np.ndarray] = {}
    for name, value in values.items():
        master = np.asarray(value).astype(module.variables[name].type.dtype.numpy)
        saved.update(zip(entries[name], master) if name in entries else [(name, master)])
    return saved


def _entry_types(module: Module, entries: Mapping[str, tuple[str, ...]]) -> dict[str, TensorType]:
    """The master type of each checkpoint entry `module` needs."""
    types: dict[str, TensorType] = {}
    for name, variable in module.variables.items():
        if name in entries:
            member = variable.type.without(variable.type.names[:1])
            types.update((entry, member) for entry in entries[name])
        else:
            types[name] = variable.type
    return types


def create_folder(directory: str) -> None:
    """Make the checkpoint folder now, so that a path that cannot hold one fails
    before training rather than at the first save."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise FlagError(f"--checkpoint: cannot create folder '{directory}' ({exc.strerror or exc})") from None


def save(directory: str, step: int, values: Mapping[str, np.ndarray], loss: float, keep: int = KEEP) -> str:
    """Save `values` (global arrays keyed by variable name) as the checkpoint of
    `step`, atomically; returns its folder."""
    try:
        return _save(directory, step, values, loss, keep)
    except OSError as exc:
        raise FlagError(f"--checkpoint: cannot save step {step} in '{directory}' ({exc.strerror or exc})") from None


def _save(directory: str, step: int, values: Mapping[str, np.ndarray], loss: float, keep: int) -> str:
    os.makedirs(directory, exist_ok=True)
    _remove_interrupted(directory)
    staging = tempfile.mkdtemp(prefix=_SAVING_PREFIX, dir=directory)
    variables = {}
    for position, (name, value) in enumerate(sorted(values.items())):
        array = np.asarray(value, order="C")
        dtype = dtype_of_numpy(array.dtype)
        file = f"{name}.npy" if _SAFE_FILE.fullmatch(name) else f"variable-{position}.npy"
        stored = array.view(_STORED_AS[dtype.name]) if dtype.name in _STORED_AS else array
        _write_durably(os.path.join(staging, file), lambda handle, a=stored: np.save(handle, a, allow_pickle=False))
        variables[name] = {"shape": list(array.shape), "dtype": dtype.name, "file": file}
    metadata = {"format": FORMAT, "step": step, "loss": loss, "variables": variables}
    _write_durably(os.path.join(staging, METADATA), lambda handle: handle.write(json.dumps(metadata, indent=1).encode()))
    _fsync_directory(staging)
    name = f"ckpt-{step}"
    final = os.path.join(directory, name)
    if os.path.exists(final):
        # A crash after the rename below but before the index moved leaves a folder
        # the index does not name; set it aside as interrupted so the rename can land.
        os.rename(final, tempfile.mkdtemp(prefix=_SAVING_PREFIX, dir=directory))
    with_default_mode(staging, directory=True)
    os.rename(staging, final)
    _fsync_directory(directory)
    _replace_index(directory, name)
    _remove_older(directory, step, keep)
    return final


def load(directory: str) -> Checkpoint | None:
    """The checkpoint the index of `directory` names; None when there is none yet."""
    index = os.path.join(directory, INDEX)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FlagError(f"--checkpoint: '{directory}' is not a folder")
    if not os.path.exists(index):
        return None
    path = os.path.join(directory, _read_index(index))
    metadata = _read_metadata(os.path.join(path, METADATA))
    values = {name: _read_value(path, name, entry) for name, entry in metadata["variables"].items()}
    return Checkpoint(path, metadata["step"], float(metadata["loss"]), values)


def restore_values(checkpoint: Checkpoint, module: Module, extra_allowed: bool = False) -> dict[str, np.ndarray]:
    """The checkpoint's values for `module`'s variables, in their master dtypes (a
    stacked variable's from its members' entries); a FlagError when the checkpoint
    does not fit the module. With `extra_allowed`, entries the module does not
    need are left out instead."""
    entries = checkpoint_entries(module)
    needed = _entry_types(module, entries)
    missing = sorted(set(needed) - set(checkpoint.values))
    if missing:
        raise FlagError(f"--checkpoint: {checkpoint.path} has no variable @{missing[0]}, which the module declares "
                        f"({len(missing)} missing; saved from another model or optimizer?)")
    extra = sorted(set(checkpoint.values) - set(needed))
    if extra and not extra_allowed:
        raise FlagError(f"--checkpoint: {checkpoint.path} holds variable @{extra[0]}, which the module does not declare "
                        f"({len(extra)} such; saved from another model or optimizer?)")
    for name, ttype in sorted(needed.items()):  # as saved, so the first problem reported is the first in the folder
        value = checkpoint.values[name]
        if value.shape != ttype.shape:
            raise FlagError(f"--checkpoint: variable @{name} has shape {list(value.shape)} in {checkpoint.path}, "
                            f"but the module declares {ttype} (shape {list(ttype.shape)})")
        stored = dtype_of_numpy(value.dtype)
        if stored != ttype.dtype and not (stored.is_float and ttype.dtype.is_float):
            raise FlagError(f"--checkpoint: variable @{name} is {stored} in {checkpoint.path}, but the module declares "
                            f"{ttype}; only floating-point precisions convert")
    values = {name: checkpoint.values[name].astype(ttype.dtype.numpy) for name, ttype in needed.items()}
    return {name: np.stack([values[e] for e in entries[name]]) if name in entries else values[name] for name in module.variables}


def _write_durably(path: str, write: Callable[[BinaryIO], object]) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: str) -> None:
    """Make renames and new entries in `path` survive a power cut, not only a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_index(directory: str, name: str) -> None:
    fd, staging = tempfile.mkstemp(prefix=_SAVING_PREFIX, dir=directory)
    os.close(fd)
    _write_durably(staging, lambda handle: handle.write(json.dumps({"latest": name}).encode()))
    with_default_mode(staging)
    os.replace(staging, os.path.join(directory, INDEX))
    _fsync_directory(directory)


def _remove_interrupted(directory: str) -> None:
    for entry in os.listdir(directory):
        if entry.startswith(_SAVING_PREFIX):
            path = os.path.join(directory, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _remove_older(directory: str, step: int, keep: int) -> None:
    """Keep the checkpoint of `step` and the keep-1 before it; checkpoints of later
    steps are ones the index no longer names."""
    folders = {int(m.group(1)): m.group(0) for m in map(_FOLDER.fullmatch, os.listdir(directory)) if m}
    kept = sorted(s for s in folders if s <= step)[-keep:]
    for other, folder in folders.items():
        if other not in kept:
            shutil.rmtree(os.path.join(directory, folder))


def _read_index(index: str) -> str:
    try:
        with open(index, encoding="utf-8") as handle:
            name = json.load(handle)["latest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlagError(f"--checkpoint: cannot read the index {index} ({type(exc).__name__}: {exc})") from None
    if not isinstance(name, str) or not _FOLDER.fullmatch(name):
        raise FlagError(f"--checkpoint: the index {index} names {name!r}, which is not a checkpoint folder")
    return name


def _read_metadata(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise FlagError(f"--checkpoint: {path} is missing; the index names a checkpoint that is not there") from None
    except (OSError, ValueError) as exc:
        raise FlagError(f"--checkpoint: cannot read {path} ({type(exc).__name__}: {exc})") from None
    problem = _metadata_problem(metadata)
    if problem:
        raise FlagError(f"--checkpoint: {path} is not checkpoint metadata: {problem}")
    return metadata


def _metadata_problem(metadata: object) -> str | None:
    if not isinstance(metadata, dict):
        return "expected a JSON object"
    if metadata.get("format") != FORMAT:
        return f"format {metadata.get('format')!r}, this meshir reads format {FORMAT}"
    if not isinstance(metadata.get("step"), int) or metadata["step"] < 0:
        return f"step {metadata.get('step')!r} is not a count of steps"
    if not isinstance(metadata.get("loss"), (int, float)):
        return f"loss {metadata.get('loss')!r} is not a number"
    variables = metadata.get("variables")
    if not isinstance(variables, dict):
        return "'variables' is not an object"
    for name, entry in variables.items():
        if not isinstance(entry, dict) or set(entry) != {"shape", "dtype", "file"}:
            return f"variable @{name}: expected an object with shape, dtype and file"
        if not isinstance(entry["shape"], list) or not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
            return f"variable @{name}: shape {entry['shape']!r} is not a list of sizes"
        if entry["dtype"] not in DTYPES:
            return f"variable @{name}: unknown dtype {entry['dtype']!r}"
        if not isinstance(entry["file"], str) or not _SAFE_FILE.fullmatch(entry["file"]):
            return f"variable @{name}: file {entry['file']!r} is not a file name inside the checkpoint"
    return None


def _read_value(path: str, name: str, entry: dict) -> np.ndarray:
    file = os.path.join(path, entry["file"])
    dtype: DType = DTYPES[entry["dtype"]]
    try:
        stored = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FlagError(f"--checkpoint: cannot read variable @{name} from {file} ({type(exc).__name__}: {exc})") from None
    expected = _STORED_AS.get(dtype.name, dtype.numpy)
    if stored.dtype != expected or list(stored.shape) != entry["shape"]:
        raise FlagError(f"--checkpoint: {file} holds {stored.dtype}{list(stored.shape)}, but {path}/{METADATA} records "
                        f"@{name} as {dtype}{entry['shape']}")
    return stored.view(dtype.numpy) if dtype.name in _STORED_AS else stored
