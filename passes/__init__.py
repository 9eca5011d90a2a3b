"""Passes: the pass base class and registry, the pipeline parser, one module per pass."""
from . import canonicalize, cse, dce, layout, spmd  # noqa: F401  (each registers its pass)
