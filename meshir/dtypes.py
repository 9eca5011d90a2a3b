"""Element types of meshir tensors and their numpy equivalents."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type: its `.mir` spelling, numpy dtype and kind."""

    name: str
    numpy_name: str
    kind: str  # "float", "int", "uint" or "bool"

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self.name]

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    @property
    def is_numeric(self) -> bool:
        return self.kind != "bool"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"


f32 = DType("f32", "float32", "float")
bf16 = DType("bf16", "bfloat16", "float")
f16 = DType("f16", "float16", "float")
f64 = DType("f64", "float64", "float")
i8 = DType("i8", "int8", "int")
i32 = DType("i32", "int32", "int")
i64 = DType("i64", "int64", "int")
u8 = DType("u8", "uint8", "uint")
u32 = DType("u32", "uint32", "uint")
bool_ = DType("bool", "bool", "bool")

DTYPES: dict[str, DType] = {d.name: d for d in (f32, bf16, f16, f64, i8, i32, i64, u8, u32, bool_)}

_NUMPY: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "u8": np.dtype(np.uint8),
    "u32": np.dtype(np.uint32),
    "bool": np.dtype(np.bool_),
}
_FROM_NUMPY = {v: DTYPES[k] for k, v in _NUMPY.items()}


def dtype_of_numpy(dtype: np.dtype) -> DType:
    """The meshir dtype of a numpy dtype; KeyError when meshir has none."""
    return _FROM_NUMPY[np.dtype(dtype)]
