"""Named dimensions and tensor types."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .diagnostics import MeshirError
from .dtypes import DTYPES, DType


@dataclass(frozen=True)
class Dim:
    """A named dimension with a size, `batch=64`."""

    name: str
    size: int

    def __str__(self) -> str:
        return f"{self.name}={self.size}"


@dataclass(frozen=True)
class TensorType:
    """An element type and an ordered list of distinct named dimensions."""

    dtype: DType
    dims: tuple[Dim, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for dim in self.dims:
            if dim.name in seen:
                raise MeshirError(f"dimension '{dim.name}' appears twice in shape {self._shape_text()}")
            if dim.name in DTYPES:
                raise MeshirError(f"'{dim.name}' is a dtype and cannot name a dimension")
            if dim.size < 0:
                raise MeshirError(f"dimension '{dim.name}' has negative size {dim.size}")
            seen.add(dim.name)

    def _shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"

    def __str__(self) -> str:
        return f"{self.dtype}{self._shape_text()}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.dims)

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.num_elements * self.dtype.itemsize

    def has(self, name: str) -> bool:
        return any(d.name == name for d in self.dims)

    def dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def size_of(self, name: str) -> int:
        return self.dim(name).size

    def axis_of(self, name: str) -> int:
        """The position of dimension `name` (its numpy axis)."""
        return self.names.index(name)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.dims)

    def with_dims(self, dims: Iterable[Dim]) -> TensorType:
        return TensorType(self.dtype, tuple(dims))

    def without(self, names: Iterable[str]) -> TensorType:
        drop = set(names)
        return self.with_dims(d for d in self.dims if d.name not in drop)

    def resized(self, name: str, size: int) -> TensorType:
        return self.with_dims(Dim(d.name, size) if d.name == name else d for d in self.dims)


def tensor_type(dtype: DType, **sizes: int) -> TensorType:
    """`tensor_type(f32, batch=64, hidden=512)`; keyword order is dimension order."""
    return TensorType(dtype, tuple(Dim(name, size) for name, size in sizes.items()))
