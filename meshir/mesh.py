"""Device meshes, layout rules and the layout of one value.

A mesh names its axes in order; devices are numbered row-major. Layout rules
map tensor dimension names to one mesh axis or a tuple of axes. A value's
layout takes, for each of its dimensions in order, the axes its rule names,
skipping any axis an earlier dimension of the same value already uses.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Iterator, Mapping

from .diagnostics import MeshirError
from .types import Dim, TensorType


@dataclass(frozen=True)
class Mesh:
    """`mesh @m = <rows=2, cols=4>`."""

    name: str
    axes: tuple[Dim, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for axis in self.axes:
            if axis.name in seen:
                raise MeshirError(f"mesh @{self.name} names axis '{axis.name}' twice")
            if axis.size < 1:
                raise MeshirError(f"mesh @{self.name} axis '{axis.name}' has size {axis.size}; sizes must be at least 1")
            seen.add(axis.name)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def has_axis(self, name: str) -> bool:
        return name in self.axis_names

    def axis_size(self, name: str) -> int:
        for a in self.axes:
            if a.name == name:
                return a.size
        raise KeyError(name)

    def coords(self, device: int) -> dict[str, int]:
        """The coordinate of `device` along every axis (row-major numbering)."""
        coords: dict[str, int] = {}
        for axis in reversed(self.axes):
            device, coords[axis.name] = divmod(device, axis.size)
        return {a.name: coords[a.name] for a in self.axes}

    def device(self, coords: Mapping[str, int]) -> int:
        index = 0
        for axis in self.axes:
            index = index * axis.size + coords[axis.name]
        return index

    def devices(self) -> range:
        return range(self.size)

    def groups(self, axes: tuple[str, ...]) -> Iterator[list[int]]:
        """Device groups that communicate over `axes`: each group varies only along
        `axes`, ordered by its position along them (the first axis is major)."""
        others = [a for a in self.axes if a.name not in axes]
        for fixed in itertools.product(*(range(a.size) for a in others)):
            base = dict(zip((a.name for a in others), fixed))
            group = []
            for pos in itertools.product(*(range(self.axis_size(a)) for a in axes)):
                group.append(self.device({**base, **dict(zip(axes, pos))}))
            yield group

    def index_in_group(self, device: int, axes: tuple[str, ...]) -> int:
        coords = self.coords(device)
        index = 0
        for axis in axes:
            index = index * self.axis_size(axis) + coords[axis]
        return index

    def group_size(self, axes: tuple[str, ...]) -> int:
        return math.prod(self.axis_size(a) for a in axes)

    def __str__(self) -> str:
        return "<" + ", ".join(str(a) for a in self.axes) + ">"


@dataclass(frozen=True)
class LayoutRules:
    """Dimension name -> mesh axes, in rule order: `{batch: rows, seq: (rows, cols)}`."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for dim, axes in self.rules:
            if dim in seen:
                raise MeshirError(f"layout gives dimension '{dim}' two rules")
            seen.add(dim)
            if len(set(axes)) != len(axes):
                twice = next(a for a in axes if axes.count(a) > 1)
                raise MeshirError(f"layout rule for '{dim}' uses mesh axis '{twice}' twice")

    @staticmethod
    def of(mapping: Mapping[str, str | tuple[str, ...]]) -> LayoutRules:
        return LayoutRules(tuple((d, (a,) if isinstance(a, str) else tuple(a)) for d, a in mapping.items()))

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.rules)

    def axes_for(self, dim: str) -> tuple[str, ...]:
        for name, axes in self.rules:
            if name == dim:
                return axes
        return ()

    def layout_of(self, ttype: TensorType) -> ValueLayout:
        """The layout rules give a value of type `ttype`."""
        used: set[str] = set()
        per_dim = []
        for dim in ttype.dims:
            axes = tuple(a for a in self.axes_for(dim.name) if a not in used)
            used.update(axes)
            per_dim.append(axes)
        return ValueLayout(tuple(per_dim))

    def check_against(self, mesh: Mesh) -> None:
        for dim, axes in self.rules:
            for axis in axes:
                if not mesh.has_axis(axis):
                    raise MeshirError(
                        f"layout maps dimension '{dim}' to axis '{axis}', which mesh @{mesh.name} "
                        f"does not have (axes: {', '.join(mesh.axis_names)})"
                    )

    def __str__(self) -> str:
        def axes_text(axes: tuple[str, ...]) -> str:
            return axes[0] if len(axes) == 1 else "(" + ", ".join(axes) + ")"

        return "{" + ", ".join(f"{d}: {axes_text(a)}" for d, a in self.rules) + "}"


@dataclass(frozen=True)
class ValueLayout:
    """For each dimension of one value, in order, the mesh axes that split it."""

    axes: tuple[tuple[str, ...], ...]

    def split_count(self, mesh: Mesh, index: int) -> int:
        return math.prod(mesh.axis_size(a) for a in self.axes[index])

    def local_type(self, ttype: TensorType, mesh: Mesh) -> TensorType:
        """The per-device type; raises when a split does not divide a dimension."""
        dims = []
        for index, dim in enumerate(ttype.dims):
            count = self.split_count(mesh, index)
            if dim.size % count:
                axes = self.axes[index]
                raise MeshirError(
                    f"dimension '{dim.name}' of size {dim.size} cannot be split over mesh axis "
                    f"{'/'.join(axes)} of size {count}: {count} does not divide {dim.size}"
                )
            dims.append(Dim(dim.name, dim.size // count))
        return ttype.with_dims(dims)

    def is_replicated(self) -> bool:
        return not any(self.axes)


_MESH_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*[:=]\s*(-?\d+)\s*$")
_LAYOUT_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*[:=]\s*(.+?)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _split_entries(text: str) -> list[str]:
    """Split on `;` or on commas outside parentheses."""
    if ";" in text:
        return [e for e in text.split(";") if e.strip()]
    entries, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        entries.append(current)
    return entries


def parse_mesh_spec(text: str, name: str = "mesh") -> Mesh:
    """`rows:2,cols:4` or Mesh TensorFlow's `rows:2;cols:4`."""
    axes = []
    for entry in _split_entries(text):
        match = _MESH_ENTRY.match(entry)
        if not match:
            raise MeshirError(f"bad mesh axis '{entry.strip()}': expected NAME:SIZE, as in 'rows:2,cols:4'")
        axes.append(Dim(match.group(1), int(match.group(2))))
    if not axes:
        raise MeshirError("empty mesh: expected NAME:SIZE entries, as in 'rows:2,cols:4'")
    return Mesh(name, tuple(axes))


def parse_layout_spec(text: str) -> LayoutRules:
    """`batch:rows,hidden:cols`, `seq:(rows,cols)`, or Mesh TensorFlow's `batch:rows;hidden:cols`."""
    rules = []
    for entry in _split_entries(text):
        match = _LAYOUT_ENTRY.match(entry)
        if not match:
            raise MeshirError(f"bad layout rule '{entry.strip()}': expected DIM:AXIS or DIM:(AXIS,AXIS)")
        dim, target = match.group(1), match.group(2)
        if target.startswith("(") and target.endswith(")"):
            axes = tuple(a.strip() for a in target[1:-1].split(",") if a.strip())
        else:
            axes = (target,)
        for axis in axes:
            if not _NAME.match(axis):
                raise MeshirError(f"bad mesh axis name '{axis}' in layout rule '{entry.strip()}'")
        rules.append((dim, axes))
    return LayoutRules(tuple(rules))
