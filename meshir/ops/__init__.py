"""Every op of the language, one module per group; importing this fills the registry."""
from . import (  # noqa: F401
    binary,
    collectives,
    constants,
    contraction,
    elementwise,
    indexing,
    mesh_ops,
    nn,
    reductions,
    shape,
    state,
)
