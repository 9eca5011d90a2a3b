"""Every op of the language, one module per group; importing this fills the registry.

Imported in DESIGN section 4's order, which is the order the registry (and the
generated docs/ops.md) lists them in.
"""
from . import elementwise  # noqa: F401  isort: skip
from . import binary  # noqa: F401  isort: skip
from . import contraction  # noqa: F401  isort: skip
from . import reductions  # noqa: F401  isort: skip
from . import shape  # noqa: F401  isort: skip
from . import indexing  # noqa: F401  isort: skip
from . import nn  # noqa: F401  isort: skip
from . import state  # noqa: F401  isort: skip
from . import constants  # noqa: F401  isort: skip
from . import mesh_ops  # noqa: F401  isort: skip
from . import collectives  # noqa: F401  isort: skip
