"""meshir: a compiler for mesh-parallel tensor programs over named dimensions."""
from .diagnostics import Location, MeshirError, Source
from .dtypes import DTYPES, DType
from .ir import Function, Module, Operation, Value, Variable
from .mesh import LayoutRules, Mesh, ValueLayout, parse_layout_spec, parse_mesh_spec
from .types import Dim, TensorType

__version__ = "0.1.0"

__all__ = [
    "DTYPES", "DType", "Dim", "Function", "LayoutRules", "Location", "Mesh", "MeshirError", "Module",
    "Operation", "Source", "TensorType", "Value", "ValueLayout", "Variable", "parse_layout_spec",
    "parse_mesh_spec",
]
